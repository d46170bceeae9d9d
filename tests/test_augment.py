"""Augmentation: offline texts from the sample corpus cite their chunks, meet the size, are
deterministic; the LLM path over the wire."""
import hashlib, json, os, re, shutil, subprocess, sys
from pathlib import Path

import pytest

from purpose.augment import LLM_KINDS, augment_stage
from purpose.core import read_json, read_jsonl
from purpose.extract import chunk_tokenizer
from purpose.config import AugmentConfig
from purpose.providers import KEY_VARS
from purpose.restate import BLANK, KINDS, attribution
from purpose.text import split_sentences
from purpose.wire import WireServer

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["text_id", "kind", "format", "text", "question", "answer", "chunk_ids", "doc_ids",
          "entities", "n_tokens", "teacher"]


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    for k in sorted({v for vs in KEY_VARS.values() for v in vs}):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory):
    "Extract and graph of the sample domain, built once."
    from purpose.extract import extract_stage
    from purpose.graph import graph_stage
    run = tmp_path_factory.mktemp("run")
    extract_stage(run, papers_dir=str(ROOT/"papers"/"sprint"))
    graph_stage(run)
    return run


def fresh(graph_run: Path, dest: Path) -> Path:
    "A run folder with only the extract and graph outputs."
    for d in ("extract", "graph"): shutil.copytree(graph_run/d, dest/d)
    return dest


def _norm(t: str) -> str: return " ".join(t.split()).lower()


def grounded_parts(row: dict, attrs: set) -> list[str]:
    "The corpus text a row claims to be made of: its answer, its filled-in cloze, or its lines."
    if row["kind"] == "qa": return split_sentences(row["answer"])
    if row["kind"] == "cloze":
        return [row["question"].split(': "', 1)[1][:-1].replace(BLANK, row["answer"])]
    lines = row["text"].splitlines()[1:]
    return [l.split(": ", 1)[1] if l.split(": ", 1)[0] in attrs else l for l in lines]


def test_offline_texts_cite_their_chunks_and_meet_the_size(graph_run, tmp_path):
    run = fresh(graph_run, tmp_path/"run")
    s = augment_stage(run, augment_size=2.0)
    rows = read_jsonl(run/"augment"/"texts.jsonl")
    chunks = {c["chunk_id"]: c for c in read_jsonl(run/"extract"/"chunks.jsonl")}
    attrs = {attribution(d) for d in read_jsonl(run/"extract"/"documents.jsonl")}
    assert {r["kind"] for r in rows} == set(KINDS) and all(list(r) == FIELDS for r in rows)
    assert len({r["text_id"] for r in rows}) == len(rows) == len({_norm(r["text"]) for r in rows})
    for r in rows:
        assert r["chunk_ids"] and set(r["chunk_ids"]) <= set(chunks), r
        assert r["doc_ids"] == sorted({chunks[c]["doc_id"] for c in r["chunk_ids"]})
        assert r["teacher"] == "offline"
        src = " ".join(_norm(chunks[c]["text"]) for c in r["chunk_ids"])
        parts = grounded_parts(r, attrs)
        assert parts and all(_norm(p) in src for p in parts), (r["kind"], r["text"])
        if r["kind"] in ("qa", "cloze"):
            assert r["format"] == "qa"
            assert r["text"] == f"Question: {r['question']}\nAnswer: {r['answer']}"
        else: assert r["format"] == "text" and r["question"] is None and r["answer"] is None
    tok = chunk_tokenizer()
    count = lambda t: len(tok.encode(t, add_special_tokens=False).ids)
    assert all(r["n_tokens"] == count(r["text"]) for r in rows[:50])
    corpus = sum(c["n_tokens"] for c in chunks.values())
    assert s["corpus_tokens"] == corpus
    assert s["synthetic_tokens"] == sum(r["n_tokens"] for r in rows)
    assert 0.8 * 2.0 <= s["achieved_multiple"] <= 1.2 * 2.0, s
    assert s["tokenizer"] == "smollm2-135m"
    assert s["sources"]["never_read"] == ["queries/", "distill/"]
    assert read_json(run/"manifest.json")["stages"]["augment"]["status"] == "done"
    for size in (0.5, 5.0):
        multiple = augment_stage(run, augment_size=size)["achieved_multiple"]
        assert 0.8 * size <= multiple <= 1.2 * size


def test_deterministic_across_runs_and_hash_seeds(graph_run, tmp_path):
    a, b = fresh(graph_run, tmp_path/"a"), fresh(graph_run, tmp_path/"b")
    cfg = AugmentConfig(augment_size=1.0, seed=3)
    augment_stage(a, cfg)
    augment_stage(b, augment_size=1.0, seed=3)          # the same config, given as keywords
    texts = (a/"augment"/"texts.jsonl").read_bytes()
    assert texts == (b/"augment"/"texts.jsonl").read_bytes()
    code = ("import sys\nfrom purpose.augment import augment_stage\n"
            "augment_stage(sys.argv[1], augment_size=1.0, seed=3)")
    for h in ("1", "2"):
        c = fresh(graph_run, tmp_path/f"h{h}")
        p = subprocess.run([sys.executable, "-c", code, str(c)],
                           env={**os.environ, "PYTHONHASHSEED": h},
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        assert (c/"augment"/"texts.jsonl").read_bytes() == texts, \
            f"PYTHONHASHSEED={h} changed the texts"
    augment_stage(b, cfg, seed=4)
    assert (b/"augment"/"texts.jsonl").read_bytes() != texts


def test_reused_when_unchanged_regenerated_when_inputs_change(graph_run, tmp_path, capsys):
    run = fresh(graph_run, tmp_path/"run")
    first = augment_stage(run, augment_size=0.5)
    texts = run/"augment"/"texts.jsonl"
    stamp = texts.stat().st_mtime_ns
    again = augment_stage(run, augment_size=0.5)
    assert again["reused"] and again["fingerprint"] == first["fingerprint"]
    assert texts.stat().st_mtime_ns == stamp
    assert "reusing" in capsys.readouterr().out
    claims = read_json(run/"graph"/"claims.json")
    (run/"graph"/"claims.json").write_text(json.dumps(claims[1:]))       # the graph changed
    third = augment_stage(run, augment_size=0.5)
    assert "inputs or parameters changed" in capsys.readouterr().out
    assert not third.get("reused") and third["fingerprint"] != first["fingerprint"]
    assert read_json(run/"augment"/"summary.json")["fingerprint"] == third["fingerprint"]


def test_bad_parameters_are_named(graph_run, tmp_path):
    run = fresh(graph_run, tmp_path/"run")
    bad = {"need an LLM teacher": dict(augment_kinds="entigraph_pair"),
           "unknown kind 'entities'": dict(augment_kinds="entities"),
           "stage 'augment' parameter augment_size=-1: out of range": dict(augment_size=-1),
           "parameter augment_size=0: out of range": dict(augment_size=0),
           "one ModelHub spec": dict(augment_teachers="offline,openai:gpt-4o-mini"),
           r"unknown parameter\(s\) size; AugmentConfig takes augment_size": dict(size=2.0)}
    for message, kw in bad.items():
        with pytest.raises(Exception, match=message): augment_stage(run, **kw)
    with pytest.raises(Exception, match="run the 'extract' stage"): augment_stage(tmp_path/"empty")
    shutil.copytree(graph_run/"extract", tmp_path/"no_graph"/"extract")
    with pytest.raises(Exception, match="run the 'graph' stage"):
        augment_stage(tmp_path/"no_graph")


ENTITIES = ("maximum velocity", "stride frequency", "ground contact time", "stride length",
            "reaction time", "heavy sled training")


def wire_reply(req) -> str:
    "Scripted teacher: entity lists as JSON (one invented name), texts citing the last chunk shown."
    h = hashlib.sha1(req.prompt.encode()).hexdigest()[:8]
    if req.json_schema is not None:
        named = [e for e in ENTITIES if e in req.prompt.lower()]
        return json.dumps({"entities": named + ["invented entity"]})
    ids = re.findall(r"\[chunk_id: ([0-9a-f]{12})\]", req.prompt)
    if ids: return f"Wire text {h} on how they relate [{ids[-1]}]."
    return f"Wire paraphrase {h} of the passage."


def test_llm_path_estimates_first_then_resumes_over_the_wire(graph_run, tmp_path):
    run = fresh(graph_run, tmp_path/"run")
    with WireServer(reply=wire_reply) as ws:
        kw = dict(augment_size=0.3, augment_teachers=ws.spec(), cache=False)
        dry = augment_stage(run, augment_dry_run=True, **kw)
        assert sum(ws.counts(None).values()) == 0
        assert not (run/"augment"/"texts.jsonl").exists()
        est = dry["estimate"]
        assert est["entity_listing_calls"] == 10
        assert est["calls"] == 10 + sum(est["text_calls"].values())
        assert est["input_tokens"] > 0 and est["max_cost_usd"] == 0.0
        assert read_json(run/"augment"/"estimate.json")["calls"] == est["calls"]
        assert "augment" not in read_json(run/"manifest.json", {"stages": {}})["stages"]

        s = augment_stage(run, **kw)
        n = ws.counts()["wire-model"]
        assert n == est["calls"] and s["complete"]
        assert s["ledger"]["total"]["calls"] == n and s["estimate"]["calls"] == n
        rows = read_jsonl(run/"augment"/"texts.jsonl")
        texts = (run/"augment"/"texts.jsonl").read_bytes()
        llm = [r for r in rows if r["kind"] in LLM_KINDS]
        assert {r["kind"] for r in llm} == set(LLM_KINDS)
        chunks = {c["chunk_id"]: c for c in read_jsonl(run/"extract"/"chunks.jsonl")}
        for r in llm:
            assert r["teacher"] == "openai-compatible:wire-model"
            assert r["text"].startswith("Wire ") and "[" not in r["text"]
            assert set(r["chunk_ids"]) <= set(chunks) and "invented entity" not in r["entities"]
            assert r["doc_ids"] == sorted({chunks[c]["doc_id"] for c in r["chunk_ids"]})
            if r["kind"] in ("entigraph_pair", "entigraph_triple"):
                assert len(r["entities"]) == {"entigraph_pair": 2, "entigraph_triple": 3}[r["kind"]]

        # finished: nothing asked again
        assert augment_stage(run, **kw)["reused"] and ws.counts()["wire-model"] == n

        answers = run/"augment"/"llm_answers.jsonl"                  # a kill mid-append ...
        data = answers.read_bytes()
        answers.write_bytes(data[:-20])
        (run/"augment"/"summary.json").unlink()
        s2 = augment_stage(run, **kw)                                # ... costs one call again
        assert ws.counts()["wire-model"] == n + 1 and s2["complete"]
        assert (run/"augment"/"texts.jsonl").read_bytes() == texts
        lines = answers.read_text().splitlines()         # the torn line is gone, not merged
        assert len(lines) == len(data.splitlines())
        assert all(json.loads(l)["prompt_id"] for l in lines)


def test_llm_failures_are_retried_on_the_next_run(graph_run, tmp_path):
    run = fresh(graph_run, tmp_path/"run")
    with WireServer(reply=wire_reply) as ws:
        kw = dict(augment_size=0.3, augment_teachers=ws.spec(), augment_kinds="paraphrase",
                  cache=False)
        ws.fail_next(2, status=400)                                  # not retried: the items fail
        s = augment_stage(run, **kw)
        n = ws.counts(None)["wire-model"]
        assert not s["complete"] and s["llm"]["failed"] == 2
        assert len(read_jsonl(run/"augment"/"llm_failures.jsonl")) == 2
        s2 = augment_stage(run, **kw)
        assert ws.counts(None)["wire-model"] == n + 2 and s2["complete"]
        assert s2["per_kind"]["paraphrase"]["texts"] > 0
        assert not (run/"augment"/"llm_failures.jsonl").exists()
