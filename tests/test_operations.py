"""Team operations: named client keys with allowed models and limits, the usage ledger and
the `usage` command, /metrics, /stats, admin keys, CORS, log files and the access log.

Tested as a user would: through HTTP in each client's own dialect, the ledger read with
sqlite3 from outside, the `usage` command as a process. Nothing here sleeps for time:
what happens in the proxy after a client has its answer (the ledger's writer, the
metrics) is waited for with wait_for.
"""

import base64
import csv
import datetime
import io
import json
import logging
import math
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import faults
from conftest import PATIENCE, gp, make_config, wait_for
from fake_upstream import Gate, completion, json_reply, usage

# Counts of "today" (UTC) are checked throughout.
pytestmark = pytest.mark.usefixtures("same_utc_day")

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "gemini_proxy.py")
UPSTREAM_KEY = "sk-upstream-secret-1234"
# What the fake upstream reports for each answer (fake_upstream.usage()).
IN, OUT = 11, 7
MODELS = ["gpt-a", "gpt-b", "claude-x", "gemini-y"]


# == helpers ===============================================================================

def team_config(fake, tmp_path, clients, upstream=None, **server):
    """A proxy for a team: `clients` as server.api_keys, one OpenAI-compatible upstream
    (the fake) that offers MODELS, no retries (an upstream failure is one request)."""
    spec = {"kind": "openai", "base_url": fake.base_url, "api_key": UPSTREAM_KEY,
            "retries": 0, "models": list(MODELS)}
    spec.update(upstream or {})
    return {"server": dict({"api_keys": clients, "state_dir": str(tmp_path)}, **server),
            "upstreams": {"fake": spec}, "default_model": "fake-model"}


def bearer(key):
    return {"Authorization": "Bearer " + key}


def basic(password, user="admin"):
    return {"Authorization": "Basic " + base64.b64encode(
        ("%s:%s" % (user, password)).encode()).decode()}


def send(proxy, dialect, key, model, stream=False, headers=None):
    """One chat request in a client's own dialect: (status, headers, body as JSON, or
    bytes for a stream)."""
    if dialect == "openai":
        path = "/v1/chat/completions"
        payload = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        if stream:
            payload["stream"] = True
        sent = bearer(key)
    elif dialect == "anthropic":
        path = "/v1/messages"
        payload = {"model": model, "max_tokens": 64,
                   "messages": [{"role": "user", "content": "hi"}]}
        if stream:
            payload["stream"] = True
        sent = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    else:
        path = "/v1beta/models/%s:%s" % (
            model, "streamGenerateContent?alt=sse" if stream else "generateContent")
        payload = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        sent = {"x-goog-api-key": key}
    status, reply_headers, data = proxy.request("POST", path, payload,
                                                dict(sent, **(headers or {})))
    if not stream or status != 200:
        try:
            data = json.loads(data)
        except ValueError:
            pass
    return status, reply_headers, data


def error_message(dialect, body):
    """The error's words, checking it has the dialect's own error shape."""
    if dialect == "anthropic":
        assert body["type"] == "error", body
    return body["error"]["message"]


def error_type(dialect, body):
    """The dialect's own word for an error's kind."""
    if dialect == "anthropic":
        return body["error"]["type"]
    if dialect == "gemini":
        return body["error"]["status"]
    return body["error"]["type"]


def get_json(proxy, path, headers):
    status, _, body = proxy.request("GET", path, None, headers)
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def client_row(stats, name):
    return next(c for c in stats["clients"] if c["name"] == name)


def waiting(proxy, name, key):
    """How many of a client's requests wait for one of its max_concurrency slots (/stats)."""
    return client_row(get_json(proxy, "/stats", bearer(key)), name)["waiting"]


def seconds_to_utc_midnight(wall):
    return 86400 - wall % 86400


def ledger_file(tmp_path):
    return str(tmp_path / "usage.sqlite3")


def ledger_rows(path):
    """Every row of the ledger, read as another program would (read-only, in time
    order); [] while the file or its table does not exist yet."""
    if not os.path.exists(path):
        return []
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=PATIENCE)
    try:
        db.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in db.execute("SELECT * FROM requests ORDER BY time")]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
    finally:
        db.close()


def wait_for_rows(path, count):
    """The ledger's rows once it holds `count` (its writer is a thread of its own)."""
    wait_for(lambda: len(ledger_rows(path)) >= count,
             message=lambda: "the ledger has %d rows, not %d" % (len(ledger_rows(path)),
                                                                 count))
    return ledger_rows(path)


def in_thread(function, *args):
    """Run function(*args) in a thread; (thread, result list with its value once done)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(function(*args)), daemon=True)
    thread.start()
    return thread, result


def held_reply(text="first"):
    """A reply the upstream gives only once the test opens its gate."""
    return Gate(json_reply(completion(text)), limit=PATIENCE)


def subprocess_env():
    """The environment of a command run by a test: the config file decides (conftest
    sets GEMINI_PROXY_STATE_DIR for proxies in processes)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_PROXY_")}


# == 1. client keys in the configuration ===================================================

def fake_upstreams():
    return {"fake": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x"}}


def load(api_keys, **server):
    return make_config({"server": dict({"api_keys": api_keys}, **server),
                        "upstreams": fake_upstreams()})


def test_client_keys_strings_and_objects():
    config = load(["plain-key", {"key": "alice-key", "name": "alice", "models": ["gpt-*"],
                                 "requests_per_minute": 60, "tokens_per_day": 1000,
                                 "max_concurrency": 2, "_note": "a comment"}])
    plain, alice = config.clients
    assert plain == gp.ClientKey("plain-key", gp.fingerprint("plain-key"))
    assert plain.name.startswith("key#") and "plain-key" not in plain.name
    assert alice == gp.ClientKey("alice-key", "alice", ("gpt-*",), 60, 1000, 2)
    # only key strings where keys are compared and kept out of logs
    assert config.server["api_keys"] == ["plain-key", "alice-key"]
    assert "alice-key" in config.secrets()
    assert alice.allows("gpt-4o") and not alice.allows("claude-x")
    assert plain.allows("anything")


@pytest.mark.parametrize("api_keys, words", [
    ([{"key": "k1", "nmae": "alice"}], "server.api_keys[0].nmae: unknown key"),
    ([{"key": "   "}], "server.api_keys[0]: an empty or blank key"),
    ([""], "server.api_keys[0]: an empty or blank key"),
    ([{"name": "alice"}], "server.api_keys[0]: an empty or blank key"),
    ([{"key": "k1", "name": "al ice"}], "server.api_keys[0].name"),
    ([{"key": "k1", "name": ""}], "server.api_keys[0].name"),
    ([{"key": "k1", "name": "x" * 65}], "server.api_keys[0].name"),
    ([{"key": "k1", "name": 7}], "server.api_keys[0].name"),
    (["k1", {"key": "k1", "name": "alice"}], "server.api_keys[1]: the same key"),
    ([{"key": "k1", "name": "alice"}, {"key": "k2", "name": "alice"}],
     "server.api_keys[1].name: 'alice' names another key"),
    ([{"key": "k1", "requests_per_minute": -1}], "server.api_keys[0].requests_per_minute"),
    ([{"key": "k1", "tokens_per_day": True}], "server.api_keys[0].tokens_per_day"),
    ([{"key": "k1", "max_concurrency": 1.5}], "server.api_keys[0].max_concurrency"),
    ([{"key": "k1", "max_concurrency": "2"}], "server.api_keys[0].max_concurrency"),
    ([{"key": "k1", "models": "gpt-*"}], "server.api_keys[0].models"),
    ([{"key": "k1", "models": [""]}], "server.api_keys[0].models"),
    ([7], "server.api_keys"),
])
def test_client_key_errors(api_keys, words):
    with pytest.raises(gp.ConfigError) as caught:
        load(api_keys)
    assert words in str(caught.value)
    assert "'k1'" not in str(caught.value), "a config error repeats a key"


@pytest.mark.parametrize("setting", ["api_keys", "admin_keys"])
def test_a_bad_entry_in_a_key_list_does_not_print_the_keys(setting):
    with pytest.raises(gp.ConfigError) as caught:
        make_config({"server": {setting: ["secret-key-0123", 7]},
                     "upstreams": fake_upstreams()})
    assert "server.%s" % setting in str(caught.value)
    assert "secret-key-0123" not in str(caught.value), str(caught.value)


def test_admin_key_may_not_be_a_client_key():
    with pytest.raises(gp.ConfigError) as caught:
        load([{"key": "shared-key", "name": "alice"}], admin_keys=["shared-key"])
    assert "server.admin_keys[0]" in str(caught.value)
    assert "client key" in str(caught.value)
    with pytest.raises(gp.ConfigError) as caught:
        load(["k1"], admin_keys=[" "])
    assert "server.admin_keys[0]" in str(caught.value)
    assert load(["k1"], admin_keys=["k2"]).server["admin_keys"] == ["k2"]


# == 2. allowed models =====================================================================

@pytest.mark.parametrize("dialect", ["openai", "anthropic", "gemini"])
def test_a_model_the_key_may_not_use_is_a_403_in_the_clients_dialect(
        proxy_factory, fake, tmp_path, dialect):
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "models": ["gpt-*", "gemini-y"]}]))
    status, _, body = send(proxy, dialect, "alice-key", "claude-x")
    assert status == 403, body
    message = error_message(dialect, body)
    assert "claude-x" in message and "gpt-*" in message and "gemini-y" in message
    assert error_type(dialect, body) == {"openai": "permission_error",
                                         "anthropic": "permission_error",
                                         "gemini": "PERMISSION_DENIED"}[dialect]
    if dialect == "gemini":
        assert body["error"]["code"] == 403
    assert not fake.requests, "a refused model reached the upstream"
    # an allowed one goes through
    status, _, body = send(proxy, dialect, "alice-key", "gpt-a")
    assert status == 200, body
    assert len(fake.requests) == 1


def test_model_lists_offer_only_the_allowed_models(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "models": ["gpt-*"]},
        {"key": "bob-key", "name": "bob"}]))
    listed = [m["id"] for m in get_json(proxy, "/v1/models", bearer("alice-key"))["data"]]
    assert sorted(listed) == ["gpt-a", "gpt-b"]
    listed = [m["id"] for m in get_json(proxy, "/v1/models", bearer("bob-key"))["data"]]
    assert set(MODELS) <= set(listed)   # and the Gemini names the catch-all route covers
    assert any(m.startswith("gemini-2") for m in listed)
    gemini = get_json(proxy, "/v1beta/models", {"x-goog-api-key": "alice-key"})
    assert sorted(m["name"] for m in gemini["models"]) == ["models/gpt-a", "models/gpt-b"]


# == 3. limits =============================================================================

@pytest.mark.parametrize("dialect", ["openai", "anthropic", "gemini"])
def test_requests_per_minute(proxy_factory, fake, tmp_path, dialect):
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "requests_per_minute": 2},
        {"key": "bob-key", "name": "bob"}]))
    first_at = time.time()
    status, _, body = send(proxy, dialect, "alice-key", "gpt-a")
    assert status == 200, body
    first_done = time.time()
    status, _, body = send(proxy, dialect, "alice-key", "gpt-a")
    assert status == 200, body
    before = time.time()
    status, headers, body = send(proxy, dialect, "alice-key", "gpt-a")
    after = time.time()
    assert status == 429, body
    assert "alice" in error_message(dialect, body) and "2" in error_message(dialect, body)
    if dialect == "anthropic":
        assert body["error"]["type"] == "rate_limit_error"
    retry_after = int(headers["retry-after"])
    assert 1 <= retry_after <= 60
    if dialect == "gemini":
        assert body["error"]["code"] == 429
        assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
        delays = [d["retryDelay"] for d in body["error"].get("details", [])
                  if d.get("@type") == "type.googleapis.com/google.rpc.RetryInfo"]
        assert len(delays) == 1, body
        assert delays[0].endswith("s")
        delay = float(delays[0][:-1])
        assert 0 < delay <= 60 and math.ceil(delay) == retry_after, (delays, retry_after)
    assert len(fake.requests) == 2, "the refused request reached the upstream"
    # the window is a minute from the first request: it frees up a minute after it
    assert math.ceil(first_at + 60 - after) - 1 <= retry_after <= \
        math.ceil(first_done + 60 - before), (first_at, first_done, before, after)
    # other clients are not held to alice's limit
    for _ in range(3):
        status, _, body = send(proxy, dialect, "bob-key", "gpt-a")
        assert status == 200, body


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "gemini"])
def test_a_stream_over_the_rate_is_a_429_not_a_broken_stream(proxy_factory, fake, tmp_path,
                                                             dialect):
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "requests_per_minute": 1}]))
    status, _, body = send(proxy, dialect, "alice-key", "gpt-a", stream=True)
    assert status == 200 and faults.read_stream(dialect, body)[1] == "finished", body
    status, headers, body = send(proxy, dialect, "alice-key", "gpt-a", stream=True)
    assert status == 429, body
    assert 1 <= int(headers["retry-after"]) <= 60
    assert "alice" in error_message(dialect, body)


def test_tokens_per_day(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "tokens_per_day": 100},
        {"key": "bob-key", "name": "bob", "tokens_per_day": 100}]))
    fake.queue(json_reply(completion("a long answer", use=usage(prompt=90, completion=60))))
    status, _, body = send(proxy, "openai", "alice-key", "gpt-a")
    assert status == 200, body
    assert body["usage"]["total_tokens"] == 150
    proxy.wait_until_idle()
    before = time.time()
    status, headers, body = send(proxy, "openai", "alice-key", "gpt-a")
    after = time.time()
    assert status == 429, body
    assert "100 tokens" in body["error"]["message"]
    retry_after = int(headers["retry-after"])
    assert seconds_to_utc_midnight(after) - 1 <= retry_after <= \
        math.ceil(seconds_to_utc_midnight(before)), (retry_after, before)
    assert len(fake.requests) == 1
    status, _, body = send(proxy, "gemini", "alice-key", "gpt-a")
    assert status == 429 and body["error"]["status"] == "RESOURCE_EXHAUSTED", body
    # bob has his own budget
    status, _, body = send(proxy, "openai", "bob-key", "gpt-a")
    assert status == 200, body
    proxy.wait_until_idle()   # a request's tokens count once its worker is done
    stats = get_json(proxy, "/stats", bearer("bob-key"))
    assert client_row(stats, "alice")["tokens_today"] == 150
    assert client_row(stats, "bob")["tokens_today"] == IN + OUT


def test_max_concurrency_queues_the_second_request(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "max_concurrency": 1},
        {"key": "bob-key", "name": "bob"}]))
    gate = held_reply("first")
    fake.queue(gate)
    first, first_result = in_thread(send, proxy, "openai", "alice-key", "gpt-a")
    assert gate.entered.wait(PATIENCE), "the first request never reached the upstream"
    second, second_result = in_thread(send, proxy, "anthropic", "alice-key", "gpt-b")
    # the second is in the proxy, waiting for alice's slot
    wait_for(lambda: waiting(proxy, "alice", "bob-key") == 1)
    stats = get_json(proxy, "/stats", bearer("bob-key"))
    assert client_row(stats, "alice")["in_flight"] == 1
    assert proxy.server.proxy.active == 1, "a waiting request holds a worker"
    assert len(fake.requests) == 1 and not second_result
    # another client is not held up by alice's limit
    status, _, body = send(proxy, "openai", "bob-key", "gpt-a")
    assert status == 200, body
    # (the fake counts bob's reply done a moment after the proxy has passed it on)
    wait_for(lambda: fake.busy == 1, message=lambda: "fake busy: %d" % fake.busy)
    assert not second_result and len(fake.requests) == 2
    gate.open()
    first.join(PATIENCE)
    second.join(PATIENCE)
    status, _, body = first_result[0]
    assert status == 200 and body["choices"][0]["message"]["content"] == "first", body
    status, _, body = second_result[0]
    assert status == 200 and body["type"] == "message", body
    assert len(fake.requests) == 3
    assert waiting(proxy, "alice", "bob-key") == 0
    # alice's two requests were never at the upstream at the same time: at most two
    # requests ever were (alice's first and bob's)
    assert fake.most_busy == 2


@pytest.mark.parametrize("limit", [0, 3])
def test_stats_count_a_clients_requests_in_flight(proxy_factory, fake, tmp_path, limit):
    """/stats clients[].in_flight: the client's requests in flight, whether or not it has
    a max_concurrency."""
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "max_concurrency": limit}]))
    gate = held_reply("first")
    fake.queue(gate)
    first, first_result = in_thread(send, proxy, "openai", "alice-key", "gpt-a")
    try:
        assert gate.entered.wait(PATIENCE)
        stats = get_json(proxy, "/stats", bearer("alice-key"))
        assert client_row(stats, "alice")["in_flight"] == 1
    finally:
        gate.open()   # (a failure must not leave the proxy a request to wait for)
    first.join(PATIENCE)
    assert first_result[0][0] == 200
    proxy.wait_until_idle()
    assert client_row(get_json(proxy, "/stats", bearer("alice-key")), "alice")[
        "in_flight"] == 0


def test_a_client_waiting_for_its_slot_that_leaves_stops_waiting(
        proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "max_concurrency": 1}]))
    gate = held_reply("first")
    fake.queue(gate)
    first, first_result = in_thread(send, proxy, "openai", "alice-key", "gpt-a")
    assert gate.entered.wait(PATIENCE)
    app = proxy.server.proxy
    body = json.dumps({"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]})
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=PATIENCE)
    sock.sendall(("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  "Authorization: Bearer alice-key\r\nContent-Type: application/json\r\n"
                  "Content-Length: %d\r\n\r\n%s" % (len(body), body)).encode())
    wait_for(lambda: waiting(proxy, "alice", "alice-key") == 1)
    sock.close()
    # it stops waiting, while the first is still held
    wait_for(lambda: waiting(proxy, "alice", "alice-key") == 0)
    assert not first_result and app.active == 1
    gate.open()
    first.join(PATIENCE)
    assert first_result[0][0] == 200
    proxy.wait_until_idle()
    assert len(fake.requests) == 1, "the request whose client left reached the upstream"
    wait_for(lambda: get_json(proxy, "/stats", bearer("alice-key"))["today"]["requests"] == 2)
    stats = get_json(proxy, "/stats", bearer("alice-key"))
    assert client_row(stats, "alice")["in_flight"] == 0
    assert client_row(stats, "alice")["requests_today"] == 1   # the one admitted
    assert [e["status"] for e in stats["errors"]] == [499]
    # and alice's slot is free again
    status, _, body = send(proxy, "openai", "alice-key", "gpt-a")
    assert status == 200, body


def test_a_client_may_not_queue_without_end(proxy_factory, fake, tmp_path):
    """A client's queue is bounded: past CLIENT_MAX_WAITING waiting, a 429 at once."""
    most = gp.CLIENT_MAX_WAITING
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "max_concurrency": 1},
        {"key": "bob-key", "name": "bob"}]))
    gate = held_reply("first")
    fake.queue(gate)
    threads = [in_thread(send, proxy, "openai", "alice-key", "gpt-a")]
    assert gate.entered.wait(PATIENCE)
    app = proxy.server.proxy
    for _ in range(most):
        threads.append(in_thread(send, proxy, "openai", "alice-key", "gpt-a"))
    wait_for(lambda: waiting(proxy, "alice", "bob-key") == most)
    assert app.active == 1, "waiting requests hold workers"
    status, headers, body = send(proxy, "openai", "alice-key", "gpt-a")
    assert status == 429, body
    assert "waiting" in body["error"]["message"] and headers["retry-after"] == "1"
    refused = headers["x-request-id"]
    assert send(proxy, "openai", "bob-key", "gpt-a")[0] == 200
    gate.open()
    for thread, result in threads:
        thread.join(PATIENCE)
        assert result and result[0][0] == 200, result
    assert len(fake.requests) == most + 2
    rows = {r["request_id"]: r for r in wait_for_rows(ledger_file(tmp_path), most + 3)}
    assert (rows[refused]["status"], rows[refused]["error_kind"], rows[refused]["client"]) \
        == (429, "client_limit", "alice")


# == 4. limits across a restart and a reload ===============================================

def test_limits_survive_a_restart(proxy_factory, fake, tmp_path):
    config = team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "requests_per_minute": 3,
         "tokens_per_day": 1000}])
    first = proxy_factory(config)
    for _ in range(2):
        status, _, body = send(first, "openai", "alice-key", "gpt-a")
        assert status == 200, body
    first.stop()
    assert len(ledger_rows(ledger_file(tmp_path))) == 2   # stopping writes what is queued

    second = proxy_factory(config)
    alice = client_row(get_json(second, "/stats", bearer("alice-key")), "alice")
    assert alice["requests_last_minute"] == 2
    assert alice["requests_today"] == 2
    assert alice["tokens_today"] == 2 * (IN + OUT)
    status, _, body = send(second, "openai", "alice-key", "gpt-a")
    assert status == 200, body
    status, headers, body = send(second, "openai", "alice-key", "gpt-a")
    assert status == 429 and "3 requests a minute" in body["error"]["message"], body
    assert 1 <= int(headers["retry-after"]) <= 60


def test_the_token_budget_survives_a_restart(proxy_factory, fake, tmp_path):
    config = team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "tokens_per_day": 100}])
    first = proxy_factory(config)
    fake.queue(json_reply(completion("big", use=usage(prompt=100, completion=1))))
    assert send(first, "openai", "alice-key", "gpt-a")[0] == 200
    first.stop()
    second = proxy_factory(config)
    status, headers, body = send(second, "openai", "alice-key", "gpt-a")
    assert status == 429 and "100 tokens" in body["error"]["message"], body
    assert int(headers["retry-after"]) > 60 or seconds_to_utc_midnight(time.time()) < 70
    assert len(fake.requests) == 1


def test_refused_requests_do_not_count_after_a_restart(proxy_factory, fake, tmp_path):
    config = team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "requests_per_minute": 2}])
    first = proxy_factory(config)
    assert send(first, "openai", "alice-key", "gpt-a")[0] == 200
    assert send(first, "openai", "alice-key", "gpt-a")[0] == 200
    for _ in range(3):   # an SDK retrying its 429s
        assert send(first, "openai", "alice-key", "gpt-a")[0] == 429
    before = client_row(get_json(first, "/stats", bearer("alice-key")), "alice")
    assert before["requests_last_minute"] == 2 and before["requests_today"] == 2
    first.stop()
    second = proxy_factory(config)
    after = client_row(get_json(second, "/stats", bearer("alice-key")), "alice")
    assert (after["requests_last_minute"], after["requests_today"]) == (2, 2)


def test_a_reload_keeps_the_counts(proxy_factory, fake, tmp_path):
    clients = [{"key": "alice-key", "name": "alice", "requests_per_minute": 2}]
    proxy = proxy_factory(team_config(fake, tmp_path, clients))
    for _ in range(2):
        assert send(proxy, "openai", "alice-key", "gpt-a")[0] == 200
    assert send(proxy, "openai", "alice-key", "gpt-a")[0] == 429
    # the same limit after a reload: still spent
    proxy.server.reload(make_config(dict(team_config(fake, tmp_path, clients),
                                         server={"port": 0, "api_keys": clients,
                                                 "state_dir": str(tmp_path)})))
    assert send(proxy, "openai", "alice-key", "gpt-a")[0] == 429
    # a higher limit: one more now, not three
    raised = [dict(clients[0], requests_per_minute=3)]
    proxy.server.reload(make_config(dict(team_config(fake, tmp_path, raised),
                                         server={"port": 0, "api_keys": raised,
                                                 "state_dir": str(tmp_path)})))
    assert send(proxy, "openai", "alice-key", "gpt-a")[0] == 200
    status, _, body = send(proxy, "openai", "alice-key", "gpt-a")
    assert status == 429 and "3 requests a minute" in body["error"]["message"], body
    proxy.wait_until_idle()
    alice = client_row(get_json(proxy, "/stats", bearer("alice-key")), "alice")
    assert alice["requests_per_minute"] == 3
    assert alice["requests_last_minute"] == 3 and alice["requests_today"] == 3
    assert alice["tokens_today"] == 3 * (IN + OUT)


# == 5. admin keys =========================================================================

OPERATOR_PAGES = ["/status", "/stats", "/metrics", "/dashboard"]


def test_admin_keys_guard_the_operator_pages(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice"}], admin_keys=["admin-key"]))
    for page in OPERATOR_PAGES:
        status, headers, body = proxy.request("GET", page, None, bearer("alice-key"))
        assert status == 401, (page, body[:200])
        assert headers.get("www-authenticate", "").startswith("Basic"), (page, headers)
        status, headers, _ = proxy.request("GET", page)
        assert status == 401 and "www-authenticate" in headers
        # a page's own fetch is not asked for a password (no login box on every refresh)
        status, headers, _ = proxy.request("GET", page, None, dict(
            bearer("wrong"), **{"Sec-Fetch-Mode": "cors"}))
        assert status == 401 and "www-authenticate" not in headers, (page, headers)
        status, _, body = proxy.request("GET", page, None, bearer("admin-key"))
        assert status == 200, (page, body[:200])
        status, _, body = proxy.request("GET", page, None, basic("admin-key"))
        assert status == 200, (page, body[:200])
        status, _, _ = proxy.request("GET", page, None, basic("alice-key"))
        assert status == 401
    status, headers, body = proxy.request("GET", "/dashboard", None, basic("admin-key"))
    assert headers["content-type"].startswith("text/html") and b"<html" in body.lower()
    status, headers, _ = proxy.request("GET", "/metrics", None, bearer("admin-key"))
    assert headers["content-type"].startswith("text/plain")
    # /health stays open to load balancers
    status, _, body = proxy.request("GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    # the admin key is not a client key
    assert send(proxy, "openai", "admin-key", "gpt-a")[0] == 401
    assert send(proxy, "openai", "alice-key", "gpt-a")[0] == 200


def test_without_admin_keys_a_client_key_opens_the_operator_pages(
        proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice"}, "plain-key"]))
    for page in OPERATOR_PAGES:
        for key in ("alice-key", "plain-key"):
            status, _, body = proxy.request("GET", page, None, bearer(key))
            assert status == 200, (page, body[:200])
        assert proxy.request("GET", page, None, basic("alice-key"))[0] == 200
        assert proxy.request("GET", page)[0] == 401
        assert proxy.request("GET", page, None, bearer("wrong"))[0] == 401
    assert proxy.request("GET", "/health")[0] == 200


def test_a_reload_can_set_admin_keys(proxy_factory, fake, tmp_path):
    config = team_config(fake, tmp_path, [{"key": "alice-key", "name": "alice"}])
    proxy = proxy_factory(config)
    assert proxy.request("GET", "/stats", None, bearer("alice-key"))[0] == 200
    config["server"] = dict(config["server"], admin_keys=["admin-key"], port=0)
    proxy.server.reload(make_config(config))
    assert proxy.request("GET", "/stats", None, bearer("alice-key"))[0] == 401
    assert proxy.request("GET", "/stats", None, basic("admin-key"))[0] == 200


def test_admin_keys_without_client_keys(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [], admin_keys=["admin-key"]))
    assert send(proxy, "openai", "", "gpt-a")[0] == 200   # no client keys: open
    for page in OPERATOR_PAGES:
        assert proxy.request("GET", page)[0] == 401, page
        assert proxy.request("GET", page, None, bearer("admin-key"))[0] == 200, page
    assert proxy.request("GET", "/health")[0] == 200


# == 6. the usage ledger ===================================================================

def test_the_ledger_has_a_row_per_request(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice"}, "plain-key"]))
    path = ledger_file(tmp_path)
    sent = {}
    for dialect, key, model, stream in [("openai", "alice-key", "gpt-a", False),
                                        ("openai", "alice-key", "gpt-b", True),
                                        ("anthropic", "plain-key", "claude-x", False),
                                        ("gemini", "alice-key", "gemini-y", False)]:
        status, headers, body = send(proxy, dialect, key, model, stream)
        assert status == 200, body
        sent[headers["x-request-id"]] = (dialect, key, model, stream, headers, body)
    rows = {row["request_id"]: row for row in wait_for_rows(path, len(sent))}
    assert set(rows) == set(sent)
    assert len(ledger_rows(path)) == len(sent)
    names = {"alice-key": "alice", "plain-key": gp.fingerprint("plain-key")}
    for rid, (dialect, key, model, stream, headers, body) in sent.items():
        row = rows[rid]
        assert row["client"] == names[key]
        assert row["dialect"] == dialect
        assert row["model"] == model
        assert row["upstream"] == "fake"
        assert row["upstream_model"] == "fake-model"
        assert row["key"] == gp.fingerprint(UPSTREAM_KEY)
        assert row["status"] == 200 and row["error_kind"] == "" and row["error"] == ""
        assert (row["input_tokens"], row["output_tokens"]) == (IN, OUT)
        assert row["estimated"] == 0
        assert row["stream"] == int(stream)
        assert row["passthrough"] == int(dialect == "openai")
        assert 0 < row["ttfb"] <= row["duration"] < PATIENCE
        assert row["bytes_in"] > 0
        assert abs(row["time"] - time.time()) < 3600
        if stream:
            assert row["bytes_out"] >= len(body)
        else:
            assert row["bytes_out"] == int(headers["content-length"])
    # bytes_in: the body the client sent
    openai_row = next(r for r in rows.values() if r["model"] == "gpt-a")
    assert openai_row["bytes_in"] == len(json.dumps(
        {"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]}))
    assert "alice-key" not in json.dumps(list(rows.values()))
    assert UPSTREAM_KEY not in json.dumps(list(rows.values()))


def test_the_ledger_says_what_failed(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "requests_per_minute": 2,
         "models": ["gpt-*"]}]))
    path = ledger_file(tmp_path)
    fake.queue(faults.error("openai", 500, "the upstream broke"))
    expected = {}
    status, headers, _ = send(proxy, "openai", "alice-key", "gpt-a")
    assert status >= 500
    expected[headers["x-request-id"]] = (status, "upstream", "alice")
    status, headers, _ = send(proxy, "openai", "alice-key", "gpt-a")
    assert status == 200
    expected[headers["x-request-id"]] = (200, "", "alice")
    status, headers, _ = send(proxy, "openai", "alice-key", "gpt-a")
    assert status == 429
    expected[headers["x-request-id"]] = (429, "client_limit", "alice")
    status, headers, _ = send(proxy, "openai", "wrong-key", "gpt-a")
    assert status == 401
    expected[headers["x-request-id"]] = (401, "unauthorized", "")
    status, headers, _ = send(proxy, "gemini", "alice-key", "claude-x")
    assert status == 403
    expected[headers["x-request-id"]] = (403, "model_not_allowed", "alice")
    rows = {row["request_id"]: row for row in wait_for_rows(path, len(expected))}
    assert {rid: (row["status"], row["error_kind"], row["client"])
            for rid, row in rows.items()} == expected
    for rid, (status, kind, _) in expected.items():
        assert bool(rows[rid]["error"]) == bool(kind), rows[rid]
    upstream_failure = next(r for r in rows.values() if r["error_kind"] == "upstream")
    assert upstream_failure["upstream"] == "fake"
    assert "alice" in next(r for r in rows.values()
                           if r["error_kind"] == "client_limit")["error"]


def test_operator_pages_are_not_in_the_ledger(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [{"key": "alice-key", "name": "a"}]))
    path = ledger_file(tmp_path)
    for page in ["/health", "/stats", "/metrics", "/dashboard", "/status"]:
        assert proxy.request("GET", page, None, bearer("alice-key"))[0] == 200
    status, headers, _ = send(proxy, "openai", "alice-key", "gpt-a")
    assert status == 200
    rows = wait_for_rows(path, 1)
    assert [r["request_id"] for r in rows] == [headers["x-request-id"]]
    # nor counted in /stats or /metrics
    stats = get_json(proxy, "/stats", bearer("alice-key"))
    assert stats["today"]["requests"] == 1


@pytest.mark.parametrize("count", [1, gp.LEDGER_ROWS_PER_INSERT, 100])
@pytest.mark.parametrize("rows_per_insert", ["default", 1], ids=["sqlite", "old-sqlite"])
def test_the_ledger_writes_every_row_of_a_batch_in_order(tmp_path, monkeypatch, count,
                                                         rows_per_insert):
    # Rows go in several to an INSERT: a batch of one, of exactly one INSERT's worth, and
    # of two and a part must all land, each value in its column, none twice; and one to
    # an INSERT, as on an SQLite before 3.7.11.
    if rows_per_insert != "default":
        monkeypatch.setattr(gp, "LEDGER_ROWS_PER_INSERT", rows_per_insert)
        monkeypatch.setattr(gp, "LEDGER_INSERT", gp.ledger_insert(rows_per_insert))
    path = ledger_file(tmp_path)
    ledger = gp.Ledger(path, keep_days=0)
    rows = [(1000.0 + i, "rid-%03d" % i, "client-%d" % i, "openai", "generate",
             "model-%d" % i, "up", "up-model", "key#%d" % i, 200 + i % 3, "", "",
             i, 2 * i, 3 * i, 4 * i, i % 2, 0.25 * i, 0.5 * i, 10 + i, 20 + i, i % 2, 1)
            for i in range(count)]
    for row in rows:     # queued before the writer starts: one batch
        ledger.add(row)
    ledger.open()
    ledger.close(timeout=PATIENCE)
    assert [tuple(row.values()) for row in ledger_rows(path)] == rows
    assert ledger.written == count and ledger.dropped == 0


def test_a_ledger_row_of_the_wrong_length_drops_itself_not_shifts_others(tmp_path):
    # Bound several to an INSERT, a short row and a long one would land shifted into
    # each other's columns; a row a statement, SQLite refuses them, and only them.
    path = ledger_file(tmp_path)
    ledger = gp.Ledger(path, keep_days=0)
    row = (1000.0, "rid", "", "openai", "generate", "m", "up", "um", "key", 200, "", "",
           1, 2, 0, 0, 0, 0.1, 0.2, 10, 20, 0, 1)
    for one in (row[:-1], row, row + ("extra",)):
        ledger.add(one)
    ledger.open()
    ledger.close(timeout=PATIENCE)
    assert [tuple(r.values()) for r in ledger_rows(path)] == [row]
    assert ledger.written == 1 and ledger.dropped == 2 and "wrong length" in ledger.warning


def test_a_ledger_row_sqlite_refuses_drops_only_itself(tmp_path, caplog):
    # A value SQLite cannot store (a bug upstream of the ledger) failed the whole INSERT,
    # and so the batch of up to 5,000 rows it was in; its neighbours are kept now.
    path = ledger_file(tmp_path)
    ledger = gp.Ledger(path, keep_days=0)
    rows = [(1000.0 + i, "rid-%03d" % i, "", "openai", "generate", "m", "up", "um", "key",
             200, "", "", i, 2 * i, 0, 0, 0, 0.1, 0.2, 10, 20, 0, 1) for i in range(50)]
    # (both after the first INSERT's 43 rows: that one, written, is rolled back too)
    bad = {44: rows[44][:12] + ({"not": "storable"},) + rows[44][13:],
           47: rows[47][:13] + (2 ** 70,) + rows[47][14:]}
    for i, row in enumerate(rows):
        ledger.add(bad.get(i, row))
    ledger.open()
    ledger.close(timeout=PATIENCE)
    kept = [row for i, row in enumerate(rows) if i not in bad]
    assert [tuple(row.values()) for row in ledger_rows(path)] == kept
    assert ledger.written == 48 and ledger.dropped == 2
    assert "cannot be written (Error binding parameter" in caplog.text
    assert "cannot be written" in ledger.warning     # for the dashboard, not cleared


def test_workers_making_a_new_ledger_at_once_all_open_it(tmp_path):
    # server.processes on a new state_dir: of two workers switching the new file to WAL,
    # SQLite failed one at once ("database is locked"), and it recorded nothing all its
    # life (1 start in 20 with two processes).
    for attempt in range(30):
        path = str(tmp_path / ("usage-%d.sqlite3" % attempt))
        barrier, errors = threading.Barrier(6, timeout=PATIENCE), []

        def open_it():
            barrier.wait()
            try:
                gp.open_ledger_database(path).close()
            except Exception as exc:   # (what the assertion below shows)
                errors.append(exc)
        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE)
        assert not any(thread.is_alive() for thread in threads), attempt
        assert not errors, (attempt, errors)


def test_no_ledger_when_usage_database_is_empty(proxy_factory, fake, tmp_path):
    config = team_config(fake, tmp_path, [{"key": "alice-key", "name": "alice",
                                           "requests_per_minute": 5}])
    config["usage"] = {"database": ""}
    proxy = proxy_factory(config)
    assert send(proxy, "openai", "alice-key", "gpt-a")[0] == 200
    proxy.wait_until_idle()
    stats = get_json(proxy, "/stats", bearer("alice-key"))
    assert stats["ledger"]["on"] is False
    assert client_row(stats, "alice")["requests_last_minute"] == 1   # limits still work
    assert stats["today"]["requests"] == 1                            # and the counts
    proxy.stop()
    assert not [n for n in os.listdir(str(tmp_path)) if "sqlite" in n]


def test_stats_of_a_ledger_that_is_off_has_the_schemas_fields(proxy_factory, fake, tmp_path):
    config = team_config(fake, tmp_path, [{"key": "alice-key", "name": "alice"}])
    config["usage"] = {"database": ""}
    proxy = proxy_factory(config)
    ledger = get_json(proxy, "/stats", bearer("alice-key"))["ledger"]
    assert (ledger.get("on"), ledger.get("path"), ledger.get("warning")) == (False, "", "")


def unwritable_ledgers(tmp_path):
    """Ledger paths that cannot be opened, whoever runs the tests (root included)."""
    afile = tmp_path / "a-file"
    afile.write_text("not a directory")
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not an SQLite database, but it is a file " * 100)
    return [str(afile / "usage.sqlite3"), str(garbage)]


@pytest.mark.parametrize("which", [0, 1])
def test_an_unwritable_ledger_is_a_warning_not_an_outage(proxy_factory, fake, tmp_path,
                                                         which):
    path = unwritable_ledgers(tmp_path)[which]
    config = team_config(fake, tmp_path, [{"key": "alice-key", "name": "alice"}])
    config["usage"] = {"database": path}
    proxy = proxy_factory(config)
    for _ in range(2):
        status, _, body = send(proxy, "openai", "alice-key", "gpt-a")
        assert status == 200, body
    ledger = wait_for(lambda: (lambda s: s["ledger"] if s["ledger"]["rows_dropped"] >= 2
                               else None)(get_json(proxy, "/stats", bearer("alice-key"))))
    assert ledger["warning"] and path in ledger["warning"]
    assert ledger["rows_written"] == 0
    stats = get_json(proxy, "/stats", bearer("alice-key"))
    assert stats["today"]["requests"] == 2


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into a read-only directory")
def test_a_read_only_state_dir_is_a_warning_not_an_outage(proxy_factory, fake, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o500)
    try:
        proxy = proxy_factory(team_config(fake, state, [{"key": "alice-key", "name": "a"}]))
        assert send(proxy, "openai", "alice-key", "gpt-a")[0] == 200
        stats = get_json(proxy, "/stats", bearer("alice-key"))
        assert stats["ledger"]["warning"]
    finally:
        state.chmod(0o700)


# == 7. the usage command ==================================================================

def run_usage(config_path, *args):
    return subprocess.run([sys.executable, SCRIPT, "usage", "-c", config_path] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=subprocess_env(), timeout=PATIENCE)


def test_the_usage_command(proxy_factory, fake, tmp_path):
    config = team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "requests_per_minute": 3}, "plain-key"])
    proxy = proxy_factory(config)
    fake.queue(json_reply(completion("x", use=usage(prompt=100, completion=20))))
    sent = [("alice-key", "gpt-a"), ("alice-key", "gpt-a"), ("alice-key", "gpt-b"),
            ("alice-key", "gpt-b"), ("plain-key", "gpt-b")]
    statuses = [send(proxy, "openai", key, model)[0] for key, model in sent]
    assert statuses == [200, 200, 200, 429, 200]
    wait_for_rows(ledger_file(tmp_path), len(sent))
    config_path = str(tmp_path / "config.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    plain = gp.fingerprint("plain-key")

    done = run_usage(config_path, "--since", "7d", "--by", "model", "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["model"]: r for r in json.loads(done.stdout)}
    assert set(rows) == {"gpt-a", "gpt-b"}
    assert (rows["gpt-a"]["requests"], rows["gpt-a"]["errors"]) == (2, 0)
    assert rows["gpt-a"]["input_tokens"] == 100 + IN
    assert rows["gpt-a"]["output_tokens"] == 20 + OUT
    assert (rows["gpt-b"]["requests"], rows["gpt-b"]["errors"]) == (3, 1)
    assert rows["gpt-b"]["input_tokens"] == 2 * IN
    assert rows["gpt-b"]["estimated"] == 0

    done = run_usage(config_path, "--by", "client", "--csv")
    assert done.returncode == 0, done.stderr
    table = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {r["client"]: (int(r["requests"]), int(r["errors"])) for r in table} == {
        "alice": (4, 1), plain: (1, 0)}
    assert {r["client"]: int(r["output_tokens"]) for r in table} == {
        "alice": 20 + 2 * OUT, plain: OUT}

    done = run_usage(config_path, "--since", "1h", "--by", "day", "--json")
    assert done.returncode == 0, done.stderr
    days = {}
    for row in ledger_rows(ledger_file(tmp_path)):   # UTC days
        day = datetime.datetime.fromtimestamp(row["time"], datetime.timezone.utc)
        days[day.strftime("%Y-%m-%d")] = days.get(day.strftime("%Y-%m-%d"), 0) + 1
    assert {r["day"]: r["requests"] for r in json.loads(done.stdout)} == days

    done = run_usage(config_path, "--by", "upstream", "--json")
    assert done.returncode == 0, done.stderr
    assert {r["upstream"]: r["requests"] for r in json.loads(done.stdout)} == {
        "fake": 4, "-": 1}   # the refused request never chose an upstream

    done = run_usage(config_path, "--by", "key", "--json")
    assert done.returncode == 0, done.stderr
    assert {r["key"]: r["requests"] for r in json.loads(done.stdout)} == {
        gp.fingerprint(UPSTREAM_KEY): 4, "-": 1}
    assert UPSTREAM_KEY not in done.stdout

    done = run_usage(config_path, "--by", "client")     # the table, with a total
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["client", "requests", "errors"]
    assert lines[-1].split()[:3] == ["total", "5", "1"]
    assert any(line.split()[:2] == ["alice", "4"] for line in lines)



def test_the_usage_command_refuses_bad_input(tmp_path):
    config_path = str(tmp_path / "config.json")
    with open(config_path, "w") as f:
        json.dump({"server": {"state_dir": str(tmp_path)}, "upstreams": fake_upstreams()}, f)
    done = run_usage(config_path)
    assert done.returncode == 2
    assert "no usage ledger" in done.stderr and str(tmp_path) in done.stderr
    # make a ledger, then ask badly
    db = gp.open_ledger_database(ledger_file(tmp_path))
    db.close()
    for since in ("7x", "2026-13-01"):
        done = run_usage(config_path, "--since=" + since)
        assert done.returncode == 2, (since, done.stdout)
        assert "--since" in done.stderr and since in done.stderr, done.stderr
    done = run_usage(config_path, "--since", "2000-01-01", "--json")   # an empty ledger
    assert done.returncode == 0 and json.loads(done.stdout) == []
    off = str(tmp_path / "off.json")
    with open(off, "w") as f:
        json.dump({"server": {"state_dir": str(tmp_path)}, "upstreams": fake_upstreams(),
                   "usage": {"database": ""}}, f)
    done = run_usage(off)
    assert done.returncode == 2 and "off" in done.stderr


@pytest.mark.parametrize("content", [b"", b"not an SQLite database, just a file " * 100])
def test_the_usage_command_on_a_ledger_it_cannot_read(tmp_path, content):
    config_path = str(tmp_path / "config.json")
    with open(config_path, "w") as f:
        json.dump({"server": {"state_dir": str(tmp_path)}, "upstreams": fake_upstreams()}, f)
    with open(ledger_file(tmp_path), "wb") as f:   # empty: an SQLite file with no table
        f.write(content)
    done = run_usage(config_path, "--json")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert "cannot read the usage ledger" in done.stderr


# == 8. /metrics ===========================================================================

def metrics_of(proxy, key="alice-key"):
    """{sample name: [(labels, value)]} of GET /metrics, read by Prometheus' own parser."""
    parser = pytest.importorskip("prometheus_client.parser")
    status, headers, body = proxy.request("GET", "/metrics", None, bearer(key))
    assert status == 200, body[:300]
    assert headers["content-type"].startswith("text/plain")
    samples = {}
    for family in parser.text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples, name, **labels):
    return sum(value for found, value in samples.get(name, [])
               if all(found.get(k) == v for k, v in labels.items()))


def test_metrics_count_what_happened(proxy_factory, fake, tmp_path):
    pytest.importorskip("prometheus_client")
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "requests_per_minute": 2},
        {"key": "bob-key", "name": "bob"}]))
    assert send(proxy, "openai", "alice-key", "gpt-a")[0] == 200
    assert send(proxy, "anthropic", "alice-key", "gpt-b", stream=True)[0] == 200
    assert send(proxy, "openai", "alice-key", "gpt-a")[0] == 429
    assert send(proxy, "gemini", "bob-key", "gpt-a")[0] == 200
    assert send(proxy, "openai", "nobody", "gpt-a")[0] == 401
    wait_for(lambda: total(metrics_of(proxy), "gemini_proxy_requests_total") == 5,
             message=lambda: metrics_of(proxy).get("gemini_proxy_requests_total"))
    samples = metrics_of(proxy)
    requests = "gemini_proxy_requests_total"
    assert total(samples, requests, client="alice", status="200") == 2
    assert total(samples, requests, client="alice", status="429") == 1
    assert total(samples, requests, client="bob", status="200") == 1
    assert total(samples, requests, client="bob", dialect="gemini", model="gpt-a",
                 upstream="fake") == 1
    assert total(samples, requests, client="alice", dialect="anthropic", model="gpt-b") == 1
    assert total(samples, requests, status="401") == 1
    tokens = "gemini_proxy_tokens_total"
    assert total(samples, tokens, client="alice", kind="input") == 2 * IN
    assert total(samples, tokens, client="alice", kind="output") == 2 * OUT
    assert total(samples, tokens, client="bob", model="gpt-a", upstream="fake",
                 kind="output") == OUT
    # the histogram: one count per request, buckets that only grow, +Inf = count
    count = "gemini_proxy_request_duration_seconds_count"
    assert total(samples, count) == 5
    assert total(samples, count, upstream="fake") == 3
    buckets = [(float(labels["le"]), value) for labels, value in
               samples["gemini_proxy_request_duration_seconds_bucket"]
               if labels["upstream"] == "fake"]
    assert buckets == sorted(buckets) and buckets[-1] == (math.inf, 3)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert total(samples, "gemini_proxy_request_duration_seconds_sum", upstream="fake") > 0
    assert total(samples, "gemini_proxy_request_ttfb_seconds_count", upstream="fake") == 3
    # operator pages are not requests
    for _ in range(3):
        metrics_of(proxy)
    assert total(metrics_of(proxy), requests) == 5
    assert total(samples, "gemini_proxy_workers") == 10000


def test_metrics_key_state_is_one_hot(proxy_factory, fake, tmp_path):
    pytest.importorskip("prometheus_client")
    proxy = proxy_factory(team_config(fake, tmp_path, [{"key": "alice-key", "name": "a"}],
                                      upstream={"api_key": "", "retries": 2,
                                                "api_keys": ["sk-a-1111", "sk-b-2222"]}))
    fake.rules["sk-a-1111"] = faults.error("openai", 429, "key a is over its quota",
                                           retry_after=3600)
    for _ in range(2):   # round robin: one of the two starts on key a
        status, _, body = send(proxy, "openai", "alice-key", "gpt-a")
        assert status == 200, body
    samples = metrics_of(proxy)
    states = {}
    for labels, value in samples["gemini_proxy_key_state"]:
        assert labels["upstream"] == "fake"
        states.setdefault(labels["key"], {})[labels["state"]] = value
    assert set(states) == {gp.fingerprint("sk-a-1111"), gp.fingerprint("sk-b-2222")}
    for key, by_state in states.items():
        assert set(by_state) == {"ok", "resting", "out"}
        assert sorted(by_state.values()) == [0, 0, 1], (key, by_state)
    assert states[gp.fingerprint("sk-a-1111")]["resting"] == 1
    assert states[gp.fingerprint("sk-b-2222")]["ok"] == 1
    status, _, body = proxy.request("GET", "/metrics", None, bearer("alice-key"))
    assert b"sk-a-1111" not in body and b"sk-b-2222" not in body


def test_metrics_labels_are_escaped(proxy_factory, fake, tmp_path):
    pytest.importorskip("prometheus_client")
    proxy = proxy_factory(team_config(fake, tmp_path, [{"key": "alice-key", "name": "a"}]))
    odd = 'we"ird\\model'
    status, _, body = send(proxy, "openai", "alice-key", odd)
    assert status == 200, body
    wait_for(lambda: total(metrics_of(proxy), "gemini_proxy_requests_total") == 1)
    samples = metrics_of(proxy)
    assert total(samples, "gemini_proxy_requests_total", model=odd) == 1
    assert total(samples, "gemini_proxy_tokens_total", model=odd, kind="input") == IN
    status, _, text = proxy.request("GET", "/metrics", None, bearer("alice-key"))
    assert b'model="we\\"ird\\\\model"' in text


def test_metrics_collapse_many_model_names(proxy_factory, fake, tmp_path):
    pytest.importorskip("prometheus_client")
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice", "models": ["allowed"]}]))
    names = ["model-%03d" % i for i in range(gp.MAX_LABEL_VALUES + 10)]
    conn = proxy.connection()
    try:   # refused at once (403), so 210 requests take no upstream time
        for name in names:
            conn.request("POST", "/v1/chat/completions", body=json.dumps(
                {"model": name, "messages": [{"role": "user", "content": "hi"}]}),
                headers=dict(bearer("alice-key"), **{"content-type": "application/json"}))
            response = conn.getresponse()
            response.read()
            assert response.status == 403
    finally:
        conn.close()
    wait_for(lambda: total(metrics_of(proxy), "gemini_proxy_requests_total") == len(names))
    samples = metrics_of(proxy)
    models = {labels["model"] for labels, _ in samples["gemini_proxy_requests_total"]}
    assert len(models) == gp.MAX_LABEL_VALUES + 1
    assert "(other)" in models
    assert total(samples, "gemini_proxy_requests_total", model="(other)") == 10
    stats = get_json(proxy, "/stats", bearer("alice-key"))
    assert len(stats["series"]["hour"]["by"]["model"]) == gp.MAX_LABEL_VALUES + 1


# == 9. /stats =============================================================================

STATS_KEYS = {"version", "uptime_seconds", "generated_at", "ledger", "now", "today", "series",
              "clients", "upstreams", "errors"}
NOW_KEYS = {"requests_per_minute", "tokens_per_minute", "error_rate", "p50_ms", "p95_ms",
            "in_flight", "workers_busy", "workers", "worker_threads", "connections_open"}
CLIENT_KEYS = {"name", "models", "requests_per_minute", "tokens_per_day", "max_concurrency",
               "requests_last_minute", "tokens_today", "requests_today", "in_flight"}
UPSTREAM_KEYS = {"name", "kind", "base_url", "unusable", "in_flight", "waiting", "keys"}
KEY_KEYS = {"key", "health", "resting_until", "resting_for", "out_reason", "last_error",
            "requests_today", "tokens_today", "in_flight", "requests", "failures"}
ERROR_KEYS = {"time", "request_id", "client", "model", "upstream", "status", "error"}


def check_stats_shape(stats):
    assert STATS_KEYS <= set(stats)
    assert {"on", "path", "warning"} <= set(stats["ledger"])
    assert NOW_KEYS <= set(stats["now"])
    assert 0 <= stats["now"]["error_rate"] <= 1
    assert set(stats["today"]) == {"requests", "errors", "input_tokens", "output_tokens"}
    for name, step, buckets in (("hour", 60, 60), ("week", 3600, 168)):
        series = stats["series"][name]
        assert (series["step_seconds"], series["buckets"]) == (step, buckets)
        # the last bucket is the current one
        assert series["start"] + (buckets - 1) * step <= stats["generated_at"] < \
            series["start"] + buckets * step
        assert set(series["by"]) == {"model", "client", "upstream"}
        for by in series["by"].values():
            for arrays in by.values():
                assert set(arrays) == {"requests", "tokens", "errors"}
                assert all(len(a) == buckets for a in arrays.values())
    for client in stats["clients"]:
        assert CLIENT_KEYS <= set(client)
    for upstream in stats["upstreams"]:
        assert UPSTREAM_KEYS <= set(upstream)
        for key in upstream["keys"]:
            assert KEY_KEYS <= set(key)
            assert key["health"] in ("ok", "resting", "out")
    assert len(stats["errors"]) <= 50
    for error in stats["errors"]:
        assert ERROR_KEYS <= set(error)


def test_stats(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(
        fake, tmp_path, [{"key": "alice-key", "name": "alice", "models": ["gpt-*"],
                          "requests_per_minute": 3, "tokens_per_day": 100000,
                          "max_concurrency": 4},
                         {"key": "bob-key", "name": "bob"}],
        upstream={"api_key": "", "retries": 2, "retry_wait": 0.0,
                  "api_keys": ["sk-a-1111", "sk-b-2222"]},
        admin_keys=["admin-key"]))
    admin = bearer("admin-key")
    fake.rules["sk-a-1111"] = faults.error("openai", 429, "key a is over its quota",
                                           retry_after=3600)
    failed = []
    for _ in range(2):
        assert send(proxy, "openai", "alice-key", "gpt-a")[0] == 200
    status, headers, _ = send(proxy, "anthropic", "alice-key", "claude-x")
    assert status == 403
    failed.append(headers["x-request-id"])
    assert send(proxy, "gemini", "bob-key", "gpt-b")[0] == 200
    fake.rules["sk-b-2222"] = faults.error("openai", 500, "the upstream broke")
    status, headers, _ = send(proxy, "openai", "bob-key", "gpt-b")
    assert status >= 500
    failed.append(headers["x-request-id"])
    del fake.rules["sk-b-2222"]
    assert send(proxy, "openai", "alice-key", "gpt-a")[0] == 200
    status, headers, _ = send(proxy, "openai", "alice-key", "gpt-a")
    assert status == 429
    failed.append(headers["x-request-id"])

    wait_for(lambda: get_json(proxy, "/stats", admin)["today"]["requests"] == 7)
    stats = get_json(proxy, "/stats", admin)
    check_stats_shape(stats)
    assert stats["today"] == {"requests": 7, "errors": 3, "input_tokens": 4 * IN,
                              "output_tokens": 4 * OUT}
    assert stats["now"]["requests_per_minute"] == 7
    assert stats["now"]["error_rate"] == round(3 / 7, 4)
    assert stats["now"]["p50_ms"] is not None and stats["now"]["in_flight"] == 0
    assert stats["now"]["workers"] == 10000
    assert stats["ledger"]["on"] is True and stats["ledger"]["warning"] == ""
    assert stats["ledger"]["path"] == ledger_file(tmp_path)
    # newest first, with the request ids the clients were given
    assert [e["request_id"] for e in stats["errors"]] == failed[::-1]
    assert [e["status"] for e in stats["errors"]][0] == 429
    assert stats["errors"][2]["client"] == "alice" and stats["errors"][2]["model"] == \
        "claude-x"
    assert stats["errors"][1]["upstream"] == "fake"
    clients = {c["name"]: {k: v for k, v in c.items() if k in CLIENT_KEYS}
               for c in stats["clients"]}
    assert clients["alice"] == {
        "name": "alice", "models": ["gpt-*"], "requests_per_minute": 3,
        "tokens_per_day": 100000, "max_concurrency": 4, "requests_last_minute": 3,
        "requests_today": 3, "tokens_today": 3 * (IN + OUT), "in_flight": 0}
    assert clients["bob"]["models"] == [] and clients["bob"]["requests_per_minute"] is None
    assert clients["bob"]["requests_today"] == 2
    assert clients["bob"]["tokens_today"] == IN + OUT
    (upstream,) = stats["upstreams"]
    assert (upstream["name"], upstream["kind"], upstream["unusable"]) == ("fake", "openai", "")
    keys = {k["key"]: k for k in upstream["keys"]}
    assert set(keys) == {gp.fingerprint("sk-a-1111"), gp.fingerprint("sk-b-2222")}
    resting = keys[gp.fingerprint("sk-a-1111")]
    assert resting["health"] == "resting"
    assert resting["resting_until"] > time.time() + 1800
    assert "over its quota" in resting["last_error"]
    assert keys[gp.fingerprint("sk-b-2222")]["health"] == "ok"
    assert sum(k["requests_today"] for k in keys.values()) >= 5
    hour = stats["series"]["hour"]["by"]
    assert sum(hour["client"]["alice"]["requests"]) == 5
    assert sum(hour["client"]["alice"]["errors"]) == 2
    assert hour["client"]["alice"]["requests"][-1] + hour["client"]["alice"][
        "requests"][-2] == 5
    assert sum(hour["model"]["gpt-b"]["tokens"]) == IN + OUT
    # the 403 and the 429 never chose an upstream
    assert sum(stats["series"]["week"]["by"]["upstream"]["fake"]["requests"]) == 5
    assert sum(stats["series"]["week"]["by"]["upstream"]["-"]["requests"]) == 2
    _, _, raw = proxy.request("GET", "/stats", None, admin)
    for secret in (b"sk-a-1111", b"sk-b-2222", b"alice-key", b"admin-key"):
        assert secret not in raw


def test_stats_after_a_restart(proxy_factory, fake, tmp_path):
    config = team_config(fake, tmp_path, [{"key": "alice-key", "name": "alice",
                                           "models": ["gpt-*"]}])
    first = proxy_factory(config)
    assert send(first, "openai", "alice-key", "gpt-a")[0] == 200
    status, headers, _ = send(first, "openai", "alice-key", "claude-x")
    assert status == 403
    first.stop()
    second = proxy_factory(config)
    stats = get_json(second, "/stats", bearer("alice-key"))
    check_stats_shape(stats)
    assert stats["today"] == {"requests": 2, "errors": 1, "input_tokens": IN,
                              "output_tokens": OUT}
    assert [e["request_id"] for e in stats["errors"]] == [headers["x-request-id"]]
    assert sum(stats["series"]["hour"]["by"]["client"]["alice"]["requests"]) == 2
    status, headers2, _ = send(second, "openai", "alice-key", "claude-y")
    wait_for(lambda: len(get_json(second, "/stats", bearer("alice-key"))["errors"]) == 2)
    stats = get_json(second, "/stats", bearer("alice-key"))
    assert [e["request_id"] for e in stats["errors"]] == [headers2["x-request-id"],
                                                          headers["x-request-id"]]


def error_view(errors):
    return [{k: e[k] for k in ("request_id", "client", "model", "upstream", "status", "error")}
            for e in errors]


def test_the_errors_list_reads_the_same_after_a_restart(proxy_factory, fake, tmp_path):
    config = team_config(fake, tmp_path, [{"key": "alice-key", "name": "alice",
                                           "models": ["gpt-*"]}])
    first = proxy_factory(config)
    fake.queue(faults.error("openai", 500, "the upstream broke"))
    assert send(first, "openai", "alice-key", "gpt-a")[0] >= 500
    assert send(first, "openai", "alice-key", "claude-x")[0] == 403
    assert send(first, "openai", "wrong-key", "gpt-a")[0] == 401
    wait_for(lambda: len(get_json(first, "/stats", bearer("alice-key"))["errors"]) == 3)
    before = error_view(get_json(first, "/stats", bearer("alice-key"))["errors"])
    first.stop()
    second = proxy_factory(config)
    after = error_view(get_json(second, "/stats", bearer("alice-key"))["errors"])
    assert [e["request_id"] for e in after] == [e["request_id"] for e in before]
    assert after == before


# == 10. CORS ==============================================================================

PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, x-stainless-os, "
                                               "anthropic-version"}


def test_cors_preflight_and_replies(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [{"key": "alice-key", "name": "a"}],
                                      cors_origins=["https://app.example"]))
    for path in ("/v1/chat/completions", "/v1/messages",
                 "/v1beta/models/gpt-a:streamGenerateContent"):
        status, headers, body = proxy.request("OPTIONS", path, None, PREFLIGHT)
        assert status == 204, (path, body)
        assert headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in [m.strip() for m in headers["access-control-allow-methods"]
                          .split(",")]
        assert headers["access-control-allow-headers"] == \
            "authorization, x-stainless-os, anthropic-version"
        assert body == b""
    # another origin may not
    status, headers, _ = proxy.request("OPTIONS", "/v1/chat/completions", None,
                                       dict(PREFLIGHT, Origin="https://evil.example"))
    assert status == 403
    assert "access-control-allow-origin" not in headers
    # the real requests: whole, streamed, and refused, each readable by the page
    origin = {"Origin": "https://app.example"}
    for stream in (False, True):
        status, headers, body = send(proxy, "openai", "alice-key", "gpt-a", stream, origin)
        assert status == 200, body
        assert headers["access-control-allow-origin"] == "https://app.example"
        exposed = [h.strip() for h in headers["access-control-expose-headers"].split(",")]
        assert "x-request-id" in exposed and "retry-after" in exposed
        if stream:
            assert headers.get("transfer-encoding") == "chunked"
            assert b"data: [DONE]" in body
    status, headers, _ = send(proxy, "openai", "wrong", "gpt-a", headers=origin)
    assert status == 401 and headers["access-control-allow-origin"] == "https://app.example"
    status, headers, _ = send(proxy, "openai", "alice-key", "gpt-a",
                              headers={"Origin": "https://evil.example"})
    assert status == 200 and "access-control-allow-origin" not in headers


def test_a_preflight_is_not_a_request_in_the_ledger_or_the_counts(
        proxy_factory, fake, tmp_path):
    """A browser sends a preflight before its cross-origin POSTs: it is the CORS
    protocol, not a use of the proxy (no client, no model), like the operator's pages."""
    proxy = proxy_factory(team_config(fake, tmp_path, [{"key": "alice-key", "name": "a"}],
                                      cors_origins=["https://app.example"]))
    assert proxy.request("OPTIONS", "/v1/chat/completions", None, PREFLIGHT)[0] == 204
    status, headers, _ = send(proxy, "openai", "alice-key", "gpt-a",
                              headers={"Origin": "https://app.example"})
    assert status == 200
    wait_for(lambda: get_json(proxy, "/stats", bearer("alice-key"))["today"]["requests"] >= 1)
    proxy.stop()   # every row written
    rows = ledger_rows(ledger_file(tmp_path))
    assert [r["request_id"] for r in rows] == [headers["x-request-id"]], rows


def test_without_cors_origins_there_is_no_cors(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [{"key": "alice-key", "name": "a"}]))
    status, headers, _ = proxy.request("OPTIONS", "/v1/chat/completions", None, PREFLIGHT)
    assert status == 405
    assert "access-control-allow-origin" not in headers
    assert "POST" in headers.get("allow", "")
    for stream in (False, True):
        status, headers, _ = send(proxy, "openai", "alice-key", "gpt-a", stream,
                                  {"Origin": "https://app.example"})
        assert status == 200
        assert not [h for h in headers if h.startswith("access-control-")], headers


def test_cors_star_allows_any_origin(proxy_factory, fake, tmp_path):
    proxy = proxy_factory(team_config(fake, tmp_path, [{"key": "alice-key", "name": "a"}],
                                      cors_origins=["*"]))
    for origin in ("https://one.example", "http://localhost:5173"):
        status, headers, _ = proxy.request("OPTIONS", "/v1/messages", None,
                                           dict(PREFLIGHT, Origin=origin))
        assert status == 204 and headers["access-control-allow-origin"] == "*"
        status, headers, _ = send(proxy, "anthropic", "alice-key", "gpt-a",
                                  headers={"Origin": origin})
        assert status == 200 and headers["access-control-allow-origin"] == "*"


# == 11. logs ==============================================================================

TOKEN = "ya29.a0AfH6SMBx-secret_Token.value"
REFRESH = "1//0gLongRefreshToken-abcdef"


def test_json_log_lines():
    formatter = gp.JsonLogFormatter()
    record = logging.LogRecord("gemini_proxy.test", logging.WARNING, __file__, 1,
                               "token %s and %s\nnext line", (TOKEN, REFRESH), None)
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "warning" and entry["logger"] == "gemini_proxy.test"
    assert entry["message"].startswith("token ") and entry["message"].endswith("next line")
    assert "ya29." not in line and "1//0g" not in line and "secret_Token" not in line
    when = datetime.datetime.fromisoformat(entry["time"])
    assert abs(when.timestamp() - record.created) < 0.01
    try:
        raise ValueError("bad token " + TOKEN)
    except ValueError:
        record = logging.LogRecord("gemini_proxy", logging.ERROR, __file__, 1, "failed",
                                   (), sys.exc_info())
    line = formatter.format(record)
    entry = json.loads(line)
    assert "ValueError" in entry["traceback"] and "ya29." not in line


@pytest.fixture
def root_logger_restored():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    switches = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing,
                logging._srcfile)   # the HOWTO's switches, which setup_logging turns off
    yield
    (logging.logThreads, logging.logProcesses, logging.logMultiprocessing,
     logging._srcfile) = switches
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def test_log_file_rotates(tmp_path, root_logger_restored):
    path = str(tmp_path / "proxy.log")
    gp.setup_logging(dict(gp.LOGGING_DEFAULTS, file=path, file_max_bytes=1024, file_count=2,
                          format="json", level="info"))
    logger = logging.getLogger("gemini_proxy.rotation-test")
    for i in range(100):
        logger.info("line %03d with a token %s and some padding to fill the file", i, TOKEN)
    for handler in logging.getLogger().handlers:
        handler.flush()
    names = sorted(os.listdir(str(tmp_path)))
    assert names == ["proxy.log", "proxy.log.1", "proxy.log.2"]
    for name in names:
        with open(str(tmp_path / name), encoding="utf-8") as f:
            text = f.read()
        assert os.path.getsize(str(tmp_path / name)) <= 1024
        assert "ya29." not in text
        for line in text.splitlines():
            assert json.loads(line)["logger"] == "gemini_proxy.rotation-test"
    with open(path, encoding="utf-8") as f:
        last = f.read().splitlines()[-1]
    assert "line 099" in json.loads(last)["message"]


def test_prune_detailed_logs(tmp_path):
    now = time.time()

    def day(days_ago):
        return time.strftime("%Y-%m-%d", time.localtime(now - days_ago * 86400))
    old, older, recent, today = day(8), day(30), day(7), day(0)   # keep_days: 7
    for name in (old, older, recent, today, "notes", old + ".bak", "0000-00-00x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.log").write_text("x")
    (tmp_path / old / "nested").mkdir()
    (tmp_path / "notes" / day(20)).mkdir()              # not at the top: not touched
    (tmp_path / day(40)).write_text("a file with a day's name")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.log").write_text("x")
    os.symlink(str(outside), str(tmp_path / day(50)))   # a link with a day's name
    deleted = gp.prune_detailed_logs(str(tmp_path), 7, now)
    assert deleted == 2
    assert sorted(os.listdir(str(tmp_path))) == sorted(
        [recent, today, "notes", old + ".bak", "0000-00-00x", day(40), "outside", day(50)])
    assert (outside / "keep.log").exists() and os.path.islink(str(tmp_path / day(50)))
    assert (tmp_path / "notes" / day(20)).is_dir()
    assert gp.prune_detailed_logs(str(tmp_path / "missing"), 7, now) == 0
    assert gp.prune_detailed_logs(str(tmp_path), 7, now) == 0


# == 12. the access log ====================================================================

def test_access_log_names_the_client(proxy_factory, fake, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    proxy = proxy_factory(team_config(fake, tmp_path, [
        {"key": "alice-key", "name": "alice"}, "plain-key"]))

    def line_of(rid):
        found = [r.getMessage() for r in caplog.records
                 if r.name == "gemini_proxy.access" and "rid=%s " % rid in r.getMessage()]
        return found[0] if found else None
    expected = {}
    for key, client in (("alice-key", "client=alice"),
                        ("plain-key", "client=" + gp.fingerprint("plain-key"))):
        status, headers, _ = send(proxy, "openai", key, "gpt-a")
        assert status == 200
        expected[headers["x-request-id"]] = client
    status, headers, _ = send(proxy, "openai", "wrong-key", "gpt-a")
    assert status == 401
    expected[headers["x-request-id"]] = None
    for rid, client in expected.items():
        line = wait_for(lambda: line_of(rid), message="no access log line for " + rid)
        if client:
            assert (" %s " % client) in line, line
        else:
            assert "client=" not in line, line
        assert "alice-key" not in line and "plain-key" not in line


def test_access_log_of_an_open_proxy_names_no_client(proxy_factory, fake, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gemini_proxy.access")
    proxy = proxy_factory(team_config(fake, tmp_path, []))
    status, headers, _ = send(proxy, "openai", "", "gpt-a")
    assert status == 200
    rid = headers["x-request-id"]
    line = wait_for(lambda: next((r.getMessage() for r in caplog.records
                                  if "rid=%s " % rid in r.getMessage()), None))
    assert "client=" not in line and " 200 " in line
