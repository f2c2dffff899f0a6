#!/usr/bin/env python3
"""Benchmark: what the proxy adds to a request, against calling the upstream directly in
the same run. Prints numbers; asserts nothing (these machines are noisy: compare ratios
within one run, not absolute numbers across runs).

    python3 bench/bench.py                 # all scenarios, a few minutes at most
    python3 bench/bench.py --quick         # smaller counts
    python3 bench/bench.py --streams 2000  # concurrent streams to hold open

Three processes: a minimal asyncio OpenAI-compatible upstream, the proxy
(gemini_proxy.py, default settings but for --workers), and this load generator.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

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
            for event in stream_events(chunks):
                if gap:
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
                          b"content-length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        if b"content-length:" in lower:
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            data = await self.reader.readexactly(length)
        else:   # chunked
            data = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                data += (await self.reader.readexactly(size + 2))[:-2]
        return status, data

    def close(self):
        self.writer.close()


OPENAI_BODY = {"model": "bench", "messages": [{"role": "user", "content": "Hello there"}]}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Hello there"}]}]}


def target(kind, port, stream, model="bench-20-0"):
    """(port, path, body): the same request, spoken to the upstream or through the proxy
    (which passes the model name through unchanged)."""
    if kind == "direct":
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        asyncio.run(serve_upstream(args.serve_upstream))
        return
    upstream_port, proxy_port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream",
                                 str(upstream_port)])
    proxy = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "gemini_proxy.py"), "--port", str(proxy_port),
         "--upstream-url", "http://127.0.0.1:%d/v1" % upstream_port,
         "--workers", str(max(256, args.streams + 64))],
        stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    try:
        wait_port(upstream_port)
        wait_port(proxy_port)
        print("python %s, %d CPUs" % (sys.version.split()[0], os.cpu_count()))
        asyncio.run(run(args, upstream_port, proxy_port, proxy.pid))
    finally:
        proxy.terminate()
        upstream.terminate()
        proxy.wait(15)
        upstream.wait(15)


if __name__ == "__main__":
    main()
