"""Scriptable fake upstreams for tests, benchmarks and real-client runs.

Four servers speak four dialects: `FakeOpenAI` (OpenAI-compatible Chat Completions,
base_url = its /v1 root), `FakeGemini` (Gemini API `/v1beta/models/{m}:method`, base_url = the
root), `FakeAnthropic` (Anthropic Messages `/v1/messages`, base_url = the root) and
`FakeResponses` (the OpenAI Responses API `/v1/responses`, base_url = its /v1 root). Each
listens on 127.0.0.1 with HTTP/1.1 keep-alive and records every request it answers from a
script.

Replies come from a script (a queue of reply functions, any POST takes the next one) or, when
the script is empty, from one small rule-based "model" shared by them all (`brain`): a last
user message containing `CALL name {json}` directives is answered with those tool calls (in
parallel when there are several); a turn that ends with tool results is answered with a
summary of them; a JSON-mode request gets JSON matching its schema; anything else gets a fixed
sentence. The Gemini, Anthropic and Responses fakes open with a thought when the request asks
for one.

A reply is a function (handler, request_json) that writes a whole HTTP response; the builders
below make them (`*_reply`, `*_stream`, `*_error`) or make the dicts they carry. A reply that
waits (a delay, a stall) does it with handler.pause(), which ends at once when the fake stops,
so a test may script a stall far longer than any timeout it expects to fire.

Run one alone with `python tests/fake_upstream.py PORT [openai|gemini|anthropic|openai-responses]`.
"""

import base64
import hashlib
import json
import re
import socket
import struct
import sys
import threading
import time
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote

CALL_DIRECTIVE = re.compile(r"CALL (\w+) (\{.*?\})(?=\s+CALL |\s*$)", re.S)


def sse(obj):
    return "data: %s\n\n" % (obj if isinstance(obj, str) else json.dumps(obj))


def split_text(text, pieces):
    """`text` in at most `pieces` consecutive non-empty pieces ([] for "")."""
    size = max(1, -(-len(text) // max(1, pieces)))
    return [text[i:i + size] for i in range(0, len(text), size)]


# == OpenAI Chat Completions builders ======================================================

def chunk(delta=None, finish=None, usage=None, model="fake-model", choices=True):
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
            "model": model, "choices": []}
    if choices:
        body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    if usage is not None:
        body["usage"] = usage
    return body


def usage(prompt=11, completion=7, reasoning=0, cached=0):
    out = {"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion}
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def completion(content=None, tool_calls=None, finish="stop", reasoning=None, use=None):
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = reasoning
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1,
            "model": "fake-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": use or usage()}


def tool_call(call_id, name, args):
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}


# -- replies: functions(handler, request_json) that write a whole HTTP response -----------

def json_reply(payload, status=200, headers=None):
    def reply(handler, request):
        handler.send_body(status, json.dumps(payload).encode(), "application/json", headers)
    return reply


def raw_reply(body, status=200, content_type="application/json", headers=None):
    def reply(handler, request):
        handler.send_body(status, body if isinstance(body, bytes) else body.encode(),
                          content_type, headers)
    return reply


def cut_connection(handler):
    """Drop the connection without ending the chunked body (a stream cut mid-way)."""
    handler.close_connection = True
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def sse_texts_reply(texts, delay=0.0, close_early=False):
    """An SSE reply of events already written out as text, one chunk each, `delay`
    seconds apart; close_early drops the connection after them without ending the body."""
    def reply(handler, request):
        handler.start_stream()
        for index, text in enumerate(texts):
            if delay:
                handler.pause(delay)
            if index == len(texts) - 1 and not close_early:
                handler.end_stream(text.encode())   # the last event and the body's end
                return
            if not handler.write_chunk(text.encode()):
                return
        if close_early:
            cut_connection(handler)
            return
        handler.end_stream()
    return reply


def stream_reply(events, delay=0.0, close_early=False):
    """An SSE reply; `events` are chunk dicts or raw strings (e.g. "[DONE]").
    close_early drops the connection after the events without ending the stream."""
    return sse_texts_reply([sse(event) for event in events], delay, close_early)


def text_stream(text, pieces=3, reasoning=None, use=None, delay=0.0):
    events = [chunk({"role": "assistant", "content": ""})]
    if reasoning:
        events.append(chunk({"reasoning_content": reasoning}))
    size = max(1, len(text) // pieces)
    events += [chunk({"content": text[i:i + size]}) for i in range(0, len(text), size)]
    events += [chunk(finish="stop"), chunk(usage=use or usage(), choices=False), "[DONE]"]
    return stream_reply(events, delay)


def tool_stream(calls, reasoning=None, use=None, split=True, repeat_ids=False):
    """Tool calls streamed in fragments: first id and name, then the arguments in two
    pieces (llama.cpp style with repeat_ids: id and name again in every fragment)."""
    events = [chunk({"role": "assistant", "content": None})]
    if reasoning:
        events.append(chunk({"reasoning_content": reasoning}))
    for index, (call_id, name, args) in enumerate(calls):
        text = json.dumps(args)
        head = {"index": index, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": ""}}
        events.append(chunk({"tool_calls": [head]}))
        pieces = [text[:len(text) // 2], text[len(text) // 2:]] if split else [text]
        for piece in pieces:
            fragment = {"index": index, "function": {"arguments": piece}}
            if repeat_ids:
                fragment.update(id=call_id, type="function")
                fragment["function"]["name"] = name
            events.append(chunk({"tool_calls": [fragment]}))
    events += [chunk(finish="tool_calls"), chunk(usage=use or usage(), choices=False), "[DONE]"]
    return stream_reply(events)


def hang(seconds):
    def reply(handler, request):
        handler.pause(seconds)
        handler.send_body(200, json.dumps(completion("late")).encode(), "application/json")
    return reply


class Gate:
    """A reply held until the test opens the gate (or `limit` seconds pass): lets a test
    act while the upstream is known to be busy, without guessing how long anything takes.
    `entered` is set once a request is waiting at the gate. `midway`: `reply`, a whole
    one (json_reply, raw_reply: they write with send_body), is held after its head and
    the first half of its body instead, so that its client is busy reading it meanwhile
    (a proxy holds a thread for a reply that has begun, not for an upstream that has
    sent nothing yet)."""

    def __init__(self, reply=None, limit=60.0, midway=False):
        self.reply = reply
        self.limit = limit
        self.midway = midway
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, handler, request):
        if self.midway:
            handler.body_gate = self    # send_body waits at it, for this reply only
            try:
                self.reply(handler, request)
            finally:
                handler.body_gate = None
            return
        self.entered.set()
        self.opened.wait(self.limit)
        if self.reply is not None:
            self.reply(handler, request)
        else:
            handler.close_connection = True

    def open(self):
        self.opened.set()


def delayed(seconds, reply):
    """`reply`, after a pause (any dialect)."""
    def wrapped(handler, request):
        handler.pause(seconds)
        reply(handler, request)
    return wrapped


def pause_after(reply, writes=1, seconds=None, until=None):
    """`reply` (any dialect's stream), paused after its first `writes` chunks: for `seconds`,
    or until the threading.Event `until` is set (then `seconds`, if given, bounds the wait).
    A test that holds a stream open with `until` knows it is still open, however slow the
    machine; it must set the event when done (stopping the fake also ends the pause)."""
    def paused(handler, request):
        write, written = handler.write_chunk, []

        def write_then_pause(data):
            sent = write(data)
            written.append(data)
            if sent and len(written) == writes:
                handler.pause(seconds, until)
            return sent
        handler.write_chunk = write_then_pause
        reply(handler, request)
    return paused


def flood(handler, request):
    """A stream that never pauses, until its reader hangs up (or the fake stops): a
    megabyte of events a write, faster than the proxy can read them."""
    handler.start_stream()
    _flood_on(handler)


def flood_after_one_event(until):
    """One event, a pause until the threading.Event `until` is set (a relay then waits
    for the upstream's socket), then a flood."""
    def reply(handler, request):
        handler.start_stream()
        handler.write_chunk(sse(chunk({"content": "first"})).encode())
        handler.pause(until=until)
        _flood_on(handler)
    return reply


def _flood_on(handler):
    events = sse(chunk({"content": "word " * 200})).encode() * 1000
    while handler.write_chunk(events):
        pass


# == Gemini API builders ===================================================================
# Dict builders: gemini_text_part, gemini_call_part, gemini_usage, gemini_chunk,
# gemini_response, gemini_text, gemini_calls, gemini_blocked, gemini_error_body.
# Replies: gemini_stream, gemini_text_stream, gemini_call_stream, gemini_error.
# `calls` are (call_id, name, args) or (call_id, name, args, thought_signature) tuples.

GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                 500: "INTERNAL", 501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}


def gemini_text_part(text, thought=False, signature=None):
    part = {"text": text}
    if thought:
        part["thought"] = True
    if signature:
        part["thoughtSignature"] = signature
    return part


def gemini_call_part(name, args, call_id=None, signature=None):
    call = {"id": call_id} if call_id else {}
    call.update(name=name, args=args)
    part = {"functionCall": call}
    if signature:
        part["thoughtSignature"] = signature
    return part


def gemini_usage(prompt=11, candidates=7, thoughts=0, cached=0):
    out = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
           "totalTokenCount": prompt + candidates + thoughts}
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    if cached:
        out["cachedContentTokenCount"] = cached
    out["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return out


def gemini_chunk(parts=None, finish=None, use=None, model="fake-model",
                 response_id="fake-response"):
    """One GenerateContentResponse as a stream delta: no finishReason or usage unless given."""
    candidate = {"content": {"role": "model", "parts": list(parts or [])}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    body = {"candidates": [candidate]}
    if use is not None:
        body["usageMetadata"] = use
    body.update(modelVersion=model, responseId=response_id)
    return body


def gemini_response(parts=None, finish="STOP", use=None, model="fake-model",
                    response_id="fake-response"):
    """A whole GenerateContentResponse (finishReason STOP and usage by default)."""
    return gemini_chunk(parts, finish, use or gemini_usage(), model, response_id)


def _gemini_call_parts(calls):
    return [gemini_call_part(call[1], call[2], call[0], call[3] if len(call) > 3 else None)
            for call in calls]


def _gemini_lead_parts(thought=None, text=None):
    parts = [gemini_text_part(thought, thought=True)] if thought else []
    return parts + ([gemini_text_part(text)] if text is not None else [])


def gemini_text(text, thought=None, signature=None, finish="STOP", use=None,
                model="fake-model"):
    """A text answer, after an optional thought part; signature goes on the text part."""
    parts = _gemini_lead_parts(thought)
    parts.append(gemini_text_part(text, signature=signature))
    return gemini_response(parts, finish, use, model)


def gemini_calls(calls, thought=None, text=None, finish="STOP", use=None, model="fake-model"):
    """Function calls (complete functionCall parts), after an optional thought and text."""
    return gemini_response(_gemini_lead_parts(thought, text) + _gemini_call_parts(calls),
                           finish, use, model)


def gemini_blocked(reason="SAFETY", use=None, model="fake-model"):
    """A prompt blocked before generation: no candidates, promptFeedback.blockReason."""
    return {"promptFeedback": {"blockReason": reason, "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
            "usageMetadata": use or gemini_usage(candidates=0),
            "modelVersion": model, "responseId": "fake-response"}


def gemini_error_body(code=429, message=None, status=None, retry_delay=None, details=()):
    """Google's error shape; retry_delay (seconds or "17s") adds a RetryInfo detail."""
    details = list(details)
    if retry_delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": retry_delay if isinstance(retry_delay, str)
                        else "%gs" % retry_delay})
    error = {"code": code, "message": message or "Fake error %d." % code,
             "status": status or GOOGLE_STATUS.get(code, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


def gemini_error(code=429, message=None, status=None, retry_delay=None, details=(),
                 headers=None):
    return json_reply(gemini_error_body(code, message, status, retry_delay, details), code,
                      headers)


def gemini_stream(chunks, delay=0.0, close_early=False, form=None):
    """Stream `chunks` (dicts, or raw JSON strings) as Gemini does: form "sse" (`data: ...`
    events) or "array" (one JSON array sent piece by piece); by default "sse" when the
    request's query has alt=sse, else "array". close_early drops the connection after the
    chunks without ending the body (nor the array)."""
    def reply(handler, request):
        mode = form or ("sse" if handler.query.get("alt") == "sse" else "array")
        handler.start_stream("text/event-stream" if mode == "sse" else "application/json")
        for index, body in enumerate(chunks):
            if delay:
                handler.pause(delay)
            if mode == "sse":
                data = sse(body)
            else:
                data = ("[" if index == 0 else ",\r\n") + (
                    body if isinstance(body, str) else json.dumps(body))
            if mode == "sse" and index == len(chunks) - 1 and not close_early:
                handler.end_stream(data.encode())   # the last event and the body's end
                return
            if not handler.write_chunk(data.encode()):
                return
        if close_early:
            cut_connection(handler)
            return
        handler.end_stream((b"]" if chunks else b"[]") if mode == "array" else b"")
    return reply


def _gemini_delta_stream(groups, final, finish, use, delay, close_early, model, form):
    """Chunks from lists of parts; the last one (or `final` parts) carries finishReason and
    usage. close_early leaves that last chunk out and cuts the connection."""
    groups = list(groups)
    if close_early:
        return gemini_stream([gemini_chunk(g, model=model) for g in groups], delay, True, form)
    if final is None:
        final = groups.pop() if groups else [gemini_text_part("")]
    chunks = [gemini_chunk(g, model=model) for g in groups]
    chunks.append(gemini_chunk(final, finish, use or gemini_usage(), model))
    return gemini_stream(chunks, delay, False, form)


def gemini_text_stream(text, pieces=3, thought=None, signature=None, finish="STOP", use=None,
                       delay=0.0, close_early=False, model="fake-model", form=None):
    """Text in `pieces` deltas after an optional thought chunk. With a signature the final
    chunk is an empty text part holding it (Gemini 3 style); otherwise the last text delta
    carries finishReason and usage."""
    groups = [_gemini_lead_parts(thought)] if thought else []
    groups += [[gemini_text_part(piece)] for piece in split_text(text, pieces)]
    final = [gemini_text_part("", signature=signature)] if signature else None
    return _gemini_delta_stream(groups, final, finish, use, delay, close_early, model, form)


def gemini_call_stream(calls, thought=None, text=None, together=False, finish="STOP",
                       use=None, delay=0.0, close_early=False, model="fake-model", form=None):
    """Complete functionCall parts, one chunk each (all in one chunk with together=True),
    after optional thought and text chunks; the last chunk carries finishReason and usage."""
    groups = [[part] for part in _gemini_lead_parts(thought, text)]
    parts = _gemini_call_parts(calls)
    groups += [parts] if together else [[part] for part in parts]
    return _gemini_delta_stream(groups, None, finish, use, delay, close_early, model, form)


# == Anthropic Messages builders ===========================================================
# Dict builders: anthropic_usage, anthropic_text_block, anthropic_thinking_block,
# anthropic_redacted_block, anthropic_tool_block, anthropic_message, anthropic_events,
# anthropic_error_body, anthropic_error_event. Replies: anthropic_stream,
# anthropic_message_stream, anthropic_text_stream, anthropic_tool_stream, anthropic_error.
# `calls` are (tool_use_id, name, input) tuples.

ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                         402: "billing_error", 403: "permission_error", 404: "not_found_error",
                         413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                         504: "timeout_error", 529: "overloaded_error"}


def anthropic_usage(input_tokens=11, output_tokens=7, cache_read=0, cache_creation=0):
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_creation, "cache_read_input_tokens": cache_read}


def anthropic_text_block(text):
    return {"type": "text", "text": text}


def anthropic_thinking_block(thinking, signature="sig-anthropic"):
    return {"type": "thinking", "thinking": thinking, "signature": signature}


def anthropic_redacted_block(data="ZmFrZSByZWRhY3RlZCB0aGlua2luZw=="):
    return {"type": "redacted_thinking", "data": data}


def anthropic_tool_block(tool_id, name, tool_input):
    return {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}


def anthropic_message(content, stop="end_turn", use=None, model="fake-model",
                      stop_sequence=None, message_id="msg_fake"):
    """A whole Message; `content` is a list of blocks or a string (one text block)."""
    if isinstance(content, str):
        content = [anthropic_text_block(content)]
    return {"id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": list(content), "stop_reason": stop, "stop_sequence": stop_sequence,
            "usage": use or anthropic_usage()}


def anthropic_sse(name, payload):
    return "event: %s\ndata: %s\n\n" % (name, json.dumps(payload))


def anthropic_events(message, pieces=2, ping=True):
    """The (event name, payload) sequence that streams `message`: message_start, per block
    content_block_start / deltas / content_block_stop (text_delta; thinking_delta then
    signature_delta; input_json_delta in at least two pieces; redacted_thinking whole in its
    start), a ping after the first block start, message_delta with the stop reason and the
    cumulative usage, message_stop."""
    use = message.get("usage") or anthropic_usage()
    head = dict(message, content=[], stop_reason=None, stop_sequence=None,
                usage=dict(use, output_tokens=min(1, use.get("output_tokens", 0))))
    events = [("message_start", {"type": "message_start", "message": head})]
    for index, block in enumerate(message["content"]):
        kind = block.get("type")
        if kind == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in split_text(block["text"], pieces)]
        elif kind == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p}
                      for p in split_text(block["thinking"], pieces)]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "tool_use":
            start = dict(block, input={})
            deltas = [{"type": "input_json_delta", "partial_json": p}
                      for p in split_text(json.dumps(block["input"]), max(2, pieces))]
        else:                   # redacted_thinking and anything else arrive whole
            start, deltas = block, []
        events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": start}))
        if ping and index == 0:
            events.append(("ping", {"type": "ping"}))
        events += [("content_block_delta", {"type": "content_block_delta", "index": index,
                                            "delta": delta}) for delta in deltas]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    if ping and not message["content"]:
        events.append(("ping", {"type": "ping"}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": message.get("stop_reason"),
                                               "stop_sequence": message.get("stop_sequence")},
                                     "usage": dict(use)}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def anthropic_stream(events, delay=0.0, close_early=False):
    """An SSE reply of (name, payload) events or raw strings; close_early drops the
    connection after them without ending the body."""
    return sse_texts_reply([e if isinstance(e, str) else anthropic_sse(*e) for e in events],
                           delay, close_early)


def anthropic_message_stream(message, pieces=2, ping=True, delay=0.0, close_early=False):
    """`message` streamed; close_early leaves out message_delta and message_stop and cuts."""
    events = anthropic_events(message, pieces, ping)
    return anthropic_stream(events[:-2] if close_early else events, delay, close_early)


def _anthropic_lead(thinking, signature, text=None):
    blocks = [anthropic_thinking_block(thinking, signature)] if thinking is not None else []
    return blocks + ([anthropic_text_block(text)] if text is not None else [])


def anthropic_text_stream(text, thinking=None, signature="sig-anthropic", stop="end_turn",
                          use=None, pieces=3, delay=0.0, close_early=False, model="fake-model"):
    content = _anthropic_lead(thinking, signature, text)
    return anthropic_message_stream(anthropic_message(content, stop, use, model), pieces,
                                    delay=delay, close_early=close_early)


def anthropic_tool_stream(calls, text=None, thinking=None, signature="sig-anthropic",
                          use=None, delay=0.0, close_early=False, model="fake-model"):
    content = _anthropic_lead(thinking, signature, text)
    content += [anthropic_tool_block(*call) for call in calls]
    return anthropic_message_stream(anthropic_message(content, "tool_use", use, model),
                                     delay=delay, close_early=close_early)


def anthropic_error_body(kind="rate_limit_error", message=None):
    return {"type": "error", "error": {"type": kind, "message": message or "Fake %s." % kind},
            "request_id": "req_fake"}


def anthropic_error(status=429, kind=None, message=None, retry_after=None, headers=None):
    """An error reply; kind defaults from the status (529 -> overloaded_error);
    retry_after sets the retry-after header."""
    kind = kind or ANTHROPIC_ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error")
    headers = dict(headers or {})
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    headers.setdefault("request-id", "req_fake")
    return json_reply(anthropic_error_body(kind, message), status, headers)


def anthropic_error_event(kind="overloaded_error", message="Overloaded"):
    """An in-stream error event, to add to anthropic_events(...) for anthropic_stream."""
    return ("error", {"type": "error", "error": {"type": kind, "message": message}})


# == OpenAI Responses API builders =========================================================
# Dict builders: responses_usage, responses_text_part, responses_refusal_part,
# responses_message_item, responses_reasoning_item, responses_function_call_item,
# responses_custom_call_item, responses_object, responses_text, responses_calls,
# responses_events, responses_renumber, responses_failed_event, responses_error_event,
# responses_error_body. Replies: responses_stream, responses_object_stream,
# responses_text_stream, responses_call_stream, responses_error.
# `calls` are (call_id, name, args) tuples (a function_call; args a dict, or a str sent as
# the arguments string unchanged) or whole items (e.g. from responses_custom_call_item).

RESPONSES_ERRORS = {400: ("invalid_request_error", None),
                    401: ("invalid_request_error", "invalid_api_key"),
                    403: ("invalid_request_error", "unsupported_country_region_territory"),
                    404: ("invalid_request_error", "model_not_found"),
                    429: ("requests", "rate_limit_exceeded"),
                    500: ("server_error", None),
                    503: ("server_error", "server_is_overloaded")}
RESPONSES_TERMINAL = {"completed": "response.completed", "incomplete": "response.incomplete",
                      "failed": "response.failed"}


def responses_usage(input_tokens=11, output_tokens=7, reasoning=0, cached=0, cache_write=None):
    """Usage in Responses shape: input_tokens include the cached ones, output_tokens the
    reasoning ones; cache_write (when given) adds input_tokens_details.cache_write_tokens."""
    details = {"cached_tokens": cached}
    if cache_write is not None:
        details["cache_write_tokens"] = cache_write
    return {"input_tokens": input_tokens, "input_tokens_details": details,
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output_tokens}


def responses_text_part(text, annotations=(), logprobs=()):
    return {"type": "output_text", "text": text, "annotations": list(annotations),
            "logprobs": list(logprobs)}


def responses_refusal_part(refusal):
    return {"type": "refusal", "refusal": refusal}


def responses_message_item(content, item_id="msg_fake", status="completed"):
    """An assistant message; `content` is a string (one output_text part) or a list of
    parts (responses_text_part / responses_refusal_part)."""
    parts = [responses_text_part(content)] if isinstance(content, str) else list(content)
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": parts}


def responses_reasoning_item(summary, encrypted_content="enc-fake", item_id="rs_fake",
                             status="completed"):
    """A reasoning item; `summary` is a string, a list of strings (one summary_text part
    each) or None (no summary, e.g. a carrier only); encrypted_content None leaves it out."""
    texts = [] if summary is None else [summary] if isinstance(summary, str) else list(summary)
    item = {"type": "reasoning", "id": item_id, "status": status,
            "summary": [{"type": "summary_text", "text": text} for text in texts]}
    if encrypted_content is not None:
        item["encrypted_content"] = encrypted_content
    return item


def _responses_suffix(call_id):
    return call_id[5:] if call_id.startswith("call_") else call_id


def responses_function_call_item(call_id, name, args, item_id=None, status="completed",
                                 namespace=None):
    """A function_call; args a dict (sent as a JSON string) or a str sent unchanged."""
    item = {"type": "function_call", "id": item_id or "fc_" + _responses_suffix(call_id),
            "status": status, "call_id": call_id, "name": name,
            "arguments": args if isinstance(args, str) else json.dumps(args)}
    if namespace is not None:
        item["namespace"] = namespace
    return item


def responses_custom_call_item(call_id, name, tool_input, item_id=None, status="completed"):
    """A custom (freeform) tool call: `tool_input` is the raw input string."""
    return {"type": "custom_tool_call", "id": item_id or "ctc_" + _responses_suffix(call_id),
            "status": status, "call_id": call_id, "name": name, "input": tool_input}


def responses_object(output=(), status="completed", use=None, model="fake-model",
                     response_id="resp_fake", incomplete_reason=None, error=None,
                     created_at=1):
    """A whole `response` object. status "incomplete" takes incomplete_reason (default
    max_output_tokens); "failed" takes error {code, message} (a default one if None) and
    has no usage unless `use` is given; the other statuses get responses_usage() by default."""
    if status == "incomplete":
        incomplete = {"reason": incomplete_reason or "max_output_tokens"}
    else:
        incomplete = None
    if status == "failed" and error is None:
        error = {"code": "server_error", "message": "Fake failure."}
    if use is None and status != "failed":
        use = responses_usage()
    return {"id": response_id, "object": "response", "created_at": created_at,
            "status": status, "error": error, "incomplete_details": incomplete,
            "instructions": None, "model": model, "output": list(output),
            "parallel_tool_calls": True, "previous_response_id": None, "reasoning": None,
            "store": False, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
            "tools": [], "truncation": "disabled", "usage": use, "metadata": {}}


def _responses_lead(thought, encrypted_content, text, response_id, status="completed"):
    suffix = response_id[5:] if response_id.startswith("resp_") else response_id
    items = []
    if thought is not None or encrypted_content is not None:
        items.append(responses_reasoning_item(thought, encrypted_content, "rs_" + suffix))
    if text is not None:
        items.append(responses_message_item(text, "msg_" + suffix, status))
    return items


def responses_text(text, thought=None, encrypted_content=None, incomplete=None, use=None,
                   model="fake-model", response_id="resp_fake"):
    """A text answer after an optional reasoning item (summary `thought`, and/or
    encrypted_content); incomplete ("max_output_tokens" / "content_filter") makes the
    response and its message incomplete."""
    status = "incomplete" if incomplete else "completed"
    output = _responses_lead(thought, encrypted_content, text, response_id, status)
    return responses_object(output, status, use, model, response_id, incomplete)


def responses_calls(calls, thought=None, encrypted_content=None, text=None, use=None,
                    model="fake-model", response_id="resp_fake"):
    """Tool calls after optional reasoning and text items."""
    output = _responses_lead(thought, encrypted_content, text, response_id)
    output += [call if isinstance(call, dict) else responses_function_call_item(*call)
               for call in calls]
    return responses_object(output, "completed", use, model, response_id)


def responses_renumber(events, start=0):
    """`events` ((name, payload) pairs) with sequence_number start, start+1, ...: for
    tests that add, drop or move events."""
    return [(name, dict(payload, sequence_number=start + i))
            for i, (name, payload) in enumerate(events)]


def _responses_event(event, at=None, **fields):
    """(event, payload): type and sequence_number (set by responses_renumber) first, then
    the item_id / output_index of `at`, then the fields."""
    payload = {"type": event, "sequence_number": 0}
    payload.update(at or {})
    payload.update(fields)
    return (event, payload)


def _responses_item_events(index, item, pieces):
    """The events of one output item, from output_item.added to output_item.done."""
    kind = item.get("type")
    at = {"item_id": item.get("id"), "output_index": index}

    def event(kind, **fields):
        return _responses_event(kind, at, **fields)
    inner = []
    if kind == "message":
        added = dict(item, status="in_progress", content=[])
        for c, part in enumerate(item.get("content") or ()):
            if part.get("type") == "refusal":
                field, prefix, extra = "refusal", "response.refusal", {}
                empty = {"type": "refusal", "refusal": ""}
            else:
                field, prefix, extra = "text", "response.output_text", {"logprobs": []}
                empty = {"type": part.get("type", "output_text"), "text": "", "annotations": []}
            whole = part.get(field, "")
            inner.append(event("response.content_part.added", content_index=c, part=empty))
            inner += [event(prefix + ".delta", content_index=c, delta=piece, **extra)
                      for piece in split_text(whole, pieces)]
            inner.append(event(prefix + ".done", content_index=c, **dict({field: whole}, **extra)))
            inner.append(event("response.content_part.done", content_index=c, part=part))
    elif kind == "reasoning":
        added = dict(item, status="in_progress", summary=[])
        for s, part in enumerate(item.get("summary") or ()):
            whole = part.get("text", "")
            inner.append(event("response.reasoning_summary_part.added", summary_index=s,
                               part={"type": "summary_text", "text": ""}))
            inner += [event("response.reasoning_summary_text.delta", summary_index=s,
                            delta=piece) for piece in split_text(whole, pieces)]
            inner.append(event("response.reasoning_summary_text.done", summary_index=s,
                               text=whole))
            inner.append(event("response.reasoning_summary_part.done", summary_index=s,
                               part=part))
    elif kind == "function_call":
        added = dict(item, status="in_progress", arguments="")
        inner += [event("response.function_call_arguments.delta", delta=piece)
                  for piece in split_text(item["arguments"], pieces)]
        inner.append(event("response.function_call_arguments.done",
                           arguments=item["arguments"], name=item.get("name")))
    elif kind == "custom_tool_call":
        added = dict(item, status="in_progress", input="")
        inner += [event("response.custom_tool_call_input.delta", delta=piece)
                  for piece in split_text(item["input"], pieces)]
        inner.append(event("response.custom_tool_call_input.done", input=item["input"]))
    else:                       # anything else arrives whole
        added = item
    return ([_responses_event("response.output_item.added", output_index=index, item=added)]
            + inner +
            [_responses_event("response.output_item.done", output_index=index, item=item)])


def responses_events(response, pieces=2, in_progress=True):
    """The (event name, payload) sequence that streams `response` (PROTOCOLS-2 B.6):
    response.created (the response in_progress, no output, no usage), response.in_progress
    (unless in_progress=False), per output item its output_item.added, part / delta / done
    events (texts, summaries, arguments and custom inputs in `pieces` deltas) and
    output_item.done, then the terminal event its status names (response.completed,
    .incomplete or .failed) carrying the whole response; sequence_number 0, 1, 2, ..."""
    head = dict(response, status="in_progress", output=[], usage=None, error=None,
                incomplete_details=None)
    events = [_responses_event("response.created", response=head)]
    if in_progress:
        events.append(_responses_event("response.in_progress", response=head))
    for index, item in enumerate(response.get("output") or ()):
        events += _responses_item_events(index, item, pieces)
    events.append(_responses_event(RESPONSES_TERMINAL[response.get("status", "completed")],
                                   response=response))
    # payloads share no objects, so a test may change one event without touching others
    return [(name, json.loads(json.dumps(payload))) for name, payload in
            responses_renumber(events)]


def _responses_next(events):
    """(next sequence_number, the created response, the items done so far) of a prefix."""
    head = next((p["response"] for n, p in events if p.get("type") == "response.created"), {})
    done = [p["item"] for n, p in events if p.get("type") == "response.output_item.done"]
    return (events[-1][1]["sequence_number"] + 1 if events else 0), head, done


def responses_failed_event(events, code="server_error", message="Fake failure mid-stream."):
    """The response.failed event that ends the stream prefix `events` (e.g. a slice of
    responses_events(...)): the next sequence_number, the created response's id, status
    "failed", response.error {code, message}, the items done so far, no usage."""
    number, head, done = _responses_next(events)
    response = dict(head, status="failed", output=done, usage=None,
                    error={"code": code, "message": message})
    return ("response.failed", {"type": "response.failed", "sequence_number": number,
                                "response": response})


def responses_error_event(events, message="Fake error event.", code=None, param=None):
    """The flat `error` event (openai-python's ResponseErrorEvent) that follows the stream
    prefix `events`; a stream normally ends with response.failed after it."""
    number = _responses_next(events)[0]
    return ("error", {"type": "error", "sequence_number": number, "code": code,
                      "message": message, "param": param})


def responses_stream(events, delay=0.0, close_early=False):
    """An SSE reply of (name, payload) events (`event: X\\ndata: {json}`, no [DONE]) or raw
    strings; close_early drops the connection after them without ending the body."""
    return sse_texts_reply([e if isinstance(e, str) else anthropic_sse(*e) for e in events],
                           delay, close_early)


def responses_object_stream(response, pieces=2, in_progress=True, delay=0.0,
                            close_early=False):
    """`response` streamed; close_early leaves out the terminal event and cuts."""
    events = responses_events(response, pieces, in_progress)
    return responses_stream(events[:-1] if close_early else events, delay, close_early)


def responses_text_stream(text, thought=None, encrypted_content=None, incomplete=None,
                          use=None, pieces=3, delay=0.0, close_early=False,
                          model="fake-model", response_id="resp_fake"):
    return responses_object_stream(
        responses_text(text, thought, encrypted_content, incomplete, use, model, response_id),
        pieces, delay=delay, close_early=close_early)


def responses_call_stream(calls, thought=None, encrypted_content=None, text=None, use=None,
                          pieces=2, delay=0.0, close_early=False, model="fake-model",
                          response_id="resp_fake"):
    return responses_object_stream(
        responses_calls(calls, thought, encrypted_content, text, use, model, response_id),
        pieces, delay=delay, close_early=close_early)


def responses_error_body(status=429, message=None, kind=None, code=None, param=None):
    """OpenAI's error shape {"error": {message, type, param, code}}; type and code default
    from the status (429 -> "requests" / "rate_limit_exceeded")."""
    default_kind, default_code = RESPONSES_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message or "Fake error %d." % status,
                      "type": kind or default_kind, "param": param,
                      "code": code if code is not None else default_code}}


def responses_error(status=429, message=None, kind=None, code=None, param=None,
                    retry_after=None, headers=None):
    """An error reply; retry_after sets the Retry-After header."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    headers.setdefault("x-request-id", "req_fake")
    return json_reply(responses_error_body(status, message, kind, code, param), status, headers)


# == the rule-based model used when no script is queued ====================================

THOUGHT = "FAKE thinks."
HELLO = "FAKE says hello."

Answer = namedtuple("Answer", "thought text calls")
Answer.__doc__ = """What the rule-based model says: thought (str or None), text (str or None)
and calls ([(name, args)])."""


def message_text(message):
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def sample_json(schema):
    """The simplest value a JSON Schema accepts (enough for Gemini CLI's JSON helpers).
    Gemini's upper-case type names (OBJECT, STRING...) are accepted too."""
    kind = schema.get("type")
    kind = next((k for k in kind if str(k).lower() != "null"), "null") \
        if isinstance(kind, list) else kind
    kind = kind.lower() if isinstance(kind, str) else kind
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        return {name: sample_json(sub) for name, sub in schema.get("properties", {}).items()}
    return {"string": "fake", "integer": 1, "number": 1.0, "boolean": True,
            "array": []}.get(kind)


def brain(last_user_text, tool_results=(), schema=None, thinking=False):
    """The rule-based model, whatever the dialect.

    last_user_text: the text of the last user message; tool_results: (tool name, result
    text) pairs when the conversation ends with tool results; schema: the JSON Schema the
    answer must match in JSON mode (True: JSON mode without a schema), else None; thinking:
    whether the request asks for thoughts. In that order of precedence the answer is JSON,
    a summary of the tool results, the calls of the `CALL name {json}` directives, or
    "FAKE says hello."; a thought "FAKE thinks." leads when thinking is asked for."""
    thought = THOUGHT if thinking else None
    if schema is True:
        return Answer(thought, json.dumps({"answer": HELLO}), [])
    if schema is not None:
        return Answer(thought, json.dumps(sample_json(schema)), [])
    if tool_results:
        return Answer(thought, "FAKE got tool result(s): " + "; ".join(
            "%s -> %s" % (name, result) for name, result in tool_results), [])
    calls = [(name, json.loads(args))
             for name, args in CALL_DIRECTIVE.findall(last_user_text or "")]
    if calls:
        return Answer(thought, None, calls)
    return Answer(thought, HELLO, [])


def openai_view(request):
    """(last user text, tool results, schema, thinking) of a Chat Completions request."""
    messages = request.get("messages", [])
    response_format = request.get("response_format") or {}
    schema = None
    if response_format.get("type") == "json_schema":
        schema = response_format["json_schema"]["schema"]
    elif response_format.get("type") == "json_object":
        schema = True
    tail = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        tail.append(message)
    results = []
    if tail:
        names = {}
        for message in messages:
            for call in message.get("tool_calls") or ():
                names[call["id"]] = call["function"]["name"]
        results = [(names.get(m.get("tool_call_id"), "?"), message_text(m))
                   for m in reversed(tail)]
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    return message_text(last_user), results, schema, bool(request.get("reasoning_effort"))


def agent_reply(request):
    """What the rule-based model answers to a Chat Completions request: (text, calls)."""
    answer = brain(*openai_view(request))
    return answer.text, answer.calls


def gemini_content_text(content):
    """The text of a Gemini Content's non-thought parts."""
    return "".join(p.get("text", "") for p in (content or {}).get("parts") or ()
                   if isinstance(p, dict) and not p.get("thought"))


def gemini_view(request):
    """(last user text, tool results, schema, thinking) of a GenerateContentRequest."""
    contents = request.get("contents") or []
    users = [c for c in contents if c.get("role") in (None, "user")]
    last_user = users[-1] if users else {}
    results = []
    if contents and contents[-1] is last_user:
        for part in last_user.get("parts") or ():
            answer = part.get("functionResponse") if isinstance(part, dict) else None
            if answer is None:
                continue
            response = answer.get("response")
            output = response["output"] if isinstance(response, dict) and "output" in response \
                else response
            results.append((answer.get("name", "?"),
                            output if isinstance(output, str) else json.dumps(output)))
    config = pick(request, "generationConfig") or {}
    schema = None
    if pick(config, "responseMimeType") == "application/json":
        schema = pick(config, "responseJsonSchema") or pick(config, "responseSchema") or True
    thinking = pick(pick(config, "thinkingConfig") or {}, "includeThoughts") is True
    return gemini_content_text(last_user), results, schema, thinking


def pick(fields, camel):
    """A field of a Gemini request by its camelCase name or its snake_case one: the API
    takes both, and the Python SDK sends some fields in snake_case."""
    snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)
    return fields.get(camel, fields.get(snake))


def anthropic_result_text(content):
    """The text of a tool_result block's content (a string or a list of blocks)."""
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content
                       if isinstance(b, dict) and b.get("type") == "text")
    return content or ""


def anthropic_view(request):
    """(last user text, tool results, schema, thinking) of a Messages request."""
    messages = request.get("messages") or []
    users = [m for m in messages if m.get("role") == "user"]
    last_user = users[-1] if users else {}
    content = last_user.get("content")
    blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
    text = content if isinstance(content, str) else "".join(
        b.get("text", "") for b in blocks if b.get("type") == "text")
    results = []
    if messages and messages[-1] is last_user and blocks and blocks[0].get("type") == "tool_result":
        names = {}
        for message in messages:
            if message.get("role") == "assistant" and isinstance(message.get("content"), list):
                for block in message["content"]:
                    if isinstance(block, dict) and block.get("type") == "tool_use":
                        names[block.get("id")] = block.get("name")
        results = [(names.get(b.get("tool_use_id"), "?"), anthropic_result_text(b.get("content")))
                   for b in blocks if b.get("type") == "tool_result"]
    output_format = (request.get("output_config") or {}).get("format") or {}
    schema = (output_format.get("schema") or True) \
        if output_format.get("type") == "json_schema" else None
    thinking = (request.get("thinking") or {}).get("type") in ("enabled", "adaptive")
    return text, results, schema, thinking


def responses_item_type(item):
    """The type of a Responses input item; an "easy" message has a role and no type."""
    return item.get("type") or ("message" if "role" in item else None)


def responses_output_text(output):
    """The text of a function_call_output / custom_tool_call_output `output`: a string, or
    a list of parts (their text)."""
    if isinstance(output, list):
        return "".join(p.get("text", "") for p in output if isinstance(p, dict))
    if output is None or isinstance(output, str):
        return output or ""
    return json.dumps(output)


def responses_view(request):
    """(last user text, tool results, schema, thinking) of a Responses request.

    `input` is a string (one user message) or a list of items: message items (with or
    without "type"; content a string or input_text parts), function_call /
    custom_tool_call items and their *_output items (output a string or a list of parts).
    Tool results are those of the *_output items that end the input, named after their
    calls. text.format json_schema gives its (flat) schema, json_object True; a
    `reasoning` object asks for thoughts unless its effort is "none"."""
    items = request.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    items = [item for item in items or () if isinstance(item, dict)] \
        if isinstance(items, list) else []
    users = [i for i in items if responses_item_type(i) == "message" and i.get("role") == "user"]
    last_user = users[-1] if users else {}
    tail = []
    for item in reversed(items):
        if responses_item_type(item) not in ("function_call_output", "custom_tool_call_output"):
            break
        tail.append(item)
    results = []
    if tail:
        names = {}
        for item in items:
            if responses_item_type(item) in ("function_call", "custom_tool_call"):
                names.setdefault(item.get("call_id"), item.get("name"))
        results = [(names.get(item.get("call_id")) or "?",
                    responses_output_text(item.get("output"))) for item in reversed(tail)]
    text_config = request.get("text") if isinstance(request.get("text"), dict) else {}
    text_format = text_config.get("format") if isinstance(text_config.get("format"), dict) else {}
    schema = None
    if text_format.get("type") == "json_schema":
        schema = text_format.get("schema") or True
    elif text_format.get("type") == "json_object":
        schema = True
    reasoning = request.get("reasoning")
    thinking = isinstance(reasoning, dict) and reasoning.get("effort") != "none"
    return message_text(last_user), results, schema, thinking


def responses_tool_kinds(request):
    """name -> (item type, namespace, name on the item) for the tools of a Responses request
    that are not plain functions: custom tools (custom_tool_call), and the children of
    namespaces, under their bare name and qualified as C.5 says (`ns__child`, or
    `mcp__server__child` when the namespace ends with "__"). First declaration wins."""
    kinds = {}
    for tool in request.get("tools") or ():
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "custom" and tool.get("name"):
            kinds.setdefault(tool["name"], ("custom_tool_call", None, tool["name"]))
        elif tool.get("type") == "namespace" and tool.get("name"):
            space = tool["name"]
            for child in tool.get("tools") or ():
                if not isinstance(child, dict) or not child.get("name"):
                    continue
                kind = "custom_tool_call" if child.get("type") == "custom" else "function_call"
                entry = (kind, space, child["name"])
                kinds.setdefault(space + ("" if space.endswith("__") else "__") + child["name"],
                                 entry)
                kinds.setdefault(child["name"], entry)
    return kinds


# == deterministic counts and embeddings ===================================================

def _text_chars(value):
    if isinstance(value, dict):
        return sum(len(item) if key in ("text", "content", "system") and isinstance(item, str)
                   else _text_chars(item) for key, item in value.items())
    if isinstance(value, list):
        return sum(_text_chars(item) for item in value)
    return 0


def fake_token_count(request):
    """Characters of all the text in a request (string values of "text", "content" and
    "system" keys, at any depth) // 4: what countTokens / count_tokens answer."""
    return _text_chars(request) // 4


def responses_token_count(request):
    """fake_token_count of a Responses request, counting an `input` or `instructions`
    given as a string too: what .../responses/input_tokens answers."""
    extra = sum(len(request.get(key)) for key in ("input", "instructions")
                if isinstance(request.get(key), str))
    return (_text_chars(request) + extra) // 4


def fake_embedding(text, dims=8):
    """A fixed vector of `dims` floats in [-1, 1] derived from a hash of `text`."""
    values, block = [], 0
    while len(values) < dims:
        digest = hashlib.sha256(("%d:%s" % (block, text)).encode("utf-8")).digest()
        values += [round(byte / 127.5 - 1, 6) for byte in digest]
        block += 1
    return values[:dims]


def gemini_model_info(name):
    return {"name": "models/" + name, "baseModelId": name, "version": "fake",
            "displayName": "Fake " + name, "description": "A fake Gemini model.",
            "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "streamGenerateContent",
                                           "countTokens", "embedContent", "batchEmbedContents"],
            "temperature": 1, "maxTemperature": 2, "topP": 0.95, "topK": 64, "thinking": True}


def anthropic_model_info(name):
    return {"type": "model", "id": name, "display_name": "Fake " + name,
            "created_at": "2025-01-01T00:00:00Z"}


def request_key(headers):
    """The API key a request carries, wherever its dialect puts it."""
    auth = headers.get("authorization", "")
    return headers.get("x-goog-api-key") or headers.get("x-api-key") or \
        (auth[7:] if auth.lower().startswith("bearer ") else "")


# == the servers ===========================================================================

class FakeStopped(Exception):
    """Raised by FakeHandler.pause when the fake stops: the reply gives up."""


class FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm on, the second waits
    # for a delayed ACK (40-200 ms), which is what real servers avoid too.
    disable_nagle_algorithm = True
    record = None           # the request being answered, as recorded

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        with self.server.fake.lock:
            self.server.fake.connections += 1

    def do_GET(self):
        self.server.fake.handle(self, None)

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        self.server.fake.handle(self, self.rfile.read(length))

    @property
    def query(self):
        return (self.record or {}).get("query") or {}

    def pause(self, seconds=None, until=None):
        """Wait, as part of a reply's script: `seconds`, or until the threading.Event `until`
        is set (at most `seconds`, when given). Raises FakeStopped as soon as the fake
        stops, so a long scripted stall never outlives its test."""
        stopping = self.server.fake.stopping
        end = None if seconds is None else time.monotonic() + seconds
        while True:
            if until is not None and until.is_set():
                return
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return
            if until is not None:    # look at both events now and then
                left = 0.01 if left is None else min(left, 0.01)
            if stopping.wait(left):
                raise FakeStopped()

    # helpers for replies
    def send_body(self, status, body, content_type, headers=None):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        gate = getattr(self, "body_gate", None)
        if gate is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:len(body) // 2])
        gate.entered.set()
        gate.opened.wait(gate.limit)
        self.wfile.write(body[len(body) // 2:])

    def start_stream(self, content_type="text/event-stream"):
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data):
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            return True
        except OSError:
            with self.server.fake.lock:
                self.server.fake.aborted_streams += 1
            self.close_connection = True
            return False

    def end_stream(self, data=b""):
        """End the chunked body, after a last chunk of `data` if given, in one write: a
        client that has read up to a stream's last event finds the body's end right
        behind it, not whenever this thread next gets to run. (The proxy gives that end
        a moment to arrive before it decides the connection cannot be reused.)"""
        try:
            self.wfile.write((b"%x\r\n%s\r\n" % (len(data), data) if data else b"") +
                             b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            if data:
                with self.server.fake.lock:
                    self.server.fake.aborted_streams += 1
            self.close_connection = True


class _FakeHTTPServer(ThreadingHTTPServer):
    # The standard library's 5 would make a burst of connections (a test holding hundreds
    # of streams) wait for the kernel's SYN retries.
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        # A proxy that hung up while a reply was being written (a test that abandons its
        # request, then opens the gate) is no fault of the fake's; its traceback, printed
        # from a thread after the test has ended, would only be noise in CI's output.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeUpstream:
    """What the fakes share. Start with Fake...().start(); stop() when done.

    requests: records {"method", "path" (without the query), "query" (dict), "headers"
    (lower-cased names), "raw_headers" ((name, value) pairs as sent, repeats kept), "key"
    (the API key sent, in any dialect's header), "json" (None if
    the body is not JSON), "body" (bytes; None for GET)}.
    script: replies queued with queue(), each POST takes the next one. rules: key -> reply
    for every POST sent with that key ("*": with any key), ahead of the script.
    connections: accepted connections; aborted_streams: streams the client dropped;
    busy / most_busy: POSTs being answered now / at most at once. stopping: set by stop(),
    it ends every reply's pause."""

    title = "fake"
    base_path = ""
    record_gets = True

    def __init__(self, port=0):
        self.lock = threading.Lock()
        self.requests = []
        self.script = []
        self.rules = {}
        self.busy = 0
        self.most_busy = 0
        self.connections = 0
        self.aborted_streams = 0
        self.stopping = threading.Event()
        self.models = ["fake-model"]
        self.httpd = _FakeHTTPServer(("127.0.0.1", port), FakeHandler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self
        self.port = self.httpd.server_address[1]
        self.base_url = "http://127.0.0.1:%d%s" % (self.port, self.base_path)
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def queue(self, *replies):
        with self.lock:
            self.script.extend(replies)

    @property
    def last(self):
        return self.requests[-1]["json"]

    def handle(self, handler, body):
        path, _, query = handler.path.partition("?")
        try:
            request = json.loads(body) if body is not None else None
        except ValueError:
            request = None
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = {"method": handler.command, "path": path,
                  "query": dict(parse_qsl(query, keep_blank_values=True)),
                  "headers": headers, "raw_headers": list(handler.headers.items()),
                  "key": request_key(headers),
                  "json": request, "body": body}
        handler.record = record
        if body is None:
            if self.record_gets:
                with self.lock:
                    self.requests.append(record)
            return self.serve_get(handler, record)
        with self.lock:
            self.requests.append(record)
            number = len(self.requests)
            reply = self.rules.get(record["key"]) or self.rules.get("*")
            if reply is None and self.script:
                reply = self.script.pop(0)
            self.busy += 1
            self.most_busy = max(self.most_busy, self.busy)
        try:
            if reply is None:
                reply = self.automatic(record, number)
            reply(handler, request)
        except FakeStopped:
            handler.close_connection = True
        finally:
            with self.lock:
                self.busy -= 1

    def keys_used(self):
        return [r["key"] for r in self.requests if r["method"] == "POST"]

    def serve_get(self, handler, record):
        handler.send_body(404, b'{"error":{"message":"not found"}}', "application/json")

    def automatic(self, record, number):
        """The reply of the rule-based model to the `number`th recorded request."""
        raise NotImplementedError


class FakeOpenAI(FakeUpstream):
    """Start with FakeOpenAI().start(); base_url is its /v1 root; stop() when done."""

    title = "OpenAI-compatible"
    base_path = "/v1"
    record_gets = False

    def serve_get(self, handler, record):
        if handler.path.endswith("/models"):
            handler.send_body(200, json.dumps({"object": "list", "data": [
                {"id": "fake-model", "object": "model", "created": 1, "owned_by": "fake"}]})
                .encode(), "application/json")
        else:
            handler.send_body(404, b'{"error":{"message":"not found"}}', "application/json")

    def automatic(self, record, number):
        if record["path"].endswith("/embeddings"):
            return json_reply(self.embeddings(record["json"] or {}))
        return self.automatic_reply(record["json"] or {})

    @staticmethod
    def embeddings(request):
        """/v1/embeddings: fake_embedding per input, as floats or base64 float32."""
        texts = request.get("input")
        texts = [texts] if isinstance(texts, str) else texts or []
        data = []
        for i, text in enumerate(texts):
            vector = fake_embedding(text, request.get("dimensions") or 8)
            if request.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack("<%df" % len(vector), *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(len(t) for t in texts) // 4
        return {"object": "list", "model": request.get("model"), "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def automatic_reply(self, request):
        answer = brain(*openai_view(request))
        text, calls, reasoning = answer.text, answer.calls, answer.thought
        if request.get("stream"):
            if calls:
                return tool_stream([("call_%d_%s" % (len(self.requests), i), name, args)
                                    for i, (name, args) in enumerate(calls)],
                                   reasoning=reasoning)
            return text_stream(text, reasoning=reasoning)
        if calls:
            return json_reply(completion(None, [
                tool_call("call_%d_%s" % (len(self.requests), i), name, args)
                for i, (name, args) in enumerate(calls)], finish="tool_calls",
                reasoning=reasoning))
        return json_reply(completion(text, reasoning=reasoning))


GEMINI_METHOD = re.compile(r"/v1(?:beta|alpha)?/models/([^/:]+):(\w+)\Z")
GEMINI_MODELS = re.compile(r"/v1(?:beta|alpha)?/models(?:/([^/:]+))?\Z")


class FakeGemini(FakeUpstream):
    """A fake Gemini API; base_url is the root (clients add /v1beta/...).

    Automatic replies: generateContent and streamGenerateContent (SSE with alt=sse, else a
    JSON array) from the rule-based model, with call ids fc_<n>_<i> and thoughtSignature
    "sig-fc-<n>" on the first call of the nth request; countTokens -> fake_token_count;
    embedContent / batchEmbedContents -> fake_embedding (outputDimensionality, default 8);
    GET /v1beta/models[/{m}] from `models`."""

    title = "Gemini API"

    def serve_get(self, handler, record):
        match = GEMINI_MODELS.match(record["path"])
        if match and match.group(1) is None:
            payload = {"models": [gemini_model_info(name) for name in self.models]}
        elif match and unquote(match.group(1)) in self.models:
            payload = gemini_model_info(unquote(match.group(1)))
        else:
            return gemini_error(404, "Not found: %s" % record["path"])(handler, None)
        json_reply(payload)(handler, None)

    def answer_parts(self, answer, number):
        parts = _gemini_lead_parts(answer.thought, answer.text)
        return parts + _gemini_call_parts(self.answer_calls(answer, number))

    @staticmethod
    def answer_calls(answer, number):
        return [("fc_%d_%d" % (number, i), name, args) + (("sig-fc-%d" % number,) if not i else ())
                for i, (name, args) in enumerate(answer.calls)]

    def automatic(self, record, number):
        request = record["json"] if isinstance(record["json"], dict) else {}
        match = GEMINI_METHOD.match(record["path"])
        method = match.group(2) if match else None
        if method in ("generateContent", "streamGenerateContent"):
            model = unquote(match.group(1))
            answer = brain(*gemini_view(request))
            use = gemini_usage(thoughts=3 if answer.thought else 0)
            if method == "generateContent":
                return json_reply(gemini_response(self.answer_parts(answer, number), use=use,
                                                  model=model))
            if answer.calls:
                return gemini_call_stream(self.answer_calls(answer, number), answer.thought,
                                          answer.text, use=use, model=model)
            return gemini_text_stream(answer.text, thought=answer.thought, use=use, model=model)
        if method == "countTokens":
            total = fake_token_count(request)
            return json_reply({"totalTokens": total, "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": total}]})
        if method == "embedContent":
            return json_reply({"embedding": self.embed(request)})
        if method == "batchEmbedContents":
            return json_reply({"embeddings": [self.embed(one if isinstance(one, dict) else {})
                                              for one in request.get("requests") or ()]})
        return gemini_error(404, "Not found: %s" % record["path"])

    @staticmethod
    def embed(request):
        return {"values": fake_embedding(gemini_content_text(request.get("content")),
                                         request.get("outputDimensionality") or 8)}


class FakeAnthropic(FakeUpstream):
    """A fake Anthropic Messages API; base_url is the root (clients add /v1/messages).

    Automatic replies: POST /v1/messages from the rule-based model (streamed with
    "stream": true), with tool_use ids toolu_<n>_<i> and thinking signature
    "sig-anthropic-<n>" for the nth request; /v1/messages/count_tokens ->
    fake_token_count; GET /v1/models[/{id}] from `models`."""

    title = "Anthropic Messages"

    def serve_get(self, handler, record):
        path = record["path"]
        if path == "/v1/models":
            data = [anthropic_model_info(name) for name in self.models]
            payload = {"data": data, "has_more": False,
                       "first_id": data[0]["id"] if data else None,
                       "last_id": data[-1]["id"] if data else None}
        elif path.startswith("/v1/models/") and unquote(path[len("/v1/models/"):]) in self.models:
            payload = anthropic_model_info(unquote(path[len("/v1/models/"):]))
        else:
            return anthropic_error(404, message="Not found: %s" % path)(handler, None)
        json_reply(payload)(handler, None)

    @staticmethod
    def answer_message(answer, number, model="fake-model"):
        content = _anthropic_lead(answer.thought, "sig-anthropic-%d" % number, answer.text)
        content += [anthropic_tool_block("toolu_%d_%d" % (number, i), name, args)
                    for i, (name, args) in enumerate(answer.calls)]
        return anthropic_message(content, "tool_use" if answer.calls else "end_turn",
                                 model=model, message_id="msg_fake_%d" % number)

    def automatic(self, record, number):
        request = record["json"] if isinstance(record["json"], dict) else {}
        if record["path"] == "/v1/messages":
            message = self.answer_message(brain(*anthropic_view(request)), number,
                                          request.get("model") or "fake-model")
            return anthropic_message_stream(message) if request.get("stream") \
                else json_reply(message)
        if record["path"] == "/v1/messages/count_tokens":
            return json_reply({"input_tokens": fake_token_count(request)})
        return anthropic_error(404, message="Not found: %s" % record["path"])


class FakeResponses(FakeOpenAI):
    """A fake OpenAI Responses API; base_url is its /v1 root (clients add /responses).

    Automatic replies: POST .../responses from the rule-based model, streamed (SSE events,
    PROTOCOLS-2 B.6) when the request has "stream": true, else one `response` object. For
    the nth request: response id resp_fake_<n>; a reasoning item rs_fake_<n> with summary
    "FAKE thinks." and encrypted_content "enc-fake-<n>" when `reasoning` asks for it; a
    message msg_fake_<n>; calls with call_ids call_<n>_<i> as function_call items fc_<n>_<i>
    (JSON-string arguments), or custom_tool_call items ctc_<n>_<i> for the request's custom
    tools (input: the directive's "input" string, else its JSON), with `namespace` for a
    namespace's children (called bare or as ns__child). The model name is echoed.
    .../responses/input_tokens -> responses_token_count; /v1/embeddings and GET /v1/models
    as FakeOpenAI; any other POST (Chat Completions too) -> 404 in OpenAI's error shape."""

    title = "OpenAI Responses"

    @staticmethod
    def answer_response(answer, number, request=None):
        """The `response` object of the rule-based model's `answer` to the nth request."""
        request = request or {}
        tools = responses_tool_kinds(request)
        output = []
        if answer.thought is not None:
            output.append(responses_reasoning_item(answer.thought, "enc-fake-%d" % number,
                                                   "rs_fake_%d" % number))
        if answer.text is not None:
            output.append(responses_message_item(answer.text, "msg_fake_%d" % number))
        for i, (name, args) in enumerate(answer.calls):
            call_id = "call_%d_%d" % (number, i)
            kind, space, local = tools.get(name, ("function_call", None, name))
            if kind == "custom_tool_call":
                raw = args.get("input") if isinstance(args, dict) else None
                output.append(responses_custom_call_item(
                    call_id, local, raw if isinstance(raw, str) else json.dumps(args),
                    "ctc_%d_%d" % (number, i)))
            else:
                output.append(responses_function_call_item(
                    call_id, local, args, "fc_%d_%d" % (number, i), namespace=space))
        use = responses_usage(output_tokens=10 if answer.thought else 7,
                              reasoning=3 if answer.thought else 0)
        model = request.get("model") if isinstance(request.get("model"), str) else "fake-model"
        return responses_object(output, use=use, model=model,
                                response_id="resp_fake_%d" % number)

    def automatic(self, record, number):
        request = record["json"] if isinstance(record["json"], dict) else {}
        path = record["path"]
        if path.endswith("/responses"):
            response = self.answer_response(brain(*responses_view(request)), number, request)
            if request.get("stream"):
                return responses_object_stream(response)
            return json_reply(response)
        if path.endswith("/responses/input_tokens"):
            return json_reply({"object": "response.input_tokens",
                               "input_tokens": responses_token_count(request)})
        if path.endswith("/embeddings"):
            return json_reply(self.embeddings(request))
        return responses_error(404, "Invalid URL (POST %s)" % path, code="unknown_url")


FAKES = {"openai": FakeOpenAI, "gemini": FakeGemini, "anthropic": FakeAnthropic,
         "openai-responses": FakeResponses}


if __name__ == "__main__":
    kind = sys.argv[2] if len(sys.argv) > 2 else "openai"
    fake = FAKES[kind](int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print("fake %s upstream at %s" % (fake.title, fake.base_url), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
