"""The official google-genai SDK as a client of the proxy: first in front of a scripted fake
OpenAI upstream, then in front of every upstream kind. The SDK parses every reply into its
own pydantic types (no lenient mode to turn off); the tests read the parsed fields."""

import base64
import json

import pytest

genai = pytest.importorskip(
    "google.genai", reason="google-genai is not installed (pip install google-genai; "
                           ".ci/run installs it in a throwaway venv)")
from google.genai import errors, types  # noqa: E402

from fake_upstream import (completion, json_reply, text_stream, tool_call,  # noqa: E402
                           tool_stream, usage)


@pytest.fixture(params=["v1beta", "v1"])
def client(request, proxy):
    return genai.Client(api_key="any-key", http_options=types.HttpOptions(
        base_url=proxy.url, api_version=request.param, retry_options=types.HttpRetryOptions(
            attempts=1)))


def test_generate_content(client, fake):
    fake.queue(json_reply(completion("Hello SDK", use=usage(8, 2))))
    response = client.models.generate_content(
        model="gemini-2.5-flash", contents="Hi",
        config=types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.2,
                                           max_output_tokens=64))
    assert response.text == "Hello SDK"
    assert response.usage_metadata.prompt_token_count == 8
    assert response.usage_metadata.total_token_count == 10
    sent = fake.last
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 64


def test_generate_content_stream(client, fake):
    fake.queue(text_stream("Streaming from the SDK works.", pieces=5, use=usage(9, 6)))
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash",
                                                        contents="Hi"))
    assert "".join(c.text or "" for c in chunks) == "Streaming from the SDK works."
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata.candidates_token_count == 6


def test_function_calling_round_trip(client, fake):
    weather = types.FunctionDeclaration(
        name="get_weather", description="Weather for a city",
        parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}},
                                "required": ["city"]})
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[weather])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    fake.queue(json_reply(completion(None, [tool_call("call_w1", "get_weather",
                                                      {"city": "Paris"})],
                                     finish="tool_calls")))
    first = client.models.generate_content(model="gemini-2.5-pro", contents="Weather in Paris?",
                                           config=config)
    assert [(c.name, c.args, c.id) for c in first.function_calls] == \
        [("get_weather", {"city": "Paris"}, "call_w1")]
    assert fake.last["tools"][0]["function"]["parameters"]["required"] == ["city"]

    history = [types.Content(role="user", parts=[types.Part.from_text(text="Weather in Paris?")]),
               first.candidates[0].content,
               types.Content(role="user", parts=[types.Part.from_function_response(
                   name="get_weather", response={"output": "sunny, 21C"})])]
    fake.queue(text_stream("It is sunny."))
    answer = "".join(c.text or "" for c in client.models.generate_content_stream(
        model="gemini-2.5-pro", contents=history, config=config))
    assert answer == "It is sunny."
    messages = fake.last["messages"]
    assert messages[1]["tool_calls"][0]["id"] == "call_w1"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21C"}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_unasked_reasoning_with_a_tool_call_round_trip(client, fake, stream):
    """DeepSeek and Kimi send reasoning_content with their tool calls even when no thinking
    was asked for, and want it back on that turn. The proxy carries it in the call's
    thoughtSignature: the SDK must parse that reply (it holds the signature as bytes, from
    base64), and the reasoning must reach the upstream again when the SDK sends back the
    Content it parsed (with the signature re-encoded as URL-safe base64)."""
    reasoning = "The user wants the weather in Paris, so get_weather."
    call = ("call_r1", "get_weather", {"city": "Paris"})
    fake.queue(tool_stream([call], reasoning=reasoning) if stream else json_reply(completion(
        None, [tool_call(*call)], finish="tool_calls", reasoning=reasoning)))
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
            name="get_weather", parameters_json_schema={
                "type": "object", "properties": {"city": {"type": "string"}}})])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    question = types.Content(role="user", parts=[types.Part.from_text(text="Weather?")])
    if stream:
        chunks = list(client.models.generate_content_stream(
            model="gemini-2.5-pro", contents=[question], config=config))
        parts = [p for c in chunks for p in c.candidates[0].content.parts or []]
        calls = [fc for c in chunks for fc in c.function_calls or []]
    else:
        response = client.models.generate_content(model="gemini-2.5-pro",
                                                  contents=[question], config=config)
        parts, calls = response.candidates[0].content.parts, response.function_calls
    assert [(c.id, c.name, c.args) for c in calls] == [call]
    assert not any(p.thought for p in parts)           # no thoughts were asked for
    call_part = next(p for p in parts if p.function_call)
    assert isinstance(call_part.thought_signature, bytes) and call_part.thought_signature
    fake.queue(json_reply(completion("It is sunny.")))
    answer = client.models.generate_content(model="gemini-2.5-pro", config=config, contents=[
        question, types.Content(role="model", parts=parts),
        types.Content(role="user", parts=[types.Part.from_function_response(
            name="get_weather", response={"output": "sunny"})])])
    assert answer.text == "It is sunny."
    assistant = fake.last["messages"][1]
    assert assistant["tool_calls"][0]["id"] == "call_r1"
    assert assistant["reasoning_content"] == reasoning


def test_parallel_calls_streamed(client, fake):
    fake.queue(tool_stream([("c1", "a", {"n": 1}), ("c2", "b", {"n": 2})]))
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[
        types.FunctionDeclaration(name="a"), types.FunctionDeclaration(name="b")])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    calls = [fc for chunk in client.models.generate_content_stream(
        model="gemini-2.5-pro", contents="both", config=config) for fc in
        (chunk.function_calls or [])]
    assert [(c.id, c.name, c.args) for c in calls] == [("c1", "a", {"n": 1}),
                                                       ("c2", "b", {"n": 2})]


def test_image_input(client, fake):
    fake.queue(json_reply(completion("a tiny image")))
    png = b"\x89PNG\r\n\x1a\n0000"
    response = client.models.generate_content(model="gemini-2.5-flash", contents=[
        types.Part.from_bytes(data=png, mime_type="image/png"), "What is this?"])
    assert response.text == "a tiny image"
    content = fake.last["messages"][0]["content"]
    assert content[0] == {"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(png).decode()}}


def test_json_mode(client, fake):
    fake.queue(json_reply(completion('{"name": "Ada", "age": 36}')))
    response = client.models.generate_content(
        model="gemini-2.5-flash", contents="A person as JSON",
        config=types.GenerateContentConfig(
            response_mime_type="application/json",
            response_schema={"type": "OBJECT", "properties": {
                "name": {"type": "STRING"}, "age": {"type": "INTEGER"}}}))
    assert response.parsed == {"name": "Ada", "age": 36}
    assert fake.last["response_format"]["json_schema"]["schema"]["properties"]["age"] == \
        {"type": "integer"}


def test_thoughts(client, fake):
    fake.queue(text_stream("42", pieces=1, reasoning="Let me think.", use=usage(5, 9, reasoning=7)))
    chunks = list(client.models.generate_content_stream(
        model="gemini-2.5-pro", contents="?", config=types.GenerateContentConfig(
            thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=1024))))
    parts = [p for c in chunks for p in c.candidates[0].content.parts or []]
    assert [(p.text, bool(p.thought)) for p in parts] == [("Let me think.", True),
                                                          ("42", False)]
    assert chunks[-1].usage_metadata.thoughts_token_count == 7


def test_count_tokens(client, fake):
    result = client.models.count_tokens(model="gemini-2.5-flash", contents="a" * 40)
    assert result.total_tokens == 10
    assert fake.requests == []


def test_rate_limit_error_keeps_its_status(client, fake):
    fake.queue(json_reply({"error": {"message": "Too many requests"}}, status=429,
                          headers={"Retry-After": "2"}))
    with pytest.raises(errors.ClientError) as err:
        client.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert err.value.code == 429 and err.value.status == "RESOURCE_EXHAUSTED"
    assert "Too many requests" in err.value.message


def test_list_and_get_models(client):
    names = [m.name for m in client.models.list()]
    assert "models/gemini-2.5-pro" in names
    assert client.models.get(model="gemini-2.5-flash").name == "models/gemini-2.5-flash"


# -- every upstream kind, through the rule-based fakes -------------------------------------
# Every reply is parsed by the SDK into its own pydantic types (GenerateContentResponse,
# Part, FunctionCall, UsageMetadata, Model, CountTokensResponse, EmbedContentResponse):
# the tests read the fields, so a reply those types reject fails here.

from fake_upstream import THOUGHT  # noqa: E402
from sdk_upstreams import (CACHED, RESPONSES, TOOLS, TWO_CALLS, WITH_FAKES,  # noqa: E402
                           upstream_fixture)

upstream = upstream_fixture()
with_fakes = upstream_fixture(WITH_FAKES)
ONE_CALL = 'CALL read {"path": "b.txt"}'
RESULTS = {"read": "AAA", "glob": "x.py"}


def sdk_for(upstream, api_version="v1beta"):
    return genai.Client(api_key="client-key", http_options=types.HttpOptions(
        base_url=upstream.proxy.url, api_version=api_version,
        retry_options=types.HttpRetryOptions(attempts=1)))


def tool_config(thoughts=False):
    return types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[
            types.FunctionDeclaration(name=name, description="tool " + name,
                                      parameters_json_schema=params)
            for name, params in TOOLS.items()])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=2048)
        if thoughts else None)


def model_turn(client, contents, config, stream):
    """One generation, whole or streamed: (the model's Content as the SDK parsed it, every
    part of it, its function calls, the last response)."""
    if stream:
        chunks = list(client.models.generate_content_stream(
            model="gemini-2.5-pro", contents=contents, config=config))
        parts = [p for c in chunks for p in c.candidates[0].content.parts or []]
        calls = [fc for c in chunks for fc in c.function_calls or []]
        return types.Content(role="model", parts=parts), parts, calls, chunks[-1]
    response = client.models.generate_content(model="gemini-2.5-pro", contents=contents,
                                              config=config)
    content = response.candidates[0].content
    return content, list(content.parts or []), response.function_calls or [], response


def results_turn(calls):
    return types.Content(role="user", parts=[
        types.Part(function_response=types.FunctionResponse(
            id=c.id, name=c.name, response={"output": RESULTS[c.name]})) for c in calls])


def test_every_upstream_generate_and_stream(upstream):
    client = sdk_for(upstream)
    expected = "echo (gemini-2.5-pro): Say hi" if upstream.kind == "echo" \
        else "FAKE says hello."
    response = client.models.generate_content(model="gemini-2.5-pro", contents="Say hi")
    assert response.text == expected
    candidate = response.candidates[0]
    assert candidate.content.role == "model"
    assert [p.text for p in candidate.content.parts] == [expected]
    assert candidate.finish_reason == types.FinishReason.STOP
    use = response.usage_metadata
    assert use.prompt_token_count > 0 and use.candidates_token_count > 0
    assert use.total_token_count >= use.prompt_token_count + use.candidates_token_count
    assert response.response_id and response.model_version
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-pro",
                                                        contents="Say hi"))
    assert "".join(c.text or "" for c in chunks) == expected
    assert all(c.candidates[0].content.role == "model" for c in chunks)
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.prompt_token_count > 0
    assert chunks[-1].usage_metadata.candidates_token_count > 0


def test_every_upstream_on_v1(upstream):
    client = sdk_for(upstream, "v1")
    expected = "echo (gemini-2.5-pro): Say hi" if upstream.kind == "echo" \
        else "FAKE says hello."
    assert client.models.generate_content(model="gemini-2.5-pro", contents="Say hi").text \
        == expected
    assert "".join(c.text or "" for c in client.models.generate_content_stream(
        model="gemini-2.5-pro", contents="Say hi")) == expected


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_every_upstream_single_tool_round_trip(with_fakes, stream):
    client = sdk_for(with_fakes)
    history = [types.Content(role="user", parts=[types.Part.from_text(text=ONE_CALL)])]
    content, parts, calls, last = model_turn(client, history, tool_config(), stream)
    assert [(c.name, c.args) for c in calls] == [("read", {"path": "b.txt"})]
    assert calls[0].id
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert [p.function_call.name for p in parts if p.function_call] == ["read"]
    history += [content, results_turn(calls)]
    content, parts, calls, last = model_turn(client, history, tool_config(), stream)
    assert calls == []
    assert "".join(p.text or "" for p in parts) == "FAKE got tool result(s): read -> AAA"


def test_every_upstream_parallel_tool_round_trip(with_fakes):
    client = sdk_for(with_fakes)
    config = tool_config()
    history = [types.Content(role="user", parts=[types.Part.from_text(text=TWO_CALLS)])]
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-pro",
                                                        contents=history, config=config))
    calls = [fc for c in chunks for fc in c.function_calls or []]
    assert [(c.name, c.args) for c in calls] == [("read", {"path": "a.txt"}),
                                                 ("glob", {"pattern": "*.py"})]
    history.append(types.Content(role="model", parts=[
        p for c in chunks for p in c.candidates[0].content.parts or [] if not p.thought]))
    history.append(results_turn(calls))
    answer = client.models.generate_content(model="gemini-2.5-pro", contents=history,
                                            config=config)
    assert answer.text == "FAKE got tool result(s): read -> AAA; glob -> x.py"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_every_upstream_thoughts(with_fakes, stream):
    client = sdk_for(with_fakes)
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=2048))
    content, parts, calls, last = model_turn(client, "Say hi", config, stream)
    merged = []
    for part in parts:        # a stream may split a thought or the text into pieces
        if merged and bool(merged[-1][1]) == bool(part.thought):
            merged[-1] = (merged[-1][0] + (part.text or ""), merged[-1][1])
        else:
            merged.append((part.text or "", bool(part.thought)))
    assert [m for m in merged if m[0]] == [(THOUGHT, True), ("FAKE says hello.", False)]
    assert all(isinstance(p.thought_signature, (bytes, type(None))) for p in parts)
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata.candidates_token_count > 0


@pytest.mark.parametrize("keep_thoughts", [True, False], ids=["thoughts-kept",
                                                              "thoughts-dropped"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_every_upstream_reasoned_tool_round_trip(with_fakes, stream, keep_thoughts):
    """Thinking asked for: a function-call turn from a reasoning upstream (DeepSeek-style
    reasoning_content, Anthropic signed thinking, Gemini thought signatures), its Content
    sent back as the SDK parsed it (the SDK holds thought_signature as bytes and re-encodes
    it as URL-safe base64), and the upstream must get its reasoning back. Gemini CLI drops
    thought parts from its history and keeps the signatures: thoughts-dropped."""
    client = sdk_for(with_fakes)
    config = tool_config(thoughts=True)
    history = [types.Content(role="user", parts=[types.Part.from_text(text=TWO_CALLS)])]
    content, parts, calls, last = model_turn(client, history, config, stream)
    number = len(with_fakes.fake.requests)
    assert [(c.name, c.args) for c in calls] == [("read", {"path": "a.txt"}),
                                                 ("glob", {"pattern": "*.py"})]
    assert "".join(p.text or "" for p in parts if p.thought) == THOUGHT
    call_parts = [p for p in parts if p.function_call]
    assert isinstance(call_parts[0].thought_signature, bytes)   # the SDK decoded it
    if not keep_thoughts:
        content = types.Content(role="model", parts=[p for p in parts if not p.thought])
    history += [content, results_turn(calls)]
    _, parts, calls, _ = model_turn(client, history, config, stream)
    assert "".join(p.text or "" for p in parts if not p.thought) == \
        "FAKE got tool result(s): read -> AAA; glob -> x.py"
    assert with_fakes.reasoning_sent_back() == with_fakes.reasoning_given(number, 2)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_every_upstream_cached_tokens_usage(with_fakes, stream):
    with_fakes.cached_reply(stream)
    _, parts, _, last = model_turn(sdk_for(with_fakes), "Hi", None, stream)
    assert "".join(p.text or "" for p in parts) == "Cached."
    use = last.usage_metadata
    assert (use.prompt_token_count, use.candidates_token_count, use.total_token_count) == \
        (20, 5, 25)
    assert use.cached_content_token_count == CACHED


anthropic_only = upstream_fixture(["anthropic"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_redacted_thinking_round_trip(anthropic_only, stream):
    """Anthropic thinking, one block signed and one redacted, before a tool call, with no
    thoughts asked for: both blocks must reach Anthropic again, exactly, after the SDK
    parsed the reply and sent its Content back."""
    from fake_upstream import (anthropic_message, anthropic_message_stream,
                               anthropic_redacted_block, anthropic_thinking_block,
                               anthropic_tool_block)
    blocks = [anthropic_thinking_block("Read it first.", "c2lnbmVkIHRoaW5raW5n"),
              anthropic_redacted_block()]
    message = anthropic_message(blocks + [anthropic_tool_block("toolu_r1", "read", {
        "path": "b.txt"})], "tool_use")
    anthropic_only.fake.queue(anthropic_message_stream(message) if stream
                              else json_reply(message))
    client = sdk_for(anthropic_only)
    history = [types.Content(role="user", parts=[types.Part.from_text(text="Read b.txt")])]
    content, parts, calls, _ = model_turn(client, history, tool_config(), stream)
    assert [(c.id, c.name, c.args) for c in calls] == [("toolu_r1", "read", {"path": "b.txt"})]
    assert not any(p.thought for p in parts)
    history += [content, results_turn(calls)]
    _, parts, _, _ = model_turn(client, history, tool_config(), stream)
    assert "".join(p.text or "" for p in parts) == "FAKE got tool result(s): read -> AAA"
    assert anthropic_only.reasoning_sent_back() == blocks


def test_every_upstream_json_mode(with_fakes):
    client = sdk_for(with_fakes)   # the SDK closes its connection when the client goes
    response = client.models.generate_content(
        model="gemini-2.5-flash", contents="Rate it", config=types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema={
                "type": "object", "properties": {"score": {"type": "integer"}},
                "required": ["score"]}))
    assert response.parsed == {"score": 1}
    streamed = "".join(c.text or "" for c in client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="Rate it", config=types.GenerateContentConfig(
            response_mime_type="application/json", response_schema={
                "type": "OBJECT", "properties": {"label": {"type": "STRING"}}})))
    assert json.loads(streamed) == {"label": "fake"}


def test_every_upstream_count_tokens(upstream):
    client = sdk_for(upstream)
    result = client.models.count_tokens(model="gemini-2.5-flash", contents="a" * 40)
    assert isinstance(result, types.CountTokensResponse)
    assert result.total_tokens == 10     # local estimate and the fakes both count chars / 4
    if upstream.kind in ("gemini", "anthropic"):
        assert "count" in upstream.fake.requests[-1]["path"].lower()
    elif upstream.kind == RESPONSES:
        assert upstream.fake.requests[-1]["path"].endswith("/responses/input_tokens")


def test_every_upstream_embeddings(upstream):
    client = sdk_for(upstream)
    if upstream.kind in ("anthropic", "echo"):
        with pytest.raises(errors.ClientError) as err:
            client.models.embed_content(model="text-embedding-004", contents="hello")
        assert err.value.code == 400 and err.value.status == "INVALID_ARGUMENT"
        assert "has no embeddings" in err.value.message
        return
    result = client.models.embed_content(model="text-embedding-004",
                                         contents=["hello", "world"])
    assert isinstance(result, types.EmbedContentResponse)
    assert len(result.embeddings) == 2
    assert all(isinstance(v, float) for v in result.embeddings[0].values)
    assert result.embeddings[0].values != result.embeddings[1].values
    one = client.models.embed_content(model="text-embedding-004", contents="hello",
                                      config=types.EmbedContentConfig(output_dimensionality=4))
    assert len(one.embeddings) == 1 and len(one.embeddings[0].values) == 4


def test_every_upstream_models(upstream):
    client = sdk_for(upstream)
    models = list(client.models.list())
    assert all(isinstance(m, types.Model) for m in models)
    assert "models/gemini-2.5-pro" in [m.name for m in models]
    model = client.models.get(model="gemini-2.5-flash")
    assert isinstance(model, types.Model)
    assert model.name == "models/gemini-2.5-flash"
    assert model.input_token_limit > 0 and model.output_token_limit > 0
    assert "generateContent" in model.supported_actions


def test_every_upstream_rate_limit(with_fakes):
    with_fakes.rate_limit()
    client = sdk_for(with_fakes)
    with pytest.raises(errors.ClientError) as err:
        client.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert err.value.code == 429 and err.value.status == "RESOURCE_EXHAUSTED"
    assert "Rate limited" in err.value.message
    details = err.value.details["error"].get("details", [])
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"} in details


def test_every_upstream_bad_request(with_fakes):
    with_fakes.bad_request()
    client = sdk_for(with_fakes)
    with pytest.raises(errors.ClientError) as err:
        client.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert err.value.code == 400 and err.value.status == "INVALID_ARGUMENT"
    assert "Bad field: frobnicate" in err.value.message


converted = upstream_fixture(["openai", "anthropic", RESPONSES, "echo"])


def test_every_upstream_request_the_proxy_refuses(converted):
    """A request the proxy itself refuses (a Gemini upstream gets it as it is, to judge)."""
    client = sdk_for(converted)
    with pytest.raises(errors.ClientError) as err:
        client.models.generate_content(
            model="gemini-2.5-flash", contents="Hi", config=types.GenerateContentConfig(
                http_options=types.HttpOptions(extra_body={"frobnicate": 1})))
    assert err.value.code == 400 and err.value.status == "INVALID_ARGUMENT"
    assert "frobnicate" in err.value.message
    assert converted.fake is None or converted.fake.requests == []


# -- a troubled upstream (issue 4): pass-through from Gemini, converted from Anthropic -------

from faults import FIRST_WORDS, REST, error, stream  # noqa: E402
from sdk_upstreams import troubled_fixture  # noqa: E402

troubled = troubled_fixture(["gemini", "anthropic", RESPONSES])


def test_a_stream_broken_mid_way_ends_without_finish_reason(troubled):
    troubled.fake.rules["*"] = stream(troubled.kind, "reset")
    client = sdk_for(troubled)   # held: a client that is garbage-collected closes
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-pro", contents="Hi"))
    assert "".join(c.text or "" for c in chunks) == FIRST_WORDS
    assert all(c.candidates[0].finish_reason is None for c in chunks)   # Gemini CLI retries


def test_a_stalled_stream_gets_no_keepalives(troubled):
    troubled.fake.rules["*"] = stream(troubled.kind, "stall", pause=0.5)
    client = sdk_for(troubled)   # held: a client that is garbage-collected closes
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-pro", contents="Hi"))
    assert "".join(c.text or "" for c in chunks) == FIRST_WORDS + REST
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_every_key_resting_is_429_with_retry_info(troubled):
    troubled.fake.rules["key-a"] = error(troubled.kind, 429, "a is spent", retry_after=9)
    troubled.fake.rules["key-b"] = error(troubled.kind, 429, "b is spent", retry_after=4)
    with pytest.raises(errors.ClientError) as err:
        client = sdk_for(troubled)
        client.models.generate_content(model="gemini-2.5-pro", contents="Hi")
    assert err.value.code == 429 and "spent" in err.value.message
    details = err.value.details["error"].get("details", [])
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "4s"} in details
