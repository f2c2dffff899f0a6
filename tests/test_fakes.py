"""The fake upstreams themselves, over plain HTTP (no proxy): the shared rule-based model,
every reply builder, streaming framing, errors and request recording."""

import http.client
import json
import os
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fake_upstream as fu  # noqa: E402
from conftest import PATIENCE, wait_for  # noqa: E402
from fake_upstream import FakeAnthropic, FakeGemini, FakeOpenAI  # noqa: E402

GENERATE = "/v1beta/models/gemini-x:generateContent"
STREAM = "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"
ARRAY_STREAM = "/v1beta/models/gemini-x:streamGenerateContent"
MESSAGES = "/v1/messages"
SCHEMA = {"type": "object", "properties": {"title": {"type": "string"},
                                           "count": {"type": "integer"},
                                           "tags": {"type": "array"},
                                           "kind": {"type": "string", "enum": ["a", "b"]},
                                           "nested": {"type": "object", "properties": {
                                               "ok": {"type": ["boolean", "null"]}}}}}
SAMPLE = {"title": "fake", "count": 1, "tags": [], "kind": "a", "nested": {"ok": True}}


@pytest.fixture
def gemini():
    fake = FakeGemini().start()
    yield fake
    fake.stop()


@pytest.fixture
def anthropic():
    fake = FakeAnthropic().start()
    yield fake
    fake.stop()


@pytest.fixture
def openai():
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def call(fake, method, path, payload=None, headers=None):
    """(status, lower-cased headers, body bytes) on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=PATIENCE)
    body = None if payload is None else json.dumps(payload)
    conn.request(method, path, body=body,
                 headers=dict({"content-type": "application/json"}, **(headers or {})))
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def post(fake, path, payload, headers=None):
    status, _, data = call(fake, "POST", path, payload, headers)
    return status, json.loads(data)


def gemini_events(data):
    """Payloads of a Gemini SSE body: `data: <one-line json>` events, nothing else."""
    text = data.decode("ascii")
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), text
    return [json.loads(e[len("data: "):]) for e in events]


def anthropic_events(data):
    """(name, payload) of an Anthropic SSE body: `event: <name>\\ndata: <json>` events."""
    text = data.decode("ascii")
    assert text.endswith("\n\n")
    out = []
    for event in text.split("\n\n")[:-1]:
        name_line, data_line = event.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), event
        name, payload = name_line[len("event: "):], json.loads(data_line[len("data: "):])
        assert payload["type"] == name
        out.append((name, payload))
    return out


def rebuild_message(events):
    """The Message an Anthropic event sequence describes (as a client SDK accumulates it)."""
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    message = dict(events[0][1]["message"])
    message["content"], partial = [], {}
    for name, payload in events[1:]:
        if name == "content_block_start":
            assert payload["index"] == len(message["content"])
            message["content"].append(dict(payload["content_block"]))
        elif name == "content_block_delta":
            block, delta = message["content"][payload["index"]], payload["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                index = payload["index"]
                partial[index] = partial.get(index, "") + delta["partial_json"]
        elif name == "content_block_stop":
            if payload["index"] in partial:
                message["content"][payload["index"]]["input"] = json.loads(
                    partial.pop(payload["index"]))
        elif name == "message_delta":
            message.update(payload["delta"])
            message["usage"] = dict(message["usage"], **payload["usage"])
    return message


def gemini_parts(chunks):
    return [part for c in chunks for part in c["candidates"][0]["content"]["parts"]]


# -- the shared rule-based model -------------------------------------------------------------

def test_brain_rules_and_precedence():
    assert fu.brain("hi") == (None, "FAKE says hello.", [])
    assert fu.brain("hi", thinking=True) == ("FAKE thinks.", "FAKE says hello.", [])
    calls = fu.brain('go CALL ls {"dir": "/"} CALL cat {"path": "a b"}')
    assert calls == (None, None, [("ls", {"dir": "/"}), ("cat", {"path": "a b"})])
    results = fu.brain('CALL ls {}', [("ls", "a.txt"), ("cat", '{"x": 1}')])
    assert results.text == 'FAKE got tool result(s): ls -> a.txt; cat -> {"x": 1}'
    assert results.calls == []
    assert json.loads(fu.brain("CALL ls {}", [("ls", "x")], SCHEMA).text) == SAMPLE
    assert json.loads(fu.brain("hi", schema=True).text) == {"answer": "FAKE says hello."}


def test_sample_json_takes_gemini_upper_case_types():
    schema = {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}, "s": {"type": "STRING"},
                                               "l": {"type": "ARRAY", "items": {"type": "STRING"}},
                                               "b": {"type": "BOOLEAN"}, "f": {"type": "NUMBER"}}}
    assert fu.sample_json(schema) == {"n": 1, "s": "fake", "l": [], "b": True, "f": 1.0}


def test_openai_view_and_agent_reply_keep_their_behaviour():
    messages = [{"role": "user", "content": 'CALL ls {"d": 1}'},
                {"role": "assistant", "content": None,
                 "tool_calls": [fu.tool_call("c1", "ls", {"d": 1})]},
                {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
                {"role": "tool", "tool_call_id": "zz", "content": [{"type": "text", "text": "b"}]}]
    assert fu.openai_view({"messages": messages}) == (
        'CALL ls {"d": 1}', [("ls", "a.txt"), ("?", "b")], None, False)
    assert fu.agent_reply({"messages": messages}) == (
        "FAKE got tool result(s): ls -> a.txt; ? -> b", [])
    assert fu.agent_reply({"messages": messages[:1]}) == (None, [("ls", {"d": 1})])
    assert fu.agent_reply({"messages": messages[:1], "response_format": {
        "type": "json_object"}}) == ('{"answer": "FAKE says hello."}', [])


def test_openai_fake_records_path_query_and_headers(openai):
    status, body = post(openai, "/v1/chat/completions?trace=1",
                        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                        {"Authorization": "Bearer sk-1"})
    assert status == 200 and body["choices"][0]["message"]["content"] == "FAKE says hello."
    record = openai.requests[-1]
    assert record["method"] == "POST" and record["path"] == "/v1/chat/completions"
    assert record["query"] == {"trace": "1"} and record["headers"]["authorization"] == "Bearer sk-1"
    assert openai.base_url.endswith("/v1")
    assert call(openai, "GET", "/v1/models")[0] == 200 and len(openai.requests) == 1


# -- FakeGemini: the rule-based model --------------------------------------------------------

def test_gemini_hello_and_recording(gemini):
    payload = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    status, body = post(gemini, GENERATE + "?key=k1", payload, {"X-Goog-Api-Key": "k2"})
    assert status == 200 and gemini.base_url == "http://127.0.0.1:%d" % gemini.port
    candidate = body["candidates"][0]
    assert candidate["content"] == {"role": "model", "parts": [{"text": "FAKE says hello."}]}
    assert candidate["finishReason"] == "STOP" and body["modelVersion"] == "gemini-x"
    assert body["usageMetadata"]["totalTokenCount"] == 18
    record = gemini.requests[-1]
    assert record["path"] == GENERATE and record["query"] == {"key": "k1"}
    assert record["headers"]["x-goog-api-key"] == "k2" and record["json"] == payload
    assert gemini.last == payload and record["method"] == "POST"


def test_gemini_call_directives_become_function_calls(gemini):
    text = 'Look. CALL read_file {"path": "/a"} CALL ls {"dir": "."}'
    post(gemini, "/v1beta/models/m:countTokens", {"contents": []})       # request 1
    _, body = post(gemini, GENERATE, {"contents": [
        {"role": "user", "parts": [{"text": "old"}]},
        {"role": "model", "parts": [{"text": "ok"}]},
        {"parts": [{"text": text}]}]})                                      # no role: user
    assert body["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"id": "fc_2_0", "name": "read_file", "args": {"path": "/a"}},
         "thoughtSignature": "sig-fc-2"},
        {"functionCall": {"id": "fc_2_1", "name": "ls", "args": {"dir": "."}}}]
    assert body["candidates"][0]["finishReason"] == "STOP"


def test_gemini_function_responses_are_summarised(gemini):
    _, body = post(gemini, GENERATE, {"contents": [
        {"role": "user", "parts": [{"text": 'CALL a {} CALL b {}'}]},
        {"role": "model", "parts": [{"functionCall": {"name": "a", "args": {}}},
                                    {"functionCall": {"name": "b", "args": {}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"id": "1", "name": "a", "response": {"output": "done"}}},
            {"functionResponse": {"name": "b", "response": {"error": "boom"}}}]}]})
    assert body["candidates"][0]["content"]["parts"] == [
        {"text": 'FAKE got tool result(s): a -> done; b -> {"error": "boom"}'}]


def test_gemini_json_mode_and_thoughts(gemini):
    def ask(config):
        _, body = post(gemini, GENERATE, {"contents": [{"role": "user", "parts": [
            {"text": "CALL x {}"}]}], "generationConfig": config})
        return body["candidates"][0]["content"]["parts"]
    json_schema = ask({"responseMimeType": "application/json", "responseJsonSchema": SCHEMA})
    assert json.loads(json_schema[0]["text"]) == SAMPLE
    upper = ask({"responseMimeType": "application/json", "responseSchema": {
        "type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}}})
    assert json.loads(upper[0]["text"]) == {"n": 1}
    bare = ask({"responseMimeType": "application/json"})
    assert json.loads(bare[0]["text"]) == {"answer": "FAKE says hello."}
    thoughts = ask({"thinkingConfig": {"includeThoughts": True, "thinkingBudget": 100}})
    assert thoughts[0] == {"text": "FAKE thinks.", "thought": True}
    assert thoughts[1]["functionCall"]["name"] == "x"
    assert ask({"thinkingConfig": {"includeThoughts": False}})[0]["functionCall"]["name"] == "x"


def test_gemini_automatic_sse_stream(gemini):
    payload = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
               "generationConfig": {"thinkingConfig": {"includeThoughts": True}}}
    status, headers, data = call(gemini, "POST", STREAM, payload)
    assert status == 200 and headers["content-type"] == "text/event-stream"
    chunks = gemini_events(data)
    assert len(chunks) >= 3
    assert gemini_parts(chunks)[0] == {"text": "FAKE thinks.", "thought": True}
    assert "".join(p["text"] for p in gemini_parts(chunks)[1:]) == "FAKE says hello."
    assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])
    assert all("usageMetadata" not in c for c in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["thoughtsTokenCount"] == 3
    assert gemini.requests[-1]["query"] == {"alt": "sse"}


def test_gemini_automatic_stream_of_calls_and_json_array_form(gemini):
    payload = {"contents": [{"role": "user", "parts": [{"text": 'CALL a {"x": 1} CALL b {}'}]}]}
    chunks = gemini_events(call(gemini, "POST", STREAM, payload)[2])
    assert gemini_parts(chunks) == [
        {"functionCall": {"id": "fc_1_0", "name": "a", "args": {"x": 1}},
         "thoughtSignature": "sig-fc-1"},
        {"functionCall": {"id": "fc_1_1", "name": "b", "args": {}}}]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    status, headers, data = call(gemini, "POST", ARRAY_STREAM, payload)
    assert headers["content-type"] == "application/json"
    array = json.loads(data)
    assert isinstance(array, list) and len(array) == 2
    assert gemini_parts(array)[1]["functionCall"]["id"] == "fc_2_1"


def test_gemini_count_tokens_embeddings_and_models(gemini):
    contents = [{"role": "user", "parts": [{"text": "abcdefgh"}, {"text": "ijkl"}]}]
    assert post(gemini, "/v1beta/models/m:countTokens", {"contents": contents})[1][
        "totalTokens"] == 3
    wrapped = {"generateContentRequest": {"model": "models/m", "contents": contents,
                                          "systemInstruction": {"parts": [{"text": "abcd"}]}}}
    assert post(gemini, "/v1beta/models/m:countTokens", wrapped)[1]["totalTokens"] == 4
    assert gemini.requests[-1]["json"] == wrapped
    assert fu.fake_token_count(wrapped) == 4

    one = post(gemini, "/v1beta/models/e:embedContent",
               {"content": {"parts": [{"text": "cat"}]}})[1]["embedding"]["values"]
    assert one == fu.fake_embedding("cat") and len(one) == 8
    assert all(-1 <= v <= 1 for v in one) and len(set(one)) > 1
    sized = post(gemini, "/v1beta/models/e:embedContent", {
        "content": {"parts": [{"text": "cat"}]}, "outputDimensionality": 40})[1]
    assert sized["embedding"]["values"][:8] == one and len(sized["embedding"]["values"]) == 40
    batch = post(gemini, "/v1beta/models/e:batchEmbedContents", {"requests": [
        {"model": "models/e", "content": {"parts": [{"text": "cat"}]}},
        {"model": "models/e", "content": {"parts": [{"text": "dog"}]}}]})[1]["embeddings"]
    assert batch[0]["values"] == one and batch[1]["values"] == fu.fake_embedding("dog") != one

    gemini.models = ["g-1", "g-2"]
    status, _, data = call(gemini, "GET", "/v1beta/models?pageSize=5")
    models = json.loads(data)["models"]
    assert status == 200 and [m["name"] for m in models] == ["models/g-1", "models/g-2"]
    assert "generateContent" in models[0]["supportedGenerationMethods"]
    assert json.loads(call(gemini, "GET", "/v1beta/models/g-2")[2])["name"] == "models/g-2"
    status, _, data = call(gemini, "GET", "/v1beta/models/nope")
    assert status == 404 and json.loads(data)["error"]["status"] == "NOT_FOUND"
    assert gemini.requests[-3]["method"] == "GET"
    assert gemini.requests[-3]["query"] == {"pageSize": "5"}
    status, body = post(gemini, "/v1beta/models/m:unknownMethod", {})
    assert status == 404 and body["error"]["code"] == 404


# -- FakeGemini: builders --------------------------------------------------------------------

def test_gemini_response_builders(gemini):
    use = fu.gemini_usage(prompt=5, candidates=2, thoughts=4, cached=3)
    assert use["totalTokenCount"] == 11 and use["cachedContentTokenCount"] == 3
    assert use["thoughtsTokenCount"] == 4 and use["promptTokenCount"] == 5
    assert "thoughtsTokenCount" not in fu.gemini_usage()
    gemini.queue(
        fu.json_reply(fu.gemini_text("Hi", thought="hmm", signature="s1", use=use)),
        fu.json_reply(fu.gemini_calls([("id1", "f", {"a": 1}, "s2"), ("id2", "g", {})],
                                      thought="plan", text="Calling.")),
        fu.json_reply(fu.gemini_text("cut", finish="MAX_TOKENS")),
        fu.json_reply(fu.gemini_response([], finish="SAFETY")),
        fu.json_reply(fu.gemini_blocked("PROHIBITED_CONTENT")))
    request = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    body = post(gemini, GENERATE, request)[1]
    assert body["candidates"][0]["content"]["parts"] == [
        {"text": "hmm", "thought": True}, {"text": "Hi", "thoughtSignature": "s1"}]
    assert body["usageMetadata"] == use
    body = post(gemini, GENERATE, request)[1]
    assert body["candidates"][0]["content"]["parts"] == [
        {"text": "plan", "thought": True}, {"text": "Calling."},
        {"functionCall": {"id": "id1", "name": "f", "args": {"a": 1}}, "thoughtSignature": "s2"},
        {"functionCall": {"id": "id2", "name": "g", "args": {}}}]
    assert post(gemini, GENERATE, request)[1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert post(gemini, GENERATE, request)[1]["candidates"][0]["finishReason"] == "SAFETY"
    blocked = post(gemini, GENERATE, request)[1]
    assert "candidates" not in blocked
    assert blocked["promptFeedback"]["blockReason"] == "PROHIBITED_CONTENT"
    assert post(gemini, GENERATE, request)[1]["candidates"][0]["content"]["parts"] == [
        {"text": "FAKE says hello."}]                     # script used up: automatic again
    assert fu.gemini_call_part("f", {}) == {"functionCall": {"name": "f", "args": {}}}


def test_gemini_errors(gemini):
    gemini.queue(fu.gemini_error(429, "Quota.", retry_delay=17, headers={"retry-after": "17"}),
                 fu.gemini_error(503),
                 fu.gemini_error(400, "Bad key.", details=[{
                     "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                     "reason": "API_KEY_INVALID"}]),
                 fu.gemini_error(418, status="IM_A_TEAPOT", retry_delay="0.5s"))
    status, headers, data = call(gemini, "POST", GENERATE, {"contents": []})
    error = json.loads(data)["error"]
    assert status == 429 and headers["retry-after"] == "17"
    assert error == {"code": 429, "message": "Quota.", "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}
    status, body = post(gemini, GENERATE, {})
    assert status == 503 and body["error"]["status"] == "UNAVAILABLE"
    assert "details" not in body["error"]
    status, body = post(gemini, GENERATE, {})
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    assert body["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    status, body = post(gemini, GENERATE, {})
    assert status == 418 and body["error"]["status"] == "IM_A_TEAPOT"
    assert body["error"]["details"][0]["retryDelay"] == "0.5s"


def test_gemini_stream_builders(gemini):
    gemini.queue(fu.gemini_text_stream("Hello world", pieces=2, thought="think",
                                       signature="sig-end", finish="MAX_TOKENS"),
                 fu.gemini_text_stream("abc", pieces=3),
                 fu.gemini_call_stream([("i1", "f", {"a": 1}, "s1"), ("i2", "g", {})],
                                       together=True, use=fu.gemini_usage(thoughts=2)),
                 fu.gemini_stream([fu.gemini_blocked()]),
                 fu.gemini_stream([fu.gemini_chunk([fu.gemini_text_part("so")]),
                                   fu.gemini_error_body(500, "Internal.")]))
    chunks = gemini_events(call(gemini, "POST", STREAM, {})[2])
    assert [c["candidates"][0]["content"]["parts"] for c in chunks] == [
        [{"text": "think", "thought": True}], [{"text": "Hello "}], [{"text": "world"}],
        [{"text": "", "thoughtSignature": "sig-end"}]]
    assert chunks[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert "usageMetadata" in chunks[-1]
    chunks = gemini_events(call(gemini, "POST", STREAM, {})[2])
    assert [gemini_parts([c])[0]["text"] for c in chunks] == ["a", "b", "c"]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    chunks = gemini_events(call(gemini, "POST", STREAM, {})[2])
    assert len(chunks) == 1 and len(gemini_parts(chunks)) == 2
    assert chunks[0]["usageMetadata"]["thoughtsTokenCount"] == 2
    chunks = gemini_events(call(gemini, "POST", STREAM, {})[2])
    assert chunks[0]["promptFeedback"]["blockReason"] == "SAFETY"
    chunks = gemini_events(call(gemini, "POST", STREAM, {})[2])
    assert chunks[1]["error"]["status"] == "INTERNAL"


def test_gemini_stream_forms_delay_and_cut(gemini):
    gemini.queue(fu.gemini_stream([fu.gemini_chunk([{"text": "x"}])], form="array"),
                 fu.gemini_stream([], form="array"),
                 fu.gemini_text_stream("abcdef", pieces=2, delay=0.05),
                 fu.gemini_text_stream("abcdef", pieces=2, close_early=True),
                 fu.gemini_text_stream("abcdef", pieces=2, close_early=True),
                 fu.gemini_call_stream([("i", "f", {})], close_early=True))
    data = call(gemini, "POST", STREAM, {})[2]     # forced JSON array despite alt=sse
    assert data.startswith(b"[") and json.loads(data)[0]["candidates"][0]["content"]["parts"]
    assert json.loads(call(gemini, "POST", STREAM, {})[2]) == []
    started = time.monotonic()
    chunks = gemini_events(call(gemini, "POST", STREAM, {})[2])
    assert time.monotonic() - started >= 0.1 and len(chunks) == 2
    cut = {}
    for name, path in (("sse", STREAM), ("array", ARRAY_STREAM), ("calls", STREAM)):
        conn = http.client.HTTPConnection("127.0.0.1", gemini.port, timeout=PATIENCE)
        conn.request("POST", path, body="{}")
        response = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead) as caught:
            response.read()
        conn.close()
        cut[name] = caught.value.partial.decode()
        assert "finishReason" not in cut[name] and "usageMetadata" not in cut[name]
    assert [c["candidates"][0]["content"]["parts"] for c in gemini_events(
        cut["sse"].encode())] == [[{"text": "abc"}], [{"text": "def"}]]
    assert cut["array"].startswith("[") and "def" in cut["array"]
    assert not cut["array"].rstrip().endswith("]")
    assert gemini_parts(gemini_events(cut["calls"].encode())) == [
        {"functionCall": {"id": "i", "name": "f", "args": {}}}]


# -- FakeAnthropic: the rule-based model -----------------------------------------------------

def test_anthropic_hello_and_recording(anthropic):
    payload = {"model": "claude-x", "max_tokens": 100,
               "messages": [{"role": "user", "content": "Hi"}]}
    status, body = post(anthropic, MESSAGES, payload,
                        {"X-Api-Key": "sk-ant", "Anthropic-Version": "2023-06-01"})
    assert status == 200 and anthropic.base_url == "http://127.0.0.1:%d" % anthropic.port
    assert body == {"id": "msg_fake_1", "type": "message", "role": "assistant",
                    "model": "claude-x", "content": [{"type": "text", "text": "FAKE says hello."}],
                    "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": fu.anthropic_usage()}
    record = anthropic.requests[-1]
    assert record["headers"]["x-api-key"] == "sk-ant"
    assert record["headers"]["anthropic-version"] == "2023-06-01"
    assert record["path"] == MESSAGES and record["json"] == payload == anthropic.last


def test_anthropic_calls_results_json_and_thinking(anthropic):
    def ask(messages, **extra):
        return post(anthropic, MESSAGES, dict({"model": "m", "max_tokens": 9,
                                               "messages": messages}, **extra))[1]
    body = ask([{"role": "user", "content": [
        {"type": "text", "text": 'CALL read {"p": "/a"} CALL ls {}'}]}])
    assert body["stop_reason"] == "tool_use" and body["content"] == [
        {"type": "tool_use", "id": "toolu_1_0", "name": "read", "input": {"p": "/a"}},
        {"type": "tool_use", "id": "toolu_1_1", "name": "ls", "input": {}}]
    history = [{"role": "user", "content": "CALL read {} CALL ls {}"},
               {"role": "assistant", "content": body["content"]},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": "toolu_1_0", "content": "text A"},
                   {"type": "tool_result", "tool_use_id": "toolu_1_1", "is_error": True,
                    "content": [{"type": "text", "text": "B1"}, {"type": "text", "text": "B2"}]},
                   {"type": "text", "text": "CALL again {}"}]}]
    body = ask(history)
    assert body["content"] == [{"type": "text",
                                "text": "FAKE got tool result(s): read -> text A; ls -> B1B2"}]
    assert body["stop_reason"] == "end_turn"
    body = ask([{"role": "user", "content": "CALL x {}"}],
               output_config={"format": {"type": "json_schema", "schema": SCHEMA}})
    assert json.loads(body["content"][0]["text"]) == SAMPLE
    body = ask([{"role": "user", "content": "CALL x {}"}],
               thinking={"type": "enabled", "budget_tokens": 1024})
    assert body["content"][0] == {"type": "thinking", "thinking": "FAKE thinks.",
                                  "signature": "sig-anthropic-4"}
    assert body["content"][1]["type"] == "tool_use" and body["content"][1]["id"] == "toolu_4_0"
    assert ask([{"role": "user", "content": "Hi"}],
               thinking={"type": "adaptive"})["content"][0]["type"] == "thinking"
    assert ask([{"role": "user", "content": "Hi"}],
               thinking={"type": "disabled"})["content"][0]["type"] == "text"


def test_anthropic_automatic_stream_matches_the_message(anthropic):
    request = {"model": "m", "max_tokens": 9, "thinking": {"type": "enabled"},
               "messages": [{"role": "user", "content": 'CALL f {"path": "/tmp/a.txt"}'}]}
    whole = post(anthropic, MESSAGES, request)[1]
    status, headers, data = call(anthropic, "POST", MESSAGES, dict(request, stream=True))
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = anthropic_events(data)
    names = [name for name, _ in events]
    assert "ping" in names and names[-1] == "message_stop"
    assert events[0][1]["message"]["stop_reason"] is None
    assert events[0][1]["message"]["content"] == []
    deltas = [p["delta"]["type"] for n, p in events if n == "content_block_delta"]
    assert deltas.count("thinking_delta") >= 1 and deltas.count("signature_delta") == 1
    assert deltas.count("input_json_delta") >= 2
    assert deltas.index("signature_delta") < deltas.index("input_json_delta")
    message = rebuild_message(events)
    assert message["content"] == [
        {"type": "thinking", "thinking": "FAKE thinks.", "signature": "sig-anthropic-2"},
        {"type": "tool_use", "id": "toolu_2_0", "name": "f", "input": {"path": "/tmp/a.txt"}}]
    whole["content"][0]["signature"] = "sig-anthropic-2"
    whole["content"][1]["id"] = "toolu_2_0"
    assert dict(message, id=whole["id"]) == whole
    starts = [p["content_block"] for n, p in events if n == "content_block_start"]
    assert starts[1]["input"] == {} and starts[0]["signature"] == ""


def test_anthropic_count_tokens_and_models(anthropic):
    request = {"model": "m", "system": "abcd",
               "messages": [{"role": "user", "content": "abcdefgh"},
                            {"role": "user", "content": [{"type": "text", "text": "ijkl"}]}]}
    assert post(anthropic, "/v1/messages/count_tokens", request) == (200, {"input_tokens": 4})
    assert anthropic.requests[-1]["path"] == "/v1/messages/count_tokens"
    anthropic.models = ["claude-a", "claude-b"]
    status, _, data = call(anthropic, "GET", "/v1/models", headers={"x-api-key": "k"})
    page = json.loads(data)
    assert status == 200 and [m["id"] for m in page["data"]] == ["claude-a", "claude-b"]
    assert page["has_more"] is False and page["last_id"] == "claude-b"
    assert anthropic.requests[-1]["method"] == "GET"
    assert anthropic.requests[-1]["headers"]["x-api-key"] == "k"
    assert json.loads(call(anthropic, "GET", "/v1/models/claude-a")[2])["type"] == "model"
    status, body = post(anthropic, "/v1/complete", {})
    assert status == 404 and body["error"]["type"] == "not_found_error"


# -- FakeAnthropic: builders -----------------------------------------------------------------

def test_anthropic_message_builders(anthropic):
    use = fu.anthropic_usage(20, 5, cache_read=8, cache_creation=2)
    assert use == {"input_tokens": 20, "output_tokens": 5, "cache_read_input_tokens": 8,
                   "cache_creation_input_tokens": 2}
    content = [fu.anthropic_thinking_block("t", "sig-1"), fu.anthropic_redacted_block("xyz"),
               fu.anthropic_text_block("Hi"), fu.anthropic_tool_block("toolu_a", "f", {"a": 1})]
    anthropic.queue(fu.json_reply(fu.anthropic_message(content, "tool_use", use)),
                    fu.json_reply(fu.anthropic_message("cut", "max_tokens")),
                    fu.json_reply(fu.anthropic_message([], "refusal")),
                    fu.json_reply(fu.anthropic_message("x", "stop_sequence", stop_sequence="##")))
    body = post(anthropic, MESSAGES, {})[1]
    assert body["content"] == [
        {"type": "thinking", "thinking": "t", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "xyz"}, {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {"a": 1}}]
    assert body["usage"] == use and body["stop_reason"] == "tool_use"
    body = post(anthropic, MESSAGES, {})[1]
    assert body["stop_reason"] == "max_tokens" and body["content"][0]["text"] == "cut"
    assert post(anthropic, MESSAGES, {})[1]["stop_reason"] == "refusal"
    assert post(anthropic, MESSAGES, {})[1]["stop_sequence"] == "##"


def test_anthropic_stream_builders(anthropic):
    use = fu.anthropic_usage(30, 12, cache_read=4)
    message = fu.anthropic_message(
        [fu.anthropic_thinking_block("long thought", "sig-x"), fu.anthropic_redacted_block("r"),
         fu.anthropic_text_block("Hello there"), fu.anthropic_tool_block("t1", "f", {})],
        "tool_use", use)
    anthropic.queue(fu.anthropic_message_stream(message, pieces=3),
                    fu.anthropic_text_stream("Hello", thinking="hm", signature="s9",
                                             stop="max_tokens"),
                    fu.anthropic_tool_stream([("t1", "f", {"a": 1}), ("t2", "g", {})],
                                             text="Calling."))
    events = anthropic_events(call(anthropic, "POST", MESSAGES, {})[2])
    assert rebuild_message(events) == dict(message, usage=use)
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] == 30 and start["usage"]["output_tokens"] == 1
    final = [p for n, p in events if n == "message_delta"][0]
    assert final["usage"] == use and final["delta"] == {"stop_reason": "tool_use",
                                                        "stop_sequence": None}
    redacted = [e for e in events if e[1].get("index") == 1]
    assert [n for n, _ in redacted] == ["content_block_start", "content_block_stop"]
    assert redacted[0][1]["content_block"] == {"type": "redacted_thinking", "data": "r"}
    partial = [p["delta"]["partial_json"] for n, p in events
               if n == "content_block_delta" and p["delta"]["type"] == "input_json_delta"]
    assert partial == ["{", "}"]
    text_deltas = [p["delta"]["text"] for n, p in events
                   if n == "content_block_delta" and p["delta"]["type"] == "text_delta"]
    assert len(text_deltas) == 3 and "".join(text_deltas) == "Hello there"

    message = rebuild_message(anthropic_events(call(anthropic, "POST", MESSAGES, {})[2]))
    assert message["content"] == [{"type": "thinking", "thinking": "hm", "signature": "s9"},
                                  {"type": "text", "text": "Hello"}]
    assert message["stop_reason"] == "max_tokens"
    message = rebuild_message(anthropic_events(call(anthropic, "POST", MESSAGES, {})[2]))
    assert message["stop_reason"] == "tool_use" and message["content"] == [
        {"type": "text", "text": "Calling."},
        {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
        {"type": "tool_use", "id": "t2", "name": "g", "input": {}}]


def test_anthropic_errors_in_stream_delay_and_cut(anthropic):
    events = fu.anthropic_events(fu.anthropic_message("Hello"))
    anthropic.queue(fu.anthropic_error(429, message="Slow down.", retry_after=3),
                    fu.anthropic_error(529),
                    fu.anthropic_error(400, "invalid_request_error", "Bad."),
                    fu.anthropic_stream(events[:4] + [fu.anthropic_error_event()]),
                    fu.anthropic_stream(events, delay=0.02),
                    fu.anthropic_text_stream("Hello", close_early=True),
                    fu.delayed(0.05, fu.json_reply(fu.anthropic_message("late"))))
    status, headers, data = call(anthropic, "POST", MESSAGES, {})
    assert status == 429 and headers["retry-after"] == "3" and headers["request-id"]
    assert json.loads(data) == {"type": "error", "error": {
        "type": "rate_limit_error", "message": "Slow down."}, "request_id": "req_fake"}
    status, body = post(anthropic, MESSAGES, {})
    assert status == 529 and body["error"]["type"] == "overloaded_error"
    status, body = post(anthropic, MESSAGES, {})
    assert status == 400 and body["error"] == {"type": "invalid_request_error", "message": "Bad."}
    streamed = anthropic_events(call(anthropic, "POST", MESSAGES, {})[2])
    assert [n for n, _ in streamed] == ["message_start", "content_block_start", "ping",
                                        "content_block_delta", "error"]
    assert streamed[-1][1]["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    started = time.monotonic()
    assert len(anthropic_events(call(anthropic, "POST", MESSAGES, {})[2])) == len(events)
    assert time.monotonic() - started >= 0.02 * len(events)
    conn = http.client.HTTPConnection("127.0.0.1", anthropic.port, timeout=PATIENCE)
    conn.request("POST", MESSAGES, body="{}")
    with pytest.raises(http.client.IncompleteRead) as caught:
        conn.getresponse().read()
    conn.close()
    partial = caught.value.partial.decode()
    assert "content_block_stop" in partial and "message_delta" not in partial
    assert "message_stop" not in partial
    started = time.monotonic()
    assert post(anthropic, MESSAGES, {})[1]["content"][0]["text"] == "late"
    assert time.monotonic() - started >= 0.05
    assert len(anthropic.requests) == 7 and not anthropic.script


# -- pauses: how tests script stalls without racing the clock -------------------------------

def test_a_pause_ends_when_the_fake_stops():
    fake = FakeOpenAI().start()
    fake.queue(fu.hang(3600))
    outcome = []

    def ask():
        try:
            outcome.append(call(fake, "POST", "/v1/chat/completions", {})[0])
        except (http.client.HTTPException, OSError) as exc:
            outcome.append(exc)
    asker = threading.Thread(target=ask)
    asker.start()
    try:
        wait_for(lambda: fake.busy == 1, message="the request never reached the fake")
    finally:
        fake.stop()
    wait_for(lambda: fake.busy == 0, message="the paused reply outlived its fake")
    asker.join(PATIENCE)
    assert outcome and not isinstance(outcome[0], int), outcome   # no late answer


def test_pause_after_holds_a_stream_until_its_event(openai):
    more = threading.Event()
    openai.queue(fu.pause_after(fu.text_stream("one two three", pieces=3), writes=2,
                                until=more))
    conn = http.client.HTTPConnection("127.0.0.1", openai.port, timeout=PATIENCE)
    try:
        conn.request("POST", "/v1/chat/completions", body="{}")
        response = conn.getresponse()
        data = b""
        while b"one" not in data:          # the role chunk, then the first words
            data += response.read1(65536)
        assert openai.busy == 1 and b"two" not in data
        more.set()
        data += response.read()
    finally:
        more.set()
        conn.close()
    assert b"two" in data and data.rstrip().endswith(b"data: [DONE]")


# -- FakeResponses: the OpenAI Responses API --------------------------------------------------

import faults  # noqa: E402
from fake_upstream import FakeResponses  # noqa: E402
from responses_checker import (check_responses_object, check_responses_stream,  # noqa: E402
                               parse_sse)

RESPONSES = "/v1/responses"
CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "strict": False,
     "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
    {"type": "custom", "name": "apply_patch", "format": {"type": "grammar", "syntax": "lark",
                                                         "definition": "start: patch"}},
    {"type": "namespace", "name": "agents_v2", "tools": [
        {"type": "function", "name": "start_helper", "parameters": None, "strict": None}]},
    {"type": "namespace", "name": "mcp__notes__", "tools": [
        {"type": "function", "name": "lookup", "parameters": {"type": "object"}}]},
    {"type": "web_search"}]


@pytest.fixture
def responses():
    fake = FakeResponses().start()
    yield fake
    fake.stop()


def responses_stream(fake, payload, path=RESPONSES):
    """The checked events of a streamed reply."""
    status, headers, data = call(fake, "POST", path, dict(payload, stream=True))
    assert status == 200 and headers["content-type"] == "text/event-stream", data
    assert b"[DONE]" not in data
    events = parse_sse(data)
    check_responses_stream(events)
    return events


def responses_whole(fake, payload, path=RESPONSES):
    status, body = post(fake, path, payload)
    assert status == 200, body
    check_responses_object(body)
    return body


def test_responses_hello_whole_and_recording(responses):
    payload = {"model": "gpt-x", "input": "Hi", "store": False}
    body = responses_whole(responses, payload)
    assert body["id"] == "resp_fake_1" and body["model"] == "gpt-x"
    assert body["status"] == "completed" and body["usage"] == fu.responses_usage()
    assert body["output"] == [{"type": "message", "id": "msg_fake_1", "status": "completed",
                               "role": "assistant", "content": [
                                   {"type": "output_text", "text": "FAKE says hello.",
                                    "annotations": [], "logprobs": []}]}]
    assert post(responses, RESPONSES, payload, {"Authorization": "Bearer sk-resp"})[0] == 200
    record = responses.requests[-1]
    assert record["key"] == "sk-resp" and record["path"] == RESPONSES
    assert record["json"] == payload == responses.last
    assert responses.base_url.endswith("/v1") and fu.FAKES["openai-responses"] is FakeResponses


def test_responses_stream_has_the_exact_event_sequence(responses):
    request = {"model": "gpt-y", "reasoning": {"effort": "medium"}, "tools": CODEX_TOOLS,
               "input": [{"type": "message", "role": "user", "content": [
                   {"type": "input_text", "text": 'CALL exec_command {"cmd": "cat todo.md"}'}]}]}
    whole = responses_whole(responses, request)
    events = responses_stream(responses, request)
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] \
        and created["usage"] is None and created["id"] == "resp_fake_2"
    added = events[9][1]["item"]
    assert added["arguments"] == "" and added["status"] == "in_progress"
    final = events[-1][1]["response"]
    assert final["output"] == json.loads(json.dumps(whole["output"]).replace(
        "_fake_1", "_fake_2").replace("enc-fake-1", "enc-fake-2").replace("_1_0", "_2_0"))
    assert whole["output"] == [
        {"type": "reasoning", "id": "rs_fake_1", "status": "completed",
         "summary": [{"type": "summary_text", "text": "FAKE thinks."}],
         "encrypted_content": "enc-fake-1"},
        {"type": "function_call", "id": "fc_1_0", "status": "completed", "call_id": "call_1_0",
         "name": "exec_command", "arguments": '{"cmd": "cat todo.md"}'}]
    assert whole["usage"]["output_tokens_details"] == {"reasoning_tokens": 3}
    assert final["usage"] == whole["usage"] and final["model"] == "gpt-y"


def test_responses_view_reads_every_input_form():
    view = fu.responses_view
    assert view({"input": "Hi there"}) == ("Hi there", [], None, False)
    codex = {"instructions": "Be brief.", "reasoning": {"effort": "low", "summary": "auto"},
             "input": [
                 {"type": "message", "role": "developer",
                  "content": [{"type": "input_text", "text": "You are a test agent."}]},
                 {"type": "message", "id": "msg_u1", "role": "user",
                  "content": [{"type": "input_text", "text": "<env>/tmp</env>"}]},
                 {"type": "message", "role": "user",
                  "content": [{"type": "input_text", "text": "CALL a {} "},
                              {"type": "input_text", "text": "CALL b {}"}]},
                 {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "e"},
                 {"type": "function_call", "id": "fc_1", "call_id": "c-a", "name": "a",
                  "arguments": "{}", "status": "completed"},
                 {"type": "custom_tool_call", "call_id": "c-b", "name": "b", "input": "raw"},
                 {"type": "function_call_output", "id": "fco_1", "call_id": "c-a",
                  "output": "listing"},
                 {"type": "custom_tool_call_output", "call_id": "c-b",
                  "output": [{"type": "input_text", "text": "patched "},
                             {"type": "input_text", "text": "ok"}]},
                 {"type": "function_call_output", "call_id": "c-unknown", "output": None}]}
    assert view(codex) == ("CALL a {} CALL b {}",
                           [("a", "listing"), ("b", "patched ok"), ("?", "")], None, True)
    later = dict(codex, input=codex["input"] + [{"role": "user", "content": "thanks"}])
    assert view(later) == ("thanks", [], None, True)          # easy message, no type
    fmt = {"type": "json_schema", "name": "out", "schema": SCHEMA, "strict": True}
    assert view({"input": "x", "text": {"format": fmt, "verbosity": "low"}})[2] == SCHEMA
    assert view({"input": "x", "text": {"format": {"type": "json_object"}}})[2] is True
    assert view({"input": "x", "text": {"verbosity": "low"}})[2] is None
    assert view({"input": "x", "reasoning": {"summary": "auto"}})[3] is True
    assert view({"input": "x", "reasoning": {"effort": "none"}})[3] is False
    assert view({"input": "x", "reasoning": None})[3] is False
    assert view({}) == ("", [], None, False)


def test_responses_tool_round_trip_through_the_fake(responses):
    first = [{"role": "developer", "content": "You are a test agent."},
             {"type": "message", "role": "user", "content": [
                 {"type": "input_text", "text": 'CALL exec_command {"cmd": "ls"}'}]}]
    request = {"model": "m", "tools": CODEX_TOOLS, "reasoning": {"effort": "high"},
               "input": first}
    body = responses_whole(responses, request)
    assert [item["type"] for item in body["output"]] == ["reasoning", "function_call"]
    call_id = body["output"][1]["call_id"]
    second = first + body["output"] + [
        {"type": "function_call_output", "call_id": call_id, "output": "todo.md"}]
    events = responses_stream(responses, dict(request, input=second))
    final = events[-1][1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][1]["content"][0]["text"] == \
        "FAKE got tool result(s): exec_command -> todo.md"
    deltas = [data["delta"] for _, data in events if data["type"] == "response.output_text.delta"]
    assert len(deltas) >= 2 and "".join(deltas) == final["output"][1]["content"][0]["text"]


def test_responses_custom_and_namespaced_calls_get_unique_call_ids(responses):
    text = ('CALL apply_patch {"input": "*** Begin Patch\\n*** End Patch\\n"} '
            'CALL start_helper {"goal": "x"} CALL agents_v2__start_helper {} '
            'CALL mcp__notes__lookup {"q": 1} CALL exec_command {"cmd": "pwd"} '
            'CALL apply_patch {"not_input": 2}')
    request = {"model": "m", "tools": CODEX_TOOLS, "input": text}
    whole = responses_whole(responses, request)
    events = responses_stream(responses, request)
    for body in (whole, events[-1][1]["response"]):
        items = [{k: v for k, v in item.items() if k not in ("id", "call_id", "status")}
                 for item in body["output"]]
        assert items == [
            {"type": "custom_tool_call", "name": "apply_patch",
             "input": "*** Begin Patch\n*** End Patch\n"},
            {"type": "function_call", "name": "start_helper", "arguments": '{"goal": "x"}',
             "namespace": "agents_v2"},
            {"type": "function_call", "name": "start_helper", "arguments": "{}",
             "namespace": "agents_v2"},
            {"type": "function_call", "name": "lookup", "arguments": '{"q": 1}',
             "namespace": "mcp__notes__"},
            {"type": "function_call", "name": "exec_command", "arguments": '{"cmd": "pwd"}'},
            {"type": "custom_tool_call", "name": "apply_patch", "input": '{"not_input": 2}'}]
    call_ids = [item["call_id"] for body in (whole, events[-1][1]["response"])
                for item in body["output"]]
    assert len(set(call_ids)) == len(call_ids) == 12
    assert all(call_id.startswith("call_") for call_id in call_ids)
    assert [item["id"][:4] for item in whole["output"]] == ["ctc_", "fc_1", "fc_1", "fc_1",
                                                            "fc_1", "ctc_"]
    kinds = {data["type"] for _, data in events}
    assert {"response.custom_tool_call_input.delta", "response.custom_tool_call_input.done",
            "response.function_call_arguments.done"} <= kinds
    assert "response.reasoning_summary_part.added" not in kinds     # no reasoning asked


def test_responses_json_mode(responses):
    fmt = {"type": "json_schema", "name": "sample", "schema": SCHEMA, "strict": True}
    body = responses_whole(responses, {"input": "CALL x {}", "text": {"format": fmt}})
    assert json.loads(body["output"][0]["content"][0]["text"]) == SAMPLE
    events = responses_stream(responses, {"input": "Hi", "text": {"format": {
        "type": "json_object"}}})
    done = [data["text"] for _, data in events if data["type"] == "response.output_text.done"]
    assert [json.loads(text) for text in done] == [{"answer": "FAKE says hello."}]


def test_responses_builders_stream_every_item_and_ending(responses):
    rich = fu.responses_object([
        fu.responses_reasoning_item(["First idea.", "Second idea."], "enc-rich", "rs_rich"),
        fu.responses_reasoning_item(None, "enc-carrier-only", "rs_carrier"),
        fu.responses_message_item([
            fu.responses_text_part("Cited text.", annotations=[
                {"type": "url_citation", "url": "https://example.test/a", "title": "A",
                 "start_index": 0, "end_index": 5}],
                logprobs=[{"token": "Cited", "logprob": -0.5, "bytes": [67],
                           "top_logprobs": []}]),
            fu.responses_refusal_part("Not that part.")], "msg_rich"),
        fu.responses_function_call_item("call_r1", "exec_command", {"cmd": "date"}),
        fu.responses_custom_call_item("call_r2", "apply_patch", "*** Begin Patch\n"),
        {"type": "web_search_call", "id": "ws_rich", "status": "completed"}],
        use=fu.responses_usage(100, 30, reasoning=10, cached=40, cache_write=5),
        model="rich-model", response_id="resp_rich")
    text_events = fu.responses_events(fu.responses_text("Hello world"))
    head = text_events[:5]
    with_error = head + [fu.responses_error_event(head, "overloaded", "server_is_overloaded")]
    responses.queue(
        fu.responses_object_stream(rich, pieces=4),
        fu.responses_text_stream("Cut short", incomplete="max_output_tokens"),
        fu.responses_call_stream([("call_p1", "a", {"x": 1}), ("call_p2", "b", "{bad json"),
                                  fu.responses_custom_call_item("call_p3", "apply_patch", "")],
                                 thought="Plan.", text="Working."),
        fu.responses_stream(head + [fu.responses_failed_event(
            head, "rate_limit_exceeded", "Please try again in 3s.")]),
        fu.responses_stream(with_error + [fu.responses_failed_event(with_error)]),
        fu.json_reply(rich))
    events = responses_stream(responses, {})
    assert events[-1][1]["response"] == rich
    assert [d["item"]["type"] for _, d in events if d["type"] == "response.output_item.added"] \
        == ["reasoning", "reasoning", "message", "function_call", "custom_tool_call",
            "web_search_call"]
    refusal = [d["delta"] for _, d in events if d["type"] == "response.refusal.delta"]
    assert "".join(refusal) == "Not that part." and len(refusal) == 4
    assert [d["summary_index"] for _, d in events
            if d["type"] == "response.reasoning_summary_part.added"] == [0, 1]

    events = responses_stream(responses, {})
    assert events[-1][0] == "response.incomplete"
    final = events[-1][1]["response"]
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"

    with pytest.raises(AssertionError, match="arguments '{bad json' are not JSON"):
        responses_stream(responses, {})

    events = responses_stream(responses, {})
    assert events[-1][0] == "response.failed" and len(events) == 6
    assert events[-1][1]["response"]["error"] == {"code": "rate_limit_exceeded",
                                                  "message": "Please try again in 3s."}
    events = responses_stream(responses, {})
    assert [name for name, _ in events[-2:]] == ["error", "response.failed"]
    assert events[-2][1] == {"type": "error", "sequence_number": 5, "code":
                             "server_is_overloaded", "message": "overloaded", "param": None}
    assert responses_whole(responses, {}) == rich


def test_responses_stream_cut_before_its_end(responses):
    responses.queue(fu.responses_text_stream("Hello there", close_early=True))
    conn = http.client.HTTPConnection("127.0.0.1", responses.port, timeout=PATIENCE)
    conn.request("POST", RESPONSES, body="{}")
    with pytest.raises(http.client.IncompleteRead) as caught:
        conn.getresponse().read()
    conn.close()
    events = parse_sse(caught.value.partial)
    assert events[-1][0] == "response.output_item.done"
    with pytest.raises(AssertionError, match="no terminal event"):
        check_responses_stream(events)


def test_responses_errors_other_paths_and_counts(responses):
    responses.queue(fu.responses_error(429, "Slow down.", retry_after=3),
                    fu.responses_error(400, "Bad input.", param="input"),
                    fu.responses_error(503))
    status, headers, data = call(responses, "POST", RESPONSES, {})
    assert status == 429 and headers["retry-after"] == "3" and headers["x-request-id"]
    assert json.loads(data) == {"error": {"message": "Slow down.", "type": "requests",
                                          "param": None, "code": "rate_limit_exceeded"}}
    assert post(responses, RESPONSES, {}) == (400, {"error": {
        "message": "Bad input.", "type": "invalid_request_error", "param": "input",
        "code": None}})
    status, body = post(responses, RESPONSES, {})
    assert status == 503 and body["error"]["code"] == "server_is_overloaded"
    status, body = post(responses, "/v1/chat/completions", {"messages": []})
    assert status == 404 and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"] == "Invalid URL (POST /v1/chat/completions)"
    assert post(responses, "/v1/responses/input_tokens", {
        "input": "abcdefgh", "instructions": "abcd"}) == (200, {
            "object": "response.input_tokens", "input_tokens": 3})
    assert post(responses, "/v1/embeddings", {"input": "a"})[1]["data"][0]["index"] == 0
    assert call(responses, "GET", "/v1/models")[0] == 200


def test_faults_speak_openai_responses(responses):
    kind = faults.RESPONSES
    assert kind == "openai-responses" and faults.FAKES[kind] is FakeResponses
    responses.rules["key-b"] = faults.error(kind, 429, "key-b is over its limit", retry_after=7)
    status, headers, data = call(responses, "POST", RESPONSES, {},
                                 {"Authorization": "Bearer key-b"})
    assert status == 429 and headers["retry-after"] == "7"
    assert json.loads(data)["error"]["message"] == "key-b is over its limit"
    status, body = post(responses, RESPONSES, {}, {"Authorization": "Bearer key-a"})
    assert status == 200 and body["output"][0]["content"][0]["text"] == "FAKE says hello."
    del responses.rules["key-b"]
    responses.queue(faults.whole(kind, "whole text"), faults.stream(kind),
                    faults.stream(kind, "error"))
    body = responses_whole(responses, {})
    assert body["output"][0]["content"][0]["text"] == "whole text"
    for ending in ("finished", "error"):
        data = call(responses, "POST", RESPONSES, {})[2]
        events = parse_sse(data)
        check_responses_stream(events)
        text, how, keepalives = faults.read_stream(kind, data)
        assert (how, keepalives) == (ending, 0)
        assert text == (faults.FIRST_WORDS + faults.REST if ending == "finished"
                        else faults.FIRST_WORDS)
    assert events[-1][1]["response"]["error"] == {"code": "server_error",
                                                  "message": "upstream broke mid-stream"}
