"A second domain with its own vocabulary runs extract -> graph -> queries without a library edit."
import json
from pathlib import Path

import pytest

from purpose.core import (PurposeError, Manifest, RunDir, read_json, read_jsonl, stage_fingerprint,
                          STAGE_READS)
from purpose.domain import DOMAIN_FILE, run_vocabulary
from purpose.extract import extract_stage
from purpose.graph import graph_stage
from purpose.queries import GraphContexts, queries_stage
from purpose.student import TINY_STUDENT

ROOT = Path(__file__).resolve().parents[1]
KW = dict(tokenizer=TINY_STUDENT, workers=1, chunk_tokens=96, chunk_overlap=8)


def extract(papers: Path, run: Path):
    "The extract stage of folder `papers` into `run`, with the tiny tokenizer."
    return extract_stage(run, papers_dir=str(papers), **KW)

CARDIO = {"name": "cardio", "populations": ["outpatients"], "units": ["mmHg", "mg/dL"],
          "method_hints": ["echocardiography", "sphygmomanometer"], "stopwords": ["ward"]}

PAPERS = {
    "lee_2020_salt.md": """# Salt restriction and blood pressure in outpatients

## Abstract
The aim of this study was to test whether salt restriction lowers systolic blood pressure. In a
randomised trial, 120 outpatients followed salt restriction or usual diet for twelve weeks. Salt
restriction reduces systolic blood pressure by 9 mmHg (p = 0.003). Cardiac function was checked by
echocardiography in every ward.

## Methods
Systolic blood pressure was measured with a sphygmomanometer and cardiac function by
echocardiography. Fasting glucose was 104 mg/dL at baseline. Salt restriction and systolic blood
pressure were recorded weekly.

## Results
Salt restriction reduces systolic blood pressure. Echocardiography showed stable ejection fraction
in the ward. Salt restriction reduces fasting glucose by 6 mg/dL.
""",
    "okafor_2021_statins.md": """# Statin therapy, LDL cholesterol and systolic blood pressure

## Abstract
We investigated statin therapy in 86 outpatients with high LDL cholesterol in a randomised trial.
Statin therapy reduces LDL cholesterol by 38 mg/dL (p < 0.001). Statin therapy does not reduce
systolic blood pressure (142 mmHg before and 141 mmHg after). Echocardiography was done on the
ward.

## Methods
LDL cholesterol was measured after fasting; systolic blood pressure with a sphygmomanometer.
Cardiac function was assessed by echocardiography. Statin therapy lasted sixteen weeks.

## Results
Statin therapy reduces LDL cholesterol. Echocardiography findings did not change with statin
therapy.
""",
    "silva_2022_exercise.md": """# Exercise training, salt restriction and systolic blood pressure

## Abstract
This study examined exercise training in 64 outpatients. Exercise training reduces systolic blood
pressure by 5 mmHg (p = 0.02). Salt restriction increases systolic blood pressure control. LDL
cholesterol was 130 mg/dL.

## Methods
Systolic blood pressure was measured with a sphygmomanometer; cardiac function by echocardiography.
Exercise training and salt restriction were combined in one arm.

## Results
Exercise training reduces systolic blood pressure. Salt restriction does not reduce systolic blood
pressure.
""",
}


def cardio_papers(root: Path, vocab: dict | None = CARDIO) -> Path:
    d = root/"papers"/"cardio"
    d.mkdir(parents=True, exist_ok=True)
    for name, text in PAPERS.items(): (d/name).write_text(text)
    if vocab is not None: (d/DOMAIN_FILE).write_text(json.dumps(vocab))
    return d


def stats(run: Path) -> list[dict]:
    docs = read_jsonl(RunDir(run).documents)
    return [s for d in docs if d.get("record") for s in d["record"]["statistics"]]


@pytest.fixture(scope="module")
def cardio_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cardio")
    run = root/"run"
    extract(cardio_papers(root), run)
    graph_stage(run, max_concepts=40)
    queries_stage(run, per_cell=2, heldout_fraction=0.3)
    return run


def test_domain_vocabulary_shows_in_extract(cardio_run):
    found = {(s["kind"], s["unit"], s["value"]) for s in stats(cardio_run)}
    assert {("sample_size", "outpatients", 120), ("sample_size", "outpatients", 86)} <= found
    assert {("measurement", "mmHg", 9), ("measurement", "mmHg", 142),
            ("measurement", "mg/dL", 38)} <= found
    recorded = read_json(RunDir(cardio_run).domain)
    assert recorded["name"] == "cardio" and recorded["source"].endswith("cardio/_domain.json")
    assert recorded["units"][:2] == ["mmHg", "mg/dL"]
    assert "mm" in recorded["units"]                                 # added to the defaults
    assert Manifest(cardio_run).stage("extract")["params"]["vocabulary"] == recorded["fingerprint"]


def test_general_defaults_do_not_know_the_domain(tmp_path):
    run = tmp_path/"run"
    extract(cardio_papers(tmp_path, vocab=None), run)
    units = {s["unit"] for s in stats(run)}
    assert "outpatients" not in units and "mmHg" not in units and "mg/dL" not in units
    assert run_vocabulary(run).name == "general"


def test_graph_and_queries_use_the_recorded_vocabulary(cardio_run):
    run = RunDir(cardio_run)
    nodes = {n["id"] for n in read_json(run.nodes)}
    assert "echocardiography" in nodes and "systolic blood pressure" in nodes
    assert not any("ward" in n.split() for n in nodes)              # a domain stopword
    vocab = run_vocabulary(cardio_run)
    ctx = GraphContexts(read_json(run.nodes), [], [], vocab=vocab)
    hinted = {"echocardiography", "sphygmomanometer"}
    assert set(ctx.methods[:2]) == hinted                            # the domain's hints first
    assert not set(GraphContexts(read_json(run.nodes), [], []).methods[:2]) & hinted
    qs = read_jsonl(run.queries_file)
    meth = [q for q in qs if q["dimension"] == "methodological"]
    assert any(hinted & set(q["concepts"]) for q in meth), [q["concepts"] for q in meth]


def test_changing_the_vocabulary_changes_the_fingerprints(tmp_path):
    papers, run = cardio_papers(tmp_path), tmp_path/"run"
    extract(papers, run)
    fp, voc = Manifest(run).stage("extract")["fingerprint"], RunDir(run).domain.read_bytes()
    reads = lambda s: [run/p for p in STAGE_READS[s]] + [RunDir(run).domain]
    graph_fp = stage_fingerprint(run, "graph", {}, inputs=reads("graph"))
    (papers/DOMAIN_FILE).write_text(json.dumps({**CARDIO, "units": ["mmHg"]}))
    extract(papers, run)
    assert Manifest(run).stage("extract")["fingerprint"] != fp
    assert RunDir(run).domain.read_bytes() != voc
    assert stage_fingerprint(run, "graph", {}, inputs=reads("graph")) != graph_fp
    assert ("measurement", "mg/dL") not in {(s["kind"], s["unit"]) for s in stats(run)}


@pytest.mark.parametrize("bad, says", [
    ('{"units": "mmHg"}', "field 'units' must be a list of non-empty strings"),
    ('{"unit": ["mmHg"]}', "unknown field 'unit'"),
    ('{"units": ["mmHg",]}', "not valid JSON (line 1")])
def test_a_bad_vocabulary_file_names_file_and_field(tmp_path, bad, says):
    papers = cardio_papers(tmp_path, vocab=None)
    (papers/DOMAIN_FILE).write_text(bad)
    with pytest.raises(PurposeError, match="_domain.json: ") as e: extract(papers, tmp_path/"run")
    assert says in str(e.value) and str(papers/DOMAIN_FILE) in str(e.value)


def test_sprint_sample_domain_keeps_its_sample_sizes_and_units(tmp_path):
    run = tmp_path/"run"
    extract(ROOT/"papers"/"sprint", run)
    kinds = {(s["kind"], s["unit"]) for s in stats(run)}
    assert {("sample_size", "n"), ("measurement", "m/s"), ("measurement", "Hz")} <= kinds
    assert {u for k, u in kinds if k == "sample_size"} & {"sprinters", "athletes", "players"}
    vocab = run_vocabulary(run)
    assert vocab.name == "sprint" and "force plate" in vocab.method_hints
