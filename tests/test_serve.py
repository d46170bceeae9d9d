"The OpenAI-compatible server, exercised with the official `openai` SDK over 127.0.0.1 on a tiny trained adapter."
import json, threading, urllib.error, urllib.request
from pathlib import Path
import pytest
openai = pytest.importorskip("openai")
from purpose.core import TINY_STUDENT, chat_messages, write_json
from purpose.evaluate import DomainInference
from purpose.serve import make_server
from purpose.train import TrainConfig, train

MODEL = "purpose-sprint"

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("serve")/"run"
    # a few seconds of over-fitting so the tiny random model replies with words rather than only special tokens
    rows = [{"messages": chat_messages(f"What is the stride length of athlete {i}?", "sprint",
                                       f"The stride length of athlete {i} is {2 + i / 10:.1f} m at top speed."), "depth": "basic", "hard": False}
            for i in range(6)]
    cfg = TrainConfig(student=TINY_STUDENT, epochs=15, lr=3e-3, lora_r=8, lora_alpha=16, max_len=128, warmup_ratio=0)
    train(rows, [], run/"train", cfg, progress=False)
    write_json(run/"train"/"train_config.json", {"student": TINY_STUDENT})
    return run

@pytest.fixture(scope="module")
def inference(run_dir): return DomainInference(run_dir, domain="sprint")

def _start(inference, **kw):
    srv = make_server(inference, port=0, **kw)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"

@pytest.fixture(scope="module")
def server(inference):
    srv, url = _start(inference)
    yield url
    srv.shutdown(); srv.server_close()

@pytest.fixture
def client(server): return openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0, timeout=120)

ASK = [{"role": "user", "content": "What is the stride length of athlete 3?"}]

def test_binds_to_localhost_by_default(inference):
    srv = make_server(inference, port=0)
    try: assert srv.server_address[0] == "127.0.0.1"
    finally: srv.server_close()

def test_models(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "purpose"
    with pytest.raises(openai.NotFoundError) as e: client.models.retrieve("gpt-4o")
    assert e.value.code == "model_not_found"

def test_chat_completion_matches_the_model(client, inference):
    r = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=8)
    c = r.choices[0]
    assert c.message.role == "assistant" and c.finish_reason in ("stop", "length")
    assert c.message.content == inference.chat(ASK, temperature=0, max_new_tokens=8)      # greedy: the same text as in-process
    assert r.usage.prompt_tokens == inference.count_tokens(ASK) and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

def test_streaming_equals_non_streaming(client):
    full = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=10).choices[0].message.content
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip() == full.strip()
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

def test_stop_sequence_cuts_the_reply(client):
    full = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=12).choices[0].message.content
    assert len(full) >= 4, full
    stop = full[2:4]
    cut = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == full[:full.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=12, stop=[stop], stream=True) if ch.choices)
    assert streamed == full[:full.find(stop)]

def test_bad_requests_get_openai_errors_and_server_stays_up(client, server):
    with pytest.raises(openai.NotFoundError) as e: client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert e.value.code == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e: client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": 42}])
    assert e.value.body["param"] == "messages[0].content" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e: client.chat.completions.create(model=MODEL, messages=ASK, temperature="hot")
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e: client.chat.completions.create(model=MODEL, messages=[])
    assert e.value.body["param"] == "messages"
    for body, param in ((b'{"model": "purpose-sprint"}', "messages"), (b"{broken", None), (b"[1, 2]", None)):
        req = urllib.request.Request(server + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as he: urllib.request.urlopen(req, timeout=30)
        err = json.loads(he.value.read())["error"]
        assert he.value.code == 400 and err["param"] == param and err["message"]
    with pytest.raises(urllib.error.HTTPError) as he: urllib.request.urlopen(server + "/v1/nothing", timeout=30)
    assert he.value.code == 404 and json.loads(he.value.read())["error"]["code"] == "unknown_url"
    assert client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2).choices[0].message.role == "assistant"

def test_concurrent_requests_are_all_answered(client):
    out, errs = [], []
    def ask():
        try: out.append(client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=4).choices[0].message.content)
        except Exception as e: errs.append(e)
    ts = [threading.Thread(target=ask) for _ in range(3)]
    for t in ts: t.start()
    for t in ts: t.join(120)
    assert not errs and len(out) == 3 and len(set(out)) == 1

def test_api_key_is_enforced_when_set(inference):
    srv, url = _start(inference, api_key="k-123")
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert [m.id for m in openai.OpenAI(base_url=url + "/v1", api_key="k-123", max_retries=0).models.list()] == [MODEL]
    finally: srv.shutdown(); srv.server_close()

def test_purpose_serve_command(run_dir):
    "`purpose serve` in its own process: the SDK talks to it, a bad request does not bring it down."
    import socket, subprocess, sys, time
    from conftest import ROOT
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    exe = Path(sys.executable).parent/"purpose"
    proc = subprocess.Popen([str(exe), "serve", "--model-dir", str(run_dir), "--port", str(port), "--model-id", "m"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2); break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)
        with pytest.raises(openai.NotFoundError): client.chat.completions.create(model="other", messages=ASK)
        assert client.chat.completions.create(model="m", messages=ASK, max_tokens=3).choices[0].message.role == "assistant"
    finally:
        proc.terminate(); proc.wait(30)
