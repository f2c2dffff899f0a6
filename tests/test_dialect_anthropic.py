"""Anthropic Messages: requests and replies both ways, streams, errors (pure functions)."""

import json

import pytest

import gemini_proxy as gp
from gemini_proxy import (CONTENT_FILTER, LENGTH, MALFORMED_TOOL_CALL, STOP, TOOL_CALLS,
                          Chat, Finish, Message, Part, Reply, Choice, Thinking, Tool, Usage)


def request(**fields):
    return dict({"model": "claude-x", "max_tokens": 1000,
                 "messages": [{"role": "user", "content": "Hi"}]}, **fields)


def decode(payload, **kw):
    return gp.decode_anthropic_request(payload, **kw)


def encode(chat, **options):
    return gp.encode_anthropic_request(chat, "claude-up", dict(gp.UPSTREAM_DEFAULTS, **options))


def sse(*events):
    return [(e["type"], json.dumps(e)) for e in events]


def parse_events(data):
    out = []
    for block in data.decode("utf-8").split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        payload = json.loads(data_line[6:])
        assert payload["type"] == name_line[7:]
        out.append(payload)
    return out


# -- client requests -> neutral -----------------------------------------------------------

def test_system_forms_and_system_role_inside_messages():
    chat = decode(request(system=[{"type": "text", "text": "A", "cache_control":
                                   {"type": "ephemeral"}}, {"type": "text", "text": "B"}],
                          messages=[{"role": "system", "content": "C"},
                                    {"role": "user", "content": "Hi"}]))
    assert [p.text for p in chat.system] == ["A", "B", "C"]
    assert chat.system[0].extra == {"cache_control": {"type": "ephemeral"}}
    assert [m.role for m in chat.messages] == ["user"]
    assert [p.text for p in decode(request(system="plain")).system] == ["plain"]


def test_content_blocks():
    chat = decode(request(messages=[
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "QUJD"}},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": "UERG"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": "doc text"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "SIG"},
            {"type": "redacted_thinking", "data": "OPAQUE"},
            {"type": "text", "text": "calling"},
            {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"p": 1}},
            {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "R"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "SU1H"}}], "is_error": True},
            {"type": "text", "text": "next"}]}]))
    user, assistant, result_turn = chat.messages
    assert [(p.type, p.mime or p.text) for p in user.parts] == [
        ("text", "look"), ("media", "image/png"), ("media", "https://x/y.png" and ""),
        ("media", "application/pdf"), ("text", "doc text")]
    assert user.parts[2].url == "https://x/y.png"
    assert [(p.type, p.text, p.signature, p.origin) for p in assistant.parts[:2]] == [
        ("thinking", "hmm", "SIG", "anthropic"), ("thinking", "", "", "anthropic")]
    assert assistant.parts[1].extra == {"redacted": "OPAQUE"}
    assert [p.type for p in assistant.parts[2:]] == ["text", "tool_call"]
    result = result_turn.parts[0]
    assert (result.type, result.id, result.name, result.is_error) == \
        ("tool_result", "toolu_1", "read", True)
    assert [(p.type, p.text or p.data) for p in result.content] == [("text", "R"),
                                                                   ("media", "SU1H")]


def test_encoded_tool_ids_come_back_as_the_original():
    encoded = gp.anthropic_tool_id("functions.read_file:0")
    assert gp.ANTHROPIC_TOOL_ID.match(encoded) and encoded != "functions.read_file:0"
    assert gp.anthropic_tool_id("toolu_01AbC-d") == "toolu_01AbC-d"
    chat = decode(request(messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": encoded, "name": "f",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": encoded,
                                      "content": "ok"}]}]))
    assert chat.messages[1].parts[0].id == chat.messages[2].parts[0].id == \
        "functions.read_file:0"


def test_tools_choice_thinking_and_output_config():
    chat = decode(request(
        tools=[{"name": "f", "description": "d", "input_schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "properties": {"a": {"type": "string"}}, "additionalProperties": False},
            "cache_control": {"type": "ephemeral"}},
               {"type": "web_search_20250305", "name": "web_search"}],
        tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        thinking={"type": "adaptive"}, output_config={"effort": "low", "format": {
            "type": "json_schema", "schema": {"type": "object"}}},
        temperature=0.5, top_k=5, stop_sequences=["X"], metadata={"user_id": "u1"},
        context_management={"edits": []}))
    assert [t.name for t in chat.tools] == ["f"]
    assert chat.tools[0].schema["additionalProperties"] is False
    assert chat.extra["anthropic_tools"] == [{"type": "web_search_20250305",
                                              "name": "web_search"}]
    assert (chat.tool_choice, chat.allowed_tools, chat.parallel_tool_calls) == \
        ("required", ["f"], False)
    assert chat.thinking == Thinking(effort="low", include_thoughts=True)
    assert chat.response_format.schema == {"type": "object"}
    assert (chat.temperature, chat.top_k, chat.stop, chat.user) == (0.5, 5, ["X"], "")
    assert decode(request(thinking={"type": "enabled", "budget_tokens": 2048,
                                    "display": "omitted"})).thinking == \
        Thinking(budget=2048, include_thoughts=False)
    assert decode(request(thinking={"type": "disabled"})).thinking.budget == 0


@pytest.mark.parametrize("payload, says", [
    (request(bogus=1), "bogus: Extra inputs are not permitted"),
    ({"model": "m", "messages": []}, "max_tokens"),
    (request(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    (request(messages=[{"role": "user", "content": [{"type": "hologram"}]}]),
     "unknown content block type"),
    (request(tool_choice={"type": "sometimes"}), "tool_choice.type"),
    (request(thinking={"type": "enabled"}), "thinking.budget_tokens"),
])
def test_bad_requests_name_the_field(payload, says):
    with pytest.raises(gp.ClientError) as err:
        decode(payload)
    assert says in err.value.message


def test_count_requests_need_no_max_tokens():
    chat = decode({"model": "m", "messages": [{"role": "user", "content": "x"}]},
                  counting=True)
    assert chat.max_tokens is None and chat.messages[0].parts[0].text == "x"


# -- neutral -> upstream requests ------------------------------------------------------------

def test_upstream_request_order_ids_and_merging():
    chat = Chat(model="m", system=[Part(gp.TEXT, text="sys")], messages=[
        Message("user", [Part(gp.TEXT, text="a")]), Message("user", [Part(gp.TEXT, text="b")]),
        Message("assistant", [Part(gp.THINKING, text="t", origin="openai"),
                              Part(gp.TEXT, text=""),
                              Part(gp.TOOL_CALL, id="functions.f:0", name="f", args={"x": 1}),
                              Part(gp.TOOL_CALL, id="call_2", name="g", args={})]),
        Message("user", [Part(gp.TEXT, text="also"),
                         Part(gp.TOOL_RESULT, id="call_2", name="g",
                              content=[Part(gp.TEXT, text="G")]),
                         Part(gp.TOOL_RESULT, id="functions.f:0", name="f", is_error=True,
                              content=[Part(gp.TEXT, text="bad"),
                                       Part(gp.MEDIA, mime="image/png", data="SU1H")])])],
        stop=["END"], user="u")
    sent = encode(chat)
    assert sent["system"] == "sys" and sent["max_tokens"] == 8192
    assert sent["messages"][0] == {"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    assistant = sent["messages"][1]["content"]
    assert [b["type"] for b in assistant] == ["tool_use", "tool_use"]   # foreign thinking out
    assert assistant[0]["id"] == gp.anthropic_tool_id("functions.f:0")
    results = sent["messages"][2]["content"]
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]
    assert results[0] == {"type": "tool_result", "tool_use_id": "call_2", "content": "G"}
    assert results[1]["is_error"] is True and results[1]["content"][1]["type"] == "image"
    assert sent["stop_sequences"] == ["END"] and sent["metadata"] == {"user_id": "u"}


def test_upstream_thinking_rules():
    signed = Message("assistant", [Part(gp.THINKING, text="t", signature="S",
                                        origin="anthropic"),
                                   Part(gp.TOOL_CALL, id="t1", name="f", args={})])
    unsigned = Message("assistant", [Part(gp.TOOL_CALL, id="t1", name="f", args={})])
    answer = Message("user", [Part(gp.TOOL_RESULT, id="t1", name="f",
                                   content=[Part(gp.TEXT, text="r")])])
    base = dict(model="m", tools=[Tool("f")], tool_choice="required", temperature=0.2,
                top_k=3, max_tokens=4000, thinking=Thinking(budget=3000))
    sent = encode(Chat(messages=[Message("user", [Part(gp.TEXT, text="q")]), signed, answer],
                       **base))
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 3000}
    assert sent["messages"][1]["content"][0] == {"type": "thinking", "thinking": "t",
                                                 "signature": "S"}
    assert "temperature" not in sent and "top_k" not in sent
    assert sent["tool_choice"] == {"type": "auto"}      # forced choice is refused with thinking
    # a tool-use turn without its signed thinking: thinking off rather than a 400
    sent = encode(Chat(messages=[Message("user", [Part(gp.TEXT, text="q")]), unsigned, answer],
                       **base))
    assert "thinking" not in sent and sent["temperature"] == 0.2
    assert sent["tool_choice"] == {"type": "any"}
    # budgets fit under max_tokens; no room means no thinking
    small = dict(base, max_tokens=2000, thinking=Thinking(effort="high"))
    assert encode(Chat(messages=[Message("user", [Part(gp.TEXT, text="q")])], **small))[
        "thinking"]["budget_tokens"] == 1999
    tiny = dict(base, max_tokens=900)
    assert "thinking" not in encode(Chat(messages=[Message("user", [Part(gp.TEXT, text="q")])],
                                         **tiny))
    # no max_tokens of the client's: the default's half is the answer's (Gemini CLI asks
    # for 8,192 tokens of thinking, and a budget of 8,191 left its answer one token)
    unlimited = dict(base, max_tokens=None, thinking=Thinking(budget=8192))
    sent = encode(Chat(messages=[Message("user", [Part(gp.TEXT, text="q")])], **unlimited))
    assert (sent["max_tokens"], sent["thinking"]["budget_tokens"]) == (8192, 4096)
    # nor one a cap made smaller than the client's own
    capped = encode(Chat(messages=[Message("user", [Part(gp.TEXT, text="q")])],
                         **dict(unlimited, max_tokens=65536, thinking=Thinking(effort="high"))),
                    max_output_tokens=8192)
    assert (capped["max_tokens"], capped["thinking"]["budget_tokens"]) == (8192, 4096)


def test_upstream_json_mode_and_tool_choice_variants():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat = Chat(model="m", messages=[Message("user", [Part(gp.TEXT, text="q")])],
                response_format=gp.ResponseFormat(schema), tools=[Tool("f"), Tool("g")],
                tool_choice="required", allowed_tools=["g"], parallel_tool_calls=False)
    sent = encode(chat)
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert sent["tool_choice"] == {"type": "tool", "name": "g",
                                   "disable_parallel_tool_use": True}
    sent = encode(chat, response_format="none")
    assert "output_config" not in sent and json.dumps(schema) in sent["system"]
    chat.tool_choice = "none"
    assert "tools" not in encode(chat)
    with pytest.raises(gp.ClientError):
        encode(Chat(model="m", n=2, messages=[Message("user", [Part(gp.TEXT, text="q")])]))


def test_upstream_keeps_cache_control_and_clamps_temperature():
    chat = Chat(model="m", system=[Part(gp.TEXT, text="big", extra={
        "cache_control": {"type": "ephemeral"}})], temperature=1.7,
        messages=[Message("user", [Part(gp.TEXT, text="q")])])
    sent = encode(chat, default_max_tokens=100, extra_body={"service_tier": "auto"})
    assert sent["system"] == [{"type": "text", "text": "big",
                               "cache_control": {"type": "ephemeral"}}]
    assert sent["temperature"] == 1.0 and sent["max_tokens"] == 100
    assert sent["service_tier"] == "auto"


# -- upstream replies -> neutral ------------------------------------------------------------

def test_decode_response():
    reply = gp.decode_anthropic_response({
        "id": "msg_1", "model": "claude-x", "stop_reason": "tool_use", "content": [
            {"type": "thinking", "thinking": "t", "signature": "S"},
            {"type": "redacted_thinking", "data": "R"},
            {"type": "text", "text": "hi"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}],
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 7}})
    parts = reply.choices[0].parts
    assert [(p.type, p.signature, p.origin) for p in parts[:2]] == [
        ("thinking", "S", "anthropic"), ("thinking", "", "anthropic")]
    assert parts[3].args == {"a": 1} and reply.choices[0].finish.reason == TOOL_CALLS
    assert reply.usage == Usage(117, 5, cached_tokens=100, cache_write_tokens=7)


@pytest.mark.parametrize("stop, neutral", [("end_turn", STOP), ("stop_sequence", STOP),
                                           ("max_tokens", LENGTH), ("refusal", CONTENT_FILTER),
                                           ("pause_turn", STOP),
                                           ("model_context_window_exceeded", LENGTH)])
def test_stop_reasons(stop, neutral):
    reply = gp.decode_anthropic_response({"content": [], "stop_reason": stop,
                                          "stop_sequence": "X" if stop == "stop_sequence"
                                          else None})
    assert reply.choices[0].finish.reason == neutral


STREAM = [
    {"type": "message_start", "message": {"id": "msg_1", "usage": {
        "input_tokens": 20, "output_tokens": 1, "cache_read_input_tokens": 5}}},
    {"type": "content_block_start", "index": 0, "content_block": {
        "type": "thinking", "thinking": "", "signature": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta",
                                                          "thinking": "plan"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta",
                                                          "signature": "SIG"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_9", "name": "f", "input": {}}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta",
                                                          "partial_json": '{"a": '}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta",
                                                          "partial_json": "1}"}},
    {"type": "content_block_stop", "index": 2},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
     "usage": {"output_tokens": 42}},
    {"type": "message_stop"},
]


def test_decode_stream():
    events = list(gp.decode_anthropic_stream(sse(*STREAM)))
    reply = gp.collect_reply(iter(events), "r", "m")
    parts = reply.choices[0].parts
    assert [(p.type, p.text, p.signature) for p in parts[:2]] == [
        ("thinking", "plan", "SIG"), ("text", "Hi", "")]
    assert (parts[2].id, parts[2].args) == ("toolu_9", {"a": 1})
    assert events[-1] == Finish(TOOL_CALLS, Usage(25, 42, cached_tokens=5))


def test_decode_stream_failures():
    with pytest.raises(gp.UpstreamError) as err:
        list(gp.decode_anthropic_stream(sse(*STREAM[:8])))
    assert "message_stop" in err.value.message
    with pytest.raises(gp.UpstreamError) as err:
        list(gp.decode_anthropic_stream(sse(STREAM[0], {"type": "error", "error": {
            "type": "overloaded_error", "message": "Overloaded"}})))
    assert (err.value.status, err.value.message) == (529, "Overloaded")
    broken = STREAM[:9] + [STREAM[9], {"type": "content_block_delta", "index": 2, "delta": {
        "type": "input_json_delta", "partial_json": '{"a": '}}] + STREAM[12:]
    assert list(gp.decode_anthropic_stream(sse(*broken)))[-1].reason == MALFORMED_TOOL_CALL


@pytest.mark.parametrize("status, body, expected_status, message", [
    (429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}, 429,
     "slow"),
    (529, {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, 529,
     "busy"),
    (None, {"type": "error", "error": {"type": "api_error", "message": "boom"}}, 500, "boom"),
    (502, "<html>bad gateway</html>", 502, "bad gateway"),
])
def test_decode_errors(status, body, expected_status, message):
    error = gp.decode_anthropic_error(status, body, {"retry-after": "4"})
    assert error.status == expected_status and message in error.message
    assert error.retry_after == 4


# -- neutral -> client replies ---------------------------------------------------------------

def test_client_response_blocks_and_carriers():
    reply = Reply("r", "m", [Choice([
        Part(gp.THINKING, text="native", signature="S", origin="anthropic"),
        Part(gp.THINKING, text="from deepseek", origin="openai"),
        Part(gp.TEXT, text="answer"),
        Part(gp.THINKING, text="gemini thought", origin="gemini"),
        Part(gp.TOOL_CALL, id="functions.f:0", name="f", args={"a": 1}, signature="GSIG",
             origin="gemini"),
        Part(gp.TOOL_CALL, id="c2", name="g", args={}, signature="GSIG2", origin="gemini")],
        Finish(TOOL_CALLS))], Usage(100, 20, cached_tokens=30, cache_write_tokens=10))
    body = gp.encode_anthropic_response(reply, "claude-x", "msg_1")
    blocks = body["content"]
    assert [b["type"] for b in blocks] == ["thinking", "thinking", "text", "thinking",
                                           "tool_use", "thinking", "tool_use"]
    assert blocks[0] == {"type": "thinking", "thinking": "native", "signature": "S"}
    assert blocks[1]["thinking"] == "from deepseek"
    assert gp.unpack_thinking(blocks[1]["signature"])[0].origin == "openai"
    assert blocks[3]["thinking"] == "gemini thought"
    assert blocks[5]["thinking"] == ""       # an empty block carries the second signature
    assert blocks[4]["id"] == gp.anthropic_tool_id("functions.f:0")
    assert body["stop_reason"] == "tool_use"
    assert body["usage"] == {"input_tokens": 60, "output_tokens": 20,
                             "cache_read_input_tokens": 30, "cache_creation_input_tokens": 10}
    # the client sends the blocks back: everything returns to its origin
    chat = decode(request(messages=[{"role": "user", "content": "q"},
                                    {"role": "assistant", "content": blocks}]))
    parts = chat.messages[1].parts
    assert [(p.type, p.origin, p.text, p.signature) for p in parts] == [
        ("thinking", "anthropic", "native", "S"),
        ("thinking", "openai", "from deepseek", ""),
        ("text", "", "answer", ""),
        ("thinking", "gemini", "gemini thought", "GSIG"),
        ("tool_call", "", "", ""),
        ("thinking", "gemini", "", "GSIG2"),
        ("tool_call", "", "", "")]
    assert parts[4].id == "functions.f:0"


def test_client_stream_event_sequence():
    events = [Part(gp.THINKING, text="deep", origin="openai"),
              Part(gp.THINKING, text="er", origin="openai"),
              Part(gp.TEXT, text="Hello"), Part(gp.TEXT, text=" there"),
              Part(gp.TOOL_CALL, id="t1", name="f", args={"a": [1, 2]}, signature="GS",
                   origin="gemini"),
              Finish(TOOL_CALLS, Usage(12, 8))]
    out = parse_events(b"".join(gp.encode_anthropic_stream(iter(events), "claude-x", "msg_7")))
    kinds = [e["type"] for e in out]
    assert kinds == ["message_start", "ping",
                     "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    assert out[0]["message"]["id"] == "msg_7" and out[0]["message"]["model"] == "claude-x"
    assert [e["index"] for e in out if "index" in e] == [0, 0, 0, 0, 0, 1, 1, 1, 1,
                                                         2, 2, 2, 3, 3, 3]
    assert out[5]["delta"]["type"] == "signature_delta"
    assert gp.unpack_thinking(out[5]["delta"]["signature"])[0].origin == "openai"
    assert out[11]["content_block"]["type"] == "thinking"        # carries the Gemini signature
    assert gp.unpack_thinking(out[12]["delta"]["signature"])[0].signature == "GS"
    assert out[14]["content_block"] == {"type": "tool_use", "id": "t1", "name": "f",
                                        "input": {}}
    assert json.loads(out[15]["delta"]["partial_json"]) == {"a": [1, 2]}
    assert out[17]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert out[17]["usage"]["input_tokens"] == 12 and out[17]["usage"]["output_tokens"] == 8


def test_client_stream_native_thinking_and_redacted():
    events = [Part(gp.THINKING, text="a", origin="anthropic"),
              Part(gp.THINKING, signature="SIG", origin="anthropic"),
              Part(gp.THINKING, origin="anthropic", extra={"redacted": "R"}),
              Finish(STOP, Usage(1, 1), stop_sequence="END")]
    out = parse_events(b"".join(gp.encode_anthropic_stream(iter(events), "m", "id")))
    assert [(e["type"], e.get("delta", e.get("content_block", {})).get("type"))
            for e in out[2:-2]] == [
        ("content_block_start", "thinking"), ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "signature_delta"), ("content_block_stop", None),
        ("content_block_start", "redacted_thinking"), ("content_block_stop", None)]
    assert out[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_client_stream_failure_leaves_the_error_to_the_pipeline():
    # The encoder only stops; Request.fail renders (and redacts) the error event.
    def events():
        yield Part(gp.TEXT, text="partial")
        raise gp.UpstreamError("gone", status=529)
    chunks = []
    with pytest.raises(gp.UpstreamError):
        for chunk in gp.encode_anthropic_stream(events(), "m", "id"):
            chunks.append(chunk)
    out = parse_events(b"".join(chunks) + gp.anthropic_stream_error_event(
        gp.UpstreamError("gone", status=529)))
    assert out[-1] == {"type": "error", "error": {"type": "overloaded_error",
                                                  "message": "gone"}}
    assert [e["type"] for e in out].count("error") == 1
    assert "message_stop" not in [e["type"] for e in out]


def test_client_stream_that_ends_without_finish_is_an_error():
    with pytest.raises(gp.UpstreamError):
        b"".join(gp.encode_anthropic_stream(iter([Part(gp.TEXT, text="x")]), "m", "id"))


@pytest.mark.parametrize("error, status, kind", [
    (gp.ClientError("bad"), 400, "invalid_request_error"),
    (gp.ClientError("who", status=401), 401, "authentication_error"),
    (gp.ClientError("big", status=413), 413, "request_too_large"),
    (gp.UpstreamError("slow", status=429, retry_after=3), 429, "rate_limit_error"),
    (gp.UpstreamError("busy", status=529), 529, "overloaded_error"),
    (gp.UpstreamError("busy", status=503), 503, "overloaded_error"),
    (gp.UpstreamError("late", status=504), 504, "timeout_error"),
    (gp.ProxyError("bug"), 500, "api_error"),
])
def test_client_errors(error, status, kind):
    code, headers, body = gp.encode_anthropic_error(error)
    payload = json.loads(body)
    assert code == status and payload == {"type": "error", "error": {
        "type": kind, "message": error.message}}
    assert (("retry-after", "3") in headers) == (error.retry_after == 3)


def test_model_lists():
    assert gp.anthropic_model_list(["a", "b"]) == {
        "data": [gp.anthropic_model_info("a"), gp.anthropic_model_info("b")],
        "has_more": False, "first_id": "a", "last_id": "b"}
