"`purpose models ...`: list, info, setup-config, process-text, process-domain-text (typer's CliRunner)."
import json, os, stat

import pytest
from typer.testing import CliRunner

from purpose.modelhub import KEY_VARS, models_app
from purpose.wire import WireServer

runner = CliRunner()
KEYS = sorted({v for vs in KEY_VARS.values() for v in vs} | {"PURPOSE_GENERAL_MODELS"})


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    for k in KEYS: monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))
    monkeypatch.setenv("PURPOSE_CONFIG", str(tmp_path/"cfg"/"config.json"))


def test_list_and_filters():
    r = runner.invoke(models_app, ["list"])
    assert r.exit_code == 0 and "epfl-llm/meditron-7b" in r.stdout and "BAAI/bge-reranker-v2-m3" in r.stdout
    r = runner.invoke(models_app, ["list", "--domain", "legal", "--json"])
    ids = {m["id"] for m in json.loads(r.stdout)}
    assert ids == {"lexlms/legal-roberta-base", "lexlms/legal-longformer-base", "nile/legal-bert-base", "CaseLawBERT/CaseLawBERT",
                   "IBM/Legal-Universe-Llama-2-7b"}


def test_info():
    r = runner.invoke(models_app, ["info", "MathLLMs/MathCoder-CL-34B"])
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and d["context_window"] == 16384 and d["domains"] == ["math"] and "not available offline" in d["available_here"]
    r = runner.invoke(models_app, ["info", "epfl-llm/meditron-8b"])
    assert r.exit_code == 1 and "did you mean epfl-llm/meditron-7b" in r.stderr


def test_setup_config_prompts_writes_0600_and_never_prints_keys(tmp_path):
    n_vars = len({v for vs in KEY_VARS.values() for v in vs})
    r = runner.invoke(models_app, ["setup-config", "--general", "openai:gpt-4o-mini,offline"], input="sk-cli-secret-1234\n" + "\n" * (n_vars - 1))
    assert r.exit_code == 0, r.output
    p = tmp_path/"cfg"/"config.json"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    cfg = json.loads(p.read_text())
    assert cfg["keys"] == {"OPENAI_API_KEY": "sk-cli-secret-1234"} and cfg["default_models"]["general"] == ["openai:gpt-4o-mini", "offline"]
    assert "sk-cli-secret-1234" not in r.output
    # the key in the file is used, the environment wins over it
    from purpose.modelhub import get_key
    assert get_key("OPENAI_API_KEY") == "sk-cli-secret-1234"
    os.environ["OPENAI_API_KEY"] = "sk-env-wins-5678"
    try:
        assert get_key("OPENAI_API_KEY") == "sk-env-wins-5678"
        r = runner.invoke(models_app, ["setup-config", "--from-env"])
        assert r.exit_code == 0 and "sk-env-wins" not in r.output
        assert json.loads(p.read_text())["keys"]["OPENAI_API_KEY"] == "sk-env-wins-5678"
    finally: del os.environ["OPENAI_API_KEY"]


def test_process_text_with_model_and_fallback(monkeypatch):
    with WireServer() as ws:
        monkeypatch.setenv("PURPOSE_GENERAL_MODELS", ws.spec())
        r = runner.invoke(models_app, ["process-text", "knowledge_extraction", "Stride length sets velocity.", "--model", "meta-llama/llama-3-70b"])
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith("Wire reply from wire-model:")
        assert "meta-llama/llama-3-70b: skipped" in r.stderr and "[answered by openai-compatible:wire-model]" in r.stderr
        r = runner.invoke(models_app, ["process-text", "judging", "Answer: 42", "--model", ws.spec("wire-fallback")])
        assert r.exit_code == 0 and r.stdout.startswith("Wire reply from wire-fallback:")


def test_process_domain_text(monkeypatch):
    with WireServer() as ws:
        monkeypatch.setenv("PURPOSE_GENERAL_MODELS", ws.spec())
        r = runner.invoke(models_app, ["process-domain-text", "medical", "knowledge_extraction", "Explain the pathophysiology of type 2 diabetes.",
                                       "--model", "epfl-llm/meditron-7b"])
        assert r.exit_code == 0 and "epfl-llm/meditron-7b: skipped" in r.stderr and "stanford-crfm/BioMedLM-2.7B: skipped" in r.stderr
        r = runner.invoke(models_app, ["process-domain-text", "auto", "code_generation", "Write a Python function for the Sieve of Eratosthenes."])
        assert r.exit_code == 0 and "WizardLM/WizardCoder-Python-34B: skipped" in r.stderr
    r = runner.invoke(models_app, ["process-domain-text", "sport", "knowledge_extraction", "x"])
    assert r.exit_code == 2 and "unknown domain 'sport'" in r.stderr


def test_process_text_model_asked_for_is_tried_before_a_cached_fallback(monkeypatch):
    "Issue 10: `--model anthropic:...` answered `[answered by openai:..., cached]` when openai had answered the prompt before."
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0000000000")
    text = "Stride length and stride frequency set sprint velocity."
    with WireServer() as ws:
        monkeypatch.setenv("PURPOSE_GENERAL_MODELS", ws.spec())
        r = runner.invoke(models_app, ["process-text", "knowledge_extraction", text])
        assert r.exit_code == 0 and "[answered by openai-compatible:wire-model]" in r.stderr, r.output
        r = runner.invoke(models_app, ["process-text", "knowledge_extraction", text])
        assert "[answered by openai-compatible:wire-model, cached]" in r.stderr
        r = runner.invoke(models_app, ["process-text", "knowledge_extraction", text, "--model", f"anthropic:claude-wire@{ws.url}"])
        assert r.exit_code == 0 and r.stdout.startswith("Wire reply from claude-wire:"), r.output
        assert "[answered by anthropic:claude-wire]" in r.stderr
        assert ws.counts() == {"wire-model": 1, "claude-wire": 1}


def test_check_command(monkeypatch):
    with WireServer() as ws:
        r = runner.invoke(models_app, ["check", "offline", ws.spec(), "openai:gpt-4o-mini|offline"])
        assert r.exit_code == 0, r.output
        assert f"{ws.spec()}: ok (model listed (2 on the server))" in r.stdout and "offline: ok (nothing to check)" in r.stdout
        r = runner.invoke(models_app, ["check", ws.spec("nope")])
        assert r.exit_code == 2 and "model 'nope' not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(models_app, ["check", "openai:gpt-4o-mini"])
    assert r.exit_code == 2 and "set the environment variable OPENAI_API_KEY" in r.stderr
