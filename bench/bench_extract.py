"""Benchmark of the extract stage against a plain pypdf `extract_text()` loop, in the same process.

    python bench/bench_extract.py [PAPERS_DIR] [--workers N] [--repeat R] [--json OUT.json]

PAPERS_DIR defaults to ../shared/data/sports-papers (20 papers, 337 pages). Prints, for the same
PDFs:
- pages per second of a plain pypdf loop (open, `page.extract_text()` for every page): the
  baseline;
- pages per second of the whole extract stage (`extract_stage`: open, layout, cleaning, sections,
  metadata, structured records, duplicates, token-aware chunking, writing the run folder), with the
  chosen number of workers and in-process;
- the ratio (goal: >= 10x) and the word-level agreement with pypdf's text, so speed is not bought
  with lost text: recall = share of pypdf's words (multiset, lower-cased alphanumeric tokens) found
  in ours, precision = the reverse.
Both texts are normalised the same way (NFKC, hyphenated line breaks joined) before comparing.
"""
from __future__ import annotations
import argparse, json, logging, os, re, statistics, sys, tempfile, time, unicodedata
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from purpose.extract import extract_stage, extract_file, ExtractOptions, chunk_tokenizer  # noqa: E402

MAX_PAGES = 500   # every page of the longest paper


def words(text: str) -> Counter:
    "Multiset of normalised words (NFKC, lower case, hyphenated line breaks joined)."
    t = unicodedata.normalize("NFKC", text).replace("\ufffe", "").replace("\xad", "")
    t = re.sub(r"(\w)-\s*\n\s*(\w)", r"\1\2", t)
    return Counter(re.findall(r"[a-z0-9]+", t.lower()))


def pypdf_baseline(pdfs: list[Path]) -> tuple[float, int, dict[str, str]]:
    "Seconds, pages and text per file of a plain pypdf extract_text() loop."
    import pypdf
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    texts, pages, t0 = {}, 0, time.perf_counter()
    for f in pdfs:
        r = pypdf.PdfReader(str(f))
        texts[f.name] = "\n".join((p.extract_text() or "") for p in r.pages)
        pages += len(r.pages)
    return time.perf_counter() - t0, pages, texts


def ours(papers: Path, workers: int | None) -> tuple[float, int, dict]:
    "Seconds and pages of the whole extract stage into a fresh run folder."
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        s = extract_stage(Path(d)/"run", papers_dir=str(papers), workers=workers,
                          max_pages=MAX_PAGES)
        sec = time.perf_counter() - t0
    pages = sum(f["n_pages"] or 0 for f in s["files"] if f["kind"] == "pdf" and f["status"] == "ok")
    return sec, pages, s["counts"]


def agreement(papers: Path, pdfs: list[Path],
              base_texts: dict[str, str]) -> tuple[float, float, dict]:
    "Word recall and precision of our cleaned text (body + references) against pypdf's, pooled."
    opts, inter, nb, no, per = ExtractOptions(max_pages=MAX_PAGES), 0, 0, 0, {}
    for f in pdfs:
        doc, _ = extract_file(f, papers, opts)
        ours_w = words(doc.get("_text", "") + "\n" + "\n".join(doc.get("references") or []))
        base_w = words(base_texts[f.name])
        i = sum((ours_w & base_w).values())
        inter, nb, no = inter + i, nb + sum(base_w.values()), no + sum(ours_w.values())
        per[f.name] = round(i / max(1, sum(base_w.values())), 4)
    return inter / max(1, nb), inter / max(1, no), per


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("papers", nargs="?", default=str(ROOT.parent/"shared"/"data"/"sports-papers"))
    ap.add_argument("--workers", type=int, default=None,
                    help="worker processes for the stage (default: the stage's default)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed repetitions (the median is reported)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = ap.parse_args()
    papers = Path(a.papers)
    if not papers.is_dir(): sys.exit(f"{papers} does not exist: pass a folder of PDFs")
    pdfs = sorted(p for p in papers.iterdir() if p.suffix.lower() == ".pdf")
    print(f"{len(pdfs)} PDFs in {papers}; cpu_count={os.cpu_count()}")

    chunk_tokenizer()   # the tokenizer file is built once per machine; not part of either timing
    base = [pypdf_baseline(pdfs) for _ in range(a.repeat)]
    b_sec, b_pages, b_texts = statistics.median(x[0] for x in base), base[0][1], base[0][2]
    runs = {w: [ours(papers, w) for _ in range(a.repeat)] for w in dict.fromkeys([a.workers, 1])}
    rec, prec, per = agreement(papers, pdfs, b_texts)

    b_rate = b_pages / b_sec
    print(f"\npypdf extract_text loop : {b_pages} pages in {b_sec:.2f} s = {b_rate:.1f} pages/s "
          f"(median of {a.repeat})")
    out = {"pdfs": len(pdfs), "pages": b_pages, "pypdf_s": round(b_sec, 3),
           "pypdf_pages_per_s": round(b_rate, 1), "ours": {}}
    for w, rs in runs.items():
        sec, pages = statistics.median(r[0] for r in rs), rs[0][1]
        rate = pages / sec
        label = f"workers={w if w is not None else 'default'}"
        print(f"extract_stage ({label:>15}): {pages} pages in {sec:.2f} s = {rate:.1f} pages/s "
              f"-> {rate / b_rate:.1f}x pypdf")
        out["ours"][label] = {"s": round(sec, 3), "pages": pages, "pages_per_s": round(rate, 1),
                              "ratio": round(rate / b_rate, 2), "counts": rs[0][2]}
    print(f"word agreement with pypdf: recall {rec:.1%} (pypdf's words we keep), "
          f"precision {prec:.1%}")
    lowest = sorted(per.items(), key=lambda kv: kv[1])[:3]
    print("lowest recall per file: " + ", ".join(f"{k} {v:.1%}" for k, v in lowest))
    out.update(word_recall=round(rec, 4), word_precision=round(prec, 4), recall_per_file=per)
    best = max(v["ratio"] for v in out["ours"].values())
    print(f"goal >= 10x: {'met' if best >= 10 else 'NOT met'} (best {best:.1f}x)")
    if a.json: Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
