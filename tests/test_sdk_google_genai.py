"""The official google-genai SDK as a client of the proxy (fake OpenAI upstream behind it)."""

import base64

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

from sdk_upstreams import TOOLS, TWO_CALLS, upstream_fixture  # noqa: E402

upstream = upstream_fixture()
with_fakes = upstream_fixture(["openai", "gemini", "anthropic"])


def sdk_for(upstream):
    return genai.Client(api_key="client-key", http_options=types.HttpOptions(
        base_url=upstream.proxy.url, api_version="v1beta",
        retry_options=types.HttpRetryOptions(attempts=1)))


def tool_config():
    return types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[
            types.FunctionDeclaration(name=name, description="tool " + name,
                                      parameters_json_schema=params)
            for name, params in TOOLS.items()])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))


def test_every_upstream_generate_and_stream(upstream):
    client = sdk_for(upstream)
    expected = "echo (gemini-2.5-pro): Say hi" if upstream.kind == "echo" \
        else "FAKE says hello."
    assert client.models.generate_content(model="gemini-2.5-pro", contents="Say hi").text \
        == expected
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-pro",
                                                        contents="Say hi"))
    assert "".join(c.text or "" for c in chunks) == expected
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.prompt_token_count > 0


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
    history.append(types.Content(role="user", parts=[
        types.Part(function_response=types.FunctionResponse(
            id=c.id, name=c.name, response={"output": {"read": "AAA", "glob": "x.py"}[c.name]}))
        for c in calls]))
    answer = client.models.generate_content(model="gemini-2.5-pro", contents=history,
                                            config=config)
    assert answer.text == "FAKE got tool result(s): read -> AAA; glob -> x.py"


def test_every_upstream_thoughts(with_fakes):
    client = sdk_for(with_fakes)
    response = client.models.generate_content(
        model="gemini-2.5-pro", contents="Say hi", config=types.GenerateContentConfig(
            thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=2048)))
    parts = response.candidates[0].content.parts
    assert [(p.text, bool(p.thought)) for p in parts] == [("FAKE thinks.", True),
                                                          ("FAKE says hello.", False)]


def test_every_upstream_json_mode(with_fakes):
    client = sdk_for(with_fakes)   # the SDK closes its connection when the client goes
    response = client.models.generate_content(
        model="gemini-2.5-flash", contents="Rate it", config=types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema={
                "type": "object", "properties": {"score": {"type": "integer"}},
                "required": ["score"]}))
    assert response.parsed == {"score": 1}


def test_every_upstream_count_tokens(upstream):
    client = sdk_for(upstream)
    result = client.models.count_tokens(model="gemini-2.5-flash", contents="a" * 40)
    assert result.total_tokens == 10     # local estimate and the fakes both count chars / 4
    if upstream.kind in ("gemini", "anthropic"):
        assert "count" in upstream.fake.requests[-1]["path"].lower()


def test_every_upstream_embeddings(upstream):
    client = sdk_for(upstream)
    if upstream.kind in ("anthropic", "echo"):
        with pytest.raises(errors.ClientError) as err:
            client.models.embed_content(model="text-embedding-004", contents="hello")
        assert "has no embeddings" in err.value.message
        return
    result = client.models.embed_content(model="text-embedding-004",
                                         contents=["hello", "world"])
    assert len(result.embeddings) == 2
    assert result.embeddings[0].values != result.embeddings[1].values


def test_every_upstream_rate_limit(with_fakes):
    with_fakes.rate_limit()
    client = sdk_for(with_fakes)
    with pytest.raises(errors.ClientError) as err:
        client.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert err.value.code == 429 and "Rate limited" in err.value.message


# -- a troubled upstream (issue 4): pass-through from Gemini, converted from Anthropic -------

from faults import FIRST_WORDS, REST, error, stream  # noqa: E402
from sdk_upstreams import troubled_fixture  # noqa: E402

troubled = troubled_fixture(["gemini", "anthropic"])


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
