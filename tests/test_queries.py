"Queries from the sample papers' graph: all 16 cells, contexts from the graph, a split fixed first."
from pathlib import Path

import pytest

from purpose.config import ConfigError, QueriesConfig
from purpose.core import Manifest, RunDir, read_json, read_jsonl
from purpose.queries import DEPTHS, DIMENSIONS, GraphContexts, queries_stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory):
    from purpose.extract import extract_stage
    from purpose.graph import graph_stage
    run = tmp_path_factory.mktemp("run")
    extract_stage(run_dir=run, papers_dir=str(ROOT/"papers"/"sprint"), progress=False,
                  verbose=False)
    graph_stage(run)
    return run


def test_sample_corpus_fills_every_cell_from_the_graph(graph_run):
    c, run = queries_stage(graph_run, per_cell=4, heldout_fraction=0.25), RunDir(graph_run)
    assert c["cells_filled"] == 16 and c["queries"] == 64
    qs = read_jsonl(run.queries_file)
    chunk_ids = {x["chunk_id"] for x in read_jsonl(run.chunks)}
    nodes = {n["id"] for n in read_json(run.nodes)}
    assert all(q["chunk_ids"] and set(q["chunk_ids"]) <= chunk_ids for q in qs)
    assert all(set(q["concepts"]) <= nodes and "{" not in q["question"] for q in qs)
    assert len({q["question"].lower() for q in qs}) == len(qs)
    expert = [q for q in qs if (q["dimension"], q["depth"]) == ("comparative", "expert")]
    contradicted = {(x["source"], x["target"]) for x in read_json(run.contradictions)}
    # expert comparisons are the disagreements
    assert all(tuple(q["concepts"][:2]) in contradicted for q in expert)
    cov = read_json(run.coverage)
    assert [[cov["grid"][d][p] for p in DEPTHS] for d in DIMENSIONS] == [[4] * 4] * 4
    assert {"train", "heldout"} == {q["split"] for q in qs}
    assert run.coverage_png.stat().st_size > 5_000


def test_split_does_not_depend_on_other_questions(graph_run):
    run = RunDir(graph_run)
    queries_stage(graph_run, per_cell=2)
    small = {q["query_id"]: q["split"] for q in read_jsonl(run.queries_file)}
    queries_stage(graph_run, per_cell=6)
    big = {q["query_id"]: q["split"] for q in read_jsonl(run.queries_file)}
    assert set(small) <= set(big) and all(big[k] == v for k, v in small.items())


def test_the_config_is_checked_and_recorded(graph_run):
    "A config or keyword overrides: checked before the stage starts, recorded in the manifest."
    run = RunDir(graph_run)
    cfg = QueriesConfig(per_cell=1, heldout_by="question", heldout_fraction=0.5, seed=3)
    assert queries_stage(graph_run, cfg)["queries"] == 16
    assert Manifest(graph_run).stage("queries")["params"] == {
        "per_cell": 1, "heldout_fraction": 0.5, "heldout_by": "question", "seed": 3}
    assert read_json(run.coverage)["heldout_by"] == "question"
    before = run.queries_file.stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"heldout_fraction=0.95: out of range \(share held out"):
        queries_stage(graph_run, heldout_fraction=0.95)
    with pytest.raises(ConfigError, match=r"heldout_by='paper': out of range"):
        queries_stage(graph_run, cfg, heldout_by="paper")
    assert run.queries_file.stat().st_mtime_ns == before              # nothing was rewritten
    ctx = GraphContexts.from_run(graph_run)                          # the stage's view of the graph
    n_communities = len(read_json(run.taxonomy)["communities"])
    assert ctx.methods and ctx.communities() == list(range(n_communities))


def test_documents_are_held_out_whole_and_the_heldout_set_stays_clean(graph_run):
    "Documents held out whole: after the offline teacher answers, few held-out items are tainted."
    from purpose.distill import distill_stage
    from purpose.metrics import contamination_check
    c, run = queries_stage(graph_run, per_cell=4), RunDir(graph_run)
    cov = read_json(run.coverage)
    held = set(cov["heldout_documents"])
    assert cov["heldout_by"] == "document" and c["heldout_documents"] == len(held) >= 1
    doc = {x["chunk_id"]: x["doc_id"] for x in read_jsonl(run.chunks)}
    qs = read_jsonl(run.queries_file)
    assert all({doc[cid] in held for cid in q["chunk_ids"]} == {q["split"] == "heldout"}
               for q in qs)
    assert 0.1 <= sum(q["split"] == "heldout" for q in qs) / len(qs) <= 0.5
    d = distill_stage(graph_run, domain="sprint", cache=False)
    qa = read_jsonl(run.qa)
    train = [q for q in qa if q["split"] == "train"]
    heldout = [q for q in qa if q["split"] == "heldout"]
    flagged = contamination_check(heldout, train)
    assert len(flagged) <= 0.25 * len(heldout), [f["reasons"] for f in flagged]
    # no training answer quotes a held-out sentence
    assert not [f for f in flagged if any("answer" in r for r in f["reasons"])]
    from datasets import load_from_disk
    rows = list(load_from_disk(str(run.dataset))["train"])
    passages = [r for r in rows if r["format"] == "passage"]
    # held-out knowledge as text
    assert len(passages) == d["passages"] and any(doc[r["citations"][0]] in held for r in passages)
    cited = {cid for q in train for cid in q["citations"]}
    assert not {r["citations"][0] for r in passages} & cited


def test_no_training_prompt_comes_with_two_answers(graph_run):
    "Each training prompt of the sample run says what it asks for: none comes with two answers."
    from purpose.distill import distill_stage
    from purpose.trainset import prompt_conflicts
    queries_stage(graph_run, per_cell=4)
    distill_stage(graph_run, domain="sprint", cache=False, passages="all")
    exports = RunDir(graph_run).exports
    rows = read_jsonl(exports/"messages.jsonl")
    passages = [r["messages"][1]["content"] for r in rows if r["dimension"] == "passage"]
    assert len(passages) > 20 and any(" about " in q for q in passages)    # records need a phrase
    assert prompt_conflicts(rows) == []
    pc = read_jsonl(exports/"prompt_completion.jsonl")
    assert prompt_conflicts([{"messages": r["prompt"] + r["completion"]} for r in pc]) == []
    assert "training prompts with two answers: 0" in RunDir(graph_run).card.read_text()
