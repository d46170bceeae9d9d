#!/usr/bin/env python3
"""Render the fictional sprint-running sample papers into PDFs.

Sources live in ``papers/_sources/sprint/NN_slug.md``; the PDFs are written to
``papers/sprint/``. All papers, authors, journals, DOIs and references are
invented for testing the Purpose pipeline.

Usage::

    python papers/_sources/build_sprint_pdfs.py            # build all PDFs
    python papers/_sources/build_sprint_pdfs.py --check    # build, then verify

Source format
-------------
A front matter block between ``---`` lines with ``key: value`` pairs
(title, authors ``;``-separated, affiliations ``;``-separated, corresponding,
year, date (ISO, used as the fixed PDF creation date), journal, volume, doi,
received, accepted, keywords, layout (``single`` or ``twocol``), paper
(``a4`` or ``letter``), output (PDF file name), claims (``|``-separated
sentences that must be extractable verbatim)). The body uses ``## Heading``,
``### Subheading``, blank-line separated paragraphs, ``Table N. caption``
followed directly by ``| a | b |`` rows (first row = header), and one
reference per line in the References section. ``\\-`` marks a soft hyphen
(an optional, hyphenated line-break point).

The output is deterministic: the creation date comes from the front matter and
fpdf2 derives the file /ID from the content, so rebuilding yields identical
bytes with the same fpdf2 version.
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace

HERE = Path(__file__).resolve().parent
SRC_DIR = HERE / "sprint"
OUT_DIR = HERE.parent / "sprint"
SOFT_HYPHEN = "\u00ad"
REQUIRED_HEADINGS = ["Abstract", "Introduction", "Methods", "Results", "Discussion", "References"]


# --------------------------------------------------------------------------- parsing
def parse_source(path: Path) -> tuple[dict, list[tuple]]:
    text = path.read_text(encoding="utf-8")
    m = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    if not m:
        raise ValueError(f"{path}: missing front matter")
    meta: dict = {}
    for line in m.group(1).splitlines():
        if line.strip():
            key, _, value = line.partition(":")
            meta[key.strip()] = value.strip()
    meta["authors_list"] = [a.strip() for a in meta["authors"].split(";")]
    affiliations = meta.get("affiliations", "").split(";")
    meta["affiliations_list"] = [a.strip() for a in affiliations if a.strip()]
    meta["claims_list"] = [c.strip() for c in meta.get("claims", "").split("|") if c.strip()]

    blocks: list[tuple] = []
    section = ""
    lines = m.group(2).splitlines()
    i = 0
    para: list[str] = []

    def flush() -> None:
        if para:
            blocks.append(("p", " ".join(s.strip() for s in para)))
            para.clear()

    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            flush()
        elif line.startswith("### "):
            flush()
            blocks.append(("h2", line[4:].strip()))
        elif line.startswith("## "):
            flush()
            section = line[3:].strip()
            blocks.append(("h1", section))
        elif (re.match(r"^Table \d+\.", line) and i + 1 < len(lines)
              and lines[i + 1].startswith("|")):
            flush()
            caption = line.strip()
            rows = []
            while i + 1 < len(lines) and lines[i + 1].startswith("|"):
                i += 1
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
            blocks.append(("table", caption, rows))
        elif section.endswith("References") and line.startswith("["):
            flush()
            blocks.append(("ref", line.strip()))
        else:
            para.append(line)
        i += 1
    flush()
    return meta, blocks


def inline(text: str) -> str:
    """Source markup -> text for the PDF (soft hyphens; latin-1 check)."""
    out = text.replace("\\-", SOFT_HYPHEN)
    out.encode("latin-1")  # core fonts only support latin-1
    return out


def plain(text: str) -> str:
    return text.replace("\\-", "")


# --------------------------------------------------------------------------- layout
class Paper(FPDF):
    def __init__(self, meta: dict):
        fmt = "Letter" if meta.get("paper", "a4").lower() == "letter" else "A4"
        super().__init__(orientation="P", unit="mm", format=fmt)
        self.meta = meta
        self.set_margins(20, 24, 20)
        self.set_auto_page_break(True, margin=20)
        surname = meta["authors_list"][0].split()[-1]
        n = len(meta["authors_list"])
        self.running_authors = (
            f"{surname} et al." if n > 2
            else f"{surname} and {meta['authors_list'][1].split()[-1]}" if n == 2
            else surname
        )

    def header(self):
        m = self.meta
        self.set_y(11)
        self.set_font("Helvetica", "", 8)
        self.set_text_color(70, 70, 70)
        self.cell(0, 4, f"{m['journal']} \u00b7 {m['year']} \u00b7 {m['volume']}", align="L")
        self.set_x(self.l_margin)
        self.cell(0, 4, f"doi:{m['doi']}", align="R")
        self.set_draw_color(150, 150, 150)
        self.set_line_width(0.2)
        self.line(self.l_margin, 16, self.w - self.r_margin, 16)
        self.set_text_color(0, 0, 0)
        self.set_y(self.t_margin)

    def footer(self):
        self.set_y(-14)
        self.set_draw_color(150, 150, 150)
        self.line(self.l_margin, self.get_y() - 1.5, self.w - self.r_margin, self.get_y() - 1.5)
        self.set_font("Helvetica", "", 8)
        self.set_text_color(70, 70, 70)
        self.cell(0, 4, f"{self.running_authors} ({self.meta['year']})", align="L")
        self.set_x(self.l_margin)
        self.cell(0, 4, f"Page {self.page_no()} of {{nb}}", align="R")
        self.set_text_color(0, 0, 0)


def fmt_date(iso: str) -> str:
    d = dt.date.fromisoformat(iso)
    return f"{d.day} {d.strftime('%B')} {d.year}"


def title_block(pdf: Paper) -> None:
    m = pdf.meta
    full = dict(w=0, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "B", 7.5)
    pdf.set_text_color(120, 20, 20)
    pdf.cell(h=4, text="ORIGINAL RESEARCH ARTICLE", **full)
    pdf.set_text_color(0, 0, 0)
    pdf.ln(1.5)
    pdf.set_font("Helvetica", "B", 15)
    pdf.multi_cell(h=6.6, text=inline(m["title"]), align="L", **full)
    pdf.ln(2)
    pdf.set_font("Helvetica", "", 10.5)
    n_aff = len(m['affiliations_list'])
    authors = ", ".join(f"{a} ({i + 1 if i < n_aff else n_aff})"
                        for i, a in enumerate(m["authors_list"]))
    pdf.multi_cell(h=5, text=authors, **full)
    pdf.ln(1)
    pdf.set_font("Times", "I", 8.5)
    for i, aff in enumerate(m["affiliations_list"]):
        pdf.multi_cell(h=3.8, text=f"({i + 1}) {aff}", **full)
    pdf.set_font("Times", "", 8.5)
    pdf.multi_cell(h=3.8, text=f"Correspondence: {m['corresponding']}", **full)
    pdf.ln(1)
    pdf.set_font("Helvetica", "", 7.5)
    pdf.multi_cell(
        h=3.6,
        text=(f"Received {m['received']} \u00b7 Accepted {m['accepted']} \u00b7 "
              f"Published {fmt_date(m['date'])} \u00b7 https://doi.org/{m['doi']}"),
        **full,
    )
    pdf.ln(3)


def abstract_block(pdf: Paper, text: str) -> None:
    m = pdf.meta
    pdf.set_fill_color(238, 241, 245)
    pdf.set_font("Helvetica", "B", 10)
    pdf.multi_cell(0, 6, "Abstract", fill=True, padding=(0, 2.5, 0, 2.5), new_x=XPos.LMARGIN,
                   new_y=YPos.NEXT)
    pdf.set_font("Times", "", 9.5)
    pdf.multi_cell(0, 4.3, inline(text), align="J", fill=True, padding=(1, 2.5, 2, 2.5),
                   new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Times", "", 9)
    pdf.multi_cell(0, 4.3, f"Keywords: {m['keywords']}", markdown=False, fill=True,
                   padding=(0, 2.5, 1.5, 2.5), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(5)


def draw_table(pdf: Paper, caption: str, rows: list[list[str]]) -> None:
    head, _, rest = caption.partition(". ")
    if pdf.get_y() > pdf.page_break_trigger - 12 - 5.2 * len(rows):
        pdf.add_page()
    pdf.ln(1)
    pdf.set_font("Helvetica", "", 8.5)
    pdf.multi_cell(0, 4, f"**{head}.** {inline(rest)}", markdown=True, align="L",
                   new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)
    ncols = len(rows[0])
    weights = [max(len(r[c]) for r in rows) + 2 for c in range(ncols)]
    numeric = re.compile(r"^[-+<>]?[\d.]+( ± [\d.]+)?$")
    def numeric_share(c): return sum(bool(numeric.match(r[c])) for r in rows[1:]) / len(rows[1:])
    aligns = ["CENTER" if numeric_share(c) > 0.5 else "LEFT"
              for c in range(ncols)]
    pdf.set_font("Helvetica", "", 8)
    pdf.set_draw_color(90, 90, 90)
    with pdf.table(
        col_widths=weights,
        text_align=aligns,
        cell_fill_color=(244, 246, 249),
        cell_fill_mode="ROWS",
        borders_layout="SINGLE_TOP_LINE",
        line_height=4.6,
        padding=0.6,
        headings_style=FontFace(emphasis="BOLD", fill_color=(232, 235, 240)),
        first_row_as_headings=True,
    ) as table:
        for row in rows:
            r = table.row()
            for cell in row:
                r.cell(inline(cell))
    pdf.ln(4)


def heading_space(pdf: Paper, needed: float) -> None:
    if pdf.get_y() + needed > pdf.page_break_trigger:
        pdf.add_page()


def render_single(pdf: Paper, blocks: list[tuple]) -> None:
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            heading_space(pdf, 18)
            pdf.ln(2)
            pdf.set_font("Helvetica", "B", 11)
            pdf.cell(0, 6, b[1], new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(0.8)
        elif kind == "h2":
            heading_space(pdf, 14)
            pdf.ln(0.8)
            pdf.set_font("Helvetica", "BI", 9.5)
            pdf.cell(0, 5, b[1], new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        elif kind == "p":
            pdf.set_font("Times", "", 10.5)
            pdf.multi_cell(0, 4.9, inline(b[1]), align="J", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(1.8)
        elif kind == "ref":
            pdf.set_font("Times", "", 9)
            pdf.multi_cell(0, 4.1, inline(b[1]), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(0.6)
        elif kind == "table":
            draw_table(pdf, b[1], b[2])


def render_twocol(pdf: Paper, blocks: list[tuple]) -> None:
    with pdf.text_columns(ncols=2, gutter=7, text_align="J", line_height=1.12) as cols:
        for b in blocks:
            kind = b[0]
            if kind == "h1":
                pdf.set_font("Helvetica", "B", 10)
                with cols.paragraph(text_align="L", top_margin=2.5, bottom_margin=1) as par:
                    par.write(b[1])
            elif kind == "h2":
                pdf.set_font("Helvetica", "BI", 9)
                with cols.paragraph(text_align="L", top_margin=1, bottom_margin=0.5) as par:
                    par.write(b[1])
            elif kind == "p":
                pdf.set_font("Times", "", 9.8)
                with cols.paragraph(bottom_margin=1.6) as par:
                    par.write(inline(b[1]))
            elif kind == "ref":
                pdf.set_font("Times", "", 8.5)
                with cols.paragraph(text_align="L", bottom_margin=0.8) as par:
                    par.write(inline(b[1]))
            elif kind == "table":
                raise ValueError("tables are not supported in two-column layout")


def build(path: Path) -> Path:
    meta, blocks = parse_source(path)
    pdf = Paper(meta)
    created = dt.datetime.fromisoformat(meta["date"]).replace(hour=9, tzinfo=dt.timezone.utc)
    pdf.set_creation_date(created)
    pdf.set_title(plain(meta["title"]))
    pdf.set_author("; ".join(meta["authors_list"]))
    pdf.set_subject(f"{meta['journal']} {meta['year']} {meta['volume']}, doi:{meta['doi']}")
    pdf.set_keywords(meta["keywords"])
    pdf.set_creator("Purpose sample corpus - papers/_sources/build_sprint_pdfs.py")
    pdf.set_producer("fpdf2")
    pdf.set_lang("en")
    pdf.add_page()
    title_block(pdf)
    assert blocks[0] == ("h1", "Abstract") and blocks[1][0] == "p", path
    abstract_block(pdf, blocks[1][1])
    body = blocks[2:]
    if meta.get("layout", "single") == "twocol":
        render_twocol(pdf, body)
    else:
        render_single(pdf, body)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / meta["output"]
    pdf.output(str(out))
    return out


# --------------------------------------------------------------------------- checking
def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace(SOFT_HYPHEN, "")).strip()


def check(path: Path, out: Path) -> tuple[bool, list]:
    import pypdf
    import pypdfium2 as pdfium

    meta, _ = parse_source(path)
    problems = []
    reader = pypdf.PdfReader(str(out))
    text_pypdf = "\n".join(p.extract_text() or "" for p in reader.pages)
    doc = pdfium.PdfDocument(str(out))
    pages_pdfium = len(doc)
    text_pdfium = "\n".join(doc[i].get_textpage().get_text_range() for i in range(pages_pdfium))
    doc.close()
    npages = len(reader.pages)
    if not 2 <= npages <= 4:
        problems.append(f"page count {npages}")
    if npages != pages_pdfium:
        problems.append(f"pypdf {npages} pages vs pdfium {pages_pdfium}")
    for label, txt in (("pypdf", text_pypdf), ("pdfium", text_pdfium)):
        flat = norm(txt)
        for h in REQUIRED_HEADINGS:
            if not re.search(rf"(^|\n)\s*(\d+\.\s*)?{h}\b", txt):
                problems.append(f"{label}: heading {h!r} not found")
        for claim in meta["claims_list"]:
            if claim not in flat:
                problems.append(f"{label}: claim not extractable: {claim!r}")
        if f"Page {npages} of {npages}" not in flat:
            problems.append(f"{label}: footer 'Page {npages} of {npages}' missing")
        if meta["journal"] not in flat:
            problems.append(f"{label}: journal header missing")
    info = reader.metadata or {}
    if info.get("/Title") != plain(meta["title"]):
        problems.append("metadata title mismatch")
    words = len(norm(text_pypdf).split())
    return (not problems), [out.name, npages, words, out.stat().st_size, problems]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify the PDFs after building")
    args = ap.parse_args(argv)
    sources = sorted(SRC_DIR.glob("[0-9][0-9]_*.md"))
    results = []
    for src in sources:
        out = build(src)
        results.append((src, out))
        print(f"built {out.relative_to(HERE.parent.parent)}")
    if not args.check:
        return 0
    ok_all = True
    print(f"\n{'file':48} {'pages':>5} {'words':>6} {'bytes':>7}  status")
    for src, out in results:
        ok, (name, pages, words, size, problems) = check(src, out)
        ok_all &= ok
        print(f"{name:48} {pages:>5} {words:>6} {size:>7}  {'ok' if ok else 'FAIL'}")
        for p in problems:
            print(f"    - {p}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
