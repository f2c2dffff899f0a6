"""IDLE, the marker a stream read by the event loop carries where its upstream has sent
nothing more yet: every stage of every conversion, from an upstream kind's events to a
client dialect's bytes, must hand it on at once (never swallow it and read on, which
would spin the loop) and leave the stream exactly as it would have been without it."""

import itertools
import json
import socket
import threading

import pytest

import gemini_proxy as gp
from conftest import PATIENCE
from fake_upstream import (anthropic_text_stream, anthropic_tool_stream, gemini_call_stream,
                           gemini_text_stream, responses_call_stream, responses_text_stream,
                           text_stream, tool_stream)

IDLE = gp.IDLE
CALLS = [("call_1", "lookup", {"city": "Oslo"}), ("call_2", "notify", {"to": "me"})]


class Recorder:
    """Stands in for the fake upstream's request handler: keeps what a reply writes."""

    query = {"alt": "sse"}

    def __init__(self):
        self.data = bytearray()

    def start_stream(self, content_type="text/event-stream"):
        pass

    def write_chunk(self, data):
        self.data += data
        return True

    def end_stream(self, data=b""):
        self.data += data

    def pause(self, seconds=None, until=None):
        pass


def raw_events(reply):
    recorder = Recorder()
    reply(recorder, None)
    parser = gp.SSEParser(1 << 20)
    return parser.feed(bytes(recorder.data)) + parser.finish()


def in_code_assist_envelope(events):
    return [(name, json.dumps({"response": json.loads(data), "traceId": "t"}))
            for name, data in events]


STREAMS = {
    "openai": [text_stream("Hello there, wide world", reasoning="first a thought"),
               tool_stream(CALLS, reasoning="which tool")],
    "anthropic": [anthropic_text_stream("Hello there, wide world", thinking="a thought"),
                  anthropic_tool_stream(CALLS, text="calling", thinking="which tool")],
    "gemini": [gemini_text_stream("Hello there, wide world", thought="a thought"),
               gemini_call_stream(CALLS, thought="which tool", text="calling")],
    "openai-responses": [responses_text_stream("Hello there, wide world", thought="a thought"),
                  responses_call_stream(CALLS, thought="which tool", text="calling")],
}
CASES = [(kind, index) for kind in ("openai", "anthropic", "gemini", "openai-responses",
                                    "code-assist")
         for index in range(2)]


def stuttered(items):
    """IDLE before, between and after the items: a stream that arrives one event a read."""
    out = [IDLE]
    for item in items:
        out += [item, IDLE]
    return out


class Counted:
    """An iterator that counts the IDLEs taken from it."""

    def __init__(self, items):
        self.items, self.idles = iter(items), 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.items)
        self.idles += item is IDLE
        return item


def convert(kind, client, raw, monkeypatch):
    """A client's bytes for an upstream's raw events, through every stage a converted
    stream passes (as generate() chains them), with ids and clocks held still."""
    ids = itertools.count()
    monkeypatch.setattr(gp, "new_id", lambda prefix="", nbytes=12: "%sid%d" % (prefix, next(ids)))
    usage_of = gp.Exchange.__new__(gp.Exchange)
    usage_of.usage = None
    chat = gp.Chat(messages=[gp.Message("user", [gp.Part(gp.TEXT, text="hi")])])
    events = gp.UPSTREAM_KINDS[kind].decode_stream(raw)
    events = gp.split_think_tags(events, ["think"])
    events = gp._track_usage(usage_of, chat, gp.cut_at_stop_strings(events, ["NEVER SAID"]))
    return list(gp.CLIENT_DIALECTS[client].encode_stream(events, "m", "resp_1"))


@pytest.mark.parametrize("client", ["openai", "anthropic", "gemini", "responses"])
@pytest.mark.parametrize("kind, index", CASES)
def test_idle_goes_through_every_stage_and_changes_nothing(kind, index, client, monkeypatch):
    monkeypatch.setattr(gp.time, "time", lambda: 1767225600.0)
    raw = raw_events(STREAMS["gemini" if kind == "code-assist" else kind][index])
    if kind == "code-assist":
        raw = in_code_assist_envelope(raw)
    plain = convert(kind, client, raw, monkeypatch)
    source = Counted(stuttered(raw))
    with_idle = convert(kind, client, source, monkeypatch)
    assert plain and IDLE not in plain
    # Each one taken is handed on, none swallowed (a decoder may stop before the last:
    # OpenAI's [DONE] ends its reading).
    assert with_idle.count(IDLE) == source.idles >= len(raw)
    assert [piece for piece in with_idle if piece is not IDLE] == plain


def chunked_sse_read_on_loop(sock, stopped):
    """A chunked SSE reply on `sock` (its head read already), read as the event loop
    reads it; `stopped` is the socket a CallStopper would shut."""
    head = gp.parse_reply_head(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                               b"transfer-encoding: chunked\r\n\r\n")
    reply = gp.UpstreamResponse(gp.ConnectionPool(), None, gp.UpstreamConnection(sock), head,
                                gp.ReplyBody(head, "POST"), 1, "up", gp.Timeouts(5, 5, 5),
                                gp.CallStopper(stopped))
    reply.read_on_loop()
    return reply


def test_a_reply_read_on_the_loop_says_idle_where_it_would_wait():
    # The socket's side: a chunked SSE body arriving in pieces, read without waiting.
    ours, theirs = socket.socketpair()
    try:
        reply = chunked_sse_read_on_loop(ours, ours)
        events = reply.sse_events(1 << 20)
        theirs.sendall(b'a\r\ndata: {"a"\r\n')         # half an event
        assert next(events) is IDLE
        theirs.sendall(b"6\r\n: 1}\n\n\r\n")
        assert next(events) == ("message", '{"a": 1}')
        assert next(events) is IDLE
        theirs.sendall(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
        assert list(events) == [("message", "[DONE]")]
    finally:
        ours.close()
        theirs.close()


class CountedReads:
    """A socket whose recv calls are counted."""

    def __init__(self, sock):
        self.sock, self.reads = sock, 0

    def recv(self, size):
        self.reads += 1
        return self.sock.recv(size)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_a_short_read_on_the_loop_is_taken_as_the_socket_emptied():
    # A read that took less than it asked for found the socket empty: the next says
    # "nothing yet" without a recv (the selector reports what comes later), once.
    ours, theirs = socket.socketpair()
    counted = CountedReads(ours)
    try:
        chunks = chunked_sse_read_on_loop(counted, ours).raw_chunks()
        lone = b'data: {"a":1}\n\n'
        theirs.sendall(b"%x\r\n%s\r\n" % (len(lone), lone))
        assert next(chunks) == lone and counted.reads == 1
        assert next(chunks) is IDLE and counted.reads == 1     # no second recv
        assert next(chunks) is IDLE and counted.reads == 2     # asked again: it reads
        # A read that filled what it asked for may have left more: it reads on.
        event = b"data: " + b"x" * 1000 + b"\n\n"
        body = b"".join(b"%x\r\n%s\r\n" % (len(event), event) for _ in range(70))
        for end, option in ((theirs, socket.SO_SNDBUF), (ours, socket.SO_RCVBUF)):
            end.setsockopt(socket.SOL_SOCKET, option, 1 << 18)   # room for all of it
        sender = threading.Thread(target=theirs.sendall, args=(body,))
        sender.start()
        sender.join(PATIENCE)   # all of it waits in the socket then (a Unix socket's send)
        assert not sender.is_alive()
        first = next(chunks)
        assert counted.reads == 3 and len(first) < len(body) - 4096
        rest = next(chunks)
        assert counted.reads == 4 and first + rest == event * 70
        assert next(chunks) is IDLE and counted.reads == 4
    finally:
        ours.close()
        theirs.close()
