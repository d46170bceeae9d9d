"Strategic queries from a real graph of the sample corpus: all 16 cells, contexts from the graph, the split fixed before answers."
from pathlib import Path

import pytest

from purpose.core import read_json, read_jsonl
from purpose.queries import DEPTHS, DIMENSIONS, queries_stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory):
    from purpose.extract import extract_stage
    from purpose.graph import graph_stage
    run = tmp_path_factory.mktemp("run")
    extract_stage(ROOT/"papers"/"sprint", run)
    graph_stage(run)
    return run


def test_sample_corpus_fills_every_cell_from_the_graph(graph_run):
    c = queries_stage(graph_run, per_cell=4, heldout_fraction=0.25)
    assert c["cells_filled"] == 16 and c["queries"] == 64
    qs = read_jsonl(graph_run/"queries"/"queries.jsonl")
    chunk_ids = {x["chunk_id"] for x in read_jsonl(graph_run/"extract"/"chunks.jsonl")}
    nodes = {n["id"] for n in read_json(graph_run/"graph"/"nodes.json")}
    assert all(q["chunk_ids"] and set(q["chunk_ids"]) <= chunk_ids for q in qs)
    assert all(set(q["concepts"]) <= nodes and "{" not in q["question"] for q in qs)
    assert len({q["question"].lower() for q in qs}) == len(qs)
    expert = [q for q in qs if (q["dimension"], q["depth"]) == ("comparative", "expert")]
    contradicted = {(x["source"], x["target"]) for x in read_json(graph_run/"graph"/"contradictions.json")}
    assert all(tuple(q["concepts"][:2]) in contradicted for q in expert)          # expert comparisons are the disagreements
    cov = read_json(graph_run/"queries"/"coverage.json")
    assert [[cov["grid"][d][p] for p in DEPTHS] for d in DIMENSIONS] == [[4] * 4] * 4
    assert {"train", "heldout"} == {q["split"] for q in qs}
    assert (graph_run/"queries"/"coverage.png").stat().st_size > 5_000


def test_split_does_not_depend_on_other_questions(graph_run):
    queries_stage(graph_run, per_cell=2)
    small = {q["query_id"]: q["split"] for q in read_jsonl(graph_run/"queries"/"queries.jsonl")}
    queries_stage(graph_run, per_cell=6)
    big = {q["query_id"]: q["split"] for q in read_jsonl(graph_run/"queries"/"queries.jsonl")}
    assert set(small) <= set(big) and all(big[k] == v for k, v in small.items())


def test_documents_are_held_out_whole_and_the_heldout_set_stays_clean(graph_run):
    "Default split: whole documents; after the offline teacher answers, the contamination check flags few held-out items."
    from purpose.distill import distill_stage
    from purpose.evaluate import contamination_check
    c = queries_stage(graph_run, per_cell=4)
    cov = read_json(graph_run/"queries"/"coverage.json")
    held = set(cov["heldout_documents"])
    assert cov["heldout_by"] == "document" and c["heldout_documents"] == len(held) >= 1
    doc = {x["chunk_id"]: x["doc_id"] for x in read_jsonl(graph_run/"extract"/"chunks.jsonl")}
    qs = read_jsonl(graph_run/"queries"/"queries.jsonl")
    assert all({doc[cid] in held for cid in q["chunk_ids"]} == {q["split"] == "heldout"} for q in qs)
    assert 0.1 <= sum(q["split"] == "heldout" for q in qs) / len(qs) <= 0.5
    d = distill_stage(graph_run, domain="sprint", cache=False)
    qa = read_jsonl(graph_run/"distill"/"qa.jsonl")
    train, heldout = [q for q in qa if q["split"] == "train"], [q for q in qa if q["split"] == "heldout"]
    flagged = contamination_check(heldout, train)
    assert len(flagged) <= 0.25 * len(heldout), [f["reasons"] for f in flagged]
    assert not [f for f in flagged if any("answer" in r for r in f["reasons"])]       # no training answer quotes a held-out sentence
    from datasets import load_from_disk
    rows = list(load_from_disk(str(graph_run/"distill"/"dataset"))["train"])
    passages = [r for r in rows if r["format"] == "passage"]
    assert len(passages) == d["passages"] and any(doc[r["citations"][0]] in held for r in passages)   # held-out knowledge as text
    assert not {r["citations"][0] for r in passages} & {cid for q in train for cid in q["citations"]}


def test_no_training_prompt_comes_with_two_answers(graph_run):
    "Each training prompt of the sample run says what it asks for: none comes with two answers."
    from purpose.distill import distill_stage, prompt_conflicts
    queries_stage(graph_run, per_cell=4)
    distill_stage(graph_run, domain="sprint", cache=False, passages="all")
    exports = graph_run/"distill"/"exports"
    rows = read_jsonl(exports/"messages.jsonl")
    passages = [r["messages"][1]["content"] for r in rows if r["dimension"] == "passage"]
    assert len(passages) > 20 and any(" about " in q for q in passages)    # records need a phrase
    assert prompt_conflicts(rows) == []
    pc = read_jsonl(exports/"prompt_completion.jsonl")
    assert prompt_conflicts([{"messages": r["prompt"] + r["completion"]} for r in pc]) == []
    assert "training prompts with two answers: 0" in (graph_run/"distill"/"card.md").read_text()
