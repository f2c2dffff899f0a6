"""A fixture for the SDK tests: the proxy in front of one upstream of each kind."""

import pytest

from fake_upstream import (FAKES, THOUGHT, FakeHandler, FakeResponses, anthropic_error,
                           anthropic_message, anthropic_text_stream, anthropic_usage,
                           completion, gemini_error, gemini_text, gemini_text_stream,
                           gemini_usage, json_reply, responses_error, responses_text,
                           responses_text_stream, responses_usage, text_stream, usage)

RESPONSES = "openai-responses"


class FakeResponsesForSDKs(FakeResponses):
    """FakeResponses a little closer to OpenAI's own server, for replies that reach the
    openai SDK's strict validation unchanged (a Responses client's requests pass through
    to a Responses upstream):

    * usage.input_tokens_details has cache_write_tokens (openai-python requires it; the
      fake's default responses_usage() leaves it out);
    * the response repeats the request's instructions, previous_response_id, reasoning
      and metadata;
    * the responses it gave can be read back (GET .../responses/{id}) and deleted (DELETE),
      as OpenAI keeps them unless the request says store: false."""

    def __init__(self, port=0):
        super().__init__(port)
        self.kept = {}
        self.httpd.RequestHandlerClass = DeletingHandler

    def answer_response(self, answer, number, request=None):
        request = request or {}
        response = FakeResponses.answer_response(answer, number, request)
        response["usage"]["input_tokens_details"].setdefault("cache_write_tokens", 0)
        for field in ("instructions", "previous_response_id", "reasoning"):
            response[field] = request.get(field)
        response["metadata"] = request.get("metadata") or {}
        response["store"] = request.get("store") is not False
        if response["store"]:
            with self.lock:
                self.kept[response["id"]] = response
        return response

    def serve_get(self, handler, record):
        """GET and DELETE of .../responses/{id}; anything else as FakeResponses."""
        path = record["path"]
        found = path.rsplit("/", 1)[-1] if "/responses/" in path else None
        with self.lock:
            response = self.kept.get(found) if found else None
            if response is not None and handler.command == "DELETE":
                del self.kept[found]
        if response is not None:
            return json_reply(response if handler.command == "GET" else {
                "id": found, "object": "response.deleted", "deleted": True})(handler, None)
        if found:
            return responses_error(404, "The fake upstream has no response %r." % found,
                                   code="not_found")(handler, None)
        return super().serve_get(handler, record)


class DeletingHandler(FakeHandler):
    """FakeHandler with DELETE, recorded and answered like a GET."""

    def do_DELETE(self):
        self.server.fake.handle(self, None)


FAKES = dict(FAKES, **{RESPONSES: FakeResponsesForSDKs})
KINDS = ["openai", "gemini", "anthropic", RESPONSES, "echo"]
WITH_FAKES = ["openai", "gemini", "anthropic", RESPONSES]     # the kinds with a fake model
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
        elif self.kind == RESPONSES:
            self.fake.queue(responses_error(429, "Rate limited", retry_after=7))
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
        elif self.kind == RESPONSES:
            self.fake.queue(responses_error(400, "Bad field: frobnicate", param="frobnicate"))
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
        elif self.kind == RESPONSES:       # input_tokens include the cached ones
            use = responses_usage(20, 5, cached=CACHED, cache_write=0)
            self.fake.queue(responses_text_stream("Cached.", use=use) if stream
                            else json_reply(responses_text("Cached.", use=use)))
        else:                       # Anthropic counts cache reads apart from input_tokens
            use = anthropic_usage(20 - CACHED, 5, cache_read=CACHED)
            self.fake.queue(anthropic_text_stream("Cached.", use=use) if stream
                            else json_reply(anthropic_message("Cached.", use=use)))

    def reasoning_sent_back(self):
        """The reasoning the upstream got back with the last model turn of its last request,
        in its own terms: an OpenAI-compatible one the assistant message's
        reasoning_content; Anthropic the thinking blocks of the assistant message; Gemini
        the thoughtSignature of each functionCall part of the model turn; a Responses
        upstream the reasoning items of the last run of assistant items in its input
        (their type, encrypted_content and summary: a passed-through item keeps its id
        and status too)."""
        request = self.fake.last
        if self.kind == RESPONSES:
            return [{k: item[k] for k in ("type", "encrypted_content", "summary") if k in item}
                    for item in last_assistant_items(request["input"])
                    if item.get("type") == "reasoning"]
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
        calls (Gemini signs the first call only; Anthropic signs the thinking block; a
        Responses upstream gets its reasoning item back, encrypted_content and summary)."""
        if self.kind == RESPONSES:
            return [{"type": "reasoning", "encrypted_content": "enc-fake-%d" % number,
                     "summary": [{"type": "summary_text", "text": THOUGHT}]}]
        if self.kind == "openai":
            return THOUGHT
        if self.kind == "anthropic":
            return [{"type": "thinking", "thinking": THOUGHT,
                     "signature": "sig-anthropic-%d" % number}]
        return ["sig-fc-%d" % number] + [None] * (calls - 1)


ASSISTANT_ITEMS = ("reasoning", "function_call", "custom_tool_call")


def last_assistant_items(items):
    """The last run of assistant items (reasoning, assistant messages, tool calls) in a
    Responses input list: the model turn the upstream got back last."""
    runs, run = [], []
    for item in items if isinstance(items, list) else ():
        mine = item.get("type") in ASSISTANT_ITEMS or item.get("role") == "assistant"
        if mine:
            run.append(item)
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return runs[-1] if runs else []


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
