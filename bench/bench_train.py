"""Benchmark of the trainer against HF Trainer + PEFT on the same data, each run in its own process.

    python bench/bench_train.py [--model smollm2|tiny] [--n 32] [--reps 2] [--precisions fp32,bf16]
                                [--json OUT.json]
    python bench/bench_train.py --gpu [--n 1024] [--reps 1]          # needs a CUDA GPU

Data: `n` synthetic sprint QA chat examples whose full lengths (system + question + answer, chat
template) are spread uniformly over 60-480 tokens, built deterministically with the student's
tokenizer; the loss is on answer tokens only in both trainers. Recipe in both: LoRA r16, alpha 32,
dropout 0.05 on all linear layers, AdamW lr 3e-4, cosine with 10 % warmup, one epoch.

- CPU (default): the baseline is `transformers.Trainer` with `DataCollatorForSeq2Seq` padding to the
  longest example of each batch of `--batch` (8) examples; ours packs rows of 512 tokens, `--rows`
  (4) rows per step (about the same number of examples per step). Each precision is compared like
  for like (HF `bf16=True` is CPU autocast, like ours).
- GPU (`--gpu`): a Qwen2.5-0.5B-shaped model with random weights (bf16); the baseline pads every
  example to 512 at batch 8 (HF + PEFT, `bf16=True`, sdpa); ours uses bf16 base weights,
  flash-attention varlen when `flash_attn` is installed (else sdpa with the block mask), answer-only
  chunked logits. Prints MFU.

Reported per run: useful tokens/s (tokens of the examples -- prompt and answer, never padding --
divided by the training time: `train_runtime` for HF, the training loop without evaluation or
checkpoints for ours), and the child process's peak RSS (CPU) or peak CUDA memory (GPU). Ratios are
ours / HF within the same repetition; runs alternate so that load from other processes hits both.
"""
from __future__ import annotations
import argparse, json, os, random, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("sprint acceleration phase stride length frequency ground contact time flight "
         "horizontal force velocity block start reaction athletes elite sub-elite metres per "
         "second kinematics hamstring propulsive braking impulse stiffness leg hip knee ankle "
         "extension trunk angle step the of and in with during maximal phase was were higher "
         "lower than compared study participants trial measured significant correlation "
         "training sled resisted plyometric weeks power output deceleration").split()

def synthetic_rows(tok, n: int, lo: int = 60, hi: int = 480, seed: int = 0) -> list[dict]:
    "Chat rows whose encoded lengths are spread uniformly over [lo, hi] tokens."
    from purpose.packing import encode_example
    from purpose.student import chat_messages
    rng, rows = random.Random(seed), []
    for i in range(n):
        target = rng.randint(lo, hi)
        q = f"Question {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))) + "?"
        base = len(encode_example(tok, chat_messages(q, "sprint", "x"), 4096)["input_ids"])
        words = " ".join(rng.choice(WORDS) for _ in range(max(1, target)))
        ids = tok(words, add_special_tokens=False)["input_ids"]
        answer = tok.decode(ids[:max(1, target - base)]).strip()
        depth = rng.choice(["basic", "intermediate", "expert"])
        rows.append({"messages": chat_messages(q, "sprint", answer), "depth": depth, "hard": False})
    return rows

def qwen05_config(vocab_size: int):
    "A Qwen2.5-0.5B-shaped config (24 layers, hidden 896, 14/2 heads, MLP 4864, tied embeddings)."
    from transformers import Qwen2Config
    return Qwen2Config(vocab_size=vocab_size, hidden_size=896, intermediate_size=4864,
                       num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       rope_theta=1e6, tie_word_embeddings=True, rms_norm_eps=1e-6)

def make_student(kind: str, folder: Path) -> str:
    "The student for `kind`: `smollm2`, `tiny` or `qwen05` (random, saved once to `folder`)."
    if kind == "smollm2": return "smollm2-135m"
    if kind == "tiny": return "tiny-random"
    if not (folder/"config.json").exists():
        import torch
        from transformers import AutoModelForCausalLM
        from purpose.student import load_tokenizer
        tok = load_tokenizer("smollm2-135m")
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(qwen05_config(151936), dtype=torch.bfloat16)
        model.config.pad_token_id = tok.pad_token_id
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    return str(folder)

def _rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024
    return float("nan")

def _peak_mb(gpu: bool) -> float:
    if gpu:
        import torch
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def child_hf(a) -> dict:
    "HF Trainer + PEFT LoRA, padded batches; returns timings."
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from purpose.packing import encode_example
    from purpose.student import load_student
    name = make_student(a.model, Path(a.folder))
    model, tok = load_student(name, dtype=torch.bfloat16 if a.gpu else None)
    tok.padding_side = "right"
    rss_loaded = _rss_now_mb()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    exs = [encode_example(tok, r["messages"], 512) for r in synthetic_rows(tok, a.n)]
    ds = Dataset.from_list([{**e, "attention_mask": [1] * len(e["input_ids"])} for e in exs])
    pad = {"padding": "max_length", "max_length": 512} if a.gpu else {"padding": "longest"}
    collator = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100, **pad)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=a.batch,
                                 num_train_epochs=1,
                                 learning_rate=3e-4, lr_scheduler_type="cosine", warmup_steps=0.1,
                                 logging_steps=10**6, save_strategy="no", report_to=[],
                                 bf16=a.precision == "bf16", use_cpu=not a.gpu,
                                 dataloader_num_workers=0,
                                 remove_unused_columns=False, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
        c0 = time.process_time()
        metrics = trainer.train().metrics
        cpu = time.process_time() - c0
    return {"seconds": metrics["train_runtime"], "cpu_seconds": cpu, **_token_counts(exs),
            "examples_per_step": a.batch, "peak_mb": _peak_mb(a.gpu),
            "rss_after_load_mb": rss_loaded}

def _token_counts(exs: list[dict]) -> dict:
    "Useful tokens (prompt and answer) and answer tokens of the encoded examples."
    return {"useful_tokens": sum(len(e["input_ids"]) for e in exs),
            "answer_tokens": sum(sum(l != -100 for l in e["labels"][1:]) for e in exs)}

def child_ours(a) -> dict:
    "Our trainer on the same rows; returns timings."
    from purpose.packing import encode_example
    from purpose.student import load_tokenizer
    from purpose.train import TrainConfig, train
    name = make_student(a.model, Path(a.folder))
    tok = load_tokenizer(name)
    rows = synthetic_rows(tok, a.n)
    exs = [encode_example(tok, r["messages"], 512) for r in rows]
    cfg = TrainConfig(student=name, epochs=1, lr=3e-4, lora_r=16, lora_alpha=32, lora_dropout=0.05,
                      max_len=512, rows_per_batch=a.rows, precision=a.precision,
                      checkpoint_every=10**6,
                      curriculum="staged", progress=False)
    with tempfile.TemporaryDirectory() as out:
        res = train(rows, rows[:4], out, cfg)
    return {"seconds": res["train_seconds"], "cpu_seconds": res["train_cpu_seconds"],
            **_token_counts(exs),
            "steps": res["steps"], "examples_per_step": round(len(rows) / res["steps"], 2),
            "peak_mb": _peak_mb(a.gpu), "rss_after_load_mb": None}

def useful_flops(exs_lens: list[int], answer_tokens: int) -> float:
    "Useful training FLOPs (forward + backward, 6·N·tokens): body, attention, answer-token head."
    c = qwen05_config(151936)
    d, L, V = c.hidden_size, c.num_hidden_layers, c.vocab_size
    kv = d // c.num_attention_heads * c.num_key_value_heads
    # q, o, k, v, gate/up/down
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * c.intermediate_size
    tokens = sum(exs_lens)
    attention = 6 * L * d * sum(s * s for s in exs_lens)
    return 6 * L * per_layer * tokens + attention + 6 * d * V * answer_tokens

def run_child(mode: str, a, precision: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--model", a.model, "--n", str(a.n),
           "--batch", str(a.batch), "--rows", str(a.rows), "--precision", precision,
           "--folder", a.folder]
    cmd += ["--gpu"] if a.gpu else []
    threads = {"OMP_NUM_THREADS": str(a.threads)} if a.threads else {}
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **threads}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0: raise SystemExit(f"{mode} child failed:\n{p.stderr[-4000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["tok_s"] = r["useful_tokens"] / r["seconds"]
    r["tok_cpu_s"] = r["useful_tokens"] / r["cpu_seconds"]
    return r

def _mfu(a, r: dict, hf: dict, ours: dict) -> str:
    "Model FLOPs utilisation of both runs (stored in `r`), as a line's tail."
    from purpose.packing import encode_example
    from purpose.student import load_tokenizer
    tok = load_tokenizer(make_student(a.model, Path(a.folder)))
    rows = synthetic_rows(tok, a.n)
    lens = [len(encode_example(tok, x["messages"], 512)["input_ids"]) for x in rows]
    flops = useful_flops(lens, ours["answer_tokens"])
    r["mfu_ours"], r["mfu_hf"] = (flops / s["seconds"] / (a.peak_tflops * 1e12) for s in (ours, hf))
    return (f" | MFU ours {r['mfu_ours']:.1%}, HF {r['mfu_hf']:.1%} (useful FLOPs, peak "
            f"{a.peak_tflops} TFLOP/s)")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="smollm2 | tiny (CPU); qwen05 with --gpu")
    ap.add_argument("--n", type=int, default=None, help="examples (default 32 on CPU, 1024 on GPU)")
    ap.add_argument("--batch", type=int, default=8, help="HF examples per step")
    ap.add_argument("--rows", type=int, default=4, help="our packed rows (of 512 tokens) per step")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--precisions", default=None,
                    help="comma-separated: fp32,bf16 (CPU default) or bf16 (GPU)")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (OMP_NUM_THREADS); 1 gives stable CPU-time "
                         "numbers on a busy machine")
    ap.add_argument("--peak-tflops", type=float, default=989.5,
                    help="dense bf16 peak of the GPU (H100/H200 SXM: 989.5)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=str(Path(tempfile.gettempdir())/"purpose-bench-qwen05"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.model = a.model or ("qwen05" if a.gpu else "smollm2")
    a.n = a.n or (1024 if a.gpu else 32)
    if a.child:
        print(json.dumps((child_hf if a.child == "hf" else child_ours)(a)))
        return
    if a.gpu:
        import torch
        if not torch.cuda.is_available(): raise SystemExit("--gpu needs a CUDA GPU (none visible)")
        make_student(a.model, Path(a.folder))
    precisions = (a.precisions or ("bf16" if a.gpu else "fp32,bf16")).split(",")
    print(f"model={a.model} n={a.n} HF batch={a.batch} ours rows/step={a.rows} (512 tokens) "
          f"reps={a.reps} cpus={os.cpu_count()} threads={a.threads or 'default'} "
          f"load={os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for rep in range(a.reps):
        for prec in precisions:
            hf = run_child("hf", a, prec)
            ours = run_child("ours", a, prec)
            r = {"rep": rep, "precision": prec, "hf": hf, "ours": ours,
                 "speedup": ours["tok_s"] / hf["tok_s"],
                 "speedup_cpu_time": ours["tok_cpu_s"] / hf["tok_cpu_s"],
                 "memory_ratio": ours["peak_mb"] / hf["peak_mb"], "load": os.getloadavg()[0]}
            line = (f"rep {rep} {prec}: HF {hf['tok_s']:.0f} tok/s, peak {hf['peak_mb']:.0f} MB | "
                    f"ours {ours['tok_s']:.0f} tok/s, peak {ours['peak_mb']:.0f} MB | speed-up "
                    f"{r['speedup']:.2f}x (per CPU-second: HF {hf['tok_cpu_s']:.0f}, ours "
                    f"{ours['tok_cpu_s']:.0f}, {r['speedup_cpu_time']:.2f}x), memory "
                    f"{r['memory_ratio']:.2f}x (load {r['load']:.1f})")
            if a.gpu: line += _mfu(a, r, hf, ours)
            print(line, flush=True)
            results.append(r)
    for prec in precisions:
        sp, spc, mem = ([r[k] for r in results if r["precision"] == prec]
                        for k in ("speedup", "speedup_cpu_time", "memory_ratio"))
        every = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
        print(f"{prec}: speed-up median {statistics.median(sp):.2f}x (all {every(sp)}), "
              f"per CPU-second median {statistics.median(spc):.2f}x (all {every(spc)}), "
              f"peak memory ours/HF median {statistics.median(mem):.2f}")
    if a.json: Path(a.json).write_text(json.dumps(results, indent=1))

if __name__ == "__main__":
    main()
