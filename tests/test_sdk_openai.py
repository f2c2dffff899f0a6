"""The official openai SDK as a client of the proxy, against every upstream kind, with strict
response validation: every reply must match the SDK's own types."""

import base64
import json
import struct

import pytest

openai = pytest.importorskip(
    "openai", reason="the openai SDK is not installed (pip install openai; .ci/run installs "
                     "it in a throwaway venv)")

from fake_upstream import json_reply  # noqa: E402
from sdk_upstreams import (CACHED, RESPONSES, TOOLS, TWO_CALLS, WITH_FAKES,  # noqa: E402
                           upstream_fixture)

upstream = upstream_fixture()
with_fakes = upstream_fixture(WITH_FAKES)

TOOL_SPECS = [{"type": "function", "function": {"name": name, "description": "tool " + name,
                                                "parameters": params}}
              for name, params in TOOLS.items()]


def client_for(upstream):
    """The SDK with strict response validation: every reply is checked against the SDK's
    own types (ChatCompletion, ChatCompletionChunk, Model, CreateEmbeddingResponse...)
    and a reply they reject raises openai.APIResponseValidationError."""
    return openai.OpenAI(base_url=upstream.proxy.url + "/v1", api_key="client-key",
                         max_retries=0, _strict_response_validation=True)


def error_object(err):
    """The error body the SDK kept, read as the SDK's own ErrorObject type."""
    from openai.types import ErrorObject
    return ErrorObject.model_validate(err.value.body)


def test_create_and_stream(upstream):
    client = client_for(upstream)
    expected = "echo (gpt-x): Say hi" if upstream.kind == "echo" else "FAKE says hello."
    reply = client.chat.completions.create(model="gpt-x", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}])
    assert reply.object == "chat.completion" and reply.id and reply.model
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == \
        reply.usage.prompt_tokens + reply.usage.completion_tokens
    chunks = list(client.chat.completions.create(
        model="gpt-x", messages=[{"role": "user", "content": "Say hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0


def test_stream_helper(with_fakes):
    client = client_for(with_fakes)
    with client.chat.completions.stream(
            model="gpt-x", messages=[{"role": "user", "content": "Say hi"}]) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == "FAKE says hello."
    assert final.choices[0].message.content == "FAKE says hello."


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_single_tool_call_round_trip(with_fakes, stream):
    client = client_for(with_fakes)
    messages = [{"role": "user", "content": 'CALL read {"path": "b.txt"}'}]
    if stream:
        with client.chat.completions.stream(model="gpt-x", messages=messages,
                                            tools=TOOL_SPECS) as events:
            first = events.get_final_completion()
    else:
        first = client.chat.completions.create(model="gpt-x", messages=messages,
                                               tools=TOOL_SPECS)
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = message.tool_calls
    assert call.type == "function" and call.id
    assert (call.function.name, json.loads(call.function.arguments)) == ("read",
                                                                          {"path": "b.txt"})
    messages += [message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "BBB"}]
    second = client.chat.completions.create(model="gpt-x", messages=messages,
                                            tools=TOOL_SPECS, stream=stream)
    text = "".join(c.choices[0].delta.content or "" for c in second if c.choices) \
        if stream else second.choices[0].message.content
    assert text == "FAKE got tool result(s): read -> BBB"


def test_parallel_tool_calls_round_trip(with_fakes):
    client = client_for(with_fakes)
    messages = [{"role": "user", "content": TWO_CALLS}]
    with client.chat.completions.stream(model="gpt-x", messages=messages,
                                        tools=TOOL_SPECS) as stream:
        first = stream.get_final_completion()
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] \
        == [("read", {"path": "a.txt"}), ("glob", {"pattern": "*.py"})]
    messages.append(message.model_dump(exclude_none=True))
    messages += [{"role": "tool", "tool_call_id": c.id,
                  "content": {"read": "AAA", "glob": "x.py"}[c.function.name]}
                 for c in message.tool_calls]
    second = client.chat.completions.create(model="gpt-x", messages=messages, tools=TOOL_SPECS)
    assert second.choices[0].message.content == \
        "FAKE got tool result(s): read -> AAA; glob -> x.py"


def test_reasoning(with_fakes):
    client = client_for(with_fakes)
    reply = client.chat.completions.create(
        model="gpt-x", reasoning_effort="low",
        messages=[{"role": "user", "content": "Say hi"}])
    message = reply.choices[0].message
    assert message.content == "FAKE says hello."
    assert message.model_extra["reasoning_content"] == "FAKE thinks."
    if with_fakes.kind in ("gemini", RESPONSES):     # these fakes count 3 thought tokens
        assert reply.usage.completion_tokens_details.reasoning_tokens == 3
    chunks = list(client.chat.completions.create(
        model="gpt-x", reasoning_effort="low", stream=True,
        messages=[{"role": "user", "content": "Say hi"}],
        stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == \
        "FAKE thinks."
    assert "".join(d.content or "" for d in deltas) == "FAKE says hello."
    assert chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_reasoning_tool_round_trip(with_fakes, stream):
    """Reasoning with tool calls, the assistant message sent back as the SDK parsed it
    (reasoning_content kept as an extra field): the upstream must get its reasoning back
    (DeepSeek and Kimi want reasoning_content, Anthropic its signed thinking block, Gemini
    its thoughtSignature)."""
    client = client_for(with_fakes)
    messages = [{"role": "user", "content": TWO_CALLS}]
    if stream:
        chunks = list(client.chat.completions.create(
            model="gpt-x", reasoning_effort="low", messages=messages, tools=TOOL_SPECS,
            stream=True))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        reasoning = "".join(d.model_extra.get("reasoning_content") or "" for d in deltas)
        calls = {}
        for delta in deltas:
            for piece in delta.tool_calls or ():
                call = calls.setdefault(piece.index, {"id": "", "type": "function",
                                                      "function": {"name": "", "arguments": ""}})
                call["id"] += piece.id or ""
                call["function"]["name"] += (piece.function and piece.function.name) or ""
                call["function"]["arguments"] += \
                    (piece.function and piece.function.arguments) or ""
        sent = {"role": "assistant", "content": None, "reasoning_content": reasoning,
                "tool_calls": [calls[i] for i in sorted(calls)]}
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    else:
        first = client.chat.completions.create(model="gpt-x", reasoning_effort="low",
                                               messages=messages, tools=TOOL_SPECS)
        assert first.choices[0].finish_reason == "tool_calls"
        reasoning = first.choices[0].message.model_extra["reasoning_content"]
        sent = first.choices[0].message.model_dump(exclude_none=True)
    number = len(with_fakes.fake.requests)
    assert reasoning == "FAKE thinks."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in sent["tool_calls"]] == [("read", {"path": "a.txt"}),
                                             ("glob", {"pattern": "*.py"})]
    messages += [sent] + [{"role": "tool", "tool_call_id": c["id"],
                           "content": {"read": "AAA", "glob": "x.py"}[c["function"]["name"]]}
                          for c in sent["tool_calls"]]
    second = client.chat.completions.create(model="gpt-x", reasoning_effort="low",
                                            messages=messages, tools=TOOL_SPECS)
    assert second.choices[0].message.content == \
        "FAKE got tool result(s): read -> AAA; glob -> x.py"
    assert with_fakes.reasoning_sent_back() == with_fakes.reasoning_given(number, 2)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_cached_tokens_usage(with_fakes, stream):
    with_fakes.cached_reply(stream)
    client = client_for(with_fakes)
    if stream:
        chunks = list(client.chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "Hi"}], stream=True,
            stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        use = chunks[-1].usage
    else:
        reply = client.chat.completions.create(model="gpt-x",
                                               messages=[{"role": "user", "content": "Hi"}])
        text, use = reply.choices[0].message.content, reply.usage
    assert text == "Cached."
    assert use.prompt_tokens == 20 and use.completion_tokens == 5 and use.total_tokens == 25
    assert use.prompt_tokens_details.cached_tokens == CACHED


anthropic_only = upstream_fixture(["anthropic"])


def test_redacted_thinking_round_trip(anthropic_only):
    """Anthropic thinking, one block signed and one redacted, before a tool call: the
    OpenAI dialect has no place for signatures, yet both blocks must reach Anthropic
    again, exactly, when the assistant message comes back as the SDK parsed it."""
    from fake_upstream import (anthropic_message, anthropic_redacted_block,
                               anthropic_thinking_block, anthropic_tool_block)
    blocks = [anthropic_thinking_block("Read it first.", "c2lnbmVkIHRoaW5raW5n"),
              anthropic_redacted_block()]
    anthropic_only.fake.queue(json_reply(anthropic_message(blocks + [anthropic_tool_block(
        "toolu_r1", "read", {"path": "b.txt"})], "tool_use")))
    client = client_for(anthropic_only)
    messages = [{"role": "user", "content": "Read b.txt"}]
    first = client.chat.completions.create(model="gpt-x", messages=messages, tools=TOOL_SPECS,
                                           reasoning_effort="low")
    message = first.choices[0].message
    assert [(c.id, c.function.name) for c in message.tool_calls] == [("toolu_r1", "read")]
    messages += [message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": "toolu_r1", "content": "BBB"}]
    second = client.chat.completions.create(model="gpt-x", messages=messages,
                                            tools=TOOL_SPECS, reasoning_effort="low")
    assert second.choices[0].message.content == "FAKE got tool result(s): read -> BBB"
    assert anthropic_only.reasoning_sent_back() == blocks


def test_json_schema_and_parse(with_fakes):
    from pydantic import BaseModel

    class Rating(BaseModel):
        score: int
        label: str
    client = client_for(with_fakes)
    parsed = client.chat.completions.parse(
        model="gpt-x", messages=[{"role": "user", "content": "Rate it"}],
        response_format=Rating)
    assert parsed.choices[0].message.parsed == Rating(score=1, label="fake")
    with client.chat.completions.stream(
            model="gpt-x", messages=[{"role": "user", "content": "Rate it"}],
            response_format=Rating) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == Rating(score=1, label="fake")


def test_json_object_mode(with_fakes):
    client = client_for(with_fakes)
    reply = client.chat.completions.create(
        model="gpt-x", response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Answer in JSON"}])
    if with_fakes.kind == "anthropic":     # asked for in the system prompt, which the fake
        assert "JSON" in with_fakes.fake.last["system"]      # does not read
        assert reply.choices[0].message.content == "FAKE says hello."
    else:
        assert json.loads(reply.choices[0].message.content) == {"answer": "FAKE says hello."}


def test_image_input(with_fakes):
    client = client_for(with_fakes)
    data_url = "data:image/png;base64,iVBORw0KGgpzZGs="
    reply = client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": data_url}}]}])
    assert reply.choices[0].message.content == "FAKE says hello."
    assert "iVBORw0KGgpzZGs=" in json.dumps(with_fakes.fake.last)


def test_rate_limit_error(with_fakes):
    with_fakes.rate_limit()
    with pytest.raises(openai.RateLimitError) as err:
        client_for(with_fakes).chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 429
    assert "Rate limited" in str(err.value) and "Rate limited" in error_object(err).message
    assert err.value.response.headers.get("retry-after") == "7"


def test_bad_request_error(with_fakes):
    with_fakes.bad_request()
    with pytest.raises(openai.BadRequestError) as err:
        client_for(with_fakes).chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 400
    assert "Bad field: frobnicate" in error_object(err).message
    assert error_object(err).type == err.value.type == "invalid_request_error"


converted = upstream_fixture(["gemini", "anthropic", RESPONSES, "echo"])


def test_request_the_proxy_refuses(converted):
    """A request the proxy itself refuses (an OpenAI upstream gets it as it is, to judge)."""
    with pytest.raises(openai.BadRequestError) as err:
        client_for(converted).chat.completions.create(model="gpt-x", messages=[])
    assert "messages" in error_object(err).message
    assert err.value.type == "invalid_request_error"
    assert converted.fake is None or converted.fake.requests == []


def test_embeddings(upstream):
    client = client_for(upstream)
    if upstream.kind in ("anthropic", "echo"):
        with pytest.raises(openai.BadRequestError) as err:
            client.embeddings.create(model="embed-x", input="hello", encoding_format="float")
        assert "has no embeddings" in str(err.value)
        assert "has no embeddings" in error_object(err).message
        return
    result = client.embeddings.create(model="embed-x", input=["hello", "world"],
                                      encoding_format="float")
    assert result.object == "list" and result.model
    assert [(d.object, d.index) for d in result.data] == [("embedding", 0), ("embedding", 1)]
    assert len(result.data[0].embedding) > 0
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.total_tokens >= result.usage.prompt_tokens >= 0
    assert len(client.embeddings.create(model="embed-x", input="hello", dimensions=4,
                                        encoding_format="float").data[0].embedding) == 4
    # Left to itself the SDK asks for base64 and unpacks it after parsing, which its strict
    # validation (Embedding.embedding: List[float]) rejects first, whatever the server: the
    # base64 replies are read by a client without it.
    lenient = openai.OpenAI(base_url=upstream.proxy.url + "/v1", api_key="client-key",
                            max_retries=0)
    assert lenient.embeddings.create(model="embed-x", input=["hello", "world"]).data[1] \
        .embedding == pytest.approx(result.data[1].embedding)
    packed = lenient.embeddings.create(model="embed-x", input="hello",
                                       encoding_format="base64").data[0].embedding
    raw = base64.b64decode(packed)          # asked for explicitly, the SDK leaves it packed
    assert struct.unpack("<%df" % (len(raw) // 4), raw) == \
        pytest.approx(result.data[0].embedding)


def test_models(upstream):
    client = client_for(upstream)
    models = list(client.models.list())
    assert all(m.object == "model" and isinstance(m.created, int) and m.owned_by
               for m in models)
    assert "gemini-2.5-pro" in [m.id for m in models]
    model = client.models.retrieve("gemini-2.5-pro")
    assert model.id == "gemini-2.5-pro" and model.object == "model"


# -- a troubled upstream (issue 4): pass-through from OpenAI, converted from Gemini ----------

from faults import FIRST_WORDS, REST, error, stream  # noqa: E402
from sdk_upstreams import troubled_fixture  # noqa: E402

troubled = troubled_fixture(["openai", "gemini", RESPONSES])


def streamed_text(client, received):
    for chunk in client.chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "Hi"}], stream=True):
        received.append((chunk.choices[0].delta.content or "") if chunk.choices else "")
    return "".join(received)


def test_sdk_raises_when_a_stream_breaks_mid_way(troubled):
    troubled.fake.rules["*"] = stream(troubled.kind, "reset")
    received = []
    with pytest.raises(openai.APIError) as err:
        streamed_text(client_for(troubled), received)
    assert "broke" in str(err.value)
    assert "".join(received) == FIRST_WORDS
    assert len(troubled.fake.requests) == 1


def test_sdk_skips_keepalive_comments_in_a_stalled_stream(troubled):
    troubled.fake.rules["*"] = stream(troubled.kind, "stall", pause=0.5)
    assert streamed_text(client_for(troubled), []) == FIRST_WORDS + REST


def test_sdk_sees_429_with_the_earliest_retry_when_every_key_rests(troubled):
    troubled.fake.rules["key-a"] = error(troubled.kind, 429, "a is spent", retry_after=9)
    troubled.fake.rules["key-b"] = error(troubled.kind, 429, "b is spent", retry_after=4)
    with pytest.raises(openai.RateLimitError) as err:
        client_for(troubled).chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "Hi"}])
    assert "spent" in str(err.value)
    assert err.value.response.headers.get("retry-after") == "4"
    assert troubled.fake.keys_used() == ["key-a", "key-b"]


# -- the Responses API: client.responses against every upstream kind ----------------------
# Every reply and stream event is validated against the SDK's own types (Response,
# ResponseStreamEvent, ParsedResponse, ...); the raw bytes of the same kind of reply are
# checked by tests/responses_checker.py, which is stricter about the event sequence.

from fake_upstream import THOUGHT  # noqa: E402
from responses_checker import (check_responses_object, check_responses_stream,  # noqa: E402
                               parse_sse)

RESPONSE_TOOLS = [{"type": "function", "name": name, "description": "tool " + name,
                   "parameters": params, "strict": False} for name, params in TOOLS.items()]
REASONING = {"effort": "low", "summary": "auto"}
RESULTS = {"read": "AAA", "glob": "x.py"}


def answer_for(upstream, text, model="gpt-x"):
    """What the upstream's model says to a user text with no directive in it."""
    return "echo (%s): %s" % (model, text) if upstream.kind == "echo" else "FAKE says hello."


def raw_response(client, **request):
    """A whole reply's JSON as the proxy sent it (checked), and the SDK's Response of it."""
    raw = client.responses.with_raw_response.create(**request)
    body = raw.http_response.json()
    check_responses_object(body)
    return body, raw.parse()


def raw_stream(client, **request):
    """A streamed reply's events as the proxy sent them, checked: [(name, data)]."""
    with client.responses.with_streaming_response.create(stream=True, **request) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(raw.read())
    check_responses_stream(events)
    return events


def sent_texts(request):
    """The texts of a request the fake upstream got, whatever its dialect, in order."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("text", "content", "input", "output", "thinking") and \
                        isinstance(item, str):
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
    walk(request)
    return found


def generate_response(client, stream, **request):
    """A whole Response: from responses.create, or assembled by responses.stream."""
    if stream:
        with client.responses.stream(**request) as events:
            return events.get_final_response()
    return client.responses.create(**request)


def test_responses_create_and_stream(upstream):
    client = client_for(upstream)
    expected = answer_for(upstream, "Say hi")
    body, response = raw_response(client, model="gpt-x", instructions="Be brief.",
                                  input="Say hi")
    assert response.object == "response" and response.id == body["id"] and response.model
    assert response.status == "completed" and response.error is None
    assert [i.type for i in response.output] == ["message"]
    assert response.output[0].role == "assistant"
    assert response.output_text == expected
    assert response.instructions == "Be brief."
    use = response.usage
    assert use.output_tokens > 0 and use.input_tokens > 0
    assert use.total_tokens == use.input_tokens + use.output_tokens
    events = list(client.responses.create(model="gpt-x", input="Say hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        expected
    final = events[-1].response
    assert final.id == events[0].response.id and final.output_text == expected
    assert final.usage.output_tokens > 0
    raw = raw_stream(client, model="gpt-x", input="Say hi")
    assert [n for n, _ in raw][-1] == "response.completed"
    assert "".join(d["delta"] for n, d in raw if n == "response.output_text.delta") == expected


def test_responses_stream_helper(upstream):
    client = client_for(upstream)
    expected = answer_for(upstream, "Say hi")
    with client.responses.stream(model="gpt-x", input="Say hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == expected
    assert final.status == "completed" and final.output_text == expected


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_parse(with_fakes, stream):
    from pydantic import BaseModel

    class Rating(BaseModel):
        score: int
        label: str
    client = client_for(with_fakes)
    if stream:
        with client.responses.stream(model="gpt-x", input="Rate it",
                                     text_format=Rating) as events:
            parsed = events.get_final_response()
    else:
        parsed = client.responses.parse(model="gpt-x", input="Rate it", text_format=Rating)
    assert parsed.output_parsed == Rating(score=1, label="fake")
    if with_fakes.kind == "anthropic":      # JSON mode with a schema: output_config.format
        assert with_fakes.fake.last["output_config"]["format"]["type"] == "json_schema"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_function_tool_round_trip(with_fakes, stream):
    client = client_for(with_fakes)
    items = [{"role": "user", "content": 'CALL read {"path": "b.txt"}'}]
    first = generate_response(client, stream, model="gpt-x", input=items,
                              tools=RESPONSE_TOOLS)
    assert first.status == "completed"
    [call] = [i for i in first.output if i.type == "function_call"]
    assert call.call_id and call.id and call.status == "completed"
    assert (call.name, json.loads(call.arguments)) == ("read", {"path": "b.txt"})
    items += first.output       # as OpenAI's guide does: the SDK's own objects go back
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": "BBB"})
    second = generate_response(client, stream, model="gpt-x", input=items,
                               tools=RESPONSE_TOOLS)
    assert second.output_text == "FAKE got tool result(s): read -> BBB"
    assert not [i for i in second.output if i.type == "function_call"]


def test_responses_parse_with_a_pydantic_function_tool(with_fakes):
    from pydantic import BaseModel

    class Read(BaseModel):
        path: str
    client = client_for(with_fakes)
    parsed = client.responses.parse(model="gpt-x", input='CALL read {"path": "b.txt"}',
                                    tools=[openai.pydantic_function_tool(Read, name="read")])
    [call] = [i for i in parsed.output if i.type == "function_call"]
    assert call.parsed_arguments == Read(path="b.txt")


def test_responses_parallel_tool_calls_round_trip(with_fakes):
    client = client_for(with_fakes)
    items = [{"role": "user", "content": TWO_CALLS}]
    raw = raw_stream(client, model="gpt-x", input=items, tools=RESPONSE_TOOLS)
    done = [d["item"] for n, d in raw if n == "response.output_item.done"]
    calls = [i for i in done if i["type"] == "function_call"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("read", {"path": "a.txt"}), ("glob", {"pattern": "*.py"})]
    assert len({c["call_id"] for c in calls}) == 2
    items += done + [{"type": "function_call_output", "call_id": c["call_id"],
                      "output": RESULTS[c["name"]]} for c in calls]
    second = client.responses.create(model="gpt-x", input=items, tools=RESPONSE_TOOLS)
    assert second.output_text == "FAKE got tool result(s): read -> AAA; glob -> x.py"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_reasoning(with_fakes, stream):
    client = client_for(with_fakes)
    if stream:
        events = list(client.responses.create(model="gpt-x", input="Say hi",
                                              reasoning=REASONING, stream=True))
        assert "".join(e.delta for e in events
                       if e.type == "response.reasoning_summary_text.delta") == THOUGHT
        response = events[-1].response
    else:
        response = client.responses.create(model="gpt-x", input="Say hi", reasoning=REASONING)
    assert [i.type for i in response.output] == ["reasoning", "message"]
    assert [s.text for s in response.output[0].summary] == [THOUGHT]
    if with_fakes.kind != RESPONSES:        # passed through: the fake's own item, as it is
        assert response.output[0].encrypted_content is None     # not asked for (include)
    assert response.output_text == "FAKE says hello."
    assert response.reasoning.effort == "low"
    if with_fakes.kind in ("gemini", RESPONSES):   # these fakes count 3 reasoning tokens
        assert response.usage.output_tokens_details.reasoning_tokens == 3
    raw = raw_stream(client, model="gpt-x", input="Say hi", reasoning=REASONING)
    assert [d["item"]["type"] for n, d in raw if n == "response.output_item.done"] == \
        ["reasoning", "message"]


@pytest.mark.parametrize("carried", [True, False], ids=["encrypted-content", "remembered"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_reasoning_tool_round_trip(with_fakes, stream, carried):
    """Reasoning with tool calls, the output sent back as the SDK parsed it, as Codex does
    (store: false, the whole conversation each turn): the upstream must get its own
    reasoning back (a Responses upstream its reasoning item with encrypted_content,
    Anthropic its signed thinking, Gemini its signature, DeepSeek its reasoning_content).
    With include=["reasoning.encrypted_content"] it rides in the reasoning item; without,
    the proxy remembers it by call id."""
    client = client_for(with_fakes)
    extra = {"include": ["reasoning.encrypted_content"]} if carried else {}
    items = [{"role": "user", "content": TWO_CALLS}]
    first = generate_response(client, stream, model="gpt-x", input=items, store=False,
                              tools=RESPONSE_TOOLS, reasoning=REASONING, **extra)
    number = len(with_fakes.fake.requests)
    kinds = [i.type for i in first.output]
    assert kinds[0] == "reasoning" and kinds[-2:] == ["function_call", "function_call"]
    assert "".join(s.text for i in first.output if i.type == "reasoning"
                   for s in i.summary) == THOUGHT
    reasoning = [i for i in first.output if i.type == "reasoning"]
    if carried:
        assert reasoning[0].encrypted_content
    elif with_fakes.kind != RESPONSES:      # a passed-through reply is the upstream's own
        assert all(i.encrypted_content is None for i in reasoning)
    calls = [i for i in first.output if i.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("read", {"path": "a.txt"}), ("glob", {"pattern": "*.py"})]
    items += [i.model_dump(exclude_none=True) for i in first.output]
    items += [{"type": "function_call_output", "call_id": c.call_id,
               "output": RESULTS[c.name]} for c in calls]
    second = generate_response(client, stream, model="gpt-x", input=items, store=False,
                               tools=RESPONSE_TOOLS, reasoning=REASONING, **extra)
    assert second.output_text == "FAKE got tool result(s): read -> AAA; glob -> x.py"
    assert with_fakes.reasoning_sent_back() == with_fakes.reasoning_given(number, 2)


def test_responses_previous_response_id(with_fakes):
    """A second turn that names the first by previous_response_id sees it: the proxy keeps
    the conversation (a Responses upstream gets the id as it is, and keeps its own)."""
    client = client_for(with_fakes)
    first = client.responses.create(model="gpt-x", instructions="Be brief.",
                                    input="Remember tangerine.")
    second = client.responses.create(model="gpt-x", previous_response_id=first.id,
                                     input="Say hi again")
    assert second.previous_response_id == first.id and second.id != first.id
    assert second.output_text == "FAKE says hello."
    sent = with_fakes.fake.last
    if with_fakes.kind == RESPONSES:       # passed through: the upstream holds the history
        assert sent["previous_response_id"] == first.id
        assert sent["input"] == "Say hi again"
        return
    texts = sent_texts(sent)
    assert [t for t in texts if t in ("Remember tangerine.", "FAKE says hello.",
                                      "Say hi again")] == \
        ["Remember tangerine.", "FAKE says hello.", "Say hi again"]
    assert "Be brief." not in texts      # instructions are not carried over (as OpenAI)


converted_fakes = upstream_fixture(["openai", "gemini", "anthropic"])


def test_responses_previous_response_id_with_a_tool_result(converted_fakes):
    """The call made in a stored turn, answered by a turn that sends only its output (the
    proxy's store supplies the call; a passed-through request would need the upstream to
    keep its history, which the fake does not)."""
    client = client_for(converted_fakes)
    first = client.responses.create(model="gpt-x", input='CALL read {"path": "b.txt"}',
                                    tools=RESPONSE_TOOLS)
    [call] = [i for i in first.output if i.type == "function_call"]
    second = client.responses.create(
        model="gpt-x", previous_response_id=first.id, tools=RESPONSE_TOOLS,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "BBB"}])
    assert second.output_text == "FAKE got tool result(s): read -> BBB"


not_passed_through = upstream_fixture(["openai", "gemini", "anthropic", "echo"])


def test_responses_previous_response_id_unknown_or_not_stored(not_passed_through):
    """What the proxy keeps, and says when it has nothing (a Responses upstream would
    judge previous_response_id itself)."""
    client = client_for(not_passed_through)
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="gpt-x", previous_response_id="resp_nope", input="Hi")
    assert "previous_response_id" in error_object(err).message
    unstored = client.responses.create(model="gpt-x", input="Say hi", store=False)
    assert unstored.store is False
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="gpt-x", previous_response_id=unstored.id, input="Hi")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


passed_through = upstream_fixture([RESPONSES])


def test_a_passed_through_response_is_the_upstreams_to_retrieve(passed_through):
    """The proxy keeps the responses it made itself; one a Responses upstream made (the
    request passed through) is that upstream's, and the 404 says so (README)."""
    client = client_for(passed_through)
    first = client.responses.create(model="gpt-x", input="Say hi")
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.retrieve(first.id)
    assert "Responses upstream made is that upstream's" in error_object(err).message


def test_responses_retrieve_and_delete(not_passed_through):
    upstream = not_passed_through
    client = client_for(upstream)
    first = client.responses.create(model="gpt-x", input="Say hi", metadata={"k": "v"})
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.status == "completed"
    assert got.output_text == first.output_text == answer_for(upstream, "Say hi")
    assert got.metadata == {"k": "v"}
    assert client.responses.delete(first.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(first.id)


def test_responses_stream_by_id_is_never_silently_empty(not_passed_through):
    """A kept response's events are not kept: asking for them again is a clear 400, never
    a JSON body the SDK would read as an empty stream."""
    client = client_for(not_passed_through)
    first = client.responses.create(model="gpt-x", input="Say hi")
    try:
        with client.responses.stream(response_id=first.id) as events:
            kinds = [e.type for e in events]
    except openai.APIStatusError as err:     # refused: as good, if it says so
        assert err.status_code in (400, 404, 501)
        return
    assert kinds and kinds[-1] == "response.completed"


def test_responses_input_tokens_count(upstream):
    client = client_for(upstream)
    result = client.responses.input_tokens.count(
        model="gpt-x", instructions="Be brief.", tools=RESPONSE_TOOLS,
        input="count these words " * 10)
    assert result.object == "response.input_tokens"
    assert isinstance(result.input_tokens, int) and result.input_tokens > 10
    counted = {"gemini": ":countTokens", "anthropic": "/v1/messages/count_tokens",
               RESPONSES: "/v1/responses/input_tokens"}
    if upstream.kind in counted:           # the upstream's own count
        assert upstream.fake.requests[-1]["path"].endswith(counted[upstream.kind])
    elif upstream.kind == "openai":        # estimated locally: nothing generated
        assert upstream.fake.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_rate_limit_error(with_fakes, stream):
    with_fakes.rate_limit()
    client = client_for(with_fakes)
    with pytest.raises(openai.RateLimitError) as err:
        if stream:
            list(client.responses.create(model="gpt-x", input="Hi", stream=True))
        else:
            client.responses.create(model="gpt-x", input="Hi")
    assert err.value.status_code == 429
    assert "Rate limited" in error_object(err).message
    assert err.value.response.headers.get("retry-after") == "7"


def test_responses_bad_request_error(with_fakes):
    with_fakes.bad_request()
    with pytest.raises(openai.BadRequestError) as err:
        client_for(with_fakes).responses.create(model="gpt-x", input="Hi")
    assert "Bad field: frobnicate" in error_object(err).message
    assert err.value.type == "invalid_request_error"


def test_responses_image_input(with_fakes):
    client = client_for(with_fakes)
    response = client.responses.create(model="gpt-x", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is it?"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgpzZGs=",
         "detail": "auto"}]}])
    assert response.output_text == "FAKE says hello."
    assert "iVBORw0KGgpzZGs=" in json.dumps(with_fakes.fake.last)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_usage_with_cached_tokens(with_fakes, stream):
    with_fakes.cached_reply(stream)
    client = client_for(with_fakes)
    if stream:
        events = list(client.responses.create(model="gpt-x", input="Hi", stream=True))
        response = events[-1].response
    else:
        response = client.responses.create(model="gpt-x", input="Hi")
    assert response.output_text == "Cached."
    use = response.usage       # input_tokens include the cached ones
    assert (use.input_tokens, use.output_tokens, use.total_tokens) == (20, 5, 25)
    assert use.input_tokens_details.cached_tokens == CACHED


failing = troubled_fixture(WITH_FAKES)


@pytest.mark.parametrize("ending", ["error", "reset"])
def test_responses_a_failure_mid_stream_is_response_failed(failing, ending):
    """The upstream fails after the first words: its own in-stream error, or a dropped
    connection. The client's stream ends with a response.failed with an error code,
    numbered on from the events before it; the stream helper finds no final response.
    The code is one the SDK's ResponseError allows (Anthropic's overloaded_error too):
    with strict validation any other fails the whole stream."""
    failing.fake.rules["*"] = stream(failing.kind, ending)
    client = client_for(failing)
    events = list(client.responses.create(model="gpt-x", input="Hi", stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        FIRST_WORDS
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    failed = events[-1].response
    assert failed.status == "failed" and failed.id == events[0].response.id
    assert failed.error.code == "server_error" and failed.error.message
    if ending == "error":
        assert "broke mid-stream" in failed.error.message
    raw = raw_stream(client, model="gpt-x", input="Hi")
    assert raw[-1][0] == "response.failed"
    with client.responses.stream(model="gpt-x", input="Hi") as helper:
        kinds = [e.type for e in helper]
        assert kinds[-1] == "response.failed"
        with pytest.raises(RuntimeError, match="response.completed"):
            helper.get_final_response()
