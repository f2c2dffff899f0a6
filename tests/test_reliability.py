"""What keeps the proxy serving when clients, upstreams or its own configuration misbehave:
loops, clients that stop reading or leave early, shutdown with calls in flight, running
out of file descriptors, endless upstream replies, and strangers' request bodies.

Every wait here is for an event (a counter reaching a value, a gate reached), through
conftest.wait_for: its generous deadline only matters when something is broken."""

import copy
import errno
import gc
import json
import logging
import re
import socket
import threading
import tracemalloc
import weakref

import pytest

from conftest import PATIENCE, gp, make_config, wait_for
from fake_upstream import (Gate, chunk, completion, hang, json_reply, pause_after,
                           stream_reply, text_stream)

OPENAI = "/v1/chat/completions"
GEMINI = "/v1beta/models/gemini-2.5-pro:generateContent"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def raw_head(method, path, headers=(), length=None):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: test"] + list(headers)
    if length is not None:
        lines.append("Content-Length: %d" % length)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_head(sock):
    """The status line and headers of the next response on a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise EOFError(data)
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def idle(proxy):
    app = proxy.server.proxy
    return app.active == 0 and proxy.server.requests_in_flight == 0


# ---- loops ---------------------------------------------------------------------------------

def test_an_upstream_that_is_this_proxy_is_a_508_naming_the_setting(proxy_factory):
    proxy = proxy_factory({"upstreams": {"e": {"kind": "echo"}}})
    looping = make_config({"upstreams": {"self": {
        "base_url": "http://localhost:%d/v1" % proxy.port, "api_key": "k-self"}},
        "server": {"port": proxy.port}}, {})
    proxy.server.reload(looping)
    status, body = proxy.post(OPENAI, CHAT)
    assert status == 508, body
    assert "upstreams.self.base_url" in body["error"]["message"]
    status, _, data = proxy.request("POST", GEMINI, {"contents": [
        {"role": "user", "parts": [{"text": "hi"}]}]})
    assert status == 508 and json.loads(data)["error"]["code"] == 508
    wait_for(lambda: idle(proxy))


def test_a_loop_through_another_proxy_is_a_508_from_the_hop_header(proxy_factory):
    first = proxy_factory({"upstreams": {"e": {"kind": "echo"}}})
    second = proxy_factory({"upstreams": {"back": {
        "base_url": "http://127.0.0.1:%d/v1" % first.port, "api_key": "k-back"}}})
    first.server.reload(make_config({"upstreams": {"onward": {
        "base_url": "http://127.0.0.1:%d/v1" % second.port, "api_key": "k-on"}}}, {}))
    for stream in (False, True):
        status, _, data = first.request("POST", OPENAI, dict(CHAT, stream=stream))
        assert status == 508, data
        assert "loop detected" in json.loads(data)["error"]["message"]
    wait_for(lambda: idle(first) and idle(second), message="both proxies idle")


# ---- workers, and clients that stop reading or leave ----------------------------------------

def test_health_says_degraded_while_no_worker_is_free(proxy_factory, fake, monkeypatch):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url,
                                                  "api_key": "k-1234"}},
                           "server": {"workers": 1}})
    # (in a worker, not on the event loop, which runs a small request to a local upstream)
    monkeypatch.setattr(proxy.server.proxy, "runs_on_loop", lambda pipe, body: False)
    # Held midway through its reply, which holds the worker reading it (an upstream that
    # has sent nothing yet holds none: the event loop waits for it). The worker may
    # still be letting go of its thread as the upstream begins: /health says 503 once
    # it reads.
    gate = Gate(json_reply(completion("late")), midway=True)
    fake.queue(gate)
    answers = []
    worker = threading.Thread(target=lambda: answers.append(proxy.post(OPENAI, CHAT, timeout=60)))
    worker.start()
    try:
        assert gate.entered.wait(30)
        wait_for(lambda: proxy.request("GET", "/health")[0] == 503,
                 message="/health never said the one worker was busy")
        status, _, data = proxy.request("GET", "/health")
        assert status == 503 and json.loads(data)["status"] == "degraded"
    finally:
        gate.open()
        worker.join(60)
    assert answers[0][0] == 200
    wait_for(lambda: idle(proxy))
    status, _, data = proxy.request("GET", "/health")
    assert status == 200 and json.loads(data) == {"status": "ok", "workers_free": 1}


def endless_stream(handler, request):
    """A stream that goes on until its reader stops it (bounded, for safety)."""
    handler.start_stream()
    event = b"data: " + json.dumps(chunk({"content": "x" * 8000})).encode() + b"\n\n"
    for _ in range(20000):
        if not handler.write_chunk(event):
            return


def test_a_client_that_stops_reading_is_dropped_after_send_timeout(proxy_factory, fake,
                                                                   caplog):
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url,
                                                  "api_key": "k-1234"}},
                           "server": {"send_timeout": 0.3, "stream_queue_chunks": 4}})
    fake.queue(endless_stream)
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps(dict(CHAT, stream=True)).encode()
    sock.sendall(raw_head("POST", OPENAI, ["Content-Type: application/json"], len(body)) + body)
    try:   # never read: the worker, the upstream call and the connection must all be freed
        wait_for(lambda: fake.aborted_streams == 1, message="the upstream stream stopped")
        wait_for(lambda: idle(proxy), message="the worker freed")
        status, _, _ = proxy.request("GET", "/health")
        assert status == 200
    finally:
        sock.close()
    # what it was sent is counted (estimated: the upstream's usage would come at the end)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "gemini_proxy.access"
               and "/v1/chat" in r.getMessage()]
    assert " 499 " in line and "send_timeout" in line, line
    assert int(re.search(r" tokens=~\d+\+(\d+)", line).group(1)) >= 2000, line


def test_a_client_that_leaves_before_the_first_byte_frees_its_worker_at_once(
        proxy_factory, fake, caplog):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url,
                                                  "api_key": "k-1234",
                                                  "first_byte_timeout": 600}}})
    gate = Gate(json_reply(completion("late")))
    fake.queue(gate)
    caplog.set_level(logging.INFO, logger="gemini_proxy")
    body = json.dumps(CHAT).encode()
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(raw_head("POST", OPENAI, ["Content-Type: application/json"], len(body)) + body)
    try:
        assert gate.entered.wait(30)
        sock.close()    # the upstream has not answered: only the hang-up can free the worker
        wait_for(lambda: idle(proxy), message="the worker freed")
        assert proxy.server.proxy.pool.open == 0     # the upstream call was abandoned
    finally:
        gate.open()
    access = [r.getMessage() for r in caplog.records if r.name == "gemini_proxy.access"]
    assert access and " 499 " in access[-1]
    assert not [r for r in caplog.records if r.exc_info or "failed" in r.getMessage()
                and "connection handler" in r.getMessage()]


# ---- shutdown ------------------------------------------------------------------------------

def first_event_then_gate(gate):
    def reply(handler, request):
        handler.start_stream()
        handler.write_chunk(b"data: " + json.dumps(chunk({"role": "assistant", "content": "A"}))
                            .encode() + b"\n\n")
        gate(handler, request)
    return reply


def test_shutdown_past_the_grace_stops_hung_calls_and_tells_each_client(proxy_factory, fake):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url,
                                                  "api_key": "k-1234"}},
                           "server": {"shutdown_grace": 0.2}})
    whole_gate, stream_gate = Gate(), Gate()
    fake.queue(whole_gate)
    answers = {}

    def ask(name, payload):
        answers[name] = proxy.request("POST", OPENAI, payload, timeout=60)
    whole = threading.Thread(target=ask, args=("whole", CHAT))
    whole.start()
    assert whole_gate.entered.wait(30)
    fake.queue(first_event_then_gate(stream_gate))
    streamed = threading.Thread(target=ask, args=("stream", dict(CHAT, stream=True)))
    streamed.start()
    try:
        assert stream_gate.entered.wait(30)
        proxy.stop()        # joins the server's thread: it must not wait for the upstream
        whole.join(30)
        streamed.join(30)
    finally:
        whole_gate.open()
        stream_gate.open()
    status, _, data = answers["whole"]
    assert status == 503 and "shutting down" in json.loads(data)["error"]["message"]
    status, _, data = answers["stream"]     # http.client read the whole chunked body
    events = [line[6:] for line in data.decode().split("\n\n") if line.startswith("data: ")]
    assert status == 200 and "[DONE]" not in events
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "A"
    assert "shutting down" in json.loads(events[-1])["error"]["message"]


# ---- file descriptors and connections ------------------------------------------------------

def test_connections_over_max_connections_get_a_503_and_the_rest_are_served(proxy_factory):
    proxy = proxy_factory({"upstreams": {"e": {"kind": "echo"}},
                           "server": {"max_connections": 3}})
    held = []
    try:
        for _ in range(3):      # three keep-alive connections, each known to the server
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
            sock.sendall(raw_head("GET", "/health"))
            head, _ = read_head(sock)
            assert head.startswith("HTTP/1.1 200")
            held.append(sock)
        extra = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
        head, _ = read_head(extra)
        assert head.startswith("HTTP/1.1 503") and "retry-after: 1" in head.lower()
        extra.close()
        held.pop().close()
        wait_for(lambda: proxy.server.connections_open == 2)
        status, _, _ = proxy.request("GET", "/health")
        assert status == 200
    finally:
        for sock in held:
            sock.close()


def test_running_out_of_descriptors_is_logged_once_a_while_not_per_accept(proxy, caplog):
    caplog.set_level(logging.ERROR, logger="gemini_proxy")
    server = proxy.server
    context = {"message": "socket.accept() out of system resource",
               "exception": OSError(errno.EMFILE, "Too many open files")}
    for _ in range(1000):
        server._loop_exception(server._loop, context)
    lines = [r for r in caplog.records if "out of file descriptors" in r.getMessage()]
    assert len(lines) == 1 and not lines[0].exc_info


# ---- endless replies -----------------------------------------------------------------------

def line_without_end(size):
    def reply(handler, request):
        handler.start_stream()
        handler.write_chunk(b"data: {\"x\": \"" + b"y" * size)
        handler.write_chunk(b"y" * size)
    return reply


@pytest.mark.parametrize("client, path, payload", [
    ("openai", OPENAI, dict(CHAT, stream=True)),                       # passed through
    ("gemini", "/v1beta/models/m:streamGenerateContent?alt=sse",       # converted
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})])
def test_a_stream_event_over_max_reply_bytes_is_a_502(proxy_factory, fake, client, path,
                                                     payload):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1234",
                                                  "max_reply_bytes": 100000, "retries": 0}}})
    fake.queue(line_without_end(80000))
    status, _, data = proxy.request("POST", path, payload)
    assert status == 502, data
    assert "max_reply_bytes" in json.loads(data)["error"]["message"]


def test_a_whole_reply_over_max_reply_bytes_is_a_502(proxy_factory, fake):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1234",
                                                  "max_reply_bytes": 100000, "retries": 0}}})
    fake.queue(json_reply(completion("z" * 200000)))
    status, body = proxy.post(GEMINI, {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    assert status == 502 and "max_reply_bytes" in body["error"]["message"]


def cut_reply(size, sent):
    """A whole reply of `size` bytes (Content-Length) that stops after `sent` of them."""
    def reply(handler, request):
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(size))
        handler.end_headers()
        handler.wfile.write(b"z" * sent)
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)
    return reply


@pytest.fixture
def collector_off():
    """Python's cycle collector off for the test, so that what only it would free stays
    for the test to see; as it was again after."""
    was_on = gc.isenabled()
    gc.collect()
    gc.disable()
    yield
    if was_on:
        gc.enable()


@pytest.fixture
def requests_made(monkeypatch):
    """Weak references to the Requests made during the test (the proxy's own objects:
    another test's, or one a log record keeps, are none of this test's business)."""
    made = []
    make = gp.Request.__init__

    def init(self, *args, **kwargs):
        made.append(weakref.ref(self))
        make(self, *args, **kwargs)
    monkeypatch.setattr(gp.Request, "__init__", init)
    return made


def wait_until_let_go_of(requests):
    assert requests, "no request was made"
    wait_for(lambda: not any(ref() for ref in requests), message=lambda: (
        "%d of %d requests still held" % (sum(1 for ref in requests if ref()), len(requests))))


@pytest.mark.parametrize("ending", ["over the limit", "cut"])
def test_replies_that_fail_are_not_kept_after_their_request(proxy_factory, fake, ending,
                                                             collector_off):
    # Each attempt's error kept its traceback, and a cut reply's its context (the socket's
    # error, raised in the read), whose frames made a cycle holding what the attempt had
    # read (up to max_reply_bytes): 3 attempts, 3 MB a request here, until the collector
    # came by (2.6 GB after four rounds of 50 such requests, kept by malloc).
    proxy = proxy_factory({"upstreams": {"fake": {
        "base_url": fake.base_url, "api_key": "k-1234", "max_reply_bytes": 1000000,
        "retries": 2, "retry_wait": 0}}})
    requests = 4
    for _ in range(requests * 3):
        fake.queue(json_reply(completion("z" * 2000000)) if ending == "over the limit"
                   else cut_reply(3000000, 900000))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(requests):
            status, body = proxy.post(OPENAI, CHAT)
            assert status == 502, body
        wait_for(lambda: tracemalloc.get_traced_memory()[0] - before < 3000000,
                 message=lambda: "the replies let go of (%d bytes held)" % (
                     tracemalloc.get_traced_memory()[0] - before))
    finally:
        tracemalloc.stop()


GEMINI_STREAM = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
BIG = "x" * 100000   # over the event loop's 16 KiB: the request goes on in a worker


@pytest.mark.parametrize("case", [
    "passed through, whole", "passed through, stream", "converted, whole",
    "converted, stream", "big, passed through, stream", "big, converted, stream",
    "refused by the proxy", "refused by the upstream", "retried after a 503",
    "retried after an error as the first event", "timed out", "stream cut short",
    "an error in a 200 reply", "an error as the first event"])
def test_a_request_is_let_go_of_at_its_end_without_the_collector(proxy_factory, fake, case,
                                                                 collector_off,
                                                                 requests_made):
    # A Request and what it holds (its body: an agent's is some 100 KB to a few MB) were in
    # reference cycles (its Responder's hook, the pipe's wait for an upstream's bytes, a
    # failure's traceback), so each was freed only when Python's cycle collector went
    # through the generation it had reached, the oldest for a stream (31-37 MB of dead
    # requests after 1,000 of 100 KB, 64 at a time). Reference counting frees them now.
    retried = case.startswith("retried")
    proxy = proxy_factory({"upstreams": {"fake": {
        "base_url": fake.base_url, "api_key": "k-1234", "retries": 1 if retried else 0,
        "retry_wait": 0, "first_byte_timeout": 0.5 if case == "timed out" else 60}}})
    text = BIG if case.startswith("big") else "hi"
    stream = case.endswith("stream") or case.endswith("first event") or \
        case == "stream cut short"
    path, payload, status = OPENAI, {"model": "m", "stream": stream,
                                     "messages": [{"role": "user", "content": text}]}, 200
    if "converted" in case:
        path = GEMINI_STREAM if stream else GEMINI
        payload = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    for _ in range(3):
        if case == "refused by the proxy":
            payload, status = b"{not json", 400
        elif case == "refused by the upstream":
            fake.queue(json_reply({"error": {"message": "no"}}, status=500))
            status = 500   # its own reply, passed through
        elif case == "retried after a 503":
            fake.queue(json_reply({"error": {"message": "busy"}}, status=503),
                       json_reply(completion("hello")))
        elif case == "retried after an error as the first event":
            fake.queue(stream_reply([{"error": {"message": "busy", "code": 503}}]),
                       text_stream("hello there"))
        elif case == "timed out":
            fake.queue(hang(30))
            status = 504
        elif case == "stream cut short":
            fake.queue(stream_reply([chunk({"content": "hal"})], close_early=True))
        elif case == "an error in a 200 reply":
            fake.queue(json_reply({"error": {"message": "quota", "code": 429}}))
            status = 429
        elif case == "an error as the first event":
            fake.queue(stream_reply([{"error": {"message": "quota", "code": 429}}]))
            status = 429
        elif stream:
            fake.queue(text_stream("hello there"))
        else:
            fake.queue(json_reply(completion("hello")))
        got, _, data = proxy.request("POST", path, payload)
        assert got == status, data
    proxy.wait_until_idle()
    wait_until_let_go_of(requests_made)


@pytest.mark.parametrize("case", ["upstream silent", "error event, converted",
                                  "client gone, found on write", "client stopped reading"])
def test_a_stream_broken_off_is_let_go_of_without_the_collector(proxy_factory, fake, case,
                                                                collector_off, requests_made):
    # A failure's traceback holds the frames it went through, and one of them held the
    # failure itself (raised from a local; a task that failed; asyncio keeps a lost
    # connection's error in its reader): a cycle through the request's frames, so the
    # request, and its body, stayed until the collector came by. Each is forgotten once
    # dealt with now.
    proxy = proxy_factory({"upstreams": {"fake": {
        "base_url": fake.base_url, "api_key": "k-1234", "retries": 0,
        "read_timeout": 0.5 if case == "upstream silent" else 60}},
        "server": {"send_timeout": 0.3, "stream_queue_chunks": 4}})
    payload = dict(CHAT, stream=True, messages=[{"role": "user", "content": BIG}])
    released = threading.Event()   # ends the silent upstream's pause
    # The client's going is found by the write (the case asked for) or, as often, by the
    # read that watches for it first, whichever comes first: six tries find the write.
    for _ in range(6 if case.startswith("client gone") else 2):
        if case == "upstream silent":
            fake.queue(pause_after(text_stream("hello there"), until=released))
            # (a 504 where a busy machine kept the first event half a second)
            assert proxy.request("POST", OPENAI, payload)[0] in (200, 504)
        elif case == "error event, converted":
            fake.queue(stream_reply([chunk({"content": "hal"}),
                                     {"error": {"message": "overloaded"}}]))
            status, _, data = proxy.request("POST", "/v1/messages", {
                "model": "m", "max_tokens": 100, "stream": True,
                "messages": [{"role": "user", "content": BIG}]})   # Anthropic's
            assert status == 200 and b"event: error" in data, data
        else:
            gate = Gate(text_stream("hello there") if case.startswith("client gone")
                        else endless_stream)
            fake.queue(gate)
            body = json.dumps(payload).encode()
            sock = socket.create_connection(("127.0.0.1", proxy.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(raw_head("POST", OPENAI, ["Content-Type: application/json"],
                                  len(body)) + body)
            try:
                wait_for(gate.entered.is_set, message="the upstream asked")
                if case.startswith("client gone"):
                    sock.shutdown(socket.SHUT_RDWR)   # before the proxy writes
                gate.open()
                proxy.wait_until_idle()
            finally:
                sock.close()
    proxy.wait_until_idle()
    released.set()
    wait_until_let_go_of(requests_made)


@pytest.mark.parametrize("make", [
    lambda: gp.UpstreamError("upstream said no", status=429, retry_after=3.0,
                             key_verdict="rest"),
    lambda: gp.KeysUnavailable("all keys busy", 503, 2.0, cause="busy"),
    lambda: gp.MalformedToolCall("up", "UNEXPECTED_TOOL_CALL"),
    lambda: gp.ClientError("bad field")],
    ids=["UpstreamError", "KeysUnavailable", "MalformedToolCall", "ClientError"])
def test_a_failure_copied_to_be_kept_is_the_same_failure(make):
    # Failures are kept as copies, without their tracebacks (see the tests above).
    # copy.copy called the class again with its args: a TypeError for KeysUnavailable, a
    # MalformedToolCall's message taken for the upstream's name and worded twice.
    error = make()
    error.raw = ([("content-type", "application/json")], b"{}")
    try:
        raise error
    except gp.ProxyError as raised:
        copied = copy.copy(raised)
    assert type(copied) is type(error) and str(copied) == str(error)
    assert vars(copied) == vars(error) and copied.__traceback__ is None
    assert (copied.status, copied.retry_after, copied.message) == (
        error.status, error.retry_after, error.message)


def test_a_line_that_never_ends_is_refused_at_max_event():
    parser = gp.SSEParser(max_event=10 * 1024 * 1024)
    piece = b"y" * 65536
    fed = 0
    with pytest.raises(ValueError):
        for _ in range(1000):       # 64 MiB offered in all
            parser.feed(piece)
            fed += len(piece)
    assert 10 * 1024 * 1024 - len(piece) <= fed <= 10 * 1024 * 1024


def test_an_event_of_many_short_lines_is_refused_at_max_event_too():
    parser = gp.SSEParser(max_event=1000)
    with pytest.raises(ValueError):
        for _ in range(200):
            parser.feed(b"data: 0123456789\n")


# ---- found by review: stopping a call must never touch another's connection -----------------

def test_a_client_leaving_after_a_failed_attempt_cannot_cut_a_pooled_connection(fake):
    import asyncio
    from fake_upstream import completion
    pool = gp.ConnectionPool()
    loop = asyncio.new_event_loop()
    target = gp.upstream_target(fake.base_url, {})
    pipe_a, pipe_b = gp.ChunkPipe(loop, 4), gp.ChunkPipe(loop, 4)
    gate = Gate(json_reply(completion("B's answer")))
    fake.queue(json_reply({"error": {"message": "slow down"}}, status=429), gate)
    try:
        # Request A: a 429; its connection goes back to the pool, fully read.
        a = gp.run_through(gp.opening_upstream(
            pool, target, "up", "POST", "/chat/completions", b"{}", [],
            gp.Timeouts(10, 30, 30), 8, pipe_a.on_abort))
        a.read_body(gp.MiB)
        a.close(reuse=True)
        assert pool.idle == 1
        answers = []

        def request_b():
            b = gp.run_through(gp.opening_upstream(
                pool, target, "up", "POST", "/chat/completions", b"{}", [],
                gp.Timeouts(10, 30, 30), 8, pipe_b.on_abort))
            answers.append((b.status, json.loads(bytes(b.read_body(gp.MiB)))))
            b.close()
        worker = threading.Thread(target=request_b)
        worker.start()
        assert gate.entered.wait(30)    # B is on A's old connection, waiting for its reply
        pipe_a.abort()                  # A's client leaves: A's stopper must not cut it
        gate.open()
        worker.join(30)
        assert answers and answers[0][0] == 200
        assert answers[0][1]["choices"][0]["message"]["content"] == "B's answer"
        assert len(fake.requests) == 2  # B was sent once, not again on a fresh connection
    finally:
        gate.open()
        pool.close_all()
        loop.close()


def test_a_full_pipe_holds_its_worker_until_the_loop_takes_and_an_abort_frees_it():
    import asyncio
    loop = asyncio.new_event_loop()
    pipe = gp.ChunkPipe(loop, 2)
    put, outcome = [], []

    def worker():
        try:
            for n in range(100):
                pipe.put(b"%d" % n)
                put.append(n)
        except gp.ClientGone:
            outcome.append("gone")
    thread = threading.Thread(target=worker)
    thread.start()
    try:
        taken = []
        for _ in range(3):
            wait_for(lambda: len(put) == len(taken) + 2, message="puts up to the room")
            got = loop.run_until_complete(pipe.take())
            assert len(got) == 2            # never more than the pipe's room
            taken += got
        assert taken == [b"0", b"1", b"2", b"3", b"4", b"5"]
        wait_for(lambda: len(put) == 8, message="puts after the last take")
        pipe.abort()                        # the worker waits for room: it must hear it
        thread.join(PATIENCE)
        assert outcome == ["gone"] and len(put) == 8
    finally:
        pipe.abort()
        thread.join(PATIENCE)
        loop.close()


def test_a_relay_abandoned_before_the_loop_took_it_resumes_its_request_and_is_withdrawn():
    # The worker has handed a stream's rest to the loop, and the client leaves before the
    # loop has looked: the abort must resume the request (no loop ever will), once, and
    # the loop, when it looks, must find no relay to run.
    import asyncio
    loop = asyncio.new_event_loop()
    try:
        pipe = gp.ChunkPipe(loop, 4)
        relay = gp.UpstreamRelay(None, bytes)
        resumed = []
        relay.resume = resumed.append
        pipe.put(b"data: first\n\n")
        pipe.put(relay)
        assert resumed == []
        pipe.abort()
        assert len(resumed) == 1 and isinstance(resumed[0], gp.ClientGone)
        relay.settle(None)                       # a late word from the loop: ignored
        assert len(resumed) == 1
        assert loop.run_until_complete(pipe.take(0.01)) == [b"data: first\n\n"]
        late = gp.UpstreamRelay(None, bytes)     # handed over after the abort: resumed
        late.resume = resumed.append            # at once, its request ended by its resume
        pipe.put(late)
        assert len(resumed) == 2 and isinstance(resumed[1], gp.ClientGone)
        # Abandoned between put()'s look and its append: the relay resumes at once, and
        # no loop finds it.
        later = gp.UpstreamRelay(None, bytes)
        later.resume = resumed.append
        pipe._append(later)
        assert len(resumed) == 3 and isinstance(resumed[2], gp.ClientGone)
        assert loop.run_until_complete(pipe.take(0.01)) == []
        # The client left after the whole reply (its final event taken before the relay
        # was handed over): nothing lost, the relay resumes its request as relayed.
        whole = gp.ChunkPipe(loop, 4)
        whole.put(b"data: [DONE]\n\n", whole=True)
        whole.abort()
        after_the_whole = gp.UpstreamRelay(None, bytes)
        after_the_whole.resume = resumed.append
        whole.put(after_the_whole)
        assert len(resumed) == 4 and resumed[3] is None
    finally:
        loop.close()


def test_a_detailed_log_that_cannot_be_written_is_given_up_with_a_warning(tmp_path, caplog):
    # A full disk or a folder removed mid-request: the request goes on without its log
    # (the stage that failed, and every later one, write nothing and raise nothing).
    in_the_way = tmp_path / "logs"
    in_the_way.write_text("a file where the log folder should be")
    detail = gp.DetailLog(str(in_the_way), "r-1", gp.Redactor([]), 1000)
    detail.stage("1. client request", [("x-api-key", "sk-secret-12345678")], b"{}")
    sink = detail.stream("4. client response: 200")
    sink(b"data: {}\n\n")
    detail.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cannot write the detailed log" in warnings[0]
    assert "sk-secret" not in caplog.text


def test_a_stream_head_goes_out_early_even_when_its_worker_starts_late(proxy_factory, fake,
                                                                      monkeypatch):
    import http.client
    from fake_upstream import text_stream
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}},
                           "server": {"workers": 1, "stream_headers_after": 0.05}})
    # (in workers, not on the event loop, which runs a small request to a local upstream)
    monkeypatch.setattr(proxy.server.proxy, "runs_on_loop", lambda pipe, body: False)
    # (held midway: a reply begun holds its worker; one not begun holds none)
    first = Gate(json_reply(completion("first")), midway=True)
    second = Gate(text_stream("second"))
    fake.queue(first, second)
    answers = []
    busy = threading.Thread(target=lambda: answers.append(proxy.post(OPENAI, CHAT, timeout=60)))
    busy.start()
    try:
        assert first.entered.wait(30)
        wait_for(lambda: proxy.server.proxy.working == 1,
                 message="the only worker reading the first reply")
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
        conn.request("POST", OPENAI, json.dumps(dict(CHAT, stream=True)),
                     {"content-type": "application/json"})
        first.open()                        # the worker frees up, takes the stream...
        response = conn.getresponse()       # ...whose upstream has not answered yet
        assert response.status == 200 and not second.opened.is_set()
        second.open()
        assert b"[DONE]" in response.read()
        conn.close()
    finally:
        first.open()
        second.open()
        busy.join(30)
    assert answers[0][0] == 200


def test_a_huge_compressed_signature_is_not_inflated():
    import base64
    import zlib
    bomb = base64.b64encode(gp.CARRIER_MAGIC + zlib.compress(b"[" + b" " * (200 * gp.MiB)))
    assert len(bomb) < gp.MiB
    assert gp.unpack_thinking(bomb.decode()) == []


def test_the_carriers_of_one_request_inflate_to_a_budget():
    """Small carriers that each inflate to megabytes: one request full of them must not
    cost gigabytes. Within the budget each comes back whole."""
    import base64
    import zlib

    def carrier(text):
        items = json.dumps([{"t": text, "s": "sig", "o": "anthropic"}]).encode()
        return base64.b64encode(gp.CARRIER_MAGIC + zlib.compress(items)).decode()
    big = carrier("x" * (2 * gp.MiB))          # ~3 KB that inflates to 2 MiB
    assert len(big) < 10 * 1024
    assert gp.unpack_thinking(big)[0].text == "x" * (2 * gp.MiB)     # no budget: a library
    gp.CARRIER_BUDGET.set([5 * gp.MiB])
    try:
        assert [len(gp.unpack_thinking(big)) for _ in range(4)] == [1, 1, 0, 0]
    finally:
        gp.CARRIER_BUDGET.set(None)


def test_a_huge_header_value_of_spaces_is_parsed_in_one_pass():
    # The regex this replaced backtracked quadratically: a 1 MB value would take hours.
    head = gp.parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\nX: a" + b" " * 1000000 + b"b \t")
    assert dict(head.headers)["x"] == "a" + " " * 1000000 + "b"


def test_a_long_event_passing_through_is_not_searched_again_for_each_piece():
    # sse_complete_length looks only at what is new: a 64 MiB event in 64 KiB reads
    # would otherwise be searched 1024 times over.
    searched = []
    real_rfind = bytearray.rfind

    class Counting(bytearray):
        def rfind(self, sub, start=0, *rest):
            searched.append(len(self) - start)
            return real_rfind(self, sub, start, *rest)
    passing = gp.PassingStream(gp.Exchange("r", "openai", "generate"),
                               gp.UPSTREAM_KINDS["openai"], "text/event-stream", 64 * gp.MiB,
                               gp.Redactor())
    passing.held = Counting()
    for i in range(200):
        out, _ = passing.take(b'data: "' if i == 0 else b"x" * 65536)
        assert out == b""
    out, _ = passing.take(b'"\n\n')
    assert out.startswith(b'data: "') and out.endswith(b'"\n\n')
    assert max(searched) <= 65536 + 3 and sum(searched) < 2 * 200 * 65536


def _passing(kind):
    return gp.PassingStream(gp.Exchange("r", "openai", "generate"), gp.UPSTREAM_KINDS[kind],
                            "text/event-stream", gp.MiB, gp.Redactor())


def test_a_passed_through_stream_notices_its_end_usage_and_text_in_a_read_of_many_events():
    def event(delta, finish=None, **extra):
        return b"data: " + json.dumps(dict({"choices": [{"index": 0, "delta": delta,
                                                         "finish_reason": finish}]},
                                           **extra)).encode() + b"\n\n"
    passing = _passing("openai")
    # "[DONE]" or a finish in the text is no end; null is no finish
    out, events = passing.take(b"".join(event({"content": "say [DONE] or"}) for _ in range(3)) +
                               event({"content": '"finish_reason": "stop"'}))
    assert len(events) == 4 and not passing.ended and passing.ex.usage is None
    assert passing.text_chars == 3 * len("say [DONE] or") + len('\\"finish_reason\\": \\"stop\\"')
    passing.take(event({}, "stop") + event({}, usage={"prompt_tokens": 5,
                                                      "completion_tokens": 7}))
    assert passing.ended and (passing.ex.usage.input_tokens,
                              passing.ex.usage.output_tokens) == (5, 7)
    # [DONE] alone ends a stream that sent no finish (some servers do)
    bare = _passing("openai")
    bare.take(event({"content": "hi"}) + b"data: [DONE]\n\n")
    assert bare.ended
    for kind, last in (("gemini", b'{"candidates": [{"finishReason": "STOP"}]}'),
                       ("anthropic", b'{"type": "message_stop"}'),
                       ("openai-responses", b'{"type": "response.completed"}')):
        other = _passing(kind)
        other.take(b'data: {"x": 1}\n\ndata: {"y": 2}\n\n')
        assert not other.ended, kind
        other.take(b'data: {"z": 3}\n\ndata: ' + last + b"\n\n")
        assert other.ended, kind
    # Gemini's JSON-array form has no events: its end is looked for in the bytes, across
    # reads
    array = gp.PassingStream(gp.Exchange("r", "gemini", "generate"), gp.UPSTREAM_KINDS["gemini"],
                             "application/json", gp.MiB, gp.Redactor())
    array.take(b'[{"candidates": [{"content": {"parts": [{"text": "finishReason"}]}}]}')
    assert not array.ended
    array.take(b',\r\n{"candidates": [{"finishRea')
    assert not array.ended
    array.take(b'son": "STOP"}]}]')
    assert array.ended


def test_a_stop_waits_for_each_requests_end_after_its_client_has_the_answer(proxy_factory):
    # The client has its answer before the request's end counts what it spent against
    # its limits (a shared store's round trip); a stop must not close the proxy, and let
    # the process exit, in between. The count is held up here until the stop has begun.
    running = proxy_factory({"upstreams": {"echo": {"kind": "echo"}},
                             "server": {"api_keys": [{"key": "team-key", "name": "team",
                                                      "tokens_per_day": 1000000}]}})
    app = running.server.proxy
    # In a worker, where a count through a shared store is made (the event loop hands a
    # request whose client's limits are shared to one: Proxy.handle).
    app.runs_on_loop = lambda pipe, body: False
    order, closing = [], threading.Event()
    spent, close = app.limits.spent, app.close

    def slow_spent(client, tokens):
        wait_for(lambda: running.server._draining, message="the stop to begin")
        closing.wait(2.0)      # long enough for a close that does not wait to come first
        spent(client, tokens)
        order.append("spent")

    def closed():
        closing.set()
        order.append("closed")
        close()
    app.limits.spent, app.close = slow_spent, closed
    status, _ = running.post("/v1/chat/completions", {
        "model": "m", "messages": [{"role": "user", "content": "hi"}]},
        {"authorization": "Bearer team-key"})
    assert status == 200
    running.stop()
    assert order == ["spent", "closed"]
