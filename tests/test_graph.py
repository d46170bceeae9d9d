"Knowledge graph: the planted contradictions of the sample corpus, and the LLM extractor over the real wire."
import json, re
from pathlib import Path

import pytest

from purpose.core import read_json, write_jsonl
from purpose.graph import EXTRACTION_SCHEMA, graph_stage, norm_term
from purpose.modelhub import KEY_VARS
from purpose.wire import WireServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    for k in sorted({v for vs in KEY_VARS.values() for v in vs}): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))


def planted_contradictions() -> set[tuple[str, str]]:
    "Concept pairs whose front-matter claims conflict across the sample papers (the ground truth)."
    by_pair = {}
    for md in sorted((ROOT/"papers"/"_sources"/"sprint").glob("*.md")):
        line = next(l for l in md.read_text().splitlines() if l.startswith("claims:"))
        for claim in line[len("claims:"):].split("|"):
            m = re.match(r"\s*(.+?) (does not |do not )?(increase|improve|reduce|correlate)s?( with)? (.+?)\.?\s*$", claim)
            pol = 0 if m.group(2) else -1 if m.group(3) == "reduce" else 1
            by_pair.setdefault((norm_term(m.group(1)), norm_term(m.group(5))), {}).setdefault(pol, set()).add(md.name)
    return {p for p, pols in by_pair.items() if len(pols) > 1}


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    from purpose.extract import extract_stage
    run = tmp_path_factory.mktemp("run")
    extract_stage(ROOT/"papers"/"sprint", run)
    return run


def test_every_planted_contradiction_is_reported_with_both_sources(sample_run):
    counts = graph_stage(sample_run)
    found = {(c["source"], c["target"]): c for c in read_json(sample_run/"graph"/"contradictions.json")}
    planted = planted_contradictions()
    assert len(planted) == 6, planted
    assert planted <= set(found), planted - set(found)
    for p in planted: assert len(found[p]["documents"]) >= 2 and all(c["sentence"] for c in found[p]["claims"])
    assert counts["contradictions"] <= len(planted) + 2          # few spurious ones
    nodes = {n["id"] for n in read_json(sample_run/"graph"/"nodes.json")}
    assert not {"time", "velocity", "difference", "sprint", "athlete"} & nodes
    assert (sample_run/"graph"/"graph.png").stat().st_size > 10_000


def test_llm_extractor_validated_json_over_the_wire(sample_run):
    def reply(req):
        assert req.json_schema == EXTRACTION_SCHEMA
        ids = re.findall(r"\[chunk_id: (\w+)\]", req.prompt)
        rels = [{"source": "heavy sled training", "target": "horizontal force", "relation": "increases", "chunk_id": ids[0],
                 "evidence": req.prompt.split(f"[chunk_id: {ids[0]}]\n", 1)[1][:40]},                       # a real quote
                {"source": "wind", "target": "stride length", "relation": "reduces", "chunk_id": ids[0], "evidence": "invented words that are not there"},
                {"source": "a", "target": "b", "relation": "increases", "chunk_id": "nope", "evidence": "whatever text"}]
        return json.dumps({"concepts": [{"name": "Sled towing", "type": "intervention", "aliases": ["ST"]}], "relations": rels})
    with WireServer(reply=reply) as ws:
        counts = graph_stage(sample_run, graph_model=ws.spec(), budget_usd=1.0, concurrency=4)
        n_calls = ws.counts()["wire-model"]
        assert n_calls > 5
        ex = read_json(sample_run/"graph"/"llm_extraction.json")
        assert ex["calls"]["ok"] == n_calls and not ex["failed"]
        reasons = {r["reason"] for r in ex["rejected"]}
        assert reasons == {"evidence not found in the cited chunk", "chunk_id 'nope' is not in this batch"}
        assert counts["llm_rejected_relations"] == 2 * n_calls
        nodes = {n["id"]: n for n in read_json(sample_run/"graph"/"nodes.json")}
        assert nodes["sled towing"]["extractor"] == "llm"
        graph_stage(sample_run, graph_model=ws.spec())                       # re-run: every batch from the cache
        assert ws.counts()["wire-model"] == n_calls
