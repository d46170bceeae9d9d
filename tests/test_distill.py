"""Distillation over the real wire: several teachers and consensus, the LLM judge, resume without
repeated calls, failures asked again, standard distillation."""
import json, re
from pathlib import Path

import pytest

from purpose.core import read_jsonl, write_jsonl
from purpose.config import DistillConfig
from purpose.distill import JUDGE_SCHEMA, distill_stage
from purpose.providers import KEY_VARS, parse_grounded
from purpose.wire import WireServer


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    for k in sorted({v for vs in KEY_VARS.values() for v in vs}):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))


CHUNKS = [{"chunk_id": "c1", "doc_id": "A", "page_start": 1,
           "text": "Heavy sled training improves acceleration in trained sprinters. Ten metre time "
                   "fell by 0.05 s."},
          {"chunk_id": "c2", "doc_id": "B", "page_start": 3,
           "text": "Heavy sled training does not improve acceleration. Maximum velocity decreased "
                   "in the sled group."},
          {"chunk_id": "c3", "doc_id": "C", "page_start": 2,
           "text": "Ground contact time was 0.09 s at maximum velocity in elite sprinters."}]
QUESTIONS = [("Does heavy sled training improve acceleration?", ["c1", "c2"], "comparative",
              "expert"),
             ("How long is ground contact at maximum velocity?", ["c3"], "factual", "basic"),
             ("What happened to maximum velocity in the sled group?", ["c2"], "analytical",
              "intermediate"),
             ("How much did ten metre time change?", ["c1"], "factual", "intermediate")]


def make_run(tmp_path):
    run = tmp_path/"run"
    write_jsonl(run/"extract"/"chunks.jsonl", CHUNKS)
    write_jsonl(run/"queries"/"queries.jsonl",
                [{"query_id": f"q{i}", "question": q, "chunk_ids": ids, "dimension": d, "depth": p,
                  "split": "heldout" if i == 3 else "train", "concepts": []}
                 for i, (q, ids, d, p) in enumerate(QUESTIONS)])
    return run


def teacher_reply(req):
    """Scripted teachers: 'agree' quotes the first source, 'other' the last sentence of the last;
    the judge scores by content."""
    if req.json_schema == JUDGE_SCHEMA:
        good = "0.09" in req.prompt or "improves" in req.prompt
        return json.dumps({"score": 4 if good else 2, "reason": "scripted"})
    q, sources = parse_grounded(req.body["messages"])
    first, last = sources[min(sources)], sources[max(sources)].split(". ")[-1]
    replies = {"agree": f"{first} [1]", "other": f"{last} [{max(sources)}]"}
    return replies.get(req.model, f"{first} [1]")


def test_two_teachers_consensus_judge_and_resume(tmp_path):
    run = make_run(tmp_path)
    with WireServer(reply=teacher_reply, models=("agree", "other", "judge")) as ws:
        teachers = f"{ws.spec('agree')},{ws.spec('other')}"
        cfg = DistillConfig(domain="sprint", teachers=teachers, judge=ws.spec("judge"),
                            judge_threshold=3.0)
        c = distill_stage(run, cfg, budget_usd=1.0)
        calls = dict(ws.counts())
        assert calls == {"agree": 4, "other": 4, "judge": 8}
        qa = {q["query_id"]: q for q in read_jsonl(run/"distill"/"qa.jsonl")}
        rejected = {r["query_id"]: r for r in read_jsonl(run/"distill"/"rejected.jsonl")}
        assert set(qa) | set(rejected) == {"q0", "q1", "q2", "q3"}
        assert qa["q0"]["hard"] and qa["q0"]["decision"] == "flagged"      # the two papers disagree
        assert qa["q1"]["decision"] == "kept" and qa["q1"]["agreement"] == 1.0
        assert rejected["q2"]["reason"].startswith("low_judge_score")
        assert c["hard"] == 1 and c["accepted"] == 3
        answers = read_jsonl(run/"distill"/"answers.jsonl")
        assert len(answers) == 8
        assert {a["teacher"] for a in answers} == {ws.spec("agree"), ws.spec("other")}
        card = (run/"distill"/"card.md").read_text()
        assert "low_judge_score: 1" in card and "flagged" in card
        # a killed run: lose half the answers file; the re-run repeats no call (answers + cache)
        write_jsonl(run/"distill"/"answers.jsonl", answers[:3])
        again = distill_stage(run, cfg)
        assert dict(ws.counts()) == calls and again["accepted"] == 3
        assert len(read_jsonl(run/"distill"/"answers.jsonl")) == 8


def test_rerun_of_distill_asks_no_teacher_again(tmp_path, monkeypatch):
    """A finished distill stage, run again with an empty reply cache: every answer comes from
    answers.jsonl, none from the teacher."""
    from purpose.core import Manifest
    run = make_run(tmp_path)
    with WireServer(reply=teacher_reply, models=("agree",)) as ws:
        distill_stage(run, domain="sprint", teachers=ws.spec("agree"), judge_threshold=1.0)
        first = Manifest(run).stage("distill")["asked"]
        assert ws.counts()["agree"] == 4 and first["answered"] == 4
        # a re-ask would reach the server
        monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"empty-cache"))
        distill_stage(run, domain="sprint", teachers=ws.spec("agree"), judge_threshold=1.0)
        assert len(ws.requests()) == 4, "the re-run asked the teacher again"
    asked = Manifest(run).stage("distill")["asked"]
    assert asked["answered"] == 0 and asked["skipped"] == 4, asked


def test_failed_answers_are_recorded_and_asked_again_on_the_next_run(tmp_path):
    run = make_run(tmp_path)
    with WireServer(reply=teacher_reply, models=("agree",)) as ws:
        cfg = DistillConfig(domain="sprint", teachers=ws.spec("agree"), judge_threshold=1.0,
                            retries=0, concurrency=1, cache=False)
        ws.fail_next(1, status=400)               # a client error: not retried, the item fails
        first = distill_stage(run, cfg)
        failures = read_jsonl(run/"distill"/"failures.jsonl")
        assert first["failed"] == 1 and len(failures) == 1 and "400" in failures[0]["error"]
        again = distill_stage(run, cfg)
        assert again["failed"] == 0 and again["accepted"] == 4
        assert ws.counts()["agree"] == 4                 # only the failed question was asked again
        assert not (run/"distill"/"failures.jsonl").exists()


def test_broken_judge_replies_are_rejected_with_the_reason(tmp_path):
    run = make_run(tmp_path)
    reply = lambda req: "no json here" if req.json_schema else teacher_reply(req)
    with WireServer(reply=reply, models=("agree", "judge")) as ws:
        with pytest.raises(Exception, match="no training QA"):
            distill_stage(run, domain="sprint", teachers=ws.spec("agree"), judge=ws.spec("judge"),
                          retries=0)
        rej = read_jsonl(run/"distill"/"rejected.jsonl")
        assert len(rej) == 4 and all(r["reason"].startswith("judge_failed") for r in rej)


def test_standard_distillation_generator_then_enhancer(tmp_path):
    run = tmp_path/"run"
    write_jsonl(run/"extract"/"chunks.jsonl", [{**c, "text": c["text"] + " " + c["text"] * 3}
                                              for c in CHUNKS])
    def reply(req):
        if req.json_schema is not None:            # the generator
            src = req.prompt.split("Source:\n", 1)[1]
            about = f"{src.split()[0].lower()} {src.split()[1]}"
            return json.dumps({"pairs": [{"question": f"What does the text say about {about}?",
                                          "answer": "A guess."}]})
        # the enhancer sees the draft
        assert "A first answer to check and improve" in req.prompt and "A guess." in req.prompt
        _, sources = parse_grounded(req.body["messages"])
        return f"{sources[1]} [1]"
    with WireServer(reply=reply, models=("gen", "enh")) as ws:
        c = distill_stage(run, domain="sprint", mode="standard",
                          teachers=f"{ws.spec('gen')},{ws.spec('enh')}",
                          num_qa_pairs=3, heldout_fraction=0.0)
        qs = read_jsonl(run/"queries"/"queries.jsonl")
        # 2 chunks x 1 pair, each enhanced once
        assert len(qs) == 2 and ws.counts()["gen"] == 2 and ws.counts()["enh"] == 2
        assert c["accepted"] + c["rejected"] == 2 and c["accepted"] >= 1
        assert all(q["draft"] == "A guess." for q in qs)
        assert all("A guess" not in q["answer"] for q in read_jsonl(run/"distill"/"qa.jsonl"))


def test_misquoted_answers_are_rejected(tmp_path):
    "A teacher that quotes words the cited chunk does not contain is rejected as misquoted."
    run = make_run(tmp_path)
    def reply(req):
        q, sources = parse_grounded(req.body["messages"])
        if "ground contact" in q.lower():
            return 'The study reports "ground contact lasted 0.12 s in every sprinter" [1].'
        return f"{sources[min(sources)]} [1]"
    with WireServer(reply=reply, models=("quoter",)) as ws:
        distill_stage(run, domain="sprint", teachers=ws.spec("quoter"), judge_threshold=1.0)
    rejected = {r["query_id"]: r for r in read_jsonl(run/"distill"/"rejected.jsonl")}
    assert rejected["q1"]["reason"].startswith("misquoted: 'ground contact lasted 0.12 s in every "
                                               "sprinter'")
    assert "q0" not in rejected


def test_trl_trains_the_prompt_completion_export_on_the_completion_only(tmp_path, monkeypatch):
    "TRL's SFTTrainer reads the prompt_completion export (and the dataset); it learns the answers."
    pytest.importorskip("trl")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from datasets import load_dataset, load_from_disk
    from trl import SFTConfig, SFTTrainer
    from purpose.student import load_student
    run = make_run(tmp_path)
    distill_stage(run, domain="sprint", cache=False, judge_threshold=1.0)
    rows = read_jsonl(run/"distill"/"exports"/"prompt_completion.jsonl")
    assert rows and all([m["role"] for m in r["prompt"]] == ["system", "user"] for r in rows)
    assert all([m["role"] for m in r["completion"]] == ["assistant"] for r in rows)
    model, tok = load_student("tiny-random")
    cfg = SFTConfig(output_dir=str(tmp_path/"trl"), max_steps=2, per_device_train_batch_size=2,
                    learning_rate=1e-3, use_cpu=True, report_to=[], save_strategy="no",
                    logging_steps=1, max_length=256)
    export = run/"distill"/"exports"/"prompt_completion.jsonl"
    ds = load_dataset("json", data_files=str(export), split="train")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    assert trainer.completion_only_loss
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    for ids, labels, row in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), rows):
        trained = [t for t, l in zip(ids, labels) if l != -100]
        assert 0 < len(trained) < sum(x != tok.pad_token_id for x in ids)
        text = tok.decode(trained)
        assert text.startswith(row["completion"][0]["content"]), text    # answer + end token
        assert row["prompt"][1]["content"] not in text and row["prompt"][0]["content"] not in text
    out = trainer.train()
    assert out.global_step == 2 and out.training_loss == out.training_loss > 0
    saved = load_from_disk(str(run/"distill"/"dataset"))["train"]       # the same view
    t2 = SFTTrainer(model=model, args=cfg, train_dataset=saved, processing_class=tok)
    assert t2.completion_only_loss and t2.train_dataset.num_rows == saved.num_rows
    assert t2.train().global_step == 2
