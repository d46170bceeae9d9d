"""Artifacts that travel (issue 12): a trained run folder copied to another machine, whose model cache is gone,
loads the same model in a fresh process; the adapter names a base another machine can resolve and carries a real
model card; the merged model loads with plain transformers; run-folder files get the umask's normal mode."""
import json, os, shutil, stat, subprocess, sys
from pathlib import Path
import pytest
import torch
from purpose.core import (BASE_MODEL_FILE, EMBEDDED_HUB_ID, EMBEDDED_STUDENT, TINY_STUDENT, Manifest, cache_dir,
                          chat_messages, load_student, read_json, write_json, write_jsonl)
from purpose.train import TrainConfig, load_adapter, train, train_stage, write_model_card

PROMPT = "What is the stride length at phase 3?"

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models run best on one thread

def qa_rows(n: int, offset: int = 0) -> list[dict]:
    return [{"messages": chat_messages(f"Question {i}: what is the stride length at phase {i}?", "sprint",
                                       f"The stride length is {2 + i / 10:.1f} m."),
             "depth": "basic", "hard": False} for i in range(offset, offset + n)]

FRESH = """
import json, sys, torch
from pathlib import Path
from purpose.core import cache_dir
from purpose.train import load_adapter
folder, out = Path(sys.argv[1]), sys.argv[2]
model, tok = load_adapter(folder/"train"/"adapter")
ids = torch.tensor([tok(sys.argv[3])["input_ids"]])
res = {"ids": ids, "cache": str(cache_dir())}
with torch.no_grad(): res["adapter"] = model(ids).logits
if (folder/"train"/"merged").exists():     # plain transformers: no purpose, no peft
    from transformers import AutoModelForCausalLM, AutoTokenizer
    merged = AutoModelForCausalLM.from_pretrained(folder/"train"/"merged").eval()
    mtok = AutoTokenizer.from_pretrained(folder/"train"/"merged")
    assert mtok(sys.argv[3])["input_ids"] == ids[0].tolist()
    with torch.no_grad(): res["merged"] = merged(ids).logits
    res["generated"] = merged.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=mtok.pad_token_id)
torch.save(res, out)
"""

def in_fresh_process(folder: Path, cache: Path, tmp: Path) -> dict:
    "Load `folder`'s model in a new Python whose model cache is `cache`, offline; returns what it computed."
    (tmp/"fresh.py").write_text(FRESH)
    env = {**os.environ, "PURPOSE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(tmp/"fresh.py"), str(folder), str(tmp/"fresh.pt"), PROMPT],
                       capture_output=True, text=True, env=env, timeout=600, cwd=tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    return torch.load(tmp/"fresh.pt", weights_only=False)

def reference_logits(run: Path, student: str, seed: int = 0):
    "Logits of the adapter on the student as this process loads it (peft directly, not `load_adapter`)."
    from peft import PeftModel
    base, tok = load_student(student, seed=seed)
    model = PeftModel.from_pretrained(base, str(run/"train"/"adapter")).eval()
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    with torch.no_grad(): return ids, model(ids).logits

def texts_under(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*")
                     if p.is_file() and p.suffix in (".json", ".md", ".jsonl", ".txt"))

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    "A tiny run folder trained (and merged) under a model cache of its own, with papers that state a licence."
    tmp = tmp_path_factory.mktemp("portable")
    old = os.environ.get("PURPOSE_CACHE")
    os.environ["PURPOSE_CACHE"] = str(tmp/"cache")
    try:
        from datasets import Dataset, DatasetDict
        run, papers = tmp/"run", tmp/"papers"/"sprint"
        papers.mkdir(parents=True)
        (papers/"LICENSE").write_text("CC BY 4.0\n\nAll papers in this folder.\n")
        (papers/"a.pdf").write_bytes(b"%PDF")
        DatasetDict({"train": Dataset.from_list(qa_rows(8)), "heldout": Dataset.from_list(qa_rows(3, 50))}
                    ).save_to_disk(str(run/"distill"/"dataset"))
        write_jsonl(run/"extract"/"documents.jsonl", [{"doc_id": "d1", "source": "a.pdf", "status": "ok",
                                                       "title": "Stride length in sprinters", "year": 2018,
                                                       "doi": "10.5555/x.1"}])
        Manifest(run).update(domain="sprint", papers_dir=str(papers))
        res = train_stage(run, merge=True, progress=False, student=TINY_STUDENT, epochs=1, lr=5e-3, lora_r=4,
                          max_len=128, rows_per_batch=2, precision="fp32", seed=3)
        yield run, res, tmp
    finally:
        if old is None: os.environ.pop("PURPOSE_CACHE", None)
        else: os.environ["PURPOSE_CACHE"] = old

def test_copied_run_loads_in_a_fresh_process_with_the_cache_gone(tiny_run, tmp_path):
    run, res, tmp = tiny_run
    ids, want = reference_logits(run, TINY_STUDENT, seed=3)
    copy = tmp_path/"elsewhere"/"run"
    shutil.copytree(run, copy)
    gone = tmp/"cache"
    gone.rename(tmp/"cache.renamed")                       # the cache the run was trained with is no more
    try:
        got = in_fresh_process(copy, tmp_path/"new-cache", tmp_path)
    finally: (tmp/"cache.renamed").rename(gone)
    assert got["cache"] == str(tmp_path/"new-cache")
    assert torch.equal(got["ids"], ids) and torch.equal(got["adapter"], want)      # the same base, rebuilt
    torch.testing.assert_close(got["merged"], want, rtol=1e-4, atol=1e-4)
    assert got["generated"].shape[1] == ids.shape[1] + 4
    for folder in (copy/"train"/"adapter", copy/"train"/"merged"):
        assert str(gone) not in texts_under(folder), folder                        # nothing points at the cache
    assert read_json(copy/"train"/"adapter"/"adapter_config.json")["base_model_name_or_path"] == TINY_STUDENT
    assert read_json(copy/"train"/"merged"/BASE_MODEL_FILE)["seed"] == 3

def test_the_model_card_describes_data_recipe_evaluation_and_licence(tiny_run):
    from purpose.evaluate import report_markdown
    run, res, _ = tiny_run
    card = (run/"train"/"adapter"/"README.md").read_text()
    assert card.startswith("---\nbase_model: tiny-random\nlibrary_name: peft\nlicense: cc-by-4.0\n")
    assert "Model Card for Model ID" not in card and "Provide a quick summary" not in card    # peft's template
    assert "| a.pdf | Stride length in sprinters | 2018 | 10.5555/x.1 | CC BY 4.0 |" in card
    assert "- train: examples 8" in card                                                     # counts per stage
    assert "| lora_r | 4 |" in card and "| seed | 3 |" in card and res["data_fingerprint"] in card
    assert "Sources: CC BY 4.0 (1 of 1)" in card and "Not evaluated yet" in card
    assert "library_name: transformers" in (run/"train"/"merged"/"README.md").read_text()
    ci = [0.2, 0.6]
    system = {"accuracy": 0.4, "accuracy_ci": ci, "token_f1": 0.5, "consistency": 0.7, "perplexity": 3.2,
              "latency_p50_s": 0.1, "tokens_per_s": 20.0}
    report = {"domain": "sprint", "n_heldout": 5, "systems": {"base": {**system, "accuracy": 0.2}, "tuned": system},
              "comparisons": {}}
    write_json(run/"eval"/"report.json", report)
    try:
        write_model_card(run); write_model_card(run)                                         # idempotent
        card = (run/"train"/"adapter"/"README.md").read_text()
        table = [l for l in report_markdown(report).splitlines() if l.startswith("| tuned")]
        assert table and table[0] in card and "[20%, 60%]" in table[0] and "Not evaluated yet" not in card
        assert card.count("\n## Evaluation\n") == 1 and "\n# Evaluation" not in card
    finally: shutil.rmtree(run/"eval")

def test_papers_without_a_licence_say_so(tiny_run, tmp_path):
    run, _, _ = tiny_run
    other = tmp_path/"run"
    shutil.copytree(run, other)
    Manifest(other).update(papers_dir=str(tmp_path/"nowhere"))
    write_model_card(other)
    card = (other/"train"/"adapter"/"README.md").read_text()
    assert "license: other" in card and "Sources: not stated by the sources." in card

def test_run_folder_files_get_the_umasks_mode_not_0600(tiny_run):
    "mkstemp made every JSON/JSONL 0600 while the files next to them were 0644."
    run, _, _ = tiny_run
    (run/"probe").write_text("x")
    normal = stat.S_IMODE((run/"probe").stat().st_mode)
    (run/"probe").unlink()
    modes = {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in run.rglob("*") if p.is_file()}
    assert {"manifest.json", "train/train_log.jsonl", "train/adapter/base_model.json"} <= set(modes)
    assert {k: v for k, v in modes.items() if v != oct(normal)} == {}

def test_embedded_student_adapter_names_the_hub_id_and_rebuilds_the_same_base(tmp_path):
    "The embedded SmolLM2: the adapter says the Hub id, how the base was made, and a fresh cache rebuilds it exactly."
    run = tmp_path/"run"
    cfg = TrainConfig(student=EMBEDDED_STUDENT, epochs=1, max_steps=1, lora_r=2, lora_alpha=4, max_len=32,
                      rows_per_batch=1, precision="fp32", target_modules="q_proj,v_proj")
    train(qa_rows(2), [], run/"train", cfg, progress=False)
    ad = run/"train"/"adapter"
    conf, base = read_json(ad/"adapter_config.json"), read_json(ad/BASE_MODEL_FILE)
    assert conf["base_model_name_or_path"] == EMBEDDED_HUB_ID
    assert base["student"] == EMBEDDED_STUDENT and len(base["gguf"]["sha256"]) == 64
    assert "dequantised" in base["weights"] and EMBEDDED_HUB_ID in base["rebuild"]["shell"]
    card = (ad/"README.md").read_text()
    assert card.startswith(f"---\nbase_model: {EMBEDDED_HUB_ID}\n") and base["gguf"]["sha256"] in card
    assert str(cache_dir()) not in texts_under(ad)
    ids, want = reference_logits(run, EMBEDDED_STUDENT)
    fresh = tmp_path/"fresh-cache"
    try:
        got = in_fresh_process(run, fresh, tmp_path)
        assert (fresh/"smollm2-135m"/"model.safetensors").exists()                 # rebuilt from the GGUF
        assert torch.equal(got["ids"], ids) and torch.equal(got["adapter"], want)
    finally: shutil.rmtree(fresh, ignore_errors=True)                              # 517 MB
