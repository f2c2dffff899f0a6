"""The Code Assist upstream against a hostile or unlucky world: a token endpoint that fails,
hangs or answers nonsense, credential files that are not what they say, a project that
moved, reloads while refreshes are stuck, logins whose file cannot be written or whose
callback port is abused, secrets in the words of an error. Each test says what it pins.
The rig and helpers are test_code_assist_e2e.py's."""

import base64
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.parse

import pytest

import gemini_proxy as gp
from conftest import PATIENCE, make_config, wait_for
from fake_google import ca_rate_limit, enveloped, write_credentials
from fake_upstream import (gemini_text_stream, json_reply, pause_after, raw_reply,
                           sse_texts_reply)
from test_code_assist_e2e import ANN, BOB, MODEL, ask, keys, served_by

# How long something the proxy should do at once may take here before it counts as hung
# (only a broken proxy waits this long; a working one answers in milliseconds).
PROMPTLY = 8.0


def refresh_calls(google):
    return [c for c in google.token_calls if c.get("grant_type") == "refresh_token"]


def in_threads(n, target):
    """Run target() in n threads; returns (threads, results list filled as they end)."""
    results = []

    def one():
        results.append(target())
    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    return threads, results


def closed_port():
    """A 127.0.0.1 port nothing listens on (connections are refused at once)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def on_loop(proxy, function, *args):
    """Run function(*args) on the proxy's event loop thread, as a SIGHUP handler runs."""
    proxy.server._loop.call_soon_threadsafe(function, *args)


def log_text(caplog):
    return "\n".join(r.getMessage() for r in caplog.records)


# == the token endpoint ========================================================================

def test_an_unreachable_token_endpoint_rests_the_account_as_the_readme_says(rig):
    """README: "the token endpoint failing (5xx, network) | rests a minute". A token
    endpoint that refuses connections rests the account just as a 5xx does, so later
    requests do not each pay a failed refresh (up to 30 s each when the endpoint hangs
    instead of refusing)."""
    rig.account(ANN, expired=True)
    rig.account(BOB)
    proxy = rig.start(retry_wait=0.0,
                      oauth_token_url="http://127.0.0.1:%d/token" % closed_port())
    assert ask(proxy)[0] == 200                 # ANN's refresh fails, BOB serves
    state = keys(proxy)[ANN]
    assert state["failures"] == 1
    assert state["state"] == "cooling" and "*" in state["cooling_until"], state
    for _ in range(3):
        assert ask(proxy)[0] == 200
    assert keys(proxy)[ANN]["failures"] == 1    # not tried again while it rests


@pytest.mark.parametrize("failure", ["revoked", "token endpoint 500"])
def test_a_refresh_that_fails_while_requests_wait_is_not_repeated_by_each_of_them(
        rig, failure):
    """Requests waiting on an account's one refresh share its outcome when it fails (the
    account is out, or resting): one call to Google's token endpoint, not one per waiting
    request (an invalid_grant storm, or N x 30 s behind an endpoint that hangs)."""
    n = 6
    rig.account(ANN, expired=True)
    if failure == "revoked":
        rig.google.revoke(ANN)
    else:
        rig.google.fail_token_calls(n, status=500)
    proxy = rig.start(retries=0)
    gate = rig.google.hold_token_calls(limit=PATIENCE)
    threads, results = in_threads(n, lambda: ask(proxy)[0])
    try:
        assert gate.entered.wait(PATIENCE)
        wait_for(lambda: keys(proxy)[ANN]["in_flight"] == n,
                 message="not every request took the account")
    finally:
        gate.open()
    for thread in threads:
        thread.join(PATIENCE)
    assert len(results) == n and 200 not in results
    assert len(refresh_calls(rig.google)) == 1, "%d token calls for one failed refresh" % \
        len(refresh_calls(rig.google))


def test_requests_waiting_on_a_stuck_refresh_let_go_when_their_clients_leave(rig):
    """Requests queued behind a refresh that hangs let go of their worker threads when their
    clients leave, so a proxy with few workers still serves other upstreams while the
    token endpoint is stuck."""
    rig.account(ANN, expired=True)
    raw = rig.config(retries=0)
    raw["server"]["workers"] = 3
    raw["upstreams"]["local"] = {"kind": "echo"}
    raw["routes"] = [{"model": "echo-*", "upstream": "local"}]
    proxy = rig.start(raw)
    gate = rig.google.hold_token_calls(limit=PATIENCE)
    clients = []
    try:
        for _ in range(3):      # every worker on the stuck account
            conn = proxy.connection()
            conn.request("POST", "/v1beta/models/%s:generateContent" % MODEL, json.dumps({
                "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
                {"content-type": "application/json"})
            clients.append(conn)
        assert gate.entered.wait(PATIENCE)
        wait_for(lambda: proxy.server.proxy.active == 3)
        for conn in clients[1:]:        # two of them give up; the first stays
            conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
        status, _ = proxy.post("/v1/chat/completions", {
            "model": "echo-1", "messages": [{"role": "user", "content": "ping"}]},
            timeout=PROMPTLY)
        assert status == 200
    except socket.timeout:
        pytest.fail("a request to another upstream got no worker: the two requests whose "
                    "clients left still wait for the stuck refresh")
    finally:
        gate.open()
        for conn in clients:
            conn.close()


def test_sighup_while_a_refresh_is_stuck_does_not_freeze_the_server(rig):
    """A SIGHUP reload while a refresh hangs on the token endpoint does not freeze the event
    loop: /health is still answered at once, and the waiting request is served when the
    refresh completes."""
    rig.account(ANN, expired=True)
    proxy = rig.start()
    gate = rig.google.hold_token_calls(limit=PATIENCE)
    threads, results = in_threads(1, lambda: ask(proxy)[0])
    try:
        assert gate.entered.wait(PATIENCE)
        on_loop(proxy, proxy.server.reload, make_config(rig.config(), {}))
        try:
            status = proxy.request("GET", "/health", timeout=PROMPTLY)[0]
        except socket.timeout:
            pytest.fail("the server answered nothing while the reload waited for the "
                        "account's token lock")
        assert status == 200
    finally:
        gate.open()
        threads[0].join(PATIENCE)
    assert results == [200]


def _token_reply_bytes(google, email, lifetime):
    """A token reply the fake honours (its access token is live) with expires_in written
    as `lifetime`, raw JSON text (NaN and Infinity are what Python's json reads)."""
    reply = google.issue_tokens(email)
    reply.pop("refresh_token", None)
    text = json.dumps(dict(reply, expires_in="@@"))
    return text.replace('"@@"', lifetime).encode()


@pytest.mark.parametrize("lifetime", ["NaN", "Infinity", "1e400"])
def test_a_token_reply_with_a_nonsense_lifetime_is_no_crash(rig, lifetime):
    """A token reply whose expires_in is NaN, Infinity or too large for a float (all of
    which Python's json reads) is no crash: every request is served, the account is not
    refreshed again on each one, and its file keeps a whole-number expiry_date."""
    rig.google.add_account(ANN)
    own = rig.state / "accounts"
    own.mkdir(parents=True)
    write_credentials(str(own / "ann.json"), rig.google.credentials(ANN, expired=True))
    rig.google.fail_token_calls(1, status=200,
                                body=_token_reply_bytes(rig.google, ANN, lifetime))
    proxy = rig.start(rig.config(credentials=[str(own)]))
    statuses = [ask(proxy)[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert len(refresh_calls(rig.google)) <= 2     # not one per request
    saved = json.loads((own / "ann.json").read_text())
    assert isinstance(saved["expiry_date"], int)


def test_a_token_reply_whose_lifetime_is_a_string_or_negative_serves(rig):
    """expires_in as a string ("3599", as some OAuth servers write it) or negative: the
    request is served either way."""
    rig.account(ANN, expired=True)
    proxy = rig.start()
    for lifetime in ('"3599"', "-50"):
        rig.google.expire_tokens(ANN)       # the proxy's token: refused, refreshed
        rig.google.fail_token_calls(1, status=200,
                                    body=_token_reply_bytes(rig.google, ANN, lifetime))
        assert ask(proxy)[0] == 200


@pytest.mark.parametrize("body", [
    b"<html>token service unavailable</html>", b'{"token_type": "Bearer"}',
    b'{"access_token": 12345}', b'[]', b'{"access_token": ""}'],
    ids=["html", "no-access-token", "token-not-a-string", "a-list", "empty-token"])
def test_a_200_from_the_token_endpoint_without_a_token_is_a_clean_failure(rig, body):
    """A 200 that holds no usable access token: another account serves, nothing crashes,
    and the account is not taken out for good (Google did not refuse the login)."""
    rig.account(ANN, expired=True)
    rig.account(BOB)
    rig.google.fail_token_calls(1, status=200, body=body)
    proxy = rig.start(retry_wait=0.0)
    assert ask(proxy)[0] == 200
    assert served_by(rig.google) == [BOB]
    assert keys(proxy)[ANN]["state"] != "refused"


# == secrets ===================================================================================

def test_a_token_endpoint_that_repeats_the_refresh_token_does_not_put_it_in_a_log(
        rig, caplog):
    """A token endpoint error whose description quotes the refresh token puts that token in
    neither the client's error, /status nor the log."""
    caplog.set_level(logging.DEBUG)
    path = rig.account(ANN, expired=True)
    refresh = json.loads(path.read_text())["refresh_token"]
    rig.google.revoke(ANN)
    rig.google.fail_token_calls(2, status=400, body={
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked: %s" % refresh})
    proxy = rig.start()
    status, _, data = ask(proxy)
    assert status != 200
    status_page = proxy.request("GET", "/status")[2].decode()
    for where, text in (("the client's error", data.decode()), ("/status", status_page),
                        ("the log", log_text(caplog))):
        assert refresh not in text, "the refresh token is in %s" % where


def test_an_error_that_echoes_the_bearer_token_reaches_no_client_log_or_status(
        rig, caplog, tmp_path):
    """Code Assist errors that quote the Authorization header, in a whole reply and as a
    stream's first event: the token is in no answer, log, detailed log or /status."""
    caplog.set_level(logging.DEBUG)
    rig.account(ANN)
    raw = rig.config(retries=0)
    raw["logging"] = {"detailed": True, "log_dir": str(tmp_path / "logs")}
    proxy = rig.start(raw)
    access = json.loads((rig.creds / "ann.json").read_text())["access_token"]
    said = "Request had invalid authentication credentials: Authorization: Bearer %s" % access
    rig.google.queue(json_reply({"error": {"code": 400, "message": said}}, 400))
    rig.google.queue(sse_texts_reply(["data: %s\n\n" % json.dumps(
        [{"error": {"code": 500, "message": said}}])]))
    rig.google.queue(sse_texts_reply([
        'data: {"response": {"candidates": [{"content": {"parts": [{"text": "a"}]}}]}}\n\n',
        "data: %s\n\n" % json.dumps({"error": {"code": 500, "message": said}})]))
    texts = [ask(proxy)[2].decode(), ask(proxy, stream=True)[2].decode(),
             ask(proxy, stream=True)[2].decode(),
             proxy.request("GET", "/status")[2].decode(), log_text(caplog)]
    for folder, _, files in os.walk(str(tmp_path / "logs")):
        texts += [open(os.path.join(folder, f)).read() for f in files]
    for text in texts:
        assert access not in text


# == credential files ===========================================================================

def test_a_credential_file_nested_too_deeply_is_skipped_not_fatal(rig):
    """A credential file nested too deeply for the JSON parser is skipped like any other
    unreadable file; it does not stop start-up (nor a SIGHUP reload, nor the accounts
    command)."""
    rig.account(BOB)
    (rig.creds / "deep.json").write_text("[" * 100000 + "]" * 100000)
    proxy = rig.start()
    assert ask(proxy)[0] == 200


def test_an_id_token_nested_too_deeply_is_no_crash(rig):
    """A credential whose id_token payload is JSON nested too deeply does not stop start-up
    or end requests in a 500: the proxy starts and serves."""
    deep = base64.urlsafe_b64encode(("[" * 50000 + "]" * 50000).encode()).decode()
    token = "e30.%s.c2ln" % deep.rstrip("=")
    rig.account(BOB)
    rig.google.add_account(ANN)
    creds = rig.google.credentials(ANN)
    creds["id_token"] = token
    write_credentials(str(rig.creds / "ann.json"), creds)
    proxy = rig.start()
    assert [ask(proxy)[0] for _ in range(2)] == [200, 200]


def test_a_project_book_nested_too_deeply_is_no_crash(rig):
    """A code-assist-projects.json nested too deeply for the JSON parser does not stop the
    proxy from starting; it starts and serves."""
    rig.account(ANN)
    rig.state.mkdir(parents=True, exist_ok=True)
    (rig.state / "code-assist-projects.json").write_text("[" * 100000 + "]" * 100000)
    proxy = rig.start()
    assert ask(proxy)[0] == 200


def _start_in_thread(rig):
    box = {}

    def run():
        try:
            box["proxy"] = rig.start()
        except Exception as exc:    # reported below
            box["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_a_fifo_named_like_a_credential_file_does_not_hang_start_up(rig):
    """A FIFO named like a credential file (or a symlink to one, or to /dev/zero) does not
    block start-up, nor a SIGHUP reload and the event loop with it: the proxy starts
    promptly and the good login serves."""
    rig.account(BOB)
    fifo = rig.creds / "pipe.json"
    os.mkfifo(str(fifo))
    thread, box = _start_in_thread(rig)
    thread.join(PROMPTLY)
    hung = thread.is_alive()
    deadline = time.monotonic() + PATIENCE
    while thread.is_alive() and time.monotonic() < deadline:
        try:    # if start-up is stuck on the FIFO, let it go: give each reader an EOF
            os.close(os.open(str(fifo), os.O_WRONLY | os.O_NONBLOCK))
        except OSError:     # no reader at the moment
            pass
        thread.join(0.05)
    assert not hung, "start-up blocked opening %s" % fifo
    assert "error" not in box, box.get("error")
    assert ask(box["proxy"])[0] == 200


@pytest.mark.parametrize("content", [
    b"", b"not json", b"\xff\xfe garbage", b"[1, 2]", b'{"refresh_token": 5}',
    b'{"refresh_token": "1//x", "expiry_date": "soon"}',
    b'{"refresh_token": "1//x", "expiry_date": -5, "access_token": "ya29.old"}',
    b'{"refresh_token": "1//x", "expiry": "2024-13-45T99:99:99Z"}',
    b'{"refresh_token": "1//x", "id_token": "a.b.c", "email": ["x"]}',
    b'{"token": {"refresh_token": ["1//x"]}}'],
    ids=["empty", "text", "bytes", "list", "number", "expiry-string", "expiry-negative",
         "expiry-bad-date", "odd-id-token", "nested-list"])
def test_a_file_that_is_no_usable_credential_is_skipped_or_refused_cleanly(rig, content):
    """Whatever is in a *.json beside a good login: the proxy starts and the good login
    serves every request."""
    rig.account(BOB)
    (rig.creds / "aaa.json").write_bytes(content)
    proxy = rig.start(retry_wait=0.0)
    assert [ask(proxy)[0] for _ in range(2)] == [200, 200]


def test_a_directory_and_an_unreadable_file_named_like_credentials_are_skipped(rig):
    rig.account(BOB)
    (rig.creds / "dir.json").mkdir()
    locked = rig.creds / "locked.json"
    locked.write_text("{}")
    os.chmod(str(locked), 0)
    try:
        proxy = rig.start()
        assert ask(proxy)[0] == 200
    finally:
        os.chmod(str(locked), 0o600)


def test_one_account_in_two_files_is_one_account_of_the_pool(rig):
    """One account found in two files is one account of the pool: one row in /status, and a
    rate limit met once per request, not again at once through the copy. (The default
    sources are the accounts directory and then Gemini CLI's login, so a user who ran
    `login` with the account Gemini CLI uses has it twice, as has anyone who copied a
    file.)"""
    rig.account(ANN)
    write_credentials(str(rig.creds / "ann-copy.json"), rig.google.credentials(ANN))
    rig.account(BOB)
    rig.google.fault(ANN, ca_rate_limit(delay_seconds=600))
    proxy = rig.start()
    pool = json.loads(proxy.request("GET", "/status")[2])["upstreams"]["google"]["keys"]
    assert ask(proxy)[0] == 200
    assert [r["status"] for r in rig.google.generate_calls(ANN)] == [429]
    assert sorted(k["email"] for k in pool) == [ANN, BOB]


def test_an_expiry_of_infinity_in_the_proxys_own_file_is_no_crash(rig):
    """An expiry_date of Infinity in the proxy's own account file (json.load reads it) is no
    crash: the account is set up and every request is served."""
    rig.google.add_account(ANN)
    own = rig.state / "accounts"
    own.mkdir(parents=True)
    creds = rig.google.credentials(ANN)
    text = json.dumps(dict(creds, expiry_date="@@")).replace('"@@"', "Infinity")
    (own / "ann.json").write_text(text)
    proxy = rig.start(rig.config(credentials=[str(own)]))
    assert [ask(proxy)[0] for _ in range(2)] == [200, 200]


# == projects ===================================================================================

def test_a_credential_file_now_holding_another_account_is_set_up_anew_on_reload(rig):
    """A credential file that now holds another account is set up anew on a SIGHUP reload,
    with the new account's own project, as a restart would: Gemini CLI's oauth_creds.json
    (the default source) changes account when its user logs in as someone else."""
    path = rig.account(ANN)
    rig.google.add_account(BOB)
    proxy = rig.start()
    assert ask(proxy)[0] == 200
    write_credentials(str(path), rig.google.credentials(BOB))
    proxy.server.reload(make_config(rig.config(), {}))
    status, _, data = ask(proxy)
    assert status == 200, data
    sent = rig.google.generate_calls()[-1]
    assert sent["account"] == BOB and sent["json"]["project"] == "backend-bob"


def test_an_account_google_asked_to_verify_comes_back_on_reload_once_verified(rig):
    """README: a 403 takes the account out "until a reload". An account Google asked to
    verify (VALIDATION_REQUIRED while setting it up) is back in rotation after a reload
    once the user has verified, with no restart."""
    rig.account(ANN, onboarded=False, validation_url="https://accounts.example/verify-ann")
    rig.account(BOB)
    proxy = rig.start()
    assert ask(proxy)[0] == 200
    assert keys(proxy)[ANN]["state"] == "refused"
    rig.google.validate(ANN)
    proxy.server.reload(make_config(rig.config(), {}))
    assert keys(proxy)[ANN]["state"] != "refused"
    for _ in range(2):
        assert ask(proxy)[0] == 200
    assert ANN in served_by(rig.google)


def test_a_project_that_moved_is_found_again(rig):
    """The project found for an account is remembered in code-assist-projects.json; when
    Code Assist answers 403 CONSUMER_INVALID for it (the account moved to another tier or
    project) it is looked up again and the request replayed, and a restart does not bring
    the stale entry back."""
    rig.account(ANN)
    proxy = rig.start()
    assert ask(proxy)[0] == 200
    rig.google.add_account(ANN, project="backend-ann-moved")
    status, _, data = ask(proxy)
    assert status == 200, data
    assert rig.google.generate_calls()[-1]["json"]["project"] == "backend-ann-moved"
    rig.stop()
    again = rig.start()
    status, _, data = ask(again)
    assert status == 200, data
    assert rig.google.generate_calls()[-1]["json"]["project"] == "backend-ann-moved"


def test_onboarding_that_never_finishes_is_not_repeated_by_every_waiting_request(
        rig, monkeypatch):
    """Onboarding that never finishes is tried once: the requests waiting on it share its
    failure rather than each running a whole onboarding of its own (N onboardUser calls,
    and N x ONBOARD_TIMEOUT for the last one, whatever total_timeout says).
    (ONBOARD_TIMEOUT is cut to 1 s here.)"""
    monkeypatch.setattr(gp, "ONBOARD_TIMEOUT", 1)
    n = 3
    rig.account(ANN, onboarded=False, onboard_polls=10 ** 6)
    proxy = rig.start(retries=0)
    threads, results = in_threads(n, lambda: ask(proxy)[0])
    for thread in threads:
        thread.join(PATIENCE)
    assert len(results) == n and 200 not in results
    assert rig.google.onboard_calls(ANN) == 1


@pytest.mark.parametrize("answer", [
    {"currentTier": {"id": "free-tier"}, "cloudaicompanionProject": ["p"]},
    {"currentTier": {"id": "free-tier"}, "cloudaicompanionProject": {"id": 5}},
    {"currentTier": "free-tier", "cloudaicompanionProject": "p-1"},
    {"currentTier": {"id": "free-tier"}, "cloudaicompanionProject": "p-1",
     "paidTier": "g1"},
    {"currentTier": {"id": "free-tier"}, "cloudaicompanionProject": "p-1",
     "ineligibleTiers": "none"},
    {"allowedTiers": "x"}, {"allowedTiers": [1, None, {"isDefault": True, "id": 7}]},
    "text", [], None],
    ids=["project-list", "project-id-number", "tier-string", "paid-tier-string",
         "ineligible-string", "allowed-string", "allowed-odd", "text", "list", "null"])
def test_odd_load_code_assist_answers_are_clean_failures_or_serve(answer):
    """Whatever loadCodeAssist says, read_code_assist_setup makes of it a project, an
    onboarding or an error, as strings; never an exception."""
    found = gp.read_code_assist_setup(answer, "")
    assert set(found) <= {"project", "tier", "onboard", "error"} and found
    assert all(isinstance(v, str) for v in found.values())


def test_a_load_code_assist_that_answers_html_does_not_onboard_the_account(rig):
    """A loadCodeAssist 200 whose body is not JSON (a captive portal, a corporate proxy's
    page) is a failure to rest on, like a 5xx: another account serves, and no onboardUser
    is sent for an account that is set up already on the strength of a page that said
    nothing about it."""
    rig.account(ANN)
    rig.account(BOB)
    proxy = rig.start(retry_wait=0.0)
    real_route = rig.google.route
    portal = []

    def route(handler, record):     # the first loadCodeAssist meets a portal page
        if record["path"].endswith(":loadCodeAssist") and not portal:
            portal.append(record)
            return raw_reply(b"<html>sign in to the wifi</html>", 200, "text/html")(
                handler, None)
        return real_route(handler, record)
    rig.google.route = route
    assert ask(proxy)[0] == 200
    assert portal and rig.google.onboard_calls() == 0


def test_fifty_requests_racing_to_set_up_an_account_make_one_load_code_assist(rig):
    """Fifty requests racing to set up a new account make one loadCodeAssist and one
    onboarding; the others wait for its project, and all are served."""
    rig.account(ANN, onboarded=False, onboard_polls=2)
    proxy = rig.start()
    threads, results = in_threads(50, lambda: ask(proxy)[0])
    for thread in threads:
        thread.join(PATIENCE)
    assert results == [200] * 50
    setup = [r for r in rig.google.requests if r.get("method_name") == "loadCodeAssist"]
    assert len(setup) == 1 and rig.google.onboard_calls(ANN) == 1


def test_a_reload_while_a_stream_is_in_flight_lets_it_finish_on_its_account(rig):
    """A SIGHUP reload mid-stream lets the stream end whole on its account; the account
    keeps its state and nothing is left held."""
    rig.account(ANN)
    proxy = rig.start()
    assert ask(proxy)[0] == 200
    release = threading.Event()
    rig.google.queue(pause_after(enveloped(gemini_text_stream("one two three four")),
                                 writes=1, seconds=PATIENCE, until=release))
    threads, results = in_threads(1, lambda: ask(proxy, stream=True))
    wait_for(lambda: rig.google.busy == 1)
    on_loop(proxy, proxy.server.reload, make_config(rig.config(), {}))
    wait_for(lambda: proxy.request("GET", "/health")[0] == 200)
    release.set()
    threads[0].join(PATIENCE)
    status, _, data = results[0]
    assert status == 200 and b"STOP" in data
    proxy.wait_until_idle()
    assert keys(proxy)[ANN]["state"] == "ready"


# == the login command ===========================================================================

def _login_config(google, tmp_path, **upstream):
    spec = dict({"kind": "code-assist", "base_url": google.base_url,
                 "oauth_token_url": google.token_url, "oauth_auth_url": google.auth_url,
                 "oauth_userinfo_url": google.userinfo_url}, **upstream)
    return make_config({"server": {"state_dir": str(tmp_path / "state")},
                        "upstreams": {"google": spec}}, {})


def _paste_login(google, config, tmp_path):
    """gp.login with --no-browser, the test playing the user: it opens the address the
    command printed and pastes the code Google's page shows. (said lines, the account or
    the exception)."""
    said = []

    def ask_code(prompt):
        url = [w for line in said for w in line.split() if w.startswith(google.auth_url)][0]
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=PATIENCE)
        conn.request("GET", parts.path + "?" + parts.query)
        location = conn.getresponse().getheader("location")
        conn.close()
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["code"]
    try:
        account = gp.login(config, "", True, 0, {"HOME": str(tmp_path / "home")},
                           say=said.append, ask=ask_code)
    except Exception as exc:     # what the command would print
        return said, exc
    return said, account


def test_a_login_whose_account_file_cannot_be_written_fails_loudly(tmp_path, google):
    """A login whose account file cannot be written fails with an error that names the
    accounts directory, not a "saved to" line: otherwise the only copy of the refresh
    token is lost when the command ends."""
    google.add_account(ANN)
    google.consent_as(ANN)
    state = tmp_path / "state"
    state.mkdir()
    (state / "accounts").write_text("a file where the accounts directory belongs")
    said, outcome = _paste_login(google, _login_config(google, tmp_path), tmp_path)
    assert isinstance(outcome, gp.ConfigError), "login succeeded: %s" % " | ".join(said)
    assert "accounts" in str(outcome)
    assert not [line for line in said if "saved to" in line]


def test_a_login_with_no_email_anywhere_is_saved_under_a_fingerprint(tmp_path, google):
    """No email in the id_token and the userinfo call refused: the file is still named
    safely, inside the accounts directory, and loads back."""
    google.add_account(ANN)
    google.consent_as(ANN)
    real_issue = google._issue

    def issue(*args, **kwargs):
        reply, expires = real_issue(*args, **kwargs)
        reply.pop("id_token", None)
        return reply, expires
    google._issue = issue
    config = _login_config(google, tmp_path, oauth_userinfo_url=google.base_url + "/nowhere")
    said, account = _paste_login(google, config, tmp_path)
    assert isinstance(account, gp.GoogleAccount), said
    folder = tmp_path / "state" / "accounts"
    assert os.path.dirname(account.credential.path) == str(folder)
    assert len(os.listdir(str(folder))) == 1
    loaded = gp.load_google_accounts(config.upstreams["google"], str(tmp_path / "state"),
                                     {}, {})
    assert list(loaded) == [account.credential.path]


STRANGE_EMAILS = ["../../evil@example.com", "a/b@example.com", "..", ".hidden@example.com",
                  "nul\x00byte@example.com", "back\\slash@example.com"]


@pytest.mark.parametrize("email", STRANGE_EMAILS)
def test_a_login_for_a_strange_email_writes_inside_the_accounts_dir(tmp_path, google, email):
    """The email comes from Google's id_token and names the file: whatever it holds (path
    separators, "..", a NUL, a backslash), the login writes one file, inside the accounts
    directory, and nothing elsewhere."""
    google.add_account(email)
    google.consent_as(email)
    said, account = _paste_login(google, _login_config(google, tmp_path), tmp_path)
    assert isinstance(account, gp.GoogleAccount), (said, account)
    folder = tmp_path / "state" / "accounts"
    assert os.path.dirname(account.credential.path) == str(folder)
    assert len(os.listdir(str(folder))) == 1
    assert sorted(os.listdir(str(tmp_path))) == ["home", "state"] or \
        sorted(os.listdir(str(tmp_path))) == ["state"]
    assert sorted(os.listdir(str(tmp_path / "state"))) == ["accounts",
                                                          "code-assist-projects.json"]


@pytest.mark.parametrize("email", STRANGE_EMAILS + ["x" * 251 + "@example.com"])
def test_the_file_a_login_writes_is_the_one_the_proxy_then_reads(tmp_path, google, email):
    """What login saves, load_google_accounts finds, under the same email: an email that
    starts with "." or "../" does not become a hidden file the proxy skips, and one near
    the 254 characters an address may have does not make a file name too long to write."""
    google.add_account(email)
    google.consent_as(email)
    config = _login_config(google, tmp_path)
    said, account = _paste_login(google, config, tmp_path)
    assert isinstance(account, gp.GoogleAccount), (said, account)
    loaded = gp.load_google_accounts(config.upstreams["google"], str(tmp_path / "state"),
                                     {}, {})
    assert [a.credential.email for a in loaded.values()] == [email], said


def browser_login_running(google):
    """browser_login for ANN in a thread: (the thread, a box its result lands in, the
    consent address it printed, its callback address split)."""
    google.add_account(ANN)
    google.consent_as(ANN)
    endpoints = gp.GoogleEndpoints(base_url=google.base_url, token_url=google.token_url,
                                   auth_url=google.auth_url)
    said, box = [], {}

    def run():
        try:
            box["result"] = gp.browser_login(endpoints, 0, said.append, lambda url: False)
        except Exception as exc:
            box["result"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = wait_for(lambda: [w for line in said for w in line.split()
                            if w.startswith(google.auth_url)])[0]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    return thread, box, url, urllib.parse.urlsplit(query["redirect_uri"])


def test_a_silent_connection_to_the_callback_port_does_not_stall_the_login(google):
    """A connection to the callback port that sends nothing (a browser's speculative
    preconnect, any local program) does not stall the login: Google's real redirect is
    still answered at once and the login completes."""
    thread, box, url, callback = browser_login_running(google)
    idle = socket.create_connection((callback.hostname, callback.port))
    try:
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=PATIENCE)
        conn.request("GET", parts.path + "?" + parts.query)
        location = urllib.parse.urlsplit(conn.getresponse().getheader("location"))
        conn.close()
        back = http.client.HTTPConnection(location.hostname, location.port,
                                          timeout=PROMPTLY)
        try:
            back.request("GET", location.path + "?" + location.query)
            status = back.getresponse().status
        except socket.timeout:
            pytest.fail("the callback did not answer while another connection sat idle")
        finally:
            back.close()
        assert status == 200
        thread.join(PROMPTLY)
        assert isinstance(box.get("result"), tuple)
    finally:
        idle.close()
        thread.join(PATIENCE)


def test_the_callback_answers_other_methods_and_huge_queries_without_ending_the_login(
        google):
    """Stray requests (POST, HEAD, a 100 KB query, a path that is not the callback) get
    their answer and the login still takes the real redirect afterwards. (A GET of the
    callback with a wrong or no state ends the login, by design: the CSRF check.)"""
    thread, box, url, callback = browser_login_running(google)

    def call(method, target):
        conn = http.client.HTTPConnection(callback.hostname, callback.port, timeout=PATIENCE)
        try:
            conn.request(method, target)
            return conn.getresponse().status
        finally:
            conn.close()
    assert call("POST", "/oauth2callback?code=x") >= 400
    assert call("HEAD", "/oauth2callback") >= 400
    assert call("GET", "/oauth2callback?" + "a=" + "b" * 100000) >= 400
    assert call("GET", "/elsewhere?code=x") == 404
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=PATIENCE)
    conn.request("GET", parts.path + "?" + parts.query)
    location = urllib.parse.urlsplit(conn.getresponse().getheader("location"))
    conn.close()
    assert call("GET", location.path + "?" + location.query) == 200
    thread.join(PATIENCE)
    assert isinstance(box.get("result"), tuple), box.get("result")
