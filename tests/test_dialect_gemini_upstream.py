"""Gemini as the upstream: requests out, replies and streams in, schemas, errors,
counting and embeddings (pure functions)."""

import json

import pytest

import gemini_proxy as gp
from gemini_proxy import (CONTENT_FILTER, LENGTH, MALFORMED_TOOL_CALL, STOP, TOOL_CALLS,
                          Chat, Finish, Message, Part, ResponseFormat, Thinking, Tool, Usage)


def encode(chat, model="gemini-2.5-pro", **options):
    return gp.encode_gemini_request(chat, model, dict(gp.UPSTREAM_DEFAULTS, **options))


def user(*parts):
    return Message("user", list(parts))


def text(value):
    return Part(gp.TEXT, text=value)


def test_contents_system_and_function_responses():
    chat = Chat(system=[text("sys")], messages=[
        user(text("a")), user(text("b")),
        Message("assistant", [text("ok"), Part(gp.TOOL_CALL, id="call_1", name="read",
                                                args={"p": 1})]),
        user(text("and"), Part(gp.TOOL_RESULT, id="call_1", name="read",
                                content=[text('{"lines": 3}'),
                                         Part(gp.MEDIA, mime="image/png", data="SU1H")]))])
    sent = encode(chat)
    assert sent["systemInstruction"] == {"parts": [{"text": "sys"}]}
    assert sent["contents"][0] == {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}
    assert sent["contents"][1] == {"role": "model", "parts": [
        {"text": "ok"},
        {"functionCall": {"name": "read", "args": {"p": 1}, "id": "call_1"},
         "thoughtSignature": gp.GEMINI_SKIP_SIGNATURE}]}
    # responses first; a JSON-object result is the response itself; tool media follows
    assert sent["contents"][2]["parts"] == [
        {"functionResponse": {"name": "read", "response": {"lines": 3}, "id": "call_1"}},
        {"text": "and"}, {"inlineData": {"mimeType": "image/png", "data": "SU1H"}}]
    # Gemini 3 takes tool media inside the response
    sent = encode(chat, model="gemini-3-pro-preview")
    assert sent["contents"][2]["parts"][0]["functionResponse"]["parts"] == [
        {"inlineData": {"mimeType": "image/png", "data": "SU1H"}}]


def test_response_value_shapes():
    def value(content, is_error=False):
        """The functionResponse.response a tool result becomes."""
        chat = Chat(messages=[
            user(text("go")),
            Message("assistant", [Part(gp.TOOL_CALL, id="c1", name="f", args={})]),
            user(Part(gp.TOOL_RESULT, id="c1", name="f", content=[text(content)],
                      is_error=is_error))])
        parts = encode(chat)["contents"][-1]["parts"]
        assert len(parts) == 1
        return parts[0]["functionResponse"]["response"]
    assert value("plain") == {"output": "plain"}
    assert value('{"a": 1}') == {"a": 1}
    assert value("[1, 2]") == {"output": "[1, 2]"}
    assert value("{broken") == {"output": "{broken"}
    assert value("it failed", True) == {"error": "it failed"}


def test_signatures_go_back_on_their_parts():
    chat = Chat(messages=[user(text("q")), Message("assistant", [
        Part(gp.THINKING, text="thought text", signature="TS", origin="gemini"),
        Part(gp.TOOL_CALL, id="a", name="f", args={}),
        Part(gp.TOOL_CALL, id="b", name="g", args={}),
        Part(gp.TEXT, text="", signature="END", origin="gemini")]),
        Message("assistant", [Part(gp.TOOL_CALL, id="c", name="h", args={}, signature="OWN",
                                   origin="gemini")])])
    model_turn = encode(chat)["contents"][1]["parts"]
    assert model_turn == [
        {"functionCall": {"name": "f", "args": {}, "id": "a"}, "thoughtSignature": "TS"},
        {"functionCall": {"name": "g", "args": {}, "id": "b"}},
        {"text": "", "thoughtSignature": "END"},
        {"functionCall": {"name": "h", "args": {}, "id": "c"}, "thoughtSignature": "OWN"}]


def test_tools_and_tool_config():
    schema = {"$schema": "x", "type": "object", "properties": {
        "p": {"type": ["string", "null"], "x-hint": 1}}, "strict": True}
    chat = Chat(messages=[user(text("q"))], tools=[Tool("f", "does f", schema), Tool("g")],
                tool_choice="required", allowed_tools=["g"],
                extra={"gemini_tools": [{"googleSearch": {}}],
                       "safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH",
                                            "threshold": "OFF"}]})
    sent = encode(chat)
    assert sent["tools"] == [{"functionDeclarations": [
        {"name": "f", "description": "does f", "parametersJsonSchema": {
            "type": "object", "properties": {"p": {"type": "string", "nullable": True}}}},
        {"name": "g", "parametersJsonSchema": {"type": "object", "properties": {}}}]},
        {"googleSearch": {}}]
    assert sent["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["g"]}}
    assert sent["safetySettings"][0]["threshold"] == "OFF"
    sent = encode(chat, gemini_schema="openapi")
    declarations = sent["tools"][0]["functionDeclarations"]
    assert declarations[0]["parameters"] == {"type": "OBJECT", "properties": {
        "p": {"type": "STRING", "nullable": True}}}
    assert "parameters" not in declarations[1]      # an empty OBJECT is refused
    chat.tool_choice = "none"
    assert encode(chat)["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}


def test_generation_config_json_and_thinking():
    chat = Chat(messages=[user(text("q"))], temperature=0.5, top_p=0.9, top_k=20,
                max_tokens=300, stop=["X"], n=2, presence_penalty=0.1, frequency_penalty=0.2,
                seed=3, response_format=ResponseFormat({"type": "object", "properties": {
                    "a": {"type": "integer"}}}),
                thinking=Thinking(effort="low", include_thoughts=True))
    config = encode(chat)["generationConfig"]
    assert config == {"temperature": 0.5, "topP": 0.9, "topK": 20, "maxOutputTokens": 300,
                      "presencePenalty": 0.1, "frequencyPenalty": 0.2, "seed": 3,
                      "stopSequences": ["X"], "candidateCount": 2,
                      "responseMimeType": "application/json",
                      "responseJsonSchema": {"type": "object", "properties": {
                          "a": {"type": "integer"}}},
                      "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 2048}}
    assert encode(chat, model="gemini-3-flash-preview")["generationConfig"][
        "thinkingConfig"] == {"includeThoughts": True, "thinkingLevel": "LOW"}
    assert encode(chat, gemini_schema="openapi")["generationConfig"]["responseSchema"] == {
        "type": "OBJECT", "properties": {"a": {"type": "INTEGER"}}}
    chat.thinking = Thinking(budget=-1)
    assert encode(chat)["generationConfig"]["thinkingConfig"]["thinkingBudget"] == -1


def test_full_schema_sanitizer():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object", "additionalProperties": False,
        "$defs": {"node": {"type": "object", "properties": {
            "child": {"$ref": "#/$defs/node"}, "name": {"type": "string"}}},
            "color": {"enum": ["red", "green", None]}},
        "properties": {
            "tree": {"$ref": "#/$defs/node"},
            "color": {"$ref": "#/$defs/color"},
            "mode": {"const": "fast"},
            "count": {"type": "integer", "exclusiveMinimum": 0, "format": "int32"},
            "url": {"type": "string", "format": "uri", "description": "where"},
            "when": {"type": "string", "format": "date-time"},
            "either": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": "x"},
            "union": {"oneOf": [{"type": "string"}, {"type": "integer"}], "default": 1},
            "both": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}},
                                "required": ["a"]},
                               {"properties": {"b": {"type": "number"}}}]},
            "list": {"type": "array"},
            "empty": {"type": "object", "properties": {}},
            "levels": {"type": "integer", "enum": [1, 2]},
        },
        "required": ["tree", "ghost"]}
    out = gp.json_schema_to_gemini_schema(schema)
    props = out["properties"]
    assert out["type"] == "OBJECT" and out["required"] == ["tree"]
    assert "additionalProperties" not in out and "$defs" not in out
    assert props["tree"]["properties"]["name"] == {"type": "STRING"}
    child = props["tree"]["properties"]["child"]     # the cycle is cut where it recurs
    assert child["type"] == "OBJECT" and "recursive" in child["description"]
    assert props["color"] == {"type": "STRING", "enum": ["red", "green"], "nullable": True}
    assert props["mode"]["enum"] == ["fast"] and props["mode"]["type"] == "STRING"
    assert props["count"] == {"type": "INTEGER", "format": "int32",
                              "description": "(exclusiveMinimum: 0)"}
    assert props["url"] == {"type": "STRING", "description": "where (format: uri)"}
    assert props["when"]["format"] == "date-time"
    assert props["either"] == {"type": "STRING", "default": "x", "nullable": True}
    assert props["union"] == {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]}
    assert props["both"]["properties"].keys() == {"a", "b"}
    assert props["both"]["required"] == ["a"]
    assert props["list"] == {"type": "ARRAY", "items": {"type": "OBJECT"}}
    assert props["empty"] == {"type": "OBJECT"}
    assert props["levels"] == {"type": "STRING", "enum": ["1", "2"]}
    allowed = gp.GEMINI_SCHEMA_FIELDS

    def only_allowed(node):
        assert set(node) <= allowed, set(node) - allowed
        for sub in node.get("properties", {}).values():
            only_allowed(sub)
        for sub in node.get("anyOf", []):
            only_allowed(sub)
        if "items" in node:
            only_allowed(node["items"])
    only_allowed(out)


def test_light_clean_keeps_json_schema():
    cleaned = gp.clean_json_schema_for_gemini({
        "$id": "x", "$comment": "c", "type": "object", "x-vendor": 1,
        "properties": {"a": {"type": ["integer", "null"], "minimum": 1},
                       "b": {"anyOf": [{"type": "string", "$comment": "no"}]}},
        "additionalProperties": False})
    assert cleaned == {"type": "object", "additionalProperties": False, "properties": {
        "a": {"type": "integer", "minimum": 1, "nullable": True},
        "b": {"anyOf": [{"type": "string"}]}}}


def test_schema_retry_only_for_schema_refusals():
    options = dict(gp.UPSTREAM_DEFAULTS)
    refusal = gp.UpstreamError('Invalid JSON payload received. Unknown name "const" at '
                               "'tools[0].function_declarations[0].parameters'", status=400)
    assert gp.gemini_schema_retry(refusal, options)["gemini_schema"] == "openapi"
    assert gp.gemini_schema_retry(refusal, dict(options, gemini_schema="openapi")) is None
    assert gp.gemini_schema_retry(gp.UpstreamError("quota", status=429), options) is None
    assert gp.gemini_schema_retry(gp.UpstreamError("API key not valid", status=400),
                                  options) is None


def test_decode_response():
    reply = gp.decode_gemini_response({
        "responseId": "r1", "modelVersion": "gemini-2.5-pro",
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "thinking...", "thought": True},
            {"text": "Let me look."},
            {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "SIG"},
            {"functionCall": {"id": "given", "name": "g", "args": {}}}]},
            "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20,
                          "thoughtsTokenCount": 30, "cachedContentTokenCount": 40,
                          "toolUsePromptTokenCount": 5, "totalTokenCount": 155}})
    parts = reply.choices[0].parts
    assert [p.type for p in parts] == ["thinking", "text", "tool_call", "tool_call"]
    assert (parts[2].signature, parts[2].origin) == ("SIG", "gemini")
    assert parts[2].id.startswith("call_") and parts[3].id == "given"
    assert reply.choices[0].finish.reason == TOOL_CALLS
    assert reply.usage == Usage(105, 50, cached_tokens=40, reasoning_tokens=30)


@pytest.mark.parametrize("finish, neutral", [
    ("STOP", STOP), ("MAX_TOKENS", LENGTH), ("SAFETY", CONTENT_FILTER),
    ("RECITATION", CONTENT_FILTER), ("PROHIBITED_CONTENT", CONTENT_FILTER),
    ("MALFORMED_FUNCTION_CALL", MALFORMED_TOOL_CALL), ("OTHER", CONTENT_FILTER),
    ("UNEXPECTED_TOOL_CALL", MALFORMED_TOOL_CALL), ("TOO_MANY_TOOL_CALLS", MALFORMED_TOOL_CALL)])
def test_finish_reasons(finish, neutral):
    reply = gp.decode_gemini_response({"candidates": [{"content": {"parts": [{"text": "x"}]},
                                                       "finishReason": finish}]})
    assert reply.choices[0].finish.reason == neutral


@pytest.mark.parametrize("finish", ["UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"])
def test_a_stopped_tool_call_is_malformed_only_when_the_call_is_not_there(finish):
    # Without the call the turn is cut short (a plain STOP ended agents mid-task); with
    # it, the client gets the call, and its agent answers that there is no such tool.
    call = {"functionCall": {"name": "lookup", "args": {"q": "x"}}}
    for parts, neutral in (([], MALFORMED_TOOL_CALL), ([{"text": "Let me look."}],
                                                       MALFORMED_TOOL_CALL),
                           ([call], TOOL_CALLS)):
        reply = gp.decode_gemini_response({"candidates": [
            {"content": {"parts": parts}, "finishReason": finish}]})
        detail = finish if neutral == MALFORMED_TOOL_CALL else ""
        assert (reply.choices[0].finish.reason, reply.choices[0].finish.detail) == (
            neutral, detail), parts
        events = list(gp.decode_gemini_stream(sse(
            {"candidates": [{"content": {"parts": parts}}]},
            {"candidates": [{"content": {"parts": []}, "finishReason": finish}]})))
        assert (events[-1].reason, events[-1].detail) == (neutral, detail), parts


def test_blocked_prompt_is_a_content_filter():
    reply = gp.decode_gemini_response({"promptFeedback": {"blockReason": "SAFETY"},
                                       "usageMetadata": {"promptTokenCount": 9}})
    assert reply.choices[0].parts == [] and reply.choices[0].finish.reason == CONTENT_FILTER
    with pytest.raises(gp.UpstreamError):
        gp.decode_gemini_response({"candidates": []})


def sse(*chunks):
    return [("message", json.dumps(c)) for c in chunks]


def test_decode_stream():
    events = list(gp.decode_gemini_stream(sse(
        {"candidates": [{"content": {"parts": [{"text": "hmm", "thought": True}]}}]},
        {"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]},
        {"candidates": [{"content": {"parts": [{"text": "lo"}]}}],
         "usageMetadata": {"promptTokenCount": 3}},
        {"candidates": [{"content": {"parts": [
            {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "S"},
            {"text": "", "thoughtSignature": "E"}]}, "finishReason": "STOP"}],
         "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4,
                           "totalTokenCount": 7}})))
    assert [(type(e).__name__, getattr(e, "type", None)) for e in events] == [
        ("Part", "thinking"), ("Part", "text"), ("Part", "text"), ("Part", "tool_call"),
        ("Part", "text"), ("Finish", None)]
    assert events[4].signature == "E" and events[4].text == ""
    assert events[-1] == Finish(TOOL_CALLS, Usage(3, 4))


def test_decode_stream_failures():
    with pytest.raises(gp.UpstreamError) as err:
        list(gp.decode_gemini_stream(sse({"candidates": [{"content": {"parts": [
            {"text": "cut"}]}}]})))
    assert "ended before" in err.value.message
    with pytest.raises(gp.UpstreamError) as err:
        list(gp.decode_gemini_stream(sse({"error": {"code": 503, "message": "overloaded",
                                                    "status": "UNAVAILABLE"}})))
    assert err.value.status == 503
    blocked = list(gp.decode_gemini_stream(sse({"promptFeedback": {"blockReason": "OTHER"}})))
    assert blocked == [Finish(CONTENT_FILTER, None)]


@pytest.mark.parametrize("payload, status, retry_after, reason", [
    ({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}},
     429, 17.0, ""),
    ([{"error": {"code": 429, "message": "quota", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "900ms"}]}}],
     429, 0.9, ""),
    ({"error": {"code": 400, "message": "API key not valid", "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "API_KEY_INVALID"}]}}, 400, None, "API_KEY_INVALID"),
    ({"error": {"message": "no code", "status": "UNAVAILABLE"}}, 503, None, ""),
])
def test_decode_errors(payload, status, retry_after, reason):
    error = gp.decode_gemini_error(None, payload)
    assert (error.status, error.retry_after, error.reason) == (status, retry_after, reason)


def test_count_and_embeddings():
    chat = Chat(system=[text("s")], messages=[user(text("q"))], tools=[Tool("f")],
                thinking=Thinking(budget=100), temperature=1)
    body = gp.encode_gemini_count_request(chat, "gemini-2.5-pro")
    inner = body["generateContentRequest"]
    assert inner["model"] == "models/gemini-2.5-pro" and "generationConfig" not in inner
    assert inner["systemInstruction"] == {"parts": [{"text": "s"}]}
    assert gp.decode_gemini_count_response({"totalTokens": 12}) == 12
    request = gp.decode_gemini_embed_request({"requests": [
        {"model": "models/e", "content": {"parts": [{"text": "a"}]}, "taskType": "CLUSTERING",
         "outputDimensionality": 4},
        {"model": "models/e", "content": {"parts": [{"text": "b"}]}}]}, "e", batch=True)
    assert (request.texts, request.dimensions, request.task_type) == (["a", "b"], 4,
                                                                      "CLUSTERING")
    single = gp.decode_gemini_embed_request({"content": {"parts": [{"text": "x"}]}}, "e",
                                            batch=False)
    assert single.texts == ["x"]
    sent = gp.encode_gemini_embed_request(request, "text-embedding-004")
    assert sent["requests"][1] == {"model": "models/text-embedding-004",
                                   "content": {"parts": [{"text": "b"}]},
                                   "outputDimensionality": 4, "taskType": "CLUSTERING"}
    reply = gp.decode_gemini_embed_response({"embeddings": [{"values": [1.0]},
                                                            {"values": [2.0]}]})
    assert reply.vectors == [[1.0], [2.0]]
    assert gp.decode_gemini_embed_response({"embedding": {"values": [3.0]}}).vectors == [[3.0]]
    assert gp.encode_gemini_embed_response(reply, batch=False) == {"embedding": {
        "values": [1.0]}}


def test_upstream_paths_under_versioned_base_urls():
    assert gp.upstream_path("", "/v1beta/models/m:generateContent") == \
        "/v1beta/models/m:generateContent"
    assert gp.upstream_path("/v1beta", "/v1beta/models/m:x") == "/models/m:x"
    assert gp.upstream_path("/v1", "/v1/messages") == "/messages"
    assert gp.upstream_path("/api/v1", "/v1beta/models/m:x") == "/models/m:x"
    assert gp.upstream_path("/v1", "/chat/completions") == "/chat/completions"


def test_tool_results_follow_the_order_of_their_calls():
    # Claude Code sends results in the order the tools finished; Gemini pairs by position.
    chat = Chat(messages=[user(text("q")), Message("assistant", [
        Part(gp.TOOL_CALL, id="first", name="a", args={}),
        Part(gp.TOOL_CALL, id="second", name="b", args={})]),
        user(Part(gp.TOOL_RESULT, id="second", name="b", content=[text("B")]), text("note"),
             Part(gp.TOOL_RESULT, id="first", name="a", content=[text("A")]))])
    parts = encode(chat)["contents"][2]["parts"]
    assert [p["functionResponse"]["id"] for p in parts[:2]] == ["first", "second"]
    assert parts[2] == {"text": "note"}
    assert chat.messages[2].parts[0].id == "second"     # the request itself is left alone
