"The OpenAI-compatible server, exercised with the `openai` SDK and raw sockets on tiny models."
import json, socket, threading, time, urllib.error, urllib.request
from pathlib import Path
import pytest
openai = pytest.importorskip("openai")
from purpose.config import ConfigError
from purpose.student import TINY_STUDENT, chat_messages, load_student
from purpose.core import write_json
from purpose.inference import DomainInference
from purpose.serve import make_server
from purpose.train import TrainConfig, train

MODEL = "purpose-sprint"

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("serve")/"run"
    # a few seconds of over-fitting: the tiny random model replies with words, not special tokens
    def row(i):
        answer = f"The stride length of athlete {i} is {2 + i / 10:.1f} m at top speed."
        msgs = chat_messages(f"What is the stride length of athlete {i}?", "sprint", answer)
        return {"messages": msgs, "depth": "basic", "hard": False}
    rows = [row(i) for i in range(6)]
    cfg = TrainConfig(student=TINY_STUDENT, epochs=15, lr=3e-3, lora_r=8, lora_alpha=16,
                      max_len=128, warmup_ratio=0)
    train(rows, [], run/"train", cfg, progress=False)
    write_json(run/"train"/"train_config.json", {"student": TINY_STUDENT})
    return run

@pytest.fixture(scope="module")
def inference(run_dir): return DomainInference(run_dir, domain="sprint")

@pytest.fixture(scope="module")
def random_inference(tmp_path_factory):
    "An untrained tiny model: its greedy replies run to max_tokens (a generation lasts as asked)."
    d = tmp_path_factory.mktemp("random")/"tiny"
    m, t = load_student(TINY_STUDENT)
    m.save_pretrained(d)
    t.save_pretrained(d)
    return DomainInference(d, domain="sprint")

def _start(inference, **kw):
    srv = make_server(inference, port=0, **kw)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"

def _stop(srv):
    srv.shutdown()
    srv.server_close()

def _wait(pred, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)

def _post_bytes(body: bytes, host: str = "127.0.0.1", ctype: str = "application/json",
                extra: str = "") -> bytes:
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
            f"Connection: close\r\n{extra}")
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body

def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    "What the server answers to `data` sent as is, read until it closes or `timeout` s pass."
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536): out += chunk
        except (socket.timeout, ConnectionResetError): pass
        return out

def _long(stream: bool = False, max_tokens: int = 1800) -> bytes:
    body = {"model": MODEL, "messages": ASK, "max_tokens": max_tokens, "temperature": 0,
            "stream": stream}
    return json.dumps(body).encode()

@pytest.fixture(scope="module")
def server(inference):
    srv, url = _start(inference)
    yield url
    _stop(srv)

@pytest.fixture
def client(server): return _client(server)

def _client(url: str, timeout: float = 120):
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=timeout)

def _reply(client, model: str = MODEL, messages=None, **kw):
    "The first choice of a chat completion."
    return client.chat.completions.create(model=model, messages=messages or ASK, **kw).choices[0]

ASK = [{"role": "user", "content": "What is the stride length of athlete 3?"}]

# Another address of this machine than the one a default server binds: 127.0.0.0/8 is all
# loopback on Linux, so a server bound to every address answers on it, one on 127.0.0.1 does not.
OTHER = "127.0.0.2"

def _reachable(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=3): return True
    except OSError: return False

def test_binds_to_localhost_by_default(inference):
    "A default server answers on 127.0.0.1 only; the same probe reaches one bound to all addresses."
    open_srv = make_server(inference, host="0.0.0.0", port=0)
    try:
        if not _reachable(OTHER, open_srv.server_address[1]):
            pytest.skip(f"{OTHER} is not loopback here")
    finally: open_srv.server_close()
    srv = make_server(inference, port=0)
    try:
        port = srv.server_address[1]
        assert _reachable("127.0.0.1", port)
        assert not _reachable(OTHER, port), f"a default server accepts connections on {OTHER}"
    finally: srv.server_close()

def test_settings_are_checked_before_anything_starts(inference):
    "A setting out of range or of unknown name is one error naming the field; no engine, no socket."
    with pytest.raises(ConfigError, match="stage 'serve' parameter max_batch=0: out of range"):
        make_server(inference, port=0, max_batch=0)
    with pytest.raises(ConfigError, match="unknown parameter.s. max_batchs"):
        make_server(inference, port=0, max_batchs=4)
    srv = make_server(inference, port=0, max_batch=3, max_context=512, default_max_tokens=7)
    try:
        eng = srv.engine
        assert (eng.max_batch, eng.max_context, srv.api.default_max_tokens) == (3, 512, 7)
    finally: srv.server_close()

def test_models(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "purpose"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.code == "model_not_found"

def test_chat_completion_matches_the_model(client, inference):
    r = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=8)
    c = r.choices[0]
    assert c.message.role == "assistant" and c.finish_reason in ("stop", "length")
    # greedy: the same text as in-process
    assert c.message.content == inference.chat(ASK, temperature=0, max_new_tokens=8)
    assert r.usage.prompt_tokens == inference.count_tokens(ASK)
    assert 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

def test_streaming_equals_non_streaming(client):
    full = _reply(client, temperature=0, max_tokens=10).message.content
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, temperature=0,
                                                 max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip() == full.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    finishes = [f for f in finishes if f]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

def test_stop_sequence_cuts_the_reply(client):
    full = _reply(client, temperature=0, max_tokens=12).message.content
    assert len(full) >= 4, full
    stop = full[2:4]
    cut = _reply(client, temperature=0, max_tokens=12, stop=[stop])
    assert cut.message.content == full[:full.find(stop)] and cut.finish_reason == "stop"
    chunks = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=12,
                                            stop=[stop], stream=True)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == full[:full.find(stop)]

def test_bad_requests_get_openai_errors_and_server_stays_up(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        _reply(client, model="gpt-4o")
    assert e.value.code == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        _reply(client, messages=[{"role": "user", "content": 42}])
    assert e.value.body["param"] == "messages[0].content"
    assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        _reply(client, temperature="hot")
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[])
    assert e.value.body["param"] == "messages"
    bad = ((b'{"model": "purpose-sprint"}', "messages"), (b"{broken", None), (b"[1, 2]", None))
    for body, param in bad:
        req = urllib.request.Request(server + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as he:
            urllib.request.urlopen(req, timeout=30)
        err = json.loads(he.value.read())["error"]
        assert he.value.code == 400 and err["param"] == param and err["message"]
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(server + "/v1/nothing", timeout=30)
    assert he.value.code == 404 and json.loads(he.value.read())["error"]["code"] == "unknown_url"
    assert _reply(client, max_tokens=2).message.role == "assistant"

def test_concurrent_requests_are_all_answered(client):
    out, errs = [], []
    def ask():
        try: out.append(_reply(client, temperature=0, max_tokens=4).message.content)
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
        keyed = openai.OpenAI(base_url=url + "/v1", api_key="k-123", max_retries=0)
        assert [m.id for m in keyed.models.list()] == [MODEL]
    finally: _stop(srv)

def test_purpose_serve_command(run_dir):
    "`purpose serve` in its own process: the SDK talks to it, a bad request does not bring it down."
    import socket, subprocess, sys, time
    from conftest import ROOT
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent/"purpose"
    cmd = [str(exe), "serve", "--model-dir", str(run_dir), "--port", str(port), "--model-id", "m"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        client = _client(f"http://127.0.0.1:{port}")
        with pytest.raises(openai.NotFoundError):
            _reply(client, model="other")
        assert _reply(client, model="m", max_tokens=3).message.role == "assistant"
        assert not _reachable(OTHER, port), f"`purpose serve` without --host answers on {OTHER}"
    finally:
        proc.terminate()
        proc.wait(30)

def test_huge_prompts_are_refused_fast_while_others_answer(server, client):
    "A 3 MB body gets 413, a prompt beyond the context 400 `context_length_exceeded`; nobody waits."
    got, words = {}, lambda n: [{"role": "user", "content": "word " * n}]
    def ask_huge():
        t0 = time.monotonic()
        try: _reply(client, messages=words(600000), max_tokens=1)
        except openai.APIStatusError as e: got["huge"] = (e.status_code, time.monotonic() - t0)
    th = threading.Thread(target=ask_huge)
    th.start()
    t0 = time.monotonic()
    with pytest.raises(openai.BadRequestError) as e:      # ~3000 tokens; the tiny model holds 2048
        _reply(client, messages=words(3000), max_tokens=1)
    assert e.value.code == "context_length_exceeded"
    assert "maximum context length is 2048" in e.value.body["message"]
    assert time.monotonic() - t0 < 15
    with urllib.request.urlopen(server + "/health", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"
    assert _reply(client, max_tokens=2).message.role == "assistant"
    th.join(60)
    assert got["huge"][0] == 413 and got["huge"][1] < 30, got
    # ~1500 prompt tokens fit, but not with 1000 more to write
    with pytest.raises(openai.BadRequestError) as e:
        _reply(client, messages=words(1500), max_tokens=1000)
    assert e.value.code == "context_length_exceeded"

def test_a_client_that_goes_away_cancels_its_generation(random_inference):
    srv, _ = _start(random_inference, max_tokens_limit=2000)
    eng, port = srv.engine, srv.server_address[1]
    try:
        for stream in (False, True):
            before = eng.snapshot()
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(_post_bytes(_long(stream)))
            _wait(lambda: eng.snapshot()["running"] == 1, what="the generation to start")
            if stream: assert s.recv(65536).startswith(b"HTTP/1.1 200")
            s.close()
            cancelled = before["cancelled"] + 1
            _wait(lambda: eng.snapshot()["cancelled"] == cancelled, what="the cancellation")
            after = eng.snapshot()
            assert after["running"] == 0 and after["completed"] == before["completed"]
    finally: _stop(srv)

def test_a_full_queue_answers_429_with_retry_after(random_inference):
    srv, url = _start(random_inference, max_batch=1, max_queue=1, max_tokens_limit=2000)
    eng = srv.engine
    port = srv.server_address[1]
    busy = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
    try:
        busy[0].sendall(_post_bytes(_long()))
        _wait(lambda: eng.snapshot()["running"] == 1, what="the first request to run")
        busy[1].sendall(_post_bytes(_long()))
        _wait(lambda: eng.snapshot()["queued"] == 1, what="the second request to wait")
        client = _client(url, timeout=30)
        with pytest.raises(openai.RateLimitError) as e:
            _reply(client, max_tokens=2)
        assert e.value.code == "rate_limit_exceeded"
        assert int(e.value.response.headers["retry-after"]) >= 1
        for s in busy: s.close()
        _wait(lambda: eng.snapshot()["cancelled"] == 2, what="both abandoned requests cancelled")
        assert _reply(client, max_tokens=2).finish_reason == "length"
    finally:
        for s in busy: s.close()
        _stop(srv)

def test_only_json_from_this_machine(server, inference):
    "Form posts, foreign Host headers (DNS rebinding) and web-page Origins are refused up front."
    port = int(server.rsplit(":", 1)[1])
    body = json.dumps({"model": MODEL, "messages": ASK, "max_tokens": 2}).encode()
    def status(data: bytes) -> tuple[int, str | None]:
        head, _, rest = _raw(port, data).partition(b"\r\n\r\n")
        code = (json.loads(rest).get("error") or {}).get("code") if rest.startswith(b"{") else None
        return int(head.split()[1]), code
    assert status(_post_bytes(body))[0] == 200
    assert status(_post_bytes(body, ctype="text/plain")) == (415, "unsupported_media_type")
    form = _post_bytes(b"model=purpose-sprint", ctype="application/x-www-form-urlencoded")
    assert status(form)[0] == 415
    assert status(_post_bytes(body, host="evil.example:8000")) == (403, "host_not_allowed")
    rebind = b"GET /v1/models HTTP/1.1\r\nHost: rebind.evil.example\r\nConnection: close\r\n\r\n"
    assert status(rebind) == (403, "host_not_allowed")
    assert status(_post_bytes(body, host="localhost:1234"))[0] == 200
    assert status(_post_bytes(body, host="[::1]:1234"))[0] == 200
    web_page = _post_bytes(body, extra="Origin: http://evil.example\r\n")
    assert status(web_page) == (403, "origin_not_allowed")
    srv, _ = _start(inference, allowed_hosts=["box.lan"], allowed_origins=["http://localhost:3000"])
    try:
        p = srv.server_address[1]
        for extra, host in (("Origin: http://localhost:3000\r\n", "127.0.0.1"), ("", "box.lan")):
            assert _raw(p, _post_bytes(body, host=host, extra=extra)).startswith(b"HTTP/1.1 200")
    finally: _stop(srv)

def test_malformed_requests_get_a_one_line_400(server):
    "A negative or invalid Content-Length and deeply nested JSON are answered, never dropped."
    port = int(server.rsplit(":", 1)[1])
    for cl in ("-1", "abc", "1, 2", "99999999999999999999999"):
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {cl}\r\n\r\n{{}}")
        resp = _raw(port, head.encode())
        assert resp.startswith(b"HTTP/1.1 400") or resp.startswith(b"HTTP/1.1 413"), (cl, resp[:80])
    nested = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    nested = nested.replace('"x"', "[" * 100000 + "]" * 100000)
    for body in (b"[" * 200000 + b"]" * 200000, nested.encode()):
        head, _, rest = _raw(port, _post_bytes(body)).partition(b"\r\n\r\n")
        err = json.loads(rest)["error"]
        assert head.startswith(b"HTTP/1.1 400") and err["code"] == "invalid_json"
        assert "\n" not in err["message"]
    with urllib.request.urlopen(server + "/health", timeout=10) as r: assert r.status == 200

def test_slow_clients_are_timed_out(random_inference):
    "Half-sent bodies get 408, trickled headers a closed connection, a late generation 504."
    srv, url = _start(random_inference, body_timeout=1, header_timeout=1, request_timeout=1.5,
                      max_tokens_limit=2000)
    port = srv.server_address[1]
    try:
        slow = []
        for _ in range(50):                                  # 50 half-sent bodies held at once
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            s.sendall(_post_bytes(b"x" * 100)[:-90])
            slow.append(s)
        t0 = time.monotonic()
        client = _client(url, timeout=30)
        assert _reply(client, max_tokens=2).message.role == "assistant"
        for s in slow:
            assert s.recv(65536).startswith(b"HTTP/1.1 408")
            s.close()
        assert time.monotonic() - t0 < 15
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            # and never the rest
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            t0 = time.monotonic()
            assert s.recv(65536) == b"" and time.monotonic() - t0 < 10
        with pytest.raises(openai.InternalServerError) as e:
            _reply(client, max_tokens=1800, temperature=0)
        assert e.value.status_code == 504 and e.value.code == "timeout"
        _wait(lambda: srv.engine.snapshot()["running"] == 0, what="the late generation to stop")
        assert srv.engine.snapshot()["timed_out"] == 1
    finally: _stop(srv)

def test_concurrent_requests_are_batched_and_match_one_at_a_time(inference):
    srv, url = _start(inference)
    client = _client(url)
    qs = [[{"role": "user", "content": f"What is the stride length of athlete {i}?"}]
          for i in range(8)]
    ask = lambda m: _reply(client, messages=m, temperature=0, max_tokens=24).message.content
    try:
        alone = [ask(m) for m in qs]
        assert srv.engine.snapshot()["max_batch_seen"] == 1
        together, go = [None] * len(qs), threading.Barrier(len(qs))
        def run(i):
            go.wait()
            together[i] = ask(qs[i])
        ts = [threading.Thread(target=run, args=(i,)) for i in range(len(qs))]
        for t in ts: t.start()
        for t in ts: t.join(120)
        assert together == alone
        assert srv.engine.snapshot()["max_batch_seen"] > 1
    finally: _stop(srv)
