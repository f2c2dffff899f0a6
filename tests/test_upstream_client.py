"""The upstream side: timeouts, unreachable upstreams, retries, keep-alive, HTTP(S) proxies,
TLS, and detailed logs."""

import glob
import json
import os
import select
import socket
import threading
import time

import pytest

import gemini_proxy as gp
from conftest import PATIENCE, wait_for
from fake_upstream import (chunk, completion, hang, json_reply, pause_after,
                           raw_reply, sse, text_stream)

# A stall far longer than the timeout meant to cut it (it ends when the fake stops), so a
# busy machine cannot make the upstream's answer win the race.
STALL = 2 * PATIENCE

GENERATE = "/v1beta/models/gemini-2.5-pro:generateContent"
STREAM = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
HELLO = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def config_for(base_url, **upstream):
    return {"upstreams": {"up": dict({"base_url": base_url, "api_key": "sk-up-secret-99"},
                                     **upstream)}, "default_model": "m"}


def test_first_byte_timeout_is_504(proxy_factory, fake):
    proxy = proxy_factory(config_for(fake.base_url, first_byte_timeout=0.3, retries=0))
    fake.queue(hang(STALL))
    status, body = proxy.post(GENERATE, HELLO)
    assert status == 504 and body["error"]["status"] == "DEADLINE_EXCEEDED"
    assert "sent nothing within 0.3s" in body["error"]["message"]


def test_slow_first_event_is_a_real_504(proxy_factory, fake):
    from fake_upstream import chunk, stream_reply
    proxy = proxy_factory(config_for(fake.base_url, first_byte_timeout=0.3, retries=0))
    fake.queue(stream_reply([chunk({"content": "late"})], delay=STALL))
    status, _, data = proxy.request("POST", STREAM, HELLO)
    assert status == 504       # nothing was sent yet, so the client gets a real error


def test_stall_mid_stream_ends_without_finish_reason(proxy_factory, fake):
    from conftest import sse_payloads
    from fake_upstream import chunk, sse

    def stall(handler, request):
        handler.start_stream()
        handler.write_chunk(sse(chunk({"content": "first words"})).encode())
        handler.pause(STALL)
        handler.write_chunk(sse(chunk({"content": "too late"})).encode())
        handler.end_stream()
    proxy = proxy_factory(config_for(fake.base_url, read_timeout=0.3))
    fake.queue(stall)
    status, _, data = proxy.request("POST", STREAM, HELLO)
    assert status == 200
    payloads = sse_payloads(data)
    assert payloads[0]["candidates"][0]["content"]["parts"] == [{"text": "first words"}]
    assert all("finishReason" not in p["candidates"][0] for p in payloads)
    assert b"too late" not in data
    assert proxy.server.proxy.pool.open == 0     # the stalled connection was dropped


def test_unreachable_upstream_is_502(proxy_factory):
    from faults import closed_port
    port = closed_port()
    proxy = proxy_factory(config_for("http://127.0.0.1:%d/v1" % port))
    status, body = proxy.post(GENERATE, HELLO)
    assert status == 502 and body["error"]["status"] == "UNAVAILABLE"
    assert "cannot reach upstream 'up'" in body["error"]["message"]


def test_retries_before_the_first_byte(proxy_factory, fake):
    proxy = proxy_factory(config_for(fake.base_url, retries=2, retry_wait=0.01))
    fake.queue(json_reply({"error": {"message": "oops"}}, status=500),
               raw_reply("busy", status=503),
               json_reply(completion("third time lucky")))
    status, body = proxy.post(GENERATE, HELLO)
    assert status == 200 and "third time lucky" in json.dumps(body)
    assert len(fake.requests) == 3
    fake.queue(json_reply({"error": {"message": "bad field"}}, status=400))
    status, body = proxy.post(GENERATE, HELLO)
    assert status == 400 and len(fake.requests) == 4     # never retried


def test_retries_run_out(proxy_factory, fake):
    proxy = proxy_factory(config_for(fake.base_url, retries=1, retry_wait=0.01))
    fake.queue(raw_reply("busy", status=503), raw_reply("still busy", status=503))
    status, body = proxy.post(GENERATE, HELLO)
    assert status == 503 and "still busy" in body["error"]["message"]


def read_request(conn):
    """One whole request from a connection (head and Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([line for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(body) < length:
        body += conn.recv(65536)


def answer_fresh(conn):
    reply = json.dumps(completion("fresh")).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply))


class ClosingUpstream:
    """Answers each request and closes the connection without saying so: the pooled
    keep-alive connection is dead by the time it is reused."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.connections = 0
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._handle(conn, self.connections)

    def _handle(self, conn, number):
        read_request(conn)
        answer_fresh(conn)
        conn.close()

    def close(self):
        self.sock.close()


def test_dead_keep_alive_connection_is_replaced(proxy_factory):
    upstream = ClosingUpstream()
    try:
        proxy = proxy_factory(config_for("http://127.0.0.1:%d/v1" % upstream.port))
        for _ in range(3):
            status, body = proxy.post(GENERATE, HELLO)
            assert status == 200 and "fresh" in json.dumps(body)
            # The connection goes back to the pool as the request ends in the proxy, a
            # moment after the answer: wait, so the next request finds it there, dead.
            proxy.wait_until_idle()
        assert upstream.connections == 3
        assert proxy.server.proxy.pool.open <= 1
    finally:
        upstream.close()


class CloseOnReuseUpstream(ClosingUpstream):
    """Answers the first request on each connection and keeps it open; closes it, with no
    answer, when a second request comes on it: a pooled connection that looks alive and
    dies under the request. The first answers wait until `together` connections have
    asked, so that as many are idle in the pool afterwards."""

    def __init__(self, together):
        self._together = threading.Barrier(together)
        self._open = []
        super().__init__()

    def _handle(self, conn, number):
        self._open.append(conn)
        threading.Thread(target=self._answer_once, args=(conn, number), daemon=True).start()

    def _answer_once(self, conn, number):
        read_request(conn)
        if number <= self._together.parties:
            self._together.wait(PATIENCE)
        answer_fresh(conn)
        try:
            if conn.recv(65536):   # a request on a connection already used: closed unanswered
                conn.close()
        except OSError:            # closed by close(), at the test's end
            pass

    def close(self):
        super().close()
        for conn in self._open:
            conn.close()


def test_a_dead_pooled_connection_is_retried_on_a_new_one(proxy_factory):
    # Two idle connections die alike; the retry of a request that met one must not take
    # the other (with retries: 0, that was a 502 the upstream never caused).
    upstream = CloseOnReuseUpstream(together=2)
    try:
        proxy = proxy_factory(config_for("http://127.0.0.1:%d/v1" % upstream.port,
                                         retries=0))
        answers = []
        askers = [threading.Thread(target=lambda: answers.append(proxy.post(GENERATE, HELLO)))
                  for _ in range(2)]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join(PATIENCE)
        assert [status for status, _ in answers] == [200, 200]
        proxy.wait_until_idle()
        assert proxy.server.proxy.pool.idle == 2
        status, body = proxy.post(GENERATE, HELLO)
        assert status == 200 and "fresh" in json.dumps(body)
        assert upstream.connections == 3
    finally:
        upstream.close()


class ConnectProxy:
    """A minimal forward proxy: CONNECT tunnels, and absolute-form plain HTTP requests."""

    def __init__(self, refuse=b""):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.seen = []
        self.refuse = refuse         # a reply to CONNECT instead of a tunnel
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        data = b""
        while b"\r\n\r\n" not in data:
            more = client.recv(65536)
            if not more:
                return
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.seen.append(lines)
        method, target, _ = lines[0].split(" ")
        if method == "CONNECT" and self.refuse:
            client.sendall(self.refuse)
            client.close()
            return
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            netloc = target.split("/")[2]
            host, port = netloc.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            upstream.sendall(data)
        self._pipe(client, upstream)

    @staticmethod
    def _pipe(a, b):
        socks = [a, b]
        try:
            while True:
                readable, _, _ = select.select(socks, [], [], PATIENCE)
                if not readable:
                    return
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            pass
        finally:
            a.close()
            b.close()

    def close(self):
        self.sock.close()


def test_http_proxy_and_no_proxy(proxy_factory, fake):
    forward = ConnectProxy()
    try:
        proxy_url = "http://alice:s3cret@127.0.0.1:%d" % forward.port
        proxy = proxy_factory(config_for(fake.base_url), environ={"HTTP_PROXY": proxy_url})
        fake.queue(json_reply(completion("via proxy")))
        assert proxy.post(GENERATE, HELLO)[0] == 200
        request_line = forward.seen[0][0]
        assert request_line.startswith("POST %s/chat/completions " % fake.base_url)
        assert "proxy-authorization: Basic YWxpY2U6czNjcmV0" in forward.seen[0]
        bypass = proxy_factory(config_for(fake.base_url),
                               environ={"HTTP_PROXY": proxy_url, "NO_PROXY": "localhost,127.0.0.1"})
        fake.queue(json_reply(completion("direct")))
        assert bypass.post(GENERATE, HELLO)[0] == 200
        assert len(forward.seen) == 1
    finally:
        forward.close()


@pytest.mark.parametrize("host, port, no_proxy, bypassed", [
    ("api.example.com", 443, "example.com", True),
    ("api.example.com", 443, ".example.com", True),
    ("example.com", 443, "example.com", True),
    ("badexample.com", 443, "example.com", False),
    ("api.example.com", 443, "api.example.com:8443", False),
    ("api.example.com", 8443, "api.example.com:8443", True),
    ("anything", 80, "*", True),
    ("anything", 80, "", False),
])
def test_no_proxy_rules(host, port, no_proxy, bypassed):
    target = gp.upstream_target("http://%s:%d/v1" % (host, port), {
        "HTTP_PROXY": "http://proxy.example:3128", "NO_PROXY": no_proxy})
    assert (target.proxy is None) is bypassed


@pytest.mark.parametrize("environ, found", [
    ({"HTTPS_PROXY": "upper:1", "https_proxy": "lower:2"}, {"https": "lower:2"}),
    ({"https_proxy": "lower:2", "HTTPS_PROXY": "upper:1"}, {"https": "lower:2"}),
    ({"HTTP_PROXY": "http:3", "NO_PROXY": "a.example", "ALL_PROXY": ""},
     {"http": "http:3", "no": "a.example"}),
    ({"HTTP_PROXY": "from-a-header:4", "REQUEST_METHOD": "GET", "https_proxy": "ok:5"},
     {"https": "ok:5"}),      # a CGI request's HTTP_PROXY may be its client's Proxy header
    ({"HOME": "/root", "proxy": "not-a-proxy-variable"}, {}),
    ({"HTTPS_PROXY": "http://corp:3128", "https_proxy": ""}, {}),     # unset for this run
    ({"NO_PROXY": "api.example", "no_proxy": "", "HTTP_PROXY": "p:1"}, {"http": "p:1"}),
    ({"http_proxy": "lower:6", "REQUEST_METHOD": "GET"}, {"http": "lower:6"}),
])
def test_the_proxies_an_environment_names(environ, found):
    assert gp.proxies_named_in(environ) == found


def test_https_upstream_through_a_connect_tunnel(proxy_factory, tls_fake, monkeypatch):
    upstream, cert = tls_fake
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    forward = ConnectProxy()
    try:
        proxy = proxy_factory(config_for(upstream.base_url), environ={
            "HTTPS_PROXY": "127.0.0.1:%d" % forward.port})
        for i in range(2):
            upstream.queue(text_stream("secure %d" % i, pieces=1))
            status, _, data = proxy.request("POST", STREAM, HELLO)
            assert status == 200 and ("secure %d" % i).encode() in data
        assert forward.seen[0][0].startswith("CONNECT 127.0.0.1:%d " % upstream.port)
        assert len(forward.seen) == 1          # the TLS connection was kept alive
        assert upstream.requests[0]["headers"]["authorization"] == "Bearer sk-up-secret-99"
    finally:
        forward.close()


def test_a_fresh_tls_connection_lets_go_of_its_thread_while_the_upstream_thinks(
        proxy_factory, tls_fake, monkeypatch):
    """TLS 1.3 sends its session tickets after the handshake: a fresh connection is
    readable with no reply behind it. With one worker, three requests, each on a new
    connection, held at the upstream before their replies all reach it at once."""
    from test_scale import all_at_the_upstream, held_before_reply
    upstream, cert = tls_fake
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    proxy = proxy_factory(dict(config_for(upstream.base_url), server={"workers": 1}))
    count, held, all_in = 3, [0], threading.Event()
    upstream.queue(*[held_before_reply(json_reply(completion("thought")), held, all_in, count)
                     for _ in range(count)])
    answers = []
    all_at_the_upstream([lambda: answers.append(proxy.post(GENERATE, HELLO,
                                                           timeout=PATIENCE * 3))] * count,
                        all_in, held)
    assert [status for status, _ in answers] == [200] * count, answers
    assert proxy.server.proxy.pool.created == count


def test_a_tls_close_while_a_stream_waits_for_its_first_answer_ends_it_at_once(
        proxy_factory, tls_fake, monkeypatch):
    """A server that closes TLS (close_notify) and then waits for the client's close
    before its own FIN: the socket looks quiet after that record. A stream waiting after
    its first bytes (a role-only delta) fails at once, not after read_timeout."""
    upstream, cert = tls_fake
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    proxy = proxy_factory(config_for(upstream.base_url, retries=0,
                                     read_timeout=PATIENCE * 10))
    app, close_now = proxy.server.proxy, threading.Event()

    def role_then_tls_close(handler, request):
        handler.start_stream()
        handler.write_chunk(sse(chunk({"role": "assistant", "content": ""})).encode())
        handler.close_connection = True
        close_now.wait(PATIENCE)
        try:
            handler.connection.unwrap()    # close_notify, then wait for the proxy's close
        except (OSError, ValueError):
            pass
    upstream.queue(role_then_tls_close)
    answers = []
    asker = threading.Thread(target=lambda: answers.append(proxy.post(STREAM, HELLO)),
                             daemon=True)
    asker.start()
    try:
        # The close comes while the request waits without its thread (the event loop
        # wakes it, and it reads the close in its wait).
        wait_for(lambda: upstream.requests and app.active == 1 and app.working == 0,
                 message="the stream waiting after its first bytes, no thread held")
    finally:
        close_now.set()
        asker.join(PATIENCE)
    assert answers and answers[0][0] == 502, answers


def test_a_wait_for_a_streams_next_bytes_counts_the_silence_already_waited(fake):
    """A worker's read of a stream waits a little (EVENT_GAP_GRACE) before its request
    lets go of the thread; the wait that follows is timed from the silence's start, so
    read_timeout is not stretched by that little (here: a silence longer than it already
    ends the wait at once, with no wait at all)."""
    fake.queue(pause_after(text_stream("never read"), until=threading.Event(), seconds=STALL))
    pool = gp.ConnectionPool()
    response = gp.run_through(gp.opening_upstream(
        pool, gp.upstream_target(fake.base_url, {}), "up", "POST", "/v1/chat/completions",
        b'{"stream": true}', [], gp.Timeouts(10, 30, 5), 8))
    try:
        assert next(response.raw_chunks())   # the first piece: then nothing more comes
        response._silent_since = time.monotonic() - 6   # as a read that said None notes it
        waiting = response.awaiting_body(first=False)
        with pytest.raises(gp.UpstreamError) as raised:
            next(waiting)
        assert raised.value.status == 504 and "went silent for 5s" in raised.value.message
    finally:
        response.close(reuse=False)
        pool.close_all()


def test_a_stream_silent_after_half_a_chunk_size_line_times_out(proxy_factory, fake):
    """A part of the chunked framing alone counts as bytes to read, but no read gets
    anything of it: the silence's read_timeout still ends the request (it once went on
    waiting a grace at a time, the silence's clock restarted each time)."""
    proxy = proxy_factory(config_for(fake.base_url, retries=0, read_timeout=0.5))
    released = threading.Event()

    def role_then_half_a_size_line(handler, request):
        handler.start_stream()
        handler.write_chunk(sse(chunk({"role": "assistant", "content": ""})).encode())
        handler.wfile.write(b"3")    # the start of the next chunk's size line
        handler.wfile.flush()
        handler.pause(STALL, until=released)
    fake.queue(role_then_half_a_size_line)
    try:
        status, body = proxy.post(STREAM, HELLO)
    finally:
        released.set()
    assert status == 504 and "went silent for 0.5s" in body["error"]["message"], body


def test_tls_settings_are_made_for_the_first_https_connection_only(proxy_factory, fake,
                                                                   tls_fake, monkeypatch):
    # (Loading the system's CA certificates costs a start 20 ms and 2.4 MB; a proxy of
    # local upstreams never needs them.)
    upstream, cert = tls_fake
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    proxy = proxy_factory({"upstreams": {
        "plain": {"kind": "openai", "base_url": fake.base_url, "api_key": "k-1"},
        "tls": {"kind": "openai", "base_url": upstream.base_url, "api_key": "k-2"}},
        "routes": [{"model": "secure", "upstream": "tls"}], "default_upstream": "plain"})
    pool = proxy.server.proxy.pool
    fake.queue(text_stream("plain", pieces=1))
    status, _, data = proxy.request("POST", STREAM, HELLO)
    assert status == 200 and b"plain" in data and pool._tls is None
    upstream.queue(text_stream("secure", pieces=1))
    status, _, data = proxy.request("POST", STREAM.replace("gemini-2.5-pro", "secure"), HELLO)
    assert status == 200 and b"secure" in data and pool._tls is not None


def test_a_stream_passed_through_from_tls_arrives_whole_on_a_kept_connection(
        proxy_factory, tls_fake, monkeypatch):
    # The event loop reads a passed-through stream itself, the socket non-blocking: TLS
    # records bigger than a read, events that come apart, and then the same connection,
    # back in the pool, serves the next request.
    upstream, cert = tls_fake
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    proxy = proxy_factory(config_for(upstream.base_url))
    text = "".join("word%d " % i for i in range(3000)) + "x" * 70000
    for _ in range(2):
        upstream.queue(text_stream(text, pieces=30, delay=0.005))
        status, _, data = proxy.request("POST", "/v1/chat/completions", {
            "model": "m", "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
        assert status == 200
        events = [line[6:] for line in data.decode().split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                       if c.get("choices")) == text
    assert proxy.server.proxy.pool.created == 1
    assert len(upstream.requests) == 2


def test_a_tunnel_the_https_proxy_refuses_is_a_502_that_says_why(proxy_factory):
    forward = ConnectProxy(refuse=b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                  b"Content-Length: 0\r\n\r\n")
    try:
        proxy = proxy_factory(config_for("https://upstream.example/v1"), environ={
            "HTTPS_PROXY": "127.0.0.1:%d" % forward.port})
        status, body = proxy.post(GENERATE, HELLO)
        message = body["error"]["message"]
        assert status == 502 and "refused a tunnel to upstream.example:443 (407" in message
        assert "credentials" in message
        assert forward.seen[0][0].startswith("CONNECT upstream.example:443 ")
    finally:
        forward.close()


def test_an_http_proxy_that_refuses_the_connection_is_named_in_the_502(proxy_factory, fake):
    """The upstream is up; the HTTP proxy on the way is not: the message says which."""
    closed = socket.socket()      # bound, never listening: a connection to it is refused
    closed.bind(("127.0.0.1", 0))
    try:
        port = closed.getsockname()[1]
        proxy = proxy_factory(config_for(fake.base_url), environ={
            "HTTP_PROXY": "http://127.0.0.1:%d" % port})
        status, body = proxy.post(GENERATE, HELLO)
        assert status == 502 and "through the HTTP proxy 127.0.0.1:%d" % port in \
            body["error"]["message"], body
        assert fake.requests == []
    finally:
        closed.close()


def test_untrusted_certificate_is_refused(proxy_factory, tls_fake):
    upstream, _ = tls_fake
    proxy = proxy_factory(config_for(upstream.base_url))
    status, body = proxy.post(GENERATE, HELLO)
    assert status == 502 and "cannot reach upstream" in body["error"]["message"]
    assert upstream.requests == []


def test_detailed_logs_have_four_stages_and_no_secrets(proxy_factory, fake, tmp_path):
    raw = config_for(fake.base_url)
    raw["server"] = {"api_keys": ["client-secret-key"]}
    raw["logging"] = {"detailed": True, "log_dir": str(tmp_path)}
    proxy = proxy_factory(raw)
    fake.queue(json_reply({"error": {"message": "upstream echoes sk-up-secret-99"}},
                          status=400))
    proxy.post(GENERATE, HELLO, headers={"x-goog-api-key": "client-secret-key"})
    fake.queue(text_stream("logged stream", pieces=1))
    proxy.request("POST", STREAM + "&key=client-secret-key", HELLO)
    proxy.wait_until_idle()     # a request's log is closed as it ends in the proxy
    files = sorted(glob.glob(os.path.join(str(tmp_path), "*", "*.log")))
    assert len(files) == 2
    for path in files:
        text = open(path, encoding="utf-8").read()
        for stage in ("1. client request", "2. upstream request", "3. upstream response",
                      "4. client response"):
            assert "=== " + stage in text, (stage, path)
        assert "client-secret-key" not in text and "sk-up-secret-99" not in text
        assert "[REDACTED]" in text
    stream_log = next(open(p).read() for p in files if "streamGenerateContent" in open(p).read())
    upstream_part, client_part = stream_log.split("=== 3. upstream response")[1].split(
        "=== 4. client response")
    assert '"content": "logged stream"' in upstream_part      # the raw upstream SSE
    assert '{"text":"logged stream"}' in client_part           # what the client got


def test_reading_a_reply_allocates_about_its_size(proxy_factory, fake):
    # Python 3.8's HTTPResponse.read(n) allocates n bytes up front; asking it for "up to
    # the limit" cost a 256 MiB buffer (and ~250 ms) per request.
    import tracemalloc
    proxy = proxy_factory(config_for(fake.base_url))
    fake.queue(json_reply(completion("small")))
    tracemalloc.start()
    try:
        status, _ = proxy.post(GENERATE, HELLO)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 200
    assert peak < 16 * 1024 * 1024, peak
