"""A fixture for the SDK tests: the proxy in front of one upstream of each kind."""

import pytest

from fake_upstream import (THOUGHT, FakeAnthropic, FakeGemini, FakeOpenAI, anthropic_error,
                           anthropic_message, anthropic_text_stream, anthropic_usage,
                           completion, gemini_error, gemini_text, gemini_text_stream,
                           gemini_usage, json_reply, text_stream, usage)

FAKES = {"openai": FakeOpenAI, "gemini": FakeGemini, "anthropic": FakeAnthropic}
KINDS = ["openai", "gemini", "anthropic", "echo"]
TOOLS = {"read": {"type": "object", "properties": {"path": {"type": "string"}},
                  "required": ["path"]},
         "glob": {"type": "object", "properties": {"pattern": {"type": "string"}}}}
CACHED = 8                  # prompt tokens read from the cache in cached_reply
TWO_CALLS = 'Do both. CALL read {"path": "a.txt"} CALL glob {"pattern": "*.py"}'


class Upstream:
    def __init__(self, kind, proxy, fake):
        self.kind, self.proxy, self.fake = kind, proxy, fake

    def rate_limit(self):
        """Queue a 429 in the upstream's own dialect, retry in 7 seconds."""
        if self.kind == "openai":
            self.fake.queue(json_reply({"error": {
                "message": "Rate limited", "type": "requests", "param": None,
                "code": "rate_limit_exceeded"}}, status=429, headers={"Retry-After": "7"}))
        elif self.kind == "gemini":
            self.fake.queue(gemini_error(429, message="Rate limited", retry_delay="7s"))
        else:
            self.fake.queue(anthropic_error(429, message="Rate limited", retry_after=7))

    def bad_request(self):
        """Queue a 400 in the upstream's own dialect, saying "Bad field: frobnicate"."""
        if self.kind == "openai":
            self.fake.queue(json_reply({"error": {
                "message": "Bad field: frobnicate", "type": "invalid_request_error",
                "param": "frobnicate", "code": None}}, status=400))
        elif self.kind == "gemini":
            self.fake.queue(gemini_error(400, message="Bad field: frobnicate"))
        else:
            self.fake.queue(anthropic_error(400, message="Bad field: frobnicate"))

    def cached_reply(self, stream):
        """Queue "Cached." in the upstream's own dialect, whole or streamed, with usage of
        20 prompt tokens of which CACHED were read from the prompt cache, 5 output."""
        if self.kind == "openai":
            use = usage(20, 5, cached=CACHED)
            self.fake.queue(text_stream("Cached.", use=use) if stream
                            else json_reply(completion("Cached.", use=use)))
        elif self.kind == "gemini":
            use = gemini_usage(20, 5, cached=CACHED)
            self.fake.queue(gemini_text_stream("Cached.", use=use) if stream
                            else json_reply(gemini_text("Cached.", use=use)))
        else:                       # Anthropic counts cache reads apart from input_tokens
            use = anthropic_usage(20 - CACHED, 5, cache_read=CACHED)
            self.fake.queue(anthropic_text_stream("Cached.", use=use) if stream
                            else json_reply(anthropic_message("Cached.", use=use)))

    def reasoning_sent_back(self):
        """The reasoning the upstream got back with the last model turn of its last request,
        in its own terms: an OpenAI-compatible one the assistant message's
        reasoning_content; Anthropic the thinking blocks of the assistant message; Gemini
        the thoughtSignature of each functionCall part of the model turn."""
        request = self.fake.last
        if self.kind == "openai":
            turn = [m for m in request["messages"] if m.get("role") == "assistant"][-1]
            return turn.get("reasoning_content")
        if self.kind == "anthropic":
            turn = [m for m in request["messages"] if m.get("role") == "assistant"][-1]
            return [b for b in turn["content"]
                    if b.get("type") in ("thinking", "redacted_thinking")]
        turn = [c for c in request["contents"] if c.get("role") == "model"][-1]
        return [p.get("thoughtSignature") for p in turn["parts"] if "functionCall" in p]

    def reasoning_given(self, number, calls):
        """What reasoning_sent_back should find when the history holds the turn in which the
        rule-based fake answered its `number`th request with its thought and `calls` tool
        calls (Gemini signs the first call only; Anthropic signs the thinking block)."""
        if self.kind == "openai":
            return THOUGHT
        if self.kind == "anthropic":
            return [{"type": "thinking", "thinking": THOUGHT,
                     "signature": "sig-anthropic-%d" % number}]
        return ["sig-fc-%d" % number] + [None] * (calls - 1)


def upstream_fixture(kinds=KINDS):
    @pytest.fixture(params=kinds, ids=["%s-upstream" % k for k in kinds])
    def upstream(request, proxy_factory):
        kind = request.param
        fake = FAKES[kind]().start() if kind in FAKES else None
        spec = {"kind": kind, "api_key": "k-up"}
        if fake is not None:
            spec["base_url"] = fake.base_url
        if kind == "openai":
            spec["send_reasoning_effort"] = True
        proxy = proxy_factory({"upstreams": {"up": spec}, "default_model": "fake-model"})
        yield Upstream(kind, proxy, fake)
        if fake is not None:
            fake.stop()
    return upstream


def troubled_fixture(kinds):
    """The proxy in front of one fake upstream per kind, with two keys (key-a, key-b) and
    keep-alives after 0.1 s of silence, for the faults of tests/faults.py."""
    @pytest.fixture(params=kinds, ids=["%s-upstream" % k for k in kinds])
    def troubled(request, proxy_factory):
        kind = request.param
        fake = FAKES[kind]().start()
        proxy = proxy_factory({"upstreams": {"up": {
            "kind": kind, "base_url": fake.base_url, "api_keys": ["key-a", "key-b"],
            "retry_wait": 0.01}}, "default_model": "fake-model",
            "server": {"keepalive_interval": 0.1}})
        yield Upstream(kind, proxy, fake)
        fake.stop()
    return troubled
