"""IDLE, the marker a stream read by the event loop carries where its upstream has sent
nothing more yet: every stage of every conversion, from an upstream kind's events to a
client dialect's bytes, must hand it on at once (never swallow it and read on, which
would spin the loop) and leave the stream exactly as it would have been without it."""

import itertools
import json

import pytest

import gemini_proxy as gp
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


def test_idle_goes_through_the_raw_events_of_a_reply_read_on_the_loop():
    # The SSE reader and the redacting step in front of the decoders.
    class Reply(gp.UpstreamResponse):
        def __init__(self, reads):
            self.reads = reads
            self.on_loop = True
            self._name = "up"

        def read_ready(self):
            return self.reads.pop(0)
    reply = Reply([b"data: {\"a\"", None, b": 1}\n\n", None, b"data: [DONE]\n\n", b""])
    assert list(reply.sse_events(1 << 20)) == [IDLE, ("message", '{"a": 1}'), IDLE,
                                                ("message", "[DONE]")]
