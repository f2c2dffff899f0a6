"""Seeded mutations of realistic payloads. A client's bad request must end in a 400 that
names the field (never a crash, so never a 500); an upstream's bad reply must end in an
UpstreamError (a 502 to the client), and whatever decodes must encode for every client."""

import copy
import json
import random

import pytest

import gemini_proxy as gp

ODD_VALUES = [None, 0, -1, 1.5, "", "x", [], {}, [1], {"a": 1}, True, "\u2028", 10 ** 20,
              [None], {"type": None}, {"text": 5}, float("inf"), float("-inf"), 1e308]

CLIENT_REQUESTS = {
    "gemini": {
        "systemInstruction": {"parts": [{"text": "s"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}, {"inlineData": {
                "mimeType": "image/png", "data": "QQ=="}}]},
            {"role": "model", "parts": [{"functionCall": {"id": "a", "name": "f",
                                                          "args": {"x": 1}},
                                         "thoughtSignature": "S"}]},
            {"role": "user", "parts": [{"functionResponse": {
                "id": "a", "name": "f", "response": {"output": "o"}}}]}],
        "tools": [{"functionDeclarations": [{"name": "f", "parametersJsonSchema": {
            "type": "object", "properties": {"x": {"type": "integer"}}}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                                                 "allowedFunctionNames": ["f"]}},
        "generationConfig": {"temperature": 1, "maxOutputTokens": 5, "stopSequences": ["x"],
                             "responseMimeType": "application/json",
                             "responseJsonSchema": {"type": "OBJECT"},
                             "thinkingConfig": {"includeThoughts": True,
                                                "thinkingBudget": 10}}},
    "openai": {
        "model": "m", "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "t"}, {
                "type": "image_url", "image_url": {"url": "data:image/png;base64,QQ=="}}]},
            {"role": "assistant", "content": None, "reasoning_content": "r", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f",
                                                             "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f",
                                                    "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "n", "schema": {"type": "object"}}},
        "reasoning_effort": "low", "max_tokens": 5, "stop": ["x"], "n": 1, "stream": True},
    "anthropic": {
        "model": "m", "max_tokens": 5,
        "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "t"}, {
                "type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": "QQ=="}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "th", "signature": "sig"},
                {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                          "content": [{"type": "text", "text": "r"}],
                                          "is_error": True}]}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"}, "thinking": {"type": "enabled", "budget_tokens": 2000},
        "output_config": {"effort": "low", "format": {"type": "json_schema",
                                                      "schema": {"type": "object"}}},
        "stop_sequences": ["x"], "stream": True},
}
CLIENT_DECODERS = {"gemini": lambda p: gp.decode_gemini_request(p, "m"),
                   "openai": gp.decode_openai_request,
                   "anthropic": gp.decode_anthropic_request}
UPSTREAM_ENCODERS = [lambda c: gp.encode_openai_request(c, "m"),
                     lambda c: gp.encode_anthropic_request(c, "m"),
                     lambda c: gp.encode_gemini_request(c, "m")]

UPSTREAM_REPLIES = {
    "openai": {"id": "c", "model": "m", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "hi", "reasoning_content": "r", "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        "finish_reason": "tool_calls"}], "usage": {
        "prompt_tokens": 1, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 1},
        "completion_tokens_details": {"reasoning_tokens": 1}}},
    "anthropic": {"id": "m", "content": [
        {"type": "thinking", "thinking": "t", "signature": "s"}, {"type": "text", "text": "x"},
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}], "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 3}},
    "gemini": {"candidates": [{"content": {"parts": [
        {"text": "t", "thought": True}, {"text": "x", "thoughtSignature": "s"},
        {"functionCall": {"id": "i", "name": "f", "args": {}}},
        {"inlineData": {"mimeType": "image/png", "data": "QQ=="}}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 2,
                          "thoughtsTokenCount": 1}},
}
UPSTREAM_STREAMS = {
    "openai": [
        {"choices": [{"index": 0, "delta": {"content": "a", "reasoning_content": "r",
                                            "tool_calls": [{"index": 0, "id": "t", "function": {
                                                "name": "f", "arguments": "{}"}}]},
                      "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}],
    "anthropic": [
        {"type": "message_start", "message": {"usage": {"input_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "t", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta",
                                                              "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 3}},
        {"type": "message_stop"}],
    "gemini": [
        {"candidates": [{"content": {"parts": [{"text": "a"}]}}]},
        {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {}}}]},
                         "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 1}}],
}
UPSTREAM_DECODERS = {
    "openai": (gp.decode_openai_response, gp.decode_openai_stream, gp.decode_openai_error),
    "anthropic": (gp.decode_anthropic_response, gp.decode_anthropic_stream,
                  gp.decode_anthropic_error),
    "gemini": (gp.decode_gemini_response, gp.decode_gemini_stream, gp.decode_gemini_error)}
CLIENT_ENCODERS = [
    (encoder, stream_encoder) for encoder, stream_encoder in (
        (lambda r: gp.encode_openai_response(r, "m", "i", OPTIONS),
         lambda e: b"".join(gp.encode_openai_stream(iter(e), "m", "i", OPTIONS))),
        (lambda r: gp.encode_anthropic_response(r, "m", "i"),
         lambda e: b"".join(gp.encode_anthropic_stream(iter(e), "m", "i"))),
        (lambda r: gp.encode_gemini_response(r, "m", "i"),
         lambda e: b"".join(gp.encode_gemini_stream(iter(e), "m", "i"))))]
OPTIONS = gp.ReplyOptions(include_usage=True, reasoning_cache=gp.ReasoningCache())


def places(value, prefix=()):
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from places(sub, prefix + (key,))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            yield from places(sub, prefix + (index,))


def mutate(value, rng):
    value = copy.deepcopy(value)
    spots = list(places(value))
    if not spots:
        return rng.choice(ODD_VALUES)
    path = rng.choice(spots)
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    roll = rng.random()
    if roll < 0.6 or not isinstance(parent, dict):
        parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif roll < 0.8:
        del parent[path[-1]]
    else:
        parent[rng.choice(["type", "role", "text", "content", "parts", "name", "id"])] = \
            copy.deepcopy(rng.choice(ODD_VALUES))
    return value


def mutations(value, seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        mutated = value
        for _ in range(rng.randint(1, 3)):
            mutated = mutate(mutated, rng)
        yield mutated


@pytest.mark.parametrize("dialect", sorted(CLIENT_REQUESTS))
def test_bad_client_requests_are_client_errors(dialect):
    for payload in mutations(CLIENT_REQUESTS[dialect], seed=7, count=1500):
        try:
            chat = CLIENT_DECODERS[dialect](payload)
        except gp.ClientError as err:
            assert err.status == 400 and err.message
            continue
        for encode in UPSTREAM_ENCODERS:   # what decodes is well typed for every upstream
            try:
                json.dumps(encode(chat))
            except gp.ClientError:
                pass    # e.g. n > 1 for Anthropic


@pytest.mark.parametrize("dialect", sorted(UPSTREAM_REPLIES))
def test_bad_upstream_replies_are_upstream_errors(dialect):
    whole, stream, error = UPSTREAM_DECODERS[dialect]
    rng = random.Random(11)
    for payload in mutations(UPSTREAM_REPLIES[dialect], seed=11, count=1500):
        try:    # a decoder raising anything else would be a bug (a 500), not a 502
            reply = whole(payload)
        except gp.UpstreamError as err:
            assert err.status == 502
        else:
            for encode_reply, _ in CLIENT_ENCODERS:
                json.dumps(encode_reply(reply))
        assert isinstance(error(rng.choice([400, 429, 500, None]), payload, {}),
                          gp.UpstreamError)
    chunks = UPSTREAM_STREAMS[dialect]
    for _ in range(1500):
        mutated = copy.deepcopy(chunks)
        k = rng.randrange(len(mutated))
        mutated[k] = mutate(mutated[k], rng)
        sse = [("message", json.dumps(c)) for c in mutated]
        try:
            events = list(stream(iter(sse)))
        except gp.UpstreamError as err:
            assert 400 <= err.status <= 599     # an error event keeps its own status
            continue
        for _, encode_stream in CLIENT_ENCODERS:
            encode_stream(events)


def random_json(rng, depth=0):
    """Any JSON value, biased toward the shapes decoders look into."""
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        return rng.choice(ODD_VALUES + ["STOP", "tool_use", "text", "message_stop", -5, 3.5])
    keys = ["choices", "candidates", "content", "parts", "text", "delta", "message", "type",
            "index", "usage", "functionCall", "args", "tool_calls", "function", "finishReason",
            "finish_reason", "error", "data", "embedding", "embeddings", "values",
            "totalTokens", "input_tokens", "content_block", "partial_json", "name", "id"]
    if roll < 0.55:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


UPSTREAM_READERS = [
    gp.decode_openai_response, gp.decode_anthropic_response, gp.decode_gemini_response,
    gp.decode_openai_embeddings_response, gp.decode_gemini_embed_response,
    gp.decode_anthropic_count_response, gp.decode_gemini_count_response,
    lambda p: list(gp.decode_openai_stream([("message", json.dumps(p)), ("m", "[DONE]")])),
    lambda p: list(gp.decode_anthropic_stream([("message", json.dumps(p))])),
    lambda p: list(gp.decode_gemini_stream([("message", json.dumps(p))])),
    lambda p: gp.decode_openai_usage(p), lambda p: gp.decode_anthropic_usage(p),
    lambda p: gp.decode_gemini_usage(p)]


@pytest.mark.parametrize("reader", range(len(UPSTREAM_READERS)))
def test_any_json_an_upstream_sends_is_read_or_is_an_upstream_error(reader):
    # Nothing an upstream sends may surface as anything but an UpstreamError (a 502):
    # any other exception is a bug of the proxy's, a 500 with its traceback.
    rng = random.Random(reader)
    read = UPSTREAM_READERS[reader]
    for _ in range(3000):
        payload = random_json(rng)
        try:
            read(payload)
        except gp.UpstreamError as err:
            assert 400 <= err.status <= 599
        for decode_error in (gp.decode_openai_error, gp.decode_anthropic_error,
                             gp.decode_gemini_error):
            assert isinstance(decode_error(rng.choice([None, 400, 429, 599, 700]), payload, {}),
                              gp.UpstreamError)


@pytest.mark.parametrize("decode", [gp.decode_gemini_response,
                                    lambda p: list(gp.decode_gemini_stream(
                                        [("message", json.dumps(p))]))])
@pytest.mark.parametrize("candidate", [
    {"content": {"parts": "a string, not a list"}, "finishReason": "STOP"},
    {"content": {"parts": [{"text": "ok"}]}, "finishReason": 3},
    {"content": {"parts": [{"text": 5}]}, "finishReason": "STOP"},
    {"content": {"parts": [{"functionCall": {"name": "f", "args": "x"}}]},
     "finishReason": "STOP"},
    {"content": "not an object", "finishReason": "STOP"},
])
def test_a_malformed_gemini_reply_is_a_502_not_an_empty_answer(decode, candidate):
    with pytest.raises(gp.UpstreamError) as info:
        decode({"candidates": [candidate]})
    assert info.value.status == 502
