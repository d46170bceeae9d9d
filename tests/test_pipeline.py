"End to end: papermill runs every stage notebook on a tiny configuration and writes the whole run-folder contract."
import json, re
from pathlib import Path
import nbformat
import pytest
from conftest import TINY
from purpose.core import STAGES, Manifest, read_jsonl
from purpose.modelhub import KEY_VARS, parse_grounded
from purpose.pipeline import run_domain
from purpose.wire import WireServer, error_body

CONTRACT = ["manifest.json", "extract/documents.jsonl", "extract/chunks.jsonl", "graph/graph.graphml", "graph/graph.png",
            "queries/queries.jsonl", "distill/qa.jsonl", "distill/dataset/dataset_dict.json", "augment/texts.jsonl",
            "augment/summary.json", "train/adapter/adapter_config.json",
            "eval/report.json", "eval/report.md"]

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import shutil
    from conftest import SAMPLE
    root = tmp_path_factory.mktemp("e2e")
    papers = root/"papers"/"sprint"; papers.mkdir(parents=True)
    for name in ("halvorsen_2018_stride_kinematics.pdf", "thorsdottir_2023_athlete_profiles.pdf", "vance_2024_sled_plyometric_training.pdf",
                 "whitcombe_2019_acceleration_phase.pdf", "athlete_profiles.csv"):
        shutil.copy(SAMPLE/name, papers/name)
    import os
    tmp = root/"kernel-tmp"; tmp.mkdir()                 # the kernels' temporary folder: a batch run leaves it empty
    old_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    try: summary = run_domain("sprint", papers_root=root/"papers", runs_root=root/"runs", params=TINY, log=lambda *a: None)
    finally:
        if old_tmp is None: os.environ.pop("TMPDIR")
        else: os.environ["TMPDIR"] = old_tmp
    return root/"runs"/"sprint", summary

def test_contract_files(tiny_run):
    run, summary = tiny_run
    assert list(summary) == list(STAGES)
    for rel in CONTRACT: assert (run/rel).exists(), rel
    nbs = sorted(p.name for p in (run/"notebooks").glob("*.ipynb"))
    assert nbs == ["01_extract.ipynb", "02_graph.ipynb", "03_queries.ipynb", "05_distill.ipynb", "05a_augment.ipynb",
                   "06_train.ipynb", "07_evaluate.ipynb"]

def test_documents_and_chunks_have_provenance(tiny_run):
    run = tiny_run[0]
    docs = read_jsonl(run/"extract"/"documents.jsonl")
    assert len(docs) == 5 and all(d["status"] == "ok" for d in docs)
    chunks = read_jsonl(run/"extract"/"chunks.jsonl")
    pdf_chunks = [c for c in chunks if c["source"].endswith(".pdf")]
    assert pdf_chunks and all(c["page_start"] >= 1 and c["page_end"] >= c["page_start"] for c in pdf_chunks)

def test_report_shape(tiny_run):
    rep = json.loads((tiny_run[0]/"eval"/"report.json").read_text())
    assert set(rep["systems"]) == {"base", "tuned"}
    for m in rep["systems"].values():
        assert {"perplexity", "accuracy", "latency_p50_s"} <= set(m)
        assert m["perplexity"] > 1 and 0 <= m["accuracy"] <= 1 and m["latency_p50_s"] > 0

def test_manifest(tiny_run):
    man = Manifest(tiny_run[0]).load()
    assert {s: v["status"] for s, v in man["stages"].items()} == {s: "done" for s in STAGES}
    assert all(v["seconds"] >= 0 for v in man["stages"].values())
    assert man["stages"]["train"]["params"]["student"] == "tiny-random" and man["parameters"]["epochs"] == 1
    assert "torch" in man["packages"] and man["stages"]["distill"]["counts"]["accepted"] > 0

class CarelessServer(WireServer):
    "A teacher that takes only `key`, and answers some questions with a 400 that quotes the request's credentials."
    def __init__(self, key: str, refuse: str, **kw):
        super().__init__(keys=(key,), reply=quote_first_source, **kw)
        self.refuse, self.seen_keys = refuse, []
    def _respond(self, req, raw, key=None, authorization=None):
        self.seen_keys.append(key)
        if self.refuse in req.prompt and not self._key_refused(key, authorization):
            req.status, req.fault = 400, "echo"
            with self._lock: self.log.append(req)
            return 400, error_body(req.protocol, 400, f"bad request (Authorization: {authorization}; key {key})"), {}
        return super()._respond(req, raw, key, authorization)

def quote_first_source(req):
    _, sources = parse_grounded(req.body["messages"])
    return f"{sources[min(sources)]} [1]"

def test_no_secret_anywhere(tmp_path, monkeypatch, capfd):
    "The key reaches the teacher and comes back in its error replies; no run file, log or notebook holds it."
    from test_distill import make_run
    secret = "sk-test-never-written-0123456789"
    for k in sorted({v for vs in KEY_VARS.values() for v in vs}): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))
    papers = tmp_path/"papers"/"sprint"; papers.mkdir(parents=True)
    (papers/"notes.txt").write_text("Sled training notes.")
    run = make_run(tmp_path/"runs")                      # the queries and chunks a distill stage reads
    run.rename(tmp_path/"runs"/"sprint"); run = tmp_path/"runs"/"sprint"
    logged = []
    with CarelessServer(secret, refuse="ground contact") as ws:
        run_domain("sprint", papers_root=tmp_path/"papers", runs_root=tmp_path/"runs", stages=["distill"],
                   params={"teachers": ws.spec("wire-model", provider="openai"), "judge_threshold": 1.0},
                   log=logged.append)
        assert ws.seen_keys and set(ws.seen_keys) == {secret}            # the key did travel
        assert ws.counts(400)["wire-model"] >= 1 and ws.counts(200)["wire-model"] >= 1
    failures = read_jsonl(run/"distill"/"failures.jsonl")
    assert failures and all("400 - bad request (Authorization: " in f["error"] for f in failures)   # recorded ...
    out = capfd.readouterr()
    places = {str(p): p.read_bytes().decode(errors="ignore") for p in (tmp_path/"runs", tmp_path/"cache")
              for p in p.rglob("*") if p.is_file()}
    assert any(p.endswith("notebooks/05_distill.ipynb") for p in places) and len(places) > 5
    places.update(log="\n".join(map(str, logged)), stdout=out.out, stderr=out.err)
    leaks = [where for where, text in places.items() if secret in text or secret[3:] in text]
    assert not leaks, leaks                                            # ... without the key

def test_output_notebooks_carry_parameters(tiny_run):
    nb = nbformat.read(tiny_run[0]/"notebooks"/"06_train.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "student = \"tiny-random\"" in injected[0].source

def test_batch_run_runs_the_stage_not_the_tests(tiny_run):
    "The executed notebooks hold the library cells and the stage, no inline test; nothing is left outside the run."
    run = tiny_run[0]
    for p in sorted((run/"notebooks").glob("*.ipynb")):
        cells = nbformat.read(p, as_version=4).cells
        assert not [c for c in cells if "test_eq(" in c.source or "test_fail(" in c.source], p.name
        assert any(re.search(r"(?<!def )\b[a-z_]+_stage\((papers_dir|run_dir)\b", c.source) for c in cells), p.name
    assert sorted(p.name for p in (run.parent.parent/"kernel-tmp").iterdir()) == []

def test_run_domains_all_continues_past_failed_domains_and_says_which(tmp_path):
    "`run_domains('all')`: an empty domain and one whose graph stage fails, then one that runs; the result tells them apart."
    import shutil
    from conftest import SAMPLE
    from purpose.pipeline import run_domains
    papers = tmp_path/"papers"
    for d in ("empty", "lfs", "sprint"): (papers/d).mkdir(parents=True)
    (papers/"lfs"/"paper.pdf").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    for name in ("halvorsen_2018_stride_kinematics.pdf", "athlete_profiles.csv"): shutil.copy(SAMPLE/name, papers/"sprint"/name)
    logged = []
    res = run_domains("all", papers_root=papers, runs_root=tmp_path/"runs", stages=["extract", "graph"],
                      params={"workers": 1}, log=logged.append)
    assert {d: r["status"] for d, r in res.items()} == {"empty": "failed", "lfs": "failed", "sprint": "done"}
    assert "papers" in res["empty"]["error"] and "is empty" in res["empty"]["error"]
    assert res["lfs"]["error"].startswith("stage 'graph' failed for domain 'lfs'") and "02_graph.ipynb" in res["lfs"]["error"]
    assert {s: v["status"] for s, v in res["sprint"]["stages"].items()} == {"extract": "done", "graph": "done"}
    assert (tmp_path/"runs"/"sprint"/"graph"/"graph.graphml").exists()
    assert not (tmp_path/"runs"/"lfs"/"graph"/"graph.graphml").exists()
    assert logged.index("[sprint] extract ...") > max(i for i, m in enumerate(logged) if "FAILED" in m)
