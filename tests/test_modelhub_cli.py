"`purpose models ...`: list, info, setup-config, process-text, process-domain-text (CliRunner)."
import json, os, stat

import pytest
from typer.testing import CliRunner

from purpose.modelhub import KEY_VARS, models_app
from purpose.wire import WireServer

runner = CliRunner()


def purpose(capsys, *args) -> tuple[int, str, str]:
    "Run `purpose models ARGS` through the console script's `main`: `(exit status, out, err)`."
    from purpose.cli import main
    with pytest.raises(SystemExit) as e: main(["models", *args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err
KEYS = sorted({v for vs in KEY_VARS.values() for v in vs} | {"PURPOSE_GENERAL_MODELS"})


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    for k in KEYS: monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))
    monkeypatch.setenv("PURPOSE_CONFIG", str(tmp_path/"cfg"/"config.json"))


def test_list_and_filters():
    r = runner.invoke(models_app, ["list"])
    assert r.exit_code == 0
    assert "epfl-llm/meditron-7b" in r.stdout and "BAAI/bge-reranker-v2-m3" in r.stdout
    r = runner.invoke(models_app, ["list", "--domain", "legal", "--json"])
    ids = {m["id"] for m in json.loads(r.stdout)}
    assert ids == {"lexlms/legal-roberta-base", "lexlms/legal-longformer-base",
                   "nile/legal-bert-base", "CaseLawBERT/CaseLawBERT",
                   "IBM/Legal-Universe-Llama-2-7b"}


def test_info(capsys):
    r = runner.invoke(models_app, ["info", "MathLLMs/MathCoder-CL-34B"])
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and d["context_window"] == 16384 and d["domains"] == ["math"]
    assert "not available offline" in d["available_here"]
    code, out, err = purpose(capsys, "info", "epfl-llm/meditron-8b")
    assert code == 2
    assert err.startswith("error: model 'epfl-llm/meditron-8b' is not in the registry")
    assert "did you mean epfl-llm/meditron-7b" in err
    assert len(err.strip().splitlines()) == 1 and not out


def test_models_errors_are_one_error_line_and_exit_2(capsys):
    "Issue 12: models commands printed `Error:` themselves (exit 1 for `info`); now `main` does."
    cases = [(["info", "no-such-model"], "'no-such-model' is not in the registry"),
             (["process-domain-text", "sport", "summarization", "x"], "unknown domain 'sport'"),
             (["check", "openai:gpt-4o-mini"], "set the environment variable OPENAI_API_KEY"),
             (["check", "gemini:pro"], "unknown teacher provider 'gemini'")]
    for args, says in cases:
        code, _, err = purpose(capsys, *args)
        assert (code, err.count("\n")) == (2, 1), (args, err)
        assert err.startswith("error: ") and says in err, (args, err)
        assert "Error:" not in err


def test_setup_config_prompts_writes_0600_and_never_prints_keys(tmp_path, monkeypatch):
    n_vars = len({v for vs in KEY_VARS.values() for v in vs})
    answers = "sk-cli-secret-1234\n" + "\n" * (n_vars - 1)
    r = runner.invoke(models_app, ["setup-config", "--general", "openai:gpt-4o-mini,offline"],
                      input=answers)
    assert r.exit_code == 0, r.output
    p = tmp_path/"cfg"/"config.json"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    cfg = json.loads(p.read_text())
    assert cfg["keys"] == {"OPENAI_API_KEY": "sk-cli-secret-1234"}
    assert cfg["default_models"]["general"] == ["openai:gpt-4o-mini", "offline"]
    assert "sk-cli-secret-1234" not in r.output
    # the key in the file is used, the environment wins over it
    from purpose.modelhub import get_key
    assert get_key("OPENAI_API_KEY") == "sk-cli-secret-1234"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-wins-5678")
    assert get_key("OPENAI_API_KEY") == "sk-env-wins-5678"
    r = runner.invoke(models_app, ["setup-config", "--from-env"])
    assert r.exit_code == 0 and "sk-env-wins" not in r.output
    assert json.loads(p.read_text())["keys"]["OPENAI_API_KEY"] == "sk-env-wins-5678"


def test_process_text_with_model_and_fallback(monkeypatch):
    with WireServer() as ws:
        monkeypatch.setenv("PURPOSE_GENERAL_MODELS", ws.spec())
        r = runner.invoke(models_app, ["process-text", "knowledge_extraction", "Stride length sets "
                                       "velocity.", "--model", "meta-llama/llama-3-70b"])
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith("Wire reply from wire-model:")
        assert "meta-llama/llama-3-70b: skipped" in r.stderr
        assert "[answered by openai-compatible:wire-model]" in r.stderr
        args = ["process-text", "judging", "Answer: 42", "--model", ws.spec("wire-fallback")]
        r = runner.invoke(models_app, args)
        assert r.exit_code == 0 and r.stdout.startswith("Wire reply from wire-fallback:")


def test_process_domain_text(monkeypatch, capsys):
    with WireServer() as ws:
        monkeypatch.setenv("PURPOSE_GENERAL_MODELS", ws.spec())
        text = "Explain the pathophysiology of type 2 diabetes."
        args = ["process-domain-text", "medical", "knowledge_extraction", text,
                "--model", "epfl-llm/meditron-7b"]
        r = runner.invoke(models_app, args)
        assert r.exit_code == 0 and "epfl-llm/meditron-7b: skipped" in r.stderr
        assert "stanford-crfm/BioMedLM-2.7B: skipped" in r.stderr
        code = "Write a Python function for the Sieve of Eratosthenes."
        r = runner.invoke(models_app, ["process-domain-text", "auto", "code_generation", code])
        assert r.exit_code == 0 and "WizardLM/WizardCoder-Python-34B: skipped" in r.stderr
    code, _, err = purpose(capsys, "process-domain-text", "sport", "knowledge_extraction", "x")
    assert code == 2 and "unknown domain 'sport'" in err


def test_process_text_model_asked_for_is_tried_before_a_cached_fallback(monkeypatch):
    "Issue 10: `--model anthropic:...` was `[answered by openai:..., cached]` (openai had before)."
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0000000000")
    text = "Stride length and stride frequency set sprint velocity."
    with WireServer() as ws:
        monkeypatch.setenv("PURPOSE_GENERAL_MODELS", ws.spec())
        r = runner.invoke(models_app, ["process-text", "knowledge_extraction", text])
        assert r.exit_code == 0, r.output
        assert "[answered by openai-compatible:wire-model]" in r.stderr, r.output
        r = runner.invoke(models_app, ["process-text", "knowledge_extraction", text])
        assert "[answered by openai-compatible:wire-model, cached]" in r.stderr
        asked = f"anthropic:claude-wire@{ws.url}"
        args = ["process-text", "knowledge_extraction", text, "--model", asked]
        r = runner.invoke(models_app, args)
        assert r.exit_code == 0 and r.stdout.startswith("Wire reply from claude-wire:"), r.output
        assert "[answered by anthropic:claude-wire]" in r.stderr
        assert ws.counts() == {"wire-model": 1, "claude-wire": 1}


def test_check_command(monkeypatch, capsys):
    with WireServer() as ws:
        r = runner.invoke(models_app, ["check", "offline", ws.spec(), "openai:gpt-4o-mini|offline"])
        assert r.exit_code == 0, r.output
        assert f"{ws.spec()}: ok (model listed (2 on the server))" in r.stdout
        assert "offline: ok (nothing to check)" in r.stdout
        code, _, err = purpose(capsys, "check", ws.spec("nope"))
        assert code == 2 and "model 'nope' not found" in err and len(err.strip().splitlines()) == 1
    code, _, err = purpose(capsys, "check", "openai:gpt-4o-mini")
    assert code == 2 and "set the environment variable OPENAI_API_KEY" in err


def test_save_config_creates_the_key_file_0600_even_under_umask_0(tmp_path):
    "Issue 12: `save_config` wrote the file with the umask's mode, then chmod-ed it: a window."
    import subprocess, sys
    watch = """
import os, sys, purpose.modelhub as M
os.umask(0); os.environ["PURPOSE_CONFIG"] = sys.argv[1]
write = M.save_config.__globals__["write_json"]           # where save_config looks it up
def spy(p, obj, **kw):
    out = write(p, obj, **kw); print(oct(os.stat(p).st_mode & 0o777)); return out
M.save_config.__globals__["write_json"] = spy
M.save_config({"keys": {"OPENAI_API_KEY": "sk-secret-00000000"}})
print(oct(os.stat(sys.argv[1]).st_mode & 0o777))
"""
    r = subprocess.run([sys.executable, "-c", watch, str(tmp_path/"config.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0o600", "0o600"]      # as created, and as left
