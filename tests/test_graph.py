"Knowledge graph: the planted contradictions of the sample papers, the LLM extractor, the config."
import json, re
from pathlib import Path

import pytest

from purpose.config import ConfigError, GraphConfig
from purpose.core import Manifest, RunDir, read_json
from purpose.graph import EXTRACTION_SCHEMA, graph_stage
from purpose.concepts import norm_term
from purpose.modelhub import KEY_VARS
from purpose.wire import WireServer

ROOT = Path(__file__).resolve().parents[1]
_CLAIM = re.compile(r"\s*(.+?) (does not |do not )?(increase|improve|reduce|correlate)s?( with)? "
                    r"(.+?)\.?\s*$")


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    for k in sorted({v for vs in KEY_VARS.values() for v in vs}):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))


def planted_contradictions() -> set[tuple[str, str]]:
    "Concept pairs whose front-matter claims conflict across the sample papers (the ground truth)."
    by_pair = {}
    for md in sorted((ROOT/"papers"/"_sources"/"sprint").glob("*.md")):
        line = next(l for l in md.read_text().splitlines() if l.startswith("claims:"))
        for claim in line[len("claims:"):].split("|"):
            m = _CLAIM.match(claim)
            pol = 0 if m.group(2) else -1 if m.group(3) == "reduce" else 1
            pair = (norm_term(m.group(1)), norm_term(m.group(5)))
            by_pair.setdefault(pair, {}).setdefault(pol, set()).add(md.name)
    return {p for p, pols in by_pair.items() if len(pols) > 1}


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    from purpose.extract import extract_stage
    run = tmp_path_factory.mktemp("run")
    extract_stage(run_dir=run, papers_dir=str(ROOT/"papers"/"sprint"), progress=False,
                  verbose=False)
    return run


def test_every_planted_contradiction_is_reported_with_both_sources(sample_run):
    counts, run = graph_stage(sample_run), RunDir(sample_run)
    found = {(c["source"], c["target"]): c for c in read_json(run.contradictions)}
    planted = planted_contradictions()
    assert len(planted) == 6, planted
    assert planted <= set(found), planted - set(found)
    for p in planted:
        assert len(found[p]["documents"]) >= 2 and all(c["sentence"] for c in found[p]["claims"])
    assert counts["contradictions"] <= len(planted) + 2          # few spurious ones
    nodes = {n["id"] for n in read_json(run.nodes)}
    assert not {"time", "velocity", "difference", "sprint", "athlete"} & nodes
    assert run.graph_png.stat().st_size > 10_000


def test_llm_extractor_validated_json_over_the_wire(sample_run):
    def reply(req):
        assert req.json_schema == EXTRACTION_SCHEMA
        ids = re.findall(r"\[chunk_id: (\w+)\]", req.prompt)
        quote = req.prompt.split(f"[chunk_id: {ids[0]}]\n", 1)[1][:40]        # a real quote
        rel = lambda s, t, r, cid, ev: {"source": s, "target": t, "relation": r, "chunk_id": cid,
                                        "evidence": ev}
        rels = [rel("heavy sled training", "horizontal force", "increases", ids[0], quote),
                rel("wind", "stride length", "reduces", ids[0], "invented words, not there"),
                rel("a", "b", "increases", "nope", "whatever text")]
        concepts = [{"name": "Sled towing", "type": "intervention", "aliases": ["ST"]}]
        return json.dumps({"concepts": concepts, "relations": rels})
    run = RunDir(sample_run)
    with WireServer(reply=reply) as ws:
        counts = graph_stage(sample_run, graph_model=ws.spec(), budget_usd=1.0,
                             concurrency=4)
        n_calls = ws.counts()["wire-model"]
        assert n_calls > 5
        ex = read_json(run.graph_llm)
        assert ex["calls"]["ok"] == n_calls and not ex["failed"]
        reasons = {r["reason"] for r in ex["rejected"]}
        assert reasons == {"evidence not found in the cited chunk",
                           "chunk_id 'nope' is not in this batch"}
        assert counts["llm_rejected_relations"] == 2 * n_calls
        nodes = {n["id"]: n for n in read_json(run.nodes)}
        assert nodes["sled towing"]["extractor"] == "llm"
        graph_stage(sample_run, graph_model=ws.spec())          # re-run: every batch from the cache
        assert ws.counts()["wire-model"] == n_calls


def test_the_config_is_checked_and_recorded(sample_run):
    "A config or keyword overrides: checked before the stage starts, recorded in the manifest."
    run = RunDir(sample_run)
    assert graph_stage(sample_run, GraphConfig(max_concepts=40, seed=1))["concepts"] == 40
    params = Manifest(sample_run).stage("graph")["params"]
    assert params == {"max_concepts": 40, "seed": 1, "graph_model": None, "budget_usd": None,
                      "concurrency": 4}
    before = run.nodes.stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"stage 'graph' parameter max_concepts='40': expected"):
        graph_stage(sample_run, max_concepts="40")
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) concepts; GraphConfig takes"):
        graph_stage(sample_run, concepts=40)
    assert run.nodes.stat().st_mtime_ns == before                  # nothing was rewritten
    assert Manifest(sample_run).stage("graph")["status"] == "done"
