"""A fixture for the SDK tests: the proxy in front of one upstream of each kind."""

import pytest

from fake_upstream import (FakeAnthropic, FakeGemini, FakeOpenAI, anthropic_error,
                           gemini_error, json_reply)

FAKES = {"openai": FakeOpenAI, "gemini": FakeGemini, "anthropic": FakeAnthropic}
KINDS = ["openai", "gemini", "anthropic", "echo"]
TOOLS = {"read": {"type": "object", "properties": {"path": {"type": "string"}},
                  "required": ["path"]},
         "glob": {"type": "object", "properties": {"pattern": {"type": "string"}}}}
TWO_CALLS = 'Do both. CALL read {"path": "a.txt"} CALL glob {"pattern": "*.py"}'


class Upstream:
    def __init__(self, kind, proxy, fake):
        self.kind, self.proxy, self.fake = kind, proxy, fake

    def rate_limit(self):
        """Queue a 429 in the upstream's own dialect, retry in 7 seconds."""
        if self.kind == "openai":
            self.fake.queue(json_reply({"error": {"message": "Rate limited"}}, status=429,
                                       headers={"Retry-After": "7"}))
        elif self.kind == "gemini":
            self.fake.queue(gemini_error(429, message="Rate limited", retry_delay="7s"))
        else:
            self.fake.queue(anthropic_error(429, message="Rate limited", retry_after=7))


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
