"""Evaluation protocol: contamination, external loaders on the real QA sets, metrics with intervals,
the stage on a tiny run, and the whole pipeline on PubMedQA."""
import json, subprocess, sys, warnings
from pathlib import Path
import pytest
from purpose.config import ConfigError
from purpose.core import Manifest, RunDir, read_json, read_jsonl, write_json, write_jsonl
from purpose.evaluate import evaluate_stage, mc_items, number_spans
from purpose.external import external_eval, load_eval_jsonl, load_pubmedqa, load_squad, write_corpus
from purpose.metrics import (YESNO, bca_ci, best_f1, contamination_check, gap_closure,
                             normalize_answer, paired_bootstrap, squad_f1, wilson_ci)
from purpose.student import TINY_STUDENT, chat_messages

SHARED = Path(__file__).resolve().parents[1].parent/"shared"
PUBMEDQA = SHARED/"data"/"qa"/"pubmedqa"/"ori_pqal.json"
COVIDQA = SHARED/"data"/"qa"/"covid_qa_deepset"/"200423_covidQA.json"
needs_pubmedqa = pytest.mark.skipif(not PUBMEDQA.exists(),
                                    reason="../shared/data/qa/pubmedqa is absent")
needs_covidqa = pytest.mark.skipif(not COVIDQA.exists(),
                                   reason="../shared/data/qa/covid_qa_deepset is absent")

def test_contamination_flags_shared_source_sentences_and_near_duplicates():
    sent = ("Ground contact time decreased from 0.11 s to 0.09 s as running velocity increased "
            "towards the maximum.")
    train = [{"qa_id": "t1", "question": "How does contact time change with speed?",
              "answer": sent},
             {"qa_id": "t2",
              "question": "Which muscles limit maximal sprint speed in elite athletes?",
              "answer": "The hamstrings."}]
    held = [{"qa_id": "h1", "question": "What happens to ground contact at top speed?",
             "answer": f"{sent} This was measured with force plates."},
            {"qa_id": "h2",
             "question": "Which muscles limit maximal sprint speed in elite athletes",
             "answer": "Calves."},
            {"qa_id": "h3", "question": "What is reaction time?",
             "answer": "The time from the gun to the first force."}]
    flags = {f["qa_id"]: f["reasons"] for f in contamination_check(held, train)}
    assert set(flags) == {"h1", "h2"}
    assert any("13-gram" in r and "t1" in r for r in flags["h1"])
    assert any("near-duplicate" in r for r in flags["h2"])
    longer = contamination_check(held, train, n=30)
    assert longer and "h1" not in {f["qa_id"] for f in longer}

def test_squad_f1_counts_every_token():
    "The official SQuAD F1: negations and function words count (a content-word F1 gave 1.000)."
    neg, pos = "The effect was not significant.", "The effect was significant."
    assert round(squad_f1(neg, pos), 3) == 0.857
    assert round(best_f1(neg, [pos, "no"]), 3) == 0.857
    assert squad_f1("The DC-SIGNR receptor", "dc-signr receptor.") == 1.0
    assert squad_f1("yes", "no") == 0.0

def test_intervals_wilson_for_proportions_bca_for_means():
    lo, hi = wilson_ci(0, 24)            # 0/24 correct: a bootstrap of the items says [0, 0]
    assert lo == 0 and abs(hi - 0.138) < 1e-3
    small, large = bca_ci([1, 0] * 10), bca_ci([1, 0] * 200)
    assert small[0] < large[0] <= 0.5 <= large[1] < small[1]
    assert bca_ci([1, 0, 1, 1], seed=3) == bca_ci([1, 0, 1, 1], seed=3)
    p = paired_bootstrap([1, 1, 0, 1] * 10, [1, 0, 0, 1] * 10)
    assert p["diff"] == 0.25 and p["significant"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # degenerate BCa: zero width, no NaN, no warning
        assert bca_ci([0.7] * 30) == [0.7, 0.7]
        assert paired_bootstrap([1] * 9, [1] * 9)["ci"] == [0.0, 0.0]
    g = gap_closure([0] * 30 + [1] * 10, [1] * 20 + [0] * 20, [1] * 30 + [0] * 10)
    assert g["closure"] == 0.5 and g["ci"][0] < 0.5 < g["ci"][1]
    assert gap_closure([1, 0, 1], [1, 1, 1], [1, 0, 1])["closure"] is None   # no gap: undefined

@needs_pubmedqa
def test_pubmedqa_loader_keeps_the_answer_out_of_the_corpus(tmp_path):
    recs = load_pubmedqa(PUBMEDQA)
    assert len(recs) == 1000 and all(len(r["items"]) == 1 for r in recs)
    items = [r["items"][0] for r in recs]
    assert {i["label"] for i in items} == set(YESNO)
    assert all(i["answer"].lower().startswith(i["label"]) for i in items)
    counts = write_corpus(recs[:20], tmp_path, "pubmedqa")
    chunks = read_jsonl(RunDir(tmp_path).chunks)
    assert counts["documents"] == 20 and counts["chunks"] == len(chunks) >= 20
    assert {"chunk_id", "doc_id", "source", "section", "page_start", "page_end", "text",
            "n_tokens"} <= set(chunks[0])
    assert all(d["status"] == "ok" for d in read_jsonl(RunDir(tmp_path).documents))
    corpus = " ".join(c["text"] for c in chunks)
    long_answers = [r["items"][0]["answer"].split(". ", 1)[1] for r in recs[:20]]
    assert sum(a[:80] in corpus for a in long_answers) == 0   # the references stay out

@needs_covidqa
def test_squad_loader_on_covid_qa(tmp_path):
    recs = load_squad(COVIDQA)
    items = [i for r in recs for i in r["items"]]
    data = json.loads(COVIDQA.read_text())   # one record per paragraph, whatever the version
    assert len(recs) == sum(len(a["paragraphs"]) for a in data["data"]) >= 70
    assert len(items) > 800 and all(i["kind"] == "extractive" for i in items)
    r = recs[0]
    assert all(ref in r["contexts"][0] for i in r["items"] for ref in i["answers"])
    write_corpus(recs[:2], tmp_path, "covidqa", chunk_tokens=200)
    chunks = read_jsonl(RunDir(tmp_path).chunks)
    assert len(chunks) > 10 and max(c["n_tokens"] for c in chunks) < 400

@needs_covidqa
def test_mc_items_on_covid_qa_draw_distractors_of_the_same_kind_from_other_documents():
    recs = load_squad(COVIDQA)[:12]
    chunks = [{"chunk_id": f"{r['doc_id']}-0", "doc_id": r["doc_id"], "text": r["contexts"][0]}
              for r in recs]
    items = [{**it, "doc_id": r["doc_id"]} for r in recs for it in r["items"][:6]]
    mc = mc_items(items, chunks, k=4, seed=0)
    by_id = {i["qa_id"]: i for i in items}
    ctx = {r["doc_id"]: normalize_answer(r["contexts"][0]) for r in recs}
    assert len(mc) > 0.8 * len(items) and {q["distractors"] for q in mc} == {"numeric", "span"}
    for q in mc:
        ref, it = q["options"][q["answer_index"]], by_id[q["qa_id"]]
        assert len(q["options"]) == 4 and ref == it["answer"]
        others = [o for i, o in enumerate(q["options"]) if i != q["answer_index"]]
        refs = {normalize_answer(a) for a in it["answers"]}
        assert all(normalize_answer(o) not in refs for o in others)
        if q["distractors"] == "numeric":        # the same unit as the reference, another value
            unit = {u for *_, u in number_spans(ref)}
            assert all({u for *_, u in number_spans(o)} & unit for o in others), q
        else:                                   # spans: not lifted from the reference's passage
            own = ctx[it["doc_id"]]
            assert not any(len(o.split()) >= 4 and normalize_answer(o) in own for o in others), q
            assert not (number_spans(ref) and len(ref.split()) <= 3), q   # numbers: not spans

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from purpose.train import TrainConfig, train
    run = RunDir(tmp_path_factory.mktemp("evalrun"))
    qa = [{"qa_id": f"q{i}", "question": f"What was the stride frequency of sprinter {i}?",
           "answer": f"Sprinter {i} ran at {4 + i / 10:.1f} Hz.", "split": "train",
           "citations": ["c1"]}
          for i in range(6)]
    qa.append({"qa_id": "h1",
               "question": "How often did the feet of runner three touch the ground per second?",
               "answer": "4.3 Hz.", "split": "heldout", "citations": ["c1"]})
    write_jsonl(run.qa, qa)
    texts = ["Stride frequency was 4.3 Hz for sprinter 3.", "Ground contact lasted 0.09 s."]
    write_jsonl(run.chunks, [{"chunk_id": f"c{i}", "doc_id": f"d{i}", "text": t}
                             for i, t in enumerate(texts, 1)])
    rows = [{"messages": chat_messages(q["question"], "sprint", q["answer"]), "depth": "basic",
             "hard": False}
            for q in qa if q["split"] == "train"]
    train(rows, [], run.train, TrainConfig(student=TINY_STUDENT, epochs=1, lora_r=4, max_len=128),
          progress=False)
    write_json(run.train_config, {"student": TINY_STUDENT})
    return run.root

def test_generic_jsonl_eval_set_and_report(tiny_run, tmp_path):
    src = tmp_path/"set.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"question": "How long did ground contact last?", "answer": "0.09 s", "doc_id": "d2",
         "kind": "extractive"},
        {"question": "Was stride frequency above 4 Hz for sprinter 3?", "answer": "yes",
         "doc_id": "d1"},
        {"question": "What was the stride frequency of sprinter 3?",
         "answer": "Sprinter 3 ran at 4.3 Hz.",
         "doc_id": "d1"}]) + "\n")
    items = [dict(it, doc_id=r["doc_id"]) for r in load_eval_jsonl(src) for it in r["items"]]
    assert [i["kind"] for i in items] == ["extractive", "yesno", "free"]
    run = RunDir(tiny_run)
    write_jsonl(run.eval/"set.jsonl", items)
    rep = evaluate_stage(run, domain="sprint", eval_set=run.eval/"set.jsonl", max_new_tokens=4,
                         latency_samples=1, bootstrap=100)
    # the copied training question is removed
    assert rep["contamination"]["flagged"] == ["jsonl-3"] and rep["n_heldout"] == 2
    assert set(rep["systems"]) == {"base", "tuned", "base+rag", "tuned+rag"}
    for m in rep["systems"].values():
        assert m["accuracy_ci"][0] <= m["accuracy"] <= m["accuracy_ci"][1]
        assert m["latency_p95_s"] >= m["latency_p50_s"] > 0
        assert m["general_perplexity"] > 1 and m["tokens_per_s"] > 0
    assert set(rep["comparisons"]) >= {"tuned - base", "base+rag - base", "tuned+rag - base+rag"}
    # "0.09 s" has no other value in seconds: left out of the MC items
    assert rep["mc"]["n"] == 1 and rep["mc"]["distractors"] == {"labels": 1}
    assert all(m["mc_n"] == 1 and m["mc_chance"] == 0.3333 and m["accuracy_ci"][1] > 0
               for m in rep["systems"].values())
    assert set(rep["headline"]) == {"mc_accuracy", "log_perplexity", "tuned+rag - base+rag"}
    compared = set(rep["comparisons"]["tuned - base"])
    assert compared == {"correct", "token_f1", "ref_loss", "mc_correct"}
    answers = read_jsonl(run.eval_answers)
    assert len(answers) == 4 * 2 and {a["choice"] for a in answers if "choice" in a} <= set(YESNO)
    md = run.report_md.read_text()
    assert "| base+rag |" in md and "1 flagged" in md and "Forgetting check" in md
    assert md.splitlines()[2].startswith(("Tuning closed", "Retrieval opened no gap"))
    assert "MC accuracy [95 % CI]" in md
    assert read_json(run.contamination)["flagged"][0]["qa_id"] == "jsonl-3"
    params = Manifest(run).stage("evaluate")["params"]    # the config, the set's path as text
    assert params["eval_set"] == str(run.eval/"set.jsonl") and params["bootstrap"] == 100

def test_base_only_needs_no_adapter(tiny_run, tmp_path):
    import shutil
    run = tmp_path/"run"
    shutil.copytree(tiny_run/"distill", run/"distill")
    shutil.copytree(tiny_run/"extract", run/"extract")
    rep = evaluate_stage(run, systems="base,base+rag", max_new_tokens=3, latency_samples=1,
                         bootstrap=50,
                         forgetting=False)
    assert set(rep["systems"]) == {"base", "base+rag"}
    with pytest.raises(Exception, match="train/adapter is missing"):
        evaluate_stage(run, systems="tuned", max_new_tokens=2)

def test_stage_takes_its_config_and_sizes_itself_to_eval_budget_s(tiny_run, tmp_path):
    "`time_budget_s` is `eval_budget_s` now: the old name gets one line naming stage and field."
    import shutil
    run = tmp_path/"run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(ConfigError,
                       match=r"stage 'evaluate': unknown parameter\(s\) time_budget_s"):
        evaluate_stage(run, time_budget_s=10)
    with pytest.raises(ConfigError,
                       match="stage 'evaluate' parameter bootstrap='many': expected int"):
        evaluate_stage(run, bootstrap="many")
    from purpose.config import EvaluateConfig
    cfg = EvaluateConfig(systems="base", max_new_tokens=2, latency_samples=1, bootstrap=20,
                         forgetting=False,
                         eval_budget_s=1e-3)
    rep = evaluate_stage(run, cfg)
    assert rep["budget"]["seconds"] == 1e-3 and rep["budget"]["items"] == rep["n_heldout"] == 1
    assert rep["domain"] == "domain"                  # no manifest domain: the default

def test_inference_does_not_load_the_evaluation():
    "What the server imports (`purpose.inference`) loads neither the stage nor the external sets."
    code = ("import sys, purpose.inference; "
            "print(sorted(m for m in sys.modules "
            "if m in ('purpose.evaluate', 'purpose.external')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

@needs_pubmedqa
def test_external_eval_runs_the_whole_pipeline_on_pubmedqa(tmp_path):
    rep = external_eval(tmp_path/"pq", "pubmedqa", PUBMEDQA, n_contexts=12, n_eval=4, per_cell=1,
                        student=TINY_STUDENT, systems="base,tuned,base+rag", max_new_tokens=3,
                        progress=False,
                        latency_samples=1, bootstrap=50, forgetting=False,
                        train_kw={"lora_r": 4, "max_len": 256})
    assert rep["n_heldout"] + len(rep["contamination"]["flagged"]) == 4
    assert rep["kinds"] == {"yesno": rep["n_heldout"]}
    assert rep["majority_baseline"] is not None
    assert "most likely of the three answers" in rep["accuracy_definition"]
    stages = Manifest(tmp_path/"pq").load()["stages"]
    assert all(stages[s]["status"] == "done"
               for s in ("extract", "graph", "queries", "distill", "train", "evaluate"))
    held = {i["question"] for i in read_jsonl(RunDir(tmp_path/"pq").external)}
    assert not held & {q["question"] for q in read_jsonl(RunDir(tmp_path/"pq").qa)}

def test_cli_evaluate_an_existing_run_and_refuse_mixed_options(tiny_run, tmp_path):
    "`purpose evaluate --run-dir R` scores and prints the report; --path without --dataset fails."
    import shutil
    from conftest import purpose_cli
    run = tmp_path/"run"
    shutil.copytree(tiny_run, run)
    write_json(RunDir(run).manifest, {"domain": "sprint", "stages": {}})
    r = purpose_cli("evaluate", "--run-dir", run, "--systems", "base,tuned",
                    "--max-new-tokens", "3")
    assert r.returncode == 0, r.stderr
    assert "# Evaluation: sprint" in r.stdout and "| tuned |" in r.stdout
    assert set(read_json(RunDir(run).report)["systems"]) == {"base", "tuned"}
    bad = purpose_cli("evaluate", "--run-dir", run, "--path", tmp_path/"x.json")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: --path names the file of a --dataset")
    missing = purpose_cli("evaluate", "--run-dir", tmp_path/"none", "--dataset", "pubmedqa")
    assert missing.returncode == 2 and "needs `path`" in missing.stderr
