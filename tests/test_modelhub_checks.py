"""Pre-flight teacher checks, one-cause failures, masked secrets, the per-candidate cache and broken
cache entries (real SDKs, wire server)."""
import json, logging, os, stat

import pytest

from purpose.core import PurposeError
from purpose.core import RunDir, write_jsonl
from purpose.modelhub import (KEY_VARS, ResponseCache, cache_key, check_teacher, check_teachers,
                              complete_many, mask_secrets, one_cause, parse_spec, save_config,
                              try_teachers)
from purpose.wire import WireServer

KEYS = sorted({v for vs in KEY_VARS.values() for v in vs}
              | {"PURPOSE_GENERAL_MODELS", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"})
CHUNKS = [{"chunk_id": "c1", "doc_id": "d", "text": "Ground contact is 0.09 s."}]


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    for k in KEYS: monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))
    monkeypatch.setenv("PURPOSE_CONFIG", str(tmp_path/"config.json"))


def ask(n, tag="item"):
    return [[{"role": "user", "content": f"{tag} {i}"}] for i in range(n)]


def one_line(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg and all(p in msg for p in parts), msg
    return msg


# -- check_teachers -------------------------------------------------------------------------------

def test_check_no_key_names_the_variable_before_any_call():
    with pytest.raises(PurposeError) as e: check_teachers("offline,openai:gpt-4o-mini")
    one_line(e, "teacher 'openai:gpt-4o-mini' has no key", "OPENAI_API_KEY")
    with pytest.raises(PurposeError) as e: check_teachers(["anthropic:claude-3-5-haiku-latest"])
    one_line(e, "ANTHROPIC_API_KEY")
    with pytest.raises(PurposeError) as e: check_teachers("replicate:meta/llama-3-8b")
    one_line(e, "REPLICATE_API_TOKEN")
    with pytest.raises(PurposeError) as e: check_teachers("gemini:pro")
    one_line(e, "unknown teacher provider 'gemini'")


def test_check_offline_and_local_hf_without_network(tmp_path):
    assert check_teachers("offline, hf:tiny-random") == {"offline": "nothing to check",
                                                         "hf:tiny-random": "a local model"}
    (tmp_path/"notamodel").mkdir()
    with pytest.raises(PurposeError) as e: check_teacher(f"hf:{tmp_path/'notamodel'}")
    one_line(e, "has no config.json")
    with pytest.raises(PurposeError) as e: check_teacher("hf:epfl-llm/meditron-7b")
    one_line(e, "not available offline", "HF_TOKEN")


def test_check_openai_protocol_list_401_404_unreachable(monkeypatch):
    with WireServer(keys=("sk-wire-right-0000",)) as ws:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wire-right-0000")
        spec = ws.spec("wire-model", provider="openai")
        assert check_teachers([spec]) == {spec: "model listed (2 on the server)"}
        # one cheap call, no completion
        assert [q.path for q in ws.lookups] == ["/v1/models"] and ws.log == []
        with pytest.raises(PurposeError) as e:
            check_teachers(ws.spec("gpt-nope", provider="openai"))
        one_line(e, "model 'gpt-nope' not found", "(HTTP 404)")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wire-wrong-1111")
        with pytest.raises(PurposeError) as e: check_teachers(spec)
        msg = one_line(e, f"teacher '{spec}'", "refused the key (HTTP 401)", "check OPENAI_API_KEY")
        assert "sk-wire-wrong" not in msg
        port = ws.url.rsplit(":", 1)[1]
    with pytest.raises(PurposeError) as e:                 # the server has stopped
        check_teachers(f"ollama:llama3@http://127.0.0.1:{port}/v1", timeout=2)
    one_line(e, "unreachable: cannot connect to", f"127.0.0.1:{port}")


def test_check_times_out_quickly():
    import time
    with WireServer(latency=3.0) as ws:
        t0 = time.monotonic()
        with pytest.raises(PurposeError) as e: check_teacher(ws.spec(), timeout=0.5)
        one_line(e, "unreachable: no answer from", "within 0.5 s")
        assert time.monotonic() - t0 < 2.5


def test_check_server_without_model_list_gets_one_token_call():
    with WireServer(models=("only-this",)) as ws:
        # an empty list: the model is not listed, one 1-token call decides
        ws.models = ()
        with pytest.raises(PurposeError) as e: check_teacher(ws.spec("missing"))
        one_line(e, "model 'missing' not found")
        ws.models = ("served",)
        assert check_teacher(ws.spec("served")) == "model listed (1 on the server)"
        served = ws.spec("served:latest".split(":")[0])
        assert check_teacher(served) == "model listed (1 on the server)"
        assert [q.body.get("max_tokens") for q in ws.log] == [1]


def test_check_anthropic_and_replicate_lookups(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wire-right-0000")
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_wire_right_0000")
    keys = ("sk-ant-wire-right-0000", "r8_wire_right_0000")
    with WireServer(models=("claude-wire", "meta/llama-wire"), keys=keys) as ws:
        assert check_teacher(f"anthropic:claude-wire@{ws.url}") == "model found"
        assert check_teacher(f"replicate:meta/llama-wire@{ws.url}/v1") == "model found"
        with pytest.raises(PurposeError) as e: check_teacher(f"replicate:meta/nope@{ws.url}/v1")
        one_line(e, "model 'meta/nope' not found")
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wire-wrong-1111")
        with pytest.raises(PurposeError) as e: check_teacher(f"anthropic:claude-wire@{ws.url}")
        one_line(e, "refused the key (HTTP 401)", "ANTHROPIC_API_KEY")


def test_check_key_from_0600_config_and_chains(monkeypatch):
    with WireServer(keys=("sk-from-config-0000",)) as ws:
        spec = ws.spec(provider="openai")
        with pytest.raises(PurposeError): check_teacher(spec)
        save_config({"keys": {"OPENAI_API_KEY": "sk-from-config-0000"}})
        assert check_teacher(spec).startswith("model listed")
    monkeypatch.setenv("PURPOSE_CONFIG", os.environ["PURPOSE_CONFIG"] + ".none")
    # a chain passes when one member can answer ...
    report = check_teachers("openai:gpt-4o-mini|offline")
    said = report["openai:gpt-4o-mini|offline"]
    assert "unavailable (teacher 'openai:gpt-4o-mini' has no key" in said, report
    # ... and fails when none can
    with pytest.raises(PurposeError): check_teachers("openai:gpt-4o-mini|anthropic:claude-x")


# -- one cause ------------------------------------------------------------------------------------

def test_one_cause_when_every_item_failed_alike():
    res = complete_many("openai:gpt-4o-mini", ask(6), cache=False)
    cause = one_cause(res)
    assert cause.startswith("all 6 items failed for one cause: openai:gpt-4o-mini: "
                            "ModelUnavailable")
    assert "OPENAI_API_KEY" in cause
    # failures.jsonl rows
    rows = [{"query_id": i, "teacher": "x", "error": r.error, "status": r.status}
            for i, r in enumerate(res)]
    assert one_cause(rows) == cause and one_cause(rows, total=7) is None
    with WireServer(fail_models={"wire-model": 503}) as ws:    # retries, the breaker: one cause
        res = complete_many(ws.spec(), ask(8), cache=False, retries=1, backoff=0.001, breaker=3,
                            concurrency=1)
        assert "HTTP" in one_cause(res) or "503" in one_cause(res)
        mixed = (complete_many([ws.spec()], ask(2), cache=False, retries=0)
                 + complete_many("openai:gpt-4o-mini", ask(2), cache=False))
        assert one_cause(mixed) is None


# -- masking --------------------------------------------------------------------------------------

def test_key_echoed_by_a_server_is_masked_in_results_and_rows(monkeypatch, tmp_path):
    # shorter than the environment scrub's minimum: masked as a Bearer token
    short = "wxyz123"
    long_key = "sk-echoed-LEAKCHECK-0123456789"
    with WireServer(keys=("sk-the-right-one-0000",), echo_auth=True) as ws:
        for key in (short, long_key):
            monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", key)
            res = complete_many(ws.spec(), ask(3), cache=False, retries=0)
            assert "401" in res[0].error, res[0].error
            assert "Authorization: Bearer ***" in res[0].error, res[0].error
            stored = json.dumps([r.__dict__ for r in res]) + (one_cause(res) or "")
            assert key not in stored and "LEAKCHECK" not in stored, stored
    run = RunDir(tmp_path/"run")
    write_jsonl(run.chunks, CHUNKS)
    with WireServer(keys=("sk-the-right-one-0000",), echo_auth=True) as ws:
        rows = try_teachers(run.root, "How long is ground contact?", [ws.spec()], k=1, cache=False,
                            retries=0)
        assert rows[0]["answer"] is None and long_key not in json.dumps(rows)
        assert "Bearer ***" in rows[0]["error"]


def test_url_credentials_never_in_spec_text_results_or_rows(tmp_path):
    secret = "sk-inurl-LEAKCHECK-42"
    with WireServer(fail_models={"gone": 404}) as ws:
        port = ws.url.rsplit(":", 1)[1]
        good = f"openai-compatible:wire-model@http://user:{secret}@127.0.0.1:{port}/v1"
        gone = f"openai-compatible:gone@http://user:{secret}@127.0.0.1:{port}/v1"
        # kept for the call only
        assert secret not in str(parse_spec(good)) and secret in parse_spec(good).base_url
        res = complete_many([gone, good], ask(2), cache=False, retries=0)
        assert all(r.ok and r.model == "openai-compatible:wire-model" for r in res)
        assert "user:***@127.0.0.1" in res[0].tried[0]
        run = RunDir(tmp_path/"run")
        write_jsonl(run.chunks, CHUNKS)
        rows = try_teachers(run.root, "How long is ground contact?", [good, gone], k=1, cache=False,
                            retries=0)
        assert rows[0]["answer"]
        assert rows[0]["teacher"] == f"openai-compatible:wire-model@http://user:***@127.0.0.1:{port}/v1"
        assert rows[1]["error"]
        stored = json.dumps(rows) + json.dumps([r.__dict__ for r in res]) + repr(parse_spec(good))
        assert "LEAKCHECK" not in stored, stored
        with pytest.raises(PurposeError) as e: check_teacher(gone)
        assert "LEAKCHECK" not in str(e.value) and "user:***@" in str(e.value)


def test_mask_secrets_patterns(monkeypatch):
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-env-value-123456")
    text = ("auth failed for Bearer abc.def-ghi, key sk-proj-AbC123456789, "
            "token tok-env-value-123456, url https://me:hunter22@api.example.com/v1, "
            "header x-api-key: zyx98765")
    masked = mask_secrets(text)
    for s in ("abc.def-ghi", "AbC123456789", "tok-env-value", "hunter22", "zyx98765"):
        assert s not in masked, masked
    assert "https://me:***@api.example.com/v1" in masked and "Bearer ***" in masked


# -- routing and the cache ------------------------------------------------------------------------

def test_first_candidate_is_asked_even_when_a_fallback_has_the_answer_cached(tmp_path):
    cache = ResponseCache(tmp_path/"c")
    with WireServer() as ws:
        first = complete_many(ws.spec("wire-fallback"), ask(3), cache=cache)
        assert [r.model for r in first] == ["openai-compatible:wire-fallback"] * 3
        ws.reset()
        res = complete_many([ws.spec("wire-model"), ws.spec("wire-fallback")], ask(3), cache=cache)
        assert [(r.model, r.cached) for r in res] == [("openai-compatible:wire-model", False)] * 3
        assert ws.counts() == {"wire-model": 3}
        ws.reset()                          # the first model is gone: the fallback's cache answers
        specs = ["openai-compatible:gone@" + ws.openai_url, ws.spec("wire-fallback")]
        res = complete_many(specs, ask(3), cache=cache, retries=0)
        assert all(r.model == "openai-compatible:wire-fallback" and r.cached for r in res)
        assert ws.counts() == {}


def test_broken_cache_entry_is_a_miss_with_a_warning_naming_the_file(tmp_path, caplog):
    cache = ResponseCache(tmp_path/"c")
    with WireServer() as ws:
        spec = ws.spec()
        params = {"temperature": 0.0, "max_tokens": 512, "json_schema": None}
        key = cache_key(spec, ask(1)[0], params)
        path = cache.root/key[:2]/f"{key}.json"
        for broken in ("{}", '{"model": "x"}', "[1, 2]", "not json"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(broken)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="purpose"):
                r = complete_many(spec, ask(1), cache=cache)[0]
            assert r.ok and not r.cached and r.text == "Wire reply from wire-model: item 0"
            assert str(path) in caplog.text and "delete it" in caplog.text
            assert json.loads(path.read_text())["text"] == r.text    # replaced by the fresh answer
        assert complete_many(spec, ask(1), cache=cache)[0].cached
