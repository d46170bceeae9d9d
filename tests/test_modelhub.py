"ModelHub over the real wire: the official SDKs against the local protocol server, with faults."
import json, os, subprocess, sys, textwrap, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from purpose.modelhub import (KEY_VARS, BudgetExceeded, AnthropicTeacher, HFTeacher, ResponseCache,
                              TeacherSpec, cache_key, complete_many, estimate, get_teacher,
                              grounded_messages, parse_spec, process_domain_task, process_task)
from purpose.wire import Faults, WireServer

KEYS = sorted({v for vs in KEY_VARS.values() for v in vs} | {"PURPOSE_GENERAL_MODELS"})


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    "No real keys, a private cache and config for every test."
    for k in KEYS: monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))
    monkeypatch.setenv("PURPOSE_CONFIG", str(tmp_path/"config.json"))


def ask(n, tag="item"):
    return [[{"role": "user", "content": f"{tag} {i}"}] for i in range(n)]


def test_fallback_to_next_model_when_first_is_gone():
    with WireServer(fail_models={"gone": 404}) as ws:
        res = complete_many([ws.spec("gone"), ws.spec("wire-fallback")], ask(10), cache=False,
                            concurrency=1)
        assert [r.model for r in res] == ["openai-compatible:wire-fallback"] * 10
        assert [r.text for r in res] == [f"Wire reply from wire-fallback: item {i}"
                                         for i in range(10)]
        # a 404 is permanent: asked once, then skipped
        assert ws.counts(404)["gone"] == 1
        assert "skipped" in res[-1].tried[0] and "404" in res[0].tried[0]


def test_fallback_after_repeated_5xx_then_circuit_breaker():
    with WireServer(fail_models={"wire-model": 500}) as ws:
        res = complete_many([ws.spec("wire-model"), ws.spec("wire-fallback")], ask(12), cache=False,
                            concurrency=1, retries=2, backoff=0.001, breaker=3)
        assert all(r.ok and r.model == "openai-compatible:wire-fallback" for r in res)
        # 3 items x (1 + 2 retries), then the breaker opens
        assert ws.counts(500)["wire-model"] == 3 * 3
        assert "failed 3 items in a row" in res[-1].tried[0]


def test_no_lost_items_at_30_percent_errors():
    faults = Faults(error_rate=0.3, error_statuses=(429, 500, 503, 529), retry_after=0, seed=7)
    with WireServer(faults=faults) as ws:
        prompts = ask(200)
        res = complete_many([ws.spec("wire-model"), ws.spec("wire-fallback")], prompts, cache=False,
                            concurrency=16, retries=8, backoff=0.001)
        assert len(res) == 200 and all(r.ok for r in res), [r.error for r in res if not r.ok][:3]
        # input order
        assert [r.text.split(": ", 1)[1] for r in res] == [p[0]["content"] for p in prompts]
        errors = sum(ws.counts(s)["wire-model"] + ws.counts(s)["wire-fallback"]
                     for s in (429, 500, 503, 529))
        assert 40 <= errors <= 130, errors                          # ~30 % of ~285 deliveries
        assert res.ledger.total("retries") == errors


def test_failures_are_reported_never_dropped():
    with WireServer(error_rate=1.0, error_statuses=(500,)) as ws:
        res = complete_many([ws.spec("wire-model"), ws.spec("wire-fallback")], ask(20), cache=False,
                            retries=1, backoff=0.001, breaker=0, concurrency=4)
        assert len(res) == 20 and [r.index for r in res] == list(range(20))
        assert all(r.status == "error" and len(r.tried) == 2 for r in res)
        assert all("no model could answer" in r.error for r in res)
        assert len(res.failed) == 20


def test_retry_after_is_honoured():
    with WireServer() as ws:
        ws.fail_next(1, 429, retry_after=1)
        t0 = time.monotonic()
        r = complete_many(ws.spec(), ask(1), cache=False, backoff=0.001)[0]
        assert r.ok and r.attempts == 2
        assert time.monotonic() - t0 >= 0.95


def test_timeout_falls_back_to_fast_model():
    with WireServer(latency=2.0) as slow, WireServer() as fast:
        t0 = time.monotonic()
        r = complete_many([slow.spec(), fast.spec("wire-fallback")], ask(1), cache=False,
                          timeout=0.3, retries=0)[0]
        assert r.ok and r.model == "openai-compatible:wire-fallback"
        assert "TimeoutError" in r.tried[0]
        assert time.monotonic() - t0 < 1.5


def test_requests_per_minute_limit():
    with WireServer() as ws:
        t0 = time.monotonic()
        res = complete_many(ws.spec(), ask(25), cache=False, concurrency=8,
                            limits={"openai-compatible": {"rpm": 601}})
        assert all(r.ok for r in res)
        assert time.monotonic() - t0 >= 1.3          # 10/s with a burst of 10: 25 calls need ~1.5 s


def test_tokens_per_minute_limit():
    with WireServer() as ws:
        t0 = time.monotonic()
        res = complete_many(ws.spec(), ask(10), cache=False, concurrency=8, max_tokens=20,
                            limits={"openai-compatible": {"tpm": 6001}})
        assert all(r.ok for r in res)
        assert time.monotonic() - t0 >= 1.0          # ~100 tokens/s, 10 calls x ~22 tokens at worst


def test_resume_after_kill_makes_zero_repeated_calls(tmp_path):
    cache = tmp_path/"responses"
    prompts = ask(60, "resume")
    with WireServer(latency=0.05) as ws:
        script = tmp_path/"run.py"
        script.write_text(textwrap.dedent(f"""
            import sys
            from purpose.modelhub import complete_many
            prompts = [[{{"role": "user", "content": f"resume {{i}}"}}] for i in range(60)]
            complete_many({ws.spec()!r}, prompts, cache=sys.argv[1], concurrency=2)
            """))
        p = subprocess.Popen([sys.executable, str(script), str(cache)])
        deadline = time.monotonic() + 30
        done = lambda: cache.exists() and len(ResponseCache(cache)) >= 12
        while not done() and time.monotonic() < deadline:
            time.sleep(0.02)
        p.kill()
        p.wait()
        time.sleep(0.2)              # the server finishes logging the dead client's last request
        finished = len(ResponseCache(cache))
        assert 12 <= finished < 60, finished
        ws.reset()
        res = complete_many(ws.spec(), prompts, cache=cache, concurrency=8)
        assert all(r.ok for r in res)
        assert [r.text for r in res] == [f"Wire reply from wire-model: resume {i}"
                                         for i in range(60)]
        assert sum(r.cached for r in res) == finished
        assert sum(ws.counts().values()) == 60 - finished     # no repeated call of a finished item
        asked = {q.prompt for q in ws.log}
        assert asked.isdisjoint({prompts[r.index][0]["content"] for r in res if r.cached})
        ws.reset()
        again = complete_many(ws.spec(), prompts, cache=cache)
        assert all(r.cached for r in again) and ws.log == []


def test_budget_stops_cleanly_and_resumes(tmp_path):
    prices = {"openai-compatible:wire-model": [1000.0, 1000.0]}   # $0.001 a token
    with WireServer() as ws:
        prompts = ask(30, "budget")
        plan = estimate(ws.spec(), prompts, max_tokens=20, prices=prices, cache=tmp_path/"c")
        assert plan["calls"] == 30 and plan["max_cost_usd"] > 0.25
        res = complete_many(ws.spec(), prompts, cache=tmp_path/"c", concurrency=1, max_tokens=20,
                            prices=prices, budget_usd=0.25)
        ok = [r for r in res if r.ok]
        assert res.budget_stopped and 3 <= len(ok) < 30 and len(res) == 30
        assert all(r.status == "budget" and "budget exhausted" in r.error for r in res[len(ok):])
        assert res.ledger.cost_usd <= 0.25 and sum(ws.counts().values()) == len(ok)
        again = estimate(ws.spec(), prompts, max_tokens=20, prices=prices, cache=tmp_path/"c")
        assert again["cached"] == len(ok)
        with pytest.raises(BudgetExceeded, match="raise the budget and re-run"): res.check_budget()
        ws.reset()
        rest = complete_many(ws.spec(), prompts, cache=tmp_path/"c", max_tokens=20, prices=prices,
                             budget_usd=10)
        assert all(r.ok for r in rest) and sum(ws.counts().values()) == 30 - len(ok)


def test_anthropic_protocol_with_structured_output_and_529(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0000000000")
    schema = {"type": "object", "required": ["concepts"],
              "properties": {"concepts": {"type": "array", "items": {"type": "string"}}}}
    with WireServer() as ws:
        ws.fail_next(2, 529)
        res = complete_many(f"anthropic:claude-wire@{ws.url}", ask(3), cache=False,
                            json_schema=schema, backoff=0.001)
        assert [r.parsed for r in res] == [{"concepts": ["wire"]}] * 3
        assert all(q.had_key for q in ws.log) and ws.counts(529)["claude-wire"] == 2
        assert ws.requests("claude-wire")[-1].body["output_config"]["format"]["schema"] == schema
        assert res.ledger.rows["anthropic:claude-wire"]["input_tokens"] > 0


def test_json_repair_reask_and_parse_failure_counts():
    schema = {"type": "object", "properties": {"domain": {"enum": ["medical", "legal"]}},
              "required": ["domain"]}
    bad = iter(['{"domain": "sport"}', '{"domain": "legal"}'])
    with WireServer(reply=lambda req: next(bad)) as ws:
        r = complete_many(ws.spec(), ask(1), cache=False, json_schema=schema)
        assert r[0].parsed == {"domain": "legal"}
        row = r.ledger.rows["openai-compatible:wire-model"]
        assert (row["parse_failures"], row["repaired"], row["calls"]) == (1, 1, 2)
        repair = ws.log[1].body["messages"]
        assert repair[-2] == {"role": "assistant", "content": '{"domain": "sport"}'}
        assert "not valid JSON" in repair[-1]["content"]


def test_cache_is_shared_and_safe_with_concurrent_writers(tmp_path):
    c = ResponseCache(tmp_path/"shared")
    keys = [cache_key("openai:m", [{"role": "user", "content": str(i % 5)}], {})
            for i in range(200)]
    def write_read(k):
        c.put(k, {"text": k[:8] * 50})
        return c.get(k)["text"]
    with ThreadPoolExecutor(16) as ex: texts = list(ex.map(write_read, keys))
    assert texts == [k[:8] * 50 for k in keys] and len(c) == 5
    with WireServer() as ws:                    # two 'stages' asking the same prompt share one call
        a = complete_many(ws.spec(), ask(3), cache=c)
        b = complete_many(ws.spec(), ask(3), cache=c)
        assert [x.text for x in a] == [x.text for x in b]
        assert all(x.cached for x in b) and len(ws.log) == 3


def test_inside_a_running_event_loop():
    import asyncio
    with WireServer() as ws:
        async def notebook_cell(): return complete_many(ws.spec(), ask(4), cache=False)
        res = asyncio.run(notebook_cell())
        assert [r.text for r in res] == [f"Wire reply from wire-model: item {i}" for i in range(4)]


def test_replicate_protocol(monkeypatch):
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_test_000000000000")
    with WireServer() as ws:
        spec = f"replicate:meta/llama-wire@{ws.url}/v1"
        res = complete_many(spec, ask(2), cache=False)
        assert [r.text for r in res] == [f"Wire reply from meta/llama-wire: item {i}"
                                         for i in range(2)]
        ws.fail_next(1, 429, retry_after=0)
        assert complete_many(spec, ask(1, "again"), cache=False, backoff=0.001)[0].attempts == 2
    monkeypatch.delenv("REPLICATE_API_TOKEN")
    msgs = grounded_messages("What?", [{"text": "Stride length matters."}])
    r = complete_many(["replicate:meta/llama-3-8b", "offline"], [msgs], cache=False)[0]
    assert r.model == "offline" and "REPLICATE_API_TOKEN" in r.tried[0]


def test_process_task_falls_back_from_seed_models_to_configured_general(monkeypatch):
    with WireServer() as ws:
        monkeypatch.setenv("PURPOSE_GENERAL_MODELS", ws.spec())
        r = process_task("knowledge_extraction", "Sprint velocity depends on stride length.",
                         model_id="epfl-llm/meditron-7b")
        assert r.ok and r.model == "openai-compatible:wire-model"
        skipped = "epfl-llm/meditron-7b: skipped (Hugging Face Hub id, not available offline"
        assert r.tried[0].startswith(skipped)
        r = process_domain_task("legal", "knowledge_extraction",
                                "The court held the contract void.")
        assert r.ok and any("nile/legal-bert-base: skipped (encoder model" in t for t in r.tried)
    # nothing listens there
    monkeypatch.setenv("PURPOSE_GENERAL_MODELS", "ollama:nothing@http://127.0.0.1:9/v1")
    r = process_task("summarization", "Ground contact time was 0.09 s. Weather was fine.",
                     retries=0)
    assert r.model == "offline" and "0.09 s" in r.text and "ollama:nothing" in r.tried[-1]


def test_hf_teacher_batches_generation():
    from purpose.student import load_student
    model, tok = load_student("tiny-random")
    calls = []
    orig = model.generate
    def counting_generate(**kw):
        calls.append(kw["input_ids"].shape[0])
        return orig(**kw)
    model.generate = counting_generate
    t = HFTeacher(TeacherSpec("hf", "tiny-random"), max_new_tokens=4, batch_size=4, model=model,
                  tokenizer=tok)
    res = complete_many(t, ask(6), cache=False, concurrency=6, max_tokens=4)
    assert all(r.ok and isinstance(r.text, str) and r.output_tokens <= 4 for r in res)
    assert sorted(calls, reverse=True) == [4, 2]                   # 6 prompts, 2 generate calls
