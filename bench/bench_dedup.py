"""Near-duplicate QA: the old pairwise MinHash scan against `purpose.distill.dedup` (MinHash LSH).

    python bench/bench_dedup.py [--items 1500] [--dup-share 0.3] [--seed 0] [--skip-pairwise]

Generated questions and answers (random words from a fixed vocabulary, 8 to 20 a question); a share
of them are near-copies of an earlier item, edited by 0 to 4 words (dropped, inserted or replaced;
case and punctuation changed), so their similarity spreads around the 0.85 threshold. The exact rule
(true Jaccard of the word 3-shingles, same decision rule as `dedup`) is the reference. Printed for
each method: seconds, items kept, and the error: the share of items whose decision (kept, or
duplicate of which kept item) differs from the exact rule; then the share of items on which the two
methods disagree.
"""
from __future__ import annotations
import argparse, hashlib, random, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from purpose.distill import _shingles, dedup

def generate(n: int, dup_share: float, seed: int) -> list[dict]:
    "`n` QA items, `dup_share` of them edited copies of an earlier item."
    rng = random.Random(seed)
    cons = "bcdfghklmnprstvz"
    vocab = [f"{rng.choice(cons)}{rng.choice('aeiou')}{rng.choice(cons)}{i}" for i in range(3000)]
    def edit(text: str, k: int) -> str:
        w = text.split()
        for _ in range(k):
            op, i = rng.choice("dir"), rng.randrange(len(w))
            if op == "d" and len(w) > 4: del w[i]
            elif op == "i": w.insert(i, rng.choice(vocab))
            else: w[i] = rng.choice(vocab)
        out = " ".join(w)
        return out.capitalize() + rng.choice(["?", "", " ?"]) if rng.random() < 0.5 else out
    items = []
    for _ in range(n):
        if items and rng.random() < dup_share:
            src = rng.choice(items)
            items.append({"question": edit(src["question"], rng.randint(0, 4)),
                          "answer": edit(src["answer"], rng.randint(0, 4))})
        else:
            items.append({"question": " ".join(rng.choices(vocab, k=rng.randint(8, 20))),
                          "answer": " ".join(rng.choices(vocab, k=rng.randint(6, 30)))})
    return items

def _decide(items, sim_q, sim_a, threshold=0.85, question_overlap=0.5) -> list:
    "The dedup rule over any similarity: per item None (kept) or the index in `kept` it duplicates."
    kept, out = [], []
    for i in range(len(items)):
        match = next((j for j, k in enumerate(kept) if (sq := sim_q(i, k)) >= threshold
                      or (sim_a(i, k) >= threshold and sq >= question_overlap)), None)
        if match is None: kept.append(i)
        out.append(match)
    return out

def exact(items) -> list:
    q = [_shingles(it["question"]) for it in items]
    a = [_shingles(it["answer"]) for it in items]
    jac = lambda s, t: len(s & t) / len(s | t)
    return _decide(items, lambda i, k: jac(q[i], q[k]), lambda i, k: jac(a[i], a[k]))

def old_minhash(text: str, num_perm: int = 64) -> tuple[int, ...]:
    "The signature the stage used before datasketch: blake2b of each shingle per permutation."
    sh = _shingles(text)
    def h(i, s):
        digest = hashlib.blake2b(f"{i}:{s}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")
    return tuple(min(h(i, s) for s in sh) for i in range(num_perm))

def old_pairwise(items) -> list:
    q = [old_minhash(it["question"]) for it in items]
    a = [old_minhash(it["answer"]) for it in items]
    sim = lambda x, y: sum(u == v for u, v in zip(x, y)) / len(x)
    return _decide(items, lambda i, k: sim(q[i], q[k]), lambda i, k: sim(a[i], a[k]))

def lsh(items) -> list:
    kept, dups = dedup([{**it, "_i": i} for i, it in enumerate(items)])
    out = [None] * len(items)
    for d in dups: out[d["_i"]] = d["duplicate_of"]
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1500)
    ap.add_argument("--dup-share", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-pairwise", action="store_true",
                    help="only the LSH (the pairwise scan is quadratic)")
    a = ap.parse_args()
    items = generate(a.items, a.dup_share, a.seed)
    t = time.perf_counter()
    truth = exact(items)
    t_exact = time.perf_counter() - t
    print(f"{a.items} items, {a.dup_share:.0%} edited copies; exact rule: {truth.count(None)} kept "
          f"({t_exact:.1f} s)")
    res = {}
    for name, fn in (("pairwise MinHash (old)", old_pairwise), ("datasketch MinHash LSH", lsh)):
        if a.skip_pairwise and fn is old_pairwise: continue
        t = time.perf_counter()
        res[name] = fn(items)
        dt = time.perf_counter() - t
        err = sum(x != y for x, y in zip(res[name], truth)) / len(items)
        print(f"  {name:24s} {dt:7.2f} s   kept {res[name].count(None):5d}   error {err:.4f}")
    if len(res) == 2:
        x, y = res.values()
        share = sum(u != v for u, v in zip(x, y)) / len(items)
        print(f"  the two disagree on {share:.4f} of the items")

if __name__ == "__main__":
    main()
