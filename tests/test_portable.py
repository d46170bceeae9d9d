"""Artifacts that travel (issue 12): a trained run folder copied to another machine, whose model
cache is gone, loads the same model in a fresh process; the adapter names a base another machine can
resolve and carries a real model card; the merged model loads with plain transformers; run-folder
files get the umask's normal mode."""
import os, shutil, stat, subprocess, sys
from pathlib import Path
import pytest
import torch
from purpose.adapter import MODEL_FILES, TrainDir, write_model_card
from purpose.core import Manifest, RunDir, cache_dir, read_json, write_json, write_jsonl
from purpose.student import (BASE_MODEL_FILE, EMBEDDED_HUB_ID, EMBEDDED_STUDENT, TINY_STUDENT,
                             chat_messages, load_student)
from purpose.train import TrainConfig, train, train_stage

PROMPT = "What is the stride length at phase 3?"

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models run best on one thread

def qa_rows(n: int, offset: int = 0) -> list[dict]:
    question = "Question {}: what is the stride length at phase {}?"
    return [{"messages": chat_messages(question.format(i, i), "sprint",
                                       f"The stride length is {2 + i / 10:.1f} m."),
             "depth": "basic", "hard": False} for i in range(offset, offset + n)]

# the loader needs only purpose.adapter (not the trainer) and, for the merged model, transformers
FRESH = """
import json, sys, torch
from pathlib import Path
from purpose.core import cache_dir
from purpose.adapter import load_adapter
folder, out = Path(sys.argv[1]), sys.argv[2]
model, tok = load_adapter(folder/"train"/"adapter")
ids = torch.tensor([tok(sys.argv[3])["input_ids"]])
res = {"ids": ids, "cache": str(cache_dir()), "trainer_loaded": "purpose.train" in sys.modules}
with torch.no_grad(): res["adapter"] = model(ids).logits
if (folder/"train"/"merged").exists():     # plain transformers: no purpose, no peft
    from transformers import AutoModelForCausalLM, AutoTokenizer
    merged = AutoModelForCausalLM.from_pretrained(folder/"train"/"merged").eval()
    mtok = AutoTokenizer.from_pretrained(folder/"train"/"merged")
    assert mtok(sys.argv[3])["input_ids"] == ids[0].tolist()
    with torch.no_grad(): res["merged"] = merged(ids).logits
    res["generated"] = merged.generate(ids, max_new_tokens=4, do_sample=False,
                                       pad_token_id=mtok.pad_token_id)
torch.save(res, out)
"""

def in_fresh_process(folder: Path, cache: Path, tmp: Path) -> dict:
    "Load `folder`'s model in a new Python whose model cache is `cache`, offline; what it computed."
    (tmp/"fresh.py").write_text(FRESH)
    env = {**os.environ, "PURPOSE_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, str(tmp/"fresh.py"), str(folder), str(tmp/"fresh.pt"), PROMPT]
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, cwd=tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    return torch.load(tmp/"fresh.pt", weights_only=False)

def reference_logits(run: Path, student: str, seed: int = 0):
    "Logits of the adapter on the student as this process loads it (peft, not `load_adapter`)."
    from peft import PeftModel
    base, tok = load_student(student, seed=seed)
    model = PeftModel.from_pretrained(base, str(RunDir(run).adapter)).eval()
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    with torch.no_grad(): return ids, model(ids).logits

def texts_under(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*")
                     if p.is_file() and p.suffix in (".json", ".md", ".jsonl", ".txt"))

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    "A tiny run trained (and merged) under a model cache of its own; its papers state a licence."
    tmp = tmp_path_factory.mktemp("portable")
    old = os.environ.get("PURPOSE_CACHE")
    os.environ["PURPOSE_CACHE"] = str(tmp/"cache")
    try:
        from datasets import Dataset, DatasetDict
        run, papers = tmp/"run", tmp/"papers"/"sprint"
        papers.mkdir(parents=True)
        (papers/"LICENSE").write_text("CC BY 4.0\n\nAll papers in this folder.\n")
        (papers/"a.pdf").write_bytes(b"%PDF")
        ds = DatasetDict({"train": Dataset.from_list(qa_rows(8)),
                          "heldout": Dataset.from_list(qa_rows(3, 50))})
        ds.save_to_disk(str(RunDir(run).dataset))
        doc = {"doc_id": "d1", "source": "a.pdf", "status": "ok",
               "title": "Stride length in sprinters", "year": 2018, "doi": "10.5555/x.1"}
        write_jsonl(RunDir(run).documents, [doc])
        Manifest(run).update(domain="sprint", papers_dir=str(papers))
        res = train_stage(run, merge=True, progress=False, student=TINY_STUDENT, epochs=1, lr=5e-3,
                          lora_r=4, max_len=128, rows_per_batch=2, precision="fp32", seed=3)
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
    gone.rename(tmp/"cache.renamed")                       # the cache of the training is no more
    try:
        got = in_fresh_process(copy, tmp_path/"new-cache", tmp_path)
    finally: (tmp/"cache.renamed").rename(gone)
    assert got["cache"] == str(tmp_path/"new-cache")
    assert not got["trainer_loaded"]                                  # loading needs no trainer
    assert torch.equal(got["ids"], ids) and torch.equal(got["adapter"], want)   # the same base
    torch.testing.assert_close(got["merged"], want, rtol=1e-4, atol=1e-4)
    assert got["generated"].shape[1] == ids.shape[1] + 4
    out = TrainDir(RunDir(copy).train)
    for folder in (out.adapter, out.merged):
        assert str(gone) not in texts_under(folder), folder                     # no cache path
    conf = read_json(out.adapter/MODEL_FILES["adapter_config"])
    assert conf["base_model_name_or_path"] == TINY_STUDENT
    assert read_json(out.merged/BASE_MODEL_FILE)["seed"] == 3

def test_the_model_card_describes_data_recipe_evaluation_and_licence(tiny_run):
    from purpose.metrics import report_markdown
    run, res, _ = tiny_run
    adapter_card, merged_card = (RunDir(run).adapter/"README.md"), (RunDir(run).merged/"README.md")
    card = adapter_card.read_text()
    assert card.startswith("---\nbase_model: tiny-random\nlibrary_name: peft\nlicense: cc-by-4.0\n")
    # peft's template is gone
    assert "Model Card for Model ID" not in card and "Provide a quick summary" not in card
    assert "| a.pdf | Stride length in sprinters | 2018 | 10.5555/x.1 | CC BY 4.0 |" in card
    assert "- train: examples 8" in card                                          # counts per stage
    assert "| lora_r | 4 |" in card and "| seed | 3 |" in card and res["data_fingerprint"] in card
    assert "| progress |" not in card                                  # the recipe, not the stage
    assert "Sources: CC BY 4.0 (1 of 1)" in card and "Not evaluated yet" in card
    assert "from purpose.adapter import load_adapter" in card
    assert "library_name: transformers" in merged_card.read_text()
    ci = [0.2, 0.6]
    system = {"accuracy": 0.4, "accuracy_ci": ci, "token_f1": 0.5, "consistency": 0.7,
              "perplexity": 3.2, "latency_p50_s": 0.1, "tokens_per_s": 20.0}
    report = {"domain": "sprint", "n_heldout": 5, "comparisons": {},
              "systems": {"base": {**system, "accuracy": 0.2}, "tuned": system}}
    write_json(RunDir(run).report, report)
    try:
        write_model_card(run)
        write_model_card(run)                                                  # idempotent
        card = adapter_card.read_text()
        lines = report_markdown(report).splitlines()
        table = [line for line in lines if line.startswith("| tuned")]
        assert table and table[0] in card and "[20%, 60%]" in table[0]
        assert "Not evaluated yet" not in card
        assert card.count("\n## Evaluation\n") == 1 and "\n# Evaluation" not in card
    finally: shutil.rmtree(RunDir(run).eval)

def test_papers_without_a_licence_say_so(tiny_run, tmp_path):
    run, _, _ = tiny_run
    other = tmp_path/"run"
    shutil.copytree(run, other)
    Manifest(other).update(papers_dir=str(tmp_path/"nowhere"))
    write_model_card(other)
    card = (RunDir(other).adapter/"README.md").read_text()
    assert "license: other" in card and "Sources: not stated by the sources." in card

def test_run_folder_files_get_the_umasks_mode_not_0600(tiny_run):
    "mkstemp made every JSON/JSONL 0600 while the files next to them were 0644."
    run, _, _ = tiny_run
    (run/"probe").write_text("x")
    normal = stat.S_IMODE((run/"probe").stat().st_mode)
    (run/"probe").unlink()
    modes = {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode))
             for p in run.rglob("*") if p.is_file()}
    assert {"manifest.json", "train/train_log.jsonl", "train/adapter/base_model.json"} <= set(modes)
    assert {k: v for k, v in modes.items() if v != oct(normal)} == {}

def test_embedded_student_adapter_names_the_hub_id_and_rebuilds_the_same_base(tmp_path):
    "Embedded SmolLM2: the adapter says the Hub id, how the base was made; a new cache rebuilds it."
    run = tmp_path/"run"
    cfg = TrainConfig(student=EMBEDDED_STUDENT, epochs=1, max_steps=1, lora_r=2, lora_alpha=4,
                      max_len=32, rows_per_batch=1, precision="fp32",
                      target_modules="q_proj,v_proj")
    train(qa_rows(2), [], RunDir(run).train, cfg, progress=False)
    ad = RunDir(run).adapter
    conf, base = read_json(ad/"adapter_config.json"), read_json(ad/BASE_MODEL_FILE)
    assert conf["base_model_name_or_path"] == EMBEDDED_HUB_ID
    assert base["student"] == EMBEDDED_STUDENT and len(base["gguf"]["sha256"]) == 64
    assert "dequantised" in base["weights"] and EMBEDDED_HUB_ID in base["rebuild"]["shell"]
    card = (ad/"README.md").read_text()
    assert card.startswith(f"---\nbase_model: {EMBEDDED_HUB_ID}\n")
    assert base["gguf"]["sha256"] in card
    assert str(cache_dir()) not in texts_under(ad)
    ids, want = reference_logits(run, EMBEDDED_STUDENT)
    fresh = tmp_path/"fresh-cache"
    try:
        got = in_fresh_process(run, fresh, tmp_path)
        assert (fresh/"smollm2-135m"/"model.safetensors").exists()               # from the GGUF
        assert torch.equal(got["ids"], ids) and torch.equal(got["adapter"], want)
    finally: shutil.rmtree(fresh, ignore_errors=True)                            # 517 MB
