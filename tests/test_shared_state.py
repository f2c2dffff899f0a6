"""Shared state: the RESP parser (pure), RespStore, StateServer and the shared_* operations.

Most tests run twice, against a real redis-server and against StateServer, and assert the
same answers; one test runs a scripted sequence of every command on both and compares the
replies one by one. Every wait polls for what it waits for, up to a deadline far beyond
what a working store needs: a slow machine makes a test slower, never fail.
"""

import asyncio
import collections
import functools
import json
import logging
import os
import random
import secrets
import select
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
import traceback

import pytest

from conftest import PATIENCE, gp, wait_for
from test_cli import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
T0 = 1_700_000_000.0    # a fixed "now" for the operations that take one


def plain(value):
    """A reply with its errors as comparable tuples."""
    if isinstance(value, gp.RespError):
        return ("error", str(value))
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def short_directory():
    """A fresh directory with a short path (a Unix socket's path is at most 107 bytes)."""
    return tempfile.mkdtemp(prefix="gp-", dir="/tmp")


@pytest.fixture
def directory():
    path = short_directory()
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---- servers ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_url():
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip("no redis-server")
    directory = short_directory()
    path = os.path.join(directory, "redis.sock")
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--unixsocket", path, "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", directory, "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = "unix://" + path
    probe = gp.RespStore(url, backoff=0)

    def answers():
        assert process.poll() is None, "redis-server exited"
        try:
            return probe.call("PING") == "PONG"
        except gp.StateError:
            return False
    try:
        wait_for(answers, message="redis-server answering PING")
        probe.close()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(PATIENCE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(PATIENCE)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_redis():
    """(url, the CA file) of a real redis-server that speaks only TLS, with a password; its
    certificate is for 127.0.0.1, signed by a CA made for this run (trust it by pointing
    SSL_CERT_FILE at it, as an operator would with a private CA)."""
    openssl = shutil.which("openssl")
    if not os.access(REDIS_SERVER, os.X_OK) or openssl is None:
        pytest.skip("no redis-server or no openssl")
    directory = short_directory()
    at = functools.partial(os.path.join, directory)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    # (key usage: Python 3.13 and later refuse a CA certificate without it)
    subprocess.run([openssl, "req", "-x509"] + ec + [
        "-keyout", at("ca.key"), "-out", at("ca.pem"), "-days", "2", "-subj", "/CN=test CA",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign"], check=True, capture_output=True)
    subprocess.run([openssl, "req"] + ec + [
        "-keyout", at("redis.key"), "-out", at("redis.csr"), "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True)
    with open(at("san.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    subprocess.run([openssl, "x509", "-req", "-in", at("redis.csr"), "-CA", at("ca.pem"),
                    "-CAkey", at("ca.key"), "-CAcreateserial", "-out", at("redis.pem"),
                    "-days", "2", "-extfile", at("san.cnf")], check=True, capture_output=True)
    password = "tls-pw-" + secrets.token_hex(8)
    trusting = ssl.create_default_context(cafile=at("ca.pem"))
    process = None
    try:
        for _ in range(3):   # a free port can be taken before redis-server binds it
            port = free_port()
            process = subprocess.Popen(
                [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                 "--tls-cert-file", at("redis.pem"), "--tls-key-file", at("redis.key"),
                 "--tls-ca-cert-file", at("ca.pem"), "--tls-auth-clients", "no",
                 "--requirepass", password, "--save", "", "--appendonly", "no",
                 "--dir", directory, "--daemonize", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            def answers():
                if process.poll() is not None:
                    return True
                try:
                    with trusting.wrap_socket(socket.create_connection(
                            ("127.0.0.1", port), timeout=PATIENCE),
                            server_hostname="127.0.0.1") as sock:
                        sock.sendall(gp.encode_resp_command("AUTH", password) +
                                     gp.encode_resp_command("PING"))
                        return sock.recv(64).endswith(b"+PONG\r\n")
                except ssl.SSLCertVerificationError:
                    raise   # the certificates are wrong: waiting will not help
                except OSError:
                    return False
            wait_for(answers, message="redis-server answering PING over TLS")
            if process.poll() is None:
                break
        assert process.poll() is None, "redis-server did not start on a free port"
        yield "rediss://:%s@127.0.0.1:%d" % (password, port), at("ca.pem")
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(PATIENCE)
        shutil.rmtree(directory, ignore_errors=True)


class ErrorLog(logging.Handler):
    """What is logged as an error while a server runs (asyncio logs a failing callback
    or handler instead of raising it): a server must log none. `thread`: only what that
    thread logs (a server of the whole session's must not count the errors that later
    tests' own proxies log on purpose)."""

    def __init__(self, thread=None):
        super().__init__(logging.ERROR)
        self.records = []
        self.thread = thread
        logging.getLogger().addHandler(self)

    def emit(self, record):
        if self.thread is None or record.threadName == self.thread:
            self.records.append(record)

    def check(self):
        logging.getLogger().removeHandler(self)
        assert [record.getMessage() for record in self.records] == []


@pytest.fixture(scope="session")
def state_server():
    errors, directory = ErrorLog(thread="state-server"), short_directory()
    server = gp.StateServer()
    server.url = server.start_in_thread(path=os.path.join(directory, "state.sock"))
    yield server
    server.stop_thread()
    shutil.rmtree(directory, ignore_errors=True)
    errors.check()


@pytest.fixture
def own_server():
    """A StateServer of the test's own (on TCP), for what looks at its insides."""
    servers = []

    def start(**limits):
        server = gp.StateServer(**limits)
        server.url = server.start_in_thread(host="127.0.0.1", port=0)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop_thread()


OPEN_STORES = []


def new_store(url, **options):
    """A store with a namespace of its own and timeouts no slow machine reaches (the
    tests of timeouts set theirs), closed when the test ends."""
    options.setdefault("connect_timeout", PATIENCE)
    options.setdefault("reply_timeout", PATIENCE)
    options.setdefault("namespace", "test-%s:" % secrets.token_hex(4))
    store = gp.RespStore(url, **options)
    OPEN_STORES.append(store)
    return store


@pytest.fixture(autouse=True)
def close_stores_and_check_logs():
    errors = ErrorLog()
    yield
    while OPEN_STORES:
        OPEN_STORES.pop().close()
    errors.check()


@pytest.fixture(params=["redis", "state"])
def store(request):
    """A store on each server, with a namespace of the test's own."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = request.getfixturevalue("state_server").url
    store = new_store(url)
    store.test_url = url
    return store


# ---- the protocol (pure) ------------------------------------------------------------------

REPLIES = (b"+OK\r\n-ERR bad thing\r\n:42\r\n:-7\r\n$5\r\nhe\r\nl\r\n$0\r\n\r\n$-1\r\n*-1\r\n"
           b"*0\r\n*3\r\n:1\r\n*2\r\n$1\r\na\r\n*0\r\n$-1\r\n+PONG\r\n")
REPLIES_READ = ["OK", ("error", "ERR bad thing"), 42, -7, b"he\r\nl", b"", None, None, [],
                [1, [b"a", []], None], "PONG"]
REQUESTS = gp.encode_resp_command("SET", "k", b"v\r\n", 5, 1.5) + b"*0\r\n" + \
    gp.encode_resp_command("PING") + gp.encode_resp_command("GET", "")
REQUESTS_READ = [[b"SET", b"k", b"v\r\n", b"5", b"1.5"], [b"PING"], [b"GET", b""]]


def pieces_of(data):
    """The data whole, byte by byte, split at every position, and in random chunks."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(data)), 5))
        yield [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


@pytest.mark.parametrize("requests, data, expected", [
    (False, REPLIES, REPLIES_READ), (True, REQUESTS, REQUESTS_READ)])
def test_parser_reads_split_input(requests, data, expected):
    for pieces in pieces_of(data):
        parser = gp.RespParser(requests=requests)
        read = []
        for piece in pieces:
            read += parser.feed(piece)
        assert plain(read) == expected
        assert not parser._buffer and not parser._open


def test_parser_keeps_an_unfinished_reply():
    parser = gp.RespParser()
    assert parser.feed(b"*2\r\n$3\r\nab") == []
    assert parser.feed(b"c\r\n:5\r\n+next") == [[b"abc", 5]]
    assert parser.feed(b"\r\n") == ["next"]


@pytest.mark.parametrize("data", [
    b"?x\r\n", b":12a\r\n", b":\r\n", b"$abc\r\n", b"$3\r\nabcd\r\n", b"*-2\r\n", b"$-2\r\n",
    b"$11\r\n", b"+" + b"x" * 70000, b"*1\r\n" * 40, b"\r\n"], ids=lambda data: repr(data[:12]))
def test_parser_refuses_what_is_not_a_reply(data):
    with pytest.raises(gp.RespProtocolError):
        gp.RespParser(max_bulk=10).feed(data)


@pytest.mark.parametrize("data, message", [
    (b"PING\r\n", "expected '*', got 'P'"),
    (b"*1\r\n:1\r\n", "expected '$', got ':'"),
    (b"*1\r\n*1\r\n", "expected '$', got '*'"),
    (b"*1\r\n$-1\r\n", "invalid bulk length"),
    (b"*5\r\n", "invalid multibulk length"),
    (gp.encode_resp_command("SET", "abcdef", "ghijk"), "invalid bulk length"),   # 14 bytes
    (b"*x\r\n", "invalid multibulk length")])
def test_request_parser_refuses_what_is_not_a_command(data, message):
    parser = gp.RespParser(requests=True, max_bulk=10, max_items=4)
    with pytest.raises(gp.RespProtocolError) as info:
        parser.feed(data)
    assert str(info.value) == message


def test_request_limits_are_per_command():
    parser = gp.RespParser(requests=True, max_bulk=10, max_items=4)
    command = gp.encode_resp_command("SET", "abc", "def")     # 9 bytes of arguments
    assert parser.feed(command * 3) == [[b"SET", b"abc", b"def"]] * 3


def test_encode_command():
    assert gp.encode_resp_command("SET", b"k", 12, 2.5, "\u00e9") == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$3\r\n2.5\r\n$2\r\n\xc3\xa9\r\n")
    for bad in (None, True, [1]):
        with pytest.raises(TypeError):
            gp.encode_resp_command("GET", bad)


def test_encode_reply_keeps_errors_on_one_line():
    assert gp.encode_resp_reply(gp.RespError("ERR a\r\nb")) == b"-ERR a  b\r\n"
    assert gp.encode_resp_reply([b"x", None, 3, "OK", []]) == \
        b"*5\r\n$1\r\nx\r\n$-1\r\n:3\r\n+OK\r\n*0\r\n"


# ---- the same replies from both servers ------------------------------------------------------

def script(k):
    """Every command StateServer has, in the cases the proxy meets and the odd ones."""
    s, t, n, z, m, big = (k(x) for x in ("s", "t", "n", "z", "m", "big"))
    return [
        ("PING",), ("PING", "hello"), ("PING", "a", "b"),
        ("SET", s, "v"), ("GET", s), ("GET", k("missing")), ("SET", s, "v", "EX", 0),
        ("SET", s, "v", "EX", "abc"), ("SET", s, "v", "EX", 10, "PX", 10),
        ("SET", s, "v", "FOO"), ("SET", s, "v", "EX"), ("SET", s, "v", "ex", -5),
        ("SET", s, "v", "EX", 9223372036854776), ("SET", s, "v", "PX", 0),
        ("SET", t, "v", "PX", 100000), ("PTTL", t), ("SET", t, "w", "ex", 100), ("PTTL", t),
        ("SET", t, "x"), ("PTTL", t),
        ("INCR", n), ("INCRBY", n, 10), ("DECR", n), ("INCRBY", n, "abc"),
        ("INCRBY", n, 1.5), ("INCR", s), ("SET", big, "9223372036854775807"), ("INCR", big),
        ("INCRBY", n, "-9223372036854775809"), ("SET", big, "-9223372036854775808"),
        ("DECR", big), ("SET", k("lead"), "01"), ("INCR", k("lead")), ("SET", k("sp"), " 1"),
        ("INCR", k("sp")), ("DECR", k("fresh")), ("GET", k("fresh")),
        ("EXPIRE", s, 100), ("PTTL", s), ("EXPIRE", k("missing"), 100), ("EXPIRE", s, "abc"),
        ("EXPIRE", s, "99999999999999999"), ("EXPIRE", s, 10, 20),
        ("PEXPIRE", s, "9223372036854775806"), ("EXPIRE", k("missing"), "99999999999999999"),
        ("PEXPIRE", n, -1), ("GET", n), ("PTTL", n), ("PTTL", s), ("PTTL", k("missing")),
        ("INCR", t), ("PTTL", t), ("EXPIRE", t, 100), ("INCR", t), ("PTTL", t),
        ("ZADD", z, 1, "a", 2, "b", 3, "c"), ("ZADD", z, 1, "a"), ("ZADD", z, "CH", 5, "a", 4, "d"),
        ("ZADD", z, "GT", 1, "a"), ("ZADD", z, "GT", "CH", 9, "a"), ("ZADD", z, "LT", "CH", 0, "a"),
        ("ZADD", z, "NX", 100, "a", 7, "e"), ("ZADD", z, "XX", 8, "e", 1, "f"),
        ("ZADD", z, "XX", "NX", 1, "a"), ("ZADD", z, "GT", "LT", 1, "a"),
        ("ZADD", z, "GT", "NX", 1, "a"), ("ZADD", z, 1), ("ZADD", z, 1, "a", 2),
        ("ZADD", z, "nan", "a"), ("ZADD", z, "abc", "a"), ("ZADD", z, " 5", "a"),
        ("ZADD", z, "inf", "i", "-inf", "j"), ("ZADD", z, 0.1, "k"), ("ZADD", z, "-0", "m"),
        ("ZADD", z, "1e400", "x"), ("ZADD", z, "1e-400", "x"), ("ZADD", z, "1.5e2", "o"),
        ("ZADD", z, ".5", "p"), ("ZADD", z, "+3.", "q"), ("ZADD", z, T0 + 0.123456, "t"),
        ("ZADD", z, 2, "b", 2, "a2", 2, "a1"),
        ("ZRANGE", z, 0, -1, "WITHSCORES"), ("ZRANGE", z, 0, -1), ("ZRANGE", z, -3, -1),
        ("ZRANGE", z, 5, 2), ("ZRANGE", z, -100, 100, "withscores"), ("ZRANGE", z, 0, 0,
                                                                        "WITHSCORES", "WITHSCORES"),
        ("ZRANGE", z, "a", "b"), ("ZRANGE", z, 0, 1, "FOO"), ("ZRANGE", k("missing"), 0, -1),
        ("ZRANGE", z, 100, 200), ("ZCARD", z), ("ZCARD", k("missing")), ("ZREM", z, "a", "zz"),
        ("ZREM", k("missing"), "a"), ("ZREMRANGEBYSCORE", z, "(1", 5),
        ("ZREMRANGEBYSCORE", z, "-inf", "(0.1"), ("ZREMRANGEBYSCORE", z, 100, "+inf"),
        ("ZREMRANGEBYSCORE", z, "a", "b"), ("ZREMRANGEBYSCORE", z, "((1", 2),
        ("ZREMRANGEBYSCORE", z, 5, 1), ("ZREMRANGEBYSCORE", z, "(0.1", "(0.1"),
        ("ZRANGE", z, 0, -1, "WITHSCORES"), ("ZREMRANGEBYSCORE", k("missing"), 0, 1),
        ("ZREMRANGEBYSCORE", z, "-inf", "+inf"), ("ZCARD", z), ("PTTL", z),
        ("ZRANGE", s, 0, -1), ("ZADD", s, 1, "a"), ("ZREM", s, "a"),
        ("ZREMRANGEBYSCORE", s, 0, 1), ("ZADD", k("z2"), "XX", 1, "a"),
        ("ZCARD", k("z2")), ("ZADD", z, 1, "a"), ("GET", z), ("INCR", z), ("EXPIRE", z, 100),
        ("PTTL", z), ("SET", z, "over a set"), ("GET", z), ("PTTL", z), ("ZCARD", z),
        ("DEL", s, z, k("missing"), s),
        ("MULTI",), ("SET", m, 1), ("INCR", m), ("GET", m), ("ZADD", m, 1, "a"), ("PING",),
        ("EXEC",),
        ("MULTI",), ("SET", m), ("GET", m), ("EXEC",),
        ("MULTI",), ("FOO", "bar"), ("EXEC",),
        ("MULTI",), ("MULTI",), ("SET", m, 2), ("EXEC",),
        ("EXEC",), ("FOO",), ("FOO", "a", "b\r\nc"), ("foo", "x" * 200),
        ("GET",), ("SET", "a"), ("INCRBY", n), ("PTTL",), ("ZCARD",),
        ("ZREMRANGEBYSCORE", z, 1), ("DEL",), ("EXPIRE", s), ("MULTI", "x"),
        ("SELECT", 0), ("SELECT", 16), ("SELECT", "a"), ("get", m), ("Get", m),
    ]


def comparable(commands, replies):
    """Replies with time-dependent PTTLs (a positive number of milliseconds) as "ttl"."""
    return [("ttl" if command[0] == "PTTL" and isinstance(reply, int) and reply > 0
             else plain(reply)) for command, reply in zip(commands, replies)]


def test_both_servers_reply_alike(redis_url, state_server):
    results = {}
    for name, url in (("redis", redis_url), ("state", state_server.url)):
        store = new_store(url)
        commands = script(lambda key, ns=store.namespace: ns + key)
        first = comparable(commands, store.pipeline(commands))          # one round trip
        commands = script(lambda key, ns=store.namespace + "again:": ns + key)
        again = comparable(commands, [store.pipeline([command])[0] for command in commands])
        assert first == again
        results[name] = first
        store.close()
    differences = [(command, a, b) for command, a, b in zip(
        script(lambda key: key), results["redis"], results["state"]) if a != b]
    assert differences == []


def test_call_raises_error_replies_and_transactions_their_refusals(store):
    key = store.namespace + "z"
    store.call("ZADD", key, 1, "m")
    with pytest.raises(gp.RespError, match="WRONGTYPE"):
        store.call("GET", key)
    assert plain(store.transaction([("ZCARD", key), ("GET", key)])) == [
        1, ("error", gp.WRONGTYPE)]
    with pytest.raises(gp.RespError, match="EXECABORT.*wrong number of arguments"):
        store.transaction([("ZCARD", key), ("SET", key)])
    assert store.call("ZCARD", key) == 1     # and the connection is still good
    assert store.pipeline([]) == []


# ---- expiry -----------------------------------------------------------------------------------

def test_keys_expire(store):
    k = store.namespace
    store.pipeline([("SET", k + "s", "v"), ("PEXPIRE", k + "s", 30),
                    ("ZADD", k + "z", 1, "m"), ("PEXPIRE", k + "z", 30),
                    ("SET", k + "p", "v", "PX", 30), ("SET", k + "e", "v", "EX", 1),
                    ("SET", k + "forever", "v")])
    assert store.call("PTTL", k + "z") in [-2] + list(range(1, 31))   # (gone already: slow)
    gone = [("PTTL", k + x) for x in "szp"]
    wait_for(lambda: store.pipeline(gone) == [-2] * 3, message="the keys expiring")
    assert store.pipeline([("GET", k + "s"), ("ZCARD", k + "z"),
                           ("GET", k + "p")]) == [None, 0, None]
    wait_for(lambda: store.call("GET", k + "e") is None, message="EX 1 expiring")
    assert store.call("PTTL", k + "forever") == -1


def test_expired_keys_are_swept_without_being_touched(own_server):
    server = own_server()
    store = new_store(server.url)
    store.call("SET", "stays", "v")
    keys = ["k%d" % i for i in range(2500)]     # more than one sweep's batch
    store.pipeline([("SET", key, "v", "PX", 20) for key in keys])
    store.pipeline([("ZADD", "z%d" % i, 1, "a", 2, "b") for i in range(100)] +
                   [("PEXPIRE", "z%d" % i, 20) for i in range(100)])
    wait_for(lambda: server.entries == 1, message="the sweep removing %d entries" %
             server.entries)
    assert list(server._data) == [b"stays"] and not server._expires


def test_refreshed_expiries_do_not_pile_up(own_server):
    """A rate window's PEXPIRE on every request leaves an outdated heap entry each time;
    the sweep rebuilds the heap from the live expiries."""
    server = own_server()
    store = new_store(server.url)
    for _ in range(10):
        store.pipeline([("PEXPIRE" if i else "SET", "w", *(
            (100000,) if i else ("v", "PX", 100000))) for i in range(1000)])
    wait_for(lambda: len(server._heap) <= 1024 + 2 * len(server._expires),
             message="the heap rebuilt (%d entries)" % len(server._heap))
    assert 0 < store.call("PTTL", "w") <= 100000


# ---- limits and accounting of StateServer ----------------------------------------------------

def test_a_full_server_refuses_writes_only(own_server):
    server = own_server(max_entries=10)
    store = new_store(server.url)
    store.call("ZADD", "h", *[x for i in range(9) for x in (i, "f%d" % i)])
    assert server.entries == 10
    for command in (("SET", "x", 1), ("INCR", "h2"), ("ZADD", "h", 5, "f0"), ("ZADD", "z", 1, "a")):
        with pytest.raises(gp.RespError, match="^OOM"):
            store.call(*command)
    with pytest.raises(gp.RespError, match="EXECABORT.*OOM"):
        store.transaction([("GET", "x"), ("ZADD", "z", 1, "a")])
    assert store.call("ZCARD", "h") == 9 and store.call("EXPIRE", "h", 100) == 1
    assert store.call("ZREM", "h", "f0") == 1 and server.entries == 9
    assert store.call("SET", "x", 1) == "OK" and server.entries == 10
    assert store.call("DEL", "x", "h") == 2 and server.entries == 0


def test_entries_are_counted_right(own_server):
    server = own_server()
    store = new_store(server.url)
    rng = random.Random(3)
    keys = ["a", "b", "c", "d"]
    for _ in range(3000):
        key, member = rng.choice(keys), rng.choice("xyzw")
        store.pipeline([rng.choice([
            ("SET", key, "v"), ("SET", key, "v", "EX", 5), ("INCR", key), ("DEL", key),
            ("ZADD", key, 1, member, 2, "q"), ("ZREM", key, member, "q"),
            ("ZADD", key, rng.random(), member), ("ZREM", key, member, "x"),
            ("ZREMRANGEBYSCORE", key, 0, rng.random()), ("PEXPIRE", key, rng.choice([1, 5000])),
            ("SET", key, "v", "PX", 1), ("ZADD", key, "XX", 1, member)])])
    async def look():   # on the server's own loop: its sweep runs there too
        counted = sum(1 + (0 if isinstance(value, bytes) else len(value))
                      for value in server._data.values())
        empty = [key for key, value in server._data.items()
                 if not isinstance(value, bytes) and not len(value)]
        return server.entries, counted, empty
    entries, counted, empty = asyncio.run_coroutine_threadsafe(
        look(), server._loop).result(PATIENCE)
    assert entries == counted and empty == []


# ---- clients that misbehave, and many clients ---------------------------------------------------

def raw_connection(url):
    address = gp.parse_state_url(url)
    if address.path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address.path)
    else:
        sock = socket.create_connection((address.host, address.port))
    sock.settimeout(PATIENCE)
    return sock


def read_to_end(sock):
    data = b""
    while True:
        piece = sock.recv(65536)
        if not piece:
            return data
        data += piece


def read_exactly(sock, size):
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        assert piece, "the server closed the connection"
        data += piece
    return data


@pytest.mark.parametrize("garbage, reply", [
    (b"*abc\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n$abc\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*2\r\n$4\r\nPING\r\n:1\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n")])
def test_a_garbage_client_is_disconnected_and_others_carry_on(store, garbage, reply):
    key = store.namespace + "k"
    other = raw_connection(store.test_url)        # in the middle of a MULTI meanwhile
    other.sendall(gp.encode_resp_command("MULTI") + gp.encode_resp_command("SET", key, "v"))
    assert read_exactly(other, 14) == b"+OK\r\n+QUEUED\r\n"
    bad = raw_connection(store.test_url)
    bad.sendall(garbage)
    assert read_to_end(bad) == reply
    bad.close()
    other.sendall(gp.encode_resp_command("EXEC"))
    assert read_exactly(other, 9) == b"*1\r\n+OK\r\n"
    other.close()
    assert store.call("GET", key) == b"v"


@pytest.mark.parametrize("garbage, reply", [
    (b"PING\r\n", b"-ERR Protocol error: expected '*', got 'P'\r\n"),
    (b"*1\r\n$2000000\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*5000\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"+" + b"x" * 100000, b"-ERR Protocol error: a line of over 65536 bytes\r\n"),
    (b"\x00\xff\r\n\r\n", b"-ERR Protocol error: expected '*', got '\x00'\r\n")],
    ids=["inline", "bulk", "arguments", "line", "binary"])
def test_state_server_limits(state_server, garbage, reply):
    bad = raw_connection(state_server.url)
    bad.sendall(garbage)
    assert read_to_end(bad) == reply
    bad.close()
    assert new_store(state_server.url).call("PING") == "PONG"


def test_many_connections_at_once(store):
    key, count = store.namespace + "n", 200
    stores = [new_store(store.test_url) for _ in range(count)]
    barrier = threading.Barrier(count)
    failures = []

    def work(each):
        try:
            barrier.wait(PATIENCE)
            each.call("INCR", key)
        except Exception as error:     # reported below
            failures.append(error)
    threads = [threading.Thread(target=work, args=(each,)) for each in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert failures == [] and store.call("GET", key) == b"%d" % count
    for each in stores:
        each.close()


def test_pipelined_commands_in_one_write_get_every_reply(store):
    key = store.namespace + "n"
    assert store.pipeline([("INCR", key)] * 5000)[-1] == 5000


# ---- the store's client: failures, passwords, URLs ---------------------------------------------

def test_an_unreachable_store_fails_at_once_after_one_failure(directory):
    store = new_store("unix://" + os.path.join(directory, "none.sock"), backoff=PATIENCE)
    attempts = []
    connect = store._connect
    store._connect = lambda: attempts.append(1) or connect()
    with pytest.raises(gp.StateUnavailable, match="unavailable"):
        store.call("PING")
    for _ in range(20):
        with pytest.raises(gp.StateUnavailable, match=r"tried again after \d+s"):
            store.call("PING")
    assert len(attempts) == 1


def test_after_the_backoff_one_call_tries_while_the_others_fail_at_once(directory):
    store = new_store("unix://" + os.path.join(directory, "none.sock"), backoff=0.01)
    attempts, release = [], threading.Event()
    connect = store._connect

    def slow_connect():
        attempts.append(1)
        release.wait(PATIENCE)
        return connect()
    store._connect = slow_connect
    release.set()
    with pytest.raises(gp.StateUnavailable):
        store.call("PING")
    release.clear()
    wait_for(lambda: time.monotonic() > store._down_until, message="the back-off ending")
    outcome = []
    probe = threading.Thread(target=lambda: outcome.append(pytest.raises(
        gp.StateUnavailable, store.call, "PING")))
    probe.start()
    wait_for(lambda: len(attempts) == 2, message="the probe connecting")
    for _ in range(20):
        with pytest.raises(gp.StateUnavailable):
            store.call("PING")
    assert len(attempts) == 2
    release.set()
    probe.join(PATIENCE)
    assert outcome and len(attempts) == 2


def test_a_store_that_comes_back_is_used_again(directory):
    path = os.path.join(directory, "late.sock")
    store = new_store("unix://" + path, backoff=0.01)
    with pytest.raises(gp.StateUnavailable):
        store.call("PING")
    server = gp.StateServer()
    server.start_in_thread(path=path)
    try:
        def answers():
            try:
                return store.call("PING") == "PONG"
            except gp.StateUnavailable:
                return False
        wait_for(answers, message="the store answering again")
    finally:
        server.stop_thread()


def test_a_connection_the_server_closed_is_not_reused(directory):
    """A restart closes the idle connections; the next call opens a new one, unharmed."""
    path = os.path.join(directory, "restart.sock")
    store = new_store("unix://" + path)
    for _ in range(2):
        server = gp.StateServer()
        server.start_in_thread(path=path)
        assert store.call("SET", "k", "v") == "OK" and len(store._idle) == 1
        server.stop_thread()


def test_connections_are_capped_per_store(store):
    key, capped = store.namespace + "n", new_store(store.test_url, max_connections=2)
    failures = []

    def work():
        try:
            for _ in range(50):
                capped.call("INCR", key)
                assert capped._open <= 2
        except Exception as error:     # reported below
            failures.append(error)
    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert failures == [] and store.call("GET", key) == b"400" and capped._open <= 2
    held = capped._take(), capped._take()       # both in use: a call waits, then gives up
    capped.busy_timeout = 0.01
    with pytest.raises(gp.StateUnavailable, match="all 2 connections stayed busy"):
        capped.call("PING")
    capped._discard(held[0])
    assert capped.call("PING") == "PONG"        # not a failure of the store: no back-off
    capped._discard(held[1])


# The fork is the point: Python 3.12+ warns of forking a process with threads (the
# suite's own), and the child makes one call and exits without touching any lock of theirs.
@pytest.mark.filterwarnings("ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning")
def test_a_forked_child_does_not_use_the_parent_connections(store):
    key = store.namespace + "fork"
    assert store.call("SET", key, "parent") == "OK" and len(store._idle) == 1
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:    # the child: one call on its own connection, then out at once
        try:
            ok = store.call("SET", key, "child") == "OK" and store._open == 1
            os.write(writer, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(writer)
    answered = select.select([reader], [], [], PATIENCE)[0]
    if not answered:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert answered and os.read(reader, 2) == b"ok"
    os.close(reader)
    assert store.call("GET", key) == b"child"   # the parent's connection, still in step


def test_a_closed_store_keeps_no_connection(store):
    store.call("PING")
    connection = store._idle[0]
    exchange = connection.exchange

    def close_meanwhile(*args):
        store.close()       # (a reload) while this call is in flight
        return exchange(*args)
    connection.exchange = close_meanwhile
    assert store.call("PING") == "PONG"
    assert store._idle == [] and store._open == 0 and connection.sock.fileno() == -1
    assert store.call("PING") == "PONG" and store._open == 0


def test_a_silent_store_times_out(directory):
    path = os.path.join(directory, "silent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)     # connections wait, accepted by no one, answered never
    store = new_store("unix://" + path, reply_timeout=0.05)
    with pytest.raises(gp.StateUnavailable, match="no reply within"):
        store.call("PING")
    assert not store._idle
    listener.close()


SECRET = "s3cret-" + secrets.token_hex(4)


@pytest.mark.parametrize("url", [
    "redis://user:%s@127.0.0.1:1/0" % SECRET, "redis://:%s@127.0.0.1:1" % SECRET,
    "unix://:%s@/nonexistent/x.sock" % SECRET, "unix://u:%s@/nonexistent/x.sock?db=2" % SECRET,
    "redis://:%s@[::1]:1/3" % SECRET])
def test_passwords_stay_out_of_messages(url):
    store = new_store(url)
    assert SECRET not in repr(store.address) and SECRET not in store.url
    for _ in range(2):      # the failure, then the fast one
        with pytest.raises(gp.StateUnavailable) as info:
            store.call("PING")
        text = "".join(traceback.format_exception(info.type, info.value, info.tb))
        assert SECRET not in text and "***" in str(info.value)


@pytest.mark.parametrize("url", [
    "redis://:%s@host:notaport" % SECRET, "redis://user:%s@" % SECRET,
    "ftp://:%s@host" % SECRET, "redis://%s@host" % SECRET, "redis://:%s@host/x" % SECRET,
    "redis://:%s@host/?password=%s" % (SECRET, SECRET), "unix://:%s@host/path" % SECRET,
    "redis://:%s@[::1" % SECRET, "%s@host" % SECRET])
def test_bad_urls_are_refused_without_their_password(url):
    with pytest.raises(ValueError) as info:
        gp.RespStore(url)
    assert SECRET not in str(info.value)


def test_redacted_url():
    assert gp.redacted_url("redis://u:p@w@h:1/2") == "redis://u:***@h:1/2"
    assert gp.redacted_url("redis://:pw@h") == "redis://:***@h"
    assert gp.redacted_url("redis://pw@h") == "redis://***@h"
    assert gp.redacted_url("redis://h:6379/0") == "redis://h:6379/0"
    assert gp.redacted_url("unix:///run/gp.sock?db=1") == "unix:///run/gp.sock?db=1"
    assert gp.redacted_url("unix://:pw@/run/gp.sock") == "unix://:***@/run/gp.sock"
    assert gp.redacted_url("redis://h/?password=pw&db=1") == "redis://h/?password=***&db=1"
    assert gp.redacted_url("pw@h") == "***@h"


def test_parse_state_url():
    parse = gp.parse_state_url
    assert parse("redis://h") == gp.StateAddress(host="h", port=6379)
    assert parse("redis://u:p%40ss@h:6380/2") == gp.StateAddress(
        host="h", port=6380, user="u", password="p@ss", db=2)
    assert parse("rediss://:pw@[::1]:7000?db=4") == gp.StateAddress(
        host="::1", port=7000, tls=True, password="pw", db=4)
    assert parse("unix:///run/gp%20x.sock?db=3") == gp.StateAddress(path="/run/gp x.sock", db=3)
    assert parse("unix://u:pw@/run/s.sock").user == "u"


def test_auth_and_select_against_redis(redis_url):
    path = gp.parse_state_url(redis_url).path
    admin = new_store(redis_url)
    password = "pw-" + secrets.token_hex(8)
    user = "gp-" + secrets.token_hex(4)
    admin.call("ACL", "SETUSER", user, "on", ">" + password, "~*", "+@all")
    try:
        good = new_store("unix://%s:%s@%s?db=3" % (user, password, path))
        good.call("SET", admin.namespace + "db3", "v")
        assert admin.call("GET", admin.namespace + "db3") is None      # another database
        assert good.call("GET", admin.namespace + "db3") == b"v"
        for url in ("unix://%s:wrong-%s@%s" % (user, password, path),
                    "unix://:%s@%s" % (password, path)):
            with pytest.raises(gp.StateUnavailable, match="WRONGPASS|AUTH") as info:
                new_store(url).call("PING")
            assert password not in str(info.value)
    finally:
        admin.call("ACL", "DELUSER", user)


def test_rediss_reaches_a_tls_redis_whose_ca_is_trusted(tls_redis, monkeypatch):
    url, ca = tls_redis
    monkeypatch.setenv("SSL_CERT_FILE", ca)
    store = new_store(url)
    assert store.call("PING") == "PONG"
    store.call("SET", store.namespace + "k", "over TLS")
    assert store.call("GET", store.namespace + "k") == b"over TLS"


@pytest.mark.parametrize("case", ["untrusted CA", "another host name"])
def test_rediss_refuses_a_certificate_it_cannot_trust(tls_redis, monkeypatch, directory, case):
    url, ca = tls_redis
    password = gp.parse_state_url(url).password
    if case == "untrusted CA":
        nothing = os.path.join(directory, "no-cas.pem")
        open(nothing, "w").close()
        monkeypatch.setenv("SSL_CERT_FILE", nothing)
    else:   # the certificate names 127.0.0.1, the URL localhost
        monkeypatch.setenv("SSL_CERT_FILE", ca)
        url = url.replace("@127.0.0.1:", "@localhost:")
    with pytest.raises(gp.StateUnavailable) as info:
        new_store(url).call("PING")
    assert "certificate" in str(info.value).lower() and password not in str(info.value), \
        str(info.value)


def test_auth_and_select_against_state_server(own_server):
    server = own_server()
    url = server.url.replace("redis://", "redis://user:pw@") + "/3"
    assert new_store(url).call("PING") == "PONG"


# ---- the state server's socket ---------------------------------------------------------------------

def test_socket_is_private_and_tidied(directory):
    path = os.path.join(directory, "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)        # left by a crash: replaced
    stale.close()
    server = gp.StateServer()
    server.start_in_thread(path=path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(directory) == ["s.sock"]
    assert new_store("unix://" + path).call("PING") == "PONG"
    server.stop_thread()
    assert not os.path.exists(path)
    with open(path, "w") as file:
        file.write("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        gp.StateServer().start_in_thread(path=path)
    with open(path) as file:
        assert file.read() == "not a socket"


# ---- what the proxy shares ------------------------------------------------------------------------

class ReferenceLimits:
    """ClientLimits.admit/spent/snapshot of section 24, for one client."""

    def __init__(self):
        self.recent = collections.deque()
        self.day_ends = self.tokens = self.requests = 0

    def roll(self, now):
        while self.recent and self.recent[0] <= now - 60.0:
            self.recent.popleft()
        if now >= self.day_ends:
            self.day_ends, self.tokens, self.requests = now - now % 86400 + 86400, 0, 0

    def admit(self, rpm, tpd, now):
        self.roll(now)
        if tpd and self.tokens >= tpd:
            return (86400 - now % 86400, "tokens")
        if rpm and len(self.recent) >= rpm:
            return (self.recent[0] + 60.0 - now, "rate")
        self.recent.append(now)
        self.requests += 1
        return None

    def spent(self, tokens, now):
        self.roll(now)
        self.tokens += tokens

    def usage(self, now):
        self.roll(now)
        return {"requests_last_minute": len(self.recent), "requests_today": self.requests,
                "tokens_today": self.tokens}


@pytest.mark.parametrize("seed", [1, 2])
def test_shared_admit_decides_as_the_in_memory_limits(store, seed):
    rng = random.Random(seed)
    name = "client \u2603:%d\n{x}" % seed
    reference = ReferenceLimits()
    now = T0 - T0 % 86400 + 86400 - 300      # five minutes before a UTC midnight
    rpm, tpd = 5, 1000
    for _ in range(400):
        now += rng.choice([0.0, 0.001, 0.3, 2.0, 7.0, 20.0, 59.999, 60.0, 61.0])
        if rng.random() < 0.1:
            rpm, tpd = rng.choice([(5, 1000), (0, 1000), (3, 0), (0, 0), (1, 1)])
        decision = gp.shared_admit(store, name, rpm, tpd, now)
        expected = reference.admit(rpm, tpd, now)
        assert (decision is None) == (expected is None), (now, decision, expected)
        if decision is not None:
            assert decision[1] == expected[1] and decision[0] == pytest.approx(expected[0], abs=1e-6)
        else:
            tokens = rng.choice([0, 10, 150])
            gp.shared_spent(store, name, tokens, now)
            reference.spent(tokens, now)
        assert gp.shared_usage(store, name, now) == reference.usage(now)


def test_shared_admit_sliding_window(store):
    name = "alice"
    for offset in (0, 1, 2):
        assert gp.shared_admit(store, name, 3, 0, T0 + offset) is None
    assert gp.shared_admit(store, name, 3, 0, T0 + 3) == (57.0, "rate")
    assert gp.shared_admit(store, name, 3, 0, T0 + 59.75) == (0.25, "rate")
    assert gp.shared_admit(store, name, 3, 0, T0 + 60) is None     # T0's request left
    assert gp.shared_admit(store, name, 3, 0, T0 + 60.5) == (0.5, "rate")
    assert gp.shared_usage(store, name, T0 + 60.5) == {
        "requests_last_minute": 3, "requests_today": 4, "tokens_today": 0}
    assert gp.shared_admit(store, "bob", 3, 0, T0 + 60.5) is None      # its own window


def test_shared_daily_tokens(store):
    name, midnight = "carol", T0 - T0 % 86400 + 86400
    now = midnight - 10
    assert gp.shared_admit(store, name, 0, 100, now) is None
    gp.shared_spent(store, name, 60, now)
    assert gp.shared_admit(store, name, 0, 100, now) is None
    gp.shared_spent(store, name, 40, now)
    assert gp.shared_admit(store, name, 0, 100, now + 1) == (9.0, "tokens")
    assert gp.shared_admit(store, name, 0, 101, now + 1) is None
    assert gp.shared_usage(store, name, now + 1) == {
        "requests_last_minute": 3, "requests_today": 3, "tokens_today": 100}
    assert gp.shared_admit(store, name, 0, 100, midnight) is None     # a new day
    assert gp.shared_usage(store, name, midnight) == {
        "requests_last_minute": 4, "requests_today": 1, "tokens_today": 0}
    key = gp.state_key(store.namespace, "tpd", name, gp.utc_day(now))
    assert 86400 < store.call("PTTL", key) / 1000 <= gp.STATE_DAY_TTL


def test_racing_admits_never_over_admit(store):
    stores = [store, new_store(store.test_url, namespace=store.namespace)]  # two "processes"
    admitted, failures = [], []
    barrier = threading.Barrier(8)

    def work(index):
        try:
            barrier.wait(PATIENCE)
            for _ in range(20):
                if gp.shared_admit(stores[index % 2], "dave", 50, 0, T0 + index * 1e-3) is None:
                    admitted.append(index)
        except Exception as error:     # reported below
            failures.append(error)
    threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert failures == [] and len(admitted) == 50
    assert gp.shared_usage(store, "dave", T0 + 1) == {
        "requests_last_minute": 50, "requests_today": 50, "tokens_today": 0}
    stores[1].close()


def test_shared_rests(store):
    upstream, now = "up:\nstream \u2603", time.time()
    gp.shared_rest(store, upstream, "key-1", "*", now + 100)
    gp.shared_rest(store, upstream, "key-1", "*", now + 50)        # shorter: the longer stays
    gp.shared_rest(store, upstream, "key-1", "gemini-2.5-pro", now + 10)
    gp.shared_rest(store, upstream, "3:x", "y", now + 20)
    gp.shared_rest(store, upstream, "3:xy", "", now + 30)
    gp.shared_rest(store, upstream, "k\n2", "*", now - 1)          # already over
    assert gp.shared_rests(store, upstream, now) == {
        ("key-1", "*"): now + 100, ("key-1", "gemini-2.5-pro"): now + 10,
        ("3:x", "y"): now + 20, ("3:xy", ""): now + 30}
    assert gp.shared_rests(store, upstream, now + 20) == {
        ("key-1", "*"): now + 100, ("3:xy", ""): now + 30}
    assert store.call("ZCARD", gp.state_key(store.namespace, "rests", upstream)) == 2
    gp.shared_rest(store, upstream, "3:xy", "", now + 300)          # longer: replaces
    assert gp.shared_rests(store, upstream, now + 20)[("3:xy", "")] == now + 300
    assert gp.shared_rests(store, "up", now) == {}
    ttl = store.call("PTTL", gp.state_key(store.namespace, "rests", upstream))
    assert 86400 * 1000 < ttl <= gp.STATE_DAY_TTL * 1000


def test_racing_rests_keep_the_longest(store):
    untils = [T0 + random.random() * 1000 for _ in range(80)]
    threads = [threading.Thread(target=lambda chunk=untils[i::8]: [
        gp.shared_rest(store, "up", "k", "*", until) for until in chunk]) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert gp.shared_rests(store, "up", T0) == {("k", "*"): max(untils)}


def test_state_keys_never_collide():
    names = ["a", "a:1", "1:a", "a:1:a", "", ":", "\n", "\u00e9", "\ud800", "a:2025-01-01",
             "1", "1:"]
    keys = {gp.state_key("ns:", kind, name, day) for kind in ("rpm", "tpd", "rests")
            for name in names for day in ("", "2025-01-01")}
    assert len(keys) == 3 * len(names) * 2
    members = {gp.rest_member(key, scope) for key in names for scope in names}
    assert len(members) == len(names) ** 2


def test_store_failures_raise_state_errors(directory):
    store = new_store("unix://" + os.path.join(directory, "none.sock"))
    for call in (lambda: gp.shared_admit(store, "a", 1, 1, T0),
                 lambda: gp.shared_spent(store, "a", 5, T0),
                 lambda: gp.shared_usage(store, "a", T0),
                 lambda: gp.shared_rest(store, "u", "k", "*", T0),
                 lambda: gp.shared_rests(store, "u", T0)):
        with pytest.raises(gp.StateError):
            call()


# ---- proxies sharing a store --------------------------------------------------------------
# Two proxies in one test stand for two processes or two machines: what one counts or
# rests, the other sees.

from fake_upstream import json_reply, raw_reply, completion  # noqa: E402

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def shared_config(fake, url, clients, tmp_path, **upstream):
    spec = dict({"kind": "openai", "base_url": fake.base_url, "api_key": "sk-shared-key-1",
                 "retries": 0}, **upstream)
    return {"server": {"api_keys": clients, "state_dir": str(tmp_path)},
            "state": {"redis_url": url, "namespace": "test-%s:" % secrets.token_hex(4)},
            "upstreams": {"fake": spec}, "default_model": "fake-model"}


def ask(proxy, key="alice-key"):
    return proxy.request("POST", "/v1/chat/completions", CHAT,
                         {"Authorization": "Bearer " + key})


@pytest.fixture(params=["redis", "rediss", "state"])
def shared_url(request, monkeypatch):
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    if request.param == "rediss":   # the same, over TLS
        url, ca = request.getfixturevalue("tls_redis")
        monkeypatch.setenv("SSL_CERT_FILE", ca)
        return url
    return request.getfixturevalue("state_server").url


def two_proxies(proxy_factory, raw):
    return proxy_factory(raw), proxy_factory(json.loads(json.dumps(raw)))


def test_a_clients_request_rate_is_counted_across_proxies(proxy_factory, fake, shared_url,
                                                          tmp_path):
    raw = shared_config(fake, shared_url, [
        {"key": "alice-key", "name": "alice", "requests_per_minute": 3}], tmp_path)
    one, two = two_proxies(proxy_factory, raw)
    assert [ask(p)[0] for p in (one, two, one)] == [200, 200, 200]
    for proxy in (two, one):
        status, headers, body = ask(proxy)
        assert status == 429, body
        assert b"3 requests a minute" in body and 1 <= int(headers["retry-after"]) <= 60
    assert len(fake.requests) == 3
    # each proxy's /stats shows the client's use by both
    for proxy in (one, two):
        status, _, body = proxy.request("GET", "/stats", None, {"Authorization": "Bearer alice-key"})
        assert status == 200
        alice = json.loads(body)["clients"][0]
        assert (alice["requests_last_minute"], alice["requests_today"]) == (3, 3), alice


def test_a_clients_daily_tokens_are_counted_across_proxies(proxy_factory, fake, shared_url,
                                                           tmp_path):
    raw = shared_config(fake, shared_url, [
        {"key": "alice-key", "name": "alice", "tokens_per_day": 10}], tmp_path)
    one, two = two_proxies(proxy_factory, raw)
    fake.queue(json_reply(completion("spent", use={"prompt_tokens": 8, "completion_tokens": 4,
                                                   "total_tokens": 12})))
    assert ask(one)[0] == 200
    one.wait_until_idle()          # its tokens are counted when the request has ended
    status, headers, body = ask(two)
    assert status == 429 and b"10 tokens for today" in body, body
    assert len(fake.requests) == 1


def test_a_key_rested_by_one_proxy_rests_in_the_other(proxy_factory, fake, shared_url,
                                                      tmp_path):
    raw = shared_config(fake, shared_url, [], tmp_path)
    one, two = two_proxies(proxy_factory, raw)
    fake.queue(raw_reply(b'{"error": {"message": "slow down"}}', status=429,
                         headers={"retry-after": "120"}))
    assert one.post("/v1/chat/completions", CHAT)[0] == 429
    status, body = two.post("/v1/chat/completions", CHAT)
    assert status == 429 and "rate limited" in json.dumps(body), body
    assert len(fake.requests) == 1, "the resting key was used by the other proxy"
    key = two.server.proxy.status()["upstreams"]["fake"]["keys"][0]
    assert key["state"] == "cooling" and 100 < key["resting_until"] - time.time() <= 181


def test_a_store_out_of_reach_leaves_each_proxy_deciding_alone(proxy_factory, fake, tmp_path,
                                                               directory, caplog):
    nowhere = "unix://" + os.path.join(directory, "nothing-here.sock")
    raw = shared_config(fake, nowhere, [
        {"key": "alice-key", "name": "alice", "requests_per_minute": 2}], tmp_path)
    proxy = proxy_factory(raw)
    with caplog.at_level(logging.WARNING, logger="gemini_proxy"):
        assert [ask(proxy)[0] for _ in range(3)] == [200, 200, 429]
        status, _, body = proxy.request("GET", "/stats", None,
                                        {"Authorization": "Bearer alice-key"})
    assert status == 200 and json.loads(body)["clients"][0]["requests_last_minute"] == 2
    warnings = [r.getMessage() for r in caplog.records if "shared state" in r.getMessage()]
    assert len(warnings) == 1 and "decides alone" in warnings[0], warnings


def test_a_password_in_the_redis_url_is_never_logged_or_shown(proxy_factory, fake, tmp_path,
                                                               caplog):
    url = "redis://:hunter2-state-password@127.0.0.1:1/0"
    raw = shared_config(fake, url, [{"key": "alice-key", "name": "alice",
                                     "requests_per_minute": 5}], tmp_path)
    proxy = proxy_factory(raw)
    with caplog.at_level(logging.DEBUG):
        assert ask(proxy)[0] == 200
        _, _, stats = proxy.request("GET", "/stats", None, {"Authorization": "Bearer alice-key"})
    assert "hunter2" not in caplog.text and b"hunter2" not in stats
    assert "***" in caplog.text


@pytest.mark.parametrize("url", ["http://example.com", "redis://", "unix://host/path",
                                 "redis://h/x", "redis://user@h"])
def test_a_bad_redis_url_is_a_configuration_error(url):
    with pytest.raises(gp.ConfigError) as caught:
        gp.load_config(environ={"GEMINI_PROXY_REDIS_URL": url, "OPENAI_API_KEY": "k"})
    assert str(caught.value).startswith("state.redis_url: ")
