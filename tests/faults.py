"""Faults an upstream can have, as replies for the fakes of fake_upstream.py, in each of the
four upstream dialects; and what a client of each dialect makes of a stream that broke.

Every builder takes the upstream kind ("openai", "gemini", "anthropic" or "openai-responses")
first and returns a reply function (handler, request_json), like the builders of
fake_upstream.py. Their pauses are handler.pause(): `seconds`, or until a threading.Event is
set, and over at once when the fake stops; so a stall meant to outlast a timeout can be made
much longer than the timeout (a busy machine cannot make the timeout lose the race) without
making the test slower.
"""

import json
import socket

from fake_upstream import (FakeAnthropic, FakeGemini, FakeOpenAI, FakeResponses,
                           anthropic_error, anthropic_error_event, anthropic_events,
                           anthropic_message, anthropic_sse, chunk, completion, gemini_chunk,
                           gemini_error, gemini_error_body, gemini_text, gemini_text_part,
                           gemini_usage, json_reply, responses_error, responses_events,
                           responses_failed_event, responses_renumber, responses_text, sse,
                           usage)

RESPONSES = "openai-responses"
FAKES = {"openai": FakeOpenAI, "gemini": FakeGemini, "anthropic": FakeAnthropic,
         RESPONSES: FakeResponses}

FIRST_WORDS = "first words"
REST = " and the rest"


def error(kind, status, message="fake trouble", retry_after=None, quota_id=None):
    """An error reply in the upstream's own shape; retry_after sets Retry-After (Gemini:
    a RetryInfo detail instead); quota_id adds a Gemini QuotaFailure. openai-responses:
    OpenAI's {"error": {message, type, param, code}} with type and code from the status."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if kind == "gemini":
        details = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaId": quota_id}]}] if quota_id else ()
        return gemini_error(status, message, retry_delay=retry_after, details=details)
    if kind == "anthropic":
        return anthropic_error(status, message=message, retry_after=retry_after)
    if kind == RESPONSES:
        return responses_error(status, message, retry_after=retry_after)
    return json_reply({"error": {"message": message, "type": "fake_error"}}, status, headers)


def whole(kind, text="all of it"):
    """A normal whole reply."""
    if kind == "gemini":
        return json_reply(gemini_text(text))
    if kind == "anthropic":
        return json_reply(anthropic_message(text))
    if kind == RESPONSES:
        return json_reply(responses_text(text))
    return json_reply(completion(text))


def _responses_split():
    """(head, rest) of a Responses text stream as (name, payload) events: head ends with
    the output_text.delta of FIRST_WORDS, rest starts with the one of REST."""
    events = responses_events(responses_text(FIRST_WORDS + REST), pieces=1)
    at = [i for i, (name, _) in enumerate(events) if name == "response.output_text.delta"][0]
    first, second = dict(events[at][1], delta=FIRST_WORDS), dict(events[at][1], delta=REST)
    events = responses_renumber(events[:at] + [(events[at][0], first), (events[at][0], second)]
                                + events[at + 1:])
    return events[:at + 1], events[at + 1:]


def _error_event(kind, message):
    """The upstream's own in-stream error, as SSE text, to follow the head of a stream."""
    if kind == "gemini":
        return sse(gemini_error_body(500, message))
    if kind == "anthropic":
        return anthropic_sse(*anthropic_error_event("overloaded_error", message))
    if kind == RESPONSES:
        return anthropic_sse(*responses_failed_event(_responses_split()[0], "server_error",
                                                     message))
    return sse({"error": {"message": message, "type": "server_error", "code": None}})


def _stream_events(kind):
    """(head, rest) of a normal text stream, as SSE strings: head carries FIRST_WORDS."""
    if kind == "gemini":
        return ([sse(gemini_chunk([gemini_text_part(FIRST_WORDS)]))],
                [sse(gemini_chunk([gemini_text_part(REST)], "STOP", gemini_usage()))])
    if kind == "anthropic":
        events = [anthropic_sse(*e) for e in anthropic_events(
            anthropic_message(FIRST_WORDS + REST), pieces=1, ping=False)]
        # message_start, block start, one text delta with everything, ...: split the text
        head = events[:2] + [anthropic_sse("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": FIRST_WORDS}})]
        rest = [anthropic_sse("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": REST}})] + events[3:]
        return head, rest
    if kind == RESPONSES:
        head, rest = _responses_split()
        return [anthropic_sse(*e) for e in head], [anthropic_sse(*e) for e in rest]
    return ([sse(chunk({"role": "assistant", "content": ""})), sse(chunk({"content": FIRST_WORDS}))],
            [sse(chunk({"content": REST})), sse(chunk(finish="stop")),
             sse(chunk(usage=usage(), choices=False)), "data: [DONE]\n\n"])


def stream(kind, ending="normal", pause=0.0, gap=0.0, until=None):
    """A text stream: FIRST_WORDS, then REST and the proper end. ending: "normal";
    "reset" (the connection drops after FIRST_WORDS); "stall" (silence for `pause`
    seconds after FIRST_WORDS, then the rest); "hold" (FIRST_WORDS and REST, then silence
    for `pause` seconds before the rest of the stream: the upstream is still talking);
    "silent" (the whole stream, its last event too, in one write; then silence for `pause`
    seconds before the body's end); "truncated" (after FIRST_WORDS half an event, then
    the body ends cleanly at the HTTP level); "error" (after FIRST_WORDS the upstream's
    own in-stream error, then the body ends cleanly: a Chat `data: {"error": ...}`, a
    Gemini error chunk, an Anthropic error event, a Responses response.failed with
    error.code "server_error"). until: a threading.Event that ends the silence instead
    (`pause`, if not 0, bounds it). gap: seconds between events; without one the events up
    to FIRST_WORDS go out in one write, so the only silence is the one the ending
    scripts."""
    head, rest = _stream_events(kind)
    if ending == "hold":
        head, rest = head + rest[:1], rest[1:]
    if ending == "silent":
        head, rest = head + rest, []

    def reply(handler, request):
        handler.start_stream()
        if not gap:   # one write: no silence inside it for a short read_timeout to find
            head_writes = ["".join(head)]
        else:
            head_writes = head
        for data in head_writes:
            if not handler.write_chunk(data.encode()):
                return
            handler.pause(gap)
        if ending == "reset":
            reset(handler)
            return
        if ending == "truncated":
            handler.end_stream(rest[0][:len(rest[0]) // 2].encode())
            return
        if ending == "error":
            handler.end_stream(_error_event(kind, "upstream broke mid-stream").encode())
            return
        if until is not None:
            handler.pause(pause or None, until)
        else:
            handler.pause(pause)
        for event in rest[:-1]:
            if not handler.write_chunk(event.encode()):
                return
            handler.pause(gap)
        handler.end_stream(rest[-1].encode() if rest else b"")   # last event and the end
    return reply


def close_delimited_stream(kind, pause):
    """A stream without chunked framing that ends when the connection closes (an HTTP/1.0
    style "Connection: close" reply, which nginx sends now and then): FIRST_WORDS, silence
    for `pause` seconds, then the rest."""
    head, rest = _stream_events(kind)

    def reply(handler, request):
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("connection", "close")
        handler.end_headers()
        try:
            handler.wfile.write("".join(head).encode())
            handler.wfile.flush()
            handler.pause(pause)
            handler.wfile.write("".join(rest).encode())
            handler.wfile.flush()
        except OSError:
            pass
    return reply


def reset(handler):
    """Drop the connection at once: with SO_LINGER 0 the peer sees a reset."""
    handler.close_connection = True
    try:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      b"\x01\x00\x00\x00\x00\x00\x00\x00")
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def reset_before_reply(kind):
    """The connection drops before any byte of the reply."""
    return lambda handler, request: reset(handler)


def slow(kind, seconds, streaming=False):
    """A normal reply whose first byte (the status line) comes after `seconds`."""
    inner = stream(kind) if streaming else whole(kind)

    def reply(handler, request):
        handler.pause(seconds)
        inner(handler, request)
    return reply


def held(kind, gate, streaming=False):
    """A normal reply whose first byte comes once the threading.Event `gate` is set: the
    test decides how long the upstream is busy, and knows it is busy meanwhile."""
    inner = stream(kind) if streaming else whole(kind)

    def reply(handler, request):
        handler.pause(until=gate)
        inner(handler, request)
    return reply


def invalid_json(kind, streaming=False):
    """200 with a body that is not JSON (a stream: an event whose data is not JSON)."""
    def reply(handler, request):
        if streaming:
            handler.start_stream()
            handler.write_chunk(b"data: {this is not json\n\n")
            handler.end_stream()
        else:
            handler.send_body(200, b"<html>gateway says hi</html>", "application/json")
    return reply


_HELD_PORTS = []   # sockets that keep closed_port()'s ports, for the rest of the run


def closed_port():
    """A local port nothing listens on (connection refused), for the rest of the run: a
    socket stays bound to it without listening. A port merely bound and let go could be
    taken by a listener meanwhile, or be picked as the source port of a connection to
    itself, which then connects to itself instead of being refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _HELD_PORTS.append(s)
    return s.getsockname()[1]


# -- what a client of each dialect makes of a stream -------------------------------------

def _events(data):
    """(event name or None, data) of an SSE body; comments are kept as (":", text)."""
    out = []
    for block in data.decode("utf-8").split("\n\n"):
        if not block:
            continue
        name, payload = None, None
        for line in block.split("\n"):
            if line.startswith(":"):
                out.append((":", line[1:].strip()))
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                payload = line[6:]
        if payload is not None:
            out.append((name, payload))
    return out


def read_stream(dialect, data):
    """(text, how it ended, keep-alives seen) of a client's stream; how it ended is
    "finished" (the dialect's normal end), "error" (its error form) or "cut" (it just
    stopped: for Gemini, the no-finishReason end that Gemini CLI retries). The Responses
    dialect ("openai-responses" or "responses") finishes with response.completed or
    response.incomplete and errs with response.failed or an `error` event."""
    text, ending, keepalives = "", "cut", 0
    for name, payload in _events(data):
        if name == ":":
            keepalives += 1
            continue
        if dialect == "anthropic":
            if name == "ping":
                keepalives += 1
                continue
            event = json.loads(payload)
            if name == "error":
                ending = "error"
            elif name == "content_block_delta" and event["delta"]["type"] == "text_delta":
                text += event["delta"]["text"]
            elif name == "message_stop":
                ending = "finished"
        elif dialect in (RESPONSES, "responses"):
            event = json.loads(payload)
            kind = event.get("type")
            if kind == "response.output_text.delta":
                text += event.get("delta") or ""
            elif kind in ("response.completed", "response.incomplete"):
                ending = "finished"
            elif kind in ("response.failed", "error"):
                ending = "error"
        elif dialect == "openai":
            if payload == "[DONE]":
                ending = "finished"
                continue
            event = json.loads(payload)
            if "error" in event:
                ending = "error"
                continue
            for choice in event.get("choices", []):
                text += choice["delta"].get("content") or ""
        else:
            event = json.loads(payload)
            for candidate in event.get("candidates", []):
                text += "".join(p.get("text", "") for p in
                                candidate.get("content", {}).get("parts", []))
                if candidate.get("finishReason"):
                    ending = "finished"
    return text, ending, keepalives
