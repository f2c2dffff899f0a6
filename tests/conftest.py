"""Shared fixtures: a fake upstream and the real proxy server running on 127.0.0.1."""

import argparse
import atexit
import asyncio
import faulthandler
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gemini_proxy as gp  # noqa: E402
from fake_upstream import FakeOpenAI  # noqa: E402


# How long a test waits for something that should happen at once. Only a broken proxy
# ever makes a test wait this long: when things work, waiting ends as soon as they happen,
# so a busy machine that is slow to get there does not fail the test.
PATIENCE = 30.0


def dump_threads():
    """Every thread's stack on stderr (shown with the failure): when a test runs out of
    patience, where the proxy, the fakes and the test were stuck."""
    try:
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    except Exception:   # a stderr with no file descriptor (pytest --capture=sys)
        pass


def wait_for(condition, timeout=PATIENCE, message=None, interval=0.01):
    """Wait until condition() is true and return its value; fail the test when it is still
    false after `timeout` seconds. `message` (a string, or a function returning one, called
    only on failure) says what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            value = condition()     # one last look, after the deadline
            if value:
                return value
            what = message() if callable(message) else message
            dump_threads()
            pytest.fail("still waiting after %gs: %s" % (
                timeout, what or getattr(condition, "__name__", repr(condition))))
        time.sleep(interval)


# Proxies started by the tests keep their state (the usage ledger) here, never in the
# home directory of whoever runs the tests, unless a test names its own state_dir.
TEST_STATE_DIR = tempfile.mkdtemp(prefix="gemini-proxy-tests-")
atexit.register(shutil.rmtree, TEST_STATE_DIR, True)
os.environ["GEMINI_PROXY_STATE_DIR"] = TEST_STATE_DIR   # for proxies in processes


def stalled_stream(port):
    """A socket that asked the proxy at `port` for a stream (OpenAI, passed through), read
    its status line and will read nothing more unless the test does: a receive buffer
    of 4 KiB, so the proxy soon waits for it."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                 b"application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    try:
        assert sock.recv(16).startswith(b"HTTP/1.1 200")
    except BaseException:
        sock.close()
        raise
    return sock


def make_config(raw, environ=None, **flags):
    """A Config from a dict, as if read from a file, with no process environment."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(raw, f)
    try:
        args = argparse.Namespace(config=f.name, **flags)
        return gp.load_config(args, environ or {})
    finally:
        os.unlink(f.name)


class RunningProxy:
    """The real ProxyServer on its own event loop in a thread; its state (the usage
    ledger) in a fresh temporary directory unless the config or environ says where."""

    def __init__(self, config, environ=None):
        environ = environ or {}
        if not config.server["state_dir"] and not any(
                name in environ for name in ("GEMINI_PROXY_STATE_DIR", "HOME",
                                             "XDG_CONFIG_HOME")):
            config.server["state_dir"] = tempfile.mkdtemp(dir=TEST_STATE_DIR)
        self.server = gp.ProxyServer(config, environ)
        self._ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(PATIENCE) or self._error:
            raise RuntimeError("proxy did not start: %r" % (self._error,))
        self.port = self.server.port
        self.url = "http://127.0.0.1:%d" % self.port

    def _run(self):
        async def main():
            try:
                await self.server.start()
            except Exception as exc:  # reported to the constructor
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self.server.serve_until_stopped()
        asyncio.run(main())

    def stop(self):
        self.server.request_stop()
        # shutdown_grace (10 s by default) for requests in flight, then everything stops
        self._thread.join(self.server.config.server["shutdown_grace"] + PATIENCE)
        assert not self._thread.is_alive(), "proxy did not shut down"

    def busy(self):
        """What the proxy still has in flight, by its public counters: all zero once every
        request has ended in it (which can be a moment after its client got the answer)."""
        app = self.server.proxy
        return {"requests in flight": app.active, "busy workers": app.working,
                "open requests": self.server.requests_in_flight,
                "connections in use": app.pool.open - app.pool.idle,
                "keys held": sum(u.keys.in_flight for u in app.upstreams.values()),
                "requests waiting": sum(u.keys.waiting for u in app.upstreams.values())}

    def wait_until_idle(self):
        """Wait until no request is in flight in the proxy (see busy)."""
        wait_for(lambda: not any(self.busy().values()),
                 message=lambda: "the proxy is still busy: %r" % self.busy())

    def connection(self, timeout=PATIENCE):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, payload=None, headers=None, timeout=PATIENCE):
        """(status, headers dict, body bytes) on a fresh connection."""
        conn = self.connection(timeout)
        body = payload if isinstance(payload, (bytes, type(None))) else json.dumps(payload)
        try:
            conn.request(method, path, body=body, headers=dict(
                {"content-type": "application/json"}, **(headers or {})))
            response = conn.getresponse()
            data = response.read()
        except socket.timeout:
            dump_threads()
            raise
        finally:
            conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def post(self, path, payload, headers=None, timeout=PATIENCE):
        status, headers_, data = self.request("POST", path, payload, headers, timeout)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data


def sse_payloads(data):
    """The JSON payloads of a Gemini-style SSE body, checking its strict framing."""
    text = data.decode("ascii")   # ASCII-escaped JSON only
    assert text.endswith("\n\n") or not text
    payloads = []
    for event in text.split("\n\n")[:-1]:
        assert event.startswith("data: "), event[:80]
        assert "\n" not in event, "one single-line data field per event"
        payloads.append(json.loads(event[len("data: "):]))
    return payloads


@pytest.fixture
def same_utc_day():
    """For a test that counts what happened "today" (UTC): when midnight is less than
    five minutes away, wait until it has passed, so that the whole test falls on one
    day whatever the machine's speed."""
    left = 86400 - time.time() % 86400
    if left < 300:
        deadline = time.time() + left + 1
        while time.time() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.time())))


@pytest.fixture
def fake():
    upstream = FakeOpenAI().start()
    yield upstream
    upstream.stop()


@pytest.fixture
def proxy_factory(fake):
    started = []

    def start(raw=None, environ=None, **flags):
        raw = raw or {"upstreams": {"fake": {"kind": "openai", "base_url": fake.base_url,
                                             "api_key": "sk-upstream-secret-1234"}},
                      "default_model": "fake-model"}
        raw = dict(raw)
        raw["server"] = dict({"port": 0}, **raw.get("server", {}))   # a free port
        running = RunningProxy(make_config(raw, environ, **flags), environ)
        started.append(running)
        return running
    yield start
    for running in started:
        running.stop()


def tls_certificate(folder):
    """(certificate file, key file): a new self-signed certificate for 127.0.0.1."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed, so no test certificate can be made")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture
def tls_fake(tmp_path):
    """A fake OpenAI upstream behind TLS, and the file of its certificate (for
    SSL_CERT_FILE: the proxy then trusts it)."""
    cert, key = tls_certificate(tmp_path)
    upstream = FakeOpenAI()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    upstream.httpd.socket = context.wrap_socket(upstream.httpd.socket, server_side=True)
    upstream.base_url = upstream.base_url.replace("http://", "https://")
    upstream.start()
    yield upstream, cert
    upstream.stop()


@pytest.fixture
def proxy(proxy_factory):
    return proxy_factory()


@pytest.fixture
def google():
    """A fake Google (tests/fake_google.py): OAuth and Code Assist on one port."""
    from fake_google import FakeGoogle
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture
def rig(google, tmp_path):
    """Credential files for the fake Google's accounts, and proxies in front of them
    (test_code_assist_e2e.Rig); stopped at the end."""
    from test_code_assist_e2e import Rig
    made = Rig(google, tmp_path)
    yield made
    made.stop()
