"""The trainer's guarantees: packed = unpacked (loss and gradients), a SIGKILLed run resumes
exactly, full fine-tuning, merged models, and the same trainer under `accelerate launch` with 2 CPU
processes (DDP over gloo)."""
import json, os, signal, socket, subprocess, sys, time
from dataclasses import asdict, replace
from pathlib import Path
import pytest
import torch
from purpose.adapter import TrainDir
from purpose.core import read_jsonl
from purpose.packing import (VARLEN_ATTN, answer_loss, collate, encode_example, pack,
                             register_varlen_attention)
from purpose.student import TINY_STUDENT, chat_messages, load_student
from purpose.train import TrainConfig, evaluate_loss, train, train_stage

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models run best on one thread

def qa_rows(n: int, offset: int = 0) -> list[dict]:
    "Chat rows of varied length (answers from 1 to ~25 words)."
    def answer(i):
        why = ["because of ground contact"] * (i % 6)
        return " ".join(["The stride length is", f"{2 + i / 10:.1f} m", *why])
    question = "Question {}: what is the stride length at phase {}?"
    return [{"messages": chat_messages(question.format(i, i), "sprint", answer(i)),
             "depth": ["basic", "intermediate", "expert"][i % 3], "hard": i % 5 == 0}
            for i in range(offset, offset + n)]

def step_losses(log_path: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(log_path) if "loss" in r]

# --- packed == unpacked -------------------------------------------------------------------------

@pytest.mark.parametrize("attn", ["sdpa", "eager", VARLEN_ATTN])
def test_packed_loss_and_gradients_equal_unpacked(attn):
    "Block mask (sdpa: bool, eager: float) over padded rows; the flat padding-free layout (varlen)."
    from peft import LoraConfig, get_peft_model
    base, tok = load_student(TINY_STUDENT)
    register_varlen_attention()
    base.set_attn_implementation(attn)
    # init_lora_weights=False: both LoRA factors random, so every adapter weight gets a gradient
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                      init_lora_weights=False)
    model = get_peft_model(base, lora)
    exs = [encode_example(tok, r["messages"]) for r in qa_rows(7)]
    lens = [len(e["input_ids"]) for e in exs]
    rows = pack(exs, list(range(len(exs))), max_len=2 * max(lens))
    # several rows of different lengths (so some padding), and real packing
    assert len(rows) >= 2 and len({sum(lens[i] for i in r) for r in rows}) > 1
    assert any(len(r) > 1 for r in rows)
    lay = {"sdpa": {}, "eager": {"float_mask_dtype": torch.float32},
           VARLEN_ATTN: {"flat": True}}[attn]
    batch = collate(exs, rows, tok.pad_token_id, **lay)
    if attn == VARLEN_ATTN:
        assert batch["input_ids"].shape == (1, sum(lens)) and batch["attention_mask"] is None
    else: assert (batch["input_ids"] == tok.pad_token_id).any()
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}

    model.zero_grad()
    s, n = answer_loss(model, batch, chunk=7, reduction="sum")
    s.backward()
    packed = {k: p.grad.clone() for k, p in params.items()}
    model.zero_grad()
    ref, ref_n = 0.0, 0
    for e in exs:   # the model's own full-logit loss, one example at a time
        k = sum(l != -100 for l in e["labels"][1:])
        out = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]]))
        (out.loss * k).backward()
        ref, ref_n = ref + out.loss.item() * k, ref_n + k
    assert n == ref_n
    assert s.item() == pytest.approx(ref, rel=1e-5)
    for k, p in params.items():   # equal up to float32 summation order
        assert p.grad.norm() > 0 and (packed[k] - p.grad).norm() <= 1e-4 * p.grad.norm(), k

# --- a real kill --------------------------------------------------------------------------------

KILL_CHILD = """
import json, sys, time
import purpose.train as T
d = json.load(open(sys.argv[1]))
_collate = T.collate
def slow_collate(*a, **k):        # slow the run down so that the kill lands in the middle of it
    time.sleep(0.15)
    return _collate(*a, **k)
T.collate = slow_collate
T.train(d["rows"], d["held"], d["out"], T.TrainConfig(**d["cfg"]), progress=False)
"""

def test_sigkilled_run_resumes_to_the_same_result(tmp_path):
    cfg = TrainConfig(student=TINY_STUDENT, epochs=2, lr=3e-3, lora_r=4, max_len=64,
                      rows_per_batch=1, checkpoint_every=3, precision="fp32")
    rows, held = qa_rows(12), qa_rows(3, offset=100)
    killed = TrainDir(tmp_path/"killed")
    (tmp_path/"child.py").write_text(KILL_CHILD)
    data = {"rows": rows, "held": held, "out": str(killed.root), "cfg": asdict(cfg)}
    (tmp_path/"data.json").write_text(json.dumps(data))
    proc = subprocess.Popen([sys.executable, str(tmp_path/"child.py"), str(tmp_path/"data.json")],
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    state, log = killed.state, killed.train_log
    deadline = time.time() + 120
    try:   # kill once a checkpoint exists and a couple of steps were logged after it
        while time.time() < deadline and proc.poll() is None:
            if state.exists() and log.exists() and len(log.read_text().splitlines()) >= 5: break
            time.sleep(0.02)
        why = proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ""
        assert proc.poll() is None, f"the child ended before it could be killed: {why}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(state, weights_only=False)["state"]
    lines_at_kill = log.read_text().splitlines()
    # steps after the checkpoint were logged
    assert 0 < saved["step"] < 24 and len(lines_at_kill) > saved["log_lines"]

    resumed = train(rows, held, killed.root, cfg, progress=False)
    whole = train(rows, held, tmp_path/"whole", cfg, progress=False)
    assert resumed["steps"] == whole["steps"] == 24
    log_rows = read_jsonl(log)
    # no step twice, none missing
    assert [r["step"] for r in log_rows if "loss" in r] == list(range(1, 25))
    assert [r["epoch_end"] for r in log_rows if "epoch_end" in r] == [0, 1]
    whole_log = TrainDir(tmp_path/"whole").train_log
    assert step_losses(log) == pytest.approx(step_losses(whole_log), rel=1e-4)
    assert resumed["best_heldout_loss"] == pytest.approx(whole["best_heldout_loss"], rel=1e-4)
    assert (killed.adapter/"adapter_config.json").exists() and killed.loss_png.exists()

def test_stage_only_settings_do_not_restart_a_run(tmp_path):
    "`merge`, `augment`, `progress` are not in the fingerprint: changing them resumes the run."
    cfg = TrainConfig(student=TINY_STUDENT, epochs=1, lr=3e-3, lora_r=4, max_len=64,
                      rows_per_batch=1, precision="fp32", progress=False)
    rows, said = qa_rows(6), []
    first = train(rows, [], tmp_path, cfg, stop_after=2)
    resumed = train(rows, [], tmp_path, replace(cfg, merge=True, augment=False), log_fn=said.append)
    assert first["stopped_early"] and not said
    assert resumed["data_fingerprint"] == first["data_fingerprint"] and resumed["steps"] == 6
    steps = [r["step"] for r in read_jsonl(TrainDir(tmp_path).train_log) if "loss" in r]
    assert steps == list(range(1, 7))

def test_gradient_checkpointing_gives_the_same_run(tmp_path):
    rows = qa_rows(6)
    cfg = TrainConfig(student=TINY_STUDENT, epochs=1, lr=3e-3, lora_r=4, lora_dropout=0.0,
                      max_len=128, rows_per_batch=1, precision="fp32")
    plain = train(rows, [], tmp_path/"plain", cfg, progress=False)
    ckpt = train(rows, [], tmp_path/"gc", replace(cfg, gradient_checkpointing=True), progress=False)
    assert plain["steps"] == ckpt["steps"] > 1
    gc_losses = step_losses(TrainDir(tmp_path/"gc").train_log)
    assert gc_losses == pytest.approx(step_losses(TrainDir(tmp_path/"plain").train_log), rel=1e-5)

# --- full fine-tuning and merged models ---------------------------------------------------

def test_full_finetuning_saves_a_model_with_the_best_loss(tmp_path):
    cfg = TrainConfig(student=TINY_STUDENT, epochs=2, lr=2e-3, lora_r=0, max_len=128,
                      rows_per_batch=2, precision="fp32")
    rows, held = qa_rows(8), qa_rows(3, offset=50)
    res = train(rows, held, tmp_path, cfg, progress=False)
    every = sum(p.numel() for p in load_student(TINY_STUDENT)[0].parameters())
    assert res["trainable_params"] == every
    adapter = TrainDir(tmp_path).adapter
    assert (adapter/"config.json").exists() and not (adapter/"adapter_config.json").exists()
    model, tok = load_student(str(adapter))
    held_ex = [encode_example(tok, r["messages"], 128) for r in held]
    loss = lambda m: evaluate_loss(m, held_ex, cfg, tok.pad_token_id, "cpu")
    assert loss(model) == pytest.approx(res["best_heldout_loss"], abs=1e-4)
    base, _ = load_student(TINY_STUDENT)
    assert loss(base) > res["best_heldout_loss"] + 0.05   # it learned

def test_train_stage_merges_the_adapter(tmp_path):
    from datasets import Dataset, DatasetDict
    from peft import PeftModel
    run = tmp_path/"run"
    rows, held = qa_rows(8), qa_rows(3, offset=50)
    ds = DatasetDict({"train": Dataset.from_list(rows), "heldout": Dataset.from_list(held)})
    ds.save_to_disk(str(run/"distill"/"dataset"))
    res = train_stage(run, merge=True, progress=False, student=TINY_STUDENT, epochs=1, lr=5e-3,
                      lora_r=4, max_len=128, rows_per_batch=2, precision="fp32", replay="general",
                      replay_ratio=0.25)
    assert res["steps"] > 0 and res["replay_examples"] == 40
    out = TrainDir(run/"train")
    merged, tok = load_student(str(out.merged))
    assert not any("lora" in k for k in merged.state_dict())
    tuned = PeftModel.from_pretrained(load_student(TINY_STUDENT)[0], str(out.adapter))
    cfg = TrainConfig(max_len=128, precision="fp32")
    held_ex = [encode_example(tok, r["messages"], 128) for r in held]
    loss = lambda m: evaluate_loss(m, held_ex, cfg, tok.pad_token_id, "cpu")
    loss_merged = loss(merged)
    assert loss_merged == pytest.approx(loss(tuned), abs=1e-4)
    assert loss_merged == pytest.approx(res["best_heldout_loss"], abs=1e-4)
    assert loss_merged < loss(load_student(TINY_STUDENT)[0])

def test_train_stage_names_a_bad_setting(tmp_path):
    "One line naming the stage and the setting, before any model is loaded."
    with pytest.raises(ValueError, match="stage 'train' parameter epochs=0: out of range"):
        train_stage(tmp_path, epochs=0)
    with pytest.raises(ValueError, match=r"stage 'train': unknown parameter\(s\) epoch"):
        train_stage(tmp_path, epoch=1)

# --- accelerate launch: 2 CPU processes -------------------------------------------------

DDP_CHILD = """
import json, os, sys
from purpose.train import TrainConfig, train
d = json.load(open(sys.argv[1]))
res = train(d["rows"], d["held"], d["out"], TrainConfig(**d["cfg"]), progress=False)
json.dump(res, open(os.path.join(d["out"], f"result_{os.environ['RANK']}.json"), "w"))
"""

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

FSDP_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
use_cpu: true
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_reshard_after_forward: true
"""

@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_accelerate_launch_ddp_two_cpu_processes(tmp_path, engine):
    """Each process takes half of every batch; the run matches one process taking the whole batch.
    With an FSDP accelerate config on CPUs, accelerate 1.15 runs DDP (it promotes to FSDP only
    for accelerators): the run says so instead of passing for sharded."""
    rows, held = qa_rows(14), qa_rows(3, offset=50)
    cfg = TrainConfig(student=TINY_STUDENT, epochs=2, lr=3e-3, lora_r=4, lora_dropout=0.0,
                      max_len=96, rows_per_batch=2, precision="fp32", checkpoint_every=4)
    out = tmp_path/"ddp"
    (tmp_path/"child.py").write_text(DDP_CHILD)
    data = {"rows": rows, "held": held, "out": str(out), "cfg": asdict(cfg)}
    (tmp_path/"data.json").write_text(json.dumps(data))
    exe = Path(sys.executable).parent/"accelerate"
    # without GPUs, accelerate's launcher (torchrun) gives each process the gloo backend
    if engine == "fsdp":
        (tmp_path/"fsdp.yaml").write_text(FSDP_CONFIG)
        how = ["--config_file", str(tmp_path/"fsdp.yaml")]
    else: how = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd = [str(exe), "launch", *how, "--main_process_port", str(free_port()),
           str(tmp_path/"child.py"), str(tmp_path/"data.json")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r0, r1 = (json.loads((out/f"result_{i}.json").read_text()) for i in range(2))
    assert r0["processes"] == r1["processes"] == 2 and r0["distributed"] == "MULTI_CPU"
    said = "FSDP was asked for, but accelerate runs MULTI_CPU" in p.stdout
    assert said == (engine == "fsdp"), p.stdout[-2000:]
    assert r0["steps"] == r1["steps"] and r0["best_heldout_loss"] == r1["best_heldout_loss"]
    ddp = TrainDir(out)
    assert (ddp.adapter/"adapter_config.json").exists() and ddp.state.exists()
    ddp_log = read_jsonl(ddp.train_log)
    # one writer: no duplicates
    assert [r["step"] for r in ddp_log if "loss" in r] == list(range(1, r0["steps"] + 1))
    single = train(rows, held, tmp_path/"single", replace(cfg, rows_per_batch=4), progress=False)
    assert single["steps"] == r0["steps"]
    single_log = TrainDir(tmp_path/"single").train_log
    assert step_losses(ddp.train_log) == pytest.approx(step_losses(single_log), rel=1e-4)
    assert r0["best_heldout_loss"] == pytest.approx(single["best_heldout_loss"], rel=1e-4)
