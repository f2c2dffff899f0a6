"""The official anthropic SDK as a client of the proxy, against every upstream kind."""

import pytest

anthropic = pytest.importorskip(
    "anthropic", reason="the anthropic SDK is not installed (pip install anthropic; "
                        ".ci/run installs it in a throwaway venv)")

from sdk_upstreams import TOOLS, TWO_CALLS, upstream_fixture  # noqa: E402

upstream = upstream_fixture()
with_fakes = upstream_fixture(["openai", "gemini", "anthropic"])

TOOL_SPECS = [{"name": name, "description": "tool " + name, "input_schema": params}
              for name, params in TOOLS.items()]


def client_for(upstream):
    return anthropic.Anthropic(base_url=upstream.proxy.url, api_key="client-key",
                               max_retries=0)


def test_create_and_stream(upstream):
    client = client_for(upstream)
    expected = "echo (claude-x): Say hi" if upstream.kind == "echo" else "FAKE says hello."
    message = client.messages.create(model="claude-x", max_tokens=500, system="Be brief.",
                                     messages=[{"role": "user", "content": "Say hi"}])
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == expected
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
    with client.messages.stream(model="claude-x", max_tokens=500,
                                messages=[{"role": "user", "content": "Say hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == expected and final.content[0].text == expected
    assert final.usage.output_tokens > 0


def test_parallel_tool_use_round_trip(with_fakes):
    client = client_for(with_fakes)
    messages = [{"role": "user", "content": TWO_CALLS}]
    with client.messages.stream(model="claude-x", max_tokens=1000, messages=messages,
                                tools=TOOL_SPECS) as stream:
        first = stream.get_final_message()
    calls = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use"
    assert [(c.name, c.input) for c in calls] == [("read", {"path": "a.txt"}),
                                                 ("glob", {"pattern": "*.py"})]
    messages.append({"role": "assistant", "content": first.content})
    messages.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": c.id,
         "content": {"read": "AAA", "glob": "x.py"}[c.name]} for c in calls]})
    second = client.messages.create(model="claude-x", max_tokens=1000, messages=messages,
                                    tools=TOOL_SPECS)
    assert second.content[0].text == "FAKE got tool result(s): read -> AAA; glob -> x.py"


def test_thinking_round_trip(with_fakes):
    client = client_for(with_fakes)
    thinking = {"type": "enabled", "budget_tokens": 2048}
    messages = [{"role": "user", "content": 'CALL read {"path": "b.txt"}'}]
    with client.messages.stream(model="claude-x", max_tokens=4000, thinking=thinking,
                                messages=messages, tools=TOOL_SPECS) as stream:
        first = stream.get_final_message()
    kinds = [b.type for b in first.content]
    assert kinds[0] == "thinking" and kinds[-1] == "tool_use"
    assert first.content[0].thinking == "FAKE thinks." and first.content[0].signature
    call = first.content[-1]
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result",
                                               "tool_use_id": call.id, "content": "BBB"}]}]
    second = client.messages.create(model="claude-x", max_tokens=4000, thinking=thinking,
                                    messages=messages, tools=TOOL_SPECS)
    assert "read -> BBB" in "".join(b.text for b in second.content if b.type == "text")


def test_image_and_document(with_fakes):
    client = client_for(with_fakes)
    message = client.messages.create(model="claude-x", max_tokens=100, messages=[
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgphbnRo"}},
            {"type": "text", "text": "What is it?"}]}])
    assert message.content[0].text == "FAKE says hello."
    assert "iVBORw0KGgphbnRo" in str(with_fakes.fake.last)


def test_count_tokens(upstream):
    client = client_for(upstream)
    result = client.messages.count_tokens(
        model="claude-x", messages=[{"role": "user", "content": "count these words " * 10}])
    assert result.input_tokens > 10
    if upstream.kind in ("gemini", "anthropic"):   # the upstream's own count was used
        assert "count" in (upstream.fake.requests[-1]["path"].lower())


def test_rate_limit_error(with_fakes):
    with_fakes.rate_limit()
    with pytest.raises(anthropic.RateLimitError) as err:
        client_for(with_fakes).messages.create(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "Hi"}])
    assert "Rate limited" in str(err.value)
    assert err.value.response.headers.get("retry-after") == "7"


def test_models(upstream):
    client = client_for(upstream)
    models = client.models.list()
    assert "gemini-2.5-pro" in [m.id for m in models.data]
    assert client.models.retrieve("gemini-2.5-pro").id == "gemini-2.5-pro"


# -- a troubled upstream (issue 4): pass-through from Anthropic, converted from OpenAI -------

from faults import FIRST_WORDS, REST, error, stream  # noqa: E402
from sdk_upstreams import troubled_fixture  # noqa: E402

troubled = troubled_fixture(["anthropic", "openai"])


def streamed_text(client, received):
    with client.messages.stream(model="claude-x", max_tokens=100,
                                messages=[{"role": "user", "content": "Hi"}]) as events:
        for text in events.text_stream:
            received.append(text)
    return "".join(received)


def test_sdk_raises_when_a_stream_breaks_mid_way(troubled):
    troubled.fake.rules["*"] = stream(troubled.kind, "truncated")
    received = []
    with pytest.raises(anthropic.APIError) as err:
        streamed_text(client_for(troubled), received)
    assert "before the reply was finished" in str(err.value)
    assert "".join(received) == FIRST_WORDS


def test_sdk_skips_keepalive_pings_in_a_stalled_stream(troubled):
    troubled.fake.rules["*"] = stream(troubled.kind, "stall", pause=0.5)
    assert streamed_text(client_for(troubled), []) == FIRST_WORDS + REST


def test_sdk_sees_429_with_the_earliest_retry_when_every_key_rests(troubled):
    troubled.fake.rules["key-a"] = error(troubled.kind, 429, "a is spent", retry_after=9)
    troubled.fake.rules["key-b"] = error(troubled.kind, 429, "b is spent", retry_after=4)
    with pytest.raises(anthropic.RateLimitError) as err:
        client_for(troubled).messages.create(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "Hi"}])
    assert "spent" in str(err.value)
    assert err.value.response.headers.get("retry-after") == "4"
