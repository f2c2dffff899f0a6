"""Key pools, backoff, rate-limit hints, timeouts and stop strings, as units (sections
13, 15, 12 and 6).
The same behaviour end to end, through the server: test_resilience.py."""

import threading
import time

import pytest

import gemini_proxy as gp
from conftest import PATIENCE, wait_for

TOLERANCE = 1e-6    # for sums of time.monotonic() values


def spec(**overrides):
    values = dict(gp.UPSTREAM_DEFAULTS, cooldown_jitter=0.0)
    values.update(overrides)
    return values


def pool(keys=("a", "b", "c"), kind="openai", **overrides):
    return gp.KeyPool("up", list(keys), spec(**overrides), kind)


def rate_limited(retry_after=None, message="slow down", reason=""):
    return gp.UpstreamError(message, status=429, retry_after=retry_after, reason=reason)


def take(keys, model="m"):
    state = keys.acquire(model)
    assert isinstance(state, gp.KeyState), state
    keys.release(state)
    return state.key


def rest(keys, state, error, model="m"):
    """keys.failed(state, model, error), and (low, high): bounds of the rest it gave the
    key, read off its cooling time however long the call itself took."""
    before = time.monotonic()
    keys.failed(state, model, error)
    after = time.monotonic()
    until = state.cooling[keys.per_model and model or "*"]
    return until - after - TOLERANCE, until - before + TOLERANCE


def releasing_once_waiting(keys, state):
    """A thread that releases `state` once a request waits in the pool (started)."""
    def release():
        wait_for(lambda: keys.waiting == 1, message="nothing ever waited for a key")
        keys.release(state)
    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


def test_round_robin_skips_resting_and_refused_keys():
    keys = pool()
    assert [take(keys) for _ in range(4)] == ["a", "b", "c", "a"]
    keys.failed(keys.states[1], "m", rate_limited(30))
    keys.failed(keys.states[2], "m", gp.UpstreamError("bad key", status=401))
    assert [take(keys) for _ in range(3)] == ["a", "a", "a"]


def test_a_conversation_keeps_its_key_while_that_key_is_usable():
    keys = pool()

    def take_for(session):
        state = keys.acquire("m", session=session)
        keys.release(state)
        return state.key
    assert [take_for("s1"), take_for("s2"), take_for("s1"), take_for("s2"), take_for("")] == \
        ["a", "b", "a", "b", "c"]
    keys.failed(keys.states[0], "m", rate_limited(30))       # s1's key rests: it moves on
    moved = take_for("s1")
    assert moved != "a" and take_for("s1") == moved
    keys.reconfigure(["a", "b", "c"], keys.spec, "openai")   # a reload forgets them
    assert not keys._sessions
    assert gp.KeyPool("one", ["k"], spec(), "openai")._pick(
        [gp.KeyState("k", "key#k")], "s") is not None    # one key: nothing to remember


def test_least_recently_failed_first():
    keys = pool(key_strategy="least_recently_failed")
    keys.failed(keys.states[0], "m", gp.UpstreamError("oops", status=500))
    time.sleep(0.01)
    keys.failed(keys.states[2], "m", gp.UpstreamError("oops", status=500))
    assert take(keys) == "b"                  # never failed
    keys.failed(keys.states[1], "m", gp.UpstreamError("oops", status=500))
    assert take(keys) == "a"                  # failed longest ago


def test_no_key_at_all_is_one_keyless_slot():
    keys = pool(keys=())
    assert take(keys) == "" and keys.status()["keys"][0]["key"] == "no key"


def test_cooldown_follows_the_provider_with_a_floor_and_jitter():
    keys = pool(keys=("a",), cooldown_floor=2.0, cooldown_jitter=0.5)
    state = keys.states[0]
    low, high = rest(keys, state, rate_limited(10))
    assert 10 <= high and low <= 15           # 10s, plus up to half of it
    low, high = rest(keys, state, rate_limited(0.1))
    assert 2 <= high and low <= 3             # the floor, plus jitter


def test_cooldown_without_a_time_doubles_up_to_the_ceiling_and_resets_on_success():
    keys = pool(keys=("a",), cooldown_floor=1.0, cooldown=5.0)
    state = keys.states[0]
    for expected in [1, 2, 4, 5, 5]:
        low, high = rest(keys, state, rate_limited())
        assert low <= expected <= high
    keys.succeeded(state)
    low, high = rest(keys, state, rate_limited())
    assert low <= 1 <= high


@pytest.mark.parametrize("message, reason", [
    ("Quota exceeded for quota metric 'Requests per day'", ""),
    ("You exceeded your current quota", "insufficient_quota"),
    ("Quota exceeded", "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
])
def test_a_spent_daily_quota_rests_long(message, reason):
    keys = pool(keys=("a",), daily_quota_cooldown=5000.0)
    low, high = rest(keys, keys.states[0], rate_limited(30, message, reason))
    assert low <= 5000 <= high


def test_a_per_minute_quota_is_not_daily():
    keys = pool(keys=("a",))
    low, high = rest(keys, keys.states[0], rate_limited(
        None, "Quota exceeded", "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"))
    assert low <= 1.0 <= high                 # the floor, as for any 429 without a time


def test_gemini_keys_rest_per_model():
    keys = pool(keys=("a",), kind="gemini")
    keys.failed(keys.states[0], "gemini-2.5-pro", rate_limited(30))
    assert isinstance(keys.acquire("gemini-2.5-pro"), gp.KeysUnavailable)
    assert take(keys, "gemini-2.5-flash") == "a"
    assert pool(keys=("a",), kind="openai", cooldown_scope="model").per_model
    assert not pool(keys=("a",), kind="gemini", cooldown_scope="key").per_model


def test_unavailable_says_why_with_the_earliest_time():
    keys = pool(keys=("a", "b"))
    keys.failed(keys.states[0], "m", rate_limited(30))
    before = time.monotonic()
    keys.failed(keys.states[1], "m", rate_limited(5))
    error = keys.acquire("m")
    took = time.monotonic() - before
    assert isinstance(error, gp.KeysUnavailable) and error.status == 429
    assert 5.0 - took - TOLERANCE <= error.retry_after <= 5.0   # b's rest, less the time gone
    keys = pool(keys=("a",))
    keys.failed(keys.states[0], "m", gp.UpstreamError("forbidden", status=403))
    error = keys.acquire("m", deadline=time.monotonic() + 5)   # never waits for a refusal
    assert error.status == 403 and "forbidden" in error.message


def test_concurrency_limits_wait_for_a_free_slot():
    keys = pool(keys=("a", "b"), key_concurrency=1)
    first, second = keys.acquire("m"), keys.acquire("m")
    assert {first.key, second.key} == {"a", "b"}
    busy = keys.acquire("m")
    assert isinstance(busy, gp.KeysUnavailable) and busy.status == 503
    releaser = releasing_once_waiting(keys, first)
    third = keys.acquire("m", deadline=time.monotonic() + PATIENCE)
    assert third is first                     # it waited, and got the slot let go of
    releaser.join(PATIENCE)
    limited = pool(keys=("a", "b"), max_concurrency=1)
    limited.acquire("m")
    assert limited.acquire("m").status == 503


def test_waiting_for_a_resting_key_only_when_allowed_and_boundedly():
    keys = pool(keys=("a",), wait_for_keys=True, max_waiting=1)
    keys.failed(keys.states[0], "m", rate_limited(0.3))        # rests the 1 s floor
    results = []

    def wait():
        results.append(keys.acquire("m", deadline=time.monotonic() + PATIENCE))
    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_for(lambda: keys.waiting == 1, message="the waiter never started waiting")
    full = keys.acquire("m", deadline=time.monotonic() + PATIENCE)   # the queue holds one
    assert full.status == 429 and "already waiting" in full.message
    waiter.join(PATIENCE)
    assert isinstance(results[0], gp.KeyState)  # served when the rest was over
    keys.failed(keys.states[0], "m", rate_limited(30))
    gone = keys.acquire("m", deadline=time.monotonic() + PATIENCE, cancelled=lambda: True)
    assert gone.status == 429                 # the client left: stop waiting
    assert pool(keys=("a",)).acquire("m", time.monotonic() + PATIENCE).key == "a"


def test_status_never_shows_a_key():
    keys = pool(keys=("sk-one", "sk-two"))
    keys.failed(keys.states[0], "m", gp.UpstreamError("invalid", status=401))
    keys.failed(keys.states[1], "m", rate_limited(60))
    page = keys.status()
    assert "sk-one" not in repr(page) and "sk-two" not in repr(page)
    assert [k["state"] for k in page["keys"]] == ["refused", "cooling"]
    assert page["keys"][0]["refused"] == {"*": "401: invalid"}
    assert page["keys"][1]["cooling_until"]["*"].endswith("Z")


def test_a_403_refuses_the_key_for_that_model_only():
    keys = pool(keys=("a", "b"))
    for state in keys.states:
        keys.failed(state, "forbidden-model", gp.UpstreamError("no access", status=403))
    error = keys.acquire("forbidden-model")
    assert error.status == 403 and "no access" in error.message
    assert take(keys, "other-model") in ("a", "b")
    assert keys.status()["keys"][0]["state"] == "ready"


def test_gemini_invalid_key_400_refuses_the_key():
    keys = pool(keys=("a", "b"), kind="gemini")
    bad = gp.decode_gemini_error(400, {"error": {
        "code": 400, "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT", "details": [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}})
    assert gp.refusal_scope(bad) == "*"
    keys.failed(keys.states[0], "m", bad)
    assert [take(keys) for _ in range(3)] == ["b", "b", "b"]
    assert gp.refusal_scope(gp.UpstreamError("bad field", status=400)) == ""


def test_a_busy_key_beside_a_resting_one_is_worth_waiting_for():
    keys = pool(keys=("a", "b"), key_concurrency=1)
    keys.failed(keys.states[0], "m", rate_limited(30))
    held = keys.acquire("m")
    assert held.key == "b"
    error = keys.acquire("m")
    assert error.status == 503                # b frees up long before a's rest ends
    releaser = releasing_once_waiting(keys, held)
    assert keys.acquire("m", deadline=time.monotonic() + PATIENCE) is held
    releaser.join(PATIENCE)


def test_reconfigure_keeps_rests_and_in_flight_but_not_refusals():
    keys = pool(keys=("sk-one", "sk-two"), max_concurrency=1)
    keys.failed(keys.states[0], "m", gp.UpstreamError("invalid", status=401))
    keys.failed(keys.states[1], "m", rate_limited(60))
    keys.reconfigure(["sk-two", "sk-three"], spec(max_concurrency=1), "openai")
    assert [k["state"] for k in keys.status()["keys"]] == ["cooling", "ready"]
    assert keys.states[0].rate_limited == 1
    running = keys.acquire("m")
    assert running.key == "sk-three"
    keys.reconfigure(["sk-three"], spec(max_concurrency=1), "openai")
    assert keys.acquire("m").status == 503    # the request in flight still counts
    keys.release(running)
    assert take(keys) == "sk-three"


def test_a_failure_is_recorded_before_a_waiter_can_take_the_key():
    keys = pool(keys=("a",), key_concurrency=1)
    first = keys.acquire("m")
    got = []
    waiter = threading.Thread(target=lambda: got.append(
        keys.acquire("m", deadline=time.monotonic() + PATIENCE)))
    waiter.start()
    wait_for(lambda: keys.waiting == 1, message="the waiter never started waiting")
    keys.failed(first, "m", rate_limited(30))   # the order _attempts uses
    keys.release(first)
    waiter.join(PATIENCE)
    assert isinstance(got[0], gp.KeysUnavailable) and got[0].status == 429


def test_backoff_doubles_with_jitter_up_to_the_maximum():
    settings = {"retry_wait": 1.0, "retry_wait_max": 3.0}
    for tries, (low, high) in {1: (0.5, 1.0), 2: (1.0, 2.0), 3: (1.5, 3.0), 6: (1.5, 3.0)}.items():
        delays = [gp.backoff_delay(settings, tries, None) for _ in range(50)]
        assert all(low <= d <= high for d in delays) and len(set(delays)) > 1
    assert gp.backoff_delay(settings, 1, 7.0) == 7.0   # never sooner than the upstream asks


@pytest.mark.parametrize("headers, seconds", [
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s",
      "x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "1s"}, 360),
    ({"x-ratelimit-reset-requests": "1.5s", "x-ratelimit-reset-tokens": "20ms"}, 0.02),
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1h2m3s"}, 3723),
    ({}, None),
    ({"x-ratelimit-reset-requests": "soon"}, None),
])
def test_reset_hints(headers, seconds):
    assert gp.parse_reset_hint(headers) == seconds


def test_anthropic_reset_moments():
    now = time.time()
    moment = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 30))   # whole seconds
    hint = gp.parse_reset_hint({"anthropic-ratelimit-requests-remaining": "0",
                                "anthropic-ratelimit-requests-reset": moment})
    took = time.time() - now
    assert 29 - took - TOLERANCE < hint <= 30


def text_events(*pieces):
    return [gp.Part(gp.TEXT, text=p) for p in pieces] + [gp.Finish(gp.STOP)]


def run(events, stops):
    cut = []
    out = list(gp.cut_at_stop_strings(events, stops, on_cut=lambda: cut.append(True)))
    return "".join(e.text for e in out if not isinstance(e, gp.Finish)), out[-1], bool(cut)


@pytest.mark.parametrize("pieces, stops, text, stop", [
    (("Hello wor", "ld! Bye"), ["world"], "Hello ", "world"),
    (("ab", "c", "d"), ["bcd", "x"], "a", "bcd"),
    (("abc", "def"), ["xyz"], "abcdef", ""),
    (("ab", "ab", "c"), ["abc"], "ab", "abc"),
    (("END",), ["END"], "", "END"),
    (("almost EN",), ["END"], "almost EN", ""),   # a possible start, then the end
])
def test_stop_strings_across_deltas(pieces, stops, text, stop):
    got, finish, cut = run(text_events(*pieces), stops)
    assert got == text and finish.stop_sequence == stop and cut == bool(stop)
    assert finish.reason == gp.STOP


def test_stop_strings_leave_thinking_and_tools_alone():
    events = [gp.Part(gp.THINKING, text="I will say STOP"), gp.Part(gp.TEXT, text="go"),
              gp.Part(gp.TOOL_CALL, id="c1", name="f", args={}), gp.Finish(gp.TOOL_CALLS)]
    out = list(gp.cut_at_stop_strings(events, ["STOP"]))
    assert [e.type for e in out[:-1]] == [gp.THINKING, gp.TEXT, gp.TOOL_CALL]
    assert out[-1].reason == gp.TOOL_CALLS


def test_cut_reply_keeps_the_upstream_usage():
    usage = gp.Usage(10, 20)
    reply = gp.Reply("r", "m", [gp.Choice([gp.Part(gp.TEXT, text="one two three")],
                                          gp.Finish(gp.LENGTH, usage))], usage)
    reply = gp.cut_reply(reply, ["two"])
    choice = reply.choices[0]
    assert choice.parts[0].text == "one " and choice.finish.stop_sequence == "two"
    assert choice.finish.reason == gp.STOP and choice.finish.usage is usage


def test_reply_events_round_trip():
    usage = gp.Usage(3, 4)
    reply = gp.Reply("r", "m", [gp.Choice([gp.Part(gp.TEXT, text="hi")], gp.Finish())], usage)
    events = list(gp.reply_events(reply))
    assert events[0].text == "hi" and events[-1].usage is usage
    assert gp.collect_reply(iter(events), "r", "m").choices[0].parts[0].text == "hi"


def test_the_first_byte_budget_is_one_for_the_whole_start():
    clocks = gp.Timeouts(connect=1.0, first_byte=0.3, idle=5.0)
    time.sleep(0.2)
    wait, meaning = clocks.next_read(first=True)
    assert wait < 0.15 and meaning == "sent nothing within 0.3s"
    assert clocks.next_read(first=False) == (5.0, "went silent for 5s")
    ending = gp.Timeouts(1.0, 10.0, 5.0, deadline=time.monotonic() + 0.5)
    wait, meaning = ending.next_read(first=False)
    assert wait <= 0.5 and meaning == "was still answering at its total timeout"


def test_reset_moment_with_a_long_fraction():
    now = time.time()
    moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + 20)) + ".123456789Z"
    hint = gp.parse_reset_hint({"anthropic-ratelimit-tokens-reset": moment,
                                "anthropic-ratelimit-tokens-remaining": "0"})
    took = time.time() - now
    assert 19.123456 - took - TOLERANCE < hint <= 20.123457
