"""The Code Assist upstream where a second review looked: numbers no float holds, session
keys that are not Unicode, a model every account refuses, and a refresh in flight while a
new login comes in. The rig is conftest's; helpers are test_code_assist_e2e.py's and
test_code_assist_hostile.py's."""

import json

from conftest import PATIENCE, make_config, wait_for
from fake_google import write_credentials
from test_code_assist_e2e import ANN, BOB, MODEL, ask, keys
from test_code_assist_hostile import _token_reply_bytes, in_threads, on_loop

HUGE = "1" + "0" * 400      # a JSON integer: json.loads gives an int no float can hold


def account_of(proxy, email):
    for state in proxy.server.proxy.live.upstreams["google"].keys.states:
        if state.account is not None and state.account.credential.email == email:
            return state.account
    return None


# == numbers no float holds ====================================================================

def test_a_token_reply_whose_lifetime_is_a_huge_integer_is_no_500(rig):
    """A token reply whose expires_in is an integer no float holds (JSON can spell one) is
    served with a lifetime of its own choosing, never a 500."""
    rig.account(ANN, expired=True)
    rig.google.fail_token_calls(1, status=200,
                                body=_token_reply_bytes(rig.google, ANN, HUGE))
    proxy = rig.start()
    statuses = [ask(proxy)[0] for _ in range(2)]
    assert statuses == [200, 200]


def test_a_credential_file_with_a_huge_integer_expiry_does_not_stop_start_up(rig):
    """A credential file whose expiry is an integer no float holds is read as having no
    known expiry: one odd file must not stop the proxy from starting."""
    rig.google.add_account(ANN)
    path = rig.creds / "ann.json"
    text = json.dumps(dict(rig.google.credentials(ANN), expiry_date="@@"))
    path.write_text(text.replace('"@@"', HUGE))
    proxy = rig.start()
    assert ask(proxy)[0] == 200


def test_a_reload_with_a_credential_file_of_huge_expiry_still_reloads(rig):
    """A reload (SIGHUP) with such a file among the credentials still applies the new
    configuration."""
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
    """A prompt_cache_key holding a lone surrogate (JSON can spell "\\ud800") is no 500: the
    session id Code Assist gets is a hash of whatever it holds."""
    rig.account(ANN)
    proxy = rig.start()
    status, answer = proxy.post("/v1/chat/completions", {
        "model": MODEL, "prompt_cache_key": "conv-\ud800",
        "messages": [{"role": "user", "content": "hi"}]})
    assert status in (200, 400), (status, answer)


# == a model no account may use ================================================================

def test_a_model_every_account_refuses_is_a_404_not_a_503(rig):
    """A model no account serves (a typo, a preview the accounts lack) is the refusal's own
    404, not a 503 that would read as an outage and be retried."""
    rig.account(ANN, models=[MODEL])
    proxy = rig.start()
    statuses = [ask(proxy, model="gemini-3-pro-preview")[0] for _ in range(2)]
    assert statuses == [404, 404]
    assert keys(proxy)[ANN]["state"] == "ready"
    assert ask(proxy)[0] == 200


# == a reload while a refresh is in flight =====================================================

def test_a_refresh_in_flight_at_a_reload_does_not_undo_the_new_login(rig):
    """The user logs in again (the proxy's own file gets a new refresh token) and reloads
    while a refresh of the old login is in flight: the new login stays, in memory and in
    the file."""
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
    """The same race with Gemini CLI's file (never written): its user logged in as someone
    else and the proxy reloaded; the old account's refresh, in flight, does not bring the
    old account (or its project) back."""
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
