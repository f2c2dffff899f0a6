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
from sdk_upstreams import CACHED, TOOLS, TWO_CALLS, upstream_fixture  # noqa: E402

upstream = upstream_fixture()
with_fakes = upstream_fixture(["openai", "gemini", "anthropic"])

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
    if with_fakes.kind == "gemini":        # the fake counts 3 thought tokens
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


converted = upstream_fixture(["gemini", "anthropic", "echo"])


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

troubled = troubled_fixture(["openai", "gemini"])


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
