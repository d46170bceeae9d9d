"""`purpose serve` under load: the `openai` SDK at several concurrencies against one server process.

    python bench/bench_serve.py [--model smollm2|tiny] [--levels 1,8,50,200] [--max-tokens 16]
                                [--cores 2] [--quick]

The server runs in its own process, pinned to `--cores` CPU cores (torch uses as many threads),
on SmolLM2-135M (the embedded student) or the tiny random model. For each concurrency c, c clients
of one `AsyncOpenAI` (no retries, so a 429 or a dropped connection counts as an error) each send
`max(2, 16 // c)` chat completions one after the other (greedy, `max_tokens` each, prompts that
differ). Printed per level: requests, errors, completion tokens/s over the level's wall time,
p50/p95 latency, and the largest batch the engine ran; then tok/s(c=8) / tok/s(c=1).
`--quick` is a smoke run: the tiny model, levels 1 and 4, 4 tokens.
"""
from __future__ import annotations
import argparse, asyncio, json, os, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = "purpose-bench"

def model_dir(name: str) -> Path:
    "A model folder: the embedded SmolLM2 (converted once), or the tiny random model, saved."
    from purpose.student import TINY_STUDENT, embedded_student_dir, load_student
    if name == "smollm2": return embedded_student_dir()
    d = Path(tempfile.mkdtemp())/"tiny"
    m, t = load_student(TINY_STUDENT)
    m.save_pretrained(d)
    t.save_pretrained(d)
    return d

def run_server(a):
    "The child process: pin the cores, load the model, serve until killed."
    if a.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:a.cores])
    import torch
    if a.cores: torch.set_num_threads(a.cores)
    from purpose.inference import DomainInference
    from purpose.serve import ServeConfig, make_server
    cfg = ServeConfig(port=a.port, model_id=MODEL, max_batch=a.max_batch, max_queue=a.max_queue,
                      request_timeout=3600)
    srv = make_server(DomainInference(a.model_dir, domain="bench"), cfg)
    print("ready", flush=True)
    srv.serve_forever()

def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=10) as r: return json.loads(r.read())

def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs: return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

async def level(url: str, c: int, per_client: int, max_tokens: int) -> dict:
    "c clients, each sending `per_client` requests in turn: errors, tokens/s, latencies."
    import httpx, openai
    limits = httpx.Limits(max_connections=c + 8, max_keepalive_connections=c + 8)
    http = openai.DefaultAsyncHttpxClient(limits=limits, timeout=3600)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=3600,
                                http_client=http)
    lat, tokens, errors = [], 0, {}
    async def one(i: int, k: int):
        nonlocal tokens
        q = f"Question {i}.{k}: explain in detail what limits the top speed of a sprinter."
        t0 = time.perf_counter()
        try:
            msgs = [{"role": "user", "content": q}]
            r = await client.chat.completions.create(model=MODEL, messages=msgs,
                                                     max_tokens=max_tokens, temperature=0)
            tokens += r.usage.completion_tokens
            lat.append(time.perf_counter() - t0)
        except Exception as e: errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    async def worker(i: int):
        for k in range(per_client): await one(i, k)
    seen0 = health(url)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(c)))
    wall = time.perf_counter() - t0
    await client.close()
    h = health(url)
    return {"concurrency": c, "requests": c * per_client, "errors": sum(errors.values()),
            "error_kinds": errors, "completion_tokens": tokens, "seconds": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 2), "p50_s": round(pct(lat, 50), 3),
            "p95_s": round(pct(lat, 95), 3), "max_batch_seen": h["max_batch_seen"],
            "cancelled": h["cancelled"] - seen0["cancelled"]}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--levels", default="1,8,50,200")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--cores", type=int, default=2, help="CPU cores of the server process (0: all)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=256)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny model, levels 1,4, 4 tokens")
    ap.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.server: return run_server(a)
    if a.quick: a.model, a.levels, a.max_tokens = "tiny", "1,4", 4
    levels = [int(x) for x in a.levels.split(",")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, __file__, "--server", "--model-dir", str(model_dir(a.model)),
           "--port", str(port), "--cores", str(a.cores), "--max-batch", str(a.max_batch),
           "--max-queue", str(a.max_queue)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout.readline().strip() == "ready", "the server process did not start"
        asyncio.run(level(url, 1, 1, a.max_tokens))                       # warm-up
        print(f"{a.model}, server on {a.cores or 'all'} cores, max_batch {a.max_batch}, "
              f"max_tokens {a.max_tokens}")
        heads = (("c", 4), ("reqs", 5), ("errors", 6), ("tok/s", 8), ("p50 s", 7), ("p95 s", 7),
                 ("batch", 5))
        print(" ".join(f"{h:>{w}}" for h, w in heads))
        rows = []
        for c in levels:
            r = asyncio.run(level(url, c, max(2, 16 // c), a.max_tokens))
            rows.append(r)
            kinds = f"  {r['error_kinds']}" if r["errors"] else ""
            print(f"{c:>4} {r['requests']:>5} {r['errors']:>6} {r['tokens_per_s']:>8.1f} "
                  f"{r['p50_s']:>7.2f} {r['p95_s']:>7.2f} {r['max_batch_seen']:>5}{kinds}")
        by = {r["concurrency"]: r["tokens_per_s"] for r in rows}
        ratio = by[8] / by[1] if 1 in by and 8 in by and by[1] else None
        if ratio: print(f"tok/s(c=8) / tok/s(c=1) = {ratio:.2f}x")
        out = {"model": a.model, "cores": a.cores, "levels": rows, "ratio_8_1": ratio}
        if a.out: Path(a.out).write_text(json.dumps(out, indent=1))
    finally:
        proc.terminate()
        proc.wait(30)

if __name__ == "__main__":
    main()
