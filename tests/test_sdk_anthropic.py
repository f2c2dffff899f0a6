"""The official anthropic SDK as a client of the proxy, against every upstream kind, with
strict response validation: every reply and stream event must match the SDK's own types."""

import pytest

anthropic = pytest.importorskip(
    "anthropic", reason="the anthropic SDK is not installed (pip install anthropic; "
                        ".ci/run installs it in a throwaway venv)")

from fake_upstream import (THOUGHT, completion, json_reply, text_stream,  # noqa: E402
                           tool_call, tool_stream)
from sdk_upstreams import (CACHED, RESPONSES, TOOLS, TWO_CALLS, WITH_FAKES,  # noqa: E402
                           upstream_fixture)

upstream = upstream_fixture()
with_fakes = upstream_fixture(WITH_FAKES)
converted = upstream_fixture(["openai", "gemini", RESPONSES, "echo"])
deepseek = upstream_fixture(["openai"])

TOOL_SPECS = [{"name": name, "description": "tool " + name, "input_schema": params}
              for name, params in TOOLS.items()]
THINKING = {"type": "enabled", "budget_tokens": 2048}


def client_for(upstream):
    """The SDK with strict response validation: every reply and stream event is checked
    against the SDK's own types (Message, RawMessageStreamEvent, MessageTokensCount,
    ModelInfo...) and one they reject raises anthropic.APIResponseValidationError."""
    return anthropic.Anthropic(base_url=upstream.proxy.url, api_key="client-key",
                               max_retries=0, _strict_response_validation=True)


def error_response(err):
    """The error body the SDK kept, read as the SDK's own ErrorResponse type."""
    from anthropic.types import ErrorResponse
    return ErrorResponse.model_validate(err.value.body)


def generate(client, stream, **request):
    """A whole Message: from messages.create, or assembled by messages.stream."""
    if stream:
        with client.messages.stream(**request) as events:
            return events.get_final_message()
    return client.messages.create(**request)


def test_create_and_stream(upstream):
    client = client_for(upstream)
    expected = "echo (claude-x): Say hi" if upstream.kind == "echo" else "FAKE says hello."
    message = client.messages.create(model="claude-x", max_tokens=500, system="Be brief.",
                                     messages=[{"role": "user", "content": "Say hi"}])
    assert message.type == "message" and message.role == "assistant" and message.id
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == expected
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
    assert message.usage.input_tokens > 0 or upstream.kind == "echo"
    with client.messages.stream(model="claude-x", max_tokens=500,
                                messages=[{"role": "user", "content": "Say hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == expected and final.content[0].text == expected
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    events = list(client.messages.create(model="claude-x", max_tokens=500, stream=True,
                                         messages=[{"role": "user", "content": "Say hi"}]))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == expected


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_single_tool_use_round_trip(with_fakes, stream):
    client = client_for(with_fakes)
    messages = [{"role": "user", "content": 'CALL read {"path": "b.txt"}'}]
    first = generate(client, stream, model="claude-x", max_tokens=1000, messages=messages,
                     tools=TOOL_SPECS)
    assert first.stop_reason == "tool_use"
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert call.id and (call.name, call.input) == ("read", {"path": "b.txt"})
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                               "content": "BBB"}]}]
    second = generate(client, stream, model="claude-x", max_tokens=1000, messages=messages,
                      tools=TOOL_SPECS)
    assert second.stop_reason == "end_turn"
    assert [b.text for b in second.content] == ["FAKE got tool result(s): read -> BBB"]


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


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_thinking(with_fakes, stream):
    client = client_for(with_fakes)
    message = generate(client, stream, model="claude-x", max_tokens=4000, thinking=THINKING,
                       messages=[{"role": "user", "content": "Say hi"}])
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == THOUGHT
    assert isinstance(message.content[0].signature, str) and message.content[0].signature
    assert message.content[1].text == "FAKE says hello."


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_thinking_round_trip(with_fakes, stream):
    """Thinking with tool use, the content sent back as the SDK parsed it: the upstream
    must get its reasoning back (DeepSeek and Kimi want reasoning_content, Anthropic its
    signed thinking block, Gemini its thoughtSignature)."""
    client = client_for(with_fakes)
    messages = [{"role": "user", "content": TWO_CALLS}]
    first = generate(client, stream, model="claude-x", max_tokens=4000, thinking=THINKING,
                     messages=messages, tools=TOOL_SPECS)
    number = len(with_fakes.fake.requests)
    kinds = [b.type for b in first.content]
    assert kinds == ["thinking", "tool_use", "tool_use"]
    assert first.content[0].thinking == THOUGHT and first.content[0].signature
    calls = first.content[1:]
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [
                     {"type": "tool_result", "tool_use_id": c.id,
                      "content": {"read": "AAA", "glob": "x.py"}[c.name]} for c in calls]}]
    second = generate(client, stream, model="claude-x", max_tokens=4000, thinking=THINKING,
                      messages=messages, tools=TOOL_SPECS)
    assert "".join(b.text for b in second.content if b.type == "text") == \
        "FAKE got tool result(s): read -> AAA; glob -> x.py"
    assert with_fakes.reasoning_sent_back() == with_fakes.reasoning_given(number, 2)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_unasked_reasoning_with_a_tool_call_round_trip(deepseek, stream):
    """DeepSeek and Kimi send reasoning_content with tool calls even when no thinking was
    asked for, and want it back on that turn. Whatever the proxy shows of it must pass the
    SDK's types, and the upstream must get it back."""
    client = client_for(deepseek)
    reasoning = "The user wants b.txt, so read it."
    call = ("call_r1", "read", {"path": "b.txt"})
    deepseek.fake.queue(tool_stream([call], reasoning=reasoning) if stream else json_reply(
        completion(None, [tool_call(*call)], finish="tool_calls", reasoning=reasoning)))
    messages = [{"role": "user", "content": "Read b.txt"}]
    first = generate(client, stream, model="claude-x", max_tokens=1000, messages=messages,
                     tools=TOOL_SPECS)
    assert first.stop_reason == "tool_use"
    assert [(b.id, b.name, b.input) for b in first.content if b.type == "tool_use"] == [call]
    assert all(b.signature for b in first.content if b.type == "thinking")
    deepseek.fake.queue(text_stream("Done.") if stream else json_reply(completion("Done.")))
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_r1",
                                               "content": "BBB"}]}]
    second = generate(client, stream, model="claude-x", max_tokens=1000, messages=messages,
                      tools=TOOL_SPECS)
    assert [b.text for b in second.content if b.type == "text"] == ["Done."]
    assert deepseek.reasoning_sent_back() == reasoning


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_cached_tokens_usage(with_fakes, stream):
    with_fakes.cached_reply(stream)
    message = generate(client_for(with_fakes), stream, model="claude-x", max_tokens=100,
                       messages=[{"role": "user", "content": "Hi"}])
    assert [b.text for b in message.content] == ["Cached."]
    use = message.usage      # input_tokens leaves out what was read from the cache
    assert (use.input_tokens, use.cache_read_input_tokens, use.output_tokens) == \
        (20 - CACHED, CACHED, 5)


def test_structured_output(with_fakes):
    from pydantic import BaseModel

    class Rating(BaseModel):
        score: int
        label: str
    client = client_for(with_fakes)
    parsed = client.messages.parse(model="claude-x", max_tokens=500, output_format=Rating,
                                   messages=[{"role": "user", "content": "Rate it"}])
    assert parsed.parsed_output == Rating(score=1, label="fake")
    assert parsed.content[0].type == "text"


def test_image_and_document(with_fakes):
    client = client_for(with_fakes)
    message = client.messages.create(model="claude-x", max_tokens=100, messages=[
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgphbnRo"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": "JVBERi0xLjQKYW50aA=="}},
            {"type": "text", "text": "What is it?"}]}])
    assert message.content[0].text == "FAKE says hello."
    assert "iVBORw0KGgphbnRo" in str(with_fakes.fake.last)
    assert "JVBERi0xLjQKYW50aA==" in str(with_fakes.fake.last)


def test_count_tokens(upstream):
    client = client_for(upstream)
    result = client.messages.count_tokens(
        model="claude-x", system="Be brief.", tools=TOOL_SPECS,
        messages=[{"role": "user", "content": "count these words " * 10}])
    assert isinstance(result.input_tokens, int) and result.input_tokens > 10
    if upstream.kind in ("gemini", "anthropic"):   # the upstream's own count was used
        assert "count" in (upstream.fake.requests[-1]["path"].lower())
    elif upstream.kind == RESPONSES:
        assert upstream.fake.requests[-1]["path"].endswith("/responses/input_tokens")


def test_rate_limit_error(with_fakes):
    with_fakes.rate_limit()
    with pytest.raises(anthropic.RateLimitError) as err:
        client_for(with_fakes).messages.create(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 429
    assert "Rate limited" in str(err.value)
    body = error_response(err)
    assert body.type == "error" and body.error.type == "rate_limit_error"
    assert "Rate limited" in body.error.message
    assert err.value.response.headers.get("retry-after") == "7"


def test_bad_request_error(with_fakes):
    with_fakes.bad_request()
    with pytest.raises(anthropic.BadRequestError) as err:
        client_for(with_fakes).messages.create(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "Hi"}])
    body = error_response(err)
    assert body.error.type == "invalid_request_error"
    assert "Bad field: frobnicate" in body.error.message


def test_request_the_proxy_refuses(converted):
    """A request the proxy itself refuses (an Anthropic upstream gets it as it is)."""
    with pytest.raises(anthropic.BadRequestError) as err:
        client_for(converted).messages.create(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "Hi"}],
            extra_body={"frobnicate": 1})
    body = error_response(err)
    assert body.error.type == "invalid_request_error" and "frobnicate" in body.error.message
    assert converted.fake is None or converted.fake.requests == []


def test_models_list(upstream):
    page = client_for(upstream).models.list()
    assert page.has_more is False
    assert "gemini-2.5-pro" in [m.id for m in page.data]
    assert all(m.type == "model" and m.display_name and m.created_at and
               m.lifecycle in ("active", "deprecated", "retired") for m in page.data)


def test_model_retrieve(upstream):
    model = client_for(upstream).models.retrieve("gemini-2.5-pro")
    assert model.id == "gemini-2.5-pro" and model.type == "model"
    assert model.display_name and model.created_at
    assert model.lifecycle in ("active", "deprecated", "retired")


# -- a troubled upstream (issue 4): pass-through from Anthropic, converted from OpenAI -------

from faults import FIRST_WORDS, REST, error, stream  # noqa: E402
from sdk_upstreams import troubled_fixture  # noqa: E402

troubled = troubled_fixture(["anthropic", "openai", RESPONSES])


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
    # "... ended its stream before the reply was finished" / "... before response.completed"
    assert "ended" in str(err.value) and "before" in str(err.value)
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
