"""The Gemini client side (pure functions): what Gemini CLI and google-genai send becomes
the neutral model (seen through the OpenAI-compatible request it turns into), and neutral
replies become the responses and the strict streams they parse."""

import base64
import json

import pytest

import gemini_proxy as gp
from gemini_proxy import (CONTENT_FILTER, LENGTH, MALFORMED_TOOL_CALL, STOP,
                          TOOL_CALLS, Finish, Part, Usage)


def decode(payload, **kw):
    return gp.decode_gemini_request(payload, "gemini-2.5-pro", **kw)


def to_openai(payload, **options):
    opts = dict(gp.UPSTREAM_DEFAULTS, **options)
    return gp.encode_openai_request(decode(payload), "up-model", opts)


def user(*texts):
    return {"role": "user", "parts": [{"text": t} for t in texts]}


# -- Gemini request -> neutral ------------------------------------------------------------

def test_system_instruction_as_content_or_string():
    chat = decode({"systemInstruction": {"role": "user", "parts": [{"text": "Be terse."},
                                                                     {"text": "Be kind."}]},
                   "contents": [user("Hi")]})
    assert [p.text for p in chat.system] == ["Be terse.", "Be kind."]
    chat = decode({"systemInstruction": "Just a string.", "contents": [user("Hi")]})
    assert [p.text for p in chat.system] == ["Just a string."]
    sent = gp.encode_openai_request(chat, "m")
    assert sent["messages"][0] == {"role": "system", "content": "Just a string."}


def test_snake_case_fields_from_the_python_sdk():
    chat = decode({
        "system_instruction": {"parts": [{"text": "sys"}]},
        "contents": [{"role": "user", "parts": [
            {"text": "look"}, {"inline_data": {"mime_type": "image/png", "data": "QUJD"}}]}],
        "tools": [{"function_declarations": [{"name": "f", "parameters_json_schema": {
            "type": "object", "properties": {"snake_name": {"type": "string"}}}}]}],
        "tool_config": {"function_calling_config": {"mode": "ANY",
                                                    "allowed_function_names": ["f"]}},
        "generation_config": {"max_output_tokens": 50, "top_p": 0.5, "stop_sequences": ["X"],
                              "thinking_config": {"thinking_budget": 0,
                                                  "include_thoughts": False}}})
    assert chat.system[0].text == "sys"
    assert chat.messages[0].parts[1].mime == "image/png"
    # property names inside the schema stay as they are
    assert chat.tools[0].schema["properties"] == {"snake_name": {"type": "string"}}
    assert (chat.tool_choice, chat.allowed_tools) == ("required", ["f"])
    assert (chat.max_tokens, chat.top_p, chat.stop) == (50, 0.5, ["X"])
    assert chat.thinking.budget == 0


@pytest.mark.parametrize("payload, named", [
    ({"contents": [user("x")], "bogus": 1}, "bogus"),
    ({"contents": [{"role": "user", "parts": [{"text": "x", "colour": 1}]}]}, "colour"),
    ({"contents": [user("x")], "generationConfig": {"temprature": 1}}, "temprature"),
    ({"contents": [user("x")], "tools": [{"functionDeclarations": [
        {"name": "f", "params": {}}]}]}, "params"),
])
def test_unknown_fields_are_rejected_by_name(payload, named):
    with pytest.raises(gp.ClientError) as err:
        decode(payload)
    assert err.value.status == 400 and '"%s"' % named in err.value.message
    decode(payload, strict=False)   # and accepted when strictness is off


@pytest.mark.parametrize("payload, says", [
    ({}, "contents is not specified"),
    ({"contents": []}, "contents is not specified"),
    ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "contents[0].role"),
    ({"contents": [{"role": "user", "parts": [{"text": 5}]}]}, "contents[0].parts[0].text"),
    ({"contents": [{"role": "user", "parts": [{"functionCall": {"name": "f", "args": "x"}}]}]},
     "functionCall.args"),
    ({"contents": [user("x")], "generationConfig": {"temperature": "hot"}},
     "generationConfig.temperature"),
    ({"contents": [user("x")], "generationConfig": {"maxOutputTokens": 1.5}},
     "generationConfig.maxOutputTokens"),
    ({"contents": [user("x")], "generationConfig": {"stopSequences": "END"}},
     "stopSequences"),
    ({"contents": [user("x")], "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}},
     "mode"),
    ([1, 2], "request"),
])
def test_bad_values_name_the_field(payload, says):
    with pytest.raises(gp.ClientError) as err:
        decode(payload)
    assert says in err.value.message


def test_roles_and_merged_turns():
    sent = to_openai({"contents": [user("one"), user("two", "three"),
                                   {"role": "model", "parts": [{"text": "a"}, {"text": "b"}]},
                                   {"role": "model", "parts": [{"text": "c"}]},
                                   {"parts": [{"text": "no role means user"}]}]})
    assert sent["messages"] == [
        {"role": "user", "content": "one\n\ntwo\n\nthree"},
        {"role": "assistant", "content": "abc"},
        {"role": "user", "content": "no role means user"}]


def test_function_declaration_schemas():
    chat = decode({"contents": [user("x")], "tools": [
        {"functionDeclarations": [
            {"name": "legacy", "description": "d", "parameters": {
                "type": "OBJECT", "propertyOrdering": ["a", "b"], "properties": {
                    "a": {"type": "STRING", "format": "enum", "enum": ["x", "y"],
                          "nullable": True},
                    "b": {"type": "ARRAY", "items": {"type": "INTEGER", "example": 3}},
                    "c": {"anyOf": [{"type": "STRING"}, {"type": "NUMBER"}], "nullable": True}},
                "required": ["a"]}},
            {"name": "modern", "parametersJsonSchema": {
                "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                "additionalProperties": False,
                "properties": {"p": {"type": "string", "nullable": True},
                               "type": {"type": "string"}}}},
            {"name": "no_args"}]},
        {"googleSearch": {}}]})
    legacy, modern, no_args = chat.tools
    assert legacy.schema == {"type": "object", "properties": {
        "a": {"type": ["string", "null"], "enum": ["x", "y"]},
        "b": {"type": "array", "items": {"type": "integer", "examples": [3]}},
        "c": {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]}},
        "required": ["a"]}
    assert modern.schema == {"$schema": "http://json-schema.org/draft-07/schema#",
                             "type": "object", "additionalProperties": False,
                             "properties": {"p": {"type": ["string", "null"]},
                                            "type": {"type": "string"}}}
    assert no_args.schema == {"type": "object", "properties": {}}
    assert chat.extra["gemini_tools"] == [{"googleSearch": {}}]
    sent = gp.encode_openai_request(chat, "m")
    assert [t["function"]["name"] for t in sent["tools"]] == ["legacy", "modern", "no_args"]
    assert "description" not in sent["tools"][1]["function"]


@pytest.mark.parametrize("config, choice, tools", [
    ({"functionCallingConfig": {"mode": "AUTO"}}, None, ["a", "b"]),
    ({"functionCallingConfig": {"mode": "NONE"}}, "none", ["a", "b"]),
    ({"functionCallingConfig": {"mode": "ANY"}}, "required", ["a", "b"]),
    ({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["b"]}},
     {"type": "function", "function": {"name": "b"}}, ["b"]),
    ({"functionCallingConfig": {"mode": "any", "allowedFunctionNames": ["a", "b"]}},
     "required", ["a", "b"]),
])
def test_tool_config_modes(config, choice, tools):
    sent = to_openai({"contents": [user("x")], "toolConfig": config, "tools": [
        {"functionDeclarations": [{"name": "a"}, {"name": "b"}]}]})
    assert sent.get("tool_choice") == choice
    assert [t["function"]["name"] for t in sent["tools"]] == tools


def test_generation_config_to_sampling_fields():
    payload = {"contents": [user("x")], "generationConfig": {
        "temperature": 0.3, "topP": 0.9, "topK": 40, "candidateCount": 2,
        "maxOutputTokens": 321, "stopSequences": ["END", "STOP"], "presencePenalty": 0.5,
        "frequencyPenalty": -0.5, "seed": 7}}
    sent = to_openai(payload)
    assert {k: sent[k] for k in ("temperature", "top_p", "n", "max_tokens", "stop",
                                 "presence_penalty", "frequency_penalty", "seed")} == {
        "temperature": 0.3, "top_p": 0.9, "n": 2, "max_tokens": 321, "stop": ["END", "STOP"],
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 7}
    assert "top_k" not in sent
    sent = to_openai(payload, send_top_k=True, max_tokens_field="max_completion_tokens",
                     extra_body={"temperature": 0.6, "enable_thinking": True})
    assert sent["top_k"] == 40 and sent["max_completion_tokens"] == 321
    assert "max_tokens" not in sent
    assert sent["temperature"] == 0.6 and sent["enable_thinking"] is True   # extra_body wins


@pytest.mark.parametrize("thinking, effort", [
    ({"thinkingLevel": "HIGH"}, "high"),
    ({"thinkingLevel": "low"}, "low"),
    ({"thinkingBudget": 0}, "none"),
    ({"thinkingBudget": 1024}, "low"),
    ({"thinkingBudget": 8192}, "medium"),
    ({"thinkingBudget": 24576}, "high"),
    ({"thinkingBudget": -1}, None),
])
def test_thinking_config_to_reasoning_effort(thinking, effort):
    payload = {"contents": [user("x")], "generationConfig": {"thinkingConfig": thinking}}
    assert "reasoning_effort" not in to_openai(payload)     # only where the upstream takes it
    assert to_openai(payload, send_reasoning_effort=True).get("reasoning_effort") == effort


def test_json_mode_variants():
    schema = {"type": "OBJECT", "properties": {"ok": {"type": "BOOLEAN"}}}
    payload = {"contents": [user("x")], "generationConfig": {
        "responseMimeType": "application/json", "responseSchema": schema}}
    json_schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    sent = to_openai(payload)
    assert sent["response_format"]["json_schema"]["schema"] == json_schema
    assert sent["messages"][0]["role"] == "user"        # no prompt needed
    sent = to_openai(payload, response_format="json_object")
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["messages"][0]["role"] == "system"
    assert json.dumps(json_schema) in sent["messages"][0]["content"]
    sent = to_openai(payload, response_format="none")
    assert "response_format" not in sent and "JSON" in sent["messages"][0]["content"]
    sent = to_openai({"contents": [user("x")],
                      "generationConfig": {"responseMimeType": "application/json"}})
    assert sent["response_format"] == {"type": "json_object"}
    assert "JSON" in sent["messages"][0]["content"]      # OpenAI wants the word "JSON"
    sent = to_openai({"contents": [user("x")],
                      "generationConfig": {"responseMimeType": "text/plain"}})
    assert "response_format" not in sent


def test_media_parts():
    pdf = base64.b64encode(b"%PDF-1.4").decode()
    note = base64.b64encode("notes: ünïcode".encode()).decode()
    sent = to_openai({"contents": [{"role": "user", "parts": [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklG"}},
        {"inlineData": {"mimeType": "application/pdf", "data": pdf}},
        {"inlineData": {"mimeType": "text/plain", "data": note}},
        {"inlineData": {"mimeType": "video/mp4", "data": "AAAA"}},
        {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://b/doc.pdf"}}]}]})
    assert sent["messages"][0]["content"] == [
        {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
        {"type": "file", "file": {"filename": "document.pdf",
                                  "file_data": "data:application/pdf;base64," + pdf}},
        {"type": "text", "text": "notes: ünïcode"},
        {"type": "text", "text": "[video/mp4 attachment omitted: this upstream does not take it]"},
        {"type": "text", "text": "[application/pdf attachment: gs://b/doc.pdf]"}]


# -- tool calls and results ---------------------------------------------------------------

def call(name, args, id_=None, **extra):
    fc = {"name": name, "args": args}
    if id_:
        fc["id"] = id_
    return dict({"functionCall": fc}, **extra)


def result(name, response, id_=None):
    fr = {"name": name, "response": response}
    if id_:
        fr["id"] = id_
    return {"functionResponse": fr}


def test_results_pair_by_id_then_by_order_within_name():
    sent = to_openai({"contents": [
        user("go"),
        {"role": "model", "parts": [call("read", {"p": 1}), call("read", {"p": 2}),
                                    call("glob", {"q": "*"}, "g-1")]},
        {"role": "user", "parts": [result("glob", {"output": "G"}, "g-1"),
                                   result("read", {"output": "R1"}),
                                   result("read", {"output": "R2"})]}]})
    calls = sent["messages"][1]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1_0", "call_1_1", "g-1"]
    tools = sent["messages"][2:]
    assert [(m["tool_call_id"], m["content"]) for m in tools] == [
        ("g-1", "G"), ("call_1_0", "R1"), ("call_1_1", "R2")]


def test_unanswered_calls_and_orphan_results_keep_the_history_valid():
    sent = to_openai({"contents": [
        user("go"),
        {"role": "model", "parts": [call("a", {}, "id-a"), call("b", {}, "id-b")]},
        {"role": "user", "parts": [result("a", {"output": "A"}, "id-a"),
                                   result("zzz", {"output": "stray"}, "id-z"),
                                   {"text": "and also this"}]}]})
    assert sent["messages"][2:] == [
        {"role": "tool", "tool_call_id": "id-a", "content": "A"},
        {"role": "tool", "tool_call_id": "id-b",
         "content": '{"error": "the client sent no result for this call"}'},
        {"role": "user", "content": "[result of zzz]\nstray\n\nand also this"}]


def test_backend_ids_kept_but_repeats_renamed():
    # Kimi issues ids like functions.read:0 and may issue the same one in a later turn
    sent = to_openai({"contents": [
        user("1"), {"role": "model", "parts": [call("read", {}, "functions.read:0")]},
        {"role": "user", "parts": [result("read", {"output": "x"}, "functions.read:0")]},
        {"role": "model", "parts": [call("read", {}, "functions.read:0")]},
        {"role": "user", "parts": [result("read", {"output": "y"}, "functions.read:0")]}]})
    ids = [(m.get("tool_calls") or [{}])[0].get("id") or m.get("tool_call_id")
           for m in sent["messages"][1:]]
    assert ids[0] == ids[1] == "functions.read:0"
    assert ids[2] == ids[3] != "functions.read:0"


def test_long_tool_ids_fit_openai_limit_consistently():
    long_id = "mcp__very_long_server_name__very_long_tool_name_1795442768218_0"
    sent = to_openai({"contents": [
        user("x"), {"role": "model", "parts": [call("t", {}, long_id)]},
        {"role": "user", "parts": [result("t", {"output": "ok"}, long_id)]}]})
    call_id = sent["messages"][1]["tool_calls"][0]["id"]
    assert len(call_id) <= 40 and sent["messages"][2]["tool_call_id"] == call_id
    other = gp.fit_tool_id(long_id[:-1] + "1", 40)
    assert other != call_id


def test_tool_result_shapes_and_media():
    png = base64.b64encode(b"png").decode()
    sent = to_openai({"contents": [
        user("x"), {"role": "model", "parts": [call("a", {}, "1"), call("b", {}, "2"),
                                               call("c", {}, "3")]},
        {"role": "user", "parts": [
            result("a", {"output": "plain"}, "1"),
            result("b", {"matches": [1, 2], "output": "both"}, "2"),
            {"functionResponse": {"id": "3", "name": "c", "response": {"output": "see image"},
                                  "parts": [{"inlineData": {"mimeType": "image/png",
                                                            "data": png}}]}},
            {"inlineData": {"mimeType": "image/png", "data": png}}]}]})
    assert sent["messages"][2]["content"] == "plain"
    assert json.loads(sent["messages"][3]["content"]) == {"matches": [1, 2], "output": "both"}
    assert sent["messages"][4]["content"] == "see image"
    follow_up = sent["messages"][5]
    assert follow_up["role"] == "user"
    assert follow_up["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}},
        {"type": "text", "text": "Attachments returned by c:"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}}]


def test_thought_signatures_in_requests():
    blocks = [Part(gp.THINKING, text="first I think", origin="openai")]
    carrier = gp.pack_thinking(blocks)
    chat = decode({"contents": [
        user("x"),
        {"role": "model", "parts": [
            {"text": "dropped by the CLI normally", "thought": True},
            call("a", {}, "1", thoughtSignature=carrier),
            call("b", {}, "2", thoughtSignature="skip_thought_signature_validator")]},
        {"role": "user", "parts": [result("a", {"output": "A"}, "1"),
                                   result("b", {"output": "B"}, "2")]},
        {"role": "model", "parts": [{"text": "done", "thoughtSignature": "REALSIG"}]}]})
    model_turn = chat.messages[1].parts
    # The carrier holds the reasoning; the thought text the client kept beside it is a copy.
    assert [p.type for p in model_turn] == ["thinking", "tool_call", "tool_call"]
    assert model_turn[0].text == "first I think" and model_turn[0].origin == "openai"
    assert model_turn[1].signature == "" and model_turn[2].signature == ""
    last = chat.messages[3].parts[0]
    assert (last.signature, last.origin) == ("REALSIG", "gemini")
    sent = gp.encode_openai_request(chat, "m")
    assert sent["messages"][1]["reasoning_content"] == "first I think"
    options = dict(gp.UPSTREAM_DEFAULTS, reasoning_field="reasoning")
    assert gp.encode_openai_request(chat, "m", options)["messages"][1]["reasoning"]
    options = dict(gp.UPSTREAM_DEFAULTS, echo_reasoning=False)
    assert "reasoning_content" not in gp.encode_openai_request(chat, "m", options)["messages"][1]
    assert "reasoning_content" not in sent["messages"][4]    # only tool-call turns


def test_carrier_round_trip_and_garbage():
    blocks = [Part(gp.THINKING, text="t1 ünï", signature="s1", origin="anthropic"),
              Part(gp.THINKING, origin="anthropic", extra={"redacted": "opaque"})]
    back = gp.unpack_thinking(gp.pack_thinking(blocks))
    assert [(b.text, b.signature, b.origin, b.extra) for b in back] == [
        ("t1 ünï", "s1", "anthropic", {}), ("", "", "anthropic", {"redacted": "opaque"})]
    start = gp.CARRIER_START
    assert gp.unpack_thinking(start + "not-base64!!") == []
    assert gp.unpack_thinking(base64.b64encode(gp.CARRIER_MAGIC + b"not zlib").decode()) == []
    assert gp.unpack_thinking(base64.b64encode(b"gpx\x09" + b"x" * 9).decode()) == []
    assert gp.unpack_thinking("") == [] and gp.unpack_thinking("REALSIG") == []


def test_carrier_is_canonical_standard_base64_and_comes_back_in_any_form():
    # google-genai types thoughtSignature as bytes: it decodes what it gets as standard
    # base64 and sends it back URL-safe, maybe without padding.
    blocks = [Part(gp.THINKING, text="why?" * 50 + "\u00ff\u2603", origin="openai")]
    for size in range(1, 6):   # every padding length
        carrier = gp.pack_thinking(blocks[:1] * size)
        raw = base64.b64decode(carrier, validate=True)
        assert base64.b64encode(raw).decode("ascii") == carrier      # canonical
        for form in (carrier, base64.urlsafe_b64encode(raw).decode("ascii"),
                     base64.urlsafe_b64encode(raw).decode("ascii").rstrip("="),
                     carrier.rstrip("=")):
            assert [p.text for p in gp.unpack_thinking(form)] == [blocks[0].text] * size


# -- neutral -> Gemini replies ------------------------------------------------------------

def gemini_stream(events, include_thoughts=False, sse=True):
    return b"".join(gp.encode_gemini_stream(iter(events), "gemini-2.5-pro", "rid",
                                            gp.ReplyOptions(include_thoughts, sse=sse)))


def payloads(data):
    out = []
    for event in data.decode("ascii").split("\n\n")[:-1]:
        assert event.startswith("data: ") and "\n" not in event
        out.append(json.loads(event[6:]))
    return out


def test_stream_chunks_hold_tool_calls_for_the_finish():
    events = [Part(gp.TEXT, text="I'll check."), Part(gp.TEXT, text=""),
              Part(gp.TOOL_CALL, id="1", name="a", args={"x": 1}),
              Part(gp.TOOL_CALL, id="2", name="b", args={}),
              Finish(TOOL_CALLS, Usage(10, 4, reasoning_tokens=1, cached_tokens=2))]
    chunks = payloads(gemini_stream(events))
    assert len(chunks) == 2
    assert chunks[0]["candidates"][0]["content"]["parts"] == [{"text": "I'll check."}]
    final = chunks[1]
    assert final["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"name": "a", "args": {"x": 1}, "id": "1"}},
        {"functionCall": {"name": "b", "args": {}, "id": "2"}}]
    assert final["candidates"][0]["finishReason"] == "STOP"
    assert final["usageMetadata"] == {"promptTokenCount": 10, "candidatesTokenCount": 3,
                                      "thoughtsTokenCount": 1, "cachedContentTokenCount": 2,
                                      "totalTokenCount": 14}
    assert final["modelVersion"] == "gemini-2.5-pro" and final["responseId"] == "rid"


def test_stream_carrier_on_first_call_only():
    events = [Part(gp.THINKING, text="plan ", origin="openai"),
              Part(gp.THINKING, text="more", origin="openai"),
              Part(gp.TOOL_CALL, id="1", name="a", args={}),
              Part(gp.TOOL_CALL, id="2", name="b", args={}), Finish(TOOL_CALLS)]
    chunks = payloads(gemini_stream(events, include_thoughts=True))
    parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
    assert parts[:2] == [{"text": "plan ", "thought": True}, {"text": "more", "thought": True}]
    first, second = parts[2:]
    assert "thoughtSignature" not in second
    assert [p.text for p in gp.unpack_thinking(first["thoughtSignature"])] == ["plan more"]


def test_stream_gemini_signatures_pass_and_are_never_dropped():
    events = [Part(gp.TEXT, text="", signature="SIG", origin="gemini"), Finish(STOP)]
    parts = payloads(gemini_stream(events))[0]["candidates"][0]["content"]["parts"]
    assert parts == [{"text": "", "thoughtSignature": "SIG"}]


def test_stream_error_ends_without_finish_reason():
    def events():
        yield Part(gp.TEXT, text="partial")
        raise gp.UpstreamError("gone", status=502)
    out = []
    with pytest.raises(gp.UpstreamError):
        for piece in gp.encode_gemini_stream(events(), "m", "r"):
            out.append(piece)
    chunks = payloads(b"".join(out))
    assert chunks and all("finishReason" not in c["candidates"][0] for c in chunks)


def test_json_array_stream_form():
    data = gemini_stream([Part(gp.TEXT, text="a"), Part(gp.TEXT, text="b"), Finish(LENGTH)],
                         sse=False)
    chunks = json.loads(data)
    assert [c["candidates"][0].get("finishReason") for c in chunks] == [None, None,
                                                                         "MAX_TOKENS"]


@pytest.mark.parametrize("reason, gemini", [
    (STOP, "STOP"), (LENGTH, "MAX_TOKENS"), (TOOL_CALLS, "STOP"), (CONTENT_FILTER, "SAFETY"),
    (MALFORMED_TOOL_CALL, "MALFORMED_FUNCTION_CALL")])
def test_gemini_finish_reasons(reason, gemini):
    chunks = payloads(gemini_stream([Finish(reason)]))
    assert chunks[0]["candidates"][0]["finishReason"] == gemini


@pytest.mark.parametrize("error, status, name, delay", [
    (gp.UpstreamError("slow", status=429, retry_after=7), 429, "RESOURCE_EXHAUSTED", "7s"),
    (gp.UpstreamError("slow", status=429, retry_after=0.5), 429, "RESOURCE_EXHAUSTED", "0.5s"),
    (gp.UpstreamError("busy", status=529), 503, "UNAVAILABLE", None),
    (gp.ClientError("bad"), 400, "INVALID_ARGUMENT", None),
    (gp.ClientError("big", status=413), 413, "INVALID_ARGUMENT", None),
    (gp.ClientError("who", status=401), 401, "UNAUTHENTICATED", None),
    (gp.UpstreamError("late", status=504), 504, "DEADLINE_EXCEEDED", None),
    (gp.ProxyError("bug"), 500, "INTERNAL", None),
])
def test_gemini_error_shape(error, status, name, delay):
    code, headers, body = gp.encode_gemini_error(error)
    payload = json.loads(body)["error"]
    assert (code, payload["code"], payload["status"]) == (status, status, name)
    assert ("content-type", "application/json; charset=utf-8") in headers
    delays = [d["retryDelay"] for d in payload.get("details", ()) if "retryDelay" in d]
    assert delays == ([delay] if delay else [])


def test_count_tokens_request_and_local_estimate():
    chat = gp.decode_gemini_count_request({"contents": [user("abcdefgh"), {
        "role": "model", "parts": [{"text": "中文"}]}]})
    assert gp.estimate_prompt_tokens(chat) == 3 + 2   # 9 ASCII characters (a separator), 2 CJK
    chat = gp.decode_gemini_count_request({"generateContentRequest": {
        "model": "models/x", "systemInstruction": {"parts": [{"text": "sys"}]},
        "contents": [user("hi")]}})
    assert [p.text for p in chat.system] == ["sys"] and chat.messages[0].parts[0].text == "hi"
    assert gp.decode_gemini_count_request({"contents": []}).messages == []
    with pytest.raises(gp.ClientError):
        gp.decode_gemini_count_request({"contents": [user("x")], "extra": 1})
