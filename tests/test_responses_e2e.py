"""The Responses API through the real server: what the matrix (tests/test_matrix.py) does
not cover. A model that refuses parameters, previous_response_id and the stored responses'
endpoints, token counting, and hosted tools."""

import json

import pytest

from fake_upstream import FakeGemini, FakeResponses, json_reply, responses_error
from responses_checker import check_responses_object, check_responses_stream, parse_sse
from talkers import GeminiTalker

HEADERS = {"authorization": "Bearer client-key"}


@pytest.fixture
def responses_upstream(proxy_factory):
    fake = FakeResponses().start()
    proxy = proxy_factory({"upstreams": {"up": {"kind": "openai-responses",
                                                "base_url": fake.base_url,
                                                "api_key": "k-up"}},
                           "default_model": "up-model"})
    yield proxy, fake
    fake.stop()


@pytest.fixture
def gemini_upstream(proxy_factory):
    fake = FakeGemini().start()
    proxy = proxy_factory({"upstreams": {"up": {"kind": "gemini", "base_url": fake.base_url,
                                                "api_key": "k-up"}},
                           "default_model": "up-model"})
    yield proxy, fake
    fake.stop()


def refusing(*names):
    """A Responses model that refuses these parameters, one at a time, as OpenAI does."""
    def reply(handler, request):
        refused = next((n for n in names if n in request), None)
        if refused is not None:
            return responses_error(400, "Unsupported parameter: '%s' is not supported with "
                                   "this model." % refused, kind="invalid_request_error",
                                   code="unsupported_parameter", param=refused)(
                handler, request)
        fake = handler.server.fake
        answer = FakeResponses.answer_response(
            fake_brain(request), len(fake.requests), request)
        return json_reply(answer)(handler, request)
    return reply


def fake_brain(request):
    from fake_upstream import brain, responses_view
    return brain(*responses_view(request))


def test_a_model_that_refuses_sampling_parameters_is_asked_again_without_them(
        responses_upstream):
    """Gemini CLI always sends temperature and topP; gpt-5 refuses both."""
    proxy, fake = responses_upstream
    fake.rules["*"] = refusing("top_p", "temperature")
    talker = GeminiTalker(proxy)
    path, body, headers = talker.request([talker.user_turn("Say hi")], False, None, False, None)
    body["generationConfig"] = {"temperature": 1, "topP": 0.95}
    status, _, data = proxy.request("POST", path, body, headers)
    assert status == 200, data
    assert json.loads(data)["candidates"][0]["content"]["parts"][0]["text"] == \
        "FAKE says hello."
    sent = [r["json"] for r in fake.requests]
    assert [("top_p" in s, "temperature" in s) for s in sent] == [
        (True, True), (False, True), (False, False)]


def test_previous_response_id_gives_the_upstream_the_whole_conversation(gemini_upstream):
    proxy, fake = gemini_upstream
    status, _, data = proxy.request("POST", "/v1/responses", {
        "model": "m", "instructions": "be brief", "input": "my name is Ada"}, HEADERS)
    assert status == 200, data
    first = json.loads(data)
    check_responses_object(first)
    status, _, data = proxy.request("POST", "/v1/responses", {
        "model": "m", "previous_response_id": first["id"], "input": "what is my name?",
        "stream": True}, HEADERS)
    assert status == 200, data
    events = parse_sse(data)
    check_responses_stream(events)
    contents = fake.requests[-1]["json"]["contents"]
    assert [(c["role"], c["parts"][0]["text"]) for c in contents] == [
        ("user", "my name is Ada"), ("model", "FAKE says hello."), ("user", "what is my name?")]
    # instructions belong to their own request, as OpenAI has it
    assert "systemInstruction" not in fake.requests[-1]["json"]

    status, _, data = proxy.request("GET", "/v1/responses/" + first["id"], headers=HEADERS)
    assert status == 200 and json.loads(data) == first
    status, _, data = proxy.request("DELETE", "/v1/responses/" + first["id"], headers=HEADERS)
    assert status == 200 and json.loads(data)["deleted"] is True
    for method in ("GET", "DELETE"):
        status, _, data = proxy.request(method, "/v1/responses/" + first["id"], headers=HEADERS)
        assert status == 404 and "not found" in json.loads(data)["error"]["message"]
    status, _, data = proxy.request("POST", "/v1/responses", {
        "model": "m", "previous_response_id": first["id"], "input": "again"}, HEADERS)
    assert status == 400 and "previous_response_id" in json.loads(data)["error"]["message"]


def test_store_false_keeps_nothing_to_come_back_to(gemini_upstream):
    proxy, _ = gemini_upstream
    status, _, data = proxy.request("POST", "/v1/responses", {
        "model": "m", "input": "hi", "store": False}, HEADERS)
    assert status == 200
    response_id = json.loads(data)["id"]
    status, _, _ = proxy.request("GET", "/v1/responses/" + response_id, headers=HEADERS)
    assert status == 404


def test_stored_responses_need_a_client_key_like_everything_else(proxy_factory):
    fake = FakeGemini().start()
    try:
        proxy = proxy_factory({"upstreams": {"up": {"kind": "gemini", "base_url": fake.base_url,
                                                    "api_key": "k-up"}},
                               "server": {"api_keys": ["client-key"]}})
        status, _, data = proxy.request("POST", "/v1/responses", {"model": "m", "input": "hi"},
                                        HEADERS)
        assert status == 200
        path = "/v1/responses/" + json.loads(data)["id"]
        assert proxy.request("GET", path)[0] == 401
        assert proxy.request("GET", path, headers=HEADERS)[0] == 200
    finally:
        fake.stop()


def test_input_tokens_are_counted_by_the_upstream_that_can(gemini_upstream):
    proxy, fake = gemini_upstream
    status, _, data = proxy.request("POST", "/v1/responses/input_tokens", {
        "model": "m", "input": "count these words please"}, HEADERS)
    assert status == 200, data
    body = json.loads(data)
    assert body["object"] == "response.input_tokens" and body["input_tokens"] > 0
    assert fake.requests[-1]["path"].endswith(":countTokens")


def test_a_request_of_hosted_tools_only_is_a_400_in_openai_shape(gemini_upstream):
    proxy, fake = gemini_upstream
    status, _, data = proxy.request("POST", "/v1/responses", {
        "model": "m", "input": "news?", "tools": [{"type": "web_search"}]}, HEADERS)
    assert status == 400
    error = json.loads(data)["error"]
    assert error["type"] == "invalid_request_error" and "web_search" in error["message"]
    assert not fake.requests


def test_hosted_tools_pass_through_to_a_responses_upstream(responses_upstream):
    proxy, fake = responses_upstream
    status, _, data = proxy.request("POST", "/v1/responses", {
        "model": "m", "input": "news?", "tools": [{"type": "web_search"}]}, HEADERS)
    assert status == 200, data
    assert fake.requests[-1]["json"]["tools"] == [{"type": "web_search"}]


def test_one_client_keys_responses_are_not_anothers(proxy_factory):
    fake = FakeGemini().start()
    try:
        proxy = proxy_factory({"upstreams": {"up": {"kind": "gemini", "base_url": fake.base_url,
                                                    "api_key": "k-up"}},
                               "server": {"api_keys": ["key-alice", "key-bob"]}})
        alice, bob = {"authorization": "Bearer key-alice"}, {"authorization": "Bearer key-bob"}
        status, _, data = proxy.request("POST", "/v1/responses", {"model": "m", "input": "hi"},
                                        alice)
        assert status == 200
        path = "/v1/responses/" + json.loads(data)["id"]
        assert proxy.request("GET", path, headers=bob)[0] == 404
        assert proxy.request("DELETE", path, headers=bob)[0] == 404
        status, _, _ = proxy.request("POST", "/v1/responses", {
            "model": "m", "input": "more", "previous_response_id": path.rsplit("/", 1)[1]}, bob)
        assert status == 400
        assert proxy.request("GET", path, headers=alice)[0] == 200
    finally:
        fake.stop()


def test_a_carrier_nested_too_deeply_is_dropped_when_answering_and_when_counting(
        gemini_upstream):
    import base64
    import zlib
    import gemini_proxy as gp
    deep = "[" * 5000 + "]" * 5000
    carrier = base64.b64encode(gp.CARRIER_MAGIC + zlib.compress(deep.encode())).decode()
    for path in ("/v1/responses", "/v1/responses/input_tokens"):
        status, _, data = gemini_upstream[0].request("POST", path, {
            "model": "m", "input": [{"type": "reasoning", "summary": [],
                                     "encrypted_content": carrier},
                                    {"role": "user", "content": "hi"}]}, HEADERS)
        assert status == 200, (path, status, data)    # not a carrier of ours: dropped


def test_a_conversation_stays_on_one_key_of_a_pool(proxy_factory):
    """Codex names its conversation in prompt_cache_key (and a session-id header): its
    turns keep one key, whose provider-side prompt cache they share."""
    from fake_upstream import FakeOpenAI
    fake = FakeOpenAI().start()
    try:
        proxy = proxy_factory({"upstreams": {"up": {
            "kind": "openai", "base_url": fake.base_url, "api_keys": ["key-a", "key-b"]}}})
        for _ in range(3):
            assert proxy.request("POST", "/v1/responses", {
                "model": "m", "input": "hi", "prompt_cache_key": "conv-1"}, HEADERS)[0] == 200
            assert proxy.request("POST", "/v1/chat/completions", {
                "model": "m", "messages": [{"role": "user", "content": "hi"}]},
                dict(HEADERS, **{"session-id": "conv-2"}))[0] == 200
        used = fake.keys_used()
        assert len(set(used[0::2])) == 1 and len(set(used[1::2])) == 1
        assert used[0] != used[1]
    finally:
        fake.stop()


def test_a_retry_goes_to_another_key_even_in_a_conversation(proxy_factory):
    from fake_upstream import FakeOpenAI
    import faults
    fake = FakeOpenAI().start()
    try:
        proxy = proxy_factory({"upstreams": {"up": {
            "kind": "openai", "base_url": fake.base_url, "api_keys": ["key-a", "key-b"],
            "retries": 1, "retry_wait": 0}}})
        fake.rules["key-a"] = faults.error("openai", 500, "key-a's server is down")
        status, _, data = proxy.request("POST", "/v1/responses", {
            "model": "m", "input": "hi", "prompt_cache_key": "conv-9"}, HEADERS)
        assert status == 200, data
        assert fake.keys_used() == ["key-a", "key-b"]
    finally:
        fake.stop()
