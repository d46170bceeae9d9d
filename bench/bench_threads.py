"""Training speed when another process keeps a core busy: fixed CPU threads vs the ThreadTuner.

    python bench/bench_threads.py [--steps 16] [--rows 2] [--model smollm2|tiny]

PyTorch's CPU threads spin while waiting for each other; when another process competes for the
cores, a step with all threads can take much longer than one with fewer. For each condition (quiet,
one busy core) the same training run is done with `cpu_threads` fixed at the machine's thread count
and with `cpu_threads=0` (tuned while training). The busy core is a separate Python process spinning
in a loop for the length of the run. Printed: tokens/s of each run and the ratio tuned / fixed per
condition (same process, same data).
"""
from __future__ import annotations
import argparse, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT/"bench"))

def run(rows, steps: int, rows_per_batch: int, cpu_threads: int, student: str) -> dict:
    from purpose.train import TrainConfig, train
    cfg = TrainConfig(student=student, epochs=1, max_steps=steps, rows_per_batch=rows_per_batch,
                      checkpoint_every=10_000, cpu_threads=cpu_threads, progress=False)
    with tempfile.TemporaryDirectory() as d: return train(rows, [], d, cfg)

def timed(rows, a, student: str, cond: str, label: str, threads: int) -> float:
    "One run, with a busy core beside it unless `cond` is quiet; prints and returns its tokens/s."
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if cond != "quiet" else None
    try: r = run(rows, a.steps, a.rows, threads, student)
    finally:
        if busy:
            busy.kill()
            busy.wait()
    print(f"  {cond:14s} {label}: {r['tokens_per_s']:7.1f} tokens/s, threads at the end "
          f"{r['cpu_threads']}, switches {r['thread_switches']}")
    return r["tokens_per_s"]

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    a = ap.parse_args()
    import torch
    from bench_train import synthetic_rows
    from purpose.student import load_tokenizer
    student = {"smollm2": "smollm2-135m", "tiny": "tiny-random"}[a.model]
    rows = synthetic_rows(load_tokenizer(student), 4 * a.steps * a.rows)
    n = torch.get_num_threads()
    print(f"{student}, {a.steps} steps of {a.rows} packed rows; torch threads {n}")
    if n < 2:
        print("one CPU thread: nothing to tune")
        return
    for cond in ("quiet", "one busy core"):
        res = {label: timed(rows, a, student, cond, label, ct)
               for label, ct in (("fixed", n), ("tuned", 0))}
        print(f"  {cond:14s} tuned / fixed = {res['tuned'] / res['fixed']:.2f}x")

if __name__ == "__main__":
    main()
