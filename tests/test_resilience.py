"""The resilient upstream path (issue 4), end to end: a fault-injecting fake upstream, and
for each fault what a client of each dialect sees, and that nothing leaks afterwards.

Every fault runs for each client dialect twice: against an upstream of its own dialect
(bytes passed through) and against one of another dialect (converted through the hub).
Every stream a Responses client gets is held to the strict checker of responses_checker.py,
a stream that broke included: it must end with one well-formed response.failed.

No test here depends on how fast the machine is. A timeout meant to fire is short and the
stall it cuts is far longer (and ends when the fake stops); a timeout not meant to fire is
a minute. Where a test needs something to be under way (a request waiting, an upstream
busy), it waits for the proxy's or the fake's own counters to say so.
"""

import itertools
import json
import logging
import math
import re
import socket
import threading
import time

import pytest

import gemini_proxy as gp
import faults
from conftest import PATIENCE, wait_for
from faults import FIRST_WORDS, REST
from responses_checker import check_responses_object, check_responses_stream, parse_sse
from talkers import AnthropicTalker, GeminiTalker, OpenAITalker, ResponsesTalker

# Longer than any test waits for anything: a stall this long is cut by the timeout under
# test or not at all, and a timeout this long never fires by accident.
LONG = 2 * PATIENCE

TALKERS = {"gemini": GeminiTalker, "openai": OpenAITalker, "anthropic": AnthropicTalker,
           "responses": ResponsesTalker}
# The upstream kind that speaks each client's dialect (bytes passed through), where its name
# is not the dialect's; and one that does not (converted through the hub).
OWN_KIND = {"responses": faults.RESPONSES}
CLIENT_OF = {kind: client for client, kind in OWN_KIND.items()}
HUB_UPSTREAM = {"gemini": "openai", "openai": "gemini", "anthropic": "openai",
                "responses": "gemini"}
PATHS = [(client, upstream) for client in TALKERS
         for upstream in (OWN_KIND.get(client, client), HUB_UPSTREAM[client])]
PATH_IDS = ["%s-client-%s-upstream" % pair for pair in PATHS]

PROMPT = "Tell me about the weather in a few words, please. " * 4

# How each dialect's client learns that a stream broke after it began.
BROKEN_STREAM_END = {"gemini": "cut", "openai": "error", "anthropic": "error",
                     "responses": "error"}


class Rig:
    """A fake upstream of one kind behind the real proxy, and a client of one dialect."""

    def __init__(self, proxy_factory, client, kind, keys=("key-a",), server=None,
                 route=None, more_upstreams=None, **upstream):
        self.client, self.kind = client, kind
        self.fake = faults.FAKES[kind]().start()
        spec = {"kind": kind, "base_url": self.fake.base_url, "api_keys": list(keys),
                "retries": 1, "retry_wait": 0.01, "first_byte_timeout": LONG,
                "read_timeout": LONG}
        spec.update(upstream)
        config = {"upstreams": dict({"up": spec}, **(more_upstreams or {})),
                  "default_model": "up-model", "server": server or {}}
        if route:
            config["routes"] = [route]
        self.proxy = proxy_factory(config)
        self.app = self.proxy.server.proxy
        self.talker = TALKERS[client](self.proxy)

    def send(self, stream=False, text="Hi", headers=None):
        """(status, headers, raw body) of one request from the client."""
        path, body, client_headers = self.talker.request(
            [self.talker.user_turn(text)], stream, None, False, None)
        return self.proxy.request("POST", path, body, dict(client_headers, **(headers or {})))

    def open(self, stream=False, text="Hi"):
        """An http.client connection with one request sent and its answer not read yet."""
        path, body, headers = self.talker.request(
            [self.talker.user_turn(text)], stream, None, False, None)
        conn = self.proxy.connection()
        conn.request("POST", path, body=json.dumps(body),
                     headers=dict({"content-type": "application/json"}, **headers))
        return conn

    def ask(self, stream=False, text="Hi"):
        status, headers, data = self.send(stream, text)
        return status, read(self.client, status, headers, data, stream)

    def status_page(self, headers=None):
        status, _, data = self.proxy.request("GET", "/status", headers=headers)
        return status, json.loads(data)

    def keys(self, upstream="up"):
        return {k["key"]: k for k in self.status_page()[1]["upstreams"][upstream]["keys"]}


@pytest.fixture
def rig(proxy_factory):
    made = []

    def make(client, kind, **options):
        made.append(Rig(proxy_factory, client, kind, **options))
        return made[-1]
    yield make
    for one in made:
        one.fake.stop()


def read(client, status, headers, data, stream):
    """What the client got: for an error its status, message and retry seconds in the
    dialect's own shape; for a stream (text, ending, keepalives); else the text."""
    if status != 200:
        body = json.loads(data)
        if client == "gemini":
            error = body["error"]
            assert error["code"] == status and error["status"], body
            retry = next((float(d["retryDelay"].rstrip("s")) for d in error.get("details", [])
                          if "retryDelay" in d), None)
        elif client == "anthropic":
            assert body["type"] == "error" and body["error"]["type"], body
            error = body["error"]
            retry = float(headers["retry-after"]) if "retry-after" in headers else None
        else:   # OpenAI's envelope: Chat Completions and Responses alike
            error = body["error"]
            assert error["message"] and "type" in error, body
            retry = float(headers["retry-after"]) if "retry-after" in headers else None
        return {"message": error["message"], "retry": retry}
    if stream:
        return read_stream(client, data)
    body = json.loads(data)
    if client == "gemini":
        return "".join(p.get("text", "") for p in body["candidates"][0]["content"]["parts"])
    if client == "anthropic":
        return "".join(b.get("text", "") for b in body["content"])
    if client == "responses":
        check_responses_object(body)
        return responses_text(body)
    return body["choices"][0]["message"]["content"]


def responses_text(response):
    """The text of a `response`: its message items' output_text parts, joined."""
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


def read_stream(client, data):
    """(text, ending, keepalives) of a whole stream a client got, as faults.read_stream
    says; a Responses client's stream must pass the strict checker first, however it ended
    (none here is cut by the client or the connection, the one way it could not)."""
    if client == "responses":
        check_responses_stream(parse_sse(data))
    return faults.read_stream(client, data)


def assert_broken(client, how, data):
    """The stream ended in the client's own form of a failure, never a normal finish. A
    Responses client's ends with a response.failed (a bare `error` event ends no response)
    whose error says the server failed: server_error, a code Codex retries, not one it
    gives up on (context_length_exceeded, insufficient_quota) or waits on (rate limits)."""
    assert how == BROKEN_STREAM_END[client], data[-600:]
    if client == "responses":
        name, event = parse_sse(data)[-1]
        assert name == "response.failed", event
        error = event["response"]["error"]
        assert error["code"] == "server_error" and error["message"], error


def start(count, work):
    """work() in `count` threads started together: (threads, what they returned, as they
    finished)."""
    results = []
    threads = [threading.Thread(target=lambda: results.append(work())) for _ in range(count)]
    for t in threads:
        t.start()
    return threads, results


def finish(threads, results):
    for t in threads:
        t.join(LONG)
    assert not any(t.is_alive() for t in threads), "a request never ended"
    return results


def at_once(count, work):
    """work() in `count` threads started together; what they returned, as they finished."""
    return finish(*start(count, work))


def about(retry, seconds):
    """Whether a retry time the client got is `seconds`, as the proxy tells it: the time
    until a resting key is ready again, which is `seconds` less the moments since the key
    started resting (Gemini clients see it to the millisecond, not rounded up)."""
    return seconds - PATIENCE < retry <= seconds


def assert_no_leaks(rig):
    """Afterwards no worker is busy, no request is open, no key is held or waiting, and
    every upstream connection the proxy still has is idle in its pool: the proxy's public
    counters all go back to zero. A worker ends its request a moment after the client has
    the answer, so this waits for them (briefly, when all is well)."""
    rig.proxy.wait_until_idle()


# -- faults before the first byte: the client gets a real HTTP error in its dialect -----------

@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_429_with_retry_after_stays_429_with_that_time(rig, client, kind, stream):
    r = rig(client, kind)
    r.fake.rules["*"] = faults.error(kind, 429, "slow down please", retry_after=60)
    status, error = r.ask(stream)
    assert status == 429 and "slow down please" in error["message"]
    assert about(error["retry"], 60)
    assert len(r.fake.requests) == 1          # the only key is resting: not asked again
    assert r.keys()[gp.fingerprint("key-a")]["state"] == "cooling"
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_429_without_retry_after_gets_a_retry_time(rig, client, kind):
    r = rig(client, kind, cooldown_floor=LONG, cooldown=LONG, cooldown_jitter=0.0)
    r.fake.rules["*"] = faults.error(kind, 429, "too many")
    status, error = r.ask()
    assert status == 429 and "too many" in error["message"]
    assert about(error["retry"], LONG)        # the key's cooldown: the floor, first time
    status, error = r.ask()                   # answered by the proxy while the key rests
    assert status == 429 and len(r.fake.requests) == 1
    assert 0 < error["retry"] <= LONG
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("code", [500, 503])
def test_5xx_is_retried_then_kept(rig, client, kind, code):
    r = rig(client, kind, retries=2)
    r.fake.rules["*"] = faults.error(kind, code, "upstream on fire")
    status, error = r.ask()
    assert status == code and "upstream on fire" in error["message"]
    assert len(r.fake.requests) == 3          # 1 + retries, with backoff between
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_5xx_once_then_success_is_invisible(rig, client, kind):
    r = rig(client, kind)
    r.fake.queue(faults.error(kind, 503, "blip"), faults.stream(kind))
    status, (text, ending, _) = r.ask(stream=True)
    assert status == 200 and text == FIRST_WORDS + REST and ending == "finished"
    assert len(r.fake.requests) == 2
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_connection_refused_is_502(rig, client, kind):
    r = rig(client, kind, base_url="http://127.0.0.1:%d/v1" % faults.closed_port())
    status, error = r.ask(stream=True)
    assert status == 502 and "cannot reach upstream 'up'" in error["message"]
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_reset_before_the_first_byte_is_502_after_a_retry(rig, client, kind):
    r = rig(client, kind)
    r.fake.rules["*"] = faults.reset_before_reply(kind)
    status, error = r.ask()
    assert status == 502 and "broke" in error["message"]
    assert len(r.fake.requests) == 2
    r.fake.rules.clear()
    r.fake.queue(faults.reset_before_reply(kind))     # once only: the retry answers
    status, text = r.ask()
    assert status == 200 and text
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_slow_first_byte_past_the_timeout_is_504(rig, client, kind, stream):
    r = rig(client, kind, first_byte_timeout=0.3)
    r.fake.rules["*"] = faults.slow(kind, LONG, streaming=stream)
    status, error = r.ask(stream)
    assert status == 504 and "sent nothing within 0.3s" in error["message"]
    assert len(r.fake.requests) == 2
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_invalid_json_is_502(rig, client, kind):
    r = rig(client, kind, retries=0)
    r.fake.rules["*"] = faults.invalid_json(kind)
    status, error = r.ask()   # passed through or converted: never a 200 with garbage
    assert status == 502 and "invalid JSON" in error["message"]
    r.fake.rules["*"] = faults.invalid_json(kind, streaming=True)
    status, error = r.ask(stream=True)
    assert status == 502 and "invalid JSON" in error["message"]
    assert_no_leaks(r)


# -- faults after the first byte: the stream ends in the dialect's own error form ------------

@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("ending", ["reset", "stall", "truncated", "error"])
def test_stream_broken_after_the_first_byte(rig, client, kind, ending, caplog):
    # "error": the upstream's own in-stream failure, then a clean end of the body (passed
    # through as it is, or said again in the client's dialect).
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    r = rig(client, kind, read_timeout=0.3)
    r.fake.rules["*"] = faults.stream(kind, ending, pause=LONG)
    status, headers, data = r.send(stream=True, text=PROMPT)
    text, how, _ = read(client, status, headers, data, stream=True)
    assert status == 200
    assert text == FIRST_WORDS                # what came before the fault, nothing after
    assert_broken(client, how, data)          # never a normal-looking finish
    assert len(r.fake.requests) == 1          # the client has bytes: no retry
    assert_no_leaks(r)
    assert r.app.pool.open == r.app.pool.idle   # the broken connection was not pooled
    # Counted as far as it came (the model spent those tokens), estimated: it was
    # counted as no tokens at all, the usage of a stream coming at its end.
    wait_for(lambda: any(record.name == "gemini_proxy.access" for record in caplog.records),
             message="the access line")
    (line,) = [rec.getMessage() for rec in caplog.records if rec.name == "gemini_proxy.access"]
    # (An upstream that counts the prompt as it begins, as Anthropic does, is believed;
    # not its opening output count of 1.)
    prompt, output = map(int, re.search(r" tokens=~(\d+)\+(\d+)", line).groups())
    assert prompt >= 1 and output == math.ceil(len(FIRST_WORDS) / 4), line


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_a_stream_the_client_leaves_is_counted_as_far_as_it_came(rig, client, kind, caplog):
    # It was counted as no tokens at all: its usage would have come at its end.
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    r = rig(client, kind)
    resume = threading.Event()
    r.fake.rules["*"] = faults.stream(kind, "stall", until=resume)
    path, body, headers = r.talker.request([r.talker.user_turn(PROMPT)], True, None, False,
                                           None)
    conn = r.proxy.connection()
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers=dict({"content-type": "application/json"}, **headers))
        response, data = conn.getresponse(), b""
        while FIRST_WORDS.encode() not in data:
            piece = response.read1(65536)
            assert piece, data
            data += piece
        conn.sock.shutdown(socket.SHUT_RDWR)   # gone, with the upstream still talking
        conn.close()
        wait_for(lambda: any(rec.name == "gemini_proxy.access" for rec in caplog.records),
                 message="the access line")
    finally:
        resume.set()
        conn.close()
    (line,) = [rec.getMessage() for rec in caplog.records if rec.name == "gemini_proxy.access"]
    assert " 499 " in line, line
    prompt, output = map(int, re.search(r" tokens=~(\d+)\+(\d+)", line).groups())
    assert prompt >= 1 and output == math.ceil(len(FIRST_WORDS) / 4), line
    assert_no_leaks(r)


# Passed through, a stream whose dialect has one final event ([DONE], message_stop, a
# response's terminal event) is whole once that went by. A Gemini stream has none: each
# candidate finishes in a chunk of its own, and only its body's end ends it.
WHOLE_AT_ITS_FINAL_EVENT = [(client, kind) for client, kind in PATHS
                           if kind == OWN_KIND.get(client, client) and kind != "gemini"]


@pytest.mark.parametrize("client, kind", WHOLE_AT_ITS_FINAL_EVENT,
                         ids=["%s-client-%s-upstream" % pair
                              for pair in WHOLE_AT_ITS_FINAL_EVENT])
def test_silence_after_the_final_event_ends_the_stream_well(rig, client, kind, caplog):
    # The upstream sent its whole reply, then neither ended its body nor spoke again: the
    # stream ends at its final event (no error event after it, which would turn a whole
    # answer into a failed one for a client that reads on to the body's end).
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    r = rig(client, kind, read_timeout=0.3)
    r.fake.rules["*"] = faults.stream(kind, "silent", pause=LONG)
    status, headers, data = r.send(stream=True)
    text, how, _ = read(client, status, headers, data, stream=True)
    assert status == 200 and text == FIRST_WORDS + REST and how == "finished", data[-600:]
    wait_for(lambda: any(record.name == "gemini_proxy.access" for record in caplog.records),
             message="the access line")
    (line,) = [rec.getMessage() for rec in caplog.records if rec.name == "gemini_proxy.access"]
    assert " 200 " in line and "error=" not in line, line
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_a_close_delimited_stream_keeps_its_timeouts(rig, client, kind):
    # http.client lets go of the socket of a "Connection: close" reply; the proxy must
    # not, or the read timeout and the abort on a client leaving stop working.
    r = rig(client, kind, read_timeout=0.3)
    r.fake.rules["*"] = faults.close_delimited_stream(kind, pause=LONG)
    started = time.monotonic()
    status, headers, data = r.send(stream=True)
    text, how, _ = read(client, status, headers, data, stream=True)
    assert status == 200 and text == FIRST_WORDS
    assert_broken(client, how, data)
    assert time.monotonic() - started < LONG  # cut by the read timeout, not the upstream
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_total_timeout_ends_a_trickling_stream(rig, client, kind):
    # The one timeout here that must fire after the first words and before the stream's
    # end: 2 s, where the first words take milliseconds and the silence lasts a minute
    # (never long enough for the read timeout, itself two minutes).
    r = rig(client, kind, total_timeout=2.0, read_timeout=2 * LONG)
    r.fake.rules["*"] = faults.stream(kind, "stall", pause=LONG)
    status, headers, data = r.send(stream=True)
    text, how, _ = read(client, status, headers, data, stream=True)
    assert status == 200 and text == FIRST_WORDS
    assert_broken(client, how, data)
    assert_no_leaks(r)


# -- key pools ------------------------------------------------------------------------------

@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_401_on_one_key_of_three(rig, client, kind):
    r = rig(client, kind, keys=("key-a", "key-b", "key-c"))
    r.fake.rules["key-b"] = faults.error(kind, 401, "key-b is not a key")
    for _ in range(6):
        status, text = r.ask()
        assert status == 200, text
    used = r.fake.keys_used()
    assert used.count("key-b") == 1           # tried once, refused, never again
    assert used.count("key-a") == 3 and used.count("key-c") == 3
    keys = r.keys()
    assert keys[gp.fingerprint("key-b")]["state"] == "refused"
    assert "not a key" in keys[gp.fingerprint("key-b")]["last_error"]
    assert keys[gp.fingerprint("key-a")]["state"] == "ready"
    assert_no_leaks(r)


def test_gemini_invalid_key_400_takes_the_key_out(rig):
    r = rig("gemini", "gemini", keys=("key-a", "key-bad"))
    r.fake.rules["key-bad"] = faults.gemini_error(400, "API key not valid.", details=[{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}])
    for _ in range(4):
        assert r.ask()[0] == 200
    assert r.fake.keys_used().count("key-bad") == 1
    assert r.keys()[gp.fingerprint("key-bad")]["state"] == "refused"
    assert_no_leaks(r)


def test_a_403_for_one_model_leaves_the_others_alone(rig):
    r = rig("openai", "openai", keys=("key-a",))
    r.fake.rules["*"] = faults.error("openai", 403, "not for you")
    assert r.ask()[0] == 403
    r.fake.rules.clear()
    path, body, headers = r.talker.request([r.talker.user_turn("Hi")], False, None, False, None)
    assert r.proxy.request("POST", path, body, headers)[0] == 403   # still refused for it
    assert len(r.fake.requests) == 1
    r2 = rig("openai", "openai", keys=("key-a",),
             route={"model": "other", "upstream": "up", "upstream_model": "other-model"})
    r2.fake.rules["*"] = faults.error("openai", 403, "not for you")
    assert r2.ask()[0] == 403
    r2.fake.rules.clear()
    body["model"] = "other"
    assert r2.proxy.request("POST", path, body, headers)[0] == 200
    assert_no_leaks(r2)


def test_retry_budget_bounds_the_attempts(rig, fake):
    # Each attempt takes its whole first-byte timeout (1 s), so a third one would start
    # after 2 s: past the 1.9 s budget, whatever the machine's speed. The second starts
    # about 1 s in, well inside it. Without the budget: 6 attempts here, then the spare.
    r = rig("openai", "openai", keys=("key-a", "key-b", "key-c"), retries=5,
            first_byte_timeout=1.0, retry_budget=1.9, more_upstreams={
                "spare": {"kind": "openai", "base_url": fake.base_url}},
            route={"model": "*", "upstream": "up", "fallbacks": ["spare"]})
    r.fake.rules["*"] = faults.slow("openai", LONG)
    status, error = r.ask()
    assert status == 504
    assert len(r.fake.requests) == 2 and not fake.requests   # the budget ran out first
    assert_no_leaks(r)


def test_every_key_refused_is_the_providers_401(rig):
    r = rig("gemini", "openai", keys=("key-a", "key-b"))
    r.fake.rules["*"] = faults.error("openai", 401, "who are you")
    status, error = r.ask()
    assert status == 401 and "who are you" in error["message"]
    assert len(r.fake.requests) == 2
    status, error = r.ask()                   # refused keys are not tried again
    assert status == 401 and len(r.fake.requests) == 2
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_three_keys_one_rate_limited_serve_a_burst(rig, client, kind):
    r = rig(client, kind, keys=("key-a", "key-b", "key-c"), cooldown_jitter=0.0)
    r.fake.rules["key-b"] = faults.error(kind, 429, "key-b is over its limit",
                                         retry_after=10 * LONG)   # rests past the burst
    numbers = itertools.count()
    results = []
    for _ in range(4):              # a burst: 24 requests, 6 at a time, half of them streams
        results += at_once(6, lambda: r.ask(stream=next(numbers) % 2 == 1)[0])
    assert results == [200] * 24
    used = r.fake.keys_used()
    assert used.count("key-b") <= 8           # some found it before it was known to rest
    assert len(used) == 24 + used.count("key-b")
    assert r.keys()[gp.fingerprint("key-b")]["state"] == "cooling"
    assert_no_leaks(r)


@pytest.mark.parametrize("kind", [OWN_KIND.get(client, client) for client in TALKERS])
def test_a_rate_limited_key_serves_again_after_its_cooldown(rig, kind):
    r = rig(CLIENT_OF.get(kind, kind), kind, keys=("key-a", "key-b"), cooldown_jitter=0.0)
    r.fake.rules["key-b"] = faults.error(kind, 429, "key-b is over its limit", retry_after=1)
    assert r.ask()[0] == 200 and r.ask()[0] == 200    # key-a; key-b refused, then key-a
    assert r.fake.keys_used() == ["key-a", "key-b", "key-a"]
    # The provider lifts the limit; once the cooldown is over the key serves again.
    del r.fake.rules["key-b"]
    wait_for(lambda: r.keys()[gp.fingerprint("key-b")]["state"] == "ready",
             message="key-b's one-second rest never ended")
    before = len(r.fake.requests)
    for _ in range(3):
        assert r.ask()[0] == 200
    assert "key-b" in r.fake.keys_used()[before:]
    assert_no_leaks(r)


def test_least_recently_failed_prefers_keys_that_did_not_fail(rig):
    r = rig("openai", "openai", keys=("key-a", "key-b"), key_strategy="least_recently_failed")
    r.fake.queue(faults.error("openai", 500, "hiccup"))
    assert r.ask()[0] == 200                  # key-a failed once, key-b answered
    before = len(r.fake.requests)
    for _ in range(3):
        assert r.ask()[0] == 200
    assert r.fake.keys_used()[before:] == ["key-b"] * 3
    assert_no_leaks(r)


def test_gemini_quota_per_model_and_per_day(rig):
    r = rig("openai", "gemini", keys=("key-a",), daily_quota_cooldown=7200.0,
            route={"model": "other", "upstream": "up", "upstream_model": "other-model"})
    r.fake.rules["*"] = faults.error("gemini", 429, "Quota exceeded", retry_after=3,
                                     quota_id="GenerateRequestsPerDayPerProjectPerModel")
    status, error = r.ask()
    assert status == 429
    key = r.keys()[gp.fingerprint("key-a")]
    assert set(key["cooling_until"]) == {"up-model"}       # Gemini limits per model
    until = time.mktime(time.strptime(key["cooling_until"]["up-model"], "%Y-%m-%dT%H:%M:%SZ"))
    assert until - time.mktime(time.gmtime()) > 7000       # a day's quota: the long rest
    r.fake.rules.clear()
    path, body, headers = r.talker.request([r.talker.user_turn("Hi")], False, None, False, None)
    body["model"] = "other"                   # another model on the same key still works
    status, _, _ = r.proxy.request("POST", path, body, headers)
    assert status == 200
    assert_no_leaks(r)


def test_openai_reset_headers_give_the_retry_time(rig):
    r = rig("anthropic", "openai", cooldown_jitter=0.0)
    r.fake.rules["*"] = lambda handler, request: handler.send_body(
        429, b'{"error": {"message": "Rate limit reached for requests"}}', "application/json",
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s",
         "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "20ms"})
    status, error = r.ask()
    assert status == 429 and about(error["retry"], 360)
    assert_no_leaks(r)


# -- fallbacks ------------------------------------------------------------------------------

def test_fallbacks_in_order_after_the_route_upstream_fails(rig, fake):
    second = faults.FAKES["anthropic"]().start()
    try:
        r = rig("gemini", "openai", retries=0, more_upstreams={
            "second": {"kind": "anthropic", "base_url": second.base_url, "api_key": "k2",
                       "retries": 0},
            "third": {"kind": "openai", "base_url": fake.base_url, "api_key": "k3"}},
            route={"model": "gemini-*", "upstream": "up", "upstream_model": "up-model",
                   "fallbacks": [{"upstream": "second", "upstream_model": "claude-x"},
                                 "third"]})
        r.fake.rules["*"] = faults.error("openai", 503, "primary down")
        second.rules["*"] = faults.error("anthropic", 529, "overloaded")
        status, text = r.ask()
        assert status == 200 and text
        assert len(r.fake.requests) == 1 and len(second.requests) == 1
        assert second.requests[0]["json"]["model"] == "claude-x"
        assert fake.requests[0]["json"]["model"] == "gemini-2.5-pro"   # the client's name
        assert_no_leaks(r)
    finally:
        second.stop()


def test_a_rate_limited_route_falls_back_at_once(rig, fake):
    r = rig("anthropic", "openai", more_upstreams={
        "spare": {"kind": "openai", "base_url": fake.base_url, "api_key": "k2"}},
        route={"model": "*", "upstream": "up", "fallbacks": ["spare"]})
    r.fake.rules["*"] = faults.error("openai", 429, "limited", retry_after=10 * LONG)
    for _ in range(3):
        assert r.ask()[0] == 200
    assert len(r.fake.requests) == 1 and len(fake.requests) == 3   # resting: skipped
    assert_no_leaks(r)


def test_a_client_error_is_not_retried_anywhere(rig, fake):
    r = rig("openai", "openai", more_upstreams={
        "spare": {"kind": "openai", "base_url": fake.base_url}},
        route={"model": "*", "upstream": "up", "fallbacks": ["spare"]})
    r.fake.rules["*"] = faults.error("openai", 400, "messages: bad role")
    status, error = r.ask()
    assert status == 400 and "bad role" in error["message"]
    assert len(r.fake.requests) == 1 and not fake.requests
    assert_no_leaks(r)


# -- waiting for keys, concurrency limits ------------------------------------------------------

def test_every_key_resting_answers_429_at_once_or_waits_when_configured(rig):
    # Waiting would take a minute here (the key rests for two, wait_timeout is one).
    r = rig("gemini", "openai", cooldown_jitter=0.0, wait_timeout=LONG)
    r.fake.queue(faults.error("openai", 429, "wait a while", retry_after=2 * LONG))
    started = time.monotonic()
    assert r.ask()[0] == 429
    assert r.ask()[0] == 429 and time.monotonic() - started < PATIENCE
    assert len(r.fake.requests) == 1          # the second was the proxy's own answer
    w = rig("gemini", "openai", cooldown_jitter=0.0, wait_for_keys=True, wait_timeout=LONG)
    w.fake.queue(faults.error("openai", 429, "wait a second", retry_after=1))
    started = time.monotonic()
    status, text = w.ask()                    # rests 1s on the only key, then is served
    waited = time.monotonic() - started
    assert status == 200 and 0.9 < waited < PATIENCE   # the rest, not the wait_timeout
    assert w.fake.keys_used() == ["key-a", "key-a"]
    assert_no_leaks(r)
    assert_no_leaks(w)


def test_waiting_is_bounded_in_time_and_in_number(rig):
    # In number: with one request waiting (for a minute), the next is told at once.
    r = rig("openai", "openai", cooldown_jitter=0.0, wait_for_keys=True, wait_timeout=LONG,
            max_waiting=1, retries=0)
    r.fake.queue(faults.error("openai", 429, "long rest", retry_after=10 * LONG))
    assert r.ask()[0] == 429                  # the provider's own 429: the key rests
    waiting = r.open()
    try:
        wait_for(lambda: r.app.upstreams["up"].keys.waiting == 1,
                 message="the request never started waiting for the key")
        status, error = r.ask()
        assert status == 429 and "already waiting" in error["message"]
    finally:
        waiting.close()                       # the waiting client leaves: it stops waiting
    assert_no_leaks(r)
    # In time: a request waits its wait_timeout (1 s), not the key's rest (ten minutes).
    t = rig("openai", "openai", cooldown_jitter=0.0, wait_for_keys=True, wait_timeout=1.0,
            retries=0)
    t.fake.queue(faults.error("openai", 429, "long rest", retry_after=10 * LONG))
    assert t.ask()[0] == 429
    started = time.monotonic()
    status, error = t.ask()
    waited = time.monotonic() - started
    assert status == 429 and 0.9 < waited < PATIENCE
    assert len(r.fake.requests) == 1 and len(t.fake.requests) == 1
    assert_no_leaks(t)


@pytest.mark.parametrize("limits", [{"max_concurrency": 2},
                                    {"key_concurrency": 1}], ids=["upstream", "key"])
def test_concurrency_limits_queue_the_rest(rig, limits):
    r = rig("openai", "openai", keys=("key-a", "key-b"), wait_timeout=LONG, **limits)
    gate = threading.Event()                  # the upstream answers once it is set
    r.fake.rules["*"] = faults.held("openai", gate)
    keys = r.app.upstreams["up"].keys
    threads, results = start(6, lambda: r.ask()[0])
    try:
        wait_for(lambda: r.fake.busy == 2 and keys.waiting == 4,
                 message=lambda: "expected 2 requests upstream and 4 waiting, not %d and %d"
                 % (r.fake.busy, keys.waiting))
        assert len(r.fake.requests) == 2      # the other four wait in the proxy
    finally:
        gate.set()
    assert finish(threads, results) == [200] * 6
    assert r.fake.most_busy == 2 and len(r.fake.requests) == 6
    assert_no_leaks(r)


def test_a_full_upstream_overflows_to_its_fallback(rig, fake):
    r = rig("openai", "openai", max_concurrency=1, more_upstreams={
        "spare": {"kind": "openai", "base_url": fake.base_url}},
        route={"model": "*", "upstream": "up", "fallbacks": ["spare"]})
    gate = threading.Event()
    r.fake.rules["*"] = faults.held("openai", gate)
    threads, results = start(1, lambda: r.ask()[0])
    try:
        wait_for(lambda: r.fake.busy == 1, message="the first request never reached 'up'")
        assert r.ask()[0] == 200              # 'up' is full: the spare answers
    finally:
        gate.set()
    assert finish(threads, results) == [200]
    assert len(r.fake.requests) == 1 and len(fake.requests) == 1
    assert_no_leaks(r)


# -- keep-alives, stop strings, streaming modes -------------------------------------------------

def read_until(conn, enough):
    """(status, body) of the answer on an http.client connection, read as it comes;
    enough(body so far, up to its last whole event) is called after each piece until it
    returns True."""
    response = conn.getresponse()
    data, satisfied = b"", False
    while True:
        piece = response.read1(65536)
        if not piece:
            return response.status, data
        data += piece
        if not satisfied:
            satisfied = enough(data[:data.rfind(b"\n\n") + 2])


@pytest.mark.parametrize("client", list(TALKERS))
def test_keepalives_during_a_long_silence(rig, client):
    kind = HUB_UPSTREAM[client]
    r = rig(client, kind, server={"keepalive_interval": 0.1})
    if client == "gemini":
        # Half a second of silence, five keep-alive intervals: none may come. (Should the
        # machine be too slow to send any anyway, the test passes without proving much;
        # it cannot fail because of that.)
        r.fake.rules["*"] = faults.stream(kind, "stall", pause=0.5)
        status, headers, data = r.send(stream=True)
    else:
        # The upstream stays silent until the client has had its keep-alives.
        wanted = {"openai": 2, "responses": 2, "anthropic": 3}[client]
        resume = threading.Event()
        r.fake.rules["*"] = faults.stream(kind, "stall", until=resume)

        def enough(data):
            if faults.read_stream(client, data)[2] >= wanted:
                resume.set()
                return True
        conn = r.open(stream=True)
        try:
            status, data = read_until(conn, enough)
        finally:
            resume.set()
            conn.close()
    text, how, keepalives = read_stream(client, data)
    assert status == 200 and text == FIRST_WORDS + REST and how == "finished"
    if client == "gemini":
        assert keepalives == 0                # Gemini CLI's parser hangs on them
        assert all(line.startswith("data: ") for line in data.decode().split("\n") if line)
    elif client in ("openai", "responses"):   # an SSE comment, which both kinds skip
        assert keepalives >= 2 and b": keep-alive\n\n" in data
    else:
        assert keepalives >= 3                # the stream's own ping, then the proxy's
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_stop_strings_cut_the_stream_there(rig, client, kind):
    r = rig(client, kind, stop_strings=["words and"])
    r.fake.rules["*"] = faults.stream(kind, "hold", pause=LONG)   # then it keeps talking
    status, headers, data = r.send(stream=True)
    text, how, _ = read_stream(client, data)
    assert status == 200 and how == "finished"
    assert text == "first "                   # "words" + " and" spanned two deltas
    if client == "anthropic":
        assert b'"stop_reason":"stop_sequence","stop_sequence":"words and"' in data
    elif client == "openai":
        assert b'"finish_reason":"stop"' in data
    elif client == "responses":               # a normal end, whose response says the same
        name, event = parse_sse(data)[-1]
        assert name == "response.completed" and responses_text(event["response"]) == "first "
    else:
        assert b'"finishReason":"STOP"' in data
    assert_no_leaks(r)
    assert r.app.pool.open == 0               # the upstream, still talking, was hung up on


@pytest.mark.parametrize("client", list(TALKERS))
def test_stop_strings_cut_a_whole_reply(rig, client):
    kind = HUB_UPSTREAM[client]
    r = rig(client, kind, stop_strings=["of"])
    r.fake.rules["*"] = faults.whole(kind, "all of it")
    status, text = r.ask()
    assert status == 200 and text == "all "
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_whole_replies_assembled_from_an_upstream_stream(rig, client, kind):
    r = rig(client, kind, upstream_streaming="always")
    r.fake.rules["*"] = faults.stream(kind)
    status, text = r.ask()
    assert status == 200 and text == FIRST_WORDS + REST
    sent = r.fake.requests[0]
    assert sent["json"].get("stream") is True or "streamGenerateContent" in sent["path"]
    assert_no_leaks(r)


@pytest.mark.parametrize("client, kind", PATHS, ids=PATH_IDS)
def test_streams_served_from_a_whole_upstream_reply(rig, client, kind):
    r = rig(client, kind, upstream_streaming="never")
    r.fake.rules["*"] = faults.whole(kind, "said in one go")
    status, (text, how, _) = r.ask(stream=True)
    assert status == 200 and text == "said in one go" and how == "finished"
    sent = r.fake.requests[0]
    assert not sent["json"].get("stream") and "streamGenerateContent" not in sent["path"]
    assert_no_leaks(r)


# -- the status endpoint --------------------------------------------------------------------

def test_status_shows_keys_by_fingerprint_only_and_needs_a_client_key(rig):
    r = rig("openai", "openai", keys=("sk-secret-one-1234", "sk-secret-two-5678"),
            server={"api_keys": ["client-key"]})
    r.fake.rules["sk-secret-two-5678"] = faults.error(
        "openai", 401, "sk-secret-two-5678 is not a key")
    assert r.ask()[0] == 200 and r.ask()[0] == 200
    r.proxy.wait_until_idle()   # a worker lets go of its key just after its client's answer
    status, _, data = r.proxy.request("GET", "/status")
    assert status == 401
    status, headers, data = r.proxy.request("GET", "/status",
                                            headers={"authorization": "Bearer client-key"})
    assert status == 200 and b"sk-secret" not in data
    page = json.loads(data)
    up = page["upstreams"]["up"]
    assert up["kind"] == "openai" and up["in_flight"] == 0
    assert [k["key"] for k in up["keys"]] == [gp.fingerprint("sk-secret-one-1234"),
                                              gp.fingerprint("sk-secret-two-5678")]
    assert [k["state"] for k in up["keys"]] == ["ready", "refused"]
    assert up["keys"][0]["requests"] == 2
    assert "[REDACTED]" in up["keys"][1]["last_error"]
    assert r.proxy.request("POST", "/status", b"{}",
                           {"authorization": "Bearer client-key"})[0] == 405


def test_reload_forgets_refusals_and_keeps_cooldowns(rig):
    r = rig("openai", "openai", keys=("key-a", "key-b"))
    r.fake.rules["key-a"] = faults.error("openai", 401, "revoked")
    r.fake.rules["key-b"] = faults.error("openai", 429, "later", retry_after=10 * LONG)
    assert r.ask()[0] == 429
    states = {k: v["state"] for k, v in r.keys().items()}
    assert states == {gp.fingerprint("key-a"): "refused", gp.fingerprint("key-b"): "cooling"}
    r.fake.rules.clear()
    r.proxy.server.reload(r.app.config)       # what SIGHUP does, with the same file
    states = {k: v["state"] for k, v in r.keys().items()}
    assert states == {gp.fingerprint("key-a"): "ready", gp.fingerprint("key-b"): "cooling"}
    assert r.ask()[0] == 200 and r.fake.keys_used()[-1] == "key-a"
    assert_no_leaks(r)
