"""End to end: the real server on 127.0.0.1, a Gemini client, a fake OpenAI upstream."""

import base64
import json
import re
import socket

from conftest import PATIENCE, gp, sse_payloads, wait_for
from fake_upstream import (chunk, completion, json_reply, raw_reply, sse, stream_reply,
                           text_stream, tool_stream, usage)

GENERATE = "/v1beta/models/gemini-2.5-pro:generateContent"
STREAM = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"


def user(*texts):
    return {"role": "user", "parts": [{"text": t} for t in texts]}


def stream(proxy, payload, path=STREAM, headers=None):
    status, resp_headers, data = proxy.request("POST", path, payload, headers)
    return status, resp_headers, data


def parts_of(payloads):
    return [p for chunk_ in payloads for p in chunk_["candidates"][0]["content"]["parts"]]


def text_of(payloads):
    return "".join(p.get("text", "") for p in parts_of(payloads) if not p.get("thought"))


def test_plain_generate(proxy, fake):
    fake.queue(json_reply(completion("Hello from upstream", use=usage(12, 5))))
    status, body = proxy.post(GENERATE, {"contents": [user("Hi")]})
    assert status == 200
    candidate = body["candidates"][0]
    assert candidate["content"] == {"role": "model", "parts": [{"text": "Hello from upstream"}]}
    assert candidate["finishReason"] == "STOP"
    assert body["usageMetadata"] == {"promptTokenCount": 12, "candidatesTokenCount": 5,
                                     "totalTokenCount": 17}
    sent = fake.last
    assert sent["model"] == "fake-model"
    assert sent["messages"] == [{"role": "user", "content": "Hi"}]
    assert "stream" not in sent
    auth = fake.requests[-1]["headers"]
    assert auth.get("authorization") == "Bearer sk-upstream-secret-1234"


def test_stream_is_strict_sse_with_finish_and_usage_last(proxy, fake):
    fake.queue(text_stream("Streaming works, 世界\u2028!", pieces=4,
                           use=usage(20, 9)))
    status, headers, data = stream(proxy, {"contents": [user("Hi")]})
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    payloads = sse_payloads(data)
    text = "".join(p.get("text", "") for p in parts_of(payloads))
    assert text == "Streaming works, 世界\u2028!"
    assert all(p != {"text": ""} for p in parts_of(payloads))
    assert all("finishReason" not in c["candidates"][0] for c in payloads[:-1])
    assert all("usageMetadata" not in c for c in payloads[:-1])
    last = payloads[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"]["promptTokenCount"] == 20
    assert last["usageMetadata"]["totalTokenCount"] == 29
    sent = fake.last
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_stream_without_alt_is_a_json_array(proxy, fake):
    fake.queue(text_stream("one two three"))
    status, headers, data = stream(
        proxy, {"contents": [user("Hi")]},
        path="/v1beta/models/gemini-2.5-pro:streamGenerateContent")
    assert status == 200 and headers["content-type"] == "application/json"
    chunks = json.loads(data)
    assert isinstance(chunks, list) and len(chunks) >= 2
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert "".join(p.get("text", "") for c in chunks
                   for p in c["candidates"][0]["content"]["parts"]) == "one two three"


READ_FILE = {"name": "read_file", "description": "Reads a file.",
             "parametersJsonSchema": {"type": "object",
                                      "properties": {"file_path": {"type": "string"}},
                                      "required": ["file_path"]}}
GLOB = {"name": "glob", "parameters": {"type": "OBJECT", "properties": {
    "pattern": {"type": "STRING", "nullable": True}}, "required": ["pattern"]}}


def test_tool_round_trip_over_several_turns(proxy, fake):
    tools = [{"functionDeclarations": [READ_FILE]}]
    # turn 1: the model calls read_file
    fake.queue(tool_stream([("functions.read_file:0", "read_file",
                             {"file_path": "/tmp/a.txt"})]))
    status, _, data = stream(proxy, {"contents": [user("Read /tmp/a.txt")], "tools": tools})
    assert status == 200
    payloads = sse_payloads(data)
    calls = [p for p in parts_of(payloads) if "functionCall" in p]
    assert calls == [{"functionCall": {"name": "read_file", "args": {"file_path": "/tmp/a.txt"},
                                       "id": "functions.read_file:0"}}]
    assert "functionCall" in json.dumps(payloads[-1])      # the calls ride with the finish
    assert payloads[-1]["candidates"][0]["finishReason"] == "STOP"
    sent_tools = fake.last["tools"]
    assert sent_tools == [{"type": "function", "function": {
        "name": "read_file", "description": "Reads a file.",
        "parameters": READ_FILE["parametersJsonSchema"]}}]

    # turn 2: the client sends the result back (ids kept exactly), the model answers
    history = [user("Read /tmp/a.txt"),
               {"role": "model", "parts": calls},
               {"role": "user", "parts": [{"functionResponse": {
                   "id": "functions.read_file:0", "name": "read_file",
                   "response": {"output": "hello"}}}]}]
    fake.queue(text_stream("The file says hello."))
    status, _, data = stream(proxy, {"contents": history, "tools": tools})
    assert status == 200
    assert text_of(sse_payloads(data)) == "The file says hello."
    messages = fake.last["messages"]
    assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "functions.read_file:0", "type": "function",
         "function": {"name": "read_file", "arguments": '{"file_path": "/tmp/a.txt"}'}}]}
    assert messages[2] == {"role": "tool", "tool_call_id": "functions.read_file:0",
                           "content": "hello"}

    # turn 3: a follow-up question in the same conversation
    history += [{"role": "model", "parts": [{"text": "The file says hello."}]},
                user("Thanks. Now glob *.py")]
    fake.queue(json_reply(completion("Sure.")))
    status, body = proxy.post(GENERATE, {"contents": history, "tools": tools})
    assert status == 200 and body["candidates"][0]["content"]["parts"] == [{"text": "Sure."}]
    assert [m["role"] for m in fake.last["messages"]] == \
        ["user", "assistant", "tool", "assistant", "user"]


def test_parallel_tool_calls_and_llama_cpp_fragments(proxy, fake):
    fake.queue(tool_stream([("call_a", "read_file", {"file_path": "a.txt"}),
                            ("call_b", "glob", {"pattern": "*.py"})], repeat_ids=True))
    status, _, data = stream(proxy, {"contents": [user("two at once")],
                                     "tools": [{"functionDeclarations": [READ_FILE, GLOB]}]})
    assert status == 200
    payloads = sse_payloads(data)
    calls = [p["functionCall"] for p in parts_of(payloads) if "functionCall" in p]
    assert calls == [{"name": "read_file", "args": {"file_path": "a.txt"}, "id": "call_a"},
                     {"name": "glob", "args": {"pattern": "*.py"}, "id": "call_b"}]
    # the Gemini `parameters` schema reached the upstream as JSON Schema
    glob_schema = fake.last["tools"][1]["function"]["parameters"]
    assert glob_schema == {"type": "object", "properties": {
        "pattern": {"type": ["string", "null"]}}, "required": ["pattern"]}

    # both results go back as two tool messages answering the two calls
    history = [user("two at once"), {"role": "model", "parts": [
        {"functionCall": calls[0]}, {"functionCall": calls[1]}]},
        {"role": "user", "parts": [
            {"functionResponse": {"id": "call_a", "name": "read_file",
                                  "response": {"output": "A"}}},
            {"functionResponse": {"id": "call_b", "name": "glob",
                                  "response": {"error": "no match"}}}]}]
    fake.queue(json_reply(completion("done")))
    assert proxy.post(GENERATE, {"contents": history})[0] == 200
    tool_messages = [m for m in fake.last["messages"] if m["role"] == "tool"]
    assert tool_messages == [
        {"role": "tool", "tool_call_id": "call_a", "content": "A"},
        {"role": "tool", "tool_call_id": "call_b", "content": '{"error": "no match"}'}]


def test_image_reaches_upstream_as_data_url(proxy, fake):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    fake.queue(json_reply(completion("A red square.")))
    status, body = proxy.post(GENERATE, {"contents": [{"role": "user", "parts": [
        {"text": "Describe"}, {"inlineData": {"mimeType": "image/png", "data": png}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/x.jpg"}}]}]})
    assert status == 200
    assert fake.last["messages"][0]["content"] == [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.jpg"}}]


def test_reasoning_shown_as_thoughts_and_carried_back_on_tool_turns(proxy, fake):
    fake.queue(tool_stream([("call_1", "read_file", {"file_path": "x"})],
                           reasoning="I should read x first.",
                           use=usage(30, 20, reasoning=12)))
    request = {"contents": [user("what is in x?")],
               "tools": [{"functionDeclarations": [READ_FILE]}],
               "generationConfig": {"thinkingConfig": {"includeThoughts": True,
                                                       "thinkingBudget": 8192}}}
    status, _, data = stream(proxy, request)
    assert status == 200
    payloads = sse_payloads(data)
    parts = parts_of(payloads)
    assert {"text": "I should read x first.", "thought": True} in parts
    call = next(p for p in parts if "functionCall" in p)
    assert gp.unpack_thinking(call["thoughtSignature"])
    assert payloads[-1]["usageMetadata"] == {"promptTokenCount": 30,
                                             "candidatesTokenCount": 8,
                                             "thoughtsTokenCount": 12, "totalTokenCount": 50}
    # Gemini CLI keeps the signature (it drops thought parts); the reasoning goes back
    history = [user("what is in x?"), {"role": "model", "parts": [call]},
               {"role": "user", "parts": [{"functionResponse": {
                   "id": "call_1", "name": "read_file", "response": {"output": "42"}}}]}]
    fake.queue(json_reply(completion("It holds 42.")))
    assert proxy.post(GENERATE, {"contents": history})[0] == 200
    assistant = fake.last["messages"][1]
    assert assistant["reasoning_content"] == "I should read x first."
    assert assistant["tool_calls"][0]["id"] == "call_1"


def test_thoughts_hidden_unless_asked(proxy, fake):
    fake.queue(text_stream("Answer.", reasoning="secret musing"))
    status, _, data = stream(proxy, {"contents": [user("q")]})
    assert "secret musing" not in data.decode()
    assert text_of(sse_payloads(data)) == "Answer."


def test_json_mode_uses_response_format_json_schema(proxy, fake):
    fake.queue(json_reply(completion('{"complexity_score": 3}')))
    schema = {"type": "OBJECT", "properties": {"complexity_score": {"type": "INTEGER"}},
              "required": ["complexity_score"]}
    status, body = proxy.post(GENERATE, {"contents": [user("rate it")], "generationConfig": {
        "responseMimeType": "application/json", "responseJsonSchema": schema,
        "temperature": 0, "topP": 1, "topK": 64, "maxOutputTokens": 120}})
    assert status == 200
    assert json.loads(body["candidates"][0]["content"]["parts"][0]["text"]) == \
        {"complexity_score": 3}
    sent = fake.last
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "response", "strict": False, "schema": {
            "type": "object", "properties": {"complexity_score": {"type": "integer"}},
            "required": ["complexity_score"]}}}
    assert sent["temperature"] == 0 and sent["top_p"] == 1 and sent["max_tokens"] == 120
    assert "top_k" not in sent     # OpenAI rejects it; off unless the upstream says so


def test_count_tokens_counts_locally(proxy, fake):
    status, body = proxy.post("/v1beta/models/gemini-2.5-pro:countTokens",
                              {"contents": [user("a" * 400)]})
    assert status == 200 and body["totalTokens"] == 100
    png = base64.b64encode(b"img").decode()
    status, body = proxy.post("/v1beta/models/gemini-2.5-pro:countTokens", {
        "generateContentRequest": {"model": "models/gemini-2.5-pro", "contents": [
            {"role": "user", "parts": [{"text": "abcd"},
                                       {"inlineData": {"mimeType": "image/png",
                                                       "data": png}}]}]}})
    assert status == 200 and body["totalTokens"] == 1 + 258
    assert fake.requests == []    # never generates


def test_upstream_429_stays_429_with_retry_info(proxy_factory, fake):
    # Without retries: with them, the proxy looks at the pool again, finds the key resting
    # and may tell the client its remaining rest (6.999s) instead of the provider's 7s.
    proxy = no_retries(proxy_factory, fake)
    fake.queue(json_reply({"error": {"message": "Rate limit reached", "type": "rate_limit"}},
                          status=429, headers={"Retry-After": "7"}))
    status, headers, data = proxy.request("POST", STREAM, {"contents": [user("Hi")]})
    assert status == 429
    assert headers["content-type"].startswith("application/json")
    error = json.loads(data)["error"]
    assert error["code"] == 429 and error["status"] == "RESOURCE_EXHAUSTED"
    assert "Rate limit reached" in error["message"]
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"} \
        in error["details"]


def no_retries(proxy_factory, fake):
    """A proxy that shows the first upstream failure as it is (retries: test_resilience)."""
    return proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "retries": 0}},
                          "default_model": "fake-model"})


def test_upstream_500_and_garbage(proxy_factory, fake):
    proxy = no_retries(proxy_factory, fake)
    fake.queue(raw_reply("<html>oops</html>", status=500, content_type="text/html"))
    status, body = proxy.post(GENERATE, {"contents": [user("Hi")]})
    assert status == 500 and body["error"]["status"] == "INTERNAL"
    assert "oops" in body["error"]["message"]
    fake.queue(raw_reply("this is not json", status=200))
    status, body = proxy.post(GENERATE, {"contents": [user("Hi")]})
    assert status == 502 and "invalid JSON" in body["error"]["message"]
    fake.queue(json_reply({"object": "chat.completion"}))
    status, body = proxy.post(GENERATE, {"contents": [user("Hi")]})
    assert status == 502 and "no choices" in body["error"]["message"]


def test_upstream_error_inside_a_200_stream_becomes_http_error(proxy_factory, fake):
    proxy = no_retries(proxy_factory, fake)
    fake.queue(stream_reply([{"error": {"message": "quota exceeded", "code": 429}}]))
    status, _, data = stream(proxy, {"contents": [user("Hi")]})
    assert status == 429 and b"quota exceeded" in data


def test_stream_cut_mid_way_ends_without_finish_reason(proxy, fake):
    fake.queue(stream_reply([chunk({"content": "partial "}), chunk({"content": "answer"})],
                            close_early=True))
    status, _, data = stream(proxy, {"contents": [user("Hi")]})
    assert status == 200
    payloads = sse_payloads(data)
    assert "partial " in json.dumps(payloads)
    assert all("finishReason" not in p["candidates"][0] for p in payloads)


def test_upstream_secret_never_reaches_the_client(proxy, fake):
    fake.queue(json_reply({"error": {"message": "bad key sk-upstream-secret-1234"}},
                          status=401))
    status, body = proxy.post(GENERATE, {"contents": [user("Hi")]})
    assert status == 401
    assert "sk-upstream-secret-1234" not in json.dumps(body)
    assert "[REDACTED]" in body["error"]["message"]


def endless_stream(handler, request):
    """A stream that goes on until its reader hangs up (or the fake stops)."""
    handler.start_stream()
    while handler.write_chunk(sse(chunk({"content": "word "})).encode()):
        handler.pause(0.02)


def test_client_disconnect_mid_stream_closes_upstream(proxy, fake):
    fake.queue(endless_stream)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=PATIENCE)
    body = json.dumps({"contents": [user("long answer please")]}).encode()
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (STREAM.encode(), len(body), body))
    head = b""
    while b"\r\n" not in head:
        more = sock.recv(4096)
        assert more, "the proxy closed the connection"
        head += more
    assert head.startswith(b"HTTP/1.1 200 OK")
    sock.close()
    wait_for(lambda: fake.aborted_streams, message="the upstream stream was not closed")
    assert fake.aborted_streams == 1
    proxy.wait_until_idle()
    assert proxy.server.proxy.pool.open == 0   # the broken connection was not pooled


def test_keep_alive_both_sides(proxy, fake):
    # The proxy puts the upstream connection back in its pool as the request ends in it,
    # which can be a moment after the client has its answer: each request waits for that
    # (proxy.wait_until_idle) before the next one can find the connection there.
    conn = proxy.connection()
    for i in range(3):
        fake.queue(json_reply(completion("reply %d" % i)))
        conn.request("POST", GENERATE, body=json.dumps({"contents": [user("Hi")]}),
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        assert ("reply %d" % i) in response.read().decode()
        proxy.wait_until_idle()
    for i in range(2):
        fake.queue(text_stream("streamed %d" % i))
        conn.request("POST", STREAM, body=json.dumps({"contents": [user("Hi")]}),
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        assert text_of(sse_payloads(response.read())) == "streamed %d" % i
        proxy.wait_until_idle()
    conn.close()
    assert len(fake.requests) == 5
    assert fake.connections == 1, "the upstream connection was not reused"


def test_chunked_request_body(proxy, fake):
    fake.queue(json_reply(completion("got it")))
    body = json.dumps({"contents": [user("chunked hello")]}).encode()
    pieces = [body[:10], body[10:25], body[25:]]
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + \
        b"0\r\nX-Trailer: yes\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=PATIENCE)
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Expect: 100-continue\r\n\r\n" % GENERATE.encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
    sock.sendall(chunked)
    data = b""
    while b"got it" not in data:
        more = sock.recv(65536)
        assert more
        data += more
    sock.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert fake.last["messages"][0]["content"] == "chunked hello"


def test_any_model_name_is_accepted_and_mapped(proxy_factory, fake):
    proxy = proxy_factory({
        "upstreams": {"fake": {"base_url": fake.base_url}},
        "model_mapping": {"gemini-2.5-pro": "big-model", "gemini-*-flash*": "small-model"},
        "default_model": "default-model"})
    for model, expected in (("gemini-2.5-pro", "big-model"),
                            ("gemini-3-flash-preview", "small-model"),
                            ("gemini-3.5-flash-lite", "small-model"),
                            ("some-future-model", "default-model")):
        fake.queue(json_reply(completion("ok")))
        status, _ = proxy.post("/v1beta/models/%s:generateContent" % model,
                               {"contents": [user("Hi")]})
        assert status == 200
        assert fake.last["model"] == expected


def test_access_log_line_per_request(proxy, fake, caplog):
    import logging
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    fake.queue(json_reply(completion("ok", use=usage(12, 5))))
    proxy.post(GENERATE, {"contents": [user("Hi")]})
    fake.queue(text_stream("streamed"))
    proxy.request("POST", STREAM, {"contents": [user("Hi")]})
    proxy.post("/v1beta/models/gemini-2.5-pro:countTokens", {"contents": [user("abcd")]})
    proxy.post(GENERATE, {"contents": [user("Hi")], "bogus": True})

    def access_lines():      # each is logged as its response ends: soon after the client
        return [r.getMessage() for r in caplog.records if r.name == "gemini_proxy.access"]
    wait_for(lambda: len(access_lines()) >= 4, message=lambda: access_lines())
    lines = access_lines()
    assert len(lines) == 4
    assert lines[0].startswith("POST /v1beta/models/gemini-2.5-pro:generateContent 200 "
                               "gemini-2.5-pro -> fake/fake-model conv rid=")
    assert re.search(r" ttfb=\d+\.\d{3}s tokens=12\+5$", lines[0]), lines[0]
    assert " conv stream rid=" in lines[1] and lines[1].split()[2] == "200"
    assert ":countTokens 200 " in lines[2]
    assert " 400 " in lines[3] and "bogus" in lines[3]
    assert all("sk-upstream-secret-1234" not in line for line in lines)
