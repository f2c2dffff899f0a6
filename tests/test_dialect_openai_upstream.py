"""The OpenAI-compatible upstream side (pure functions): replies, streams and errors from
OpenAI, DeepSeek, Kimi, vLLM, llama.cpp and the like become the neutral model."""

import json

import pytest

import gemini_proxy as gp
from gemini_proxy import (CONTENT_FILTER, LENGTH, MALFORMED_TOOL_CALL, STOP,
                          TOOL_CALLS, Finish, Part, Usage)


def sse(*chunks):
    return [("message", c if isinstance(c, str) else json.dumps(c)) for c in chunks]


def delta(**fields):
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


def finish(reason):
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


# -- OpenAI reply -> neutral --------------------------------------------------------------

def test_decode_non_stream_reply():
    reply = gp.decode_openai_response({"id": "c1", "model": "m", "choices": [
        {"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me look.", "reasoning_content": "hmm",
            "tool_calls": [{"id": "t1", "type": "function", "function": {
                "name": "read", "arguments": '{"p": "x"}'}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16,
                  "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 2}}})
    parts = reply.choices[0].parts
    assert [(p.type, p.text or p.name) for p in parts] == [
        ("thinking", "hmm"), ("text", "Let me look."), ("tool_call", "read")]
    assert parts[2].args == {"p": "x"} and parts[2].id == "t1"
    assert reply.choices[0].finish.reason == TOOL_CALLS
    assert reply.usage == Usage(10, 6, cached_tokens=4, reasoning_tokens=2)


@pytest.mark.parametrize("message, finish_reason, expected", [
    ({"content": "x"}, "stop", STOP),
    ({"content": "x"}, "length", LENGTH),
    ({"content": "x"}, "content_filter", CONTENT_FILTER),
    ({"content": "x"}, "eos", STOP),
    ({"content": None, "refusal": "I can't."}, "stop", CONTENT_FILTER),
    ({"content": None, "tool_calls": [{"id": "1", "function": {
        "name": "f", "arguments": "{}"}}]}, "stop", TOOL_CALLS),
    ({"content": None, "tool_calls": [{"id": "1", "function": {
        "name": "f", "arguments": "{broken"}}]}, "tool_calls", MALFORMED_TOOL_CALL),
    ({"content": None, "tool_calls": [{"id": "1", "function": {
        "name": "f", "arguments": "[1]"}}]}, "tool_calls", MALFORMED_TOOL_CALL),
])
def test_finish_reasons(message, finish_reason, expected):
    reply = gp.decode_openai_response({"choices": [
        {"index": 0, "message": message, "finish_reason": finish_reason}]})
    assert reply.choices[0].finish.reason == expected


@pytest.mark.parametrize("usage, cached", [
    ({"prompt_tokens": 9, "completion_tokens": 1, "prompt_cache_hit_tokens": 5}, 5),
    ({"prompt_tokens": 9, "completion_tokens": 1, "cached_tokens": 3}, 3),
    ({"prompt_tokens": 9, "completion_tokens": 1}, 0),
])
def test_cached_token_spellings(usage, cached):
    assert gp.decode_openai_usage(usage).cached_tokens == cached


def test_bad_replies_are_upstream_errors():
    for payload in ({"object": "x"}, [], {"choices": []}):
        with pytest.raises(gp.UpstreamError) as err:
            gp.decode_openai_response(payload)
        assert err.value.status == 502


def test_several_choices():
    reply = gp.decode_openai_response({"choices": [
        {"index": 1, "message": {"content": "second"}, "finish_reason": "stop"},
        {"index": 0, "message": {"content": "first"}, "finish_reason": "length"}]})
    body = gp.encode_gemini_response(reply, "gemini-2.5-pro", "rid")
    assert [c["content"]["parts"][0]["text"] for c in body["candidates"]] == ["first", "second"]
    assert [c["finishReason"] for c in body["candidates"]] == ["MAX_TOKENS", "STOP"]
    assert [c["index"] for c in body["candidates"]] == [0, 1]


# -- OpenAI stream -> neutral -------------------------------------------------------------

def events_of(*chunks):
    return list(gp.decode_openai_stream(sse(*chunks)))


def test_stream_text_reasoning_and_usage_chunk():
    events = events_of(delta(role="assistant", content=""), delta(reasoning_content="r1"),
                       delta(reasoning="r2"), delta(content="Hel"), delta(content="lo"),
                       finish("stop"),
                       {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
                       "[DONE]")
    assert [(type(e).__name__, getattr(e, "text", None)) for e in events[:-1]] == [
        ("Part", "r1"), ("Part", "r2"), ("Part", "Hel"), ("Part", "lo")]
    assert events[0].type == gp.THINKING and events[2].type == gp.TEXT
    assert events[-1] == Finish(STOP, Usage(3, 2))


def test_stream_prefers_reasoning_content_when_both_are_sent():
    events = events_of(delta(reasoning_content="once", reasoning="once"), finish("stop"))
    assert [e.text for e in events if isinstance(e, Part)] == ["once"]


def test_stream_tool_fragments_merge():
    events = events_of(
        delta(tool_calls=[{"index": 0, "id": "a", "type": "function",
                           "function": {"name": "read", "arguments": ""}}]),
        delta(tool_calls=[{"index": 1, "id": "b", "function": {"name": "glob",
                                                               "arguments": '{"q":'}}]),
        delta(tool_calls=[{"index": 0, "id": "a", "function": {"name": "read",
                                                               "arguments": '{"p":'}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": ' "x"}'}}]),
        delta(tool_calls=[{"index": 1, "function": {"arguments": ' "*"}'}}]),
        finish("tool_calls"), "[DONE]")
    calls = [e for e in events if isinstance(e, Part)]
    assert [(c.id, c.name, c.args) for c in calls] == [("a", "read", {"p": "x"}),
                                                       ("b", "glob", {"q": "*"})]
    assert events[-1].reason == TOOL_CALLS


def test_stream_parallel_calls_all_numbered_0_stay_apart():
    # Joined, '{"p": "a"}{"p": "b"}' was malformed: both calls were lost, the turn ended.
    events = events_of(
        delta(tool_calls=[{"index": 0, "id": "a", "function": {"name": "read",
                                                               "arguments": '{"p": "a"}'}}]),
        delta(tool_calls=[{"index": 0, "id": "b", "function": {"name": "read",
                                                               "arguments": '{"p":'}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": ' "b"}'}}]),
        delta(tool_calls=[{"index": 1, "id": "c", "function": {"name": "glob",
                                                               "arguments": "{}"}}]),
        finish("tool_calls"), "[DONE]")
    assert [(e.id, e.name, e.args) for e in events if isinstance(e, Part)] == [
        ("a", "read", {"p": "a"}), ("b", "read", {"p": "b"}), ("c", "glob", {})]
    assert events[-1].reason == TOOL_CALLS


def test_stream_a_call_whose_fragments_change_id_midway_stays_one():
    # A call begins with its name: another id alone, or an empty fragment after the
    # call is whole, begins none (a call of no name would reach the client).
    events = events_of(
        delta(tool_calls=[{"index": 0, "id": "a1", "function": {"name": "read",
                                                                "arguments": '{"p":'}}]),
        delta(tool_calls=[{"index": 0, "id": "a2", "function": {"arguments": ' "x"}'}}]),
        delta(tool_calls=[{"index": 0, "id": "a3", "function": {"arguments": ""}}]),
        delta(tool_calls=[{"function": {"arguments": ""}}]),
        finish("tool_calls"), "[DONE]")
    assert [(e.id, e.name, e.args) for e in events if isinstance(e, Part)] == [
        ("a1", "read", {"p": "x"})]


def test_stream_a_call_named_under_a_new_id_in_every_fragment_is_joined_again():
    # (vLLM's gpt-oss streaming, which repeated the name with a fresh id each time)
    events = events_of(*[
        delta(tool_calls=[{"index": 0, "id": "c%d" % n, "function": {"name": "read",
                                                                     "arguments": piece}}])
        for n, piece in enumerate(['{"p"', ': "x', '"}'])], finish("tool_calls"), "[DONE]")
    assert [(e.id, e.name, e.args) for e in events if isinstance(e, Part)] == [
        ("c0", "read", {"p": "x"})]


def test_stream_a_call_of_no_name_is_malformed():
    events = events_of(delta(tool_calls=[{"index": 0, "id": "1", "function": {
        "arguments": '{"p": 1}'}}]), finish("tool_calls"))
    assert events == [Finish(MALFORMED_TOOL_CALL, None)]


def test_stream_whole_calls_without_index_and_object_arguments():
    events = events_of(
        delta(tool_calls=[{"id": "x1", "function": {"name": "f", "arguments": {"k": 1}}}]),
        delta(tool_calls=[{"id": "x2", "function": {"name": "g", "arguments": "{}"}}]),
        finish("tool_calls"))
    assert [(e.id, e.args) for e in events if isinstance(e, Part)] == [("x1", {"k": 1}),
                                                                      ("x2", {})]


def test_stream_a_call_without_index_goes_on_in_fragments_without_id():
    events = events_of(
        delta(tool_calls=[{"id": "x1", "function": {"name": "f", "arguments": '{"k":'}}]),
        delta(tool_calls=[{"function": {"arguments": " 1}"}}]),
        delta(tool_calls=[{"function": {"name": "g", "arguments": "{}"}}]),
        finish("tool_calls"))
    calls = [(e.id, e.name, e.args) for e in events if isinstance(e, Part)]
    assert calls[0] == ("x1", "f", {"k": 1}) and calls[1][1:] == ("g", {}), calls


def test_stream_missing_ids_get_unique_ones():
    events = events_of(
        delta(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": "{}"}}]),
        delta(tool_calls=[{"index": 1, "function": {"name": "f", "arguments": "{}"}}]),
        finish("tool_calls"))
    ids = [e.id for e in events if isinstance(e, Part)]
    assert len(set(ids)) == 2 and all(ids)


def test_stream_usage_inside_the_choice_as_moonshot_sends_it():
    events = events_of(delta(content="x"), {"choices": [
        {"index": 0, "delta": {}, "finish_reason": "stop",
         "usage": {"prompt_tokens": 5, "completion_tokens": 1}}]}, "[DONE]")
    assert events[-1].usage == Usage(5, 1)


def test_stream_done_without_finish_reason_is_a_normal_stop():
    assert events_of(delta(content="x"), "[DONE]")[-1] == Finish(STOP, None)


def test_stream_malformed_tool_arguments():
    events = events_of(delta(tool_calls=[{"index": 0, "id": "1", "function": {
        "name": "f", "arguments": '{"unclosed": '}}]), finish("tool_calls"))
    assert events == [Finish(MALFORMED_TOOL_CALL, None)]


@pytest.mark.parametrize("chunks, says", [
    ([delta(content="x")], "ended before"),
    (["{not json"], "invalid JSON"),
    ([delta(content="x"), {"error": {"message": "overloaded", "code": 503}}], "overloaded"),
])
def test_stream_failures_raise(chunks, says):
    with pytest.raises(gp.UpstreamError) as err:
        events_of(*chunks)
    assert says in err.value.message


def test_stream_error_event_keeps_its_status():
    assert gp.openai_stream_error(json.dumps({"error": {"message": "slow down", "code": 429}})) \
        .status == 429
    assert gp.openai_stream_error(json.dumps({"error": "plain"})).status == 502
    assert gp.openai_stream_error(json.dumps(delta(content='{"error": 1}'))) is None


@pytest.mark.parametrize("error, status", [
    ({"message": "slow down", "code": "rate_limit_exceeded"}, 429),
    ({"message": "slow down", "code": "429"}, 429),
    ({"message": "no credit", "type": "insufficient_quota", "code": None}, 429),
    ({"message": "too long", "code": "context_length_exceeded"}, 400),
    ({"message": "busy", "code": "server_is_overloaded"}, 503),
    ({"message": "odd", "code": "something_new"}, 502),
    ({"message": "odd", "code": True}, 502),
    ({"message": "odd", "code": "\u00b2"}, 502),   # a digit int() refuses: no 500
    ({"message": "slow down", "code": "1300", "type": "rate_limit_error"}, 429),
    ({"message": "slow down", "code": 1300, "type": "rate_limit_error"}, 429)])
def test_an_error_with_a_name_for_a_code_has_its_status(error, status):
    # (Without a number these were all 502s: a rate limit rested no key.)
    assert gp.openai_stream_error(json.dumps({"error": error})).status == status


@pytest.mark.parametrize("status, payload, message", [
    (429, {"error": {"message": "Rate limit", "type": "rate_limit_error"}}, "Rate limit"),
    (400, {"error": "bad thing"}, "bad thing"),
    (422, {"detail": [{"msg": "field required"}]}, "field required"),
    (503, "Service Unavailable", "Service Unavailable"),
    (500, {}, "HTTP 500 with no message"),
])
def test_upstream_error_bodies(status, payload, message):
    error = gp.decode_openai_error(status, payload, {"retry-after": "3"})
    assert error.status == status and message in error.message and error.retry_after == 3
