"""The server (section 28) over raw sockets: the real server on 127.0.0.1, fed the bytes
http.client would never send. Errors come back in the Gemini shape {"error": {code,
message, status}}; a request whose framing is unknown is answered and its connection
closed; one bad client never disturbs another.

Nothing here depends on the machine's speed: a server timeout meant to fire is short and
every other one is a minute; waits for the server to answer or to close end as soon as it
does (PATIENCE is only how long a broken server gets)."""

import base64
import json
import select
import socket
import struct
import threading
import time

import pytest

from conftest import PATIENCE, RunningProxy, make_config, sse_payloads, wait_for
from fake_upstream import completion, json_reply, pause_after, text_stream, usage

LONG = 2 * PATIENCE     # a server timeout that must not fire in a test
SHORT = 0.5             # one that must

GENERATE = "/v1beta/models/gemini-2.5-pro:generateContent"
STREAM = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
REQUEST = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def config(fake, **server):
    """A proxy config in front of the fake upstream, on a free port."""
    return {"upstreams": {"fake": {"base_url": fake.base_url}},
            "default_model": "fake-model",
            "server": dict({"port": 0}, **server)}


@pytest.fixture
def server(proxy_factory, fake):
    return proxy_factory(config(fake))


class Response:
    def __init__(self, version, status, headers, body):
        self.version, self.status, self.headers, self.body = version, status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %d %r %r>" % (self.status, self.headers, self.body[:200])


class Client:
    """One raw connection: sends any bytes, reads responses off a buffer of its own so
    pipelined responses are separated exactly where their framing says."""

    def __init__(self, port, timeout=PATIENCE):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection; unread: %r" % self.buf[:200])
        self.buf += data

    def _take(self, n):
        while len(self.buf) < n:
            self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def response(self, method="GET"):
        while b"\r\n\r\n" not in self.buf:
            self._more()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        version, status, _ = (lines[0] + " ").split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon and name == name.strip(), "bad response header line %r" % line
            headers[name.lower()] = value.strip()
        status = int(status)
        if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if not size:
                    while self._line():
                        pass
                    break
                body += self._take(size)
                assert self._take(2) == b"\r\n"
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        else:
            body = self.rest()
        return Response(version, status, headers, body)

    def rest(self, within=PATIENCE):
        """Everything the server sends until it closes; fails if it has not closed
        `within` seconds from now."""
        deadline = time.monotonic() + within
        data, self.buf = self.buf, b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail("the server did not close the connection within %gs" % within)
            self.sock.settimeout(left)
            try:
                more = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return data
            if not more:
                return data
            data += more

    def closed_quietly(self, within=PATIENCE):
        return self.rest(within) == b""

    def answered_or_closed(self):
        """Whether the server has sent something, or closed, without waiting for it."""
        return bool(select.select([self.sock], [], [], 0)[0])


def raw_request(method, target, body=b"", headers=(), version="HTTP/1.1"):
    lines = ["%s %s %s" % (method, target, version), "Host: 127.0.0.1"]
    lines += list(headers)
    if body and not any(h.lower().startswith(("content-length", "transfer-encoding"))
                        for h in headers):
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def post_json(target, payload, headers=(), version="HTTP/1.1"):
    return raw_request("POST", target, json.dumps(payload).encode(),
                       ["Content-Type: application/json"] + list(headers), version)


def gemini_error(response, status):
    """The error object of a Gemini-shaped error response, checked."""
    assert response.status == status, response
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert list(payload) == ["error"]
    error = payload["error"]
    assert error["code"] == status
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["status"], str) and error["status"].isupper()
    return error


def answer_and_close(proxy, data, within=PATIENCE):
    """Send `data` on a fresh connection; the one response and whether the server
    then closed the connection without sending anything else."""
    client = Client(proxy.port)
    try:
        client.send(data)
        response = client.response()
        return response, client.closed_quietly(within)
    finally:
        client.close()


# ---- malformed and hostile requests --------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET\r\nHost: x\r\n\r\n",
    b"GET /health  HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1 x\r\nHost: x\r\n\r\n",
    b"GET /he\x7flth HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: a\r\n b\r\n\r\n",         # obs-fold
    b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n",                          # space before colon
    b"GET /health HTTP/1.1\r\nHost: x\nX-Smuggle: 1\r\n\r\n",             # bare LF
    b"GET /health HTTP/1.1\r\nHost: x\rX-Smuggle: 1\r\n\r\n",             # bare CR
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",            # NUL in a value
])
def test_malformed_request_gets_gemini_400_and_the_connection_closes(server, data):
    response, closed = answer_and_close(server, data + raw_request("GET", "/health"))
    error = gemini_error(response, 400)
    assert error["status"] == "INVALID_ARGUMENT"
    assert response.headers.get("connection") == "close"
    assert closed, "the request after a malformed one must not be answered"


def test_unsupported_http_version_is_505(server):
    response, closed = answer_and_close(server, b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n")
    gemini_error(response, 505)
    assert closed


@pytest.mark.parametrize("framing", [
    ["Content-Length: 5", "Transfer-Encoding: chunked"],
    ["Transfer-Encoding: chunked", "Content-Length: 5"],
    ["Content-Length: 5", "Content-Length: 6"],
    ["Content-Length: 5, 6"],
    ["Content-Length: -5"],
    ["Content-Length: \xb2"],            # a latin-1 "digit" that int() refuses
])
def test_smuggling_shapes_are_400_and_nothing_after_them_is_answered(server, fake, framing):
    smuggled = raw_request("POST", GENERATE, json.dumps(REQUEST).encode(),
                           ["Content-Type: application/json"])
    data = raw_request("POST", GENERATE, b"0\r\n\r\n", framing) + smuggled
    response, closed = answer_and_close(server, data)
    gemini_error(response, 400)
    assert response.headers.get("connection") == "close"
    assert closed
    assert fake.requests == []


def test_chunked_in_http10_is_400(server, fake):
    data = raw_request("POST", GENERATE, b"0\r\n\r\n", ["Transfer-Encoding: chunked"],
                       version="HTTP/1.0")
    response, closed = answer_and_close(server, data)
    gemini_error(response, 400)
    assert closed and fake.requests == []


@pytest.mark.parametrize("coding, statuses", [
    ("gzip, chunked", (400, 501)),
    ("chunked, gzip", (400,)),           # RFC 9112 6.3: chunked not last -> 400 and close
])
def test_unsupported_transfer_coding_is_refused_and_closed(server, fake, coding, statuses):
    data = raw_request("POST", GENERATE, b"0\r\n\r\n", ["Transfer-Encoding: " + coding])
    response, closed = answer_and_close(server, data)
    assert response.status in statuses, response
    gemini_error(response, response.status)
    assert closed and fake.requests == []


def test_http11_request_without_host_is_400(server):
    # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request that lacks Host.
    response, _ = answer_and_close(server,
                                   b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    gemini_error(response, 400)


def test_duplicate_host_is_400(server):
    # RFC 9112 3.2: ... and to any request with more than one Host field line.
    response, _ = answer_and_close(
        server, b"GET /health HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n"
                b"Connection: close\r\n\r\n")
    gemini_error(response, 400)


def test_http10_request_without_host_is_fine(server):
    response, _ = answer_and_close(server, b"GET /health HTTP/1.0\r\n\r\n")
    assert response.status == 200


def test_header_too_large_is_431(server):
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    response, closed = answer_and_close(server, big)
    gemini_error(response, 431)
    assert closed


def test_endless_head_is_431_before_it_ends(proxy_factory, fake):
    proxy = proxy_factory(config(fake, max_head_bytes=1024))
    client = Client(proxy.port)
    try:
        client.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000)
        gemini_error(client.response(), 431)   # no blank line was ever sent
        assert client.closed_quietly()
    finally:
        client.close()


def test_too_many_headers_is_431(server):
    fields = "".join("X-H%d: v\r\n" % i for i in range(150)).encode()
    response, closed = answer_and_close(
        server, b"GET /health HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    gemini_error(response, 431)
    assert closed


def test_body_over_the_limit_is_413_without_reading_it(proxy_factory, fake):
    proxy = proxy_factory(config(fake, max_body_bytes=1000))
    client = Client(proxy.port)
    try:
        # Only the head: a proxy that waited for the 5000 bytes would time the test out
        # (and then answer 408, after body_timeout: a minute).
        client.send(raw_request("POST", GENERATE, headers=["Content-Type: application/json",
                                                           "Content-Length: 5000"]))
        response = client.response()
        error = gemini_error(response, 413)
        assert "1000" in error["message"]
        assert response.headers.get("connection") == "close"
        assert client.closed_quietly()
    finally:
        client.close()
    assert fake.requests == []


def test_body_at_the_limit_is_accepted(proxy_factory, fake):
    proxy = proxy_factory(config(fake, max_body_bytes=1000))
    body = json.dumps(REQUEST).encode()
    body += b" " * (1000 - len(body))
    fake.queue(json_reply(completion("fits")))
    client = Client(proxy.port)
    try:
        client.send(raw_request("POST", GENERATE, body, ["Content-Type: application/json"]))
        response = client.response()
        assert response.status == 200, response
        assert response.json()["candidates"][0]["content"]["parts"] == [{"text": "fits"}]
    finally:
        client.close()


def test_chunked_body_over_the_limit_is_413(proxy_factory, fake):
    proxy = proxy_factory(config(fake, max_body_bytes=1000))
    client = Client(proxy.port)
    try:
        client.send(raw_request("POST", GENERATE, headers=["Transfer-Encoding: chunked"]) +
                    b"400\r\n" + b"x" * 1024 + b"\r\n")
        gemini_error(client.response(), 413)
        assert client.rest() == b""
    finally:
        client.close()
    assert fake.requests == []


def test_413_reaches_a_client_that_sent_its_whole_body(proxy_factory, fake):
    """A client without Expect: 100-continue sends the body straight after the head. The
    413 must still reach it, not a connection reset (RFC 9112 9.6, lingering close)."""
    proxy = proxy_factory(config(fake, max_body_bytes=1000))
    client = Client(proxy.port)
    body = b'{"contents": "' + b"x" * (256 * 1024) + b'"}'
    sender = threading.Thread(target=lambda: _send_ignoring_errors(
        client, raw_request("POST", GENERATE, body, ["Content-Type: application/json"])))
    sender.start()
    try:
        response = client.response()
        gemini_error(response, 413)
    finally:
        client.close()
        sender.join(PATIENCE)


def _send_ignoring_errors(client, data):
    try:
        client.send(data)
    except OSError:
        pass


def test_bad_chunk_size_is_400_and_closes(server, fake):
    data = raw_request("POST", GENERATE, headers=["Transfer-Encoding: chunked"]) + \
        b"0x10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n" + raw_request("GET", "/health")
    response, closed = answer_and_close(server, data)
    gemini_error(response, 400)
    assert closed and fake.requests == []


def test_chunk_data_longer_than_its_size_is_400(server, fake):
    data = raw_request("POST", GENERATE, headers=["Transfer-Encoding: chunked"]) + \
        b"2\r\n{}extra\r\n0\r\n\r\n"
    response, closed = answer_and_close(server, data)
    gemini_error(response, 400)
    assert closed and fake.requests == []


def test_chunk_lines_ended_by_lf_alone_are_400_at_once(server, fake):
    # (No CRLF would ever come to end the line: the body used to wait for body_timeout,
    # then a 408.)
    data = raw_request("POST", GENERATE, headers=["Transfer-Encoding: chunked"]) + \
        b"2\n{}\n0\n\n"
    response, closed = answer_and_close(server, data)
    gemini_error(response, 400)
    assert "without its CR" in response.json()["error"]["message"]
    assert closed and fake.requests == []


# ---- bad payloads and routing --------------------------------------------------------------

def test_invalid_json_is_400_naming_the_problem(server, fake):
    client = Client(server.port)
    try:
        client.send(raw_request("POST", GENERATE, b'{"contents": [', ["Content-Type: x"]))
        error = gemini_error(client.response(), 400)
        assert "JSON" in error["message"]
        assert error["status"] == "INVALID_ARGUMENT"
        # the framing was fine, so the connection carries on
        client.send(raw_request("GET", "/health"))
        assert client.response().status == 200
    finally:
        client.close()
    assert fake.requests == []


def test_empty_body_is_400(server, fake):
    status, body = server.post(GENERATE, b"")
    assert status == 400
    assert body["error"]["code"] == 400 and "empty" in body["error"]["message"]
    assert fake.requests == []


def test_unknown_request_field_is_400_naming_it(server, fake):
    status, body = server.post(GENERATE, dict(REQUEST, bogus=1))
    assert status == 400
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert '"bogus"' in body["error"]["message"]
    assert fake.requests == []


def test_unknown_part_field_is_400_naming_it(server, fake):
    payload = {"contents": [{"role": "user", "parts": [{"text": "Hi", "sparkle": True}]}]}
    status, body = server.post(GENERATE, payload)
    assert status == 400
    assert "sparkle" in body["error"]["message"]
    assert "contents[0].parts[0]" in body["error"]["message"]
    assert fake.requests == []


@pytest.mark.parametrize("role", ["assistant", "system", "tool", "USER"])
def test_wrong_role_is_400(server, fake, role):
    payload = {"contents": [{"role": role, "parts": [{"text": "Hi"}]}]}
    status, body = server.post(GENERATE, payload)
    assert status == 400
    assert "contents[0].role" in body["error"]["message"]
    assert fake.requests == []


@pytest.mark.parametrize("method, target", [
    ("GET", "/"),
    ("GET", "/v2/models"),
    ("POST", "/v1beta/models/gemini-2.5-pro:explode"),
    ("GET", "/health/x"),
    ("OPTIONS", "*"),
])
def test_unknown_path_is_404(server, method, target):
    client = Client(server.port)
    try:
        client.send(raw_request(method, target))
        error = gemini_error(client.response(), 404)
        assert error["status"] == "NOT_FOUND"
        client.send(raw_request("GET", "/health"))     # still usable
        assert client.response().status == 200
    finally:
        client.close()


@pytest.mark.parametrize("method, target", [
    ("GET", GENERATE),
    ("PUT", "/v1beta/models/gemini-2.5-pro:streamGenerateContent"),
    ("POST", "/v1beta/models"),
    ("DELETE", "/v1beta/models/gemini-2.5-pro"),
    ("POST", "/health"),
])
def test_wrong_method_is_405(server, fake, method, target):
    client = Client(server.port)
    try:
        client.send(raw_request(method, target, json.dumps(REQUEST).encode()
                                if method in ("POST", "PUT") else b""))
        gemini_error(client.response(), 405)
        client.send(raw_request("GET", "/health"))
        assert client.response().status == 200
    finally:
        client.close()
    assert fake.requests == []


def test_405_names_the_allowed_methods(server):
    # RFC 9110 15.5.6: the origin server MUST generate an Allow header in a 405 response.
    response, _ = answer_and_close(server, raw_request("GET", GENERATE, headers=[
        "Connection: close"]))
    gemini_error(response, 405)
    assert "allow" in response.headers, response.headers
    assert [m.strip() for m in response.headers["allow"].split(",")] == ["POST"]


@pytest.mark.parametrize("path", ["/health", "/healthz"])
def test_health(server, fake, path):
    client = Client(server.port)
    try:
        client.send(raw_request("GET", path))
        response = client.response()
        assert response.status == 200
        assert response.json()["status"] == "ok"
        assert response.headers["content-type"].startswith("application/json")
    finally:
        client.close()
    assert fake.requests == []


def test_head_health_has_no_body(server):
    """A HEAD response carries no body; if it did, the next response on the connection
    would be read from the middle of those bytes."""
    client = Client(server.port)
    try:
        client.send(raw_request("HEAD", "/health") + raw_request("GET", "/health"))
        head = client.response(method="HEAD")
        assert head.status == 200
        second = client.response()
        assert (second.version, second.status) == ("HTTP/1.1", 200), second
        assert second.json()["status"] == "ok"
    finally:
        client.close()


# ---- connection management -----------------------------------------------------------------

def test_http10_without_keep_alive_gets_connection_close(server):
    response, closed = answer_and_close(server, b"GET /health HTTP/1.0\r\n\r\n")
    assert response.status == 200
    assert response.headers.get("connection") == "close"
    assert closed


def test_http10_with_keep_alive_stays_open(server):
    client = Client(server.port)
    try:
        for _ in range(2):
            client.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = client.response()
            assert response.status == 200
            assert response.headers.get("connection", "").lower() == "keep-alive"
    finally:
        client.close()


def test_http11_connection_close_is_honoured(server):
    response, closed = answer_and_close(
        server, raw_request("GET", "/health", headers=["Connection: close"]) +
        raw_request("GET", "/health"))
    assert response.status == 200
    assert response.headers.get("connection") == "close"
    assert closed, "nothing may be answered after Connection: close"


def test_pipelined_requests_in_one_send_are_answered_in_order(server, fake):
    fake.queue(json_reply(completion("first")), json_reply(completion("second")))
    client = Client(server.port)
    try:
        client.send(post_json(GENERATE, REQUEST) + b"\r\n" +   # a stray CRLF is allowed
                    raw_request("GET", "/health") +
                    post_json(GENERATE, REQUEST) +
                    raw_request("GET", "/nowhere"))
        answers = [client.response() for _ in range(4)]
        assert [a.status for a in answers] == [200, 200, 200, 404]
        texts = [a.json()["candidates"][0]["content"]["parts"][0]["text"]
                 for a in (answers[0], answers[2])]
        assert texts == ["first", "second"]
        assert answers[1].json()["status"] == "ok"
        assert all(a.headers.get("connection") == "keep-alive" for a in answers)
    finally:
        client.close()
    assert len(fake.requests) == 2


def test_pipelined_chunked_request_leaves_the_next_one_intact(server, fake):
    fake.queue(json_reply(completion("chunked ok")))
    body = json.dumps(REQUEST).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                       for i in range(0, len(body), 7)) + b"0\r\nX-Trailer: t\r\n\r\n"
    client = Client(server.port)
    try:
        client.send(raw_request("POST", GENERATE, chunked, ["Transfer-Encoding: chunked"]) +
                    raw_request("GET", "/health"))
        first = client.response()
        assert first.status == 200, first
        assert first.json()["candidates"][0]["content"]["parts"] == [{"text": "chunked ok"}]
        assert client.response().json()["status"] == "ok"
    finally:
        client.close()


def test_request_pipelined_while_a_stream_is_in_flight(server, fake):
    more = threading.Event()          # the upstream holds the stream after its first text
    fake.queue(pause_after(text_stream("slow stream text", pieces=4), writes=2, until=more))
    client = Client(server.port)
    try:
        client.send(post_json(STREAM, REQUEST))
        wait_for(client.answered_or_closed, message="the stream never started")
        client.send(raw_request("GET", "/health"))     # while the stream is in flight
        more.set()
        stream = client.response()
        assert stream.status == 200
        assert stream.headers["transfer-encoding"] == "chunked"
        payloads = sse_payloads(stream.body)
        assert "".join(p["text"] for c in payloads
                       for p in c["candidates"][0]["content"]["parts"]) == "slow stream text"
        assert payloads[-1]["candidates"][0]["finishReason"] == "STOP"
        assert client.response().json()["status"] == "ok"
    finally:
        more.set()
        client.close()


def test_expect_100_continue(server, fake):
    fake.queue(json_reply(completion("after continue")))
    body = json.dumps(REQUEST).encode()
    client = Client(server.port)
    try:
        client.send(raw_request("POST", GENERATE, headers=[
            "Expect: 100-continue", "Content-Length: %d" % len(body)]))
        interim = client.response()
        assert interim.status == 100
        client.send(body)
        final = client.response()
        assert final.status == 200
        assert final.json()["candidates"][0]["content"]["parts"] == [{"text": "after continue"}]
    finally:
        client.close()


def test_expect_100_continue_is_not_sent_before_a_413(proxy_factory, fake):
    proxy = proxy_factory(config(fake, max_body_bytes=1000))
    response, closed = answer_and_close(proxy, raw_request("POST", GENERATE, headers=[
        "Expect: 100-continue", "Content-Length: 5000"]))
    gemini_error(response, 413)
    assert closed


def test_expect_100_continue_is_ignored_in_http10(server, fake):
    # RFC 9110 10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request, and an
    # HTTP/1.0 client does not understand 1xx responses.
    fake.queue(json_reply(completion("ten")))
    body = json.dumps(REQUEST).encode()
    client = Client(server.port)
    try:
        client.send(raw_request("POST", GENERATE, body, ["Expect: 100-continue"],
                                version="HTTP/1.0"))
        response = client.response()
        assert response.status == 200, response
        assert client.closed_quietly()
    finally:
        client.close()


# ---- client API keys -----------------------------------------------------------------------

@pytest.fixture
def keyed(proxy_factory, fake):
    return proxy_factory(config(fake, api_keys=["k1", "second-key"]))


def basic(user, password):
    return "Authorization: Basic " + base64.b64encode(
        ("%s:%s" % (user, password)).encode()).decode()


@pytest.mark.parametrize("target, headers", [
    ("/v1beta/models", []),
    ("/v1beta/models", ["x-goog-api-key: wrong"]),
    ("/v1beta/models", ["x-goog-api-key: k1x"]),
    ("/v1beta/models", ["x-goog-api-key: K1"]),
    ("/v1beta/models?key=", []),
    ("/v1beta/models?key=k", []),
    ("/v1beta/models", ["Authorization: Bearer wrong"]),
    ("/v1beta/models", ["Authorization: k1"]),
    ("/v1beta/models", ["x-api-key: nope"]),
    ("/v1beta/models", [basic("k1", "")]),                    # the key is the password
    ("/v1beta/models", [basic("user", "wrong")]),
    ("/v1beta/models", ["Authorization: Basic !!!not base64"]),
    (GENERATE, []),
])
def test_missing_or_wrong_key_is_401(keyed, fake, target, headers):
    method = "POST" if target == GENERATE else "GET"
    body = json.dumps(REQUEST).encode() if method == "POST" else b""
    client = Client(keyed.port)
    try:
        client.send(raw_request(method, target, body, headers))
        response = client.response()
        error = gemini_error(response, 401)
        assert error["status"] == "UNAUTHENTICATED"
        assert "k1" not in response.body.decode() and "second-key" not in response.body.decode()
    finally:
        client.close()
    assert fake.requests == []


@pytest.mark.parametrize("target, headers", [
    ("/v1beta/models", ["x-goog-api-key: k1"]),
    ("/v1beta/models", ["X-Goog-Api-Key: second-key"]),
    ("/v1beta/models?key=k1", []),
    ("/v1beta/models", ["Authorization: Bearer k1"]),
    ("/v1beta/models", ["authorization: bearer second-key"]),
    ("/v1beta/models", ["x-api-key: k1"]),
    ("/v1beta/models", [basic("anyone", "k1")]),
])
def test_right_key_in_any_place_is_accepted(keyed, target, headers):
    client = Client(keyed.port)
    try:
        client.send(raw_request("GET", target, headers=headers))
        response = client.response()
        assert response.status == 200, response
        assert "models" in response.json()
    finally:
        client.close()


def test_key_in_query_reaches_the_upstream_call(keyed, fake):
    fake.queue(json_reply(completion("keyed", use=usage(3, 1))))
    client = Client(keyed.port)
    try:
        client.send(post_json(GENERATE + "?key=k1", REQUEST))
        response = client.response()
        assert response.status == 200
        assert response.json()["candidates"][0]["content"]["parts"] == [{"text": "keyed"}]
        # the client's proxy key is not forwarded upstream
        assert "k1" not in json.dumps(fake.requests[-1]["headers"])
    finally:
        client.close()


def test_401_then_the_right_key_on_the_same_connection(keyed):
    client = Client(keyed.port)
    try:
        client.send(raw_request("GET", "/v1beta/models"))
        gemini_error(client.response(), 401)
        client.send(raw_request("GET", "/v1beta/models", headers=["x-goog-api-key: k1"]))
        assert client.response().status == 200
    finally:
        client.close()


def test_health_needs_no_key(keyed):
    response, _ = answer_and_close(keyed, raw_request("GET", "/health",
                                                      headers=["Connection: close"]))
    assert response.status == 200 and response.json()["status"] == "ok"


# ---- slow and idle clients -----------------------------------------------------------------

@pytest.fixture
def impatient(proxy_factory, fake):
    """A proxy whose timeouts named here are SHORT and whose other ones are LONG: only the
    timeout under test can close a connection within PATIENCE."""
    def start(*short):
        limits = {name: LONG for name in ("head_timeout", "idle_timeout", "body_timeout")}
        limits.update((name, SHORT) for name in short)
        return proxy_factory(config(fake, **limits))
    return start


def expect_408_or_close(client, started):
    """The server gives up on a stalled client: 408 (Gemini shape) or a bare close, and in
    either case the connection ends, by the timeout under test: not before SHORT seconds
    after `started` (a time.monotonic() taken before the client's last bytes were sent),
    and not after PATIENCE, long before any other timeout. The seconds it took."""
    rest = client.rest(PATIENCE)
    took = time.monotonic() - started
    if rest:
        lines = rest.split(b"\r\n\r\n", 1)
        assert lines[0].startswith(b"HTTP/1.1 408 "), rest[:200]
        assert json.loads(lines[1])["error"]["code"] == 408
    assert SHORT * 0.9 < took < PATIENCE
    return took


def test_half_a_head_then_silence_is_cut_off(impatient):
    client = Client(impatient("head_timeout").port)
    try:
        started = time.monotonic()
        client.send(b"GET /health HTTP/1.1\r\nHo")
        expect_408_or_close(client, started)
    finally:
        client.close()


def test_a_head_trickled_byte_by_byte_is_cut_off(impatient):
    """head_timeout bounds the whole head, not each read (slowloris)."""
    client = Client(impatient("head_timeout").port)
    # One byte every 50 ms: a per-read timeout would never fire, and the trickle would
    # last PATIENCE seconds at least.
    data = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + \
        b"a" * int(PATIENCE / 0.05)
    started = time.monotonic()
    try:
        for i in range(len(data)):
            try:
                client.send(data[i:i + 1])
            except OSError:
                break
            time.sleep(0.05)
            if client.answered_or_closed():
                break
        else:
            pytest.fail("the whole trickle got through: head_timeout was never enforced")
        expect_408_or_close(client, started)
    finally:
        client.close()


def test_connection_that_never_sends_is_closed(impatient):
    started = time.monotonic()
    client = Client(impatient("idle_timeout").port)
    try:
        assert client.closed_quietly(PATIENCE)  # no 408 for a client that said nothing
        assert SHORT * 0.9 < time.monotonic() - started < PATIENCE
    finally:
        client.close()


def test_idle_keep_alive_connection_is_closed(impatient):
    client = Client(impatient("idle_timeout").port)
    try:
        started = time.monotonic()
        client.send(raw_request("GET", "/health"))
        response = client.response()
        assert response.status == 200 and response.headers["connection"] == "keep-alive"
        assert client.closed_quietly(PATIENCE)  # no 408 for a client between requests
        assert SHORT * 0.9 < time.monotonic() - started < PATIENCE
    finally:
        client.close()


def test_blank_lines_do_not_keep_an_idle_connection_open(impatient):
    """Empty lines before a request line are tolerated, but sending one now and then
    must not let a client hold a connection open past the idle and head timeouts: they
    start the head clock (SHORT), and the idle one (LONG) never gets a say."""
    client = Client(impatient("head_timeout").port)
    deadline = time.monotonic() + PATIENCE
    closed = False
    try:
        while time.monotonic() < deadline:
            try:
                client.send(b"\r\n")
            except OSError:
                closed = True
                break
            client.sock.settimeout(0.2)
            try:
                if client.sock.recv(65536) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
                break
        assert closed, "the connection stayed open for %gs" % PATIENCE
    finally:
        client.close()


def test_stalled_body_is_cut_off(impatient, fake):
    client = Client(impatient("body_timeout").port)
    try:
        started = time.monotonic()
        client.send(raw_request("POST", GENERATE, headers=["Content-Length: 100"]) + b'{"con')
        expect_408_or_close(client, started)
    finally:
        client.close()
    assert fake.requests == []


def test_stalled_chunked_body_is_cut_off(impatient, fake):
    client = Client(impatient("body_timeout").port)
    try:
        started = time.monotonic()
        client.send(raw_request("POST", GENERATE, headers=["Transfer-Encoding: chunked"]) +
                    b"10\r\n{\"con")
        expect_408_or_close(client, started)
    finally:
        client.close()
    assert fake.requests == []


def test_slow_but_steady_body_is_not_cut_off(proxy_factory, fake):
    """body_timeout is silence between reads: a body that keeps arriving is fine. Here it
    arrives in 60 pieces at least 20 ms apart: longer than the body_timeout in all, while
    each gap is a fiftieth of it."""
    proxy = proxy_factory(config(fake, head_timeout=LONG, idle_timeout=LONG,
                                 body_timeout=1.0))
    fake.queue(json_reply(completion("patience")))
    body = json.dumps(REQUEST).encode()
    body += b" " * (60 - len(body) % 60)
    step = len(body) // 60
    client = Client(proxy.port)
    try:
        client.send(raw_request("POST", GENERATE, headers=["Content-Length: %d" % len(body)]))
        for i in range(0, len(body), step):
            time.sleep(0.02)
            client.send(body[i:i + step])
        response = client.response()
        assert response.status == 200, response
        assert response.json()["candidates"][0]["content"]["parts"] == [{"text": "patience"}]
    finally:
        client.close()


# ---- isolation and shutdown ----------------------------------------------------------------

def _stream_over_raw_socket(port, result):
    client = Client(port)
    try:
        client.send(post_json(STREAM, REQUEST))
        result["response"] = client.response()
        result["finished"] = time.monotonic()
    except Exception as exc:   # reported by the test
        result["error"] = exc
    finally:
        client.close()


def _check_complete_stream(result, text):
    assert "error" not in result, result.get("error")
    response = result["response"]
    assert response.status == 200
    payloads = sse_payloads(response.body)
    assert "".join(p["text"] for c in payloads
                   for p in c["candidates"][0]["content"]["parts"]) == text
    assert payloads[-1]["candidates"][0]["finishReason"] == "STOP"
    assert payloads[-1]["usageMetadata"]["totalTokenCount"] == 18


def test_bad_clients_do_not_disturb_a_stream_on_another_connection(proxy_factory, fake):
    proxy = proxy_factory(config(fake, head_timeout=0.5, idle_timeout=0.5, body_timeout=0.5,
                                 max_body_bytes=1000))
    text = "a stream that must survive its neighbours"
    more = threading.Event()          # the upstream holds the stream until the end
    fake.queue(pause_after(text_stream(text, pieces=6), writes=3, until=more))
    result = {}
    streamer = threading.Thread(target=_stream_over_raw_socket, args=(proxy.port, result))
    streamer.start()
    try:
        wait_for(lambda: fake.requests, message="the stream never reached the upstream")
        # garbage, a smuggling shape, an oversized body, a half head, an abrupt close
        for data in (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
                     raw_request("POST", GENERATE, b"0\r\n\r\n",
                                 ["Content-Length: 5", "Transfer-Encoding: chunked"]),
                     raw_request("POST", GENERATE, headers=["Content-Length: 99999"])):
            response, closed = answer_and_close(proxy, data)
            assert response.status in (400, 413) and closed
        stalled = Client(proxy.port)
        stalled.send(b"POST " + GENERATE.encode())
        gone = socket.create_connection(("127.0.0.1", proxy.port))
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.send(raw_request("GET", "/health")[:10])
        gone.close()                                     # reset mid-head
        # a good request on yet another connection is answered while the stream runs
        response, _ = answer_and_close(proxy, raw_request("GET", "/health",
                                                          headers=["Connection: close"]))
        assert response.status == 200
        assert streamer.is_alive(), "the stream should still be running"
        more.set()
        streamer.join(PATIENCE)
        stalled.close()
        _check_complete_stream(result, text)
    finally:
        more.set()
        streamer.join(PATIENCE)


def test_graceful_shutdown_finishes_the_stream_and_refuses_new_connections(fake):
    running = RunningProxy(make_config(config(fake, shutdown_grace=LONG)))
    stopped = False
    text = "in flight during shutdown"
    more = threading.Event()          # the upstream holds the stream until the end
    fake.queue(pause_after(text_stream(text, pieces=5), writes=3, until=more))
    result = {}
    streamer = threading.Thread(target=_stream_over_raw_socket, args=(running.port, result))
    try:
        idle = Client(running.port)
        idle.send(raw_request("GET", "/health"))
        assert idle.response().status == 200            # an idle keep-alive connection
        streamer.start()
        wait_for(lambda: fake.requests, message="the stream never reached the upstream")
        running.server.request_stop()

        def refused():
            try:
                socket.create_connection(("127.0.0.1", running.port), timeout=PATIENCE).close()
                return False
            except (ConnectionRefusedError, ConnectionResetError):
                # a connection caught in the backlog as the listener closes is reset
                return True
        wait_for(refused, message="new connections still accepted while draining")
        assert streamer.is_alive(), "the stream ended before the listener closed"
        assert idle.closed_quietly(), "an idle connection must be closed at shutdown"
        idle.close()
        more.set()
        running.stop()
        stopped = True
        streamer.join(PATIENCE)
        _check_complete_stream(result, text)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", running.port), timeout=PATIENCE)
    finally:
        more.set()
        if not stopped:
            running.stop()
        if streamer.ident is not None:
            streamer.join(PATIENCE)
