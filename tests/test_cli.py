"The `purpose` command: one error line for a user error; `--domain all` goes on past a failure."
import json
import pytest
from conftest import purpose_cli

def _one_error_line(r, contains):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], r.stderr

def test_unknown_domain(tmp_path):
    (tmp_path/"papers"/"sprint").mkdir(parents=True)
    (tmp_path/"papers"/"sprint"/"a.txt").write_text("x")
    r = purpose_cli("run", "--domain", "rowing", cwd=tmp_path)
    _one_error_line(r, "unknown domain 'rowing'")

def test_missing_and_empty_papers_folder(tmp_path):
    run = lambda d: purpose_cli("run", "--domain", "sprint", "--papers-dir", d, cwd=tmp_path)
    _one_error_line(run(tmp_path/"nope"), "does not exist")
    (tmp_path/"empty").mkdir()
    _one_error_line(run(tmp_path/"empty"), "is empty")

def test_unknown_parameter(small_papers):
    r = purpose_cli("run", "--domain", "sprint", "-p", "epochz=1", cwd=small_papers.parent)
    _one_error_line(r, "unknown parameter(s) epochz")

def test_secret_parameter_refused(small_papers):
    r = purpose_cli("run", "--domain", "sprint", "-p", "openai_api_key=sk-x",
                    cwd=small_papers.parent)
    _one_error_line(r, "environment variable")

def test_all_domains_continue_past_failure(small_papers):
    (small_papers/"empty_domain").mkdir()
    r = purpose_cli("run", "--domain", "all", "-s", "extract", "-s", "graph", "-p", "workers=1",
                    cwd=small_papers.parent)
    assert r.returncode == 1, r.stderr
    assert "empty_domain: failed" in r.stdout and "sprint: done" in r.stdout
    assert (small_papers.parent/"runs"/"sprint"/"graph"/"graph.graphml").exists()
    assert "IPKernelApp" not in r.stderr and "KeyboardInterrupt" not in r.stderr   # no kernel noise

def test_process_command(small_papers, tmp_path):
    "The corpus holds every readable document once: its chunks' text, no overlap twice, sections."
    from purpose.core import read_jsonl
    r = purpose_cli("process", "--data-dir", small_papers/"sprint", "--output-dir", tmp_path/"out",
                    "--workers", "1")
    assert r.returncode == 0, r.stderr
    out = tmp_path/"out"
    docs, chunks, corpus = (read_jsonl(out/f"{n}.jsonl") for n in ("documents", "chunks", "corpus"))
    read = sorted(d["source"] for d in docs if d["status"] == "ok")
    assert read == sorted(p.name for p in (small_papers/"sprint").iterdir())
    assert [c["doc_id"] for c in corpus] == [d["doc_id"] for d in docs if d["status"] == "ok"]
    norm = lambda s: " ".join(s.split())
    text = {c["doc_id"]: norm(c["text"]) for c in corpus}
    for ch in chunks:
        t = text[ch["doc_id"]]
        assert norm(ch["text"]) in t, (ch["chunk_id"], ch["text"][:80])
        assert t.count(norm(ch["text"])[:80]) == 1, ("overlap repeated", ch["chunk_id"])
    for c in corpus:                                     # a paper's sections, in order, as headings
        sections = [ch["section"] for ch in chunks
                    if ch["doc_id"] == c["doc_id"] and ch["section"] not in ("records", "")]
        heads = [line[3:] for line in c["text"].splitlines() if line.startswith("## ")]
        runs = [s for i, s in enumerate(sections) if i == 0 or sections[i - 1] != s]
        assert heads == runs, c["source"]
    assert sum(bool(c["title"]) for c in corpus) == 3
    assert any("## 3. Results" in c["text"] for c in corpus)
    txt = (out/"corpus.txt").read_text(encoding="utf-8")
    assert txt == "\n\n".join(c["text"] for c in corpus) + "\n" and "athlete id: SPR001" in txt

def _messages(folder, n: int, system: bool = True):
    "A folder with a `messages.jsonl` of `n` chat rows."
    folder.mkdir()
    sys_row = [{"role": "system", "content": "You are an expert."}] if system else []
    rows = [{"messages": [*sys_row, {"role": "user", "content": f"Q{i}?"},
                          {"role": "assistant", "content": f"Answer {i}."}], "depth": "basic"}
            for i in range(n)]
    (folder/"messages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder

def test_train_and_generate(tmp_path):
    "`purpose train` on a messages.jsonl folder, then `purpose generate` with the trained adapter."
    from purpose.config import TrainConfig
    data = _messages(tmp_path/"data", 6)
    r = purpose_cli("train", "--data-dir", data, "--model-dir", tmp_path/"models", "--model-name",
                    "tiny-random", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    out = tmp_path/"models"/"tiny-random-domain"
    assert (out/"adapter"/"adapter_config.json").exists()
    cfg = json.loads((out/"train_config.json").read_text())
    # what was not given is the config's default: one set of defaults for every driver
    assert cfg["epochs"] == 1 and cfg["student"] == "tiny-random"
    assert {k: cfg[k] for k in ("lr", "lora_r", "max_len")} == \
           {k: getattr(TrainConfig(), k) for k in ("lr", "lora_r", "max_len")}
    g = purpose_cli("generate", "--model-dir", out, "--prompt", "Q1?", "--max-new-tokens", "4",
                    "--temperature", "0")
    assert g.returncode == 0, g.stderr
    _one_error_line(purpose_cli("train", "--data-dir", tmp_path, "--model-name", "tiny-random"),
                    "no QA dataset")

def test_bit_precision_falls_back_to_full_precision_with_a_note(tmp_path):
    "`--bit-precision 4` without a CUDA GPU + bitsandbytes: a note on what is missing, then fp32."
    import importlib.util, torch
    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("this machine can run QLoRA")
    data = _messages(tmp_path/"data", 4, system=False)
    r = purpose_cli("train", "--data-dir", data, "--model-dir", tmp_path/"models", "--model-name",
                    "tiny-random", "--epochs", "1", "--bit-precision", "4")
    assert r.returncode == 0, r.stderr
    assert "note: --bit-precision 4 (QLoRA) needs a CUDA GPU" in r.stdout
    assert "in full precision" in r.stdout
    cfg = json.loads((tmp_path/"models"/"tiny-random-domain"/"train_config.json").read_text())
    assert cfg["quantize"] is None
    _one_error_line(purpose_cli("train", "--data-dir", data, "--bit-precision", "3"), "use 4 or 8")


@pytest.mark.parametrize("args, says", [
    (["generate", "--model-dir", "m", "--prompt", "q", "--max-new-tokens", "-5"],
     "--max-new-tokens -5: use a value of at least 1"),
    (["generate", "--model-dir", "m", "--prompt", "q", "--temperature", "-1"],
     "--temperature -1.0: use a value of at least 0"),
    (["serve", "--model-dir", "m", "--port", "99999"], "--port 99999: use a value from 1 to 65535"),
    (["serve", "--model-dir", "m", "--port", "-1"], "--port -1: use a value from 1 to 65535"),
    (["train", "--data-dir", "d", "--lr", "-1"], "--lr -1.0: use a value above 0"),
    (["train", "--data-dir", "d", "--lr", "0"], "--lr 0.0: use a value above 0"),
    (["train", "--data-dir", "d", "--epochs", "-1"], "--epochs -1: use a value of at least 1"),
    (["train", "--data-dir", "d", "--lora-r", "-2"], "--lora-r -2: use a value of at least 0"),
    (["train", "--data-dir", "d", "--max-len", "8"], "--max-len 8: use a value of at least 16"),
    (["distill", "--papers-dir", "p", "--epochs", "0"], "--epochs 0: use a value of at least 1"),
    (["distill", "--papers-dir", "p", "--num-qa-pairs", "0"],
     "--num-qa-pairs 0: use a value of at least 1"),
    (["evaluate", "--run-dir", "r", "--max-items", "0"],
     "--max-items 0: use a value of at least 1"),
    (["evaluate", "--run-dir", "r", "--max-new-tokens", "0"],
     "--max-new-tokens 0: use a value of at least 1"),
    (["process", "--data-dir", ".", "--output-dir", "out", "--log-level", "LOUD"],
     "--log-level LOUD: use one of DEBUG, INFO"),
    (["process", "--data-dir", ".", "--output-dir", "out", "--workers", "0"],
     "--workers 0: use a value of at least 1"),
])
def test_bad_numbers_and_levels_are_one_line_before_anything_runs(tmp_path, args, says):
    "Issue 10: these gave tracebacks (or garbage, or `train_log.jsonl does not exist`)."
    _one_error_line(purpose_cli(*args, cwd=tmp_path), says)
    assert list(tmp_path.iterdir()) == []                       # nothing was created


def test_stage_options_say_the_config_default():
    "An option setting a stage's setting shows the config's comment and default, not its own."
    from purpose.config import EvaluateConfig, TrainConfig, field_docs
    said = lambda *args: " ".join(purpose_cli(*args, "--help").stdout.replace("│", " ").split())
    evaluate, train = said("evaluate"), said("train")
    tokens = field_docs(EvaluateConfig)["max_new_tokens"]
    assert f"{tokens}; default: {EvaluateConfig.max_new_tokens}" in evaluate
    assert f"default: {EvaluateConfig.max_items}" in evaluate
    assert f"{field_docs(TrainConfig)['lr']}; default: {TrainConfig.lr}" in train


def test_process_output_dir_that_is_a_file(small_papers, tmp_path):
    (tmp_path/"a_file").write_text("x")
    r = purpose_cli("process", "--data-dir", small_papers/"sprint", "--output-dir",
                    tmp_path/"a_file")
    _one_error_line(r, "is a file")
    assert (tmp_path/"a_file").read_text() == "x"


def test_domain_is_a_plain_name_never_a_path(small_papers):
    "Issue 10: `--domain ../../trav_escape --papers-dir papers/sprint` wrote the run outside runs/."
    work = small_papers.parent
    for bad in ("../../trav_escape", "a/b", "..", ".hidden"):
        r = purpose_cli("run", "--domain", bad, "--papers-dir", small_papers/"sprint",
                        "-s", "extract", cwd=work)
        _one_error_line(r, "a domain is a plain name")
    r = purpose_cli("enhanced-distill", "--papers-dir", small_papers/"sprint", "--domain", "../x",
                    cwd=work)
    _one_error_line(r, "a domain is a plain name")
    assert sorted(p.name for p in work.iterdir()) == ["papers"]
    assert not (work.parent.parent/"trav_escape").exists()


def test_distill_commands_go_through_the_one_driver(small_papers, tmp_path):
    "`purpose distill` (standard) runs the stage notebooks with papermill like `purpose run`."
    import nbformat
    from purpose.core import Manifest, RunDir
    run = tmp_path/"run"
    r = purpose_cli("distill", "--papers-dir", small_papers/"sprint", "--model-name", "tiny-random",
                    "--num-qa-pairs", 24, "--epochs", 1, "--run-dir", run, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    stages = Manifest(run).load()["stages"]
    ran = ("extract", "queries", "distill", "train", "evaluate")
    assert all(stages[s]["status"] == "done" for s in ran)
    assert "graph" not in stages and "augment" not in stages   # standard: questions from chunks
    nb = nbformat.read(RunDir(run).notebooks/"05_distill.ipynb", as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert 'mode = "standard"' in injected.source and "num_qa_pairs = 24" in injected.source
    assert "judge =" not in injected.source and "teachers =" not in injected.source   # not given
    assert stages["queries"]["params"]["mode"] == "standard"
    assert (RunDir(run).notebooks/"07_evaluate.ipynb").exists()
    assert "| tuned" in r.stdout                                # the report is printed
