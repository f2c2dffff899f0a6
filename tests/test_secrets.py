"""No secret reaches a log, an error or a page: whatever the configuration marks secret
(client keys, upstream keys, header and query values, a URL's password) is redacted by
one redactor fed from the configuration, in whole replies and in streams that fail
after they began, converted or passed through."""

import json
import os

import pytest

from conftest import make_config
from fake_upstream import FakeAnthropic, anthropic_sse, chunk, json_reply

UPSTREAM_KEY = "sk-upstream-SECRET-0123456789"
HEADER_SECRET = "hdr-SECRET-abcdef"
QUERY_SECRET = "qry-SECRET-987654"
URL_PASSWORD = "url-SECRET-pw-42"


@pytest.mark.parametrize("keys", [[""], ["  "], ["good-key", ""]])
def test_an_empty_or_blank_client_key_is_refused_at_load(keys):
    import gemini_proxy as gp
    with pytest.raises(gp.ConfigError) as info:
        make_config({"upstreams": {"e": {"kind": "echo"}}, "server": {"api_keys": keys}})
    assert "server.api_keys" in str(info.value)


def leaky(status=400):
    """An upstream error that repeats every secret it was sent."""
    def reply(handler, request):
        headers = dict(handler.headers.items())
        text = "key %s header %s path %s" % (headers.get("Authorization", ""),
                                            headers.get("X-Custom-Auth", ""), handler.path)
        json_reply({"error": {"message": text}}, status=status)(handler, request)
    return reply


def secret_config(fake, tmp_path, **extra):
    base = fake.base_url.replace("http://", "http://bob:%s@" % URL_PASSWORD)
    return {"upstreams": {"up": dict({
        "base_url": base, "api_key": UPSTREAM_KEY, "retries": 0,
        "headers": {"X-Custom-Auth": HEADER_SECRET},
        "query": {"sig": QUERY_SECRET, "api-version": "2024-10-21"}}, **extra)},
        "logging": {"detailed": True, "log_dir": str(tmp_path / "logs")}}


def everything_written(tmp_path, caplog):
    texts = [r.getMessage() for r in caplog.records]
    for folder, _, files in os.walk(str(tmp_path / "logs")):
        for name in files:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                texts.append(f.read())
    return "\n".join(texts)


@pytest.mark.parametrize("path, payload", [
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    ("/v1beta/models/m:generateContent", {"contents": [{"role": "user", "parts": [
        {"text": "x"}]}]})])
def test_header_query_and_url_secrets_never_reach_logs_or_clients(
        proxy_factory, fake, tmp_path, caplog, path, payload):
    import logging
    caplog.set_level(logging.DEBUG)
    proxy = proxy_factory(secret_config(fake, tmp_path))
    fake.queue(leaky())
    status, headers, data = proxy.request("POST", path, payload)
    assert status == 400
    assert fake.requests[-1]["headers"]["x-custom-auth"] == HEADER_SECRET   # it was sent
    assert fake.requests[-1]["query"]["sig"] == QUERY_SECRET
    written = everything_written(tmp_path, caplog) + "\n" + data.decode()
    assert "[REDACTED]" in data.decode()
    for secret in (UPSTREAM_KEY, HEADER_SECRET, QUERY_SECRET, URL_PASSWORD):
        assert secret not in written, secret
    assert "bob:" not in "\n".join(proxy.server.proxy.describe())
    status, _, page = proxy.request("GET", "/status")
    assert URL_PASSWORD not in page.decode() and "bob" not in page.decode()


def stream_then_leak(kind):
    """A stream that starts well, then puts an error repeating the key in the stream."""
    def reply(handler, request):
        key = handler.headers.get("Authorization") or handler.headers.get("x-api-key")
        handler.start_stream()
        if kind == "openai":
            handler.write_chunk(b"data: " + json.dumps(chunk({"content": "Hello"})).encode()
                                + b"\n\n")
            handler.write_chunk(b"data: " + json.dumps({"error": {
                "message": "quota for %s is spent" % key}}).encode() + b"\n\n")
        else:
            for name, event in (
                    ("message_start", {"message": {
                        "id": "m", "type": "message", "role": "assistant", "content": [],
                        "model": "m", "usage": {"input_tokens": 1, "output_tokens": 0}}}),
                    ("content_block_start", {"index": 0, "content_block": {"type": "text",
                                                                          "text": ""}}),
                    ("content_block_delta", {"index": 0, "delta": {"type": "text_delta",
                                                                   "text": "Hello"}}),
                    ("error", {"error": {"type": "overloaded_error",
                                         "message": "quota for %s is spent" % key}})):
                handler.write_chunk(anthropic_sse(name, dict(event, type=name)).encode())
        handler.end_stream()
    return reply


@pytest.mark.parametrize("client, kind", [("openai", "openai"), ("anthropic", "anthropic"),
                                          ("anthropic", "openai"), ("openai", "anthropic")])
def test_a_key_an_upstream_repeats_mid_stream_never_reaches_the_client(
        proxy_factory, fake, client, kind):
    upstream = fake if kind == "openai" else FakeAnthropic().start()
    try:
        proxy = proxy_factory({"upstreams": {"up": {
            "kind": kind, "base_url": upstream.base_url, "api_key": UPSTREAM_KEY}}})
        upstream.queue(stream_then_leak(kind))
        if client == "openai":
            path, payload = "/v1/chat/completions", {
                "model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        else:
            path, payload = "/v1/messages", {
                "model": "m", "max_tokens": 9, "stream": True,
                "messages": [{"role": "user", "content": "x"}]}
        status, _, data = proxy.request("POST", path, payload,
                                        {"anthropic-version": "2023-06-01"})
        text = data.decode()
        assert status == 200 and "Hello" in text
        assert "quota for" in text and "[REDACTED]" in text     # the error got through...
        assert UPSTREAM_KEY not in text                          # ...without the key
    finally:
        if upstream is not fake:
            upstream.stop()
