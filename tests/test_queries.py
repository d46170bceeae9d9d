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
