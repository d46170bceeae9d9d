"OCR for real: a scanned (image-only) PDF goes through PDFium and the installed Tesseract, by page."
import shutil
from pathlib import Path

import pytest

from purpose.extract import ExtractOptions, extract_file
from purpose.student import TINY_STUDENT

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None,
                                reason="no tesseract (apt-get install -y tesseract-ocr)")

PAGES = [["Abstract", "Heavy sled towing improved sprint", "acceleration over ten metres."],
         ["Results", "Ground contact time was shorter", "at maximum velocity."]]


def scanned_pdf(path: Path, pages: list[list[str]]) -> Path:
    "A PDF whose pages are only pictures of `pages` (lines of text), as scanned: no text layer."
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default(size=44)
    imgs = []
    for lines in pages:
        img = Image.new("L", (1240, 1754), 255)                 # A4 at 150 dpi
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(lines): draw.text((120, 160 + 90 * i), line, fill=0, font=font)
        imgs.append(img)
    imgs[0].save(path, "PDF", resolution=150, save_all=True, append_images=imgs[1:])
    return path


def extract(path: Path, **kw):
    opts = ExtractOptions(tokenizer=TINY_STUDENT, chunk_tokens=64, chunk_overlap=8, **kw)
    return extract_file(path, path.parent, opts)


def test_scanned_pdf_is_read_by_tesseract_page_by_page(tmp_path):
    f = scanned_pdf(tmp_path/"scan.pdf", PAGES)
    off, _ = extract(f, ocr=False)                         # the PDF really has no text layer
    assert off["status"] == "no_text_layer" and "OCR is switched off" in off["error"]
    doc, chunks = extract(f)
    assert (doc["status"], doc["extractor"], doc["n_pages"]) == ("ok", "tesseract", 2), doc
    on = lambda p: " ".join(c["text"] for c in chunks if c["page_start"] <= p <= c["page_end"])
    by_page = {p: on(p).lower() for p in (1, 2)}
    assert "sled towing" in by_page[1] and "acceleration" in by_page[1], by_page
    assert "ground contact" in by_page[2] and "velocity" in by_page[2], by_page
    assert "ground contact" not in by_page[1] and "sled towing" not in by_page[2], by_page


def test_a_blank_scan_says_ocr_found_nothing(tmp_path):
    doc, chunks = extract(scanned_pdf(tmp_path/"blank.pdf", [[]]))
    assert doc["status"] == "no_text_layer" and not chunks
    assert "Tesseract OCR found no text" in doc["error"]
