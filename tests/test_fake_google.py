"""The fake Google itself (tests/fake_google.py), over plain HTTP (no proxy): OAuth consent,
code exchange with and without PKCE, refresh, revocation and expiry; the Code Assist setup
calls; the generate envelope; the error builders; recording."""

import base64
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fake_google as fg  # noqa: E402
import fake_upstream as fu  # noqa: E402
from conftest import PATIENCE, wait_for  # noqa: E402
from fake_google import FakeGoogle  # noqa: E402
from fake_upstream import FakeGemini  # noqa: E402

FORM = "application/x-www-form-urlencoded"
LOOPBACK = "http://127.0.0.1:41237/oauth2callback"
ALICE = "alice@example.com"
BOB = "bob@example.com"
HELLO = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


@pytest.fixture
def google():
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


def call(fake, method, path, body=None, headers=None, timeout=PATIENCE):
    """(status, lower-cased headers, body bytes) on a fresh connection; a dict body goes as
    JSON, a str or bytes body as is."""
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=timeout)
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers.setdefault("content-type", "application/json")
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def token_call(fake, fields, content_type=FORM):
    status, _, data = call(fake, "POST", "/token", urlencode(fields),
                           {"content-type": content_type})
    return status, json.loads(data)


def client_fields(**fields):
    return dict(fields, client_id=fg.GEMINI_CLI_CLIENT_ID,
                client_secret=fg.GEMINI_CLI_CLIENT_SECRET)


def consent(fake, redirect_uri=LOOPBACK, state="s" * 64, **extra):
    """GET /auth as a browser would; (status, Location's query as a dict, Location)."""
    query = dict({"client_id": fg.GEMINI_CLI_CLIENT_ID, "redirect_uri": redirect_uri,
                  "response_type": "code", "access_type": "offline",
                  "scope": " ".join(fg.SCOPES), "state": state}, **extra)
    status, headers, _ = call(fake, "GET", "/auth?" + urlencode(query))
    location = headers.get("location", "")
    return status, {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}, location


def login(fake, email, verifier=None, redirect_uri=LOOPBACK):
    """A whole consent + exchange; the token reply."""
    extra = {"login_hint": email}
    if verifier:
        extra.update(code_challenge=fg.pkce_challenge(verifier), code_challenge_method="S256")
    status, query, _ = consent(fake, redirect_uri, **extra)
    assert status == 302 and "code" in query
    fields = client_fields(code=query["code"], redirect_uri=redirect_uri,
                           grant_type="authorization_code")
    if verifier:
        fields["code_verifier"] = verifier
    status, reply = token_call(fake, fields)
    assert status == 200, reply
    return reply


def refresh(fake, refresh_token):
    return token_call(fake, client_fields(refresh_token=refresh_token,
                                          grant_type="refresh_token"))


def ca(fake, method, body, token, query=""):
    """A Code Assist method call: (status, headers, body bytes)."""
    headers = {"authorization": "Bearer " + token} if token else {}
    return call(fake, "POST", "/v1internal:%s%s" % (method, query), body, headers)


def ca_json(fake, method, body, token, query=""):
    status, _, data = ca(fake, method, body, token, query)
    return status, json.loads(data)


def envelope(fake, email, request=None, model="gemini-2.5-pro", **extra):
    return dict({"model": model, "project": fake.account(email)["project"],
                 "user_prompt_id": "prompt-1",
                 "request": dict(request or HELLO, session_id="session-1")}, **extra)


def sse_events(data):
    """Payloads of an SSE body of `data: <one-line json>` events."""
    text = data.decode("utf-8")
    assert text.endswith("\n\n"), text[-80:]
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), text
    return [json.loads(e[len("data: "):]) for e in events]


def error_of(body):
    """The `error` object of a Google error body, plain or array-wrapped."""
    if isinstance(body, list):
        assert len(body) == 1
        body = body[0]
    return body["error"]


def reasons(error):
    return [d.get("reason") for d in error.get("details", ()) if "reason" in d]


def detail(error, kind):
    return next(d for d in error.get("details", ()) if d["@type"].endswith(kind))


# -- helpers ---------------------------------------------------------------------------------

def test_pkce_known_answer_and_durations():
    # RFC 7636 Appendix B
    assert fg.pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == \
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert fg.go_duration(0.5) == "500ms" and fg.go_duration(1.5) == "1.5s"
    assert fg.go_duration(2) == "2s" and fg.go_duration(3600) == "1h0m0s"
    assert fg.go_duration(19 * 3600 + 14 * 60 + 47) == "19h14m47s"
    assert fg.go_seconds("19h14m47s") == 69287 and fg.go_seconds("373.8ms") == 0.3738
    with pytest.raises(ValueError):
        fg.go_seconds("soon")
    assert fg.proto_duration(68940) == "68940s" and fg.proto_duration(0.25) == "0.25s"
    token = fg.fake_id_token("a@b.c", "42", "client")
    assert token.count(".") == 2 and "=" not in token
    assert fg.jwt_payload(token)["email"] == "a@b.c"


# -- OAuth: consent and code exchange --------------------------------------------------------

def test_loopback_login_without_pkce(google):
    google.add_account(ALICE)
    google.consent_as(ALICE)
    status, query, location = consent(google, state="abc123")
    assert status == 302 and location.startswith(LOOPBACK + "?")
    assert query["state"] == "abc123" and query["code"]
    assert google.auth_requests[-1]["redirect_uri"] == LOOPBACK
    assert google.auth_requests[-1]["access_type"] == "offline"
    fields = client_fields(code=query["code"], redirect_uri=LOOPBACK,
                           grant_type="authorization_code", code_verifier="")
    status, reply = token_call(google, fields)
    assert status == 200
    assert set(reply) == {"access_token", "expires_in", "scope", "token_type", "id_token",
                          "refresh_token"}
    assert reply["token_type"] == "Bearer" and reply["expires_in"] == 3600
    assert reply["scope"] == " ".join(fg.SCOPES)
    assert fg.jwt_payload(reply["id_token"])["email"] == ALICE
    call_ = google.token_calls[-1]
    assert call_["grant_type"] == "authorization_code" and call_["code"] == query["code"]
    assert call_["content_type"] == FORM and call_["client_id"] == fg.GEMINI_CLI_CLIENT_ID
    assert google.requests[-1]["account"] == ALICE and google.requests[-1]["status"] == 200
    # a code is single-use
    status, again = token_call(google, fields)
    assert status == 400 and again["error"] == "invalid_grant"
    # the tokens work
    status, _, data = call(google, "GET", "/userinfo",
                           headers={"authorization": "Bearer " + reply["access_token"]})
    info = json.loads(data)
    assert status == 200 and info["email"] == ALICE and info["verified_email"] is True
    assert info["id"] == google.account(ALICE)["id"]


def test_user_code_login_with_pkce(google):
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    google.add_account(BOB)

    def code(**extra):
        status, query, location = consent(
            google, fg.CODEASSIST_REDIRECT, login_hint=BOB,
            code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            code_challenge_method="S256", **extra)
        assert status == 302 and location.startswith(fg.CODEASSIST_REDIRECT + "?")
        return query["code"]

    def exchange(the_code, verifier=None, redirect_uri=fg.CODEASSIST_REDIRECT):
        fields = client_fields(code=the_code, redirect_uri=redirect_uri,
                               grant_type="authorization_code")
        if verifier is not None:
            fields["code_verifier"] = verifier
        return token_call(google, fields)

    status, reply = exchange(code())                  # no verifier
    assert (status, reply["error"]) == (400, "invalid_grant")
    status, reply = exchange(code(), verifier + "x")   # the wrong one
    assert (status, reply["error"]) == (400, "invalid_grant")
    status, reply = exchange(code(), verifier, LOOPBACK)   # another redirect_uri
    assert status == 400 and reply["error"] == "redirect_uri_mismatch"
    status, reply = exchange(code(prompt="consent"), verifier)
    assert status == 200 and reply["refresh_token"]
    assert fg.jwt_payload(reply["id_token"])["email"] == BOB
    assert google.auth_requests[-1]["code_challenge_method"] == "S256"
    assert google.auth_requests[-1]["prompt"] == "consent"
    assert google.token_calls[-1]["code_verifier"] == verifier
    # plain is the default method when only a challenge is given
    status, query, _ = consent(google, login_hint=BOB, code_challenge="plain-secret-value")
    status, reply = token_call(google, client_fields(
        code=query["code"], redirect_uri=LOOPBACK, grant_type="authorization_code",
        code_verifier="plain-secret-value"))
    assert status == 200


def test_consent_errors_and_denial(google):
    google.add_account(ALICE)
    status, query, _ = consent(google, client_id="someone-else")
    assert status == 401 and query == {}
    assert consent(google, redirect_uri="https://evil.example/cb")[0] == 400
    assert consent(google, response_type="token")[0] == 400
    assert consent(google, scope="")[0] == 400
    google.deny_next_consent()
    status, query, location = consent(google, state="st")
    assert status == 302 and location.startswith(LOOPBACK)
    assert query["error"] == "access_denied" and query["error_description"]
    assert query["state"] == "st" and "code" not in query
    status, query, _ = consent(google)      # only the next one
    assert status == 302 and "code" in query
    assert len(google.auth_requests) == 6
    # without access_type=offline: no refresh token
    status, query, _ = consent(google, access_type="online")
    status, reply = token_call(google, client_fields(
        code=query["code"], redirect_uri=LOOPBACK, grant_type="authorization_code"))
    assert status == 200 and "refresh_token" not in reply


def test_login_hint_and_consent_as_pick_the_account(google):
    google.add_account(ALICE)
    assert fg.jwt_payload(login(google, BOB)["id_token"])["email"] == BOB   # added on the fly
    assert google.account(BOB)["onboarded"] is True
    google.consent_as(BOB)
    status, query, _ = consent(google)
    status, reply = token_call(google, client_fields(
        code=query["code"], redirect_uri=LOOPBACK, grant_type="authorization_code"))
    assert fg.jwt_payload(reply["id_token"])["email"] == BOB


def test_refresh_only_on_first_consent(google):
    google.refresh_only_on_first_consent = True
    assert "refresh_token" in login(google, ALICE)
    assert "refresh_token" not in login(google, ALICE)
    status, query, _ = consent(google, login_hint=ALICE, prompt="consent")
    status, reply = token_call(google, client_fields(
        code=query["code"], redirect_uri=LOOPBACK, grant_type="authorization_code"))
    assert "refresh_token" in reply


def test_token_endpoint_rejects_bad_clients_and_bodies(google):
    google.add_account(ALICE)
    creds = google.credentials(ALICE)
    fields = {"refresh_token": creds["refresh_token"], "grant_type": "refresh_token",
              "client_id": fg.GEMINI_CLI_CLIENT_ID, "client_secret": "GOCSPX-wrong"}
    status, reply = token_call(google, fields)
    assert (status, reply["error"]) == (401, "invalid_client")
    status, reply = token_call(google, client_fields(grant_type="password"))
    assert (status, reply["error"]) == (400, "unsupported_grant_type")
    status, _, data = call(google, "POST", "/token", json.dumps(client_fields(
        refresh_token=creds["refresh_token"], grant_type="refresh_token")),
        {"content-type": "application/json"})
    assert status == 400 and json.loads(data)["error"] == "invalid_request"
    assert google.token_calls[-1]["content_type"] == "application/json"
    # HTTP Basic client authentication works too
    basic = base64.b64encode(("%s:%s" % (fg.GEMINI_CLI_CLIENT_ID,
                                         fg.GEMINI_CLI_CLIENT_SECRET)).encode()).decode()
    status, _, data = call(google, "POST", "/token", urlencode(
        {"refresh_token": creds["refresh_token"], "grant_type": "refresh_token"}),
        {"content-type": FORM, "authorization": "Basic " + basic})
    assert status == 200 and json.loads(data)["access_token"]


def test_custom_client_pair():
    fake = FakeGoogle(client_id="my-client", client_secret="my-secret").start()
    try:
        fake.add_account(ALICE)
        rt = fake.credentials(ALICE)["refresh_token"]
        assert refresh(fake, rt)[0] == 401
        status, reply = token_call(fake, {"refresh_token": rt, "grant_type": "refresh_token",
                                          "client_id": "my-client",
                                          "client_secret": "my-secret"})
        assert status == 200
        assert fake.credentials(ALICE, "google-auth")["client_id"] == "my-client"
    finally:
        fake.stop()


# -- OAuth: refresh, rotation, revocation, expiry --------------------------------------------

def test_refresh_keeps_the_refresh_token_unless_rotating(google):
    google.add_account(ALICE)
    first = login(google, ALICE)
    status, reply = refresh(google, first["refresh_token"])
    assert status == 200 and "refresh_token" not in reply
    assert reply["access_token"] != first["access_token"] and reply["id_token"]
    assert google.token_calls[-1] == dict(client_fields(
        refresh_token=first["refresh_token"], grant_type="refresh_token"),
        content_type=FORM)
    # the old access token still works until it expires
    for token in (first["access_token"], reply["access_token"]):
        assert ca(google, "loadCodeAssist", {}, token)[0] == 200
    google.rotate_refresh_tokens = True
    status, rotated = refresh(google, first["refresh_token"])
    assert status == 200 and rotated["refresh_token"] != first["refresh_token"]
    status, stale = refresh(google, first["refresh_token"])
    assert status == 400 and stale == {"error": "invalid_grant",
                                       "error_description": "Token has been expired or revoked."}
    assert refresh(google, rotated["refresh_token"])[0] == 200


def test_token_lifetime_and_unknown_refresh_token(google):
    google.add_account(ALICE)
    google.token_lifetime = 120
    assert login(google, ALICE)["expires_in"] == 120
    status, reply = refresh(google, "1//never-issued")
    assert (status, reply["error"]) == (400, "invalid_grant")
    google.token_lifetime = 0       # born expired
    token = login(google, ALICE)["access_token"]
    status, _, data = ca(google, "loadCodeAssist", {}, token)
    assert status == 401


def test_revoke_and_expire(google):
    google.add_account(ALICE)
    google.add_account(BOB)
    a, b = login(google, ALICE), login(google, BOB)
    google.expire_tokens(ALICE)
    status, _, data = ca(google, "loadCodeAssist", {}, a["access_token"])
    error = json.loads(data)["error"]
    assert status == 401 and error["status"] == "UNAUTHENTICATED" and error["code"] == 401
    assert "invalid authentication credentials" in error["message"]
    assert reasons(error) == ["ACCESS_TOKEN_EXPIRED"]
    assert ca(google, "loadCodeAssist", {}, b["access_token"])[0] == 200
    status, fresh = refresh(google, a["refresh_token"])
    assert status == 200 and ca(google, "loadCodeAssist", {}, fresh["access_token"])[0] == 200

    google.revoke(ALICE)
    assert ca(google, "loadCodeAssist", {}, fresh["access_token"])[0] == 401
    status, _, _ = call(google, "GET", "/userinfo",
                        headers={"authorization": "Bearer " + fresh["access_token"]})
    assert status == 401 and google.requests[-1]["account"] is None
    assert refresh(google, a["refresh_token"]) == (400, {
        "error": "invalid_grant", "error_description": "Token has been expired or revoked."})
    assert refresh(google, b["refresh_token"])[0] == 200
    # a new login works again
    assert ca(google, "loadCodeAssist", {}, login(google, ALICE)["access_token"])[0] == 200


def test_revoke_and_tokeninfo_endpoints(google):
    google.add_account(ALICE)
    reply = login(google, ALICE)
    status, _, data = call(google, "GET", "/tokeninfo?access_token=" + reply["access_token"])
    info = json.loads(data)
    assert status == 200 and info["email"] == ALICE and info["aud"] == fg.GEMINI_CLI_CLIENT_ID
    status, _, _ = call(google, "POST", "/revoke?token=" + reply["refresh_token"], b"",
                        {"content-type": FORM})
    assert status == 200 and refresh(google, reply["refresh_token"])[0] == 400
    assert call(google, "GET", "/tokeninfo?access_token=" + reply["access_token"])[0] == 400
    assert call(google, "POST", "/revoke?token=nope", b"", {"content-type": FORM})[0] == 400


def test_scripted_token_failures(google):
    google.add_account(ALICE)
    rt = google.credentials(ALICE)["refresh_token"]
    google.fail_token_calls(2, status=500)
    status, reply = refresh(google, rt)
    assert status == 500 and reply["error"] == "internal_failure"
    assert refresh(google, rt)[0] == 500
    assert refresh(google, rt)[0] == 200
    google.fail_token_calls(1, status=429)
    assert refresh(google, rt) == (429, {"error": "rate_limit_exceeded", "error_description":
                                         "Fake transient failure of the token endpoint."})
    google.fail_token_calls(1, status=502, body=b"<html>bad gateway</html>")
    status, _, data = call(google, "POST", "/token", urlencode(client_fields(
        refresh_token=rt, grant_type="refresh_token")), {"content-type": FORM})
    assert status == 502 and data == b"<html>bad gateway</html>"
    assert len(google.token_calls) == 5


def test_held_token_calls_pile_up_until_the_gate_opens(google):
    google.add_account(ALICE)
    rt = google.credentials(ALICE)["refresh_token"]
    gate = google.hold_token_calls()
    results = []
    threads = [threading.Thread(target=lambda: results.append(refresh(google, rt)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    assert gate.entered.wait(PATIENCE)
    wait_for(lambda: len(google.token_calls) == 3)
    assert results == []        # all three are held
    gate.open()
    for thread in threads:
        thread.join(PATIENCE)
    assert [status for status, _ in results] == [200] * 3


def test_slow_token_calls_end_when_the_fake_stops():
    fake = FakeGoogle().start()
    fake.add_account(ALICE)
    rt = fake.credentials(ALICE)["refresh_token"]
    fake.token_delay = 3600
    outcome = []

    def ask():
        try:
            outcome.append(refresh(fake, rt))
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)
    thread = threading.Thread(target=ask)
    thread.start()
    wait_for(lambda: fake.token_calls)
    fake.stop()
    thread.join(PATIENCE)
    assert not thread.is_alive() and outcome and not isinstance(outcome[0], tuple)


# -- credential files -----------------------------------------------------------------------

def test_credentials_in_four_formats(google):
    google.add_account(ALICE, project="proj-alice")
    before = time.time()
    cli = google.credentials(ALICE)
    assert set(cli) == {"access_token", "refresh_token", "scope", "token_type", "id_token",
                        "expiry_date"}
    assert cli["expiry_date"] > (before + 3000) * 1000       # milliseconds
    assert fg.jwt_payload(cli["id_token"])["email"] == ALICE
    ga = google.credentials(ALICE, "google-auth")
    assert ga["token_uri"] == google.token_url and ga["project_id"] == "proj-alice"
    assert ga["client_id"] == fg.GEMINI_CLI_CLIENT_ID and ga["scopes"] == fg.SCOPES
    assert ga["expiry"].endswith("+00:00") and ga["token"].startswith("ya29.")
    cpa = google.credentials(ALICE, "cliproxy")
    assert cpa["type"] == "gemini" and cpa["email"] == ALICE
    assert cpa["project_id"] == "proj-alice" and cpa["token"]["expiry"].endswith("Z")
    assert cpa["token"]["refresh_token"] == cpa["refresh_token"]
    raw = google.credentials(ALICE, "token-response")
    assert raw["expires_in"] == 3600 and "expiry_date" not in raw and "expiry" not in raw
    tokens = [cli["access_token"], ga["token"], cpa["access_token"], raw["access_token"]]
    assert len(set(tokens)) == 4
    for token in tokens:
        assert ca(google, "loadCodeAssist", {}, token)[0] == 200
    for rt in (cli["refresh_token"], ga["refresh_token"], cpa["refresh_token"],
               raw["refresh_token"]):
        assert refresh(google, rt)[0] == 200
    assert not any(c.get("grant_type") == "authorization_code" for c in google.token_calls)
    with pytest.raises(ValueError):
        google.credentials(ALICE, "xml")
    # not onboarded yet: no project in the file
    google.add_account(BOB, onboarded=False)
    assert "project_id" not in google.credentials(BOB, "google-auth")


def test_expired_credentials_need_a_refresh(google):
    google.add_account(ALICE)
    creds = google.credentials(ALICE, expired=True)
    assert creds["expiry_date"] < time.time() * 1000
    assert ca(google, "loadCodeAssist", {}, creds["access_token"])[0] == 401
    status, reply = refresh(google, creds["refresh_token"])
    assert status == 200 and ca(google, "loadCodeAssist", {}, reply["access_token"])[0] == 200


# -- Code Assist setup ----------------------------------------------------------------------

def test_load_code_assist_shapes(google):
    google.add_account(ALICE, project="gen-lang-client-1")
    google.add_account(BOB, paid_tier="g1-pro-tier", tier="standard-tier")
    google.add_account("carol@example.com", onboarded=False)
    google.add_account("dave@example.com", validation_url="https://verify.example/dave")
    metadata = {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED",
                "pluginType": "GEMINI"}

    def load(email):
        token = google.credentials(email)["access_token"]
        status, body = ca_json(google, "loadCodeAssist", {"metadata": metadata}, token)
        assert status == 200
        return body
    alice = load(ALICE)
    assert alice["currentTier"]["id"] == "free-tier"
    assert alice["cloudaicompanionProject"] == "gen-lang-client-1"
    assert "paidTier" not in alice
    assert [t["id"] for t in alice["allowedTiers"] if t.get("isDefault")] == ["free-tier"]
    bob = load(BOB)
    assert bob["currentTier"]["id"] == "standard-tier" and bob["paidTier"]["id"] == "g1-pro-tier"
    assert bob["cloudaicompanionProject"] == "backend-bob"
    carol = load("carol@example.com")
    assert set(carol) == {"allowedTiers"}
    assert [t["id"] for t in carol["allowedTiers"] if t.get("isDefault")] == ["free-tier"]
    dave = load("dave@example.com")
    assert "currentTier" not in dave and "cloudaicompanionProject" not in dave
    ineligible = dave["ineligibleTiers"][0]
    assert ineligible["reasonCode"] == "VALIDATION_REQUIRED"
    assert ineligible["validationUrl"] == "https://verify.example/dave"
    google.validate("dave@example.com")
    assert load("dave@example.com")["currentTier"]["id"] == "free-tier"
    assert google.requests[-1]["account"] == "dave@example.com"
    assert google.requests[-1]["json"] == {"metadata": metadata}


def test_onboarding_takes_the_polls_it_is_told(google):
    google.add_account(ALICE, onboarded=False, onboard_polls=2, project="backend-a1")
    token = google.credentials(ALICE)["access_token"]
    status, op = ca_json(google, "onboardUser", {
        "tierId": "free-tier", "cloudaicompanionProject": "asked-for-this",
        "metadata": {"pluginType": "GEMINI"}}, token)
    assert status == 200 and op["done"] is False
    assert op["name"].startswith("operations/onboard-") and "response" not in op
    path = "/v1internal/" + op["name"]
    auth = {"authorization": "Bearer " + token}
    polls = []
    for _ in range(3):
        status, _, data = call(google, "GET", path, headers=auth)
        assert status == 200
        polls.append(json.loads(data))
    assert [p["done"] for p in polls] == [False, False, True]
    project = polls[-1]["response"]["cloudaicompanionProject"]
    assert isinstance(project, dict) and project["id"] == "backend-a1" != "asked-for-this"
    assert project["name"]
    load = ca_json(google, "loadCodeAssist", {}, token)[1]
    assert load["cloudaicompanionProject"] == "backend-a1" and load["currentTier"]
    assert google.onboard_calls(ALICE) == 1 and google.onboard_calls() == 1
    # an onboarded account asking again gets a finished operation at once (and is counted)
    status, op = ca_json(google, "onboardUser", {"tierId": "free-tier"}, token)
    assert op["done"] is True and op["response"]["cloudaicompanionProject"]["id"] == "backend-a1"
    assert google.onboard_calls(ALICE) == 2
    # another account cannot read the operation; nor can a stranger
    google.add_account(BOB)
    other = {"authorization": "Bearer " + google.credentials(BOB)["access_token"]}
    assert call(google, "GET", path, headers=other)[0] == 404
    assert call(google, "GET", path)[0] == 401


def test_onboarding_polled_by_posting_again(google):
    google.add_account(ALICE, onboarded=False, onboard_polls=1)
    token = google.credentials(ALICE)["access_token"]
    body = {"tierId": "free-tier", "metadata": {}}
    answers = [ca_json(google, "onboardUser", body, token)[1] for _ in range(3)]
    assert [a["done"] for a in answers] == [False, False, True]
    assert len({a["name"] for a in answers}) == 1
    assert google.account(ALICE)["onboarded"] and google.onboard_calls(ALICE) == 3
    status, body = ca_json(google, "onboardUser", {"tierId": "ultra-tier"}, token)
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"


def test_quota_and_other_methods(google):
    google.add_account(ALICE, models=["gemini-2.5-pro", "gemini-2.5-flash"])
    token = google.credentials(ALICE)["access_token"]
    project = google.account(ALICE)["project"]
    assert ca(google, "generateContent", envelope(google, ALICE), token)[0] == 200
    status, quota = ca_json(google, "retrieveUserQuota", {"project": project}, token)
    assert status == 200
    buckets = {b["modelId"]: b for b in quota["buckets"]}
    assert set(buckets) == {"gemini-2.5-pro", "gemini-2.5-flash"}
    assert buckets["gemini-2.5-pro"]["remainingAmount"] == "999"
    assert buckets["gemini-2.5-flash"]["remainingFraction"] == 1.0
    assert buckets["gemini-2.5-pro"]["resetTime"].endswith("Z")
    assert ca(google, "retrieveUserQuota", {"project": "other"}, token)[0] == 403
    assert ca(google, "listExperiments", {"project": project}, token)[0] == 200
    status, body = ca_json(google, "noSuchMethod", {}, token)
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"
    assert call(google, "GET", "/v1beta/models")[0] == 404


# -- Code Assist generation -----------------------------------------------------------------

def test_generate_is_fake_gemini_in_an_envelope(google):
    google.add_account(ALICE)
    token = google.credentials(ALICE)["access_token"]
    gemini = FakeGemini().start()
    try:
        for request in (HELLO, {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                                "generationConfig": {"thinkingConfig": {
                                    "includeThoughts": True}}},
                        {"contents": [{"role": "user", "parts": [{"text": "x"}]}],
                         "generationConfig": {"responseMimeType": "application/json"}}):
            status, headers, data = ca(google, "generateContent",
                                       envelope(google, ALICE, request), token)
            assert status == 200 and headers["content-type"] == "application/json"
            body = json.loads(data)
            assert set(body) == {"response", "traceId"}
            expected = json.loads(call(gemini, "POST",
                                       "/v1beta/models/gemini-2.5-pro:generateContent",
                                       request)[2])
            assert body["response"] == expected
            assert body["response"]["usageMetadata"]["totalTokenCount"] >= 18
            record = google.requests[-1]
            assert body["traceId"] == record["trace_id"] == "0fa4e%011x" % record["number"]
    finally:
        gemini.stop()


def test_generate_calls_and_tool_results(google):
    google.add_account(ALICE)
    token = google.credentials(ALICE)["access_token"]
    request = {"contents": [{"role": "user", "parts": [
        {"text": 'go CALL read_file {"path": "/a"} CALL ls {"dir": "."}'}]}]}
    status, body = ca_json(google, "generateContent", envelope(google, ALICE, request), token)
    number = google.requests[-1]["number"]
    assert body["response"]["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"id": "fc_%d_0" % number, "name": "read_file",
                          "args": {"path": "/a"}}, "thoughtSignature": "sig-fc-%d" % number},
        {"functionCall": {"id": "fc_%d_1" % number, "name": "ls", "args": {"dir": "."}}}]
    request["contents"] += [
        {"role": "model", "parts": body["response"]["candidates"][0]["content"]["parts"]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "read_file", "response": {"output": "text"}}},
            {"functionResponse": {"name": "ls", "response": {"output": "a b"}}}]}]
    status, body = ca_json(google, "generateContent", envelope(google, ALICE, request), token)
    assert body["response"]["candidates"][0]["content"]["parts"] == [
        {"text": "FAKE got tool result(s): read_file -> text; ls -> a b"}]


def test_stream_is_enveloped_with_usage_inside_response(google):
    google.add_account(ALICE)
    token = google.credentials(ALICE)["access_token"]
    request = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
               "generationConfig": {"thinkingConfig": {"includeThoughts": True}}}
    status, headers, data = ca(google, "streamGenerateContent",
                               envelope(google, ALICE, request), token, "?alt=sse")
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = sse_events(data)
    assert len(events) >= 3 and all(set(e) == {"response", "traceId"} for e in events)
    assert len({e["traceId"] for e in events}) == 1
    responses = [e["response"] for e in events]
    parts = [p for r in responses for p in r["candidates"][0]["content"]["parts"]]
    assert parts[0] == {"text": "FAKE thinks.", "thought": True}
    assert "".join(p["text"] for p in parts[1:]) == "FAKE says hello."
    assert all("usageMetadata" not in r for r in responses[:-1])
    assert responses[-1]["usageMetadata"]["thoughtsTokenCount"] == 3
    assert responses[-1]["candidates"][0]["finishReason"] == "STOP"
    assert all("usageMetadata" not in e for e in events)
    assert google.requests[-1]["query"] == {"alt": "sse"}
    # calls, streamed
    call_request = {"contents": [{"role": "user", "parts": [{"text": 'CALL a {"x": 1}'}]}]}
    events = sse_events(ca(google, "streamGenerateContent",
                           envelope(google, ALICE, call_request), token, "?alt=sse")[2])
    parts = [p for e in events for p in e["response"]["candidates"][0]["content"]["parts"]]
    assert parts[0]["functionCall"]["name"] == "a" and parts[0]["functionCall"]["args"] == {"x": 1}
    # without alt=sse: one JSON array of enveloped chunks
    status, headers, data = ca(google, "streamGenerateContent", envelope(google, ALICE), token)
    array = json.loads(data)
    assert headers["content-type"] == "application/json" and isinstance(array, list)
    assert all(set(e) == {"response", "traceId"} for e in array)


def test_envelope_checks(google):
    google.add_account(ALICE)
    google.add_account(BOB, onboarded=False)
    token = google.credentials(ALICE)["access_token"]
    good = envelope(google, ALICE)

    def status_and_error(body, method="generateContent", query=""):
        status, _, data = ca(google, method, body, token, query)
        return status, json.loads(data)

    for bad in ({k: v for k, v in good.items() if k != "request"},
                {k: v for k, v in good.items() if k != "project"},
                {k: v for k, v in good.items() if k != "model"},
                dict(good, model="models/gemini-2.5-pro"),
                dict(good, contents=HELLO["contents"]),             # unknown top-level field
                dict(good, request=dict(good["request"], bogus=1)),
                HELLO):
        status, body = status_and_error(bad)
        assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT", bad
    status, body = status_and_error(b"not json")
    assert status == 400
    status, body = status_and_error(dict(good, project="someone-elses"))
    assert status == 403 and reasons(error_of(body)) == ["CONSUMER_INVALID"]
    assert isinstance(body, dict)
    status, body = status_and_error(dict(good, project="someone-elses"),
                                    "streamGenerateContent", "?alt=sse")
    assert status == 403 and isinstance(body, list)           # array-wrapped, as fixture 6
    assert error_of(body)["details"][0]["metadata"]["consumer"] == "projects/someone-elses"
    status, body = status_and_error(dict(good, model="gemini-9-ultra"))
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"
    status, body = status_and_error(dict(good, model="gemini-3.5-flash"))
    assert status == 404                                      # sent as gemini-3-flash
    assert status_and_error(dict(good, model="gemini-3-flash"))[0] == 200
    # snake_case request fields, enabled_credit_types and no user_prompt_id are fine
    lenient = {"model": "fake-model", "project": good["project"],
               "enabled_credit_types": ["GOOGLE_ONE_AI"],
               "request": {"contents": HELLO["contents"], "system_instruction": {
                   "parts": [{"text": "be brief"}]}, "generation_config": {}}}
    assert status_and_error(lenient)[0] == 200
    google.strict_fields = False
    assert status_and_error(dict(good, extra=1))[0] == 200
    # not onboarded: no project works
    bob_token = google.credentials(BOB)["access_token"]
    status, _, data = ca(google, "generateContent",
                         envelope(google, BOB), bob_token)
    assert status == 403
    # no bearer at all
    status, _, data = ca(google, "generateContent", good, None)
    assert status == 401 and json.loads(data)["error"]["status"] == "UNAUTHENTICATED"
    status, _, data = call(google, "POST", "/v1internal:generateContent", good,
                           {"x-goog-api-key": "AIza-fake"})
    assert status == 401


def test_model_lists(google):
    assert "gemini-2.5-pro" in google.models and "fake-model" in google.models
    assert "gemini-3.5-flash" not in google.models
    google.add_account(ALICE, models=["gemini-2.5-flash"])
    token = google.credentials(ALICE)["access_token"]
    assert ca(google, "generateContent", envelope(google, ALICE), token)[0] == 404
    assert ca(google, "generateContent", envelope(google, ALICE, model="gemini-2.5-flash"),
              token)[0] == 200


def test_scope_is_checked(google):
    google.add_account(ALICE)
    status, query, _ = consent(google, login_hint=ALICE,
                               scope="https://www.googleapis.com/auth/userinfo.email")
    status, reply = token_call(google, client_fields(
        code=query["code"], redirect_uri=LOOPBACK, grant_type="authorization_code"))
    status, body = ca_json(google, "loadCodeAssist", {}, reply["access_token"])
    assert status == 403 and reasons(body["error"]) == ["ACCESS_TOKEN_SCOPE_INSUFFICIENT"]


def test_count_tokens(google):
    google.add_account(ALICE)
    token = google.credentials(ALICE)["access_token"]
    inner = {"model": "models/gemini-2.5-pro",
             "contents": [{"role": "user", "parts": [{"text": "abcdefgh"}, {"text": "ijkl"}]}]}
    assert ca_json(google, "countTokens", {"request": inner}, token) == (200, {"totalTokens": 3})
    for bad in ({"request": inner, "project": "p"}, {"request": inner, "model": "gemini-2.5-pro"},
                {"request": dict(inner, model="gemini-2.5-pro")}, {}):
        status, body = ca_json(google, "countTokens", bad, token)
        assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT", bad
    status, _ = ca_json(google, "countTokens", {"request": dict(inner, model="models/nope")},
                        token)
    assert status == 404


# -- recording, script and faults ------------------------------------------------------------

def test_recording_helpers(google):
    google.add_account(ALICE)
    google.add_account(BOB)
    a, b = google.credentials(ALICE)["access_token"], google.credentials(BOB)["access_token"]
    ca(google, "generateContent", envelope(google, ALICE), a)
    ca(google, "streamGenerateContent", envelope(google, ALICE), a, "?alt=sse")
    ca(google, "generateContent", envelope(google, BOB), b)
    ca(google, "loadCodeAssist", {}, b)
    ca(google, "generateContent", envelope(google, BOB), "ya29.bogus")
    assert [r["method_name"] for r in google.generate_calls(ALICE)] == [
        "generateContent", "streamGenerateContent"]
    assert len(google.generate_calls(BOB)) == 1 and len(google.generate_calls()) == 4
    assert [r["path"] for r in google.requests_for(BOB)] == [
        "/v1internal:generateContent", "/v1internal:loadCodeAssist"]
    last = google.requests[-1]
    assert last["account"] is None and last["status"] == 401 and last["key"] == "ya29.bogus"
    assert google.generate_calls(ALICE)[0]["json"]["request"]["session_id"] == "session-1"
    assert google.generate_calls(ALICE)[0]["headers"]["authorization"] == "Bearer " + a
    assert google.account(ALICE)["generated"] == {"gemini-2.5-pro": 2}


def test_queue_scripts_generate_calls_only(google):
    google.add_account(ALICE)
    creds = google.credentials(ALICE)
    google.queue(fg.enveloped(fu.json_reply(fu.gemini_text("scripted"))))
    assert refresh(google, creds["refresh_token"])[0] == 200
    assert ca(google, "loadCodeAssist", {}, creds["access_token"])[0] == 200
    status, body = ca_json(google, "generateContent", envelope(google, ALICE),
                           creds["access_token"])
    assert body["response"]["candidates"][0]["content"]["parts"] == [{"text": "scripted"}]
    assert body["traceId"] == google.requests[-1]["trace_id"]
    status, body = ca_json(google, "generateContent", envelope(google, ALICE),
                           creds["access_token"])
    assert body["response"]["candidates"][0]["content"]["parts"] == [
        {"text": "FAKE says hello."}]


def test_faults_by_account_model_and_times(google):
    google.add_account(ALICE)
    google.add_account(BOB)
    a, b = google.credentials(ALICE)["access_token"], google.credentials(BOB)["access_token"]
    google.fault(ALICE, fg.ca_rate_limit(5), model="gemini-2.5-pro", times=2)
    google.fault(ALICE, fg.ca_server_error(), model="gemini-2.5-flash")
    statuses = [ca(google, "generateContent", envelope(google, ALICE), a)[0] for _ in range(3)]
    assert statuses == [429, 429, 200]
    flash = envelope(google, ALICE, model="gemini-2.5-flash")
    assert [ca(google, "generateContent", flash, a)[0] for _ in range(2)] == [503, 503]
    assert ca(google, "generateContent", envelope(google, BOB), b)[0] == 200
    # the fake's own checks come first
    assert ca(google, "generateContent", dict(flash, project="x"), a)[0] == 403
    google.clear_faults(ALICE)
    assert ca(google, "generateContent", flash, a)[0] == 200
    # a validation-required account gets 403 VALIDATION_REQUIRED with its link
    google.account(BOB)["validation_url"] = "https://verify.example/bob"
    status, body = ca_json(google, "generateContent", envelope(google, BOB), b)
    error = error_of(body)
    assert status == 403 and reasons(error) == ["VALIDATION_REQUIRED"]
    assert error["details"][0]["metadata"]["validation_link"] == "https://verify.example/bob"


def fault_reply(google, reply, model="gemini-2.5-pro", stream=False):
    """(status, body bytes) of one generate call answered by `reply`."""
    google.clear_faults()
    google.fault(ALICE, reply)
    token = google.credentials(ALICE)["access_token"]
    status, _, data = ca(google, "streamGenerateContent" if stream else "generateContent",
                         envelope(google, ALICE, model=model), token,
                         "?alt=sse" if stream else "")
    return status, data


@pytest.mark.parametrize("builder, status, reason, array", [
    (lambda: fg.ca_rate_limit(2), 429, "RATE_LIMIT_EXCEEDED", False),
    (lambda: fg.ca_rate_limit_without_retry_info("1.5s"), 429, "RATE_LIMIT_EXCEEDED", False),
    (lambda: fg.ca_rate_limit_message_only("reset after 3s."), 429, None, False),
    (lambda: fg.ca_daily_quota(), 429, "QUOTA_EXHAUSTED", True),
    (lambda: fg.ca_daily_quota(array=False), 429, "QUOTA_EXHAUSTED", False),
    (lambda: fg.ca_capacity(), 429, "MODEL_CAPACITY_EXHAUSTED", False),
    (lambda: fg.ca_legacy_daily(), 429, "RATE_LIMIT_EXCEEDED", False),
    (lambda: fg.ca_bare_429(), 429, None, False),
    (lambda: fg.ca_credits(), 429, "INSUFFICIENT_G1_CREDITS_BALANCE", False),
    (lambda: fg.ca_forbidden("consumer_invalid"), 403, "CONSUMER_INVALID", True),
    (lambda: fg.ca_forbidden("iam_denied"), 403, "IAM_PERMISSION_DENIED", True),
    (lambda: fg.ca_forbidden("no_license"), 403, "SUBSCRIPTION_REQUIRED", False),
    (lambda: fg.ca_forbidden("validation_required"), 403, "VALIDATION_REQUIRED", False),
    (lambda: fg.ca_forbidden("no_details"), 403, None, False),
    (lambda: fg.ca_not_found(), 404, None, False),
    (lambda: fg.ca_server_error(), 503, None, False),
    (lambda: fg.ca_server_error(500), 500, None, False),
    (lambda: fg.ca_odd_json_error("odd_domain"), 429, "RATE_LIMIT_EXCEEDED", False),
])
def test_error_builders(google, builder, status, reason, array):
    google.add_account(ALICE)
    got, data = fault_reply(google, builder())
    body = json.loads(data)
    assert got == status and isinstance(body, list) == array
    error = error_of(body)
    assert error["code"] == status and error["message"]
    assert error["status"] == fu.GOOGLE_STATUS[status]
    assert reasons(error) == ([reason] if reason else [])
    expected = builder().body_for(model="gemini-2.5-pro",
                                  project=google.account(ALICE)["project"],
                                  account=google.account(ALICE))
    assert without_timestamps(body) == without_timestamps(expected)


def without_timestamps(value):
    """`value` without quotaResetTimeStamp keys (they move with the clock)."""
    if isinstance(value, dict):
        return {k: without_timestamps(v) for k, v in value.items()
                if k != "quotaResetTimeStamp"}
    if isinstance(value, list):
        return [without_timestamps(v) for v in value]
    return value


def test_error_builder_details():
    limit = fg.ca_rate_limit(2).body_for(model="gemini-2.5-pro")["error"]
    info = detail(limit, "ErrorInfo")
    assert info["domain"] == fg.CA_DOMAIN and info["metadata"]["model"] == "gemini-2.5-pro"
    assert info["metadata"]["quotaResetDelay"] == "2s"
    assert info["metadata"]["quotaResetTimeStamp"].endswith("Z")
    assert detail(limit, "RetryInfo")["retryDelay"] == "2s" and "reset after 2s" in \
        limit["message"]
    assert fg.ca_rate_limit(0.5).body_for()["error"]["details"][0]["metadata"][
        "quotaResetDelay"] == "500ms"
    only_meta = fg.ca_rate_limit_without_retry_info("1.5s").body_for()["error"]
    assert [d["@type"] for d in only_meta["details"]] == [fg.ERROR_INFO]
    assert only_meta["details"][0]["metadata"]["quotaResetDelay"] == "1.5s"
    assert "1.5" not in only_meta["message"]
    message = fg.ca_rate_limit_message_only("reset after 3s.").body_for()["error"]
    assert message["message"].endswith("reset after 3s.") and "details" not in message
    daily = fg.ca_daily_quota("19h14m47s").body_for(model="m")[0]["error"]
    assert "reset after 19h14m47s" in daily["message"]
    assert detail(daily, "RetryInfo")["retryDelay"] == "69287s"
    assert detail(daily, "ErrorInfo")["metadata"]["model"] == "m"
    capacity = fg.ca_capacity("gemini-3.1-pro-preview").body_for()["error"]
    assert [d["@type"] for d in capacity["details"]] == [fg.ERROR_INFO]
    assert "gemini-3.1-pro-preview" in capacity["message"]
    legacy = fg.ca_legacy_daily().body_for()["error"]
    assert legacy["errors"][0]["reason"] == "rateLimitExceeded"
    assert "PerDay" in detail(legacy, "ErrorInfo")["metadata"]["quota_limit"]
    assert detail(legacy, "ErrorInfo")["domain"] == "googleapis.com"
    assert "per day" in legacy["message"]
    validation = fg.ca_forbidden("validation_required", url="https://v.example/x").body_for()
    assert detail(validation["error"], "Help")["links"][0]["url"] == "https://v.example/x"
    assert detail(validation["error"], "ErrorInfo")["domain"] == fg.CA_DOMAIN
    iam = fg.ca_forbidden("iam_denied", project="p-1").body_for()[0]["error"]
    assert detail(iam, "ErrorInfo")["metadata"]["resource"] == "projects/p-1/locations/global"
    with pytest.raises(ValueError):
        fg.ca_forbidden("sulking")
    with pytest.raises(ValueError):
        fg.ca_odd_json_error("nice")


def test_error_builders_take_the_request_model_and_project(google):
    google.add_account(ALICE)
    status, data = fault_reply(google, fg.ca_capacity(), model="gemini-3-flash")
    assert detail(error_of(json.loads(data)), "ErrorInfo")["metadata"]["model"] == \
        "gemini-3-flash"
    status, data = fault_reply(google, fg.ca_not_found(), model="gemini-3-flash")
    assert "gemini-3-flash" in error_of(json.loads(data))["message"]
    status, data = fault_reply(google, fg.ca_forbidden("iam_denied"))
    assert google.account(ALICE)["project"] in error_of(json.loads(data))["message"]
    status, data = fault_reply(google, fg.ca_daily_quota(), stream=True)
    assert status == 429 and isinstance(json.loads(data), list)


def test_odd_error_bodies(google):
    google.add_account(ALICE)
    status, data = fault_reply(google, fg.ca_odd_json_error())
    assert status == 429
    with pytest.raises(ValueError):
        json.loads(data)
    text = data.decode()
    assert '"reason": "RATE_LIMIT_EXCEEDED"' in text and '"retryDelay": "2s"' in text
    assert ',\n, "metadata"' in text
    status, data = fault_reply(google, fg.ca_odd_json_error("odd_domain"))
    domain = detail(json.loads(data)["error"], "ErrorInfo")["domain"]
    assert domain != fg.CA_DOMAIN and domain.strip(" ,\n") == fg.CA_DOMAIN
    status, data = fault_reply(google, fg.ca_odd_json_error("not_json"))
    assert status == 502 and data.startswith(b"<html>")


def test_enveloped_wraps_any_gemini_reply(google):
    google.add_account(ALICE)
    calls = [("c1", "f", {"a": 1}, "sig")]
    status, data = fault_reply(google, fg.enveloped(fu.gemini_call_stream(calls)), stream=True)
    events = sse_events(data)
    assert all(set(e) == {"response", "traceId"} for e in events)
    assert events[0]["response"]["candidates"][0]["content"]["parts"][0]["functionCall"][
        "id"] == "c1"
    # error events and bodies pass through unwrapped
    stream = fu.gemini_stream([fu.gemini_chunk([fu.gemini_text_part("first")]),
                               fu.gemini_error_body(500, "mid-stream")], form="sse")
    events = sse_events(fault_reply(google, fg.enveloped(stream), stream=True)[1])
    assert "response" in events[0] and events[1] == fu.gemini_error_body(500, "mid-stream")
    status, data = fault_reply(google, fg.enveloped(fu.gemini_error(429)))
    assert status == 429 and "response" not in json.loads(data)


def test_slow_stream(google):
    google.add_account(ALICE)
    token = google.credentials(ALICE)["access_token"]
    google.fault(ALICE, fg.slow_stream(0.001))
    status, _, data = ca(google, "streamGenerateContent", envelope(google, ALICE), token,
                         "?alt=sse")
    events = sse_events(data)
    assert status == 200 and len(events) >= 2
    assert "".join(p["text"] for e in events
                   for p in e["response"]["candidates"][0]["content"]["parts"]) == \
        "FAKE says hello."
    assert events[-1]["response"]["usageMetadata"]["totalTokenCount"] == 18


def test_slow_stream_ends_when_the_fake_stops():
    fake = FakeGoogle().start()
    fake.add_account(ALICE)
    token = fake.credentials(ALICE)["access_token"]
    fake.fault(ALICE, fg.slow_stream(3600))
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=PATIENCE)
    conn.request("POST", "/v1internal:streamGenerateContent?alt=sse",
                 json.dumps(envelope(fake, ALICE)),
                 {"authorization": "Bearer " + token, "content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200       # the head is out; the first event waits
    wait_for(lambda: fake.busy == 1)
    fake.stop()
    with pytest.raises((http.client.HTTPException, OSError)):
        response.read()
    conn.close()


# -- running it alone ------------------------------------------------------------------------

def test_main_prints_its_url_and_writes_credentials():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "oauth_creds.json")
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_google.py")
        proc = subprocess.Popen([sys.executable, script, "0", path], stdout=subprocess.PIPE,
                                universal_newlines=True)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(
            proc.stdout.readline() for _ in range(3)))
        reader.start()
        try:
            reader.join(PATIENCE)
            assert len(lines) == 3, lines
            assert lines[0].startswith("fake Google") and "http://127.0.0.1:" in lines[0]
            assert path in lines[2]
            with open(path) as f:
                creds = json.load(f)
            assert set(creds) >= {"access_token", "refresh_token", "expiry_date"}
            assert os.stat(path).st_mode & 0o777 == 0o600
            port = int(lines[0].rsplit(":", 1)[1])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PATIENCE)
            conn.request("POST", "/v1internal:loadCodeAssist", "{}",
                         {"authorization": "Bearer " + creds["access_token"],
                          "content-type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["cloudaicompanionProject"] == "backend-alice"
            conn.close()
        finally:
            proc.terminate()
            proc.wait(PATIENCE)
            proc.stdout.close()
