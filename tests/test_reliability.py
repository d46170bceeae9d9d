"""Nothing lost, nothing stale, nothing stalled: re-runs after a change, torn files, two processes
on one run folder.

Real files, real processes and the real wire server; each test reproduces a probe of issue 10 that
failed before."""
import json, os, subprocess, sys, time
from pathlib import Path

import pytest

from purpose.core import RunDir, read_jsonl, write_jsonl
from purpose.wire import Faults, WireServer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "Heavy sled training improves acceleration in trained sprinters. "
    "Ten metre time fell by 0.05 s.",
    "Heavy sled training does not improve acceleration. "
    "Maximum velocity decreased in the sled group.",
    "Ground contact time was 0.09 s at maximum velocity in elite sprinters.",
    "Stride frequency rose from 4.4 to 4.7 Hz over the season while stride length held at 2.3 m."]
CHUNKS = [{"chunk_id": f"c{i}", "doc_id": "ABC"[i % 3], "page_start": i, "text": t}
          for i, t in enumerate(TEXTS)]
# the settings that make every answer of the offline teacher acceptable
ACCEPT_ALL = dict(domain="sprint", judge_threshold=0.0, min_grounding=0.0, dedup_threshold=1.0)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))
    monkeypatch.delenv("PURPOSE_RUN_LOCK", raising=False)


def quote_first_source(req):
    from purpose.modelhub import parse_grounded
    _, sources = parse_grounded(req.body["messages"])
    return f"{sources[min(sources)]} [1]"


def make_run(root: Path, n: int = 8) -> Path:
    run = RunDir(root/"run")
    write_jsonl(run.chunks, CHUNKS)
    write_jsonl(run.queries_file, [
        {"query_id": f"q{i}", "question": f"What does the study report about item {i}?",
         "chunk_ids": [f"c{i % 4}"], "dimension": "factual", "depth": "basic",
         "split": "heldout" if i == 0 else "train", "concepts": []}
        for i in range(n)])
    return run.root


def test_changed_dataset_retrains_instead_of_resuming_a_finished_adapter(tmp_path, capsys):
    "Issue 10.1: re-distill with passages=none, re-train, same settings: a new adapter."
    from purpose.distill import distill_stage
    from purpose.train import train_stage
    run = make_run(tmp_path)
    kw = dict(student="tiny-random", epochs=1, lr=5e-3, lora_r=4, max_len=128, rows_per_batch=1,
              progress=False)
    distill_stage(run, **ACCEPT_ALL)
    first = train_stage(run, **kw)
    weights = RunDir(run).adapter/"adapter_model.safetensors"
    adapter = weights.read_bytes()
    same = train_stage(run, **kw)                  # nothing changed: the finished run is reused
    assert same["data_fingerprint"] == first["data_fingerprint"]
    assert same["steps"] == first["steps"]
    assert "starting again" not in capsys.readouterr().out
    distill_stage(run, passages="none", **ACCEPT_ALL)
    again = train_stage(run, **kw)
    assert "starting again" in capsys.readouterr().out
    assert again["examples"] < first["examples"]
    assert again["data_fingerprint"] != first["data_fingerprint"]
    assert weights.read_bytes() != adapter
    log = read_jsonl(RunDir(run).train_log)
    assert [r["step"] for r in log if "loss" in r] == list(range(1, again["steps"] + 1))


def test_changed_chunk_text_asks_the_teacher_again(tmp_path):
    "A stored answer is reused only for the same prompt: new chunk text asks the teacher again."
    from purpose.distill import distill_stage
    run = make_run(tmp_path, n=4)
    with WireServer(reply=quote_first_source, models=("t",)) as ws:
        distill_stage(run, teachers=ws.spec("t"), **ACCEPT_ALL)
        assert ws.counts()["t"] == 4
        distill_stage(run, teachers=ws.spec("t"), **ACCEPT_ALL)
        assert ws.counts()["t"] == 4                    # same prompts: nothing asked again
        revised = [{**c, "text": c["text"] + " Revised."} if c["chunk_id"] == "c2" else c
                   for c in CHUNKS]
        write_jsonl(RunDir(run).chunks, revised)
        distill_stage(run, teachers=ws.spec("t"), cache=False, **ACCEPT_ALL)
        assert ws.counts()["t"] == 5                    # only q2 cites c2


def test_torn_last_answer_line_is_repaired_and_every_question_accounted_for(tmp_path):
    "Issue 10.3: answers.jsonl cut by 40 bytes, distill run twice: no question lost, no failure."
    from purpose.distill import distill_stage
    run = make_run(tmp_path)
    distill_stage(run, **ACCEPT_ALL)
    answers = RunDir(run).answers
    answers.write_bytes(answers.read_bytes()[:-40])
    for _ in range(2):
        c = distill_stage(run, **ACCEPT_ALL)
        # every line is whole JSON
        rows = [json.loads(line) for line in answers.read_text().splitlines()]
        assert sorted({r["query_id"] for r in rows}) == [f"q{i}" for i in range(8)]
        accounted = ({r["query_id"] for r in read_jsonl(RunDir(run).qa)}
                     | {r["query_id"] for r in read_jsonl(RunDir(run).rejected)})
        assert len(accounted) + c["failed"] == 8, (c, accounted)
    assert answers.with_name(answers.name + ".torn").exists()


def test_every_call_failing_for_one_cause_says_that_cause(tmp_path):
    "Issue 10.5: every teacher call fails: the error is the cause, not 'no training QA accepted'."
    from purpose.core import PurposeError
    from purpose.distill import distill_stage
    run = make_run(tmp_path, n=3)
    with WireServer(models=("t",), faults=Faults(fail_models={"t": 401})) as ws:
        with pytest.raises(PurposeError, match="failed for one cause: .*401"):
            distill_stage(run, domain="sprint", teachers=ws.spec("t"), retries=0)


HOLD = """
import sys
from purpose.distill import distill_stage
print("started", flush=True)
distill_stage(sys.argv[1], domain="sprint", teachers=sys.argv[2], judge_threshold=0.0,
              min_grounding=0.0, dedup_threshold=1.0, concurrency=1)
print("finished", flush=True)
"""


def test_second_process_on_a_run_folder_is_refused_or_waits(tmp_path):
    "Issue 10.4: two distills on one run folder: the second is told who holds it, or waits."
    run = make_run(tmp_path, n=6)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with WireServer(reply=quote_first_source, models=("slow",), faults=Faults(latency=0.5)) as ws:
        cmd = [sys.executable, "-c", HOLD, str(run), ws.spec("slow")]
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert first.stdout.readline().strip() == "started"
        deadline = time.time() + 30
        while ws.counts()["slow"] == 0 and not ws.requests() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode != 0
        assert f"is in use by pid {first.pid}" in second.stderr.splitlines()[-1]
        waiter = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                                env={**env, "PURPOSE_LOCK_WAIT": "1"})
        assert waiter.returncode == 0, waiter.stderr[-500:]
        assert first.wait(timeout=60) == 0
    answers = read_jsonl(RunDir(run).answers)
    assert len(answers) == 6 and ws.counts()["slow"] == 6        # nothing paid for twice
