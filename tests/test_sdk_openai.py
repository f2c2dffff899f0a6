"""The official openai SDK as a client of the proxy, against every upstream kind."""

import base64
import json
import struct

import pytest

openai = pytest.importorskip(
    "openai", reason="the openai SDK is not installed (pip install openai; .ci/run installs "
                     "it in a throwaway venv)")

from sdk_upstreams import TOOLS, TWO_CALLS, upstream_fixture  # noqa: E402

upstream = upstream_fixture()
with_fakes = upstream_fixture(["openai", "gemini", "anthropic"])

TOOL_SPECS = [{"type": "function", "function": {"name": name, "description": "tool " + name,
                                                "parameters": params}}
              for name, params in TOOLS.items()]


def client_for(upstream):
    return openai.OpenAI(base_url=upstream.proxy.url + "/v1", api_key="client-key",
                         max_retries=0)


def test_create_and_stream(upstream):
    client = client_for(upstream)
    expected = "echo (gpt-x): Say hi" if upstream.kind == "echo" else "FAKE says hello."
    reply = client.chat.completions.create(model="gpt-x", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}])
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == \
        reply.usage.prompt_tokens + reply.usage.completion_tokens
    chunks = list(client.chat.completions.create(
        model="gpt-x", messages=[{"role": "user", "content": "Say hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_stream_helper(with_fakes):
    client = client_for(with_fakes)
    with client.chat.completions.stream(
            model="gpt-x", messages=[{"role": "user", "content": "Say hi"}]) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == "FAKE says hello."
    assert final.choices[0].message.content == "FAKE says hello."


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
    assert "Rate limited" in str(err.value)
    assert err.value.response.headers.get("retry-after") == "7"


def test_embeddings(upstream):
    client = client_for(upstream)
    if upstream.kind in ("anthropic", "echo"):
        with pytest.raises(openai.BadRequestError) as err:
            client.embeddings.create(model="embed-x", input="hello")
        assert "has no embeddings" in str(err.value)
        return
    result = client.embeddings.create(model="embed-x", input=["hello", "world"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) > 0
    assert result.data[0].embedding != result.data[1].embedding
    packed = client.embeddings.create(model="embed-x", input="hello",
                                      encoding_format="base64").data[0].embedding
    raw = base64.b64decode(packed)          # asked for explicitly, the SDK leaves it packed
    assert struct.unpack("<%df" % (len(raw) // 4), raw) == \
        pytest.approx(result.data[0].embedding)


def test_models(upstream):
    client = client_for(upstream)
    ids = [m.id for m in client.models.list()]
    assert "gemini-2.5-pro" in ids
    assert client.models.retrieve("gemini-2.5-pro").id == "gemini-2.5-pro"


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
