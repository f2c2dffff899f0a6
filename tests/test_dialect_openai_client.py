"""OpenAI Chat Completions as the client's dialect: requests in, replies, streams and
errors out, embeddings (pure functions)."""

import base64
import json
import struct

import pytest

import gemini_proxy as gp
from gemini_proxy import (CONTENT_FILTER, LENGTH, STOP, TOOL_CALLS, Choice, Finish, Part,
                          Reply, Thinking, Usage)



def options(**kw):
    """Reply options with a fresh reasoning cache, so tests do not share one."""
    return gp.ReplyOptions(reasoning_cache=gp.ReasoningCache(), **kw)

def request(**fields):
    return dict({"model": "gpt-x", "messages": [{"role": "user", "content": "Hi"}]}, **fields)


def decode(payload, **kw):
    return gp.decode_openai_request(payload, cache=kw.pop("cache", gp.ReasoningCache()), **kw)


def chunks_of(data):
    text = data.decode("ascii")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] for e in events]


def test_messages_of_every_role():
    png = base64.b64encode(b"png").decode()
    chat = decode(request(messages=[
        {"role": "system", "content": "sys"},
        {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
        {"role": "user", "content": [
            {"type": "text", "text": "see"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png,
                                                "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}},
            {"type": "input_audio", "input_audio": {"data": "UklG", "format": "mp3"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,UERG",
                                      "filename": "a.pdf"}}]},
        {"role": "assistant", "content": None, "reasoning_content": "think",
         "tool_calls": [
             {"id": "c1", "type": "function", "function": {"name": "read",
                                                           "arguments": '{"p": 1}'}},
             {"id": "c2", "type": "function", "function": {"name": "glob",
                                                           "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
        {"role": "user", "content": "thanks"}]))
    assert [p.text for p in chat.system] == ["sys", "dev"]
    user, assistant, results, last = chat.messages
    assert [(p.type, p.mime) for p in user.parts] == [
        ("text", ""), ("media", "image/png"), ("media", ""), ("media", "audio/mpeg"),
        ("media", "application/pdf")]
    assert user.parts[1].data == png and user.parts[1].extra == {"detail": "low"}
    assert user.parts[2].url == "https://x/y.jpg"
    assert user.parts[4].extra == {"filename": "a.pdf"}
    assert [(p.type, p.text) for p in assistant.parts[:1]] == [("thinking", "think")]
    assert [(p.id, p.name, p.args) for p in assistant.parts[1:]] == [
        ("c1", "read", {"p": 1}), ("c2", "glob", {})]
    assert [(p.id, p.name, gp.tool_result_text(p)) for p in results.parts] == [
        ("c1", "read", "one"), ("c2", "glob", "two")]
    assert last.parts[0].text == "thanks"


def test_sampling_tools_and_formats():
    chat = decode(request(
        tools=[{"type": "function", "function": {"name": "f", "description": "d",
                                                 "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        parallel_tool_calls=False, response_format={"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"type": "object"}}},
        reasoning_effort="high", max_completion_tokens=99, max_tokens=5, stop="END", n=2,
        temperature=0.1, top_p=0.2, presence_penalty=0.3, frequency_penalty=0.4, seed=5,
        top_k=7, user="u", stream=True, stream_options={"include_usage": True},
        metadata={"k": "v"}, store=False))
    assert (chat.tool_choice, chat.allowed_tools, chat.parallel_tool_calls) == \
        ("required", ["f"], False)
    assert (chat.response_format.schema, chat.response_format.name) == ({"type": "object"},
                                                                        "answer")
    assert chat.thinking == Thinking(effort="high", include_thoughts=True)
    assert (chat.max_tokens, chat.stop, chat.n, chat.seed, chat.top_k, chat.user) == \
        (99, ["END"], 2, 5, 7, "u")
    assert chat.stream is True
    assert decode(request(response_format={"type": "json_object"})).response_format.schema \
        is None
    assert decode(request(response_format={"type": "text"})).response_format is None
    chat = decode(request(tool_choice={"type": "allowed_tools", "allowed_tools": {
        "mode": "required", "tools": [{"type": "function", "function": {"name": "a"}}]}}))
    assert (chat.tool_choice, chat.allowed_tools) == ("required", ["a"])


def test_legacy_functions():
    chat = decode(request(functions=[{"name": "old", "parameters": {"type": "object"}}],
                          function_call={"name": "old"}, messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None,
         "function_call": {"name": "old", "arguments": "{}"}},
        {"role": "function", "name": "old", "content": "done"}]))
    assert [t.name for t in chat.tools] == ["old"]
    assert (chat.tool_choice, chat.allowed_tools) == ("required", ["old"])
    assert chat.messages[1].parts[0].name == "old"
    assert gp.tool_result_text(chat.messages[2].parts[0]) == "done"


@pytest.mark.parametrize("payload, says", [
    (request(mystery=True), "Unrecognized request argument supplied: mystery"),
    ({"messages": []}, "model"),
    (request(messages=[]), "at least one message"),
    (request(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
    (request(messages=[{"role": "assistant", "tool_calls": [
        {"id": "1", "function": {"name": "f", "arguments": "{nope"}}]}]),
     "messages[0].tool_calls[0].function.arguments"),
    (request(messages=[{"role": "user", "content": [{"type": "hologram"}]}]),
     "unknown content part type"),
    (request(tools=[{"type": "custom", "custom": {"name": "x"}}]), "only function tools"),
    (request(tool_choice="sometimes"), "tool_choice"),
    (request(temperature="warm"), "temperature"),
    (request(messages=[{"role": "user", "content": [{"type": "file", "file": {
        "file_id": "file-1"}}]}]), "file ids"),
])
def test_bad_requests_name_the_field(payload, says):
    with pytest.raises(gp.ClientError) as err:
        decode(payload)
    assert says in err.value.message


def test_vendor_fields_are_accepted():
    decode(request(top_k=3, min_p=0.1, repetition_penalty=1.1, enable_thinking=True,
                   chat_template_kwargs={"x": 1}, thinking={"type": "enabled"}))
    decode(request(anything_at_all=1), strict=False)


# -- replies ------------------------------------------------------------------------------

def test_response_object():
    reply = Reply("r", "up", [Choice([
        Part(gp.THINKING, text="why", origin="openai"), Part(gp.TEXT, text="Hi "),
        Part(gp.TEXT, text="there"),
        Part(gp.TOOL_CALL, id="c1", name="f", args={"é": 1}, signature="SIG",
             origin="gemini")], Finish(TOOL_CALLS))],
        Usage(10, 6, cached_tokens=2, reasoning_tokens=3), created=123)
    body = gp.encode_openai_response(reply, "gpt-x", "chatcmpl-1", options())
    choice = body["choices"][0]
    assert body["id"] == "chatcmpl-1" and body["object"] == "chat.completion"
    assert body["model"] == "gpt-x" and body["created"] == 123
    assert choice["message"]["content"] == "Hi there"
    assert choice["message"]["reasoning_content"] == "why"
    assert choice["message"]["tool_calls"] == [{
        "id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"é": 1}'},
        "extra_content": {"google": {"thought_signature": "SIG"}}}]
    assert choice["finish_reason"] == "tool_calls"
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16,
                             "prompt_tokens_details": {"cached_tokens": 2},
                             "completion_tokens_details": {"reasoning_tokens": 3}}


@pytest.mark.parametrize("reason, finish", [(STOP, "stop"), (LENGTH, "length"),
                                            (TOOL_CALLS, "tool_calls"),
                                            (CONTENT_FILTER, "content_filter"),
                                            (gp.MALFORMED_TOOL_CALL, "stop")])
def test_finish_reasons(reason, finish):
    reply = Reply("r", "m", [Choice([], Finish(reason))], Usage())
    body = gp.encode_openai_response(reply, "m", "c", options())
    assert body["choices"][0]["finish_reason"] == finish
    assert body["choices"][0]["message"]["content"] is None


def test_signatures_survive_a_client_that_drops_them():
    cache = gp.ReasoningCache()
    reply = Reply("r", "m", [Choice([
        Part(gp.THINKING, text="signed thought", signature="ASIG", origin="anthropic"),
        Part(gp.TOOL_CALL, id="toolu_1", name="f", args={}),
        Part(gp.TOOL_CALL, id="call_g", name="g", args={}, signature="GSIG",
             origin="gemini")], Finish(TOOL_CALLS))], Usage())
    body = gp.encode_openai_response(reply, "m", "c", gp.ReplyOptions(reasoning_cache=cache))
    message = body["choices"][0]["message"]
    # the client keeps the text it was shown and drops every unknown field
    echoed = {"role": "assistant", "content": None,
              "reasoning_content": message["reasoning_content"],
              "tool_calls": [{"id": c["id"], "type": "function", "function": c["function"]}
                             for c in message["tool_calls"]]}
    chat = decode(request(messages=[{"role": "user", "content": "q"}, echoed]), cache=cache)
    parts = chat.messages[1].parts
    assert [(p.type, p.text, p.signature, p.origin) for p in parts] == [
        ("thinking", "signed thought", "ASIG", "anthropic"), ("tool_call", "", "", ""),
        ("tool_call", "", "GSIG", "gemini")]
    # without the cache, the text alone comes back, as foreign reasoning
    chat = decode(request(messages=[{"role": "user", "content": "q"}, echoed]))
    assert [(p.type, p.origin) for p in chat.messages[1].parts][0] == ("thinking", "openai")


def test_cache_is_bounded_and_expires():
    cache = gp.ReasoningCache(max_entries=2, ttl=60)
    for key in ("a", "b", "c"):
        cache.put(key, [Part(gp.THINKING, text=key)])
    assert cache.get("a") == [] and cache.get("c")[0].text == "c"
    cache = gp.ReasoningCache(ttl=0.0001)
    cache.put("x", [Part(gp.THINKING)])
    import time
    time.sleep(0.01)
    assert cache.get("x") == []


def test_stream_chunks():
    events = [Part(gp.THINKING, text="hm", origin="openai"), Part(gp.TEXT, text="A"),
              Part(gp.TEXT, text=""), Part(gp.TOOL_CALL, id="c1", name="f", args={"x": 1}),
              Part(gp.TOOL_CALL, id="c2", name="g", args={}),
              Finish(TOOL_CALLS, Usage(5, 4))]
    data = b"".join(gp.encode_openai_stream(iter(events), "gpt-x", "chatcmpl-9",
                                            options(include_usage=True)))
    chunks = chunks_of(data)
    assert chunks[-1] == "[DONE]"
    bodies = [json.loads(c) for c in chunks[:-1]]
    assert all(b["id"] == "chatcmpl-9" and b["object"] == "chat.completion.chunk"
               and b["model"] == "gpt-x" for b in bodies)
    deltas = [b["choices"][0]["delta"] if b["choices"] else None for b in bodies]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"reasoning_content": "hm"} and deltas[2] == {"content": "A"}
    assert deltas[3]["tool_calls"][0]["index"] == 0 and deltas[4]["tool_calls"][0]["index"] == 1
    assert json.loads(deltas[3]["tool_calls"][0]["function"]["arguments"]) == {"x": 1}
    assert bodies[5]["choices"][0]["finish_reason"] == "tool_calls" and deltas[5] == {}
    assert bodies[6]["choices"] == [] and bodies[6]["usage"]["total_tokens"] == 9
    plain = chunks_of(b"".join(gp.encode_openai_stream(
        iter([Part(gp.TEXT, text="x"), Finish(STOP, Usage(1, 1))]), "m", "c", options())))
    assert not any('"usage"' in c for c in plain)


def test_stream_failure_has_no_done_and_its_error_chunk_is_rendered_apart():
    def events():
        yield Part(gp.TEXT, text="partial")
        raise gp.UpstreamError("upstream went away", status=502)
    out = []
    with pytest.raises(gp.UpstreamError):
        for chunk in gp.encode_openai_stream(events(), "m", "c", options(include_usage=True)):
            out.append(chunk)
    assert "[DONE]" not in chunks_of(b"".join(out))
    error = gp.openai_stream_error_event(gp.UpstreamError("upstream went away", status=502))
    assert json.loads(chunks_of(error)[0]) == {"error": {
        "message": "upstream went away", "type": "server_error", "code": 502}}
    with pytest.raises(gp.UpstreamError):   # events that end without a finish
        b"".join(gp.encode_openai_stream(iter([Part(gp.TEXT, text="x")]), "m", "c"))


def test_stream_with_several_choices_finishes_each_then_one_usage_and_done():
    events = [Part(gp.TEXT, text="a0", choice=0), Part(gp.TEXT, text="b1", choice=1),
              Part(gp.TOOL_CALL, id="c1", name="f", args={}, choice=1),
              Finish(STOP, Usage(3, 2), choice=0), Finish(TOOL_CALLS, Usage(3, 2), choice=1)]
    chunks = chunks_of(b"".join(gp.encode_openai_stream(iter(events), "m", "c",
                                                       options(include_usage=True))))
    assert chunks[-1] == "[DONE]"
    bodies = [json.loads(c) for c in chunks[:-1]]
    by_choice = {}
    for body in bodies[:-1]:
        (choice,) = body["choices"]
        by_choice.setdefault(choice["index"], []).append(choice)
    assert [c["delta"] for c in by_choice[0]] == [
        {"role": "assistant", "content": ""}, {"content": "a0"}, {}]
    assert by_choice[1][2]["delta"]["tool_calls"][0]["index"] == 0
    assert [c["finish_reason"] for c in by_choice[1]][-1] == "tool_calls"
    assert bodies[-1]["choices"] == [] and bodies[-1]["usage"]["total_tokens"] == 5


@pytest.mark.parametrize("error, status, kind, code", [
    (gp.ClientError("bad"), 400, "invalid_request_error", None),
    (gp.ClientError("who", status=401), 401, "authentication_error", None),
    (gp.ClientError("what", status=404), 404, "not_found_error", None),
    (gp.UpstreamError("slow", status=429, retry_after=2.5), 429, "rate_limit_error",
     "rate_limit_exceeded"),
    (gp.UpstreamError("busy", status=529), 503, "overloaded_error", None),
    (gp.ProxyError("bug"), 500, "server_error", None),
])
def test_errors(error, status, kind, code):
    got, headers, body = gp.encode_openai_error(error)
    assert got == status
    assert json.loads(body) == {"error": {"message": error.message, "type": kind,
                                          "param": None, "code": code}}
    assert (("retry-after", "3") in headers) == (error.retry_after == 2.5)


def test_embeddings_both_ways():
    request = gp.decode_openai_embeddings_request({"model": "e", "input": ["a", "b"],
                                                   "dimensions": 3})
    assert (request.texts, request.dimensions) == (["a", "b"], 3)
    assert gp.decode_openai_embeddings_request({"model": "e", "input": "one"}).texts == ["one"]
    with pytest.raises(gp.ClientError):
        gp.decode_openai_embeddings_request({"model": "e", "input": [[1, 2, 3]]})
    with pytest.raises(gp.ClientError):
        gp.decode_openai_embeddings_request({"model": "e", "input": "x", "shape": 1})
    assert gp.encode_openai_embeddings_request(request, "up") == {
        "model": "up", "input": ["a", "b"], "dimensions": 3}
    reply = gp.decode_openai_embeddings_response({"data": [
        {"index": 1, "embedding": [0.5]}, {"index": 0, "embedding": [0.25]}],
        "usage": {"prompt_tokens": 4}})
    assert reply.vectors == [[0.25], [0.5]] and reply.input_tokens == 4
    body = gp.encode_openai_embeddings_response(reply, "e", "base64")
    packed = base64.b64decode(body["data"][1]["embedding"])
    assert struct.unpack("<1f", packed) == (0.5,)
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert gp.encode_openai_embeddings_response(reply, "e")["data"][0]["embedding"] == [0.25]
