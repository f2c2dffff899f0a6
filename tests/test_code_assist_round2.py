"""Second review of "Code Assist: what review and adversarial testing found": what that
commit still gets wrong, each test naming the place. The rig and helpers are
test_code_assist_e2e.py's and test_code_assist_hostile.py's."""

import json

import pytest

import gemini_proxy as gp
from conftest import PATIENCE, make_config, wait_for
from fake_google import FakeGoogle, write_credentials
from test_code_assist_e2e import ANN, BOB, MODEL, Rig, ask, keys
from test_code_assist_hostile import _token_reply_bytes, in_threads, on_loop

HUGE = "1" + "0" * 400      # a JSON integer: json.loads gives an int no float can hold


@pytest.fixture
def google():
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture
def rig(google, tmp_path):
    made = Rig(google, tmp_path)
    yield made
    made.stop()


def account_of(proxy, email):
    for state in proxy.server.proxy.live.upstreams["google"].keys.states:
        if state.account is not None and state.account.credential.email == email:
            return state.account
    return None


# == numbers no float holds ====================================================================

def test_a_token_reply_whose_lifetime_is_a_huge_integer_is_no_500(rig):
    """token_call: math.isfinite(int) raises OverflowError for an integer past a float's
    range (json.loads reads '1000...0' as an int). That is no ProxyError: SharedWork keeps
    it as a bare ProxyError (500), which _attempts does not catch, so the client gets a
    500, no other account is tried, and every request on the account for 5 s gets the
    same 500 from the failure memory."""
    rig.account(ANN, expired=True)
    rig.google.fail_token_calls(1, status=200,
                                body=_token_reply_bytes(rig.google, ANN, HUGE))
    proxy = rig.start()
    statuses = [ask(proxy)[0] for _ in range(2)]
    assert statuses == [200, 200]


def test_a_credential_file_with_a_huge_integer_expiry_does_not_stop_start_up(rig):
    """_expiry_seconds: math.isfinite(huge int) raises OverflowError, which
    load_google_accounts (OSError, ValueError) does not catch: one odd file in the
    accounts directory (or ~/.gemini) and the proxy does not start at all."""
    rig.google.add_account(ANN)
    path = rig.creds / "ann.json"
    text = json.dumps(dict(rig.google.credentials(ANN), expiry_date="@@"))
    path.write_text(text.replace('"@@"', HUGE))
    proxy = rig.start()
    assert ask(proxy)[0] == 200


def test_a_reload_with_a_credential_file_of_huge_expiry_still_reloads(rig):
    """GoogleAccount.reread catches (OSError, ValueError) only: the OverflowError escapes
    Proxy.reload, so the whole reload is lost (a SIGHUP's new routes, keys and upstreams
    are not applied) for as long as the file stays as it is."""
    path = rig.account(ANN)
    proxy = rig.start()
    assert ask(proxy)[0] == 200
    text = json.dumps(dict(json.loads(path.read_text()), expiry_date="@@"))
    path.write_text(text.replace('"@@"', HUGE))
    raw = rig.config()
    raw["upstreams"]["local"] = {"kind": "echo"}
    raw["routes"] = [{"model": "echo-*", "upstream": "local"},
                     {"model": "*", "upstream": "google"}]
    proxy.server.reload(make_config(raw, {}))
    assert "local" in proxy.server.proxy.live.upstreams
    assert ask(proxy)[0] == 200


# == the session id ============================================================================

def test_a_session_key_that_is_no_valid_unicode_is_no_500(rig):
    """UpstreamCall._with_account hashes the session with session.encode("utf-8"); a
    prompt_cache_key holding a lone surrogate (JSON can spell "\\ud800") raises
    UnicodeEncodeError there: a 500 "internal error". Before the commit the raw id went
    into the body and request_bytes made it a 400; other upstream kinds take it."""
    rig.account(ANN)
    proxy = rig.start()
    status, answer = proxy.post("/v1/chat/completions", {
        "model": MODEL, "prompt_cache_key": "conv-\ud800",
        "messages": [{"role": "user", "content": "hi"}]})
    assert status in (200, 400), (status, answer)


# == a model no account may use ================================================================

def test_a_model_every_account_refuses_is_a_404_not_a_503(rig):
    """KeyPool._unavailable now answers 503 "every Google account is out" whenever no
    account is allowed, even when the refusals are for this model only (a 404,
    key_verdict out_for_model): a model name no account serves (a typo, a preview the
    accounts lack) reads as an outage to the client, which retries it; before the commit
    it was the 404. Only an account-wide "out" is the proxy's trouble."""
    rig.account(ANN, models=[MODEL])
    proxy = rig.start()
    statuses = [ask(proxy, model="gemini-3-pro-preview")[0] for _ in range(2)]
    assert statuses == [404, 404]
    assert keys(proxy)[ANN]["state"] == "ready"
    assert ask(proxy)[0] == 200


# == a reload while a refresh is in flight =====================================================

def test_a_refresh_in_flight_at_a_reload_does_not_undo_the_new_login(rig):
    """The user logs in again (the proxy's own file gets a new refresh token) and
    reloads while a refresh of the old login is in flight. reread() takes the new login;
    then the old refresh succeeds and GoogleAccount._adopt replaces self.credential with
    a copy of the credential it started from (the old login) and save() writes that into
    the file: the new login is gone from memory and from disk."""
    rig.google.add_account(ANN)
    own = rig.state / "accounts"
    own.mkdir(parents=True)
    path = own / "ann.json"
    write_credentials(str(path), rig.google.credentials(ANN, expired=True))
    proxy = rig.start(rig.config(credentials=[str(own)]))
    gate = rig.google.hold_token_calls(limit=PATIENCE)
    threads, results = in_threads(1, lambda: ask(proxy)[0])
    try:
        assert gate.entered.wait(PATIENCE)
        rig.google.token_gate = None            # later token calls are not held
        new_login = rig.google.credentials(ANN)
        write_credentials(str(path), new_login)
        on_loop(proxy, proxy.server.reload, make_config(rig.config(credentials=[str(own)]),
                                                        {}))
        wait_for(lambda: account_of(proxy, ANN).credential.refresh_token ==
                 new_login["refresh_token"], message="the reload did not take the new login")
    finally:
        gate.open()
    threads[0].join(PATIENCE)
    assert results == [200]
    assert account_of(proxy, ANN).credential.refresh_token == new_login["refresh_token"]
    assert json.loads(path.read_text())["refresh_token"] == new_login["refresh_token"]


def test_a_refresh_in_flight_at_a_reload_does_not_bring_back_the_files_old_account(rig):
    """The same race with Gemini CLI's file (never written): its user logged in as
    someone else and the proxy reloaded; the refresh of the old account, in flight, then
    puts the old account back (credential and project) and the reload's switch to the
    new one is lost until the next reload."""
    path = rig.account(ANN, expired=True)
    rig.google.add_account(BOB)
    proxy = rig.start()
    gate = rig.google.hold_token_calls(limit=PATIENCE)
    threads, results = in_threads(1, lambda: ask(proxy)[0])
    try:
        assert gate.entered.wait(PATIENCE)
        rig.google.token_gate = None
        write_credentials(str(path), rig.google.credentials(BOB))
        on_loop(proxy, proxy.server.reload, make_config(rig.config(), {}))
        wait_for(lambda: account_of(proxy, BOB) is not None,
                 message="the reload did not take the new login")
    finally:
        gate.open()
    threads[0].join(PATIENCE)
    assert len(results) == 1
    status, _, data = ask(proxy)
    assert status == 200, data
    assert rig.google.generate_calls()[-1]["account"] == BOB
