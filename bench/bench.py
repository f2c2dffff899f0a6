#!/usr/bin/env python3
"""Benchmark: what the proxy adds to a request, against calling the upstream directly in
the same run. Prints numbers; asserts nothing (these machines are noisy: compare ratios
within one run, not absolute numbers across runs).

    python3 bench/bench.py --table         # every row of the performance table, a Markdown
                                           # table at the end (about 5 minutes)
    python3 bench/bench.py --table --quick # the same, small: 100 slow streams of 5 s, ...
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
  SSE relay       one 2,000-event stream (no gaps) per kind and round, read as raw bytes;
                  2,000 / seconds from request to last byte. Pass-through: OpenAI client,
                  stream:true; converted: Gemini client, :streamGenerateContent?alt=sse.
  slow streams    --slow-streams (1000) streams of --slow-seconds (20) events one second
                  apart, opened in batches of 250, all on new connections, by a Gemini
                  client (--slow-client openai for pass-through); a fresh upstream and a
                  fresh proxy. ok: status 200, every event, the end marker. On time: ok, and
                  every event within 1.5 s of the one before (the first: of the request),
                  and the stream over within --slow-seconds + 3 s of its start (before
                  connecting). Timed out: not over after 3 x --slow-seconds. Direct runs
                  first, then the proxy (one round each: these take minutes).
  memory          peak VmRSS, summed over the process tree, sampled twice a second while
                  those streams are open: the proxy's; direct: the upstream's.
  start-up        seconds from spawning the proxy to its port accepting and to GET /health
                  answering 200; its RSS one second later (medians of 5 starts). "Direct":
                  a bare interpreter (python -c pass; RSS of one sleeping).
  hold            --hold-streams (10000; 0: skip) slow streams at once, as above. The
                  benchmark raises its open-file soft limit to the hard limit (and, when it
                  may, as root, the hard limit to what the hold needs: the proxy holds two
                  sockets a stream); its children inherit it and the proxy raises its own.
                  When the limit stays too low the row is skipped, saying why.
  two processes   the CPU and throughput rounds include a proxy started with --processes
                  2 (--processes N; 0: skip); "processes: not supported by this
                  gemini_proxy.py" when it refuses the flag.

Rows run in that order but for start-up, which runs first. --workers is passed to the proxy
only when given, so the table measures the defaults; GEMINI_PROXY_* variables are not
passed on. Every process started is stopped when the run ends, however it ends, and each
row has a time limit. The proxies' logs are scanned at the end for warnings, errors and
non-200 replies. --quick: 3 rounds, 300 requests, 1.5 s windows, 100 slow streams of 5 s,
a hold of 500.

The upstream's streams: model "bench-<events>-<seconds between events>"; the gap comes
before each content event, the end (finish, usage, [DONE]) follows the last at once.
"""

import argparse
import asyncio
import json
import os
import re
import shlex
import signal
import shutil
import socket
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


async def upstream_connection(reader, writer):
    """Answers Chat Completions: the body's "stream" and "model" fields decide how."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
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
            # the model name says how to stream: bench-<chunks>-<seconds between chunks>
            _, chunks, gap = (request.get("model") or "bench-20-0").split("-")
            chunks, gap = int(chunks), float(gap)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            for i, event in enumerate(stream_events(chunks)):
                if gap and i < chunks:   # the end follows the last content event at once
                    await asyncio.sleep(gap)
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve_upstream(port):
    raise_open_file_limit(0)
    server = await asyncio.start_server(upstream_connection, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


# -- the load generator -------------------------------------------------------------------

class Connection:
    """One keep-alive HTTP/1.1 client connection."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
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
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        asyncio.run(serve_upstream(args.serve_upstream))
        return
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream",
                                 str(upstream_port)])
    state_dir = tempfile.mkdtemp(prefix="gemini-proxy-bench-")
    script = os.path.join(ROOT, "gemini_proxy.py")
    workers = max(256, args.streams + 64)
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
