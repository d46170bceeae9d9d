"End to end: papermill runs every stage notebook on a tiny configuration and writes the whole run-folder contract."
import json
from pathlib import Path
import nbformat
import pytest
from conftest import TINY
from purpose.core import STAGES, Manifest, read_jsonl
from purpose.pipeline import run_domain

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
    secret = "sk-test-never-written-123456"
    import os
    tmp = root/"kernel-tmp"; tmp.mkdir()                 # the kernels' temporary folder: a batch run leaves it empty
    old_tmp = os.environ.get("TMPDIR")
    os.environ.update(OPENAI_API_KEY=secret, TMPDIR=str(tmp))
    try: summary = run_domain("sprint", papers_root=root/"papers", runs_root=root/"runs", params=TINY, log=lambda *a: None)
    finally:
        os.environ.pop("OPENAI_API_KEY")
        if old_tmp is None: os.environ.pop("TMPDIR")
        else: os.environ["TMPDIR"] = old_tmp
    return root/"runs"/"sprint", summary, secret

def test_contract_files(tiny_run):
    run, summary, _ = tiny_run
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

def test_no_secret_anywhere(tiny_run):
    run, _, secret = tiny_run
    for p in run.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".jsonl", ".ipynb", ".md", ".graphml"):
            assert secret not in p.read_text(errors="ignore"), p

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
        assert any("_stage(run_dir" in c.source for c in cells), p.name
    assert sorted(p.name for p in (run.parent.parent/"kernel-tmp").iterdir()) == []

def test_rerun_of_distill_asks_no_teacher_again(tiny_run):
    from purpose.distill import distill_stage
    run = tiny_run[0]
    before = len(read_jsonl(run/"distill"/"answers.jsonl"))
    distill_stage(run, domain="sprint")
    assert len(read_jsonl(run/"distill"/"answers.jsonl")) == before
    assert Manifest(run).stage("distill")["asked"].get("answered", 0) == 0
