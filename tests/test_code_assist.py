"""The Code Assist upstream as units (section 14, the pure half, and the account pool of
sections 18-19): the envelope both ways, error kinds and the rest each gives an account,
credential files in their four shapes, the OAuth URLs. End to end through the server
against a fake Google: test_code_assist_e2e.py."""

import base64
import json

import pytest

import gemini_proxy as gp

SCOPES = " ".join(gp.GOOGLE_SCOPES)


def jwt(claims):
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return "%s.%s.c2lnbmF0dXJl" % (part({"alg": "RS256"}), part(claims))


# -- the envelope ------------------------------------------------------------------------------

def chat(text="hello", **fields):
    return gp.Chat(messages=[gp.Message("user", [gp.Part(gp.TEXT, text=text)])], **fields)


def test_a_request_goes_inside_the_envelope_with_the_accounts_project_and_session():
    options = dict(gp.UPSTREAM_DEFAULTS, envelope={
        "project": "proj-a", "user_prompt_id": "rid-1", "session_id": "conv-9"})
    body = gp.encode_code_assist_request(chat(system=[gp.Part(gp.TEXT, text="be brief")]),
                                         "gemini-2.5-pro", options)
    assert body["model"] == "gemini-2.5-pro" and body["project"] == "proj-a"
    assert body["user_prompt_id"] == "rid-1"
    request = body["request"]
    assert request["session_id"] == "conv-9"
    assert request["contents"] == [{"role": "user", "parts": [{"text": "hello"}]}]
    assert request["systemInstruction"] == {"parts": [{"text": "be brief"}]}


def test_model_names_are_sent_bare_and_renamed_as_gemini_cli_renames_them():
    assert gp.code_assist_model("models/gemini-2.5-flash") == "gemini-2.5-flash"
    assert gp.code_assist_model("gemini-3.5-flash") == "gemini-3-flash"
    options = dict(gp.UPSTREAM_DEFAULTS, envelope={"project": "p"})
    assert gp.encode_code_assist_request(chat(), "gemini-3.5-flash", options)["model"] == \
        "gemini-3-flash"


def test_no_session_means_no_session_id_and_no_prompt_id():
    body = gp.encode_code_assist_request(chat(), "m", dict(gp.UPSTREAM_DEFAULTS,
                                                          envelope={"project": "p"}))
    assert "session_id" not in body["request"] and "user_prompt_id" not in body


def test_count_tokens_sends_only_the_model_and_contents():
    body = gp.encode_code_assist_count_request(chat(tools=[gp.Tool("f", "", {
        "type": "object"})]), "gemini-2.5-pro")
    assert body == {"request": {"model": "models/gemini-2.5-pro", "contents": [
        {"role": "user", "parts": [{"text": "hello"}]}]}}


def usage_node(prompt=9, out=4):
    return {"promptTokenCount": prompt, "candidatesTokenCount": out, "totalTokenCount": 13}


@pytest.mark.parametrize("where", ["response.usageMetadata", "response.usage_metadata",
                                   "usageMetadata", "usage_metadata"])
def test_usage_is_read_wherever_code_assist_puts_it(where):
    reply = {"response": {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "hi"}]}, "finishReason": "STOP"}]}, "traceId": "t1"}
    if where.startswith("response."):
        reply["response"][where.split(".")[1]] = usage_node()
    else:
        reply[where] = usage_node()
    decoded = gp.decode_code_assist_response(reply)
    assert decoded.usage.input_tokens == 9 and decoded.usage.output_tokens == 4
    assert not decoded.usage.estimated


def test_a_usage_node_without_counts_is_not_taken_for_usage():
    reply = {"response": {"candidates": [{"content": {"parts": [{"text": "hi"}]},
                                          "finishReason": "STOP"}],
                          "usageMetadata": usage_node(5, 1)},
             "usage_metadata": {"trafficType": "ON_DEMAND"}}
    assert gp.decode_code_assist_response(reply).usage.input_tokens == 5


def test_a_reply_without_a_response_is_an_upstream_failure_not_an_empty_answer():
    with pytest.raises(gp.UpstreamError) as caught:
        gp.decode_code_assist_response({"traceId": "t"})
    assert caught.value.status == 502


def sse(objects):
    return [("", o if isinstance(o, str) else json.dumps(o)) for o in objects]


def test_stream_events_are_unwrapped_and_a_malformed_event_is_skipped():
    events = list(gp.decode_code_assist_stream(sse([
        {"response": {"candidates": [{"content": {"role": "model", "parts": [
            {"text": "thinking", "thought": True, "thoughtSignature": "sig-1"}]}}]},
         "traceId": "a"},
        "{not json",
        {"response": {"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "read", "args": {"path": "x"}},
             "thoughtSignature": "sig-2"}]}}]}},
        {"response": {"candidates": [{"content": {"role": "model", "parts": []},
                                      "finishReason": "STOP"}],
                      "usageMetadata": usage_node(20, 6)}}])))
    parts = [e for e in events if isinstance(e, gp.Part)]
    assert [p.type for p in parts] == [gp.THINKING, gp.TOOL_CALL]
    assert parts[1].name == "read" and parts[1].args == {"path": "x"}
    assert parts[1].signature == "sig-2"
    finish = events[-1]
    assert finish.reason == gp.TOOL_CALLS and finish.usage.input_tokens == 20


def test_a_stream_that_never_finishes_fails_even_when_its_events_were_skipped():
    with pytest.raises(gp.UpstreamError):
        list(gp.decode_code_assist_stream(sse(["{", "nope"])))


def test_an_error_in_the_stream_is_raised_in_either_shape():
    body = {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}
    for shape in (body, [body]):
        error = gp.code_assist_stream_error(json.dumps(shape))
        assert error is not None and error.status == 429


# -- errors: what each says about the account -------------------------------------------------

def info(reason, metadata=None, domain="cloudcode-pa.googleapis.com"):
    return {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
            "domain": domain, "metadata": metadata or {}}


def body(code, message, details=(), status=None):
    error = {"code": code, "message": message, "details": list(details)}
    if status:
        error["status"] = status
    return {"error": error}


def decode(status, payload):
    return gp.decode_code_assist_error(status, payload, {})


def test_a_short_rate_limit_rests_for_the_retry_info_time():
    error = decode(429, body(429, "Your quota will reset after 0s.", [
        info("RATE_LIMIT_EXCEEDED", {"quotaResetDelay": "539.477544ms"}),
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.539477544s"}]))
    assert error.status == 429 and error.key_verdict == "rest_for_model"
    assert error.retry_after == pytest.approx(0.539477544)


def test_without_retry_info_the_quota_reset_delay_gives_the_time():
    error = decode(429, body(429, "quota", [info("RATE_LIMIT_EXCEEDED", {
        "quotaResetDelay": "13h19m1.5s"})]))
    assert error.retry_after == pytest.approx(13 * 3600 + 19 * 60 + 1.5)


def test_without_either_the_words_give_the_time():
    assert decode(429, body(429, "Your quota will reset after 19h14m47s.")).retry_after == \
        19 * 3600 + 14 * 60 + 47
    assert decode(429, body(429, "Please retry in 54.5s")).retry_after == 54.5


def test_daily_exhaustion_in_an_array_rests_until_the_reset():
    payload = [body(429, "reset after 19h14m47s.", [
        info("QUOTA_EXHAUSTED"),
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "68940s"}])]
    error = decode(429, payload)
    assert error.reason == "QUOTA_EXHAUSTED" and error.retry_after == 68940
    assert error.key_verdict == "rest_for_model"     # for Google's time, not a guess


def test_server_capacity_rests_no_account():
    error = decode(429, body(429, "No capacity available for model gemini-3.1-pro-preview on "
                                  "the server", [info("MODEL_CAPACITY_EXHAUSTED")]))
    assert error.key_verdict == "keep"
    words_only = decode(429, body(429, "No capacity available for model x on the server"))
    assert words_only.key_verdict == "keep"


def test_a_bare_429_has_no_time_and_rests_by_the_pools_own_doubling():
    error = decode(429, body(429, "Resource has been exhausted (e.g. check quota).",
                             status="RESOURCE_EXHAUSTED"))
    assert error.retry_after is None and error.key_verdict == ""


@pytest.mark.parametrize("reason", ["CONSUMER_INVALID", "IAM_PERMISSION_DENIED",
                                    "SUBSCRIPTION_REQUIRED", ""])
def test_a_403_takes_the_account_out(reason):
    details = [info(reason, domain="googleapis.com")] if reason else []
    error = decode(403, [body(403, "Permission denied on resource project default.", details,
                              "PERMISSION_DENIED")])
    assert error.status == 403 and error.key_verdict == "out"
    assert gp.refusal_scope(error) == "*"


def test_validation_required_names_where_to_verify():
    error = decode(403, body(403, "Verify your account.", [
        info("VALIDATION_REQUIRED", {"validation_link": "https://accounts.example/verify"})]))
    assert error.key_verdict == "out"
    assert "https://accounts.example/verify" in error.message


def test_a_404_takes_the_account_out_for_that_model_only():
    error = decode(404, body(404, "Requested entity was not found.", status="NOT_FOUND"))
    assert gp.refusal_scope(error) == "model"


def test_a_body_with_a_stray_character_is_still_read():
    text = ('{"error": {"code": 429, "message": "slow down", "details": [{"@type": '
            '"type.googleapis.com/google.rpc.ErrorInfo", "reason": "MODEL_CAPACITY_EXHAUSTED",'
            ', "metadata": {}}]}}')
    error = decode(429, text)
    assert error.status == 429 and error.message == "slow down"
    assert error.key_verdict == "keep"


@pytest.mark.parametrize("text, seconds", [
    ("54s", 54), ("373.801628ms", 0.373801628), ("1h2m3s", 3723), ("1.5s", 1.5),
    ("", None), ("5 minutes", None), ("12", None)])
def test_go_durations(text, seconds):
    got = gp.parse_go_duration(text)
    assert got == (pytest.approx(seconds) if seconds is not None else None)


def test_the_pool_rests_an_account_for_a_model_not_for_capacity():
    spec = dict(gp.UPSTREAM_DEFAULTS, cooldown_jitter=0.0)
    keys = gp.KeyPool("google", ["a", "b"], spec, "code-assist")
    state = keys.acquire("gemini-2.5-pro")
    keys.failed(state, "gemini-2.5-pro", decode(429, body(429, "reset after 30s.")))
    keys.release(state)
    assert set(state.cooling) == {"gemini-2.5-pro"}       # other models still usable
    other = keys.acquire("gemini-2.5-pro")
    assert other is not state
    keys.failed(other, "gemini-2.5-pro", decode(429, body(429, "x", [
        info("MODEL_CAPACITY_EXHAUSTED")])))
    keys.release(other)
    assert other.cooling == {}
    assert keys.acquire("gemini-2.5-pro") is other


def test_a_rest_of_the_whole_account_covers_every_model():
    spec = dict(gp.UPSTREAM_DEFAULTS, cooldown_jitter=0.0)
    keys = gp.KeyPool("google", ["a"], spec, "code-assist")
    state = keys.acquire("m1")
    keys.failed(state, "m1", gp.UpstreamError("token endpoint down", status=503,
                                              retry_after=60, key_verdict="rest"))
    keys.release(state)
    why = keys.acquire("m2")
    assert isinstance(why, gp.KeysUnavailable) and why.status == 429
    assert 55 < why.retry_after <= 60


# -- credential files --------------------------------------------------------------------------

def test_gemini_cli_file_has_its_expiry_in_milliseconds_and_email_in_the_id_token():
    credential = gp.parse_google_credential({
        "access_token": "ya29.a", "refresh_token": "1//r", "scope": SCOPES,
        "token_type": "Bearer", "id_token": jwt({"email": "ann@example.com"}),
        "expiry_date": 1795446000000}, "/x/oauth_creds.json")
    assert credential.expires_at == 1795446000.0
    assert credential.email == "ann@example.com" and credential.access_token == "ya29.a"
    assert credential.client_id == "" and credential.project == ""


@pytest.mark.parametrize("expiry", ["2026-11-23T15:57:25.701208+00:00",
                                    "2026-11-23T15:57:25.701208Z",
                                    "2026-11-23T15:57:25.701208"])
def test_google_auth_file_with_an_iso_expiry_in_any_of_its_forms(expiry):
    credential = gp.parse_google_credential({
        "token": "ya29.b", "refresh_token": "1//r2", "client_id": "cid", "client_secret": "cs",
        "token_uri": "https://oauth2.googleapis.com/token", "scopes": list(gp.GOOGLE_SCOPES),
        "expiry": expiry, "project_id": "gen-lang-client-1"}, "/x/g.json")
    assert credential.access_token == "ya29.b" and credential.project == "gen-lang-client-1"
    assert credential.client_id == "cid" and credential.client_secret == "cs"
    assert credential.expires_at == pytest.approx(1795449445.701208)


def test_cliproxy_file_with_a_nested_token_and_a_list_of_projects():
    credential = gp.parse_google_credential({
        "type": "gemini", "email": "bo@example.com", "project_id": "proj-a,proj-b",
        "token": {"access_token": "ya29.c", "refresh_token": "1//r3",
                  "expiry": "2026-11-23T15:57:25Z", "client_id": "cid2",
                  "client_secret": "cs2"}}, "/x/gemini-bo.json")
    assert credential.refresh_token == "1//r3" and credential.access_token == "ya29.c"
    assert credential.project == "proj-a" and credential.email == "bo@example.com"
    assert credential.client_id == "cid2"


def test_a_raw_token_reply_has_no_expiry_so_its_token_is_refreshed_before_use():
    credential = gp.parse_google_credential({
        "access_token": "ya29.d", "expires_in": 3599, "refresh_token": "1//r4",
        "scope": SCOPES, "token_type": "Bearer"}, "/x/t.json")
    assert credential.expires_at == 0 and credential.access_token == ""


@pytest.mark.parametrize("data", [[], {"access_token": "ya29.e"}, {"refresh_token": 5}])
def test_a_file_without_a_refresh_token_is_no_credential(data):
    with pytest.raises(ValueError):
        gp.parse_google_credential(data, "/x/bad.json")


# -- OAuth ------------------------------------------------------------------------------------

def test_pkce_challenge_known_answer_from_rfc_7636():
    assert gp.pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == \
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_the_paste_flows_consent_address_asks_for_offline_access_with_pkce():
    url = gp.google_auth_url(gp.GOOGLE_AUTH_URL, gp.GOOGLE_CLIENT_ID, gp.GOOGLE_PASTE_REDIRECT,
                             "st4te", "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
    base, _, query = url.partition("?")
    fields = dict(gp.urllib.parse.parse_qsl(query))
    assert base == "https://accounts.google.com/o/oauth2/v2/auth"
    assert fields["redirect_uri"] == "https://codeassist.google.com/authcode"
    assert fields["access_type"] == "offline" and fields["response_type"] == "code"
    assert fields["scope"] == SCOPES and fields["state"] == "st4te"
    assert fields["code_challenge_method"] == "S256"
    assert fields["code_challenge"] == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert "%20" in query and "+" not in query     # scopes space-joined, as Google's own


def test_the_browser_flows_address_has_no_pkce():
    url = gp.google_auth_url("http://127.0.0.1:9/auth", "cid",
                             "http://127.0.0.1:5/oauth2callback", "s")
    assert "code_challenge" not in url and url.startswith("http://127.0.0.1:9/auth?")


# -- project discovery -------------------------------------------------------------------------

def test_an_onboarded_account_gives_its_project_and_a_paid_tier_wins():
    assert gp.read_code_assist_setup({"currentTier": {"id": "free-tier"},
                                      "cloudaicompanionProject": "gen-1"}, "") == \
        {"project": "gen-1", "tier": "free-tier"}
    assert gp.read_code_assist_setup({"currentTier": {"id": "standard-tier"},
                                      "paidTier": {"id": "g1-pro-tier"},
                                      "cloudaicompanionProject": {"id": "gen-2"}}, "") == \
        {"project": "gen-2", "tier": "g1-pro-tier"}


def test_an_account_without_a_tier_is_onboarded_to_the_default_one():
    assert gp.read_code_assist_setup({"allowedTiers": [
        {"id": "free-tier", "isDefault": True}, {"id": "standard-tier"}]}, "") == \
        {"onboard": "free-tier"}
    assert gp.read_code_assist_setup({}, "") == {"onboard": "legacy-tier"}


def test_an_account_to_verify_says_where():
    found = gp.read_code_assist_setup({"ineligibleTiers": [{
        "reasonCode": "VALIDATION_REQUIRED", "reasonMessage": "Verify your account.",
        "validationUrl": "https://accounts.example/v"}]}, "")
    assert "https://accounts.example/v" in found["error"]


def test_a_tier_without_any_project_asks_for_one():
    assert "project" in gp.read_code_assist_setup({"currentTier": {"id": "standard-tier"}},
                                                  "")["error"]
    assert gp.read_code_assist_setup({"currentTier": {"id": "standard-tier"}}, "mine") == \
        {"project": "mine", "tier": "standard-tier"}


def test_the_onboarded_project_may_be_an_object_or_an_id():
    assert gp.onboarded_project({"done": True, "response": {
        "cloudaicompanionProject": {"id": "backend-1", "name": "x"}}}) == "backend-1"
    assert gp.onboarded_project({"done": True, "response": {
        "cloudaicompanionProject": "backend-2"}}) == "backend-2"
    assert gp.onboarded_project({"done": True}) == ""


def test_google_tokens_never_survive_redaction():
    redactor = gp.Redactor()
    text = 'token ya29.a0AfB_by-x.y refresh 1//0gAbC-d_e9 in "1//0gXYZxyz12"'
    assert redactor.text(text) == 'token [REDACTED] refresh [REDACTED] in "[REDACTED]"'
    assert redactor.text("a path //1//x and 11//2") == "a path //1//x and 11//2"
    # each kind alone: text is searched only when it holds a start, and every start counts
    assert redactor.text("refresh 1//0gAbC-d_e9 only") == "refresh [REDACTED] only"
    assert redactor.text("access ya29.a0AfB only") == "access [REDACTED] only"
    for query in ("key", "api_key", "access_token"):
        assert redactor.text("GET /m?alt=sse&%s=s3cr3t-v4lue HTTP" % query) == \
            "GET /m?alt=sse&%s=[REDACTED] HTTP" % query
    plain = "nothing secret here: key, token, 1/2"
    assert redactor.text(plain) == plain
