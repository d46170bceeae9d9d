"""ModelHub throughput over the real wire: N requests at simulated latency, concurrent vs serial.

    # 1000 requests, 200 ms latency, concurrency 32, sequential baseline on all 1000
    python bench/bench_modelhub.py
    # baseline on 100 requests, extrapolated (reported as such)
    python bench/bench_modelhub.py --sequential-n 100

The server is `purpose.wire.WireServer` on 127.0.0.1; the client is the official openai SDK (async)
inside `purpose.modelhub.complete_many`, cache off, so every request is a real HTTP round trip.
Results go to bench/results/modelhub.json.
"""
import argparse, json, os, platform, sys, time
from pathlib import Path

from purpose.modelhub import complete_many
from purpose.wire import WireServer


def run(n: int, latency: float, concurrency: int, tag: str) -> dict:
    prompts = [[{"role": "user", "content": f"{tag} request {i}"}] for i in range(n)]
    with WireServer(latency=latency) as ws:
        t0 = time.perf_counter()
        res = complete_many(ws.spec(), prompts, cache=False, concurrency=concurrency, timeout=30)
        wall = time.perf_counter() - t0
        served = sum(ws.counts().values())
    ok = sum(r.ok for r in res)
    assert ok == n and served == n, (ok, served)
    return {"requests": n, "concurrency": concurrency, "latency_s": latency,
            "wall_s": round(wall, 3), "requests_per_s": round(n / wall, 1),
            "ideal_wall_s": round(n * latency / concurrency, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--sequential-n", type=int, default=None,
                    help="requests for the sequential baseline (default: --n)")
    a = ap.parse_args()
    seq_n = a.sequential_n or a.n
    conc = run(a.n, a.latency, a.concurrency, "concurrent")
    print(f"concurrent: {conc}", flush=True)
    seq = run(seq_n, a.latency, 1, "sequential")
    seq["extrapolated_wall_s_for_n"] = round(seq["wall_s"] * a.n / seq_n, 3)
    print(f"sequential: {seq}", flush=True)
    speedup = round(seq["extrapolated_wall_s_for_n"] / conc["wall_s"], 2)
    out = {"bench": "modelhub complete_many over the wire", "python": platform.python_version(),
           "cpus": os.cpu_count(), "concurrent": conc, "sequential": seq,
           "speedup_vs_sequential": speedup, "sequential_extrapolated": seq_n != a.n}
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/modelhub.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
