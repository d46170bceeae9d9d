"""Knowledge that sticks: recipes side by side on real third-party papers, closed-book, on held-out
questions.

For each set (PubMedQA: abstracts as the corpus, their questions held out; COVID-QA: full papers
as the corpus, their expert questions held out) one run folder is prepared (extract, graph, queries,
distill with the offline teacher), then every recipe trains its own student from it and is
evaluated with the four systems (base, tuned, base+rag, tuned+rag): gap closed [95 % CI] in
perplexity and MC accuracy, MC accuracy vs base and chance, forgetting, training tokens and minutes.

    python bench/bench_knowledge.py                 # CPU-sized default (about an hour on 2 cores)
    python bench/bench_knowledge.py --full          # every question of both sets
    python bench/bench_knowledge.py --student PATH  # a bigger student (a GPU recommended)
    python bench/bench_knowledge.py --teacher openai:gpt-4o-mini   # adds an LLM augmentation

Run it on a quiet machine: the training minutes are part of the result.
"""
import argparse, json, random, shutil, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from purpose.augment import augment_stage
from purpose.core import Manifest, RunDir, read_json, read_jsonl, write_json, write_jsonl
from purpose.distill import distill_stage
from purpose.external import LOADERS, write_corpus
from purpose.evaluate import evaluate_stage
from purpose.metrics import headline
from purpose.graph import graph_stage
from purpose.queries import queries_stage
from purpose.train import train_stage

DATA = ROOT.parent/"shared"/"data"/"qa"
SETS = {"pubmedqa": ("pubmedqa", DATA/"pubmedqa"/"ori_pqal.json", "biomedical"),
        "covidqa": ("squad", DATA/"covid_qa_deepset"/"200423_covidQA.json", "COVID-19")}
# recipe: augmentation size as a multiple of the corpus tokens (0 = none); QA-only epochs first
# (pre-instruction-tuning)
RECIPES = {"passages": dict(size=0, qa_first_epochs=0),
           "augment-1x": dict(size=1.0, qa_first_epochs=0),
           "augment-3x": dict(size=3.0, qa_first_epochs=0),
           "augment-1x+pit": dict(size=1.0, qa_first_epochs=1)}


def prepare(name: str, out: Path, n_contexts: int, n_eval: int, seed: int) -> Path:
    "The shared run folder of a set: corpus, graph, queries, distilled QA; its questions held out."
    kind, path, domain = SETS[name]
    run = out/name/"base"
    records = [r for r in LOADERS[kind](path) if r["contexts"] and r["items"]]
    random.Random(seed).shuffle(records)
    records = records[:n_contexts]
    items = [{**it, "doc_id": r["doc_id"]} for r in records for it in r["items"]]
    random.Random(seed + 1).shuffle(items)
    items = items[:n_eval]
    if not (run/"distill"/"dataset").exists():
        RunDir(run).root.mkdir(parents=True, exist_ok=True)
        write_corpus(records, run, kind)
        external = {"dataset": name, "n_contexts": len(records), "n_eval": len(items)}
        Manifest(run).update(domain=domain, external=external)
        graph_stage(run, seed=seed)
        queries_stage(run, per_cell=8, heldout_fraction=0.1, seed=seed)
        distill_stage(run, domain=domain, teachers="offline")
    write_jsonl(run/"eval"/"external.jsonl", items)
    return run


def run_recipe(base: Path, recipe: str, spec: dict, args, reference: Path | None = None) -> dict:
    """Train and evaluate one recipe in its own copy of the set's run folder; returns its table row.

    `reference`: the run folder of the set's first recipe, whose base and base+rag answers (the same
    untuned student on the same items) are reused: later recipes only score tuned and tuned+rag."""
    run = base.parent/recipe
    if not run.exists():
        skip = ("train", "eval", "augment", ".lock")
        top = lambda d, names: [n for n in names if Path(d) == base and n in skip]
        shutil.copytree(base, run, ignore=top)
    (run/"eval").mkdir(exist_ok=True)
    shutil.copy(base/"eval"/"external.jsonl", run/"eval"/"external.jsonl")
    domain = Manifest(run).domain()
    t0 = time.perf_counter()
    aug = {}
    if spec["size"] > 0:
        aug = augment_stage(run, augment_size=spec["size"],
                            augment_teachers=spec.get("teacher", "offline"), seed=args.seed)
    elif (run/"augment").exists(): shutil.rmtree(run/"augment")
    t_aug = time.perf_counter() - t0
    res = train_stage(run, progress=False, student=args.student, epochs=args.epochs,
                      max_len=args.max_len, qa_first_epochs=spec["qa_first_epochs"], seed=args.seed)
    t_train = time.perf_counter() - t0 - t_aug
    done = read_json(run/"eval"/"bench.json") or {}
    systems = "tuned,tuned+rag" if reference else "base,tuned,base+rag,tuned+rag"
    tokens = round((res.get("tokens_per_s") or 0) * res.get("train_seconds", 0))
    # else: scored already
    if done.get("train_fingerprint") != res["data_fingerprint"] or done.get("systems") != systems:
        evaluate_stage(run, domain=domain, eval_set=str(run/"eval"/"external.jsonl"),
                       systems=systems, max_new_tokens=args.max_new_tokens, latency_samples=1,
                       seed=args.seed)
        minutes = {"augment": round(t_aug / 60, 2), "train": round(t_train / 60, 2),
                   "evaluate": round((time.perf_counter() - t0 - t_aug - t_train) / 60, 2)}
        done = {"train_fingerprint": res["data_fingerprint"], "systems": systems,
                "minutes": minutes, "train_tokens": tokens}
        write_json(run/"eval"/"bench.json", done)
    rep = read_json(run/"eval"/"report.json")
    if reference:                                  # the untuned systems come from the reference run
        ref = read_json(reference/"eval"/"report.json")
        answers = [a for a in read_jsonl(reference/"eval"/"answers.jsonl")
                   if not a["system"].startswith("tuned")]
        answers += read_jsonl(run/"eval"/"answers.jsonl")
        untuned = {k: v for k, v in ref["systems"].items() if not k.startswith("tuned")}
        rep["systems"] = {**untuned, **rep["systems"]}
        rep["headline"] = headline(answers, seed=args.seed)
    log = [r for r in read_jsonl(run/"train"/"train_log.jsonl") if "loss" in r]
    return {"recipe": recipe, "headline": rep.get("headline"), "systems": rep["systems"],
            "chance": (rep.get("mc") or {}).get("chance"), "n": rep["n_heldout"],
            "train_examples": res["examples"] + res.get("augment_examples", 0),
            "train_tokens": done.get("train_tokens", tokens), "train_steps": len(log),
            "augment_tokens": aug.get("synthetic_tokens") if isinstance(aug, dict) else None,
            "minutes": done.get("minutes") or {}}    # of the run that trained and scored it


def pct(v) -> str: return "n/a" if v is None or v != v else f"{v * 100:+.0f} %"


def closure(g: dict | None) -> str:
    "Gap closed with its interval, or why it is undefined."
    if not g: return "n/a"
    if not g.get("opened"): return "no gap"
    lo, hi = g["ci"] or (None, None)
    return f"{pct(g['closure'])} [{pct(lo)}, {pct(hi)}]"


def table(rows: list[dict]) -> str:
    out = ["| set | recipe | gap closed: perplexity | gap closed: MC accuracy "
           "| MC accuracy base / tuned / base+rag (chance) | tuned+rag − base+rag, MC "
           "| general ppl base → tuned | train tokens | minutes aug / train / eval |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, h = r["systems"], r.get("headline") or {}
        mc = h.get("mc_accuracy") or {}
        acc = (f"{mc['base']:.1%} / {mc['tuned']:.1%} / {mc['base+rag']:.1%} ({r['chance']:.0%})"
               if mc and r.get("chance") else "n/a")
        d = (h.get("tuned+rag - base+rag") or {}).get("mc_accuracy")
        rag = f"{pct(d['diff'])} [{pct(d['ci'][0])}, {pct(d['ci'][1])}]" if d else "n/a"
        gp = (f"{s['base']['general_perplexity']:.2f} → {s['tuned']['general_perplexity']:.2f}"
              if all("general_perplexity" in s.get(k, {}) for k in ("base", "tuned")) else "n/a")
        m = {"augment": "?", "train": "?", "evaluate": "?", **r["minutes"]}
        out.append(f"| {r['set']} | {r['recipe']} | {closure(h.get('log_perplexity'))} "
                   f"| {closure(mc)} | {acc} | {rag} | {gp} | {r['train_tokens']} "
                   f"| {m['augment']} / {m['train']} / {m['evaluate']} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="pubmedqa,covidqa")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--teacher", default=None,
                    help="ModelHub spec: adds an LLM augmentation recipe (EntiGraph kinds)")
    ap.add_argument("--full", action="store_true", help="every document and question of both sets")
    ap.add_argument("--pubmedqa-contexts", type=int, default=50)
    ap.add_argument("--covidqa-papers", type=int, default=2)
    ap.add_argument("--n-eval", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT/"bench"/"results"/"knowledge")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"skipped: {DATA} is absent (the benchmark needs ../shared/data/qa)")
    recipes = {k: RECIPES[k] for k in args.recipes.split(",")}
    if args.teacher:
        recipes["llm-augment-1x"] = dict(size=1.0, qa_first_epochs=0, teacher=args.teacher)
    rows, t0 = [], time.perf_counter()
    for name in args.sets.split(","):
        sized = args.pubmedqa_contexts if name == "pubmedqa" else args.covidqa_papers
        n_ctx = 10**6 if args.full else sized
        n_eval = 10**6 if args.full else args.n_eval
        base, reference = prepare(name, args.out, n_ctx, n_eval, args.seed), None
        for recipe, spec in recipes.items():
            print(f"[{name}] {recipe} ...", flush=True)
            row = {"set": name, **run_recipe(base, recipe, spec, args, reference)}
            reference = reference or base.parent/recipe
            rows.append(row)
            write_json(args.out/"results.json",
                       {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                        "minutes": round((time.perf_counter() - t0) / 60, 1)})
            print(table([row]).splitlines()[-1], flush=True)
    md = table(rows)
    (args.out/"table.md").write_text(md + "\n")
    print(md)
    print(f"total {((time.perf_counter() - t0) / 60):.1f} min")


if __name__ == "__main__":
    main()
