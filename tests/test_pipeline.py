"End to end: papermill runs every stage notebook on a tiny configuration and writes the contract."
import json, re
import nbformat
import pytest
from conftest import TINY
from purpose.core import REGISTRY, STAGES, Manifest, RunDir, read_jsonl, run_summary
from purpose.modelhub import KEY_VARS, parse_grounded
from purpose.pipeline import run_domain
from purpose.wire import WireServer, error_body

SAMPLE_FILES = ("halvorsen_2018_stride_kinematics.pdf", "thorsdottir_2023_athlete_profiles.pdf",
                "vance_2024_sled_plyometric_training.pdf", "whitcombe_2019_acceleration_phase.pdf",
                "athlete_profiles.csv")

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import os, shutil
    from conftest import SAMPLE
    root = tmp_path_factory.mktemp("e2e")
    papers = root/"papers"/"sprint"
    papers.mkdir(parents=True)
    for name in SAMPLE_FILES: shutil.copy(SAMPLE/name, papers/name)
    tmp = root/"kernel-tmp"          # the kernels' temporary folder: a batch run leaves it empty
    tmp.mkdir()
    old_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    try: summary = run_domain("sprint", papers_root=root/"papers", runs_root=root/"runs",
                              params=TINY, log=lambda *a: None)
    finally:
        if old_tmp is None: os.environ.pop("TMPDIR")
        else: os.environ["TMPDIR"] = old_tmp
    return root/"runs"/"sprint", summary

def test_contract_files(tiny_run):
    "Every file the registry says a stage always writes is there, and the stores in its folders."
    run, summary = tiny_run
    assert list(summary) == list(STAGES)
    r = RunDir(run)
    for s in REGISTRY:
        for key, rel in s.writes.items(): assert getattr(r, key).exists(), (s.name, rel)
    assert r.manifest.exists() and (r.dataset/"dataset_dict.json").exists()
    assert (r.adapter/"adapter_config.json").exists()
    assert [row["missing"] for row in run_summary(run)] == [[] for _ in STAGES]
    nbs = sorted(p.name for p in r.notebooks.glob("*.ipynb"))
    assert nbs == sorted(s.notebook for s in REGISTRY)

def test_documents_and_chunks_have_provenance(tiny_run):
    run = RunDir(tiny_run[0])
    docs = read_jsonl(run.documents)
    assert len(docs) == 5 and all(d["status"] == "ok" for d in docs)
    pdf_chunks = [c for c in read_jsonl(run.chunks) if c["source"].endswith(".pdf")]
    assert pdf_chunks
    assert all(c["page_start"] >= 1 and c["page_end"] >= c["page_start"] for c in pdf_chunks)

def test_report_shape(tiny_run):
    rep = json.loads(RunDir(tiny_run[0]).report.read_text())
    assert set(rep["systems"]) == {"base", "tuned"}
    for m in rep["systems"].values():
        assert {"perplexity", "accuracy", "latency_p50_s"} <= set(m)
        assert m["perplexity"] > 1 and 0 <= m["accuracy"] <= 1 and m["latency_p50_s"] > 0

def test_manifest(tiny_run):
    man = Manifest(tiny_run[0]).load()
    assert {s: v["status"] for s, v in man["stages"].items()} == {s: "done" for s in STAGES}
    assert all(v["seconds"] >= 0 for v in man["stages"].values())
    assert man["stages"]["train"]["params"]["student"] == "tiny-random"
    assert man["parameters"]["epochs"] == 1
    assert "torch" in man["packages"] and man["stages"]["distill"]["counts"]["accepted"] > 0

class CarelessServer(WireServer):
    "A teacher that takes only `key` and answers some questions with a 400 quoting the key."
    def __init__(self, key: str, refuse: str, **kw):
        super().__init__(keys=(key,), reply=quote_first_source, **kw)
        self.refuse, self.seen_keys = refuse, []
    def _respond(self, req, raw, key=None, authorization=None):
        self.seen_keys.append(key)
        if self.refuse in req.prompt and not self._key_refused(key, authorization):
            req.status, req.fault = 400, "echo"
            with self._lock: self.log.append(req)
            said = f"bad request (Authorization: {authorization}; key {key})"
            return 400, error_body(req.protocol, 400, said), {}
        return super()._respond(req, raw, key, authorization)

def quote_first_source(req):
    _, sources = parse_grounded(req.body["messages"])
    return f"{sources[min(sources)]} [1]"

def test_no_secret_anywhere(tmp_path, monkeypatch, capfd):
    "The key reaches the teacher and comes back in its errors; no file, log or notebook holds it."
    from test_distill import make_run
    secret = "sk-test-never-written-0123456789"
    for k in sorted({v for vs in KEY_VARS.values() for v in vs}):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))
    papers = tmp_path/"papers"/"sprint"
    papers.mkdir(parents=True)
    (papers/"notes.txt").write_text("Sled training notes.")
    run = make_run(tmp_path/"runs")                # the queries and chunks a distill stage reads
    run = run.rename(tmp_path/"runs"/"sprint")
    logged = []
    with CarelessServer(secret, refuse="ground contact") as ws:
        params = {"teachers": ws.spec("wire-model", provider="openai"), "judge_threshold": 1.0}
        run_domain("sprint", papers_root=tmp_path/"papers", runs_root=tmp_path/"runs",
                   stages=["distill"], params=params, log=logged.append)
        assert ws.seen_keys and set(ws.seen_keys) == {secret}            # the key did travel
        assert ws.counts(400)["wire-model"] >= 1 and ws.counts(200)["wire-model"] >= 1
    failures = read_jsonl(RunDir(run).distill_failures)
    # recorded ...
    assert failures and all("400 - bad request (Authorization: " in f["error"] for f in failures)
    out = capfd.readouterr()
    files = [p for d in (tmp_path/"runs", tmp_path/"cache") for p in d.rglob("*") if p.is_file()]
    places = {str(p): p.read_bytes().decode(errors="ignore") for p in files}
    assert any(p.endswith("notebooks/05_distill.ipynb") for p in places) and len(places) > 5
    places.update(log="\n".join(map(str, logged)), stdout=out.out, stderr=out.err)
    leaks = [where for where, text in places.items() if secret in text or secret[3:] in text]
    assert not leaks, leaks                                            # ... without the key

def test_output_notebooks_carry_parameters(tiny_run):
    nb = nbformat.read(RunDir(tiny_run[0]).notebooks/"06_train.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "student = \"tiny-random\"" in injected[0].source

def test_batch_run_runs_the_stage_not_the_tests(tiny_run):
    "The executed notebooks hold the library cells and the stage, no test; nothing is left outside."
    run = RunDir(tiny_run[0])
    for p in sorted(run.notebooks.glob("*.ipynb")):
        cells = nbformat.read(p, as_version=4).cells
        assert not [c for c in cells if "test_eq(" in c.source or "test_fail(" in c.source], p.name
        calls = r"(?<!def )\b[a-z_]+_stage\((papers_dir|run_dir)\b"
        assert any(re.search(calls, c.source) for c in cells), p.name
    assert sorted(p.name for p in (run.root.parent.parent/"kernel-tmp").iterdir()) == []

def test_run_domains_all_continues_past_failed_domains_and_says_which(tmp_path):
    "`run_domains('all')`: an empty domain, one whose graph fails, then one that runs; told apart."
    import shutil
    from conftest import SAMPLE
    from purpose.pipeline import run_domains
    papers = tmp_path/"papers"
    for d in ("empty", "lfs", "sprint"): (papers/d).mkdir(parents=True)
    lfs = "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"
    (papers/"lfs"/"paper.pdf").write_text(lfs)
    for name in ("halvorsen_2018_stride_kinematics.pdf", "athlete_profiles.csv"):
        shutil.copy(SAMPLE/name, papers/"sprint"/name)
    logged = []
    res = run_domains("all", papers_root=papers, runs_root=tmp_path/"runs",
                      stages=["extract", "graph"], params={"workers": 1}, log=logged.append)
    statuses = {d: r["status"] for d, r in res.items()}
    assert statuses == {"empty": "failed", "lfs": "failed", "sprint": "done"}
    assert "papers" in res["empty"]["error"] and "is empty" in res["empty"]["error"]
    assert res["lfs"]["error"].startswith("stage 'graph' failed for domain 'lfs'")
    assert "02_graph.ipynb" in res["lfs"]["error"]
    stages = {s: v["status"] for s, v in res["sprint"]["stages"].items()}
    assert stages == {"extract": "done", "graph": "done"}
    assert RunDir(tmp_path/"runs"/"sprint").graphml.exists()
    assert not RunDir(tmp_path/"runs"/"lfs").graphml.exists()
    last_failure = max(i for i, m in enumerate(logged) if "FAILED" in m)
    assert logged.index("[sprint] extract ...") > last_failure
