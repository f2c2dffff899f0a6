"""The Code Assist upstream end to end: the real server in front of a fake Google
(tests/fake_google.py), with a pool of Google accounts. Tokens refreshed ahead of time and
once however many requests wait, a 401 replayed once, a revoked login taken out (after the
file is read again), projects found and onboarded once across restarts, each kind of 429
and 403 doing what it should to the pool, the envelope both ways, usage, and no token in
any log, error or page. The pure parts: test_code_assist.py; the login and accounts
commands: test_code_assist_login.py."""

import json
import logging
import os
import threading

import pytest

import gemini_proxy as gp
from conftest import PATIENCE, RunningProxy, make_config, sse_payloads, wait_for
from fake_upstream import Gate, gemini_text_stream
from fake_google import (ca_bare_429, ca_capacity, ca_daily_quota, ca_forbidden,
                         ca_not_found, ca_rate_limit, ca_server_error, enveloped,
                         slow_stream, write_credentials)

MODEL = "gemini-2.5-pro"
ANN, BOB, CAT = "ann@example.com", "bob@example.com", "cat@example.com"


class Rig:
    """A fake Google, credential files in a directory, and proxies in front of them."""

    def __init__(self, google, tmp_path):
        self.google, self.tmp = google, tmp_path
        self.creds = tmp_path / "creds"
        self.creds.mkdir()
        self.state = tmp_path / "state"
        self.running = []

    def account(self, email, fmt="gemini-cli", expired=False, **options):
        self.google.add_account(email, **options)
        path = self.creds / (email.split("@")[0] + ".json")
        write_credentials(str(path), self.google.credentials(email, fmt, expired=expired))
        return path

    def config(self, **upstream):
        spec = dict({"kind": "code-assist", "base_url": self.google.base_url,
                     "oauth_token_url": self.google.token_url,
                     "credentials": [str(self.creds)], "cooldown_jitter": 0.0}, **upstream)
        return {"server": {"port": 0, "state_dir": str(self.state)},
                "upstreams": {"google": spec}}

    def start(self, raw=None, environ=None, **upstream):
        running = RunningProxy(make_config(raw or self.config(**upstream), environ or {}),
                               environ or {})
        self.running.append(running)
        return running

    def stop(self):
        for running in self.running:
            running.stop()
        self.running.clear()


def ask(proxy, text="hello", model=MODEL, stream=False):
    path = "/v1beta/models/%s:%s" % (model, "streamGenerateContent?alt=sse" if stream
                                     else "generateContent")
    status, headers, data = proxy.request("POST", path, {
        "contents": [{"role": "user", "parts": [{"text": text}]}]})
    return status, headers, data


def keys(proxy):
    return {k["key"]: k for k in json.loads(proxy.request("GET", "/status")[2])[
        "upstreams"]["google"]["keys"]}


def served_by(google):
    return [r["account"] for r in google.generate_calls() if r["status"] == 200]


# -- the envelope, both ways ----------------------------------------------------------------

def test_a_gemini_client_streams_through_the_envelope_with_the_accounts_project(rig):
    rig.account(ANN, project="backend-ann")
    proxy = rig.start()
    status, headers, data = ask(proxy, "hi", stream=True)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    chunks = sse_payloads(data)
    assert "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"][
        "parts"]) == "FAKE says hello."
    assert chunks[-1]["usageMetadata"]["promptTokenCount"] > 0   # read inside "response"
    sent = rig.google.generate_calls()[-1]
    assert sent["json"]["project"] == "backend-ann" and sent["json"]["model"] == MODEL
    assert sent["json"]["request"]["contents"][0]["parts"] == [{"text": "hi"}]
    assert sent["query"] == {"alt": "sse"}


def test_an_openai_client_gets_a_tool_call_and_then_the_answer_with_real_usage(rig):
    rig.account(ANN)
    proxy = rig.start()
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": 'CALL read_file {"path": "notes.txt"}'}]
    status, first = proxy.post("/v1/chat/completions", {"model": MODEL, "messages": messages,
                                                        "tools": tools})
    assert status == 200, first
    call = first["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "read_file"
    messages += [first["choices"][0]["message"],
                 {"role": "tool", "tool_call_id": call["id"], "content": "twelve lines"}]
    status, second = proxy.post("/v1/chat/completions", {"model": MODEL, "messages": messages,
                                                         "tools": tools})
    assert status == 200 and "twelve lines" in second["choices"][0]["message"]["content"]
    assert second["usage"]["prompt_tokens"] == 11    # the fake's, not an estimate
    sent = rig.google.generate_calls()[-1]["json"]["request"]
    # the call goes back with the signature Code Assist gave it
    model_turn = sent["contents"][1]["parts"][0]
    assert model_turn["functionCall"]["name"] == "read_file"
    assert model_turn["thoughtSignature"].startswith("sig-fc-")


def test_count_tokens_goes_to_code_assist_in_its_own_shape(rig):
    rig.account(ANN)
    proxy = rig.start()
    status, answer = proxy.post("/v1beta/models/%s:countTokens" % MODEL, {
        "contents": [{"role": "user", "parts": [{"text": "count these words please"}]}]})
    assert status == 200 and answer == {"totalTokens": len("count these words please") // 4}
    sent = [r for r in rig.google.requests if r.get("method_name") == "countTokens"][-1]
    assert sent["json"] == {"request": {"model": "models/" + MODEL, "contents": [
        {"role": "user", "parts": [{"text": "count these words please"}]}]}}


def test_the_model_list_shows_what_code_assist_serves(rig):
    rig.account(ANN)
    proxy = rig.start()
    names = [m["id"] for m in json.loads(proxy.request("GET", "/v1/models")[2])["data"]]
    assert set(gp.CODE_ASSIST_MODELS) <= set(names)


def test_gemini_3_5_flash_is_sent_under_the_name_code_assist_knows(rig):
    rig.account(ANN)
    proxy = rig.start()
    status, _, _ = ask(proxy, model="gemini-3.5-flash")
    assert status == 200
    assert rig.google.generate_calls()[-1]["json"]["model"] == "gemini-3-flash"


def test_a_session_key_goes_to_code_assist_and_keeps_the_conversation_on_one_account(rig):
    for email in (ANN, BOB, CAT):
        rig.account(email)
    proxy = rig.start()
    for _ in range(4):
        status, _ = proxy.post("/v1/chat/completions", {
            "model": MODEL, "prompt_cache_key": "conv-7",
            "messages": [{"role": "user", "content": "again"}]})
        assert status == 200
    calls = rig.google.generate_calls()
    assert len({r["account"] for r in calls}) == 1
    # Google gets one id for the conversation, not the client's own
    assert len({r["json"]["request"]["session_id"] for r in calls}) == 1
    assert "conv-7" not in json.dumps(calls[0]["json"])


# -- each credential format, and Gemini CLI's own login --------------------------------------

@pytest.mark.parametrize("fmt", ["gemini-cli", "google-auth", "cliproxy", "token-response"])
def test_every_credential_format_serves(rig, fmt):
    rig.account(ANN, fmt=fmt)
    proxy = rig.start()
    assert ask(proxy)[0] == 200
    # a raw token reply says nothing of when its token expires: it is refreshed first
    assert len(rig.google.token_calls) == (1 if fmt == "token-response" else 0)


def test_with_no_credentials_configured_gemini_clis_own_login_is_used_and_left_alone(
        rig, tmp_path):
    home = tmp_path / "home"
    (home / ".gemini").mkdir(parents=True)
    rig.google.add_account(ANN)
    login = home / ".gemini" / "oauth_creds.json"
    write_credentials(str(login), rig.google.credentials(ANN, expired=True))
    before = login.read_bytes()
    raw = rig.config()
    del raw["upstreams"]["google"]["credentials"]
    del raw["server"]["state_dir"]
    proxy = rig.start(raw, environ={"HOME": str(home)})
    assert ask(proxy)[0] == 200
    assert len(rig.google.token_calls) == 1            # it was refreshed...
    assert login.read_bytes() == before                # ...and never written back
    # the proxy's own state (the project it found, its usage ledger), no copy of the login
    assert sorted(name for name in os.listdir(str(home / ".config" / "gemini-proxy"))
                  if not name.startswith("usage.sqlite3")) == ["code-assist-projects.json"]


def test_no_account_anywhere_is_a_503_that_says_to_log_in(rig, tmp_path):
    proxy = rig.start(environ={"HOME": str(tmp_path)})
    status, _, data = ask(proxy)
    assert status == 503 and b"login" in data


# -- tokens --------------------------------------------------------------------------------

def test_fifty_requests_on_an_expired_token_make_one_refresh(rig):
    rig.account(ANN, expired=True)
    proxy = rig.start()
    gate = rig.google.hold_token_calls()
    results = []

    def one():
        results.append(ask(proxy)[0])
    threads = [threading.Thread(target=one) for _ in range(50)]
    for thread in threads:
        thread.start()
    assert gate.entered.wait(PATIENCE)
    wait_for(lambda: proxy.server.proxy.active == 50, message="not all 50 reached the proxy")
    gate.open()
    for thread in threads:
        thread.join(PATIENCE)
    assert results == [200] * 50
    assert len(rig.google.token_calls) == 1


def test_a_401_forces_one_refresh_and_one_replay(rig):
    rig.account(ANN)
    proxy = rig.start()
    assert ask(proxy)[0] == 200            # the account is set up
    rig.google.expire_tokens(ANN)          # still "valid" by its expiry, refused by Google
    assert ask(proxy)[0] == 200
    assert len(rig.google.token_calls) == 1
    statuses = [r["status"] for r in rig.google.generate_calls()]
    assert statuses == [200, 401, 200]


def test_a_401_while_the_account_is_set_up_is_replayed_too(rig):
    rig.account(ANN)
    proxy = rig.start()
    rig.google.expire_tokens(ANN)
    assert ask(proxy)[0] == 200
    setup = [r["status"] for r in rig.google.requests
             if r.get("method_name") == "loadCodeAssist"]
    assert setup == [401, 200] and len(rig.google.token_calls) == 1


def test_a_revoked_login_is_read_again_then_taken_out_with_the_reason(rig, caplog):
    caplog.set_level(logging.DEBUG)
    rig.account(ANN, expired=True)
    rig.account(BOB)
    rig.google.revoke(ANN)
    proxy = rig.start()
    for _ in range(3):
        assert ask(proxy)[0] == 200
    assert set(served_by(rig.google)) == {BOB}
    state = keys(proxy)[ANN]
    assert state["state"] == "refused" and "refresh token" in state["refused"]["*"]
    assert len([c for c in rig.google.token_calls
                if c.get("grant_type") == "refresh_token"]) == 1   # never asked again


def test_a_new_login_in_the_file_is_adopted_when_google_refuses_the_old_one(rig):
    path = rig.account(ANN, expired=True)
    proxy = rig.start()
    rig.google.revoke(ANN)
    # Gemini CLI (or another proxy) logs in again and writes the file
    write_credentials(str(path), rig.google.credentials(ANN, expired=True))
    assert ask(proxy)[0] == 200
    assert keys(proxy)[ANN]["state"] == "ready"


def test_a_refreshed_token_goes_back_into_the_proxys_own_file_only(rig):
    rig.google.add_account(ANN)
    own = rig.state / "accounts"
    own.mkdir(parents=True)
    write_credentials(str(own / "ann.json"), rig.google.credentials(ANN, expired=True))
    raw = rig.config(credentials=[str(own)])
    proxy = rig.start(raw)
    assert ask(proxy)[0] == 200
    saved = json.loads((own / "ann.json").read_text())
    assert saved["access_token"] == rig.google.generate_calls()[-1]["headers"][
        "authorization"][len("Bearer "):]
    assert oct((own / "ann.json").stat().st_mode & 0o777) == "0o600"
    book = json.loads((rig.state / "code-assist-projects.json").read_text())
    assert book[ANN] == {"project": "backend-ann", "tier": "free-tier"}


def test_a_token_endpoint_that_fails_rests_the_account_and_another_serves(rig):
    rig.account(ANN, expired=True)
    rig.account(BOB)
    rig.google.fail_token_calls(1, status=500)
    proxy = rig.start(retry_wait=0.0)
    for _ in range(2):
        assert ask(proxy)[0] == 200
    state = keys(proxy)[ANN]
    assert state["state"] == "cooling" and "*" in state["cooling_until"]
    assert set(served_by(rig.google)) == {BOB}


# -- projects ------------------------------------------------------------------------------

def test_onboarding_waits_for_its_operation_and_a_restart_does_not_onboard_again(rig):
    rig.account(ANN, onboarded=False, onboard_polls=3, project="backend-ann-7")
    proxy = rig.start()
    assert ask(proxy)[0] == 200
    assert rig.google.onboard_calls(ANN) == 1
    assert rig.google.generate_calls()[-1]["json"]["project"] == "backend-ann-7"
    rig.stop()
    again = rig.start()
    assert ask(again)[0] == 200
    assert rig.google.onboard_calls(ANN) == 1
    assert not [r for r in rig.google.requests if r.get("method_name") == "loadCodeAssist"
                and r["number"] > rig.google.generate_calls()[0]["number"]]


def test_a_configured_project_is_used_for_every_account(rig):
    rig.account(ANN, tier="standard-tier", project="team-proj")
    proxy = rig.start(project="team-proj")
    assert ask(proxy)[0] == 200
    assert rig.google.generate_calls()[-1]["json"]["project"] == "team-proj"


def test_an_account_google_wants_verified_is_out_with_the_address(rig):
    rig.account(ANN, onboarded=False, validation_url="https://accounts.example/verify-ann")
    rig.account(BOB)
    proxy = rig.start()
    assert ask(proxy)[0] == 200
    assert "https://accounts.example/verify-ann" in keys(proxy)[ANN]["refused"]["*"]


# -- errors and the pool -------------------------------------------------------------------

def test_a_rate_limited_account_rests_for_that_model_and_another_serves(rig):
    rig.account(ANN)
    rig.account(BOB)
    rig.google.fault(ANN, ca_rate_limit(delay_seconds=120, model=MODEL), model=MODEL)
    proxy = rig.start()
    for _ in range(3):
        assert ask(proxy)[0] == 200
    state = keys(proxy)[ANN]
    assert list(state["cooling_until"]) == [MODEL]
    assert ask(proxy, model="gemini-2.5-flash")[0] == 200      # other models: still there
    assert rig.google.generate_calls()[-1]["account"] in (ANN, BOB)


def test_every_account_resting_is_a_429_with_the_soonest_time(rig):
    rig.account(ANN)
    rig.account(BOB)
    rig.google.fault(ANN, ca_daily_quota(reset="19h14m47s"))
    rig.google.fault(BOB, ca_rate_limit(delay_seconds=90))
    proxy = rig.start()
    status, headers, data = ask(proxy)
    assert status == 429
    assert 80 <= int(headers["retry-after"]) <= 90
    status, headers, data = ask(proxy)          # nothing asked of Google now
    assert status == 429 and len(rig.google.generate_calls()) == 2
    state = keys(proxy)
    assert state[ANN]["cooling_until"][MODEL] > state[BOB]["cooling_until"][MODEL]


def test_a_bare_429_rests_the_account_briefly(rig):
    rig.account(ANN)
    rig.account(BOB)
    rig.google.fault(ANN, ca_bare_429(), times=1)
    proxy = rig.start()
    assert ask(proxy)[0] == 200
    assert keys(proxy)[ANN]["state"] == "cooling"


def test_server_capacity_rests_nobody_and_the_route_falls_back_to_another_model(rig):
    rig.account(ANN)
    rig.account(BOB)
    rig.google.fault(ANN, ca_capacity(MODEL), model=MODEL)
    rig.google.fault(BOB, ca_capacity(MODEL), model=MODEL)
    raw = rig.config(retries=1)
    raw["routes"] = [{"model": MODEL, "upstream": "google", "fallbacks": [
        {"upstream": "google", "upstream_model": "gemini-2.5-flash"}]}]
    proxy = rig.start(raw)
    status, _, data = ask(proxy)
    assert status == 200
    assert rig.google.generate_calls()[-1]["json"]["model"] == "gemini-2.5-flash"
    assert all(not k["cooling_until"] for k in keys(proxy).values())


@pytest.mark.parametrize("kind", ["consumer_invalid", "iam_denied", "no_license",
                                  "validation_required"])
def test_a_403_takes_the_account_out_with_the_reason_and_the_next_serves(rig, kind):
    rig.account(ANN)
    rig.account(BOB)
    rig.google.fault(ANN, ca_forbidden(kind))
    proxy = rig.start()
    for _ in range(2):
        assert ask(proxy)[0] == 200
    state = keys(proxy)[ANN]
    assert state["state"] == "refused" and state["refused"]["*"].startswith("403")
    assert served_by(rig.google) == [BOB, BOB]


def test_a_404_takes_the_account_out_for_that_model_only(rig):
    rig.account(ANN)
    rig.account(BOB)
    rig.google.fault(ANN, ca_not_found("gemini-3-pro-preview"), model="gemini-3-pro-preview")
    proxy = rig.start()
    assert ask(proxy, model="gemini-3-pro-preview")[0] == 200
    state = keys(proxy)[ANN]
    assert list(state["refused"]) == ["gemini-3-pro-preview"] and state["state"] == "ready"


def test_a_5xx_is_retried_on_another_account(rig):
    rig.account(ANN)
    rig.account(BOB)
    rig.google.fault(ANN, ca_server_error(503), times=1)
    proxy = rig.start(retry_wait=0.0)
    assert ask(proxy)[0] == 200
    assert [r["status"] for r in rig.google.generate_calls()] == [503, 200]


def test_a_slow_stream_arrives_whole(rig):
    rig.account(ANN)
    proxy = rig.start()
    rig.google.queue(slow_stream(0.05))
    status, _, data = ask(proxy, stream=True)
    assert status == 200 and sse_payloads(data)[-1]["candidates"][0]["finishReason"] == "STOP"


def test_a_stream_cut_after_its_first_event_ends_in_the_clients_error_form(rig):
    rig.account(ANN)
    rig.account(BOB)
    proxy = rig.start()
    rig.google.queue(enveloped(gemini_text_stream("half an answer here", close_early=True)))
    status, _, data = ask(proxy, stream=True)
    payloads = sse_payloads(data)
    assert status == 200 and payloads[0]["candidates"][0]["content"]["parts"][0]["text"]
    # Gemini's way: the stream ends without a finishReason (Gemini CLI then retries);
    # never spliced onto another account's answer
    assert not [p for p in payloads if p["candidates"][0].get("finishReason")]
    assert len(rig.google.generate_calls()) == 1


# -- secrets --------------------------------------------------------------------------------

def test_no_token_reaches_a_log_a_detailed_log_an_error_or_status(rig, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    rig.account(ANN, expired=True)
    rig.account(BOB)
    rig.google.revoke(ANN)
    raw = rig.config()
    raw["logging"] = {"detailed": True, "log_dir": str(tmp_path / "logs")}
    proxy = rig.start(raw)
    rig.google.fault(BOB, ca_forbidden("no_license"))
    texts = [ask(proxy)[2].decode(), ask(proxy, stream=True)[2].decode(),
             proxy.request("GET", "/status")[2].decode()]
    texts += [r.getMessage() for r in caplog.records]
    for folder, _, files in os.walk(str(tmp_path / "logs")):
        texts += [open(os.path.join(folder, f)).read() for f in files]
    written = "\n".join(texts)
    assert "Bearer" in written or "[REDACTED]" in written      # the logs were written
    issued = list(rig.google.access_tokens) + list(rig.google.refresh_tokens)
    assert issued and not [secret for secret in issued if secret in written]
    assert "ya29." not in written and "1//" not in written


# -- what the review asked for ----------------------------------------------------------------

def test_google_calls_go_through_the_configured_http_proxy(rig):
    from test_upstream_client import ConnectProxy
    forward = ConnectProxy()
    try:
        rig.account(ANN, expired=True)
        proxy = rig.start(environ={"HTTP_PROXY": "http://127.0.0.1:%d" % forward.port})
        assert ask(proxy)[0] == 200
        # the first request of each connection the proxy saw (the rest follow on it)
        targets = [seen[0].split(" ")[1] for seen in forward.seen]
        assert targets[0] == rig.google.token_url
    finally:
        forward.close()


def test_the_tier_is_remembered_across_a_restart(rig):
    rig.account(ANN, tier="standard-tier", paid_tier="g1-pro-tier")
    proxy = rig.start()
    assert ask(proxy)[0] == 200
    assert keys(proxy)[ANN]["tier"] == "g1-pro-tier"
    rig.stop()
    again = rig.start()
    assert keys(again)[ANN]["tier"] == "g1-pro-tier"      # before any request


def test_a_configured_project_is_asked_for_and_the_servers_answer_is_used(rig):
    rig.account(ANN, tier="standard-tier", project="team-proj")
    proxy = rig.start(project="team-proj")
    assert ask(proxy)[0] == 200
    load = [r for r in rig.google.requests if r.get("method_name") == "loadCodeAssist"][-1]
    assert load["json"]["cloudaicompanionProject"] == "team-proj"
    assert load["json"]["metadata"]["duetProject"] == "team-proj"
    assert keys(proxy)[ANN]["tier"] == "standard-tier"


def test_one_account_in_two_files_is_one_account_in_the_pool(rig, tmp_path):
    rig.account(ANN)
    write_credentials(str(rig.creds / "ann-again.json"), rig.google.credentials(ANN))
    proxy = rig.start()
    assert list(keys(proxy)) == [ANN]


def test_a_real_failure_is_not_hidden_by_a_fallback_with_no_login(rig, tmp_path):
    from fake_upstream import FakeOpenAI, json_reply
    other = FakeOpenAI().start()
    try:
        other.queue(json_reply({"error": {"message": "the model is asleep"}}, status=500))
        raw = {"server": {"port": 0, "state_dir": str(rig.state)},
               "upstreams": {"main": {"base_url": other.base_url, "api_key": "k", "retries": 0},
                             "google": {"kind": "code-assist", "credentials": [
                                 str(tmp_path / "none")]}},
               "routes": [{"model": "*", "upstream": "main", "fallbacks": ["google"]}]}
        proxy = rig.start(raw, environ={"HOME": str(tmp_path)})
        status, answer = proxy.post("/v1/chat/completions", {
            "model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 500 and "asleep" in answer["error"]["message"]
        assert str(tmp_path) not in json.dumps(answer)
    finally:
        other.stop()


def test_every_account_out_is_a_503_not_a_401_the_client_would_blame_itself_for(rig):
    rig.account(ANN, expired=True)
    rig.google.revoke(ANN)
    proxy = rig.start()
    status, _, data = ask(proxy)
    assert status == 503 and b"login" in data


def test_every_account_resting_for_pro_falls_back_to_flash(rig):
    rig.account(ANN)
    rig.account(BOB)
    for email in (ANN, BOB):
        rig.google.fault(email, ca_rate_limit(delay_seconds=600), model=MODEL)
    raw = rig.config()
    raw["routes"] = [{"model": MODEL, "upstream": "google", "fallbacks": [
        {"upstream": "google", "upstream_model": "gemini-2.5-flash"}]}]
    proxy = rig.start(raw)
    for _ in range(2):
        assert ask(proxy)[0] == 200
        assert rig.google.generate_calls()[-1]["json"]["model"] == "gemini-2.5-flash"
    # the second request did not ask Google for pro again: both accounts rest for it
    assert len([r for r in rig.google.generate_calls() if r["json"]["model"] == MODEL]) == 2


def test_an_accounts_concurrency_limit_queues_like_a_keys(rig):
    rig.account(ANN)
    proxy = rig.start(key_concurrency=1)
    assert ask(proxy)[0] == 200                 # set up, so both now go straight to Google
    gate = Gate(enveloped(gemini_text_stream("held")))
    rig.google.queue(gate)
    results = []
    first = threading.Thread(target=lambda: results.append(ask(proxy, stream=True)[0]))
    first.start()
    wait_for(lambda: rig.google.busy == 1, message="the first request never reached Google")
    second = threading.Thread(target=lambda: results.append(ask(proxy)[0]))
    second.start()
    wait_for(lambda: keys(proxy)[ANN]["in_flight"] == 1 and
             json.loads(proxy.request("GET", "/status")[2])["upstreams"]["google"][
                 "waiting"] == 1, message="the second request is not waiting for the account")
    gate.open()
    first.join(PATIENCE)
    second.join(PATIENCE)
    assert results == [200, 200]
