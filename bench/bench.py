#!/usr/bin/env python3
"""Benchmark: what the proxy adds to a request, against calling the upstream directly in
the same run. Prints numbers; asserts nothing (these machines are noisy: compare ratios
within one run, not absolute numbers across runs).

    python3 bench/bench.py --table         # every row of the performance table, a Markdown
                                           # table at the end (about 5 minutes)
    python3 bench/bench.py --table --quick # the same, small: 100 slow streams of 5 s, ...
    python3 bench/bench.py --table --tls   # the upstream behind TLS, as hosted providers
                                           # are (needs the openssl command)
    python3 bench/bench.py                 # the older scenarios, a few minutes at most
    python3 bench/bench.py --quick         # smaller counts
    python3 bench/bench.py --streams 2000  # concurrent streams to hold open
    python3 bench/bench.py --ops [--baseline OLD_gemini_proxy.py]
                                           # usage ledger and metrics: on versus off

Three processes: a minimal asyncio OpenAI-compatible upstream, the proxy
(gemini_proxy.py, default settings but for --workers, its state in a temporary
directory), and this load generator. --ops runs two proxies side by side, one with a
named client key and the usage ledger, one with neither (and, with --baseline, a third:
another version of gemini_proxy.py), and interleaves their rounds so that the machine's
moods fall on all of them alike.

--table measures, in one run, with "direct" (the load generator calling the mock upstream
itself) as the control:

  added p50       sequential whole-reply requests on one keep-alive connection; p50 through
                  the proxy minus p50 direct, for an OpenAI client (POST
                  /v1/chat/completions, passed through) and a Gemini client (POST
                  /v1beta/models/bench:generateContent, converted). --rounds rounds, each
                  direct, OpenAI, Gemini in turn; medians over the rounds.
  CPU, throughput --clients (32) concurrent keep-alive clients for --seconds, rounds
                  interleaved the same way; CPU = utime+stime of the proxy's whole process
                  tree (a --processes supervisor and its workers; /proc) over the window,
                  divided by the requests answered. The load generator's and the upstream's
                  CPU are printed too: on a small machine they share its cores.
  the floor       the same rounds (OpenAI client) through a minimal relay of this file's own
                  (FloorConnection: asyncio; each request borrows a kept upstream
                  connection, through TLS with --tls) that does the least a relay of a JSON
                  API does for this load: parses the head, reads and writes again the
                  body's JSON, reads the reply's JSON for its usage, writes the reply and
                  one log line. What the proxy costs above it is no fixed cost of Python
                  and asyncio: its own code's.
  SSE relay       one 2,000-event stream (no gaps) per kind and round, read as raw bytes;
                  2,000 / seconds from request to last byte. Pass-through: OpenAI client,
                  stream:true; converted: Gemini client, :streamGenerateContent?alt=sse.
  slow streams    --slow-streams (1000) streams of --slow-seconds (20) events one second
                  apart, opened in batches of 250, all on new connections, by a Gemini
                  client (--slow-client openai for pass-through); a fresh upstream and a
                  fresh proxy. ok: status 200, every event, the end marker. On time: ok, and
                  every event within 1.5 s of the one before (the first: of the request),
                  and the stream over within --slow-seconds + 3 s of its start (before
                  connecting). Timed out: not over after 3 x --slow-seconds. Not opened:
                  batches still waiting after 2 x --slow-seconds (at least 30 s). Direct
                  runs first, then the proxy (one round each: these take minutes). The
                  lines above the table split the wait for the first event from the later
                  gaps, that wait into parts that add up to it (connecting, the request's
                  way to the upstream, the upstream's own wait, the event's way back, from
                  the times the upstream noted: see the end of this text), and say how
                  often /health answered 200 meanwhile.
  memory          peak VmRSS, summed over the process tree, sampled twice a second while
                  those streams are open: the proxy's; direct: the upstream's.
  start-up        seconds from spawning the proxy to its port accepting and to GET /health
                  answering 200; its RSS one second later (medians of 5 starts). "Direct":
                  a bare interpreter (python -c pass; RSS of one sleeping).
  hold            --hold-streams (10000; 0: skip) slow streams at once, as above. The
                  benchmark raises its open-file soft limit to the hard limit (and, when it
                  may, the hard limit to what the hold needs: the proxy holds two sockets a
                  stream); its children inherit it and the proxy raises its own. When one
                  proxy process cannot open enough files, the hold runs on a --processes
                  proxy (the row says so; --hold-processes N chooses); when that cannot
                  either, the row is skipped, saying why.
  two processes   the CPU and throughput rounds include a proxy started with --processes
                  2 (--processes N; 0: skip); "processes: not supported by this
                  gemini_proxy.py" when it refuses the flag.

Rows run in that order but for start-up, which runs first. Each row also says how much
CPU other work on the machine took meanwhile (/proc/stat less this run's processes).
--workers is passed to the proxy only when given, so the table measures the defaults;
GEMINI_PROXY_* variables are not passed on. Every process started is stopped when the run
ends, however it ends, and each row has a time limit. The proxies' logs are scanned at the
end for warnings, errors and non-200 replies. --quick: 3 rounds, 300 requests, 1.5 s
windows, 100 slow streams of 5 s, a hold of 500.

The upstream's streams: model "bench-<events>-<seconds between events>[-<tag>]"; the gap
comes before each content event, the end (finish, usage, [DONE]) follows the last at once.
A tagged stream's times (time.monotonic(), one clock for every process on the machine:
when its request arrived, when its first event went out) are kept until GET /stream-times
takes them all, as JSON (some 200 bytes a stream in the upstream's memory, which the
direct rows' memory includes: 2 MB for the 10,000-stream hold): the slow-stream lines use
them to say where the wait for a first event went. Any other GET is a 404.
"""

import argparse
import asyncio
import functools
import json
import logging
import os
import re
import shlex
import signal
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

try:
    import resource
except ImportError:   # not Unix: no limits to raise, no rusage
    resource = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -- the upstream ------------------------------------------------------------------------

REPLY = json.dumps({
    "id": "chatcmpl-b", "object": "chat.completion", "created": 1, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 200},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 50, "total_tokens": 70}}).encode()


def sse(obj):
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def stream_events(chunks):
    out = [sse({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "bench",
                "choices": [{"index": 0, "delta": {"content": "tok%d " % i},
                             "finish_reason": None}]}) for i in range(chunks)]
    out.append(sse({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "b",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    out.append(sse({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "b",
                    "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": chunks,
                                             "total_tokens": 20 + chunks}}))
    out.append(b"data: [DONE]\n\n")
    return out


@functools.lru_cache(maxsize=16)
def framed_events(chunks):
    """stream_events as HTTP chunks, made once (the upstream's own cost stays small)."""
    return tuple(b"%x\r\n%s\r\n" % (len(event), event) for event in stream_events(chunks))


# A tagged stream's (arrived, first event sent), by tag: see the top of this file.
STREAM_TIMES = {}


async def upstream_connection(reader, writer):
    """Answers Chat Completions: the body's "stream" and "model" fields decide how; and
    GET /stream-times."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            arrived = time.monotonic()
            if head.startswith(b"GET "):
                times = b""
                if head.startswith(b"GET /stream-times "):
                    times = json.dumps(STREAM_TIMES).encode()
                    STREAM_TIMES.clear()
                writer.write(b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (
                                 b"200 OK" if times else b"404 Not Found", len(times), times))
                await writer.drain()
                continue
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                if b":" in line:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
            request = json.loads(body)
            if not request.get("stream"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(REPLY), REPLY))
                await writer.drain()
                continue
            # the model name says how to stream: bench-<chunks>-<seconds between chunks>,
            # then a tag, if any (see the top of this file)
            _, chunks, gap, *tag = (request.get("model") or "bench-20-0").split("-")
            chunks, gap = int(chunks), float(gap)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            for i, event in enumerate(framed_events(chunks)):
                if gap and i < chunks:   # the end follows the last content event at once
                    await asyncio.sleep(gap)
                writer.write(event)
                if tag and i == 0:
                    STREAM_TIMES[tag[0]] = (arrived, time.monotonic())
                if gap or i % 64 == 63:   # one event a write; without gaps, drained less
                    await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve_upstream(port, tls_files=None):
    """The upstream on `port`; behind TLS with `tls_files` (certificate, key: --tls)."""
    raise_open_file_limit(0)
    context = None
    if tls_files:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls_files)
    server = await asyncio.start_server(upstream_connection, "127.0.0.1", port, backlog=4096,
                                        ssl=context)
    async with server:
        await server.serve_forever()


# -- the floor ------------------------------------------------------------------------------

FLOOR_LOG = logging.getLogger("floor")


def take_message(buf):
    """(head lines, body, the rest) of the first whole HTTP/1.1 message in `buf` whose
    body has a content-length (or none), else None: more is to come."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(buf) < end + 4 + length:
        return None
    return lines, buf[end + 4:end + 4 + length], buf[end + 4 + length:]


class FloorUpstreamConnection(asyncio.Protocol):
    """The floor's kept connection to the upstream: one request at a time, a whole reply
    of a content-length. It relies on an upstream that keeps its connections open and
    answers every request so, as this file's does: a connection closed under a request
    fails that request, which is not retried."""

    def __init__(self, idle):
        self.idle, self.buf, self.answer = idle, b"", None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        message = take_message(self.buf)
        if message is None:
            return
        _, reply, self.buf = message
        answer, self.answer = self.answer, None
        self.idle.append(self)
        answer.set_result(reply)

    def connection_lost(self, exc):
        if self in self.idle:
            self.idle.remove(self)
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("the upstream closed the connection"))


class FloorConnection(asyncio.Protocol):
    """A client's connection to the floor: the least a relay of a JSON API does for the
    benchmark's load (whole replies, one request at a time on a connection). It parses
    the request's head, reads its body's JSON and writes it again (with the model
    replaced, as every relay rewrites the request), sends it upstream on a kept
    connection, reads the reply's JSON for its usage, writes the reply back and one log
    line. No status but 200, no headers passed on, no keys checked, no streams."""

    def __init__(self, upstream_port, tls, idle):
        self.upstream_port, self.tls, self.idle = upstream_port, tls, idle
        self.buf = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        while True:
            message = take_message(self.buf)
            if message is None:
                return
            lines, body, self.buf = message
            asyncio.ensure_future(self.forward(lines[0].split(b" ")[1], body))

    async def forward(self, path, body):
        try:
            payload = json.loads(body)
            payload["model"] = "bench"
            body = json.dumps(payload).encode()
            if self.idle:
                upstream = self.idle.pop()
            else:
                _, upstream = await asyncio.get_running_loop().create_connection(
                    lambda: FloorUpstreamConnection(self.idle), "127.0.0.1",
                    self.upstream_port, ssl=self.tls)
            upstream.answer = asyncio.get_running_loop().create_future()
            upstream.transport.write(
                b"POST %s HTTP/1.1\r\nhost: upstream\r\ncontent-type: application/json\r\n"
                b"authorization: Bearer bench\r\ncontent-length: %d\r\n\r\n%s" % (
                    path, len(body), body))
            reply = await upstream.answer
            usage = json.loads(reply).get("usage") or {}
        except Exception as exc:   # (a body that is no JSON object, an upstream gone, ...)
            # Never a client left waiting: its wait would fail the whole row.
            FLOOR_LOG.warning("%s failed: %s: %s", path.decode("latin-1"),
                              type(exc).__name__, exc)
            self.transport.close()
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(reply), reply))
        FLOOR_LOG.info("POST %s 200 tokens=%s+%s", path.decode("latin-1"),
                       usage.get("prompt_tokens"), usage.get("completion_tokens"))


async def serve_floor(port, upstream_port, cafile=None):
    """The floor on `port`, relaying to the upstream on `upstream_port`; through TLS with
    `cafile` (--tls: the certificate the upstream's is), as the proxies do. Its log, in the
    proxies' format, is scanned with theirs."""
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    tls = ssl.create_default_context(cafile=cafile) if cafile else None
    idle = []
    server = await asyncio.get_running_loop().create_server(
        lambda: FloorConnection(upstream_port, tls, idle), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


# -- the load generator -------------------------------------------------------------------

# --tls: the upstreams' ports, which this process (the direct rows) reaches through TLS.
TLS_PORTS = set()
TLS_CLIENT = []    # the context that trusts their certificate


def open_connection(port, limit):
    """asyncio.open_connection to 127.0.0.1:port, through TLS to a --tls upstream."""
    return asyncio.open_connection("127.0.0.1", port, limit=limit,
                                   ssl=TLS_CLIENT[0] if port in TLS_PORTS else None)


def make_certificate(folder):
    """(certificate, key) files of a throwaway self-signed certificate for 127.0.0.1, made
    with the openssl command (Python's standard library cannot make one)."""
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


class Connection:
    """One keep-alive HTTP/1.1 client connection."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port):
        reader, writer = await open_connection(port, 1 << 20)
        return cls(reader, writer)

    async def request(self, path, payload):
        body = json.dumps(payload).encode()
        self.writer.write(b"POST %s HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                          b"x-goog-api-key: %s\r\ncontent-length: %d\r\n\r\n%s" % (
                              path.encode(), CLIENT_KEY, len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        if b"content-length:" in lower:
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            data = await self.reader.readexactly(length)
        else:   # chunked
            pieces = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                pieces.append((await self.reader.readexactly(size + 2))[:-2])
            data = b"".join(pieces)
        return status, data

    def close(self):
        self.writer.close()


CLIENT_KEY = b"bench-client-key"   # what a proxy with a named client key expects
OPENAI_BODY = {"model": "bench", "messages": [{"role": "user", "content": "Hello there"}]}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Hello there"}]}]}


def target(kind, port, stream, model="bench-20-0"):
    """(port, path, body): the same request, spoken to the upstream ("direct"), or through
    the proxy by an OpenAI client ("openai": passed through) or a Gemini client ("gemini",
    or "proxy": converted). The proxy passes the model name through unchanged."""
    if kind in ("direct", "openai"):
        body = dict(OPENAI_BODY, stream=True, model=model) if stream else OPENAI_BODY
        return port, "/v1/chat/completions", body
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return port, "/v1beta/models/%s:%s" % (model, method), GEMINI_BODY


async def sequential(kind, port, count, stream):
    port, path, body = target(kind, port, stream)
    conn = await Connection.open(port)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        status, _ = await conn.request(path, body)
        times.append(time.perf_counter() - started)
        assert status == 200, status
    conn.close()
    return times


async def throughput(kind, port, concurrency, seconds, stream):
    port, path, body = target(kind, port, stream)
    done = 0
    stop = time.perf_counter() + seconds

    async def worker():
        nonlocal done
        conn = await Connection.open(port)
        while time.perf_counter() < stop:
            status, _ = await conn.request(path, body)
            assert status == 200, status
            done += 1
        conn.close()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def many_streams(kind, port, count, chunks, gap):
    port, path, body = target(kind, port, True, "bench-%d-%g" % (chunks, gap))
    results = {"ok": 0, "failed": 0}
    durations = []

    async def one():
        try:
            conn = await Connection.open(port)
            started = time.perf_counter()
            status, data = await conn.request(path, body)
            durations.append(time.perf_counter() - started)
            expected = b'"finishReason":"STOP"' if kind == "proxy" else b"[DONE]"
            results["ok" if status == 200 and expected in data else "failed"] += 1
            conn.close()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            results["failed"] += 1
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    results["wall"] = time.perf_counter() - started
    results["p50"] = statistics.median(durations) if durations else 0
    results["max"] = max(durations) if durations else 0
    return results


def process_stats(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["VmRSS"].split()[0]) // 1024, int(fields["Threads"])
    except OSError:
        return 0, 0


def cpu_seconds(pid):
    """User + system CPU time a process has used (Linux /proc), 0 elsewhere."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on %d" % port)


async def run(args, upstream_port, proxy_port, proxy_pid):
    n = 300 if args.quick else 2000
    print("sequential requests on one keep-alive connection (%d each)" % n)
    for stream in (False, True):
        label = "stream, 20 chunks" if stream else "whole reply"
        direct = await sequential("direct", upstream_port, n, stream)
        proxied = await sequential("proxy", proxy_port, n, stream)
        d50, p50 = statistics.median(direct), statistics.median(proxied)
        print("  %-18s direct p50 %6.3f ms p99 %6.3f ms | proxy p50 %6.3f ms p99 %6.3f ms"
              " | added p50 %6.3f ms (x%.2f)" % (
                  label, d50 * 1e3, pct(direct, .99) * 1e3, p50 * 1e3,
                  pct(proxied, .99) * 1e3, (p50 - d50) * 1e3, p50 / d50))
    seconds = 2 if args.quick else 5
    print("throughput, 32 concurrent keep-alive clients, %ds" % seconds)
    for stream in (False, True):
        label = "stream, 20 chunks" if stream else "whole reply"
        direct = await throughput("direct", upstream_port, 32, seconds, stream)
        proxied = await throughput("proxy", proxy_port, 32, seconds, stream)
        print("  %-18s direct %7.0f req/s | proxy %7.0f req/s (x%.2f of direct)"
              % (label, direct, proxied, proxied / direct))
    count = min(args.streams, 300) if args.quick else args.streams
    print("%d concurrent streams, 20 chunks 50 ms apart (about 1 s each)" % count)
    for kind, port in (("direct", upstream_port), ("proxy", proxy_port)):
        peak = [0, 0]

        async def sample():
            while True:
                rss, threads = process_stats(proxy_pid)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], threads)
                await asyncio.sleep(0.1)
        sampler = asyncio.ensure_future(sample())
        result = await many_streams(kind, port, count, 20, 0.05)
        sampler.cancel()
        extra = " | proxy peak RSS %d MB, %d threads" % tuple(peak) if kind == "proxy" else ""
        print("  %-6s ok %d failed %d | wall %.2f s | per stream p50 %.3f s max %.3f s%s" % (
            kind, result["ok"], result["failed"], result["wall"], result["p50"],
            result["max"], extra))


async def run_ops(args, upstream_port, variants):
    """Added p50 latency and throughput of each proxy variant, in interleaved rounds;
    the medians over the rounds."""
    rounds, n, seconds = (3, 300, 2) if args.quick else (5, 1000, 3)
    added = {name: [] for name, _, _ in variants}
    rates = {name: [] for name, _, _ in variants}
    cpu = {name: [] for name, _, _ in variants}
    direct_rates = []
    for _ in range(rounds):
        direct = statistics.median(await sequential("direct", upstream_port, n, False))
        direct_rates.append(await throughput("direct", upstream_port, 32, seconds, False))
        for name, port, pid in variants:
            proxied = statistics.median(await sequential("proxy", port, n, False))
            added[name].append((proxied - direct) * 1e3)
            used = cpu_seconds(pid)
            rate = await throughput("proxy", port, 32, seconds, False)
            rates[name].append(rate)
            cpu[name].append((cpu_seconds(pid) - used) / (rate * seconds) * 1e3)
    print("whole replies, %d rounds (medians): %d sequential requests for the added p50, "
          "then 32 concurrent clients for %d s" % (rounds, n, seconds))
    print("  %-26s %7.0f req/s" % ("direct", statistics.median(direct_rates)))
    last = variants[-1][0]
    base_rate, base_added = statistics.median(rates[last]), statistics.median(added[last])
    base_cpu = statistics.median(cpu[last])
    for name, _, _ in variants:
        rate, extra = statistics.median(rates[name]), statistics.median(added[name])
        used = statistics.median(cpu[name])
        print("  %-26s %7.0f req/s (%+.1f%%) | added p50 %.3f ms (%+.3f) | proxy CPU "
              "%.3f ms/request (%+.1f%%)   [vs %s]" % (
                  name, rate, (rate / base_rate - 1) * 100, extra, extra - base_added,
                  used, (used / base_cpu - 1) * 100, last))


# -- the table (--table) ------------------------------------------------------------------

GAP_LIMIT = 1.5    # on time: no event later than this after the one before (or the request)
END_SLACK = 3.0    # ... and the stream over within its nominal length + this
SSE_EVENT_END = re.compile(rb"\r?\n\r?\n")
GEMINI_END = re.compile(rb'"finishReason": ?"STOP"')
OTHER_WORK = []    # (what, cores other processes kept busy meanwhile)
KIND_NAMES = {"direct": "direct", "openai": "OpenAI client", "gemini": "Gemini client"}


def is_end(kind, event):
    """Whether an SSE event is the end a complete stream of this kind ends with."""
    if kind in ("direct", "openai"):
        return event.strip() == b"data: [DONE]"
    return GEMINI_END.search(event) is not None


def encode_request(path, payload):
    body = json.dumps(payload).encode()
    return (b"POST %s HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            b"x-goog-api-key: %s\r\ncontent-length: %d\r\n\r\n%s" % (
                path.encode(), CLIENT_KEY, len(body), body))


def raise_open_file_limit(need):
    """Soft limit on open files up to the hard limit; and when `need` is more than that,
    the hard limit too, where this process may (root). Returns (soft limit now, a note)."""
    if resource is None:
        return 0, "no resource module: limits unknown"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    note = "open files: soft %s, hard %s" % (soft, hard)
    if hard != resource.RLIM_INFINITY and need > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need, note + "; raised both to %d (allowed to: root)" % need
        except (ValueError, OSError) as exc:
            note += "; the hard limit cannot be raised (%s)" % exc
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
            note += "; soft raised to %s" % hard
        except (ValueError, OSError) as exc:
            note += "; soft not raised (%s)" % exc
    return (1 << 30 if soft == resource.RLIM_INFINITY else soft), note


def machine_cpu():
    """CPU seconds the whole machine has been busy (all cores; /proc/stat), 0 elsewhere:
    with our own processes' CPU, what other work took while a row ran."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def own_cpu():
    if resource is None:
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _stat(pid):
    """The fields of /proc/<pid>/stat after the command name (state is [0], ppid [1],
    utime [11], stime [12], cutime [13], cstime [14], starttime [19])."""
    with open("/proc/%d/stat" % pid, "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def start_time(pid):
    try:
        return int(_stat(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def process_tree(pid):
    """pid and every process descended from it (parents read from /proc/*/stat)."""
    children = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return [pid]
    for name in names:
        if name.isdigit():
            try:
                children.setdefault(int(_stat(int(name))[1]), []).append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    tree, todo = [], [pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu(pid):
    """CPU seconds (user + system, of every thread, and of reaped children) used by a
    process and its descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = _stat(member)
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))
        except (OSError, ValueError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def tree_memory(pid):
    """(VmRSS in MB, threads, processes) summed over a process and its descendants.
    (Pages a forked worker shares with its parent count in both.)"""
    rss = threads = processes = 0
    for member in process_tree(pid):
        try:
            with open("/proc/%d/status" % member) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            rss += int(fields.get("VmRSS", "0 kB").split()[0])
            threads += int(fields["Threads"])
            processes += 1
        except (OSError, ValueError, KeyError):
            pass
    return rss / 1024.0, threads, processes


def tree_pss(pid):
    """Proportional set size in MB summed over the tree (shared pages split between the
    processes that share them), or None where /proc/<pid>/smaps_rollup is missing."""
    total = 0
    for member in process_tree(pid):
        try:
            with open("/proc/%d/smaps_rollup" % member) as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, ValueError, IndexError):
            return None
    return total / 1024.0


def http_status(port, path, timeout=1.0):
    """Status of a GET on a new connection, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n"
                      % path.encode())
            head = b""
            while b"\r\n" not in head:
                data = s.recv(4096)
                if not data:
                    return None
                head += data
            return int(head.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return None


async def async_http_get(port, path, timeout=2.0):
    """GET path: (status, the body a Content-Length gives, else b""), or (None, b"")."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            open_connection(port, 1 << 24), timeout)
        writer.write(b"GET %s HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n"
                     % path.encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)).lower()
        body = b""
        if b"content-length:" in head:
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            body = await asyncio.wait_for(reader.readexactly(length), timeout)
        return int(head.split(b" ", 2)[1]), body
    except (OSError, ValueError, IndexError, asyncio.TimeoutError,
            asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None, b""
    finally:
        if writer is not None:
            writer.close()


def median(values):
    return statistics.median(values) if values else float("nan")


class Fleet:
    """Every process the table starts, each in a session of its own (a proxy's worker
    processes with it), so that each is stopped, whatever happens to the run."""

    def __init__(self, state_dir, args):
        self.state_dir, self.args = state_dir, args
        self.running, self.logs, self.log_of = [], [], {}
        # the defaults are measured: no GEMINI_PROXY_* setting from this shell reaches a proxy
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_PROXY_")}
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.tls_files = None
        self.tls_port_of = {}   # an upstream process's TLS port, forgotten when it stops
        if args.tls:   # the proxies trust the upstream's certificate, as a system CA's
            self.tls_files = make_certificate(state_dir)
            self.env["SSL_CERT_FILE"] = self.tls_files[0]
            TLS_CLIENT.append(ssl.create_default_context(cafile=self.tls_files[0]))

    def spawn(self, command, label, env=None, cwd=None):
        path = os.path.join(self.state_dir, "%02d-%s.log" % (len(self.logs), label))
        with open(path, "wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=cwd or self.state_dir,
                                       env=env or self.env, start_new_session=True)
        self.running.append(process)
        self.logs.append((label, path))
        self.log_of[process.pid] = path
        return process

    def last_line(self, process):
        """The last line a process wrote (why it exited), or ""."""
        try:
            with open(self.log_of[process.pid], errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
            return lines[-1][:300] if lines else ""
        except (OSError, KeyError):
            return ""

    def port_taken(self, process):
        """Whether a proxy exited because its port was taken meanwhile (free_port's race)."""
        return process.poll() == 1 and "cannot listen" in self.last_line(process)

    def upstream(self):
        port = free_port()
        tls = ["--tls-files", ",".join(self.tls_files)] if self.tls_files else []
        process = self.spawn([sys.executable, os.path.abspath(__file__), "--serve-upstream",
                              str(port)] + tls, "upstream")
        wait_port(port)
        if self.tls_files:
            TLS_PORTS.add(port)
            self.tls_port_of[process.pid] = port
        return port, process

    def floor(self, upstream_port):
        """(port, process) of the floor (FloorConnection), once its port accepts."""
        port = free_port()
        where = "%d,%d" % (port, upstream_port)
        if self.tls_files:
            where += "," + self.tls_files[0]
        process = self.spawn([sys.executable, os.path.abspath(__file__), "--serve-floor",
                              where], "floor")
        try:
            wait_port(port)
        except Exception:
            self.stop(process)
            raise
        return port, process

    def proxy(self, upstream_port, label, extra=()):
        """(port, process, the perf_counter just before it was spawned); not waited for."""
        port = free_port()
        state = tempfile.mkdtemp(prefix=label + "-", dir=self.state_dir)
        command = [sys.executable, os.path.join(ROOT, "gemini_proxy.py"), "--port", str(port),
                   "--upstream-url", "%s://127.0.0.1:%d/v1" % (
                       "https" if self.tls_files else "http", upstream_port)]
        if self.args.workers:
            command += ["--workers", str(self.args.workers)]
        command += list(extra)
        started = time.perf_counter()
        process = self.spawn(command, label, dict(self.env, GEMINI_PROXY_STATE_DIR=state),
                             cwd=state)
        return port, process, started

    def ready_proxy(self, upstream_port, label, extra=(), timeout=20.0, attempts=3):
        """A proxy whose port accepts; (port, process), or (None, process) if it exited
        (tried again on another port when its port was taken meanwhile)."""
        port, process, _ = self.proxy(upstream_port, label, extra)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if process.poll() is not None:
                if attempts > 1 and self.port_taken(process):
                    self.stop(process)
                    return self.ready_proxy(upstream_port, label, extra, timeout,
                                            attempts - 1)
                return None, process
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return port, process
            except OSError:
                time.sleep(0.02)
        self.stop(process)
        raise RuntimeError("%s: nothing listens on %d after %d s" % (label, port, timeout))

    def stop(self, process):
        """SIGTERM to its session, SIGKILL after 10 s; then SIGKILL to whatever of its tree
        is left (a worker that made a session of its own)."""
        if process not in self.running:
            return
        TLS_PORTS.discard(self.tls_port_of.pop(process.pid, None))
        tree = [(pid, start_time(pid)) for pid in process_tree(process.pid)[1:]]
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait(10)
        try:   # workers that outlived their supervisor, still in its process group
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid, started in tree:
            if started is not None and start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.running.remove(process)

    def stop_all(self):
        for process in list(self.running):
            try:
                self.stop(process)
            except Exception as exc:   # go on stopping the others
                print("could not stop process %d: %s" % (process.pid, exc))


def measure_starts(fleet, upstream_port, label, extra, tries):
    """Start a proxy `tries` times: seconds to the port accepting and to /health's 200, and
    the RSS one second later; medians. {"exit": status} if one would not start."""
    ports, healths, rss, pss, procs = [], [], [], [], []
    retries = 3
    while len(ports) < tries:
        port, process, t0 = fleet.proxy(upstream_port, label, extra)
        try:
            deadline, accepted, healthy = t0 + 20, None, None
            while time.perf_counter() < deadline and accepted is None:
                if process.poll() is not None:
                    break
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    accepted = time.perf_counter() - t0
                except OSError:
                    time.sleep(0.002)
            if process.poll() is not None and fleet.port_taken(process) and retries:
                retries -= 1
                continue
            if process.poll() is not None:
                return {"exit": process.returncode, "said": fleet.last_line(process)}
            while accepted is not None and time.perf_counter() < deadline and healthy is None:
                if process.poll() is not None:
                    return {"exit": process.returncode, "said": fleet.last_line(process)}
                if http_status(port, "/health") == 200:
                    healthy = time.perf_counter() - t0
                else:
                    time.sleep(0.005)
            if healthy is None:
                return {"error": "no 200 from /health within 20 s"}
            time.sleep(1.0)
            memory = tree_memory(process.pid)
            ports.append(accepted)
            healths.append(healthy)
            rss.append(memory[0])
            pss.append(tree_pss(process.pid))
            procs.append(memory[2])
        finally:
            fleet.stop(process)
    return {"port": median(ports), "health": median(healths), "rss": median(rss),
            "pss": None if None in pss else median(pss), "processes": max(procs)}


def measure_bare_python(fleet, tries):
    """A bare interpreter: seconds to run `pass`, and the RSS of one idling; medians."""
    times, rss = [], []
    for _ in range(tries):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=fleet.env, timeout=30)
        times.append(time.perf_counter() - t0)
        process = fleet.spawn([sys.executable, "-c", "import time; time.sleep(60)"], "python")
        try:
            time.sleep(0.5)
            rss.append(tree_memory(process.pid)[0])
        finally:
            fleet.stop(process)
    return median(times), median(rss)


async def load_window(kind, port, clients, seconds, proxy_pid, upstream_pid):
    """`clients` keep-alive clients for `seconds`: requests answered, the rate, and the CPU
    the proxy tree, the upstream and this load generator used."""
    port, path, body = target(kind, port, False)
    request = encode_request(path, body)
    counts = {"ok": 0, "errors": 0}
    before = (tree_cpu(proxy_pid) if proxy_pid else 0.0, tree_cpu(upstream_pid), own_cpu(),
              machine_cpu())
    started = time.perf_counter()
    stop = started + seconds

    async def client():
        try:
            conn = await Connection.open(port)
        except OSError:
            counts["errors"] += 1
            return
        try:
            while time.perf_counter() < stop:
                conn.writer.write(request)
                head = await conn.reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await conn.reader.readexactly(length)
                counts["ok" if head.startswith(b"HTTP/1.1 200") else "errors"] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                IndexError):
            counts["errors"] += 1
        finally:
            conn.close()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), seconds + 20)
    elapsed = time.perf_counter() - started
    proxy = (tree_cpu(proxy_pid) - before[0]) if proxy_pid else 0.0
    upstream, me = tree_cpu(upstream_pid) - before[1], own_cpu() - before[2]
    others = machine_cpu() - before[3] - proxy - upstream - me
    OTHER_WORK.append(("throughput", max(0.0, others / elapsed)))
    return {"rate": counts["ok"] / elapsed, "errors": counts["errors"],
            "other_cores": max(0.0, others / elapsed),
            "cpu_ms": proxy / max(1, counts["ok"]) * 1e3, "proxy_cores": proxy / elapsed,
            "upstream_cores": upstream / elapsed, "client_cores": me / elapsed}


def decode_chunked(blob):
    out, at = [], 0
    while True:
        end = blob.index(b"\r\n", at)
        size = int(blob[at:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(blob[end + 2:end + 2 + size])
        at = end + 2 + size + 2


async def relay_once(kind, port, events):
    """One stream of `events` events without gaps, on a new connection, read as raw bytes
    (decoded after the clock stops): seconds from the request to the last byte."""
    port, path, body = target(kind, port, True, "bench-%d-0" % events)
    reader, writer = await open_connection(port, 1 << 20)
    try:
        request = encode_request(path, body)
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
            raise RuntimeError("%s: %r" % (KIND_NAMES[kind], head.split(b"\r\n")[0]))
        pieces, tail = [], b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            data = await reader.read(1 << 18)
            if not data:
                raise RuntimeError("%s: the stream ended early" % KIND_NAMES[kind])
            pieces.append(data)
            tail = (tail + data[-7:])[-7:]
        elapsed = time.perf_counter() - started
    finally:
        writer.close()
    got = [e for e in SSE_EVENT_END.split(decode_chunked(b"".join(pieces)))
           if e.startswith(b"data:")]
    if len(got) < events or not any(is_end(kind, e) for e in got[-3:]):
        raise RuntimeError("%s: %d events, end %s" % (
            KIND_NAMES[kind], len(got), "seen" if any(is_end(kind, e) for e in got) else
            "missing"))
    return elapsed


async def slow_stream(kind, port, request, events, seconds, timeout, gate, live):
    """One slow stream on a new connection: "ok", "late" (ok, not on time), "timeout", or
    "failed: why"; and (duration, the longest wait for an event, the wait for the first
    event, the longest wait between two later ones, and on time.monotonic()'s clock: when
    the stream began (before connecting), when its request was sent, when its first event
    arrived)."""
    started, began = time.perf_counter(), time.monotonic()
    state = {"times": [], "done": False, "writer": None, "streaming": False, "sent": 0.0,
             "first": 0.0}

    async def go():
        try:
            reader, writer = await open_connection(port, 1 << 20)
        finally:
            if not gate.done():
                gate.set_result(None)
        state["writer"] = writer
        live["open"] += 1
        live["peak_open"] = max(live["peak_open"], live["open"])
        state["sent"] = time.monotonic()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError("status %d" % status)
        if b"chunked" not in head.lower():
            raise RuntimeError("not chunked")
        buffer = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return time.perf_counter()
            buffer += (await reader.readexactly(size + 2))[:-2]
            now = time.perf_counter()
            pieces = SSE_EVENT_END.split(buffer)
            buffer = pieces.pop()
            for piece in pieces:
                if piece.startswith(b"data:"):
                    state["times"].append(now)
                    if not state["first"]:
                        state["first"] = time.monotonic()
                    if not state["streaming"]:
                        state["streaming"] = True
                        live["streaming"] += 1
                        live["peak_streaming"] = max(live["peak_streaming"],
                                                     live["streaming"])
                    if is_end(kind, piece):
                        state["done"] = True
    try:
        ended = await asyncio.wait_for(go(), timeout)
    except asyncio.TimeoutError:
        return "timeout", (timeout,) + (0.0,) * 6
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
            IndexError, RuntimeError) as exc:
        return "failed: %s" % (str(exc) or type(exc).__name__)[:80], (0.0,) * 7
    finally:
        if not gate.done():
            gate.set_result(None)
        if state["writer"] is not None:
            state["writer"].close()
            live["open"] -= 1
        if state["streaming"]:
            live["streaming"] -= 1
    times = state["times"]
    if not state["done"] or len(times) < events:
        return "failed: %d events, %s" % (len(times), "ended" if state["done"] else
                                          "no end"), (ended - started,) + (0.0,) * 6
    gaps = [b - a for a, b in zip([started] + times, times)]
    duration, worst = ended - started, max(gaps)
    on_time = worst <= GAP_LIMIT and duration <= seconds + END_SLACK
    return ("ok" if on_time else "late"), (duration, worst, gaps[0], max(gaps[1:] or [0.0]),
                                           began, state["sent"], state["first"])


async def slow_streams(kind, port, count, seconds, watch_pid, batch=250, health_port=None,
                       upstream_pid=None, upstream_port=None):
    """`count` streams of `seconds` events one second apart, opened in batches (a batch's
    connections made before the next is opened, so no listen backlog overflows); the
    RSS of `watch_pid`'s tree sampled meanwhile, its CPU counted. Each stream is tagged
    (see the top of this file), and the upstream (at `upstream_port`, else `port`) asked
    afterwards when each request arrived and its first event went out."""
    requests = [encode_request(*target(kind, port, True, "bench-%d-1-%d" % (seconds, n))[1:])
                for n in range(count)]
    timeout = 3.0 * seconds
    live = {"open": 0, "peak_open": 0, "streaming": 0, "peak_streaming": 0}
    peak = {"rss": 0.0, "threads": 0, "pss": 0.0, "processes": 0}
    health = []
    loop = asyncio.get_running_loop()

    def measure():
        return tree_memory(watch_pid), tree_pss(watch_pid)

    async def sample():   # in a thread: reading a big process's smaps_rollup takes a while
        while True:
            (rss, threads, processes), pss = await loop.run_in_executor(None, measure)
            peak["rss"], peak["threads"] = max(peak["rss"], rss), max(peak["threads"], threads)
            peak["pss"] = max(peak["pss"], pss or 0.0)
            peak["processes"] = max(peak["processes"], processes)
            await asyncio.sleep(0.5)

    async def ask_health():
        while True:
            asked = time.perf_counter()
            status, _ = await async_http_get(health_port, "/health")
            health.append((status, time.perf_counter() - asked))
            await asyncio.sleep(1.0)
    samplers = [asyncio.ensure_future(sample())]
    if health_port:
        samplers.append(asyncio.ensure_future(ask_health()))
    cpu_before, me_before = tree_cpu(watch_pid), own_cpu()
    up_before = tree_cpu(upstream_pid) if upstream_pid else 0.0
    machine_before = machine_cpu()
    started = time.perf_counter()
    launch_deadline = started + max(30.0, seconds * 2.0)
    tasks, unopened = [], 0
    try:
        for first in range(0, count, batch):
            if time.perf_counter() > launch_deadline:
                unopened = count - first
                break
            gates = []
            for _ in range(min(batch, count - first)):
                gates.append(loop.create_future())
                tasks.append(asyncio.ensure_future(slow_stream(
                    kind, port, requests[len(tasks)], seconds, seconds, timeout, gates[-1],
                    live)))
            await asyncio.wait(gates, timeout=10)
            await asyncio.sleep(0.02)
        opened = time.perf_counter() - started
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout + 30)
    finally:
        for sampler in samplers:
            sampler.cancel()
        for task in tasks:
            task.cancel()
    status, body = await async_http_get(upstream_port or port, "/stream-times", 10.0)
    stream_times = json.loads(body) if status == 200 else {}
    # The first event's wait, in parts that add up: connecting, the request's way to the
    # upstream, the upstream's own wait before the event (the stream's gap), its way back.
    parts = {"connect": [], "to_upstream": [], "upstream": [], "from_upstream": []}
    for n, (outcome, times) in enumerate(results):
        arrived, first_out = stream_times.get(str(n), (0.0, 0.0))
        if outcome in ("ok", "late") and arrived:
            began, sent, first = times[4:7]
            for part, took in zip(parts, (sent - began, arrived - sent,
                                          first_out - arrived, first - first_out)):
                parts[part].append(took)
    outcomes = {}
    for outcome, _ in results:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    complete = [times for outcome, times in results if outcome in ("ok", "late")]
    wall = time.perf_counter() - started
    cpu = tree_cpu(watch_pid) - cpu_before
    up = (tree_cpu(upstream_pid) - up_before) if upstream_pid else 0.0
    me = own_cpu() - me_before
    others = max(0.0, machine_cpu() - machine_before - cpu - up - me)
    OTHER_WORK.append(("%d streams" % count, others / wall))
    return {
        "count": count, "ok": outcomes.get("ok", 0) + outcomes.get("late", 0),
        "on_time": outcomes.get("ok", 0), "timeout": outcomes.get("timeout", 0),
        "unopened": unopened,
        "failed": {k: v for k, v in outcomes.items() if k.startswith("failed")},
        "p50": median([c[0] for c in complete]), "max": max([c[0] for c in complete] or [0]),
        "worst_gap_p99": pct([c[1] for c in complete], 0.99) if complete else float("nan"),
        "first_p50": median([c[2] for c in complete]),
        "first_p99": pct([c[2] for c in complete], 0.99) if complete else float("nan"),
        "later_p50": median([c[3] for c in complete]),
        "later_p99": pct([c[3] for c in complete], 0.99) if complete else float("nan"),
        "first_event_parts": parts,
        "wall": wall, "opened": opened, "peak_rss": peak["rss"], "peak_threads": peak["threads"],
        "peak_pss": peak["pss"], "processes": peak["processes"],
        "peak_open": live["peak_open"], "peak_streaming": live["peak_streaming"],
        "cpu": cpu, "client_cores": me / wall, "other_cores": others / wall,
        "health": health}


def describe_slow(label, r, whose):
    failed = ", ".join("%s x%d" % (k[8:], v) for k, v in sorted(r["failed"].items()))
    health = ""
    if r["health"]:
        good = sum(1 for status, took in r["health"] if status == 200)
        health = "\n      /health: 200 in %d of %d asks (each second), slowest answer %.2f s" % (
            good, len(r["health"]), max(took for _, took in r["health"]))
    where, parts = "", r["first_event_parts"]
    if parts["connect"]:
        where = ("\n      that wait, p50 (p99): connecting %s, the request's way to the upstream "
                 "%s, the upstream's own %s, the event's way back %s" % tuple(
                     "%.3f s (%.3f)" % (median(values), pct(values, 0.99))
                     for values in parts.values()))
    return ("  %-14s ok %d, on time %d, timed out %d%s%s of %d | stream p50 %.2f s, max "
            "%.2f s, worst gap p99 %.2f s\n      first event after p50 %.2f s, p99 %.2f s; "
            "longest gap after it p50 %.2f s, p99 %.2f s%s\n      opened in %.1f s, at once: "
            "%d open, %d "
            "streaming | %s peak RSS %.0f MB (PSS %.0f MB, %d process%s), %d threads, CPU "
            "%.1f s | load generator "
            "%.0f%%, other work %.0f%% of a core, run %.0f s%s" % (
                label, r["ok"], r["on_time"], r["timeout"],
                ", failed %d (%s)" % (sum(r["failed"].values()), failed) if failed else "",
                ", not opened %d" % r["unopened"] if r["unopened"] else "", r["count"],
                r["p50"], r["max"], r["worst_gap_p99"], r["first_p50"], r["first_p99"],
                r["later_p50"], r["later_p99"], where, r["opened"], r["peak_open"],
                r["peak_streaming"], whose, r["peak_rss"], r["peak_pss"], r["processes"],
                "" if r["processes"] == 1 else "es", r["peak_threads"], r["cpu"],
                r["client_cores"] * 100, r["other_cores"] * 100, r["wall"], health))


def fmt_rate(value):
    return format(value, ",.0f") if value == value else "-"


def scan_logs(fleet):
    """What the proxies' (and the floor's) logs say beyond the ordinary: warnings,
    errors, tracebacks (by their last line), non-200 replies; a few examples of each."""
    lines = []
    for label, path in fleet.logs:
        if not label.startswith(("proxy", "floor")):
            continue
        levels, statuses, samples = {}, {}, []

        def note(level, text):
            levels[level] = levels.get(level, 0) + 1
            key = re.sub(r"\d+", "N", text)[:60]
            if len(samples) < 4 and all(k != key for k, _ in samples):
                samples.append((key, text[:240]))
        try:
            with open(path, errors="replace") as f:
                log = f.read().splitlines()
        except OSError:
            continue
        i = 0
        while i < len(log):
            line = log[i]
            i += 1
            if line.startswith("Traceback"):
                where = ""
                while i < len(log) and (log[i].startswith(" ") or not log[i].strip()):
                    if log[i].strip().startswith("File "):
                        where = log[i].strip()
                    i += 1
                note("Traceback", "Traceback: %s (%s)" % (
                    log[i].strip() if i < len(log) else "?", where))
                i += 1
                continue
            match = re.match(r"\S+ \S+ (WARNING|ERROR|CRITICAL) (.*)", line)
            if match:
                note(match.group(1), match.group(2).strip())
                continue
            match = re.match(r"\S+ \S+ INFO (?:GET|POST) \S+ (\d{3}) ", line)
            if match and match.group(1) != "200":
                statuses[match.group(1)] = statuses.get(match.group(1), 0) + 1
        if levels or statuses:
            lines.append("  %s: %s" % (label, ", ".join(
                ["%d %s" % (n, level) for level, n in sorted(levels.items())] +
                ["%d replies %s" % (n, status) for status, n in sorted(statuses.items())])))
            lines.extend("      %s" % text for _, text in samples)
    return lines


def proxy_identity():
    script = os.path.join(ROOT, "gemini_proxy.py")
    try:
        with open(script, "rb") as f:
            digest = __import__("hashlib").sha256(f.read()).hexdigest()[:12]
    except OSError:
        digest = "?"
    described = ""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--",
                                "gemini_proxy.py"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        if head:
            described = ", git %s%s" % (head, " + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return digest, described


async def latency_rounds(args, up_port, proxies, rounds, out):
    """Added p50, interleaved rounds; into `out`. `proxies`: label -> (port, pid) for "one"
    and, when they started, "two" (processes) and "floor" (not timed here)."""
    one_port = proxies["one"][0]
    n = args.requests
    print("\nadded p50, whole reply: %d rounds of %d sequential requests each, direct, "
          "OpenAI client, Gemini client" % (rounds, n))
    p50s = {k: [] for k in ("direct", "openai", "gemini")}
    p99s = {k: [] for k in p50s}
    for _ in range(rounds):
        for kind in p50s:
            times = await asyncio.wait_for(sequential(
                kind, up_port if kind == "direct" else one_port, n, False), 10 + n * 0.1)
            p50s[kind].append(statistics.median(times))
            p99s[kind].append(pct(times, .99))
    out["direct_p50"] = median(p50s["direct"]) * 1e3
    for kind in p50s:
        added = [(p - d) * 1e3 for p, d in zip(p50s[kind], p50s["direct"])]
        out["added_" + kind] = median(added)
        out["p50_" + kind] = median(p50s[kind]) * 1e3
        print("  %-14s p50 %.3f ms, p99 %.3f ms%s" % (
            KIND_NAMES[kind], median(p50s[kind]) * 1e3, median(p99s[kind]) * 1e3,
            "" if kind == "direct" else " | added p50 %+.3f ms (rounds: %s)" % (
                median(added), " ".join("%+.3f" % a for a in added))))


async def load_rounds(args, up_port, up_pid, proxies, rounds, out):
    """CPU per request and throughput, interleaved rounds; into `out`."""
    print("\nCPU and throughput: %d rounds of %d concurrent keep-alive clients for %g s "
          "each, whole replies" % (rounds, args.clients, args.seconds))
    variants = [("direct", "direct", up_port, None)]
    if "floor" in proxies:
        variants.append(("floor-openai", "the floor (a minimal relay)") + proxies["floor"])
    for label, name in (("one", ""), ("two", " (%d processes)" % args.processes)):
        if label in proxies:
            port, pid = proxies[label]
            variants += [(label + "-openai", "OpenAI client" + name, port, pid),
                         (label + "-gemini", "Gemini client" + name, port, pid)]
    windows = {key: [] for key, _, _, _ in variants}
    for _ in range(rounds):
        for key, _, port, pid in variants:
            kind = key.split("-")[-1]
            windows[key].append(await load_window(kind, port, args.clients, args.seconds,
                                                  pid, up_pid))
    direct_rate = median([w["rate"] for w in windows["direct"]])
    for key, name, _, pid in variants:
        ws = windows[key]
        rate = median([w["rate"] for w in ws])
        out["rate_" + key] = rate
        out["cpu_" + key] = median([w["cpu_ms"] for w in ws])
        out["cores_" + key] = median([w["proxy_cores"] for w in ws])
        errors = sum(w["errors"] for w in ws)
        out["errors_" + key] = errors
        print("  %-28s %8s req/s (x%.2f of direct)%s | upstream %.0f%%, load generator "
              "%.0f%%, other work %.0f%% of a core%s" % (
                  name, fmt_rate(rate), rate / direct_rate,
                  "" if pid is None else " | its CPU %.3f ms/request, %.2f cores" % (
                      out["cpu_" + key], out["cores_" + key]),
                  median([w["upstream_cores"] for w in ws]) * 100,
                  median([w["client_cores"] for w in ws]) * 100,
                  median([w["other_cores"] for w in ws]) * 100,
                  " | %d errors" % errors if errors else ""))


async def relay_rounds(up_port, proxies, rounds, out):
    """Events a second through one 2,000-event stream, interleaved rounds; into `out`."""
    one_port = proxies["one"][0]
    events = 2000
    print("\nSSE relay: a %d-event stream, %d rounds of 3 streams per kind" % (events, rounds))
    seconds = {k: [] for k in ("direct", "openai", "gemini")}
    for _ in range(rounds):
        for kind in seconds:
            for _ in range(3):
                seconds[kind].append(await asyncio.wait_for(relay_once(
                    kind, up_port if kind == "direct" else one_port, events), 30))
    for kind in seconds:
        out["relay_" + kind] = events / median(seconds[kind])
        print("  %-14s %8s events/s (%s, stream p50 %.1f ms)%s" % (
            KIND_NAMES[kind], fmt_rate(out["relay_" + kind]),
            {"direct": "upstream", "openai": "pass-through", "gemini": "converted"}[kind],
            median(seconds[kind]) * 1e3, "" if kind == "direct" else " x%.2f of direct" % (
                out["relay_" + kind] / out["relay_direct"])))


async def slow_row(fleet, args, label, count, extra=()):
    """Direct, then the proxy (given `extra` arguments), each on fresh processes: `count`
    slow streams."""
    up_port, upstream = fleet.upstream()
    try:
        direct = await slow_streams("direct", up_port, count, args.slow_seconds, upstream.pid)
    finally:
        fleet.stop(upstream)
    print(describe_slow("direct", direct, "upstream"))
    up_port, upstream = fleet.upstream()
    port, proxy = fleet.ready_proxy(up_port, "proxy-" + label, extra)
    try:
        if port is None:
            raise RuntimeError("the proxy exited with status %s: %s" % (
                proxy.returncode, fleet.last_line(proxy)))
        idle = tree_memory(proxy.pid)[0]
        proxied = await slow_streams(args.slow_client, port, count, args.slow_seconds,
                                     proxy.pid, health_port=port, upstream_pid=upstream.pid,
                                     upstream_port=up_port)
        proxied["idle_rss"] = idle
    finally:
        fleet.stop(proxy)
        fleet.stop(upstream)
    print(describe_slow("proxy", proxied, "proxy (idle %.0f MB)" % idle))
    return direct, proxied


async def run_table(args, fleet, fd_note, fd_soft):
    rows, notes = {}, []

    def guard(name, error):
        message = "%s: %s: %s" % (name, type(error).__name__, error)
        print("  ROW FAILED " + message)
        notes.append(message)

    tries = 3 if args.quick else 5
    up_port, upstream = fleet.upstream()
    proxies, running = {}, []
    try:
        print("\nstart-up; idle memory: %d starts each" % tries)
        python_start, python_rss = measure_bare_python(fleet, tries)
        print("  bare python   %.3f s to run `pass`; %.1f MB idle" % (python_start, python_rss))
        starts = {"one": measure_starts(fleet, up_port, "proxy-start", (), tries)}
        rows["python"] = (python_start, python_rss)
        if args.processes:
            starts["two"] = measure_starts(fleet, up_port, "proxy-start-processes",
                                           ("--processes", str(args.processes)), tries)
        for label, s in starts.items():
            name = "proxy" if label == "one" else "--processes %d" % args.processes
            if "port" in s:
                print("  %-13s %.3f s to its port accepting, %.3f s to /health 200; %.1f MB "
                      "idle (RSS summed over %d process%s%s)" % (
                          name, s["port"], s["health"], s["rss"], s["processes"],
                          "" if s["processes"] == 1 else "es",
                          "" if s["pss"] is None else "; PSS %.1f MB" % s["pss"]))
            elif label == "two" and s.get("exit"):
                print("processes: not supported by this gemini_proxy.py (it exited with "
                      "status %s given --processes %d: %s)" % (s["exit"], args.processes,
                                                               s["said"]))
            else:
                print("  %-13s did not start: %s" % (name, s))
        rows["starts"] = starts

        port, process = fleet.ready_proxy(up_port, "proxy")
        running.append(process)
        if port is None:
            raise RuntimeError("the proxy exited with status %s: %s" % (
                process.returncode, fleet.last_line(process)))
        proxies["one"] = (port, process.pid)
        if args.processes and "port" in starts.get("two", {}):
            port, process = fleet.ready_proxy(up_port, "proxy-processes",
                                              ("--processes", str(args.processes)))
            running.append(process)
            if port is None:
                print("processes: the --processes %d proxy exited with status %s: %s" % (
                    args.processes, process.returncode, fleet.last_line(process)))
            else:
                http_status(port, "/health")
                proxies["two"] = (port, process.pid)
        try:   # (a reference only: the proxy's rows do without it)
            port, process = fleet.floor(up_port)
            running.append(process)
            proxies["floor"] = (port, process.pid)
        except Exception as exc:
            guard("the floor", exc)
        for name, row in (
                ("added p50", latency_rounds(args, up_port, proxies, args.rounds, rows)),
                ("CPU and throughput", load_rounds(args, up_port, upstream.pid, proxies,
                                                   args.rounds, rows)),
                ("SSE relay", relay_rounds(up_port, proxies, args.rounds, rows))):
            try:
                await row
            except Exception as exc:   # the other rows are still worth having
                guard(name, exc)
    finally:
        for process in running:
            fleet.stop(process)
        fleet.stop(upstream)

    print("\n%d slow streams (%d s each, one event a second), %s through the proxy; "
          "fresh processes" % (args.slow_streams, args.slow_seconds,
                               KIND_NAMES[args.slow_client]))
    try:
        rows["slow"] = await slow_row(fleet, args, "slow", args.slow_streams)
    except Exception as exc:
        guard("slow streams", exc)

    if args.hold_streams:
        count = args.hold_streams
        print("\n%d-stream hold (%d s each, one event a second), %s; %s" % (
            count, args.slow_seconds, KIND_NAMES[args.slow_client], fd_note))
        # Open files a proxy process needs: two sockets a stream (the client's, the
        # upstream's), and room for the rest; worker processes share the streams out
        # (SO_REUSEPORT: about evenly; 10% allowed for the unevenness).
        processes = args.hold_processes or 1
        one = 2 * count + 256
        supported = "port" in rows.get("starts", {}).get("two", {})
        if args.hold_processes is None and fd_soft < one and args.processes > 1 and \
                supported:
            processes = args.processes
            print("  one proxy process would need %d open files, the limit is %d: the hold "
                  "runs on a --processes %d proxy" % (one, fd_soft, processes))
        need = one if processes == 1 else 2 * int(count * 1.1 / processes) + 256
        if fd_soft < need or fd_soft < count + 256:
            rows["hold"] = "skipped: %d streams need %d open files in %s (two sockets a " \
                "stream), the limit is %d" % (
                    count, need, "each proxy process" if processes > 1 else "the proxy",
                    fd_soft)
            print("  " + rows["hold"])
        else:
            rows["hold_processes"] = processes
            try:
                rows["hold"] = await slow_row(
                    fleet, args, "hold", count,
                    ("--processes", str(processes)) if processes > 1 else ())
            except Exception as exc:
                guard("hold", exc)
    return rows, notes


def markdown_table(args, rows):
    """The README's table: | | direct | gemini_proxy | ratio |."""
    out = ["| | direct | gemini_proxy | proxy / direct |", "|---|---|---|---|"]

    def row(*cells):
        out.append("| " + " | ".join(cells) + " |")
    if "added_openai" in rows:
        row("added p50, whole reply", "%.3f ms (p50)" % rows["direct_p50"],
            "+%.3f ms OpenAI client, +%.3f ms Gemini client" % (
                rows["added_openai"], rows["added_gemini"]),
            "p50 x%.1f, x%.1f" % (rows["p50_openai"] / rows["direct_p50"],
                                  rows["p50_gemini"] / rows["direct_p50"]))
    if "cpu_one-openai" in rows:
        row("proxy CPU per request, under load (%d clients)" % args.clients, "-",
            "%.3f ms OpenAI, %.3f ms Gemini" % (rows["cpu_one-openai"],
                                                rows["cpu_one-gemini"]),
            "%.2f, %.2f cores busy" % (rows["cores_one-openai"], rows["cores_one-gemini"]))
        if rows.get("rate_floor-openai"):   # (none when the floor answered nothing)
            row("the floor: a minimal relay in Python, whole replies (%d clients)" %
                args.clients, "%.3f ms of CPU a request, %s req/s%s" % (
                    rows["cpu_floor-openai"], fmt_rate(rows["rate_floor-openai"]),
                    ", %d errors" % rows["errors_floor-openai"]
                    if rows["errors_floor-openai"] else ""), "-",
                "proxy's CPU / floor's: x%.1f OpenAI, x%.1f Gemini (the floor converts "
                "nothing)" % (rows["cpu_one-openai"] / rows["cpu_floor-openai"],
                              rows["cpu_one-gemini"] / rows["cpu_floor-openai"]))
        row("throughput, one proxy process (%d clients)" % args.clients,
            "%s req/s" % fmt_rate(rows["rate_direct"]),
            "%s OpenAI, %s Gemini" % (fmt_rate(rows["rate_one-openai"]),
                                      fmt_rate(rows["rate_one-gemini"])),
            "x%.3f, x%.3f" % (rows["rate_one-openai"] / rows["rate_direct"],
                              rows["rate_one-gemini"] / rows["rate_direct"]))
    if "relay_direct" in rows:
        row("SSE relay, 2,000-event stream", "%s ev/s" % fmt_rate(rows["relay_direct"]),
            "%s pass-through, %s converted" % (fmt_rate(rows["relay_openai"]),
                                               fmt_rate(rows["relay_gemini"])),
            "x%.2f, x%.2f" % (rows["relay_openai"] / rows["relay_direct"],
                              rows["relay_gemini"] / rows["relay_direct"]))

    def streams(r):
        failed = sum(r["failed"].values())
        return "%d ok, %d on time, %d timed out%s%s" % (
            r["ok"], r["on_time"], r["timeout"], ", %d failed" % failed if failed else "",
            ", %d not opened" % r["unopened"] if r["unopened"] else "")
    for key, title in (("slow", "%s slow streams (%d s each, one event a second)" % (
            format(args.slow_streams, ","), args.slow_seconds)),
                       ("hold", "%s-stream hold%s" % (
                           format(args.hold_streams, ","),
                           " (%d proxy processes)" % rows["hold_processes"]
                           if rows.get("hold_processes", 1) > 1 else ""))):
        value = rows.get(key)
        if isinstance(value, str):
            row(title, "-", value, "-")
        elif value:
            direct, proxied = value
            row(title + ("" if args.slow_client == "gemini" else ", OpenAI client"),
                streams(direct), streams(proxied), "on time x%.2f" % (
                    proxied["on_time"] / max(1, direct["on_time"])))
            row("memory for those streams" if key == "slow" else
                "memory for the %s streams" % format(args.hold_streams, ","),
                "%.0f MB (upstream)" % direct["peak_rss"],
                "%.0f MB peak (idle %.0f)%s" % (
                    proxied["peak_rss"], proxied["idle_rss"],
                    "" if proxied["processes"] <= 1 else ", RSS summed over %d processes "
                    "(PSS %.0f MB)" % (proxied["processes"], proxied["peak_pss"])),
                "x%.1f" % (proxied["peak_rss"] / max(1.0, direct["peak_rss"])))
    starts = rows.get("starts", {})
    one = starts.get("one", {})
    if "port" in one:
        python_start, python_rss = rows["python"]
        row("start-up; idle memory (python %s)" % sys.version.split()[0],
            "bare python: %.2f s; %.0f MB" % (python_start, python_rss),
            "%.2f s to port, %.2f s to /health; %.0f MB" % (one["port"], one["health"],
                                                          one["rss"]),
            "x%.1f; x%.1f" % (one["health"] / python_start, one["rss"] / python_rss))
    if args.processes:
        two = starts.get("two", {})
        if "rate_two-openai" in rows:
            name = "%d processes" % args.processes
            row("throughput, %s (%d clients)" % (name, args.clients),
                "%s req/s" % fmt_rate(rows["rate_direct"]),
                "%s OpenAI, %s Gemini" % (fmt_rate(rows["rate_two-openai"]),
                                          fmt_rate(rows["rate_two-gemini"])),
                "x%.3f, x%.3f (x%.2f, x%.2f of one process)" % (
                    rows["rate_two-openai"] / rows["rate_direct"],
                    rows["rate_two-gemini"] / rows["rate_direct"],
                    rows["rate_two-openai"] / rows["rate_one-openai"],
                    rows["rate_two-gemini"] / rows["rate_one-gemini"]))
            row("proxy CPU per request, %s" % name, "-",
                "%.3f ms OpenAI, %.3f ms Gemini" % (rows["cpu_two-openai"],
                                                    rows["cpu_two-gemini"]),
                "%.2f, %.2f cores busy" % (rows["cores_two-openai"],
                                           rows["cores_two-gemini"]))
            if "port" in two:
                row("start-up; idle memory, %s" % name, "-",
                    "%.2f s to port, %.2f s to /health; %.0f MB RSS summed over %d "
                    "processes%s" % (two["port"], two["health"], two["rss"], two["processes"],
                                     "" if two["pss"] is None else
                                     " (PSS %.0f MB)" % two["pss"]), "-")
        elif two.get("exit"):
            row("%d processes" % args.processes, "-",
                "not supported by this gemini_proxy.py", "-")
    return out


def table_main(args):
    quick = args.quick
    for name, full, small in (("rounds", 5, 3), ("requests", 1000, 300), ("seconds", 3.0, 1.5),
                              ("slow_streams", 1000, 100), ("slow_seconds", 20, 5),
                              ("hold_streams", 10000, 500)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    need = max(2 * args.hold_streams, 2 * args.slow_streams) + 256
    fd_soft, fd_note = raise_open_file_limit(need)
    digest, described = proxy_identity()
    load_start = os.getloadavg()[0]
    command = " ".join([os.path.basename(sys.executable)] + [shlex.quote(a) for a in sys.argv])
    print("command: %s" % command)
    print("python %s, %d CPUs, gemini_proxy.py sha256 %s%s; load average %s" % (
        sys.version.split()[0], os.cpu_count(), digest, described,
        " ".join("%.2f" % x for x in os.getloadavg())))
    print(fd_note)
    if args.tls:
        print("the upstream is behind TLS (--tls): direct and the proxies call it through TLS")
    state_dir = tempfile.mkdtemp(prefix="gemini-proxy-bench-")
    fleet = Fleet(state_dir, args)
    started = time.time()
    try:
        rows, notes = asyncio.run(run_table(args, fleet, fd_note, fd_soft))
        print("\nthe proxies' logs:")
        print("\n".join(scan_logs(fleet)) or "  no warnings, errors or non-200 replies")
    finally:
        fleet.stop_all()
        if args.keep_state:
            print("state and logs kept in %s" % state_dir)
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
    if proxy_identity()[0] != digest:
        notes.append("gemini_proxy.py changed during the run (sha256 %s at the start, %s at "
                     "the end): rows may come from different versions" % (
                         digest, proxy_identity()[0]))
    print("\n" + "\n".join(markdown_table(args, rows)))
    print("\n%d CPUs, python %s, gemini_proxy.py %s%s; %.0f s; load average (1 min) %.1f "
          "at the start, %.1f at the end" % (
              os.cpu_count(), sys.version.split()[0], digest, described,
              time.time() - started, load_start, os.getloadavg()[0]))
    if OTHER_WORK:
        what, most = max(OTHER_WORK, key=lambda item: item[1])
        print("other work on the machine meanwhile: at most %.2f cores (during %s), median "
              "%.2f" % (most, what, median([cores for _, cores in OTHER_WORK])))
    print("made by: %s" % command)
    for note in notes:
        print("NOTE: " + note)


def start_proxy(script, port, upstream_port, workers, state_dir, config=None):
    """A proxy process; `config` (a dict) is written to a file in state_dir first."""
    command = [sys.executable, script, "--port", str(port),
               "--upstream-url", "http://127.0.0.1:%d/v1" % upstream_port,
               "--workers", str(workers)]
    if config is not None:
        path = os.path.join(state_dir, "config-%d.json" % port)
        with open(path, "w") as f:
            json.dump(config, f)
        command += ["-c", path]
    return subprocess.Popen(command, stderr=subprocess.DEVNULL, env=dict(
        os.environ, PYTHONDONTWRITEBYTECODE="1", GEMINI_PROXY_STATE_DIR=state_dir))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--ops", action="store_true", help="usage ledger and metrics on "
                        "versus off")
    parser.add_argument("--baseline", help="with --ops: another gemini_proxy.py to compare")
    parser.add_argument("--table", action="store_true", help="every row of the performance "
                        "table, and a Markdown table of them (see the top of this file)")
    parser.add_argument("--rounds", type=int, help="--table: interleaved rounds (5)")
    parser.add_argument("--requests", type=int, help="--table: sequential requests a round "
                        "for the added p50 (1000)")
    parser.add_argument("--clients", type=int, default=32, help="--table: concurrent "
                        "clients for CPU and throughput (32)")
    parser.add_argument("--seconds", type=float, help="--table: seconds a throughput "
                        "window (3)")
    parser.add_argument("--slow-streams", type=int, help="--table: slow streams (1000)")
    parser.add_argument("--slow-seconds", type=int, help="--table: events (one a second) "
                        "in each slow stream (20)")
    parser.add_argument("--slow-client", choices=("gemini", "openai"), default="gemini",
                        help="--table: who opens the slow streams through the proxy")
    parser.add_argument("--hold-streams", type=int, help="--table: streams held at once "
                        "(10000; 0: skip the row)")
    parser.add_argument("--hold-processes", type=int, help="--table: the hold's proxy "
                        "--processes (default: 1, or --processes when one process may not "
                        "open enough files)")
    parser.add_argument("--processes", type=int, default=2, help="--table: the two-process "
                        "run's --processes (0: skip)")
    parser.add_argument("--keep-state", action="store_true", help="--table: keep the "
                        "temporary directory (the proxies' state and logs)")
    parser.add_argument("--workers", type=int, help="the proxy's --workers (--table: not "
                        "passed unless given; elsewhere max(256, --streams + 64))")
    parser.add_argument("--tls", action="store_true", help="--table: the upstream behind "
                        "TLS (a throwaway certificate, made with the openssl command); direct "
                        "calls it through TLS too")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", help=argparse.SUPPRESS)   # PORT,UPSTREAM_PORT[,CA]
    parser.add_argument("--tls-files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        asyncio.run(serve_upstream(args.serve_upstream, args.tls_files and
                                   args.tls_files.split(",")))
        return
    if args.serve_floor:
        port, upstream_port, *cafile = args.serve_floor.split(",")
        asyncio.run(serve_floor(int(port), int(upstream_port), *cafile))
        return
    if args.tls and not args.table:
        parser.error("--tls goes with --table")
    if args.tls and not shutil.which("openssl"):
        parser.error("--tls needs the openssl command, to make a certificate")
    if args.table:
        table_main(args)
        return
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream",
                                 str(upstream_port)])
    state_dir = tempfile.mkdtemp(prefix="gemini-proxy-bench-")
    script = os.path.join(ROOT, "gemini_proxy.py")
    workers = args.workers or max(256, args.streams + 64)
    proxies = []
    try:
        if args.ops:
            named = {"server": {"api_keys": [{"key": CLIENT_KEY.decode(), "name": "bench"}]}}
            specs = [("ledger and named key", script, named),
                     ("no ledger, no client key", script, {"usage": {"database": ""}})]
            if args.baseline:
                specs.append(("baseline " + os.path.basename(args.baseline), args.baseline,
                              None))
            variants = []
            for name, path, config in specs:
                port = free_port()
                proxies.append(start_proxy(path, port, upstream_port, workers, state_dir,
                                           config))
                variants.append((name, port, proxies[-1].pid))
            wait_port(upstream_port)
            for _, port, _ in variants:
                wait_port(port)
            print("python %s, %d CPUs" % (sys.version.split()[0], os.cpu_count()))
            asyncio.run(run_ops(args, upstream_port, variants))
            return
        proxy_port = free_port()
        proxies.append(start_proxy(script, proxy_port, upstream_port, workers, state_dir))
        wait_port(upstream_port)
        wait_port(proxy_port)
        print("python %s, %d CPUs" % (sys.version.split()[0], os.cpu_count()))
        asyncio.run(run(args, upstream_port, proxy_port, proxies[0].pid))
    finally:
        for process in proxies + [upstream]:
            process.terminate()
        for process in proxies + [upstream]:
            process.wait(15)
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
