"""End to end, every client dialect against every upstream kind: the real server on
127.0.0.1, a fake upstream of each kind, and a minimal client of each dialect. The four
same-dialect pairs are pass-through; the other twelve go through the neutral model."""

import json

import pytest

from conftest import PATIENCE
from fake_upstream import (FakeAnthropic, FakeGemini, FakeOpenAI, FakeResponses,
                           anthropic_error, gemini_error, json_reply, responses_error)
from talkers import TALKERS

FAKES = {"openai": FakeOpenAI, "gemini": FakeGemini, "anthropic": FakeAnthropic,
         "openai-responses": FakeResponses}
# The client dialect each upstream kind speaks.
DIALECT = {"openai": "openai", "gemini": "gemini", "anthropic": "anthropic",
           "openai-responses": "responses"}
PAIRS = [(client, upstream) for client in TALKERS for upstream in FAKES]

TOOLS = {"read": {"type": "object", "properties": {"path": {"type": "string"}},
                  "required": ["path"]},
         "glob": {"type": "object", "properties": {"pattern": {"type": "string"}}}}
TWO_CALLS = 'Do both. CALL read {"path": "a.txt"} CALL glob {"pattern": "*.py"}'
# How each dialect says "the turn ended normally" and "the turn ended in tool calls".
STOPPED = {"gemini": "STOP", "openai": "stop", "anthropic": "end_turn",
           "responses": "completed"}
CALLED = {"gemini": "STOP", "openai": "tool_calls", "anthropic": "tool_use",
          "responses": "completed"}
UPSTREAM_AUTH = {"openai": ("authorization", "Bearer k-up"), "gemini": ("x-goog-api-key", "k-up"),
                 "anthropic": ("x-api-key", "k-up"),
                 "openai-responses": ("authorization", "Bearer k-up")}


class Pair:
    def __init__(self, client, upstream, talker, fake):
        self.client, self.upstream, self.talker, self.fake = client, upstream, talker, fake

    def generate_requests(self):
        return [r for r in self.fake.requests if r.get("method", "POST") == "POST"
                and "count" not in r["path"]]


@pytest.fixture(params=PAIRS, ids=["%s-client-%s-upstream" % p for p in PAIRS])
def pair(request, proxy_factory):
    client, upstream = request.param
    fake = FAKES[upstream]().start()
    spec = {"kind": upstream, "base_url": fake.base_url, "api_key": "k-up"}
    if upstream == "openai":
        spec["send_reasoning_effort"] = True   # so thinking reaches the fake as it would o3
    proxy = proxy_factory({"upstreams": {"up": spec}, "default_model": "fake-model"})
    yield Pair(client, upstream, TALKERS[client](proxy), fake)
    fake.stop()


def sent_model(pair, record):
    if pair.upstream == "gemini":
        return record["path"].split("/models/")[1].split(":")[0]
    return record["json"]["model"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_plain_text_and_usage(pair, stream):
    talker = pair.talker
    result = talker.ask([talker.user_turn("Say hi")], stream=stream)
    assert result.status == 200, result.error
    assert result.text == "FAKE says hello."
    assert result.finish == STOPPED[pair.client]
    assert result.usage == (11, 7)                       # every fake reports 11 + 7
    record = pair.generate_requests()[-1]
    assert sent_model(pair, record) == "fake-model"
    name, value = UPSTREAM_AUTH[pair.upstream]
    assert record["headers"][name] == value
    assert "client-key" not in json.dumps(record["headers"])   # the client's key stays here


def test_parallel_tool_calls_over_two_turns(pair):
    talker = pair.talker
    history = [talker.user_turn(TWO_CALLS)]
    first = talker.ask(history, stream=True, tools=TOOLS)
    assert first.status == 200, first.error
    assert [(c["name"], c["args"]) for c in first.calls] == [
        ("read", {"path": "a.txt"}), ("glob", {"pattern": "*.py"})]
    assert first.finish == CALLED[pair.client]
    assert len({c["id"] for c in first.calls}) == 2
    history += [first.turn] + talker.results_turns(first, {"read": "AAA", "glob": "x.py"})
    second = talker.ask(history, tools=TOOLS)
    assert second.status == 200, second.error
    assert second.text == "FAKE got tool result(s): read -> AAA; glob -> x.py"
    assert second.finish == STOPPED[pair.client]


def test_image_reaches_the_upstream(pair):
    image = b"\x89PNG\r\n\x1a\nmatrix-image-bytes"
    talker = pair.talker
    result = talker.ask([talker.user_turn("What is this?", image=image)])
    assert result.status == 200, result.error
    import base64
    assert base64.b64encode(image).decode() in json.dumps(pair.generate_requests()[-1]["json"])


def test_thinking_round_trip(pair):
    talker = pair.talker
    history = [talker.user_turn('Think, then CALL read {"path": "b.txt"}')]
    first = talker.ask(history, stream=True, tools=TOOLS, thinking=True)
    assert first.status == 200, first.error
    assert first.reasoning == "FAKE thinks."
    assert [c["name"] for c in first.calls] == ["read"]
    history += [first.turn] + talker.results_turns(first, {"read": "BBB"})
    second = talker.ask(history, tools=TOOLS, thinking=True)
    assert second.status == 200, second.error
    assert "read -> BBB" in second.text
    # The upstream got its own reasoning back, in its own terms, on the tool-call turn.
    sent = pair.generate_requests()[-1]["json"]
    if pair.upstream == "openai":
        assistant = [m for m in sent["messages"] if m["role"] == "assistant"][-1]
        assert assistant["reasoning_content"] == "FAKE thinks."
    elif pair.upstream == "openai-responses":
        reasoning = [i for i in sent["input"] if i.get("type") == "reasoning"]
        assert [r["encrypted_content"] for r in reasoning] == ["enc-fake-1"]
        assert reasoning[0]["summary"] == [{"type": "summary_text", "text": "FAKE thinks."}]
        assert sent["include"] == ["reasoning.encrypted_content"] and sent["store"] is False
    elif pair.upstream == "gemini":
        model_turn = [c for c in sent["contents"] if c["role"] == "model"][-1]
        call = next(p for p in model_turn["parts"] if "functionCall" in p)
        assert call["thoughtSignature"].startswith("sig-fc-")
    else:
        assistant = [m for m in sent["messages"] if m["role"] == "assistant"][-1]
        thinking = assistant["content"][0]
        assert thinking["type"] == "thinking" and thinking["thinking"] == "FAKE thinks."
        assert thinking["signature"].startswith("sig-anthropic-")
        assert sent["thinking"]["type"] == "enabled"


def test_json_mode(pair):
    schema = {"type": "object", "properties": {"score": {"type": "integer"},
                                               "label": {"type": "string"}},
              "required": ["score", "label"]}
    talker = pair.talker
    result = talker.ask([talker.user_turn("Rate this")], schema=schema)
    assert result.status == 200, result.error
    assert json.loads(result.text) == {"score": 1, "label": "fake"}


def rate_limit(upstream):
    """A 429 that says: come back in 600 s. The client may hear a little less (see the end
    of test_upstream_429_stays_429)."""
    if upstream == "openai":
        return json_reply({"error": {"message": "Rate limited", "type": "rate_limit_error"}},
                          status=429, headers={"Retry-After": "600"})
    if upstream == "gemini":
        return gemini_error(429, message="Rate limited", retry_delay="600s",
                            headers={"Retry-After": "600"})
    if upstream == "openai-responses":
        return responses_error(429, message="Rate limited", retry_after=600)
    return anthropic_error(429, message="Rate limited", retry_after=600)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_upstream_429_stays_429(pair, stream):
    pair.fake.queue(rate_limit(pair.upstream))
    talker = pair.talker
    result = talker.ask([talker.user_turn("Hi")], stream=stream)
    assert result.status == 429
    error = result.error
    if pair.client == "gemini":
        assert error["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert "Rate limited" in error["error"]["message"]
    elif pair.client in ("openai", "responses"):
        assert error["error"]["type"] in ("rate_limit_error", "rate_limit", "requests")
        assert "Rate limited" in error["error"]["message"]
    else:
        assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
        assert "Rate limited" in error["error"]["message"]
    # The time until the key that was told to rest is ready again: the provider's 600 s,
    # less the moments since (a Gemini client hears it to the millisecond).
    assert 600 - PATIENCE < talker.retry_seconds(result) <= 600


@pytest.mark.parametrize("kind", sorted(FAKES))
def test_same_dialect_requests_pass_through_unchanged(kind, proxy_factory):
    fake = FAKES[kind]().start()
    dialect = DIALECT[kind]
    try:
        proxy = proxy_factory({"upstreams": {"up": {"kind": kind, "base_url": fake.base_url,
                                                    "api_key": "k-up"}},
                               "default_model": "fake-model"})
        talker = TALKERS[dialect](proxy)
        path, body, headers = talker.request([talker.user_turn("Say hi")], False, TOOLS,
                                             False, None)
        body["an_extension_field"] = {"kept": True}   # the hub would refuse this; a pass-through
        status, _, data = proxy.request("POST", path, body, headers)   # leaves it for the upstream
        assert status == 200, data
        received = fake.requests[-1]["json"]
        expected = dict(body) if dialect == "gemini" else dict(body, model="fake-model")
        assert received == expected
    finally:
        fake.stop()
