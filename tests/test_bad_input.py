"""Input that must be a 400 (the client's mistake) or a 502 (the upstream's), never a 500,
a crash, or a normal-looking answer: the shapes an outside fuzzing run found, sent
through the real server. A bug in the proxy itself is a 500 with its traceback logged."""

import json
import logging

import pytest

from conftest import gp
from fake_upstream import FakeGemini, raw_reply

GEMINI = "/v1beta/models/gemini-2.5-pro:generateContent"
OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
HEADERS = {"anthropic-version": "2023-06-01"}


def nested(depth, leaf="x"):
    text = json.dumps(leaf)
    return "[" * depth + text + "]" * depth


def body_for(path, content_json):
    """A request body of each dialect whose user text is the given raw JSON value."""
    if path == GEMINI:
        return '{"contents": [{"role": "user", "parts": [{"text": "hi", "x": %s}]}]}' \
            % content_json
    if path == OPENAI:
        return '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": %s}' \
            % content_json
    return ('{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],'
            ' "x": %s}' % content_json)


def body_holding(path, value_json):
    """A valid request of each dialect with the raw JSON value where any JSON may go: in
    a tool's result (Gemini, converted for the OpenAI upstream), a tool's arguments
    (Anthropic, converted) or a field the proxy passes on unread (OpenAI, passed
    through)."""
    if path == GEMINI:
        return ('{"contents": [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "model",'
                ' "parts": [{"functionCall": {"name": "f", "args": {}}}]}, {"role": "user",'
                ' "parts": [{"functionResponse": {"name": "f", "response": {"r": %s}}}]}]}'
                % value_json)
    if path == OPENAI:
        return '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": %s}' \
            % value_json
    return ('{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"},'
            ' {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",'
            ' "input": {"a": %s}}]}, {"role": "user", "content": [{"type": "tool_result",'
            ' "tool_use_id": "t1", "content": "ok"}]}]}' % value_json)


def error_message(path, body):
    return body["error"]["message"]     # the same place in all three dialects


@pytest.fixture
def gemini_fake():
    fake = FakeGemini().start()
    yield fake
    fake.stop()


@pytest.mark.parametrize("path", [GEMINI, OPENAI, ANTHROPIC])
def test_json_nested_deeper_than_python_can_parse_is_a_400(proxy, fake, path):
    status, body = proxy.post(path, body_for(path, nested(100000)).encode(), HEADERS)
    assert status == 400, body
    assert "nested too deeply" in error_message(path, body)
    assert fake.requests == []


@pytest.mark.parametrize("path", [GEMINI, OPENAI, ANTHROPIC])
@pytest.mark.parametrize("depth", [990, 5000, 9980, 9990])
def test_json_nested_deep_is_a_400_or_is_served_never_a_500(proxy_factory, fake, tmp_path,
                                                             path, depth):
    """How deep the json module reads depends on the Python (about the recursion limit
    up to 3.11; 1,500 levels on 3.12, 10,000 on 3.13): nesting it reads and the proxy has
    no need to walk (here a tool's arguments or result, converted or not) goes on to the
    upstream, whose call that is; nesting it cannot read is the client's 400. At 9,980 and
    9,990 the bodies reach 3.13's limit, with their own levels around the value (the
    Gemini and Anthropic ones pass it at 9,990), and the detailed log is on: where a level
    more of the proxy's own would overflow, if it added one."""
    proxy = proxy_factory({"upstreams": {"fake": {"kind": "openai", "base_url": fake.base_url}},
                           "logging": {"detailed": True, "log_dir": str(tmp_path)}})
    shallow = proxy.post(path, body_holding(path, nested(3)).encode(), HEADERS)
    assert shallow[0] == 200, shallow
    served = len(fake.requests)
    status, body = proxy.post(path, body_holding(path, nested(depth)).encode(), HEADERS)
    if status == 400:
        assert "nested too deeply" in error_message(path, body)
        assert len(fake.requests) == served
    else:
        assert status == 200, body
        assert len(fake.requests) == served + 1


def test_nesting_too_deep_to_write_is_the_clients_400_not_a_crash():
    # Built here rather than parsed: on a Python whose json reads deeper than it writes,
    # a body that parsed may still be too deep to send on (request_bytes's own guard).
    deep = []
    for _ in range(100000):
        deep = [deep]
    with pytest.raises(gp.ClientError, match="nested too deeply"):
        gp.request_bytes({"messages": deep})


def test_a_tool_schema_nested_deep_enough_to_strain_the_converters_is_never_a_500(proxy, fake):
    schema = {"type": "object"}
    for _ in range(450):     # parses; converting it recurses once or more per level
        schema = {"type": "object", "properties": {"p": schema}}
    payload = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
               "tools": [{"functionDeclarations": [{"name": "f",
                                                    "parametersJsonSchema": schema}]}]}
    status, body = proxy.post(GEMINI, json.dumps(payload).encode())
    assert status in (200, 400), body
    if status == 400:
        assert "nested too deeply" in body["error"]["message"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_numbers_are_refused_not_sent_on_as_invalid_json(proxy, fake, constant):
    body = '{"model": "m", "messages": [{"role": "user", "content": "hi"}], ' \
           '"temperature": %s}' % constant
    status, reply = proxy.post(OPENAI, body.encode())
    assert status == 400
    assert "not valid JSON" in reply["error"]["message"]
    assert fake.requests == []


@pytest.fixture
def converting(proxy_factory):
    """The proxy in front of the echo upstream: every request is decoded and converted
    (a same-dialect upstream would get the bytes as they came)."""
    return proxy_factory({"upstreams": {"e": {"kind": "echo"}}})


@pytest.mark.parametrize("path", [GEMINI, OPENAI, ANTHROPIC])
def test_a_lone_surrogate_is_a_400(proxy, fake, path):
    body = body_for(path, '"x"').replace(', "x": "x"}', "}").replace(
        '"hi"', '"hi \\ud800 there"')
    assert "\\ud800" in body and '"x"' not in body
    status, reply = proxy.post(path, body.encode(), HEADERS)
    assert status == 400, reply
    assert "not valid Unicode" in error_message(path, reply)
    assert fake.requests == []


@pytest.mark.parametrize("payload, field", [
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True,
      "stream_options": "yes"}, "stream_options"),
    ({"model": "m", "messages": [{"role": "system", "content": [{"type": "text", "text": 5}]},
                                 {"role": "user", "content": "x"}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "developer", "content": [
        {"type": "text", "text": ["a"]}]}, {"role": "user", "content": "x"}]},
     "messages[0].content"),
    ({"model": "m", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": {}}]}]},
     "messages[2].content"),
])
def test_openai_fields_of_the_wrong_type_are_400s_naming_them(converting, payload, field):
    status, reply = converting.post(OPENAI, payload)
    assert status == 400, reply
    assert field in reply["error"]["message"]


@pytest.mark.parametrize("path, payload", [
    ("/v1beta/models/text-embedding-004:embedContent",
     {"content": {"parts": "not a list"}}),
    ("/v1beta/models/text-embedding-004:batchEmbedContents",
     {"requests": [{"content": {"parts": {"text": "x"}}}]}),
    ("/v1beta/models/text-embedding-004:embedContent",
     {"content": {"parts": [{"text": 7}]}}),
])
def test_gemini_embed_requests_with_bad_parts_are_400s(proxy, fake, path, payload):
    status, reply = proxy.post(path, payload)     # converted: the upstream is OpenAI
    assert status == 400, reply
    assert "parts" in reply["error"]["message"]


@pytest.mark.parametrize("model", ["a b", "tab\tname", "x" * 300, ""])
def test_unusable_model_names_are_400s(proxy, fake, model):
    status, reply = proxy.post(OPENAI, {"model": model, "messages": [
        {"role": "user", "content": "x"}]})
    assert status == 400, reply
    assert "model" in reply["error"]["message"]
    assert fake.requests == []


@pytest.mark.parametrize("path, name", [
    ("/v1beta/models/..%2F..%2Fv1%2Ffiles:generateContent", "../../v1/files"),
    ("/v1beta/models/a%2Fb:generateContent", "a/b"),
    ("/v1beta/models/..:generateContent", ".."),
])
def test_a_model_name_reaches_a_gemini_upstream_as_one_path_segment(
        proxy_factory, gemini_fake, path, name):
    proxy = proxy_factory({"upstreams": {"g": {"kind": "gemini", "base_url":
                                               gemini_fake.base_url, "api_key": "gk-123456"}},
                           "routes": [{"model": "*", "upstream": "g"}]})
    payload = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    status, _, _ = proxy.request("POST", path, payload)
    assert status == 200
    sent = gemini_fake.requests[-1]["path"]
    assert sent.count("/") == 3, sent      # /v1beta/models/<one segment>:method
    assert sent == "/v1beta/models/%s:generateContent" % name.replace("/", "%2F")
    status, _, _ = proxy.request("POST", OPENAI, {"model": name, "messages": [
        {"role": "user", "content": "x"}]})     # converted, from another dialect
    assert status == 200
    assert gemini_fake.requests[-1]["path"] == gemini_fake.requests[-2]["path"]


def test_a_malformed_gemini_upstream_reply_is_a_502(proxy_factory, gemini_fake):
    proxy = proxy_factory({"upstreams": {"g": {"kind": "gemini", "base_url":
                                               gemini_fake.base_url, "api_key": "gk-123456",
                                               "retries": 0}}})
    gemini_fake.queue(raw_reply(json.dumps({"candidates": [
        {"content": {"parts": "oops"}, "finishReason": 7}]}).encode()))
    status, body = proxy.post(OPENAI, {"model": "m", "messages": [
        {"role": "user", "content": "x"}]})
    assert status == 502, body
    assert "content.parts" in body["error"]["message"]


def test_a_passed_through_stream_answered_with_html_is_a_502(proxy_factory, fake):
    proxy = proxy_factory({"upstreams": {"fake": {"base_url": fake.base_url, "api_key": "k-1234",
                                                  "retries": 0}}})
    fake.queue(raw_reply(b"<html><body>Bad gateway</body></html>", content_type="text/html"))
    status, headers, data = proxy.request("POST", OPENAI, {
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert status == 502, data
    assert "text/html" in json.loads(data)["error"]["message"]


def test_a_bug_in_the_proxy_is_a_500_with_its_traceback_logged(converting, monkeypatch,
                                                               caplog):
    def broken(payload, strict=True, cache=None):
        raise KeyError("a decoder bug")
    monkeypatch.setattr(gp, "decode_openai_request", broken)
    caplog.set_level(logging.ERROR, logger="gemini_proxy")
    status, body = converting.post(OPENAI, {"model": "m", "messages": [
        {"role": "user", "content": "x"}]})
    assert status == 500
    assert "internal error in gemini-proxy" in body["error"]["message"]
    records = [r for r in caplog.records if r.name == "gemini_proxy" and r.exc_info]
    assert records and records[0].exc_info[0] is KeyError


def test_a_bug_while_decoding_an_upstream_reply_is_a_500_not_an_upstream_502(
        proxy_factory, monkeypatch, caplog):
    def broken(payload, model=""):
        raise AttributeError("a decoder bug")
    monkeypatch.setitem(gp.UPSTREAM_KINDS, "openai", gp.dataclasses.replace(
        gp.UPSTREAM_KINDS["openai"], decode_response=broken))
    proxy = proxy_factory()     # built after the patch: its upstream has the broken decoder
    caplog.set_level(logging.ERROR, logger="gemini_proxy")
    status, body = proxy.post(GEMINI, {"contents": [{"role": "user", "parts": [
        {"text": "hi"}]}]})
    assert status == 500, body
    assert any(r.exc_info and r.exc_info[0] is AttributeError for r in caplog.records)


def test_a_gemini_upstream_that_is_well_formed_still_answers(proxy_factory, gemini_fake):
    # The strictness above must not cost a normal reply anything, whole or streamed.
    proxy = proxy_factory({"upstreams": {"g": {"kind": "gemini", "base_url":
                                               gemini_fake.base_url, "api_key": "gk-123456"}}})
    request = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    status, body = proxy.post(OPENAI, request)
    assert status == 200 and body["choices"][0]["message"]["content"] == "FAKE says hello."
    status, _, data = proxy.request("POST", OPENAI, dict(request, stream=True))
    chunks = [json.loads(line[6:]) for line in data.decode().split("\n\n")
              if line.startswith("data: {")]
    assert status == 200 and "".join(c["choices"][0]["delta"].get("content") or ""
                                     for c in chunks if c["choices"]) == "FAKE says hello."


# ---- found by review ------------------------------------------------------------------------

@pytest.mark.parametrize("message, field", [
    ({"role": "assistant", "function_call": "not an object"}, "messages[1].function_call"),
    ({"role": "assistant", "function_call": {"name": "f", "arguments": "{oops"}},
     "messages[1].function_call.arguments"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"},
                                           "extra_content": "x"}]},
     "messages[1].tool_calls[0].extra_content"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"},
                                           "extra_content": {"google": 5}}]},
     "messages[1].tool_calls[0].extra_content.google"),
])
def test_legacy_and_extra_tool_call_fields_of_the_wrong_shape_are_400s(converting, message,
                                                                       field):
    status, reply = converting.post(OPENAI, {"model": "m", "messages": [
        {"role": "user", "content": "x"}, message, {"role": "user", "content": "y"}]})
    assert status == 400, reply
    assert field in reply["error"]["message"]


def test_an_adaptive_effort_that_is_not_a_word_is_a_400(converting):
    status, reply = converting.post(ANTHROPIC, {
        "model": "m", "max_tokens": 9, "thinking": {"type": "adaptive"},
        "output_config": {"effort": 5}, "messages": [{"role": "user", "content": "x"}]},
        HEADERS)
    assert status == 400 and "output_config.effort" in reply["error"]["message"]


@pytest.mark.parametrize("path, payload, field", [
    (OPENAI, {"model": "m", "n": 100000, "messages": [{"role": "user", "content": "x"}]}, "n"),
    (OPENAI, {"model": "m", "n": 0, "messages": [{"role": "user", "content": "x"}]}, "n"),
    (GEMINI, {"contents": [{"role": "user", "parts": [{"text": "x"}]}],
              "generationConfig": {"candidateCount": 1000}}, "candidateCount")])
def test_more_choices_than_make_sense_are_a_400(converting, path, payload, field):
    status, reply = converting.post(path, payload)
    assert status == 400 and field in reply["error"]["message"]


def test_count_tokens_that_says_stream_is_answered_whole(proxy_factory, fake):
    proxy = proxy_factory({"upstreams": {"e": {"kind": "echo"}},
                           "server": {"stream_headers_after": 0.01}})
    status, headers, data = proxy.request("POST", "/v1/messages/count_tokens", {
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "count me"}]},
        HEADERS)
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(data)["input_tokens"] > 0
