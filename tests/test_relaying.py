"""What real clients and real upstreams showed: a slow upstream must not make Gemini CLI
give up for want of response headers; caps, paths and token counts must hold on the
pass-through path too; the access line says what happened to every request."""

import asyncio
import gc
import http.client
import json
import logging
import re
import socket
import struct
import threading
import time
import weakref

import pytest

import gemini_proxy as gp
from conftest import PATIENCE, stalled_stream, wait_for
from fake_upstream import (FakeAnthropic, FakeGemini, Gate, anthropic_events,
                           anthropic_message, anthropic_sse, anthropic_stream, completion,
                           flood, flood_after_one_event, gemini_chunk, gemini_stream,
                           gemini_text_part, json_reply, pause_after, sse, sse_texts_reply,
                           stream_reply, chunk, text_stream, usage)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def post_streaming(proxy, path, payload, headers=None):
    """A request whose response head is read now and whose body is read later."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
    conn.request("POST", path, json.dumps(payload),
                 dict({"content-type": "application/json"}, **(headers or {})))
    return conn, conn.getresponse()


@pytest.mark.parametrize("client, path, payload", [
    ("openai", "/v1/chat/completions", dict(CHAT, stream=True)),
    ("gemini", "/v1beta/models/m:streamGenerateContent?alt=sse",
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
    ("anthropic", "/v1/messages", dict(CHAT, stream=True, max_tokens=9))])
def test_a_slow_upstream_gets_the_stream_headers_out_early(proxy_factory, fake, client, path,
                                                           payload):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1",
                                                  "upstream_streaming": "always"}},
                           "server": {"stream_headers_after": 0.05,
                                      "keepalive_interval": 0.05}})
    gate = Gate(text_stream("all done", pieces=1))
    fake.queue(gate)
    conn, response = post_streaming(proxy, path, payload,
                                    {"anthropic-version": "2023-06-01"})
    try:
        # The head is here and the upstream has not answered yet: it was sent early.
        assert response.status == 200 and not gate.opened.is_set()
        assert response.getheader("content-type").startswith("text/event-stream")
        # Nothing but keep-alives can come while the gate is shut (Gemini: nothing at all).
        keepalive = {"openai": b": keep-alive\n\n",
                     "anthropic": b'event: ping\ndata: {"type":"ping"}\n\n'}.get(client, b"")
        if keepalive:
            assert response.read(len(keepalive)) == keepalive
        gate.open()
        body = response.read().decode()
    finally:
        gate.open()
        conn.close()
    assert "all done" in body
    if client == "openai":
        assert body.rstrip().endswith("data: [DONE]")
    elif client == "anthropic":
        assert "message_stop" in body
    else:
        assert body.startswith("data: ") and "keep-alive" not in body and "finishReason" in body


@pytest.mark.parametrize("client, path, payload, ends", [
    ("openai", "/v1/chat/completions", dict(CHAT, stream=True), '"code":500'),
    ("gemini", "/v1beta/models/m:streamGenerateContent?alt=sse",
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, None)])
def test_after_early_headers_a_failure_is_the_in_stream_error(proxy_factory, fake, client,
                                                              path, payload, ends):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1",
                                                  "retries": 0}},
                           "server": {"stream_headers_after": 0.05}})
    gate = Gate(json_reply({"error": {"message": "upstream broke"}}, status=500))
    fake.queue(gate)
    conn, response = post_streaming(proxy, path, payload)
    try:
        assert response.status == 200
        gate.open()
        body = response.read().decode()
    finally:
        gate.open()
        conn.close()
    if ends:
        assert ends in body and "upstream broke" in body and "[DONE]" not in body
    else:   # Gemini CLI has no error event: a stream without finishReason, which it retries
        assert "finishReason" not in body


@pytest.mark.parametrize("path, payload, field", [
    ("/v1/chat/completions", dict(CHAT, max_tokens=32768), "max_tokens"),
    ("/v1/chat/completions", dict(CHAT, max_completion_tokens=32768), "max_completion_tokens"),
])
def test_max_output_tokens_caps_a_passed_through_openai_request(proxy_factory, fake, path,
                                                               payload, field):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1",
                                                  "max_output_tokens": 512}}})
    status, _ = proxy.post(path, payload)
    assert status == 200 and fake.last[field] == 512


def test_max_output_tokens_caps_passed_through_anthropic_and_gemini_requests(proxy_factory):
    anthropic, gemini = FakeAnthropic().start(), FakeGemini().start()
    try:
        proxy = proxy_factory({"upstreams": {
            "a": {"kind": "anthropic", "base_url": anthropic.base_url, "api_key": "k-a",
                  "max_output_tokens": 512},
            "g": {"kind": "gemini", "base_url": gemini.base_url, "api_key": "k-g",
                  "max_output_tokens": 512}},
            "routes": [{"model": "claude-*", "upstream": "a"},
                       {"model": "gemini-*", "upstream": "g"}]})
        status, _ = proxy.post("/v1/messages", {"model": "claude-x", "max_tokens": 128000,
                                                "messages": [{"role": "user", "content": "x"}]},
                               {"anthropic-version": "2023-06-01"})
        assert status == 200 and anthropic.last["max_tokens"] == 512
        status, _ = proxy.post("/v1beta/models/gemini-x:generateContent", {
            "contents": [{"role": "user", "parts": [{"text": "x"}]}],
            "generationConfig": {"maxOutputTokens": 65536, "temperature": 0.5}})
        assert status == 200
        assert gemini.last["generationConfig"] == {"maxOutputTokens": 512, "temperature": 0.5}
        # Converted, from a client that set no limit: the cap beats default_max_tokens.
        status, _ = proxy.post("/v1/chat/completions", dict(CHAT, model="claude-x"))
        assert status == 200 and anthropic.last["max_tokens"] == 512
    finally:
        anthropic.stop()
        gemini.stop()


def test_gemini_pass_through_uses_the_api_version_converted_requests_use(proxy_factory):
    gemini = FakeGemini().start()
    try:
        proxy = proxy_factory({"upstreams": {"g": {"kind": "gemini", "base_url":
                                                   gemini.base_url, "api_key": "k-g"}}})
        for version in ("v1", "v1beta"):
            status, _ = proxy.post("/%s/models/gemini-x:generateContent" % version, {
                "contents": [{"role": "user", "parts": [{"text": "x"}]}]})
            assert status == 200
            assert gemini.requests[-1]["path"] == "/v1beta/models/gemini-x:generateContent"
    finally:
        gemini.stop()


def access_lines(caplog, count=1):
    """The access lines, once `count` are there (each is written just after its reply)."""
    def lines():
        return [r.getMessage() for r in caplog.records if r.name == "gemini_proxy.access"]
    wait_for(lambda: len(lines()) >= count, message="%d access lines" % count)
    return lines()


def test_a_passed_through_stream_without_usage_gets_estimated_counts(proxy, fake, caplog):
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    events = [chunk({"role": "assistant", "content": ""})] + [
        chunk({"content": "word %d " % i}) for i in range(40)] + [chunk(finish="stop"),
                                                                    "[DONE]"]
    fake.queue(stream_reply(events))
    status, _, data = proxy.request("POST", "/v1/chat/completions", dict(
        CHAT, stream=True, messages=[{"role": "user", "content": "a question " * 20}]))
    assert status == 200 and b"word 39" in data
    (line,) = [l for l in access_lines(caplog) if "/v1/chat/completions" in l]
    prompt, output = map(int, re.search(r" tokens=~(\d+)\+(\d+)", line).groups())
    assert " pass stream " in line and 40 <= prompt <= 80 and 60 <= output <= 160, line


def two_choices(first, second, finish_first):
    """A chunk of a reply with n=2: text for each choice, the first one finishing."""
    return dict(chunk(), choices=[
        {"index": 0, "delta": {"content": first}, "finish_reason": "stop" if finish_first
         else None},
        {"index": 1, "delta": {"content": second}, "finish_reason": None}])


@pytest.mark.parametrize("events", [
    [chunk({"role": "assistant", "content": "whole"}), chunk(finish="stop")],   # no usage
    [chunk({"role": "assistant", "content": ""}),                     # choice 1 talking
     two_choices("done", "half", finish_first=True)]],
    ids=["finished-before-usage-and-done", "one-choice-of-two-finished"])
def test_silence_after_a_finish_that_is_not_the_last_event_is_an_error(
        proxy_factory, fake, caplog, events):
    # A choice's finish_reason is not a stream's end: usage may follow, and with n=2 the
    # other choice may still be talking. Silence there is the upstream's failure.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1",
                                                  "read_timeout": 0.3}}})
    go_on = threading.Event()
    fake.queue(pause_after(sse_texts_reply(["".join(sse(event) for event in events),
                                            sse("[DONE]")]), writes=1, until=go_on))
    try:
        status, _, data = proxy.request("POST", "/v1/chat/completions",
                                        dict(CHAT, stream=True, n=2))
    finally:
        go_on.set()
    last = data.decode().strip().split("\n")[-1]
    assert status == 200 and '"error"' in last and "[DONE]" not in data.decode(), last
    (line,) = access_lines(caplog)
    assert "error=" in line and "went silent" in line, line


ANTHROPIC_REPLY = [anthropic_sse(*event) for event in anthropic_events(
    anthropic_message("whole"), pieces=1, ping=False)]
GEMINI_FINISHED = sse({"candidates": [{"content": {"role": "model", "parts": [{"text": "whole"}]},
                                       "finishReason": "STOP", "index": 0}]})


def held_open(proxy, fake, path, body, text, tail):
    """A client's answer to a stream whose upstream writes `text`, then holds its body
    open until the client has its answer, then writes `tail` and ends it."""
    go_on = threading.Event()
    fake.queue(pause_after(sse_texts_reply([text, tail]), writes=1, until=go_on))
    try:
        return proxy.request("POST", path, body)
    finally:
        go_on.set()


@pytest.mark.parametrize("kind, path, body, texts, whole", [
    ("openai", "/v1/chat/completions", dict(CHAT, stream=True),
     [sse(chunk({"role": "assistant", "content": "whole"})), sse(chunk(finish="stop")),
      sse("[DONE]"), 'data: {"id": "af'], True),
    ("anthropic", "/v1/messages", dict(CHAT, stream=True, max_tokens=9),
     ANTHROPIC_REPLY + ['event: ping\ndata: {"ty'], True),
    ("anthropic", "/v1/messages", dict(CHAT, stream=True, max_tokens=9),   # not the event
     ANTHROPIC_REPLY[:1] + [anthropic_sse("content_block_start", {
         "type": "content_block_start", "index": 0, "content_block": {
             "type": "tool_use", "id": "t", "name": "n", "input": {"type": "message_stop"}}})],
     False),
    ("anthropic", "/v1/messages", dict(CHAT, stream=True, max_tokens=9),   # no event names
     [text.split("\n", 1)[1] for text in ANTHROPIC_REPLY], False),
    ("gemini", "/v1beta/models/m:streamGenerateContent?alt=sse",     # no final event
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
     [GEMINI_FINISHED, 'data: {"usageMetadata": {"promptTok'], False)],
    ids=["openai-after-done", "anthropic-after-message-stop", "anthropic-stop-in-tool-input",
         "anthropic-without-event-names", "gemini-after-finish"])
def test_silence_after_the_final_event_never_hands_on_half_an_event(
        proxy_factory, fake, caplog, kind, path, body, texts, whole):
    # What the upstream began after its final event and never finished is no part of the
    # reply: a body that ends inside an event fails a finished answer in @google/genai
    # ("Incomplete JSON segment at the end"). Only a final event by name makes a stream
    # whole: not a key in a tool's input, not a Gemini finish.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    proxy = proxy_factory({"upstreams": {"fake": {"kind": kind, "base_url": fake.base_url,
                                                  "api_key": "k-1", "read_timeout": 0.3}}})
    status, _, data = held_open(proxy, fake, path, body, "".join(texts), "\n\n")
    assert status == 200 and data.endswith(b"\n\n"), data[-200:]
    (line,) = access_lines(caplog)
    assert ("error=" not in line) is whole, line
    if whole:
        assert b"error" not in data, data[-200:]


@pytest.mark.parametrize("kind, path, body, texts", [
    ("openai", "/v1/chat/completions", dict(CHAT, stream=True),
     [sse(chunk({"role": "assistant", "content": "whole"})), sse(chunk(finish="stop")),
      sse("[DONE]")]),
    ("anthropic", "/v1/messages", dict(CHAT, stream=True, max_tokens=9), ANTHROPIC_REPLY)],
    ids=["openai", "anthropic"])
def test_a_passed_through_stream_ends_at_its_final_event_whatever_its_body_does(
        proxy_factory, fake, caplog, kind, path, body, texts):
    # The upstream holds its body open after the final event: a client that reads to the
    # body's end (the OpenAI SDKs do) waited for read_timeout, 300 s by default (here:
    # the client's patience runs out before the upstream lets go: no keep-alives).
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    proxy = proxy_factory({"upstreams": {"fake": {"kind": kind, "base_url": fake.base_url,
                                                  "api_key": "k-1"}},
                           "server": {"keepalive_interval": 3600}})
    status, _, data = held_open(proxy, fake, path, body, "".join(texts), "\n")
    assert status == 200 and data.endswith(texts[-1].encode()), data[-200:]
    (line,) = access_lines(caplog)
    assert " 200 " in line and "error=" not in line, line


# No stream head before the first event and no keep-alives: a client waiting for what a
# test expects times out instead of reading keep-alives until the upstream's read_timeout.
QUIET = {"keepalive_interval": 3600, "stream_headers_after": 3600}


def labelled_json_events(until):
    """A stream of events labelled application/json (the server's mistake): its first
    event, then the rest once the threading.Event `until` is set."""
    def reply(handler, request):
        handler.start_stream("application/json")
        handler.write_chunk(sse(chunk({"role": "assistant", "content": "first words"})).encode())
        handler.pause(None, until)
        handler.end_stream((sse(chunk({"content": " and the rest"})) +
                            sse(chunk(finish="stop")) + sse("[DONE]")).encode())
    return reply


def test_events_labelled_json_are_relayed_as_they_come_on_a_converted_path(proxy_factory,
                                                                         fake):
    # (A review caught a version that read the whole body first, to see whether it was
    # JSON: the client had nothing until the upstream had finished.)
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url,
                                                  "api_key": "k-1"}}, "server": QUIET})
    go_on = threading.Event()
    fake.queue(labelled_json_events(go_on))
    conn, response = post_streaming(proxy, "/v1/messages", dict(CHAT, stream=True,
                                                                  max_tokens=9),
                                    {"anthropic-version": "2023-06-01"})
    try:
        assert response.status == 200
        seen = b""
        while b"first words" not in seen:   # before the upstream goes on
            seen += read_event(response)
    finally:
        go_on.set()
    rest = response.read()
    conn.close()
    assert b"and the rest" in rest and b"message_stop" in rest, rest[-300:]


def test_a_passed_through_stream_labelled_json_is_a_502_at_once(proxy_factory, fake):
    # (Not after the whole body, which a version read to see whether it was JSON.)
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url,
                                                  "api_key": "k-1", "retries": 0}},
                           "server": QUIET})
    go_on = threading.Event()
    fake.queue(labelled_json_events(go_on))
    try:
        status, _, data = proxy.request("POST", "/v1/chat/completions", dict(CHAT, stream=True))
    finally:
        go_on.set()
    assert status == 502 and b"not text/event-stream" in data, data


@pytest.mark.parametrize("kind, path, body, texts, last", [
    ("anthropic", "/v1/messages", dict(CHAT, stream=True, max_tokens=9),  # final, no blank
     ANTHROPIC_REPLY[:-1] + [ANTHROPIC_REPLY[-1][:-1]], "message_stop"),
    ("openai", "/v1/chat/completions", dict(CHAT, stream=True),
     [sse(chunk({"role": "assistant", "content": "whole"})), sse(chunk(finish="stop")),
      "data: [DONE]\n"], "[DONE]"),
    ("openai", "/v1/chat/completions", dict(CHAT, stream=True),          # finished, then half
     [sse(chunk({"role": "assistant", "content": "whole"})), sse(chunk(finish="stop")),
      'data: {"id": "af'], '"finish_reason": "stop"'),
    ("gemini", "/v1beta/models/m:streamGenerateContent?alt=sse",
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
     [GEMINI_FINISHED, 'data: {"usageMetadata": {"promptTok'], '"finishReason": "STOP"'),
    ("gemini", "/v1beta/models/m:streamGenerateContent?alt=sse",       # CRLF, no blank
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
     [GEMINI_FINISHED.replace("\n", "\r\n")[:-2]], '"finishReason": "STOP"')],
    ids=["anthropic-final-event", "openai-done", "openai-half-event", "gemini-half-event",
         "gemini-crlf-final-chunk"])
def test_a_body_that_ends_hands_on_its_last_event_but_never_half_of_one(
        proxy_factory, fake, kind, path, body, texts, last):
    # The body ends cleanly with a last event whose blank line never came: the hub's own
    # reading takes it, so the client gets it, blank line added. A line cut short is
    # dropped: a body that ends inside an event fails the answer in @google/genai.
    proxy = proxy_factory({"upstreams": {"fake": {"kind": kind, "base_url": fake.base_url,
                                                  "api_key": "k-1"}}})
    fake.queue(sse_texts_reply(["".join(texts)]))
    status, _, data = proxy.request("POST", path, body)
    assert status == 200 and b"error" not in data, data[-200:]
    # A blank line in the stream's own line ends (@google/genai reads no other)
    assert re.search(rb"(\r\n\r\n|[^\r]\n\n)\Z", data), data[-200:]
    assert last in re.split(r"\r?\n\r?\n", data.decode().strip())[-1], data[-200:]


class Traced(dict):
    """A request's JSON, which a weak reference can follow (a dict cannot be)."""


QUESTION = "a question " * 20
LONG_QUESTION = QUESTION * 100     # past LOOP_BODY_BYTES: begun in a worker


@pytest.mark.parametrize("question", [QUESTION, LONG_QUESTION], ids=["loop", "worker"])
@pytest.mark.parametrize("converted", [False, True], ids=["passed-on", "converted"])
def test_a_relayed_stream_lets_go_of_its_request(
        proxy, fake, caplog, monkeypatch, question, converted):
    # An agent's request of 50 KB is 100 KB more once read as JSON, and as much again in
    # the neutral model. A stream the loop relays, for minutes perhaps, needs none of it
    # but the estimate of its prompt, at its end, when the upstream reported no usage: a
    # converted stream counts it before the relay and lets go of all (its body too); a
    # passed-through one keeps its body, read again then.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    if converted:
        path = "/v1beta/models/m:streamGenerateContent?alt=sse"
        body = {"contents": [{"role": "user", "parts": [{"text": question}]}]}
    else:
        path = "/v1/chat/completions"
        body = dict(CHAT, stream=True, messages=[{"role": "user", "content": question}])
    assert (len(json.dumps(body)) > gp.LOOP_BODY_BYTES) is (question is LONG_QUESTION)
    read, decoded, bodies = [], [], []
    parse_json_body, chat_of, read_body = gp.parse_json_body, gp.Request.chat, \
        gp.ProxyServer._read_body

    def traced_parse(data):
        payload = Traced(parse_json_body(data))
        read.append(weakref.ref(payload))
        return payload

    def traced_chat(rq):
        decoded.append(weakref.ref(chat_of(rq)))
        return decoded[-1]()

    async def kept_body(*args, **kwargs):
        bodies.append(await read_body(*args, **kwargs))
        return bodies[-1]
    monkeypatch.setattr(gp, "parse_json_body", traced_parse)
    monkeypatch.setattr(gp.Request, "chat", traced_chat)
    monkeypatch.setattr(gp.ProxyServer, "_read_body", kept_body)
    go_on = threading.Event()
    events = [chunk({"role": "assistant", "content": ""})] + [
        chunk({"content": "word %d " % i}) for i in range(40)] + [chunk(finish="stop"),
                                                                    "[DONE]"]
    fake.queue(pause_after(stream_reply(events), writes=2, until=go_on))
    conn, response = post_streaming(proxy, path, body)
    try:
        assert response.status == 200
        wait_for(lambda: proxy.server.proxy.working == 0,
                 message="the stream handed to the loop")
        gc.collect()
        assert read and [ref() for ref in read] == [None] * len(read)
        assert [ref() for ref in decoded] == [None] * len(decoded)
        assert bool(decoded) is converted
        (the_body,) = [b for b in bodies if b]
        held = [r for r in gc.get_referrers(the_body) if r is not bodies]
        assert bool(held) is not converted, held
        del the_body, held
        go_on.set()
        data = response.read()
    finally:
        go_on.set()
        conn.close()
    assert b"word 39" in data
    (line,) = [l for l in access_lines(caplog) if "/v1" in l]
    prompt, output = map(int, re.search(r" tokens=~(\d+)\+(\d+)", line).groups())
    assert len(question) / 5 <= prompt <= len(question) / 3 and 60 <= output <= 160, line


def test_a_stream_passed_through_after_a_converted_attempt_failed_is_counted_whole(
        proxy_factory, fake, caplog):
    # The first upstream (converted) fails; its fallback speaks the client's dialect and
    # streams without usage: the request, decoded for the first, lets go of it all before
    # the relay, and the end's estimate of the prompt is still the whole prompt's.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    gemini = FakeGemini().start()
    try:
        proxy = proxy_factory({
            "upstreams": {"o": {"base_url": fake.base_url, "api_key": "k-o", "retries": 0},
                          "g": {"kind": "gemini", "base_url": gemini.base_url,
                                "api_key": "k-g"}},
            "routes": [{"model": "*", "upstream": "o", "fallbacks": ["g"]}]})
        fake.queue(json_reply({"error": {"message": "down for now"}}, status=500))
        gemini.queue(gemini_stream([gemini_chunk([gemini_text_part("word " * 5)])
                                    for _ in range(40)] +
                                   [gemini_chunk([gemini_text_part("")], finish="STOP")]))
        status, _, data = proxy.request(
            "POST", "/v1beta/models/m:streamGenerateContent?alt=sse",
            {"contents": [{"role": "user", "parts": [{"text": LONG_QUESTION}]}]})
        assert status == 200 and data.count(b"word ") == 200, data[-300:]
        assert len(fake.requests) == 1 and len(gemini.requests) == 1
    finally:
        gemini.stop()
    (line,) = [l for l in access_lines(caplog) if "/v1beta" in l]
    prompt = int(re.search(r" tokens=~(\d+)\+\d+", line).group(1))
    assert " -> g/m pass stream " in line, line
    assert len(LONG_QUESTION) / 5 <= prompt <= len(LONG_QUESTION) / 3, line


@pytest.fixture
def anthropic_upstream(proxy_factory):
    """(a proxy, the fake Anthropic-compatible upstream that is its one upstream)"""
    anthropic = FakeAnthropic().start()
    yield proxy_factory({"upstreams": {"a": {"kind": "anthropic", "api_key": "k-a",
                                             "base_url": anthropic.base_url}}}), anthropic
    anthropic.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_anthropic_compatible_upstream_without_usage_gets_estimated_counts(
        anthropic_upstream, caplog, stream):
    # Such an upstream's zero counts were shown as its usage: the client saw a prompt of
    # no tokens, the ledger counted none.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    proxy, anthropic = anthropic_upstream
    message = dict(anthropic_message("word " * 100))
    del message["usage"]
    if stream:
        events = anthropic_events(dict(message, usage={}))
        for _, payload in events:
            payload.pop("usage", None)
            payload.get("message", {}).pop("usage", None)
        anthropic.queue(anthropic_stream(events))
    else:
        anthropic.queue(json_reply(message))
    path = "/v1beta/models/m:%s" % ("streamGenerateContent?alt=sse" if stream
                                    else "generateContent")
    status, _, data = proxy.request("POST", path, {"contents": [
        {"role": "user", "parts": [{"text": QUESTION}]}]})
    assert status == 200 and data.count(b"word ") == 100, data[-300:]
    last = json.loads(data.decode().split("data: ")[-1] if stream else data)
    assert last["usageMetadata"]["promptTokenCount"] >= len(QUESTION) / 5, last
    (line,) = [l for l in access_lines(caplog) if "/v1beta" in l]
    prompt, output = map(int, re.search(r" tokens=~(\d+)\+(\d+)", line).groups())
    assert len(QUESTION) / 5 <= prompt <= len(QUESTION) / 3 and output >= 100, line


@pytest.mark.parametrize("client", ["openai", "gemini"], ids=["passed-on", "converted"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_upstream_that_counts_only_the_output_gets_the_prompt_estimated(
        proxy, fake, caplog, client, stream):
    # Its input was shown and counted as an exact 0: a client's tokens_per_day charged
    # the output alone, its agent told its prompt had no tokens.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    counted = {"completion_tokens": 9}
    fake.queue(text_stream("an answer", pieces=1, use=counted) if stream
               else json_reply(completion("an answer", use=counted)))
    if client == "openai":
        path, payload = "/v1/chat/completions", dict(
            CHAT, stream=stream, messages=[{"role": "user", "content": QUESTION}])
    else:
        path = "/v1beta/models/m:%s" % ("streamGenerateContent?alt=sse" if stream
                                        else "generateContent")
        payload = {"contents": [{"role": "user", "parts": [{"text": QUESTION}]}]}
    status, _, data = proxy.request("POST", path, payload)
    assert status == 200 and b"an answer" in data, data
    (line,) = access_lines(caplog)
    prompt, output = map(int, re.search(r" tokens=~(\d+)\+(\d+)", line).groups())
    assert len(QUESTION) / 5 <= prompt <= len(QUESTION) / 3 and output == 9, line
    if client == "gemini":   # the client is told the same
        last = json.loads(data.decode().split("data: ")[-1] if stream else data)
        assert last["usageMetadata"]["promptTokenCount"] == prompt, last


def test_an_anthropic_compatible_upstream_counting_only_the_output_gets_the_prompt_estimated(
        anthropic_upstream, caplog):
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    proxy, anthropic = anthropic_upstream
    events = anthropic_events(anthropic_message("word " * 10))
    for name, payload in events:   # no input anywhere, the output in message_delta
        payload.get("message", {}).pop("usage", None)
        if name == "message_delta":
            payload["usage"] = {"output_tokens": 12}
    anthropic.queue(anthropic_stream(events))
    status, _, data = proxy.request("POST", "/v1/chat/completions", dict(
        CHAT, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": QUESTION}]))
    assert status == 200 and data.count(b"word") == 10, data[-300:]
    (line,) = access_lines(caplog)
    prompt, output = map(int, re.search(r" tokens=~(\d+)\+(\d+)", line).groups())
    assert len(QUESTION) / 5 <= prompt <= len(QUESTION) / 3 and output == 12, line
    usage_chunk = json.loads(data.decode().split("data: ")[-2])
    assert usage_chunk["usage"]["prompt_tokens"] == prompt, usage_chunk


def test_a_passed_through_whole_reply_without_usage_gets_estimated_counts(
        proxy, fake, caplog):
    # Counted as no tokens at all before (a stream was estimated): a client's
    # tokens_per_day never charged it. A usage object that counts nothing is none.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    bare = completion("word " * 40)
    del bare["usage"]
    fake.queue(json_reply(bare))
    fake.queue(json_reply(dict(bare, usage={"total_tokens": 0})))
    for _ in range(2):
        status, _, data = proxy.request("POST", "/v1/chat/completions", dict(
            CHAT, messages=[{"role": "user", "content": QUESTION}]))
        assert status == 200 and data.count(b"word") == 40, data
    for line in access_lines(caplog, 2):
        prompt, output = map(int, re.search(r" tokens=~(\d+)\+(\d+)", line).groups())
        assert " pass " in line and len(QUESTION) / 5 <= prompt <= len(QUESTION) / 3 and \
            40 <= output <= 60, line


@pytest.mark.parametrize("decode, counts, input_missing", [
    (gp.decode_openai_usage, {}, None),
    (gp.decode_openai_usage, {"total_tokens": 5}, None),
    (gp.decode_openai_usage, {"completion_tokens": 3}, True),
    (gp.decode_openai_usage, {"prompt_tokens": 0, "completion_tokens": 0}, False),
    (gp.decode_gemini_usage, {"totalTokenCount": 5}, None),
    (gp.decode_gemini_usage, {"candidatesTokenCount": 3}, True),
    (gp.decode_gemini_usage, {"promptTokenCount": 4}, False),
    (gp.decode_responses_usage, {}, None),
    (gp.decode_responses_usage, {"output_tokens": 3}, True),
    (gp.decode_responses_usage, {"input_tokens": 4, "output_tokens": 3}, False),
    (gp.decode_anthropic_usage, {"output_tokens": 3}, True),
    (gp.decode_anthropic_usage, {"cache_read_input_tokens": 2, "output_tokens": 3}, False)])
def test_a_usage_that_counts_nothing_is_none_and_one_without_the_prompt_says_so(
        decode, counts, input_missing):
    usage = decode(counts)
    assert (usage is None) if input_missing is None else usage.input_missing is input_missing
    if usage is not None and input_missing:
        whole = gp.with_prompt_estimate(usage, lambda: 40)
        assert (whole.input_tokens, whole.output_tokens, whole.estimated) == (40, 3, True)
        assert not whole.input_missing


@pytest.mark.parametrize("decode, counted, later", [
    (gp.decode_openai_usage, {"prompt_tokens": 300, "completion_tokens": 1},
     {"completion_tokens": 9}),
    (gp.decode_gemini_usage, {"promptTokenCount": 300}, {"candidatesTokenCount": 9})])
def test_a_prompt_counted_earlier_in_a_stream_is_kept_when_a_later_usage_lacks_it(
        decode, counted, later):
    usage = gp.later_usage(decode(later), gp.later_usage(decode(counted), None))
    assert (usage.input_tokens, usage.output_tokens, usage.input_missing) == (300, 9, False)
    assert gp.later_usage(None, usage) is usage


def test_an_anthropic_prompt_read_from_the_cache_keeps_its_count_when_a_later_event_says_0():
    started = gp.decode_anthropic_usage({"input_tokens": 100, "cache_read_input_tokens": 200,
                                         "output_tokens": 1})
    ended = gp.decode_anthropic_usage({"input_tokens": 0, "output_tokens": 8}, started)
    assert (ended.input_tokens, ended.cached_tokens, ended.output_tokens) == (300, 200, 8)


@pytest.mark.parametrize("field", ["signature", "thoughtSignature", "encrypted_content"])
def test_a_packed_signature_is_found_in_the_fields_it_comes_back_in(field):
    packed = gp.pack_thinking([gp.Part(gp.THINKING, text="t", origin="gemini")])
    for body, found in ((b'{"%s": "%s"}' % (field.encode(), packed.encode()), True),
                        (b'{"%s":"%s"}' % (field.encode(), packed.encode()), True),
                        (b'{"text": "%s %s"}' % (field.encode(), packed.encode()), False),
                        (b'{"text": "\\"%s\\""}' % packed.encode(), False)):
        assert (gp.PACKED_SIGNATURE_FIELD.search(body) is not None) is found, body


def test_an_anthropic_prompt_a_later_event_counts_as_0_keeps_its_count():
    started = gp.decode_anthropic_usage({"input_tokens": 300, "output_tokens": 1})
    ended = gp.decode_anthropic_usage({"input_tokens": 0, "output_tokens": 8}, started)
    assert (ended.input_tokens, ended.output_tokens) == (300, 8)
    alone = gp.decode_anthropic_usage({"input_tokens": 0, "output_tokens": 8})
    assert (alone.input_tokens, alone.input_missing) == (0, False)   # as reported


def test_an_anthropic_prompt_counted_at_the_start_is_kept_when_the_end_counts_the_output():
    started = gp.decode_anthropic_usage({"input_tokens": 30, "output_tokens": 1})
    ended = gp.decode_anthropic_usage({"output_tokens": 8}, started)
    assert (ended.input_tokens, ended.output_tokens, ended.input_missing) == (30, 8, False)
    assert gp.with_prompt_estimate(ended, lambda: 99) is ended


@pytest.mark.parametrize("client", ["anthropic", "gemini", "responses"])
def test_a_converted_stream_that_ends_whole_keeps_the_usage_reported(proxy, fake, caplog,
                                                                      client):
    # An Anthropic client's encoder stops reading at the finish: a first form of the
    # broken-off count took such a stream for broken, and logged its estimate (1200
    # tokens of text) instead of the 7 the upstream reported.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    fake.queue(text_stream("hello world " * 400, pieces=4, use={"prompt_tokens": 11,
                                                                "completion_tokens": 7}))
    question = [{"role": "user", "content": QUESTION}]
    if client == "anthropic":
        path, payload = "/v1/messages", {"model": "m", "max_tokens": 100, "stream": True,
                                         "messages": question}
    elif client == "gemini":
        path = "/v1beta/models/m:streamGenerateContent?alt=sse"
        payload = {"contents": [{"role": "user", "parts": [{"text": QUESTION}]}]}
    else:
        path, payload = "/v1/responses", {"model": "m", "stream": True, "input": QUESTION}
    status, _, data = proxy.request("POST", path, payload)
    # (Responses says the text again in its .done events, its item's and the response's)
    assert status == 200 and data.count(b"hello") in (400, 2000), data[-300:]
    (line,) = access_lines(caplog)
    assert " tokens=11+7" in line and " conv " in line, line


def test_a_stream_broken_off_after_one_choice_finished_counts_what_went_by_after():
    # n = 2, a stop string cut choice 0 at once (its finish set the usage then), choice 1
    # went on at length, and the upstream broke: it was counted as the first moment's.
    ex, tally = gp.Exchange("rid", "openai", "stream"), gp.OutputTally()

    def events():
        yield gp.Part(gp.TEXT, text="short", choice=0)
        yield gp.Finish(gp.STOP, choice=0)
        yield gp.Part(gp.TEXT, text="word " * 1000, choice=1)
        raise gp.UpstreamError("the connection broke", status=502)
    with pytest.raises(gp.UpstreamError):
        for _ in gp._track_usage(ex, lambda: 7, events(), tally):
            pass
    assert ex.usage.output_tokens < 10
    usage = gp.broken_off_usage(ex.usage, tally.output + tally.reasoning, tally.reasoning,
                                lambda: 7)
    assert usage.input_tokens == 7 and usage.output_tokens >= 1000 and usage.estimated
    reported = gp.Usage(300, 1)     # Anthropic's message_start: the prompt, and 1
    assert gp.broken_off_usage(reported, 40, 0, lambda: 7) == gp.Usage(300, 40,
                                                                         estimated=True)
    assert gp.broken_off_usage(gp.Usage(300, 90), 40, 0, lambda: 7) == gp.Usage(300, 90)
    assert gp.broken_off_usage(None, 0, 0, lambda: 7) is None     # nothing went by


# A tool call whose arguments are no JSON object (or Gemini's MALFORMED_FUNCTION_CALL)
# was dropped and the turn ended as a normal one (end_turn, stop, completed and empty):
# Claude Code or Codex took the model for done and stopped mid-task.
MALFORMED_CALL = {"id": "call_1", "type": "function",
                  "function": {"name": "read", "arguments": '{"path": "a'}}
GOOD_CALL = {"id": "call_2", "type": "function",
             "function": {"name": "read", "arguments": '{"path": "a"}'}}
TOOLS = [{"name": "read", "input_schema": {"type": "object",
                                            "properties": {"path": {"type": "string"}}}}]


def anthropic_ask(stream):
    return {"model": "m", "max_tokens": 100, "stream": stream, "tools": TOOLS,
            "messages": [{"role": "user", "content": "read a"}]}


def tool_calls_stream(calls, text=None):
    events = [chunk({"role": "assistant", "content": text or ""})]
    events += [chunk({"tool_calls": [dict(call, index=n)]}) for n, call in enumerate(calls)]
    return stream_reply(events + [chunk(finish="tool_calls"),
                                  chunk(usage=usage(), choices=False), "[DONE]"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("upstream_streams", [False, True], ids=["upstream-whole",
                                                                 "upstream-streams"])
def test_a_malformed_tool_call_is_a_502_the_proxy_does_not_retry(
        proxy_factory, fake, caplog, stream, upstream_streams):
    # Each try is a whole generation: the client's own retries ask again. Its tokens
    # are counted, streamed or not; a whole reply is all here before anything is sent,
    # so text before the call does not make it an in-stream error.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    proxy = proxy_factory({"upstreams": {"fake": {
        "base_url": fake.base_url, "api_key": "k", "retries": 2, "retry_wait": 0,
        "upstream_streaming": "always" if upstream_streams else "never"}}})
    fake.queue(tool_calls_stream([MALFORMED_CALL], text="Let me look.") if upstream_streams
               else json_reply(completion("Let me look.", tool_calls=[MALFORMED_CALL],
                                          finish="tool_calls")))
    status, _, data = proxy.request("POST", "/v1/messages", anthropic_ask(stream))
    if stream and upstream_streams:   # the text went out first: an in-stream error
        assert status == 200 and b"Let me look." in data and b"event: error" in data, data
        assert b"could not be used" in data and b"message_stop" not in data, data
    else:
        error = json.loads(data)
        assert status == 502 and error["type"] == "error" and \
            "could not be used (arguments that are no JSON object" in \
            error["error"]["message"], data
    assert len(fake.requests) == 1
    (line,) = access_lines(caplog)
    assert " tokens=11+7" in line, line

    def key():   # the model's mistake is not the key's: it worked, and spent the tokens
        (state,) = json.loads(proxy.request("GET", "/status")[2])["upstreams"]["fake"]["keys"]
        return state
    wait_for(lambda: key()["tokens_today"] == 18, message="the reply's tokens on its key")
    assert key()["failures"] == 0, key()


def test_a_malformed_choice_among_several_keeps_its_plain_finish(proxy_factory):
    gemini = FakeGemini().start()
    try:
        proxy = proxy_factory({"upstreams": {"g": {"kind": "gemini", "api_key": "k-g",
                                                   "base_url": gemini.base_url}}})
        gemini.queue(json_reply({"candidates": [
            {"index": 0, "content": {"role": "model", "parts": []},
             "finishReason": "MALFORMED_FUNCTION_CALL"},
            {"index": 1, "content": {"role": "model", "parts": [{"text": "fine"}]},
             "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1}}))
        status, _, data = proxy.request("POST", "/v1/chat/completions", dict(CHAT, n=2))
    finally:
        gemini.stop()
    assert status == 200, data
    assert [c["finish_reason"] for c in json.loads(data)["choices"]] == ["stop", "stop"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_tool_call_gemini_stopped_is_a_502_not_a_normal_end(proxy_factory, stream):
    # UNEXPECTED_TOOL_CALL (Gemini's word for a call when the request declared no tools),
    # the call not in the reply, reached an Anthropic client as end_turn with no content:
    # Claude Code stopped there. The error names the cause.
    gemini = FakeGemini().start()
    try:
        proxy = proxy_factory({"upstreams": {"g": {
            "kind": "gemini", "api_key": "k-g", "base_url": gemini.base_url, "retries": 2,
            "retry_wait": 0, "upstream_streaming": "always" if stream else "never"}}})
        end = gemini_chunk(finish="UNEXPECTED_TOOL_CALL",
                           use={"promptTokenCount": 5, "candidatesTokenCount": 0})
        gemini.queue(gemini_stream([end]) if stream else json_reply(end))
        status, _, data = proxy.request("POST", "/v1/messages", anthropic_ask(stream))
    finally:
        gemini.stop()
    assert status == 502 and "the upstream's UNEXPECTED_TOOL_CALL" in \
        json.loads(data)["error"]["message"], data
    assert len(gemini.requests) == 1     # not retried: the client's retries ask again


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_gemini_client_on_a_converted_route_is_told_gemini_s_own_reason(proxy_factory,
                                                                         stream):
    # As talking to Gemini itself would (stop_strings make the route a converted one).
    gemini = FakeGemini().start()
    try:
        proxy = proxy_factory({"upstreams": {"g": {
            "kind": "gemini", "api_key": "k-g", "base_url": gemini.base_url,
            "stop_strings": ["never appears"]}}})
        end = gemini_chunk([gemini_text_part("Let me look.")], finish="UNEXPECTED_TOOL_CALL",
                           use={"promptTokenCount": 5, "candidatesTokenCount": 3})
        gemini.queue(gemini_stream([end]) if stream else json_reply(end))
        status, _, data = proxy.request(
            "POST", "/v1beta/models/m:%s" % ("streamGenerateContent?alt=sse" if stream
                                             else "generateContent"),
            {"contents": [{"role": "user", "parts": [{"text": "look"}]}]})
    finally:
        gemini.stop()
    assert status == 200, data
    last = json.loads(data.split(b"data: ")[-1] if stream else data)
    assert last["candidates"][0]["finishReason"] == "UNEXPECTED_TOOL_CALL", data


def test_a_gemini_client_is_told_of_a_malformed_tool_call_itself(proxy, fake):
    # (Gemini CLI retries MALFORMED_FUNCTION_CALL as it does any bad stream.)
    fake.queue(json_reply(completion(None, tool_calls=[MALFORMED_CALL], finish="tool_calls")))
    status, _, data = proxy.request("POST", "/v1beta/models/m:generateContent", {
        "contents": [{"role": "user", "parts": [{"text": "read a"}]}]})
    assert status == 200, data
    assert json.loads(data)["candidates"][0]["finishReason"] == "MALFORMED_FUNCTION_CALL"


def test_usage_an_upstream_reports_as_zero_is_shown_as_reported(proxy, fake, caplog):
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    fake.queue(json_reply(completion("ok", use={"prompt_tokens": 0, "completion_tokens": 0})))
    proxy.post("/v1beta/models/m:generateContent",
               {"contents": [{"role": "user", "parts": [{"text": "x"}]}]})
    fake.queue(text_stream("ok", use={"prompt_tokens": 0, "completion_tokens": 0}))
    proxy.request("POST", "/v1/chat/completions", dict(CHAT, stream=True))
    lines = access_lines(caplog, 2)
    assert len(lines) == 2 and all(line.endswith(" tokens=0+0") for line in lines), lines


@pytest.mark.parametrize("method, path, status, reason", [
    ("GET", "/nowhere", 404, "no endpoint GET /nowhere"),
    ("DELETE", "/v1/chat/completions", 405, "DELETE is not allowed"),
    ("POST", "/v1/chat/completions", 401, "missing or wrong API key")])
def test_early_refusals_say_why_in_the_access_line(proxy_factory, caplog, method, path, status,
                                                   reason):
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    proxy = proxy_factory({"upstreams": {"e": {"kind": "echo"}},
                           "server": {"api_keys": ["the-right-key"]}})
    got, _, _ = proxy.request(method, path, CHAT if method == "POST" else None,
                              {"authorization": "Bearer the-right-key"} if status != 401
                              else {})
    assert got == status
    (line,) = access_lines(caplog)
    assert " %d " % status in line and reason in line


# ---- found by review ------------------------------------------------------------------------

def test_a_refused_head_request_gets_no_body_and_the_connection_stays_usable(proxy_factory):
    import socket
    proxy = proxy_factory({"upstreams": {"e": {"kind": "echo"}},
                           "server": {"api_keys": ["the-right-key"]}})
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    try:
        sock.sendall(b"HEAD /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):
            more = sock.recv(65536)
            assert more, data
            data += more
        first, second = data.split(b"HTTP/1.1 ")[1:]
        assert first.startswith(b"401 ") and first.endswith(b"\r\n\r\n")   # head only
        assert second.startswith(b"200 ")
    finally:
        sock.close()


def test_an_http_1_0_client_gets_its_stream_without_chunked_framing(proxy_factory):
    import socket
    proxy = proxy_factory({"upstreams": {"e": {"kind": "echo"}}})
    body = json.dumps(dict(CHAT, stream=True)).encode()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        data = b""
        while True:
            more = sock.recv(65536)
            if not more:
                break
            data += more
    finally:
        sock.close()
    head, _, stream = data.partition(b"\r\n\r\n")
    assert b"200" in head.split(b"\r\n")[0] and b"transfer-encoding" not in head.lower()
    assert stream.startswith(b"data: {") and stream.endswith(b"data: [DONE]\n\n")


def test_short_configured_values_are_not_cut_out_of_passed_through_answers(proxy_factory,
                                                                           fake):
    # Every configured header and query value stays out of logs, but only the ones that
    # could be credentials are removed from a reply a client reads.
    proxy = proxy_factory({"upstreams": {"fake": {
        "base_url": fake.base_url, "api_key": "sk-long-upstream-key-123",
        "headers": {"X-Feature": "true"}, "query": {"api-version": "2024-10-21"}}}})
    fake.queue(json_reply(completion("released 2024-10-21, true story")))
    status, body = proxy.post("/v1/chat/completions", CHAT)
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "released 2024-10-21, true story"


def test_header_values_that_are_no_credentials_stay_in_answers(proxy_factory, fake):
    # OpenRouter asks for an app's address and name in headers; an answer about that app
    # keeps them (they were [REDACTED], as a credential header's value still is).
    referer, title = "https://github.com/someone/their-project", "Their Project's Assistant"
    secret = "eyJhbGciOiJSUzI1NiJ9.a-gateway-credential"   # under a name of its own
    proxy = proxy_factory({"upstreams": {"fake": {
        "base_url": fake.base_url, "api_key": "sk-long-upstream-key-123",
        "headers": {"HTTP-Referer": referer, "X-Title": title,
                    "Cf-Access-Jwt-Assertion": secret}}}})
    text = "see %s (%s); token %s" % (referer, title, secret)
    fake.queue(json_reply(completion(text)))
    status, body = proxy.post("/v1/chat/completions", CHAT)
    assert status == 200 and body["choices"][0]["message"]["content"] == \
        "see %s (%s); token [REDACTED]" % (referer, title)
    fake.queue(json_reply(completion(text)))   # converted, cleaned again as it goes out
    status, body = proxy.post("/v1/messages", dict(CHAT, max_tokens=9),
                              {"anthropic-version": "2023-06-01"})
    assert status == 200 and body["content"][0]["text"] == \
        "see %s (%s); token [REDACTED]" % (referer, title)
    config = proxy.server.proxy.live.config
    assert referer in config.secrets() and title in config.secrets()   # out of logs


# ---- a passed-through stream, read by the event loop itself ---------------------------------

def read_event(response):
    """The next SSE event of a streamed response, blank line included."""
    lines = []
    while not lines or lines[-1] != b"\n":
        line = response.readline()
        assert line, "the stream ended"
        lines.append(line)
    return b"".join(lines)


def test_a_passed_through_stream_gets_keepalives_in_its_silences(proxy_factory, fake):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}},
                           "server": {"keepalive_interval": 0.05}})
    go_on = threading.Event()
    fake.queue(pause_after(text_stream("after the silence"), until=go_on))
    conn, response = post_streaming(proxy, "/v1/chat/completions", dict(CHAT, stream=True))
    try:
        assert response.status == 200 and b'"role": "assistant"' in read_event(response)
        # The upstream is silent until go_on is set: only keep-alives can come meanwhile.
        assert read_event(response) == b": keep-alive\n\n"
        assert read_event(response) == b": keep-alive\n\n"
        go_on.set()
        body = response.read().decode()
    finally:
        go_on.set()
        conn.close()
    assert "after the silence" in "".join(json.loads(line[6:])["choices"][0]["delta"].get(
        "content", "") for line in body.split("\n") if line.startswith("data: {")
        and json.loads(line[6:])["choices"])
    assert body.rstrip().endswith("data: [DONE]")


def test_the_loop_waker_runs_every_call_of_a_batch_though_one_fails(caplog):
    """Worker threads hand calls to the event loop in batches: one that raises (a bug)
    is logged and the others still run; once the loop has closed, a call says so."""
    loop = asyncio.new_event_loop()
    waker = gp.LoopWaker(loop)
    ran = []

    def fails():
        raise ValueError("a bug")
    try:
        assert waker.call(fails) and waker.call(ran.append, "after it")
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    assert ran == ["after it"]
    assert "a call on the event loop failed" in caplog.text
    assert not waker.call(ran.append, "too late") and ran == ["after it"]


def test_no_keepalive_follows_a_passed_through_streams_final_event(proxy_factory, fake,
                                                                   monkeypatch):
    """After [DONE] only the stream's end may come, however late the request's rest runs
    (a busy machine): the silences the loop waits out meanwhile get no keep-alive."""
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}},
                           "server": {"keepalive_interval": 0.05}})
    app = proxy.server.proxy
    silences = threading.Semaphore(0)
    real_take, real_resume = gp.ChunkPipe.take, app._resume

    async def take(pipe, timeout=None):
        items = await real_take(pipe, timeout)
        if not items and not pipe.gone:
            silences.release()     # a silence the loop waited out for this request
        return items

    def resume_late(*args):
        while silences.acquire(blocking=False):    # those before the final event
            pass
        for _ in range(3):
            assert silences.acquire(timeout=PATIENCE), "the loop waited for no silence"
        real_resume(*args)
    monkeypatch.setattr(gp.ChunkPipe, "take", take)
    monkeypatch.setattr(app, "_resume", resume_late)
    fake.queue(text_stream("the end is the end"))
    status, body = proxy.post("/v1/chat/completions", dict(CHAT, stream=True))
    assert status == 200
    assert body.rstrip().endswith(b"data: [DONE]"), body[-200:]


def lone_cr_stream(texts):
    """An OpenAI stream whose lines end in a lone CR (SSE allows it), each event written
    in two pieces, cut between its last two CRs."""
    events = [chunk({"role": "assistant", "content": ""})] + [
        chunk({"content": text}) for text in texts] + [chunk(finish="stop"), "[DONE]"]
    pieces = [sse(event).replace("\n", "\r") for event in events]
    return sse_texts_reply([half for piece in pieces for half in (piece[:-1], piece[-1:])])


def test_a_passed_through_stream_with_lone_cr_line_ends_reaches_the_client_whole(
        proxy, fake):
    texts = ["piece %d, " % i for i in range(12)]
    fake.queue(lone_cr_stream(texts))
    status, _, data = proxy.request("POST", "/v1/chat/completions", dict(CHAT, stream=True))
    assert status == 200 and data == data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    events = [e for e in data.decode().split("\r\n\r\n") if e]     # (CRLF line ends)
    assert events[-1] == "data: [DONE]" and "error" not in data.decode()
    deltas = [json.loads(e[6:])["choices"][0]["delta"] for e in events[:-1]]
    assert "".join(d.get("content", "") for d in deltas) == "".join(texts)


def test_a_lone_cr_stream_is_relayed_event_by_event(proxy, fake):
    go_on = threading.Event()
    fake.queue(pause_after(lone_cr_stream(["first ", "second"]), writes=2, until=go_on))
    conn, response = post_streaming(proxy, "/v1/chat/completions", dict(CHAT, stream=True))
    try:
        # The upstream holds the rest until go_on: the first event must come without it.
        assert response.status == 200 and b'"role": "assistant"' in read_event(response)
        go_on.set()
        body = response.read().decode()
    finally:
        go_on.set()
        conn.close()
    assert body.rstrip().endswith("data: [DONE]") and "second" in body


@pytest.mark.parametrize("data, chunked, between", [
    (b"data: 1\n\n", False, True), (b"data: 1\r\n\r\n", False, True),
    (b"data: 1\n\r\n", False, True), (b"data: 1\n", False, False),
    (b"data: 1\r\n", False, False),
    (gp.encode_chunk(b"data: 1\n\n"), True, True),
    (gp.encode_chunk(b"data: 1\r\n\r\n"), True, True),
    (gp.encode_chunk(b"data: 1\n\r\n"), True, True),   # an upstream mixing LF and CRLF
    (gp.encode_chunk(b"data: 1\n"), True, False),        # its chunk's own CRLF ends it
    (gp.encode_chunk(b"data: 1\r\n"), True, False)])
def test_where_a_stream_is_between_events(data, chunked, between):
    assert gp.ends_between_events(data, chunked) is between


def test_a_crlf_event_whose_read_was_cut_at_its_cr_is_sent_as_ending_between_events():
    # The keep-alives in a silence, and the error event that ends a stream the proxy
    # stops, go only where an event has ended.
    passing = gp.PassingStream(gp.Exchange("r", "openai", "generate"),
                               gp.UPSTREAM_KINDS["openai"], "text/event-stream", gp.MiB,
                               gp.Redactor())
    assert passing.take(b'data: {"x": 1}\r') == (b"", [])
    out, events = passing.take(b"\n\r\n")
    assert events == [("message", '{"x": 1}')] and out == b'data: {"x": 1}\r\n\r\n'
    assert gp.ends_between_events(gp.encode_chunk(out), True)
    assert gp.ends_between_events(out, False)


def test_an_event_stream_named_in_capitals_is_read_as_one(proxy, fake):
    def reply(handler, request):
        handler.start_stream("Text/Event-Stream")
        events = [chunk({"role": "assistant", "content": ""}), chunk({"content": "hi"}),
                  chunk(finish="stop"), "[DONE]"]
        handler.end_stream("".join(sse(e) for e in events).replace("\n", "\r").encode())
    fake.queue(reply)
    status, _, data = proxy.request("POST", "/v1/chat/completions", dict(CHAT, stream=True))
    assert status == 200 and data.rstrip().endswith(b"data: [DONE]")
    assert data == data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")   # no lone CR


def streamed_text(path, data):
    """The text of an OpenAI (/v1/...) or Gemini stream a client was sent."""
    payloads = [json.loads(line[6:]) for line in data.decode().split("\n")
                if line.startswith("data: {")]
    if path.startswith("/v1/"):
        return "".join(p["choices"][0]["delta"].get("content", "") for p in payloads
                       if p["choices"])
    return "".join(part.get("text", "") for p in payloads for c in p["candidates"]
                   for part in c["content"].get("parts", []))


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", dict(CHAT, stream=True)),                          # passed on
    ("/v1beta/models/m:streamGenerateContent?alt=sse",                          # converted
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})])
def test_a_stream_that_opens_with_a_byte_order_mark_loses_no_event(proxy, fake, path, body):
    events = [chunk({"role": "assistant", "content": "opening "}),
              chunk({"content": "and the rest"}), chunk(finish="stop"), "[DONE]"]
    # The mark written on its own, then the first event: it may reach the proxy alone,
    # when the proxy cannot tell it from the stream's first bytes until the next read.
    fake.queue(sse_texts_reply(["\ufeff"] + [sse(event) for event in events]))
    status, _, data = proxy.request("POST", path, body)
    assert status == 200 and not data.startswith(gp.UTF8_BOM), data[:40]
    assert streamed_text(path, data) == "opening and the rest"


def test_a_converted_stream_with_lone_cr_line_ends_is_read_whole(proxy, fake):
    texts = ["part %d " % i for i in range(12)]
    fake.queue(lone_cr_stream(texts))
    status, _, data = proxy.request(
        "POST", "/v1beta/models/m:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    assert status == 200, data
    chunks = [json.loads(line[6:]) for line in data.decode().split("\n")
              if line.startswith("data: ")]
    got = "".join(part.get("text", "") for c in chunks for cand in c.get("candidates", [])
                  for part in cand["content"].get("parts", []))
    assert got == "".join(texts) and chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_a_bug_while_relaying_a_passed_through_stream_is_an_error_event_and_a_traceback(
        proxy_factory, fake, monkeypatch, caplog):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}}})
    take = gp.PassingStream.take
    go_on = threading.Event()

    def broken(self, data):
        if go_on.is_set():
            raise RuntimeError("a bug")
        return take(self, data)
    monkeypatch.setattr(gp.PassingStream, "take", broken)
    fake.queue(pause_after(text_stream("later words"), until=go_on))
    conn, response = post_streaming(proxy, "/v1/chat/completions", dict(CHAT, stream=True))
    try:
        assert response.status == 200 and b'"role": "assistant"' in read_event(response)
        go_on.set()      # what comes now reaches the bug, in the event loop
        error = json.loads(read_event(response)[6:])["error"]
        rest = response.read()
    finally:
        go_on.set()
        conn.close()
    assert "internal error in gemini-proxy" in error["message"] and rest == b""
    assert [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    wait_for(lambda: proxy.server.proxy.active == 0, message="the worker freed")
    assert proxy.server.proxy.pool.open == 0     # the connection in mid-reply was dropped


def test_a_client_leaving_a_passed_through_stream_stops_the_upstream(proxy_factory, fake):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}}})

    def endless(handler, request):
        handler.start_stream()
        while handler.write_chunk(sse(chunk({"content": "word "})).encode()):
            handler.pause(0.01)
    fake.queue(endless)
    conn, response = post_streaming(proxy, "/v1/chat/completions", dict(CHAT, stream=True))
    assert response.status == 200 and b"word" in read_event(response)
    conn.close()
    wait_for(lambda: fake.aborted_streams == 1, message="the upstream stream was not closed")
    wait_for(lambda: proxy.server.proxy.active == 0, message="the worker freed")
    assert proxy.server.proxy.pool.open == 0
    status, _, _ = proxy.request("GET", "/health")
    assert status == 200


@pytest.mark.parametrize("path, payload", [
    ("/v1/chat/completions", dict(CHAT, stream=True)),                    # passed through
    ("/v1beta/models/m:streamGenerateContent?alt=sse",                    # converted
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})])
def test_streams_stay_with_their_threads_where_the_loop_cannot_watch_sockets(
        proxy_factory, fake, monkeypatch, path, payload):
    monkeypatch.setattr(gp, "loop_watches_sockets", lambda loop: False)   # Windows' proactor

    class NoRelay(gp.UpstreamRelay):      # the loop must never be asked to read
        def __init__(self, *args):
            raise AssertionError("a stream was handed to a loop that cannot watch sockets")
    monkeypatch.setattr(gp, "UpstreamRelay", NoRelay)
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}}})
    fake.queue(text_stream("from the thread", pieces=1))
    status, _, body = proxy.request("POST", path, payload)
    assert status == 200 and b"from the thread" in body
    assert b"[DONE]" in body or b"finishReason" in body


def test_a_bug_after_the_stream_began_frees_the_worker_waiting_on_the_loop(
        proxy_factory, fake, monkeypatch):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}}})
    head = gp.response_head

    def broken(status, headers):
        if ("transfer-encoding", "chunked") in headers:
            raise RuntimeError("a bug writing a stream's head")
        return head(status, headers)
    monkeypatch.setattr(gp, "response_head", broken)
    go_on = threading.Event()
    fake.queue(pause_after(text_stream("never read"), until=go_on))
    try:
        # The loop logs the bug and drops the connection: a head half made cannot be
        # taken back. The worker, its stream handed to the loop, must not wait forever.
        with pytest.raises(http.client.RemoteDisconnected):
            proxy.request("POST", "/v1/chat/completions", dict(CHAT, stream=True))
        wait_for(lambda: proxy.server.proxy.active == 0, message="the worker freed")
        assert proxy.server.proxy.pool.open == 0
    finally:
        go_on.set()


def test_total_timeout_ends_a_stream_whose_upstream_never_pauses(proxy_factory, fake):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1",
                                                  "total_timeout": 1.0}}})
    fake.queue(flood)
    status, _, body = proxy.request("POST", "/v1/chat/completions", dict(CHAT, stream=True))
    events = [line[6:] for line in body.decode().split("\n\n") if line.startswith("data: ")]
    assert status == 200 and "word" in events[0]
    assert "total timeout" in json.loads(events[-1])["error"]["message"]


def comment_flood(handler, request):
    """A stream of comments alone, never an event, until its reader hangs up (or the
    fake stops): a megabyte and more a write, faster than the proxy reads them."""
    handler.start_stream()
    comments = b": still thinking\n\n" * 60000
    while not handler.server.fake.stopping.is_set() and handler.write_chunk(comments):
        pass


@pytest.mark.parametrize("padding", [0, gp.LOOP_BODY_BYTES], ids=["on-the-loop", "in-a-worker"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"],
                         ids=["passed-through", "converted"])
def test_total_timeout_ends_a_stream_flooded_with_comments_before_its_first_event(
        proxy_factory, fake, padding, path):
    """Before the first event nothing has gone to the client, so the total timeout is a
    504. In a worker (a request too large for the event loop to begin) each read found
    bytes at once, so none timed out: the adversary's 6 s flood with total_timeout 2 s
    was a 200 at 6.7 s; a converted stream (whose pass-through twin ends at
    max_reply_bytes, lifted here) was held for as long as its upstream went on."""
    proxy = proxy_factory({"upstreams": {"fake": {
        "base_url": fake.base_url, "api_key": "k-1", "total_timeout": 1.0, "retries": 0,
        "max_reply_bytes": 1 << 40}}})
    fake.queue(comment_flood)
    status, _, body = proxy.request("POST", path, dict(
        CHAT, stream=True, max_tokens=100,
        messages=[{"role": "user", "content": "hi" + " " * padding}]))
    assert status == 504 and b"total timeout" in body, body


def whitespace_flood(handler, request):
    """A whole JSON reply that never ends: the start of an object, then blanks, one a
    chunk, until its reader hangs up (or the fake stops)."""
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("transfer-encoding", "chunked")
    handler.end_headers()
    handler.write_chunk(b'{"id": "chatcmpl-flood",')
    blanks = b"1\r\n \r\n" * 100000
    try:
        while not handler.server.fake.stopping.is_set():
            handler.wfile.write(blanks)
    except OSError:
        pass


@pytest.mark.parametrize("padding", [0, gp.LOOP_BODY_BYTES], ids=["on-the-loop", "in-a-worker"])
def test_total_timeout_ends_a_whole_reply_that_never_pauses(proxy_factory, fake, padding):
    """The adversary's whole reply of one-byte chunks without end (max_reply_bytes lifted:
    at 64 MiB of framing it took 15 s) is a 504 at the total timeout, read on the loop
    or in a worker."""
    proxy = proxy_factory({"upstreams": {"fake": {
        "base_url": fake.base_url, "api_key": "k-1", "total_timeout": 1.0, "retries": 0,
        "max_reply_bytes": 1 << 40}}})
    fake.queue(whitespace_flood)
    status, _, body = proxy.request("POST", "/v1/chat/completions", dict(
        CHAT, messages=[{"role": "user", "content": "hi" + " " * padding}]))
    assert status == 504 and b"total timeout" in body, body


def test_a_client_that_ends_its_side_and_reads_nothing_frees_the_upstream_at_once(
        proxy_factory, fake, monkeypatch):
    # Its EOF is the sign it left; the stream's worker, waiting on the loop, must not wait
    # for send_timeout (set here beyond the test's patience) to be let go.
    # Meanwhile the relay does not watch the upstream's socket (ready all along, it would
    # wake the loop at every turn), and it stops watching for good before it lets go.
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}},
                           "server": {"send_timeout": 2 * PATIENCE}})
    waits_for_the_client = threading.Event()
    drain = gp.drain_within
    watches, watching_while_draining, closed = [], [], []

    class Watch(gp.UpstreamWatch):
        def __init__(self, *args):
            super().__init__(*args)
            watches.append(self)

        def close(self):
            super().close()
            closed.append(not self._watching)

    async def watched_drain(writer, seconds):
        transport = writer.transport
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            watching_while_draining.extend(watch._watching for watch in watches)
            waits_for_the_client.set()
        await drain(writer, seconds)
    monkeypatch.setattr(gp, "drain_within", watched_drain)
    monkeypatch.setattr(gp, "UpstreamWatch", Watch)
    flooding = threading.Event()
    fake.queue(flood_after_one_event(flooding))   # the relay waits for the socket first
    sock = stalled_stream(proxy.port)
    try:
        wait_for(lambda: watches and watches[0]._watching, message="the relay waiting")
        flooding.set()
        assert waits_for_the_client.wait(PATIENCE)
        sock.shutdown(socket.SHUT_WR)       # and never reads again
        wait_for(lambda: fake.aborted_streams == 1, message="the upstream stream stopped")
        wait_for(lambda: proxy.server.proxy.active == 0, message="the worker freed")
    finally:
        flooding.set()
        sock.close()
    assert len(watches) == 1 and watching_while_draining and not any(watching_while_draining)
    assert closed == [True]


def ask_for_a_stream(port, headers=b""):
    """A raw socket that has asked the proxy at `port` for an OpenAI stream."""
    sock = socket.create_connection(("127.0.0.1", port))
    body = json.dumps(dict(CHAT, stream=True)).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n%scontent-type: "
                 b"application/json\r\ncontent-length: %d\r\n\r\n%s"
                 % (headers, len(body), body))
    return sock


def read_to_the_end(sock, received):
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return
        received += data


def read_until(sock, received, marker):
    while marker not in received:
        data = sock.recv(1 << 16)
        assert data, bytes(received)
        received += data


def done_then_held(go_on, more=None):
    """An OpenAI stream: an event, [DONE] (after the Event `more` is set, if given), then
    its body held open until `go_on` is set."""
    def reply(handler, request):
        handler.start_stream()
        done = sse(chunk(finish="stop")).encode() + b"data: [DONE]\n\n"
        handler.write_chunk(sse(chunk({"content": "first"})).encode() +
                            (done if more is None else b""))
        if more is not None:
            handler.pause(until=more)
            handler.write_chunk(done)
        handler.pause(until=go_on)
        handler.end_stream(b"")
    return reply


def chunked_reply(received):
    """(the body's text, whether it ended properly) of a 200 with a chunked body."""
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    decoder = gp.ChunkedDecoder(1 << 30)
    text = b"".join(decoder.feed(bytearray(rest))).decode()
    return text, decoder.done


@pytest.mark.parametrize("loop_reads", [True, False], ids=["loop-relays", "thread-relays"])
def test_a_client_that_ends_its_side_mid_stream_and_reads_on_sees_the_stream_cut(
        proxy_factory, fake, monkeypatch, caplog, loop_reads):
    # Its EOF is taken as its leaving, and the stream stops. If it still reads, what it
    # gets must end as a cut (no last chunk): a proper end after a part would make a
    # failure look like a whole answer. The order that used to end it properly, the
    # worker done before the loop looks again, is forced here.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    if not loop_reads:
        monkeypatch.setattr(gp, "loop_watches_sockets", lambda loop: False)
    take = gp.ChunkPipe.take
    forced = []

    async def take_once_the_worker_is_done(self, timeout=None):
        items = await take(self, timeout)
        if not items and self.gone:
            deadline = time.monotonic() + PATIENCE
            while not self.finished and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            items = await take(self, timeout)
        if self.gone:   # (on a busy machine the worker may be done before this is needed)
            forced.append(None in items)
        return items
    monkeypatch.setattr(gp.ChunkPipe, "take", take_once_the_worker_is_done)
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}}})
    go_on = threading.Event()
    fake.queue(flood_after_one_event(go_on))
    sock = ask_for_a_stream(proxy.port)
    received = bytearray()
    try:
        sock.settimeout(PATIENCE)
        read_until(sock, received, b"first")
        sock.shutdown(socket.SHUT_WR)       # and reads on
        read_to_the_end(sock, received)
    finally:
        go_on.set()
        sock.close()
    text, whole = chunked_reply(received)
    assert "first" in text and "[DONE]" not in text
    assert forced == [True]     # the loop did find the worker done
    assert not whole, "a cut stream ended as if it were whole"
    (line,) = [l for l in access_lines(caplog) if "/v1/chat/completions" in l]
    assert " 499 " in line and "closed the connection" in line, line


@pytest.mark.parametrize("loop_reads", [True, False], ids=["loop-relays", "thread-relays"])
@pytest.mark.parametrize("done_at_once", [True, False], ids=["done-at-once", "done-later"])
@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_client_that_leaves_once_it_has_the_final_event_had_a_whole_answer(
        proxy_factory, fake, monkeypatch, caplog, loop_reads, done_at_once, reset):
    # Many clients close at [DONE], before the upstream's body (and so the worker) has
    # ended: a whole answer, logged and counted as one, not as a 499. [DONE] in the
    # upstream's first read goes with the head; later, it is relayed.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    if not loop_reads:
        monkeypatch.setattr(gp, "loop_watches_sockets", lambda loop: False)
    monkeypatch.setattr(gp, "CLIENT_WATCH_DELAY", 0.0)   # it is watched from the start
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}}})
    more, go_on = threading.Event(), threading.Event()
    fake.queue(done_then_held(go_on, None if done_at_once else more))
    sock = ask_for_a_stream(proxy.port)
    received = bytearray()
    try:
        sock.settimeout(PATIENCE)
        read_until(sock, received, b"first")
        more.set()
        read_until(sock, received, b"[DONE]")
        if reset:   # closed with a reset: the proxy's next write fails
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        (line,) = [l for l in access_lines(caplog) if "/v1/chat/completions" in l]
    finally:
        more.set()
        go_on.set()
        sock.close()
    # Its line waited for the worker's end, which estimates what the upstream did not count.
    assert " 200 " in line and "error=" not in line and " tokens=~" in line, line
    # The proxy stopped the upstream call itself: no word of the upstream breaking it.
    assert not [r for r in caplog.records if "broke its stream" in r.getMessage()]


def test_a_shutdown_ends_a_whole_stream_with_no_error_after_its_final_event(
        proxy_factory, fake, caplog):
    # Its upstream has yet to end its body; its client has had all of the answer.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}},
                           "server": {"shutdown_grace": 0.2}})
    go_on = threading.Event()
    fake.queue(done_then_held(go_on))
    sock = ask_for_a_stream(proxy.port)
    received = bytearray()
    try:
        sock.settimeout(PATIENCE)
        read_until(sock, received, b"[DONE]")
        proxy.stop()
        read_to_the_end(sock, received)
        (line,) = [l for l in access_lines(caplog) if "/v1/chat/completions" in l]
    finally:
        go_on.set()
        sock.close()
    text, whole = chunked_reply(received)
    assert whole and text.endswith("data: [DONE]\n\n"), text
    assert " 200 " in line and "error=" not in line, line


class RecordingWriter:
    """A StreamWriter's part that a ClientStream uses: what it wrote, never paused."""

    def __init__(self):
        self.written = []
        self.transport = self

    def write(self, data):
        self.written.append(data)

    async def drain(self):
        pass

    def get_write_buffer_size(self):
        return 0

    def get_write_buffer_limits(self):
        return 0, 65536

    def is_closing(self):
        return False


@pytest.mark.parametrize("why, data, whole, ends, error", [
    ("shutdown", b"data: {}\n\n", False, True, True),    # between events: error, then end
    ("shutdown", b'data: {"a":', False, False, False),   # in an event: no error can follow
    ("client", b"data: {}\n\n", False, False, False),    # its client left: no end at all
    ("client", b"data: {}\n\n", True, True, False)],     # after the final event: all of it
    ids=["shutdown-between-events", "shutdown-in-an-event", "client-left",
         "client-left-after-the-final-event"])
def test_a_stream_given_up_ends_properly_only_when_whole_or_after_the_error_that_says_so(
        why, data, whole, ends, error):
    # Ended properly, a cut stream would look whole: an SSE reader drops an unfinished
    # event without a word.
    async def scenario():
        loop = asyncio.get_running_loop()
        pipe = gp.ChunkPipe(loop, 8)
        pipe.put(data)
        if whole:
            pipe.mark_whole()  # a relay wrote the final event
        pipe.abort(why)
        pipe.finish()          # the worker, stopped by the abort or not
        writer = RecordingWriter()
        ex = gp.Exchange("r", "openai", "stream")
        stream = gp.ClientStream(loop, writer, pipe, gp.CLIENT_DIALECTS["openai"], ex, True,
                                 {"send_timeout": 5.0, "keepalive_interval": 5.0}, b"HEAD\r\n")
        keep_alive = await stream.run(await pipe.take(0), True)
        return b"".join(writer.written), keep_alive, pipe.cut
    written, keep_alive, cut = asyncio.run(scenario())
    assert not keep_alive and cut == (not whole)
    assert written.endswith(gp.LAST_CHUNK) == ends
    assert (b"shutting down" in written) == error
    assert written.startswith(b"HEAD\r\n") == ends


def test_a_reply_still_in_the_proxys_buffer_when_its_client_resets_was_not_delivered():
    # Its final event written, but not yet to the socket: the client never had it (a 499).
    async def scenario():
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        theirs = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
        listener.close()
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader, writer = await asyncio.open_connection(sock=ours)
        pipe = gp.ChunkPipe(loop, 8)
        pipe.put(b"data: " + b"x" * (16 << 20) + b"\n\n")   # more than the sockets hold
        pipe.put(b"data: [DONE]\n\n", whole=True)
        stream = gp.ClientStream(loop, writer, pipe, gp.CLIENT_DIALECTS["openai"],
                                 gp.Exchange("r", "openai", "stream"), True,
                                 {"send_timeout": PATIENCE, "keepalive_interval": 5.0}, b"")
        running = asyncio.ensure_future(stream.run(await pipe.take(0), True))
        theirs.settimeout(PATIENCE)
        await loop.run_in_executor(None, theirs.recv, 100)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        theirs.close()      # a reset
        with pytest.raises(ConnectionError):
            await running
        writer.close()
        return stream.delivered
    assert asyncio.run(scenario()) is False


def test_a_client_that_pauses_longer_than_the_read_timeout_gets_its_whole_stream(
        proxy_factory, fake, monkeypatch):
    # While the client reads nothing the proxy reads nothing from the upstream, whose
    # bytes wait: that silence is the client's, not the upstream's, and must not end
    # the stream as the upstream's time-out.
    read_timeout = 2.5   # and no silence that long from the fake, however busy the machine
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1",
                                                  "read_timeout": read_timeout}}})
    waits_for_the_client = threading.Event()
    drain = gp.drain_within

    async def watched_drain(writer, seconds):
        transport = writer.transport
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            waits_for_the_client.set()
        await drain(writer, seconds)
    monkeypatch.setattr(gp, "drain_within", watched_drain)
    event = sse(chunk({"content": "word " * 200}))
    count = 8000     # 8 MB: more than the sockets between can hold

    def plenty(handler, request):
        handler.start_stream()
        for _ in range(count // 100):
            handler.write_chunk((event * 100).encode())
        handler.end_stream(b"data: [DONE]\n\n")
    fake.queue(plenty)
    sock = ask_for_a_stream(proxy.port, b"connection: close\r\n")
    received = bytearray()
    try:
        received += sock.recv(16)
        assert waits_for_the_client.wait(PATIENCE)
        time.sleep(2 * read_timeout)   # the pause: longer than the read timeout
        sock.settimeout(PATIENCE)
        read_to_the_end(sock, received)
    finally:
        sock.close()
    text, whole = chunked_reply(received)
    assert whole
    assert text.count("data: {") == count and text.endswith("data: [DONE]\n\n"), text[-300:]


@pytest.mark.parametrize("path, payload, first_text", [
    ("/v1/chat/completions", dict(CHAT, stream=True), b'"content": "held'),   # passed through
    ("/v1beta/models/m:streamGenerateContent?alt=sse",                        # converted
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, b'"text": "held')])
def test_a_streams_head_goes_out_with_its_first_event_in_one_write(
        proxy_factory, fake, monkeypatch, path, payload, first_text):
    # The worker puts its head and, at once, the first event or the relay that makes it;
    # the loop takes them together and writes them together: one send, not two (a
    # passed-through head went out alone about half the time, a converted one always).
    writes = []
    write = asyncio.StreamWriter.write

    def recorded(writer, data):
        writes.append(bytes(data))
        return write(writer, data)
    monkeypatch.setattr(asyncio.StreamWriter, "write", recorded)
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}}})
    go_on = threading.Event()
    fake.queue(pause_after(stream_reply([
        chunk({"role": "assistant", "content": "held open"}), chunk({"content": " now"}),
        chunk(finish="stop"), "[DONE]"]), writes=1, until=go_on))
    conn, response = post_streaming(proxy, path, payload)
    try:
        assert response.status == 200
        assert b"held open" in read_event(response)
        go_on.set()
        assert b" now" in response.read()
    finally:
        go_on.set()
        conn.close()
    heads = [data for data in writes if data.startswith(b"HTTP/1.1 200")]
    assert len(heads) == 1 and first_text in heads[0].replace(b'":"', b'": "'), writes[:3]


@pytest.mark.parametrize("path, payload, end", [
    ("/v1/chat/completions", dict(CHAT, stream=True), b"[DONE]"),        # passed through
    ("/v1beta/models/m:streamGenerateContent?alt=sse",                    # converted
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, b'"finishReason"')])
def test_a_stream_the_loop_relays_holds_no_worker(proxy_factory, fake, path, payload, end):
    # One worker: while the loop relays a stream, the worker is free for another request,
    # and /health says so; the stream's end still ends its request (its key let go, its
    # usage counted, its access line written).
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1"}},
                           "server": {"workers": 1}})
    app = proxy.server.proxy
    go_on = threading.Event()
    fake.queue(pause_after(text_stream("held open", pieces=1, use=usage(5, 3)), writes=2, until=go_on))
    fake.queue(json_reply(completion("meanwhile")))
    conn, response = post_streaming(proxy, path, payload)
    try:
        assert response.status == 200
        first = read_event(response)
        assert b"held" in (first if b"held" in first else read_event(response))
        wait_for(lambda: app.working == 0, message="the worker let go of the stream")
        assert app.active == 1 and app.upstreams["fake"].keys.in_flight == 1
        status, _, data = proxy.request("GET", "/health")
        assert status == 200 and json.loads(data) == {"status": "ok", "workers_free": 1}
        status, reply = proxy.post("/v1/chat/completions", CHAT)
        assert status == 200 and reply["choices"][0]["message"]["content"] == "meanwhile"
        go_on.set()
        rest = response.read()
    finally:
        go_on.set()
        conn.close()
    assert end in rest
    wait_for(lambda: app.active == 0 and proxy.server.requests_in_flight == 0,
             message="the stream's request ended")
    assert app.upstreams["fake"].keys.in_flight == 0 and app.working == 0
    now = app.metrics.now(time.time())   # both requests, and the stream's 8 tokens
    assert now["requests_per_minute"] == 2 and now["tokens_per_minute"] == 8 + 18


def test_a_relayed_stream_lets_go_of_its_slot_for_a_request_holding_the_only_worker(
        proxy_factory, fake):
    # One worker, one upstream slot: stream A holds the slot while the loop relays it;
    # request B takes the only worker and waits for the slot. A's end, which lets the
    # slot go, must not queue behind B for that worker (B would get a 503 after
    # wait_timeout, and A's client its end only then).
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1",
                                                  "max_concurrency": 1}},
                           "server": {"workers": 1}})
    app = proxy.server.proxy
    go_on = threading.Event()
    fake.queue(pause_after(text_stream("first", pieces=1), writes=2, until=go_on))
    fake.queue(json_reply(completion("second")))
    conn, response = post_streaming(proxy, "/v1/chat/completions", dict(CHAT, stream=True))
    answers = []
    asker = threading.Thread(target=lambda: answers.append(proxy.post("/v1/chat/completions",
                                                                      CHAT)))
    try:
        assert response.status == 200
        wait_for(lambda: app.working == 0, message="the stream handed to the loop")
        asker.start()
        wait_for(lambda: app.upstreams["fake"].keys.waiting == 1,
                 message="the second request waiting for the slot")
        go_on.set()
        assert b"[DONE]" in response.read()
        asker.join(PATIENCE)
    finally:
        go_on.set()
        conn.close()
    status, reply = answers[0]
    assert status == 200 and reply["choices"][0]["message"]["content"] == "second"


@pytest.mark.parametrize("path, body, last", [
    ("/v1/chat/completions", dict(CHAT, stream=True), "data: [DONE]"),         # passed on
    ("/v1beta/models/m:streamGenerateContent?alt=sse",                          # converted
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, '"finishReason":"STOP"')])
def test_an_upstream_that_breaks_its_body_after_its_last_event_ends_the_stream_well(
        proxy, fake, path, body, last):
    # The reply was whole: an error event after it would turn a finished answer into a
    # failed one for a client that reads on to the end of the body (Gemini CLI does).
    events = [chunk({"role": "assistant", "content": "whole "}), chunk({"content": "answer"}),
              chunk(finish="stop"), "[DONE]"]
    fake.queue(sse_texts_reply([sse(event) for event in events], close_early=True))
    status, _, data = proxy.request("POST", path, body)
    text = data.decode()
    assert status == 200 and "error" not in text, text[-300:]
    assert last in text.strip().split("\n")[-1] and streamed_text(path, data) == "whole answer"


class SocketReply:
    """What UpstreamWatch looks at of an upstream's reply: its socket."""

    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()

    def waits_to_write(self):
        return False


class CountedWatch(gp.UpstreamWatch):
    def __init__(self, *args):
        super().__init__(*args)
        self.ready_calls = 0

    def _ready(self):
        self.ready_calls += 1
        super()._ready()


def test_a_relay_watches_its_upstream_socket_from_one_wait_to_the_next():
    """The socket stays watched between waits (not watched anew for every event), yet
    readiness from before the relay read the socket dry never wakes it; a deadline
    earlier than the armed timer's is kept; a pause stops the watching (a socket left
    ready would wake the loop at every turn); an abandoned request ends the wait."""
    upstream, ours = socket.socketpair()
    ours.setblocking(False)

    async def scenario():
        loop = asyncio.get_running_loop()
        pipe = gp.ChunkPipe(loop, 4)
        watch = CountedWatch(loop, SocketReply(ours), pipe)
        waits = []

        async def wait(seconds):
            waits.append(await asyncio.wait_for(watch.wait(seconds), PATIENCE))

        async def waiting():
            for _ in range(1000):
                if watch._waiter is not None:
                    return
                await asyncio.sleep(0)
            pytest.fail("the wait never began")
        try:
            # the socket ready before the wait: at once
            upstream.sendall(b"one")
            await wait(PATIENCE * 4)
            # Read dry, and at once (in the same turn of the loop, whose look at the
            # socket came before the read) waited for again, with a deadline earlier
            # than the armed timer's: the wait ends at that deadline, not at once on
            # the stale readiness, nor at the later one.
            assert ours.recv(100) == b"one"
            begun = loop.time()
            waits.append(await watch.wait(0.05))
            assert 0.05 <= loop.time() - begun < PATIENCE
            # data while waiting wakes it
            waiter = asyncio.ensure_future(wait(PATIENCE * 4))
            await waiting()
            upstream.sendall(b"two")
            await waiter
            assert ours.recv(100) == b"two"
            # paused: ready data calls nobody, however many turns the loop makes
            watch.pause()
            upstream.sendall(b"three")
            calls = watch.ready_calls
            for _ in range(20):
                await asyncio.sleep(0)
            assert watch.ready_calls == calls
            await wait(PATIENCE * 4)   # watched again: at once
            assert ours.recv(100) == b"three"
            # the request abandoned: the wait ends, and the next does not begin
            waiter = asyncio.ensure_future(wait(PATIENCE * 4))
            await waiting()
            pipe.abort()
            await waiter
            assert await watch.wait(PATIENCE) is False
        finally:
            watch.close()
        assert waits == [True] * 5
        # closed: the socket is no longer watched (closing it troubles no loop)
        upstream.sendall(b"four")
        calls = watch.ready_calls
        for _ in range(20):
            await asyncio.sleep(0)
        assert watch.ready_calls == calls
    try:
        asyncio.run(scenario())
    finally:
        upstream.close()
        ours.close()
