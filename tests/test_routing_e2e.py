"""Several upstreams in one proxy: routing, model lists, what reaches each upstream, and
upstream behaviours only an end-to-end run shows (schema fallback, blocked prompts)."""

import json
import logging

import pytest

import gemini_proxy as gp
from conftest import wait_for
from fake_upstream import (FakeAnthropic, FakeGemini, FakeOpenAI, anthropic_message,
                           anthropic_text_block, gemini_blocked, gemini_error, gemini_stream,
                           gemini_text, json_reply)
from talkers import AnthropicTalker, OpenAITalker


@pytest.fixture
def three(proxy_factory):
    fakes = {"oai": FakeOpenAI().start(), "gem": FakeGemini().start(),
             "ant": FakeAnthropic().start()}
    kinds = {"oai": "openai", "gem": "gemini", "ant": "anthropic"}
    config = {
        "upstreams": {name: {"kind": kinds[name], "base_url": fake.base_url,
                             "api_key": "key-for-" + name,
                             "models": ["listed-" + name]}
                      for name, fake in fakes.items()},
        "routes": [{"model": "gpt-*", "upstream": "oai", "upstream_model": "oai-model"},
                   {"model": "gemini-*", "upstream": "gem", "upstream_model": "gem-model"},
                   {"model": "claude-*", "upstream": "ant", "upstream_model": "ant-model"},
                   {"model": "listed-gem", "upstream": "gem"}],
        "default_upstream": "oai", "default_model": "oai-default"}
    proxy = proxy_factory(config)
    yield proxy, fakes
    for fake in fakes.values():
        fake.stop()


def test_each_model_goes_to_its_upstream_with_its_key(three):
    proxy, fakes = three
    for path, body, upstream, model, header in (
            ("/v1/chat/completions", {"model": "gpt-4o", "messages": [
                {"role": "user", "content": "x"}]}, "oai", "oai-model", "authorization"),
            ("/v1/chat/completions", {"model": "claude-sonnet", "messages": [
                {"role": "user", "content": "x"}]}, "ant", "ant-model", "x-api-key"),
            ("/v1/messages", {"model": "gemini-2.5-pro", "max_tokens": 10, "messages": [
                {"role": "user", "content": "x"}]}, "gem", "gem-model", "x-goog-api-key"),
            ("/v1beta/models/unmapped-name:generateContent", {"contents": [
                {"role": "user", "parts": [{"text": "x"}]}]}, "oai", "oai-default",
             "authorization")):
        status, _, data = proxy.request("POST", path, body, {
            "authorization": "Bearer client-secret", "x-goog-api-key": "client-secret",
            "x-api-key": "client-secret", "anthropic-version": "2023-06-01"})
        assert status == 200, data
        record = fakes[upstream].requests[-1]
        sent_model = record["path"].split("/models/")[1].split(":")[0] \
            if upstream == "gem" else record["json"]["model"]
        assert sent_model == model
        assert "key-for-" + upstream in record["headers"][header]
        assert "client-secret" not in json.dumps(record["headers"])


@pytest.mark.parametrize("path, headers, names", [
    ("/v1/models", {"authorization": "Bearer k"}, lambda b: [m["id"] for m in b["data"]]),
    ("/v1/models", {"anthropic-version": "2023-06-01"},
     lambda b: [m["id"] for m in b["data"]]),
    ("/v1beta/models", {}, lambda b: [m["name"][len("models/"):] for m in b["models"]]),
    ("/v1/models?key=k", {}, lambda b: [m["name"][len("models/"):] for m in b["models"]]),
])
def test_model_lists_show_what_is_routable(three, path, headers, names):
    proxy, _ = three
    status, _, data = proxy.request("GET", path, None, headers)
    assert status == 200
    listed = names(json.loads(data))
    assert "listed-gem" in listed and "listed-oai" in listed    # routed to their upstream
    assert "listed-ant" not in listed     # its name routes elsewhere (to the default)
    assert "gemini-2.5-pro" in listed


def test_gemini_schema_refusal_is_retried_in_its_own_schema_subset(proxy_factory):
    fake = FakeGemini().start()
    try:
        proxy = proxy_factory({"upstreams": {"g": {"kind": "gemini", "base_url": fake.base_url,
                                                   "api_key": "k"}},
                               "default_model": "gemini-x"})
        fake.queue(gemini_error(400, message='Invalid JSON payload received. Unknown name '
                                '"const" at \'tools[0].function_declarations[0].'
                                'parameters_json_schema\': Cannot find field.'))
        talker = OpenAITalker(proxy)
        tools = {"pick": {"type": "object", "properties": {"mode": {"const": "fast"}},
                          "required": ["mode"], "additionalProperties": False}}
        result = talker.ask([talker.user_turn("Say hi")], tools=tools)
        assert result.status == 200 and result.text == "FAKE says hello."
        first, second = [r["json"] for r in fake.requests[-2:]]
        assert "parametersJsonSchema" in first["tools"][0]["functionDeclarations"][0]
        assert second["tools"][0]["functionDeclarations"][0]["parameters"] == {
            "type": "OBJECT", "properties": {"mode": {"type": "STRING", "enum": ["fast"]}},
            "required": ["mode"]}
    finally:
        fake.stop()


def test_blocked_prompt_reaches_each_client_as_its_refusal(proxy_factory):
    fake = FakeGemini().start()
    try:
        proxy = proxy_factory({"upstreams": {"g": {"kind": "gemini", "base_url": fake.base_url,
                                                   "api_key": "k"}},
                               "default_model": "gemini-x"})
        for talker, finish in ((OpenAITalker(proxy), "content_filter"),
                               (AnthropicTalker(proxy), "refusal")):
            for stream in (False, True):
                body = gemini_blocked("PROHIBITED_CONTENT")
                fake.queue(gemini_stream([body]) if stream else json_reply(body))
                result = talker.ask([talker.user_turn("something bad")], stream=stream)
                assert result.status == 200 and result.finish == finish, talker
                assert result.text == "" and result.calls == []
        fake.queue(json_reply(gemini_blocked("SAFETY")))   # a Gemini client: Gemini's own reply
        status, _, data = proxy.request("POST", "/v1beta/models/x:generateContent", {
            "contents": [{"role": "user", "parts": [{"text": "bad"}]}]})
        assert status == 200 and json.loads(data)["promptFeedback"]["blockReason"] == "SAFETY"
    finally:
        fake.stop()


def test_passthrough_swaps_the_key_and_keeps_the_rest(proxy_factory):
    gem, ant = FakeGemini().start(), FakeAnthropic().start()
    try:
        proxy = proxy_factory({"upstreams": {
            "g": {"kind": "gemini", "base_url": gem.base_url, "api_key": "gem-key"},
            "a": {"kind": "anthropic", "base_url": ant.base_url, "api_key": "ant-key"}},
            "routes": [{"model": "claude-*", "upstream": "a"}], "default_upstream": "g"})
        status, _, data = proxy.request(
            "POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=client",
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        assert status == 200 and data.startswith(b"data: ")
        record = gem.requests[-1]
        assert record["query"] == {"alt": "sse"} and record["headers"]["x-goog-api-key"] == \
            "gem-key"
        status, _, data = proxy.request(
            "POST", "/v1/messages?beta=true",
            {"model": "claude-opus", "max_tokens": 10, "messages": [
                {"role": "user", "content": "hi"}]},
            {"x-api-key": "client", "anthropic-version": "2023-06-01",
             "anthropic-beta": "interleaved-thinking-2025-05-14"})
        assert status == 200, data
        headers = ant.requests[-1]["headers"]
        assert headers["x-api-key"] == "ant-key"
        assert headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
        assert headers["anthropic-version"] == "2023-06-01"
    finally:
        gem.stop()
        ant.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_converted_anthropic_request_keeps_its_betas_not_its_version(proxy_factory,
                                                                         stream):
    # Converted on its way to Anthropic (stop_strings look inside the reply), Claude Code's
    # request lost its anthropic-beta header: a 1M-token context window among them.
    ant = FakeAnthropic().start()
    try:
        proxy = proxy_factory({"upstreams": {"a": {
            "kind": "anthropic", "base_url": ant.base_url, "api_key": "ant-key",
            "stop_strings": ["never appears"]}, "b": {
            "kind": "anthropic", "base_url": ant.base_url, "api_key": "ant-key",
            "headers": {"Anthropic-Beta": "operator-beta"}}},
            "routes": [{"model": "claude-b", "upstream": "b"}], "default_upstream": "a"})
        for model, converted, betas in (
                ("claude-opus", True, ["context-1m-2025-08-07"]),
                ("claude-b", False, ["operator-beta,context-1m-2025-08-07"])):
            status, _, data = proxy.request(
                "POST", "/v1/messages",
                {"model": model, "max_tokens": 10, "stream": stream, "messages": [
                    {"role": "user", "content": "hi"}]},
                {"x-api-key": "client", "anthropic-version": "2099-01-01",
                 "anthropic-beta": "context-1m-2025-08-07"})
            assert status == 200 and b"FAKE" in data, data
            raw = ant.requests[-1]["raw_headers"]
            assert [v for n, v in raw if n.lower() == "anthropic-beta"] == betas, raw
            versions = [v for n, v in raw if n.lower() == "anthropic-version"]
            # converted, the body is written for the proxy's version
            assert versions[-1] == ("2023-06-01" if converted else "2099-01-01"), raw
            assert ant.requests[-1]["headers"]["x-api-key"] == "ant-key"
    finally:
        ant.stop()


def test_betas_joined_are_one_list_each_once():
    assert gp.joined_list("op-beta,", " a1, a2", "a1") == "op-beta,a1,a2"
    assert gp.joined_list("", "context-1m") == "context-1m"


def test_gemini_passthrough_json_array_stream_and_count(proxy_factory):
    gem = FakeGemini().start()
    try:
        proxy = proxy_factory({"upstreams": {"g": {"kind": "gemini", "base_url": gem.base_url,
                                                   "api_key": "k"}}})
        status, headers, data = proxy.request(
            "POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        assert status == 200 and headers["content-type"].startswith("application/json")
        assert "FAKE says hello." in "".join(
            p.get("text", "") for c in json.loads(data)
            for p in c["candidates"][0]["content"]["parts"])
        status, _, data = proxy.request("POST", "/v1beta/models/gemini-2.5-pro:countTokens", {
            "contents": [{"role": "user", "parts": [{"text": "x" * 40}]}]})
        assert status == 200 and json.loads(data)["totalTokens"] == 10
        assert gem.requests[-1]["path"].endswith(":countTokens")
    finally:
        gem.stop()


def test_max_output_tokens_caps_what_clients_ask(proxy_factory):
    oai = FakeOpenAI().start()
    try:
        proxy = proxy_factory({"upstreams": {"o": {"base_url": oai.base_url,
                                                   "max_output_tokens": 8192}}})
        talker = AnthropicTalker(proxy)
        path, body, headers = talker.request([talker.user_turn("Hi")], False, None, False, None)
        body.update(max_tokens=128000, metadata={"user_id": '{"device_id": "abc"}'})
        assert proxy.request("POST", path, body, headers)[0] == 200
        sent = oai.requests[-1]["json"]
        assert sent["max_tokens"] == 8192
        assert "user" not in sent     # Anthropic's metadata is not another provider's
        body["max_tokens"] = 100
        assert proxy.request("POST", path, body, headers)[0] == 200
        assert oai.requests[-1]["json"]["max_tokens"] == 100
    finally:
        oai.stop()


def test_an_upstream_whose_key_variable_is_unset_is_skipped_for_its_fallback(proxy_factory):
    fake = FakeOpenAI().start()
    try:
        proxy = proxy_factory({
            "upstreams": {"kimi": {"base_url": fake.base_url, "api_key_env": "NO_SUCH_KEY"},
                          "backup": {"base_url": fake.base_url, "api_key": "key-backup"}},
            "routes": [{"model": "with-fallback", "upstream": "kimi", "fallbacks": ["backup"]},
                       {"model": "alone", "upstream": "kimi"}]})
        status, body = proxy.post("/v1/chat/completions", {
            "model": "with-fallback", "messages": [{"role": "user", "content": "x"}]})
        assert status == 200, body
        assert fake.requests[-1]["headers"]["authorization"] == "Bearer key-backup"
        seen = len(fake.requests)
        status, body = proxy.post("/v1/chat/completions", {
            "model": "alone", "messages": [{"role": "user", "content": "x"}]})
        assert status == 503
        assert "upstream 'kimi' is off: environment variable NO_SUCH_KEY is not set" in \
            body["error"]["message"]
        assert len(fake.requests) == seen     # nothing was sent without a key
    finally:
        fake.stop()


def test_a_session_moved_to_its_own_dialects_upstream_sends_it_no_packed_signature(
        three, caplog):
    # Claude Code's turn on a Gemini route leaves, in its history, a thinking block
    # whose signature this proxy packed. Passed through to Anthropic when the session
    # moved (a model switch, a fallback), that signature was refused, and every later
    # turn of the session with it: such a request is converted instead.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    proxy, fakes = three
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    fakes["gem"].queue(json_reply(gemini_text("the answer", thought="pondering",
                                              signature="c2lnLWdlbWluaQ==")))
    ask = {"role": "user", "content": "a question"}
    status, _, data = proxy.request("POST", "/v1/messages", {
        "model": "gemini-2.5-pro", "max_tokens": 1000, "messages": [ask],
        "thinking": {"type": "enabled", "budget_tokens": 500}}, headers)
    assert status == 200, data
    answer = json.loads(data)["content"]
    (packed,) = [b["signature"] for b in answer if b["type"] == "thinking"]
    assert packed.startswith(gp.CARRIER_START), answer
    history = [ask, {"role": "assistant", "content": answer},
               {"role": "user", "content": "and then?"}]
    own = [{"type": "thinking", "thinking": "mine", "signature": "sig-anthropic"},
           {"type": "text", "text": "an earlier answer"}]
    mentions = [{"role": "user", "content": 'what is "%s..."?' % gp.CARRIER_START}]

    def lines():   # (each is written just after its reply)
        return [r.getMessage() for r in caplog.records
                if r.name == "gemini_proxy.access" and "claude-sonnet" in r.getMessage()]
    for turn, (messages, way) in enumerate(((history, "conv"), (
            [ask, {"role": "assistant", "content": own},
             {"role": "user", "content": "and then?"}], "pass"), (mentions, "pass"))):
        fakes["ant"].queue(json_reply(anthropic_message([anthropic_text_block("more")])))
        status, _, data = proxy.request("POST", "/v1/messages", {
            "model": "claude-sonnet", "max_tokens": 1000, "messages": messages,
            "thinking": {"type": "enabled", "budget_tokens": 500}}, headers)
        assert status == 200 and b"more" in data, data
        sent = fakes["ant"].requests[-1]["body"].decode()
        assert (gp.CARRIER_START not in sent and "a question" in sent) or turn == 2, sent
        wait_for(lambda: len(lines()) > turn, message="the access line")
        assert " %s " % way in lines()[turn], lines()
    assert "sig-anthropic" in fakes["ant"].requests[-2]["body"].decode()   # untouched
