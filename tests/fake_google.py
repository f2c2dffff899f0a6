"""A fake Google for tests: the OAuth side Gemini CLI logs in with and the Code Assist API
(`cloudcode-pa.googleapis.com/v1internal`) it then talks to, on one 127.0.0.1 port.

`FakeGoogle().start()`; base_url is its root: the proxy's Code Assist base_url is that root
(method URL `/v1internal:<method>`, operation URL `/v1internal/<operation name>`), and its
OAuth endpoints are `token_url` (POST /token), `auth_url` (GET /auth, the consent page),
`userinfo_url` (GET /userinfo), plus GET|POST /tokeninfo and POST /revoke. stop() when done.

Accounts are added with add_account(); credentials(email, fmt) hands out a credential file
for one, in any of the four formats of PROTOCOLS-2 A.5, with freshly issued tokens. Every
Code Assist call needs `Authorization: Bearer <live access token>`.

Generation answers like FakeGemini (the rule-based model of fake_upstream.py: CALL
directives become function calls, tool results are summarised, a thought leads when asked
for), on the GenerateContentRequest inside the envelope, each reply or SSE event wrapped as
`{"response": ..., "traceId": ...}`. fault() makes an account's generate calls answer with a
scripted reply instead; the `ca_*` builders below make Code Assist's error replies
(PROTOCOLS-2 A.11 shapes, our own text). queue() scripts the next generate calls of any
account (after the fake's own checks, after faults). Reply functions are those of
fake_upstream.py: (handler, request_json) -> writes a whole response; here request_json is
the whole envelope. Waits use handler.pause(), which ends as soon as the fake stops.

Run alone with `python tests/fake_google.py PORT [CREDS_PATH]`.
"""

import base64
import hashlib
import itertools
import json
import os
import re
import secrets
import sys
import threading
import time
from datetime import datetime, timezone
from urllib.parse import parse_qsl, urlencode, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_upstream import (FakeGemini, FakeHandler, FakeStopped, Gate,  # noqa: E402
                           fake_token_count, gemini_error_body, json_reply, raw_reply,
                           request_key)

# Gemini CLI's public installed-app OAuth client (gemini-cli packages/core/src/code_assist/
# oauth2.ts, OAUTH_CLIENT_ID / OAUTH_CLIENT_SECRET; PROTOCOLS-2 A.1).
GEMINI_CLI_CLIENT_ID = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
GEMINI_CLI_CLIENT_SECRET = "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"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform",
          "https://www.googleapis.com/auth/userinfo.email",
          "https://www.googleapis.com/auth/userinfo.profile"]
CLOUD_PLATFORM = SCOPES[0]
CODEASSIST_REDIRECT = "https://codeassist.google.com/authcode"

# The concrete model ids Gemini CLI sends (PROTOCOLS-2 A.10). Not "gemini-3.5-flash": the
# CLI sends that one as "gemini-3-flash", and the backend does not know the other name.
CODE_ASSIST_MODELS = ["gemini-3-pro-preview", "gemini-3.1-pro-preview",
                      "gemini-3.1-pro-preview-customtools", "gemini-3-flash-preview",
                      "gemini-2.5-pro", "gemini-2.5-flash", "gemini-3-flash",
                      "gemini-3.1-flash-lite", "gemma-4-31b-it", "gemma-4-26b-a4b-it"]

CA_DOMAIN = "cloudcode-pa.googleapis.com"
COMPANION_DOMAIN = "cloudaicompanion.googleapis.com"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
HELP = "type.googleapis.com/google.rpc.Help"

GENERATE_METHODS = ("generateContent", "streamGenerateContent")
CA_METHOD = re.compile(r"/v1internal:(\w+)\Z")
CA_OPERATION = re.compile(r"/v1internal/(.+)\Z")
ENVELOPE_FIELDS = {"model", "project", "user_prompt_id", "userPromptId", "request",
                   "enabled_credit_types", "enabledCreditTypes"}
REQUEST_FIELDS = {"contents", "systemInstruction", "system_instruction", "cachedContent",
                  "cached_content", "tools", "toolConfig", "tool_config", "labels",
                  "safetySettings", "safety_settings", "generationConfig",
                  "generation_config", "session_id", "sessionId"}
TIER_NAMES = {"free-tier": "Gemini Code Assist for individuals (fake)",
              "standard-tier": "Gemini Code Assist Standard (fake)",
              "legacy-tier": "Gemini Code Assist legacy (fake)",
              "g1-pro-tier": "Gemini Code Assist in Google One AI Pro (fake)",
              "g1-ultra-tier": "Gemini Code Assist in Google One AI Ultra (fake)"}


# == small helpers ===========================================================================

def b64url(data):
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_challenge(verifier):
    """The S256 code_challenge of a PKCE code_verifier (RFC 7636 4.2)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def fake_id_token(email, subject, audience, issued=None, lifetime=3600):
    """An unsigned JWT-shaped id_token: base64url(header).base64url(payload).signature."""
    issued = int(time.time() if issued is None else issued)
    header = {"alg": "RS256", "kid": "fake-google-key", "typ": "JWT"}
    payload = {"iss": "https://accounts.google.com", "azp": audience, "aud": audience,
               "sub": subject, "email": email, "email_verified": True,
               "iat": issued, "exp": issued + lifetime}
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()),
                     b64url(b"fake-signature-not-checked")])


def jwt_payload(token):
    """The payload of a JWT-shaped string (no signature check)."""
    middle = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(middle + "=" * (-len(middle) % 4)))


def _number(value):
    """A number without a float's noise: 2 -> "2", 1.5 -> "1.5", 0.0005 -> "0.0005"."""
    if float(value) == int(value):
        return "%d" % int(value)
    return ("%.9f" % value).rstrip("0").rstrip(".")


def proto_duration(seconds):
    """A protobuf Duration as JSON: "2s", "0.5s", "68940s"."""
    return _number(seconds) + "s"


def go_duration(seconds):
    """A Go time.Duration string: "500ms", "1.5s", "2m3s", "19h14m47s", "1h0m0s"."""
    if seconds < 1:
        return _number(round(seconds * 1000, 6)) + "ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = "%dh" % hours if hours else ""
    out += "%dm" % minutes if hours or minutes else ""
    return out + _number(round(secs, 9)) + "s"


def go_seconds(text):
    """Seconds of a Go duration string ("19h14m47s", "373.8ms", "1.5s")."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError("not a Go duration: %r" % text)
    return sum(float(n) * units[u] for n, u in parts)


def rfc3339(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _local_slug(email):
    return re.sub(r"[^a-z0-9]+", "-", email.split("@")[0].lower()).strip("-") or "user"


def tier_info(tier_id, default=None):
    """A tier object as loadCodeAssist lists it (display strings are ours)."""
    info = {"id": tier_id, "name": TIER_NAMES.get(tier_id, "Fake tier %s" % tier_id),
            "description": "A tier of the fake Code Assist backend.",
            "userDefinedCloudaicompanionProject": tier_id != "free-tier",
            "privacyNotice": {"showNotice": tier_id == "free-tier",
                              "noticeText": "Fake privacy notice."}}
    if default is not None:
        info["isDefault"] = default
    return info


# == a view of the handler, with some of its methods replaced ===============================

class HandlerView:
    """What a reply sees instead of the handler: `overrides` (name -> function) replace the
    handler's methods; every other attribute, read or written, is the handler's own. A reply
    that replaces a method on it (as fake_upstream.pause_after does) replaces it on the view
    only, so nothing sticks to the connection's handler for its next request."""

    def __init__(self, handler, **overrides):
        object.__setattr__(self, "_handler", handler)
        object.__setattr__(self, "_overrides", overrides)

    def __getattr__(self, name):
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "_handler"), name)

    def __setattr__(self, name, value):
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            overrides[name] = value
        else:
            setattr(object.__getattribute__(self, "_handler"), name, value)


def trace_id_for(handler):
    """The traceId of the request being answered: "0fa4e" + its record number in hex."""
    record = getattr(handler, "record", None)
    if not isinstance(record, dict):
        return secrets.token_hex(8)
    if "trace_id" not in record:
        record["trace_id"] = "0fa4e%011x" % (record.get("number") or 0)
    return record["trace_id"]


def _wrappable(obj):
    return isinstance(obj, dict) and "response" not in obj and "error" not in obj


def envelope(body, trace_id):
    """A GenerateContentResponse in Code Assist's envelope."""
    return {"response": body, "traceId": trace_id}


def enveloped(reply, trace_id=None):
    """`reply` (any Gemini API reply of fake_upstream.py, or faults.py) as Code Assist sends
    it: a 200 JSON body, every SSE `data:` event and every element of a JSON-array stream that
    is a GenerateContentResponse (a dict without "response" or "error") gets wrapped as
    {"response": <it>, "traceId": <trace_id>}; everything else goes out unchanged. Each write
    of the wrapped reply must hold whole events (fake_upstream's stream builders do)."""
    def wrapped(handler, request):
        tid = trace_id or trace_id_for(handler)
        mode = {"sse": True}

        def rewrite(data):
            text = data.decode("utf-8")
            if mode["sse"]:
                out = []
                for piece in re.split(r"(?<=\n\n)", text):
                    if piece.startswith("data: ") and piece.endswith("\n\n"):
                        try:
                            obj = json.loads(piece[len("data: "):-2])
                        except ValueError:
                            obj = None
                        if _wrappable(obj):
                            piece = "data: %s\n\n" % json.dumps(envelope(obj, tid))
                    out.append(piece)
                return "".join(out).encode("utf-8")
            match = re.match(r"(\s*[\[,]?\s*)(.*)\Z", text, re.S)
            try:
                obj = json.loads(match.group(2))
            except ValueError:
                return data
            if not _wrappable(obj):
                return data
            return (match.group(1) + json.dumps(envelope(obj, tid))).encode("utf-8")

        def send_body(status, body, content_type, headers=None):
            if status == 200 and content_type.startswith("application/json"):
                try:
                    obj = json.loads(body)
                except ValueError:
                    obj = None
                if _wrappable(obj):
                    body = json.dumps(envelope(obj, tid)).encode()
                elif isinstance(obj, list):
                    body = json.dumps([envelope(o, tid) if _wrappable(o) else o
                                       for o in obj]).encode()
            handler.send_body(status, body, content_type, headers)

        def start_stream(content_type="text/event-stream"):
            mode["sse"] = "event-stream" in content_type
            handler.start_stream(content_type)

        def write_chunk(data):
            return handler.write_chunk(rewrite(data))

        def end_stream(data=b""):
            handler.end_stream(rewrite(data) if data else data)

        reply(HandlerView(handler, send_body=send_body, start_stream=start_stream,
                          write_chunk=write_chunk, end_stream=end_stream), request)
    return wrapped


def paced(reply, delay):
    """`reply` with a pause of `delay` seconds before each chunk of its stream."""
    def slow(handler, request):
        def write_chunk(data):
            handler.pause(delay)
            return handler.write_chunk(data)

        def end_stream(data=b""):
            if data:
                handler.pause(delay)
            handler.end_stream(data)
        reply(HandlerView(handler, write_chunk=write_chunk, end_stream=end_stream), request)
    return slow


def slow_stream(delay):
    """The rule-based model's enveloped answer to the request, streamed with a pause of
    `delay` seconds before each event (a whole body when the call is not a stream)."""
    def reply(handler, request):
        fake = handler.server.fake
        paced(fake.generate_reply(handler.record), delay)(handler, request)
    return reply


# == Code Assist error replies (PROTOCOLS-2 A.11 shapes, our own text) =======================
# Each builder returns a reply function; reply.body_for(model=None, project=None,
# account=None) gives the body it would send (a dict, a list, or bytes for raw ones).
# Where a builder takes model/project None, the reply uses the envelope's own.

def ca_error_body(code, message, status=None, details=(), errors=None, array=False):
    """Google's RPC error body; `errors`: the legacy errors[] list; array: `[{"error":...}]`."""
    body = gemini_error_body(code, message, status, None, details)
    if errors:
        body["error"]["errors"] = list(errors)
    return [body] if array else body


def error_info(reason, domain=CA_DOMAIN, metadata=None):
    detail = {"@type": ERROR_INFO, "reason": reason, "domain": domain}
    if metadata:
        detail["metadata"] = metadata
    return detail


def retry_info(seconds):
    return {"@type": RETRY_INFO, "retryDelay": proto_duration(seconds)}


def _context(handler, request):
    request = request if isinstance(request, dict) else {}
    context = {"model": request.get("model") if isinstance(request.get("model"), str) else None,
               "project": request.get("project") if isinstance(request.get("project"), str)
               else None, "account": None}
    record = getattr(handler, "record", None)
    fake = getattr(getattr(handler, "server", None), "fake", None)
    if isinstance(record, dict) and record.get("account") and fake is not None:
        context["account"] = fake.accounts.get(record["account"])
    return context


def _ca_reply(status, make_body, headers=None):
    """A reply whose body make_body(context) makes from the request's model, project and
    account (dict; None when unknown); bytes go out raw."""
    def reply(handler, request):
        body = make_body(_context(handler, request))
        if isinstance(body, bytes):
            raw_reply(body, status, headers=headers)(handler, request)
        else:
            json_reply(body, status, headers)(handler, request)

    def body_for(model=None, project=None, account=None):
        return make_body({"model": model, "project": project, "account": account})
    reply.body_for = body_for
    return reply


def ca_error(code, message, status=None, details=(), errors=None, array=False, headers=None):
    """Any Google RPC error reply."""
    return _ca_reply(code, lambda ctx: ca_error_body(code, message, status, details, errors,
                                                     array), headers)


def ca_unauthenticated(reason=None):
    """401 UNAUTHENTICATED (an unknown, expired or revoked access token)."""
    details = [error_info(reason, "googleapis.com", {"service": CA_DOMAIN})] if reason else ()
    return ca_error(401, "Request had invalid authentication credentials (fake: the access "
                    "token is missing, unknown, expired or revoked).", "UNAUTHENTICATED",
                    details, headers={"www-authenticate": 'Bearer realm="https://accounts.'
                                      'google.com/", error="invalid_token"'})


def ca_invalid_argument(message):
    return ca_error(400, message, "INVALID_ARGUMENT")


def ca_rate_limit(delay_seconds=2, model=None):
    """429 RATE_LIMIT_EXCEEDED (fixture 1): ErrorInfo with quotaResetDelay and
    quotaResetTimeStamp, RetryInfo with retryDelay, and the delay in the message."""
    def body(ctx):
        name = model or ctx["model"] or "gemini-2.5-pro"
        return ca_error_body(429, "This model is rate limited for your account on the fake "
                             "backend; your quota will reset after %s." % go_duration(
                                 delay_seconds), "RESOURCE_EXHAUSTED", [
            error_info("RATE_LIMIT_EXCEEDED", metadata={
                "uiMessage": "true", "model": name,
                "quotaResetDelay": go_duration(delay_seconds),
                "quotaResetTimeStamp": rfc3339(time.time() + delay_seconds)}),
            retry_info(delay_seconds)])
    return _ca_reply(429, body)


def ca_rate_limit_without_retry_info(reset="1.5s", model=None):
    """429 RATE_LIMIT_EXCEEDED whose only delay is ErrorInfo metadata quotaResetDelay (a Go
    duration); no RetryInfo, no delay in the message."""
    def body(ctx):
        return ca_error_body(429, "Requests for this model are coming too fast from your "
                             "account (fake).", "RESOURCE_EXHAUSTED", [
            error_info("RATE_LIMIT_EXCEEDED", metadata={
                "uiMessage": "true", "model": model or ctx["model"] or "gemini-2.5-pro",
                "quotaResetDelay": reset})])
    return _ca_reply(429, body)


def ca_rate_limit_message_only(text="reset after 3s."):
    """429 whose delay is only in the message ("... will reset after 3s."); no details."""
    return _ca_reply(429, lambda ctx: ca_error_body(
        429, "Too many requests from this account to the fake backend; the limit will " + text,
        "RESOURCE_EXHAUSTED"))


def ca_daily_quota(reset="19h14m47s", array=True, model=None):
    """429 QUOTA_EXHAUSTED (fixture 2): daily quota gone; reset (a Go duration) in the message
    and as RetryInfo seconds; array-wrapped by default."""
    seconds = go_seconds(reset)

    def body(ctx):
        return ca_error_body(429, "The daily quota of this model is used up for your account "
                             "(fake); your quota will reset after %s." % reset,
                             "RESOURCE_EXHAUSTED", [
            error_info("QUOTA_EXHAUSTED", metadata={
                "uiMessage": "true", "model": model or ctx["model"] or "gemini-2.5-pro"}),
            retry_info(round(seconds))], array=array)
    return _ca_reply(429, body)


def ca_capacity(model=None, array=False):
    """429 MODEL_CAPACITY_EXHAUSTED (fixture 3): the server is out of capacity for the model,
    not the account out of quota; no RetryInfo."""
    def body(ctx):
        name = model or ctx["model"] or "gemini-2.5-pro"
        return ca_error_body(429, "The fake backend has no capacity for model %s at the "
                             "moment." % name, "RESOURCE_EXHAUSTED", [
            error_info("MODEL_CAPACITY_EXHAUSTED", metadata={"model": name})], array=array)
    return _ca_reply(429, body)


def ca_legacy_daily():
    """429 in the legacy per-day quota form (fixture 4): errors[] with rateLimitExceeded,
    ErrorInfo in domain googleapis.com with quota_metric / a PerDay quota_limit."""
    message = ("Quota exceeded for quota metric 'Fake Pro Requests' and limit 'Fake Pro "
               "Requests per day per user per tier' of service '%s' for consumer "
               "'project_number:681255809395'." % CA_DOMAIN)
    return _ca_reply(429, lambda ctx: ca_error_body(
        429, message, "RESOURCE_EXHAUSTED", [
            error_info("RATE_LIMIT_EXCEEDED", "googleapis.com", {
                "quota_metric": "%s/fake_pro_requests" % CA_DOMAIN,
                "quota_limit": "FakeProRequestsPerDay", "service": CA_DOMAIN,
                "consumer": "projects/681255809395"})],
        errors=[{"message": message, "domain": "global", "reason": "rateLimitExceeded"}]))


def ca_bare_429():
    """429 RESOURCE_EXHAUSTED with no details at all (fixture 5)."""
    return ca_error(429, "Resource exhausted (fake: no details given).", "RESOURCE_EXHAUSTED")


def ca_credits():
    """429 INSUFFICIENT_G1_CREDITS_BALANCE (the Google One AI credits path)."""
    return ca_error(429, "Not enough Google One AI credits left (fake).", "RESOURCE_EXHAUSTED",
                    [error_info("INSUFFICIENT_G1_CREDITS_BALANCE")])


FORBIDDEN_KINDS = ("consumer_invalid", "iam_denied", "no_license", "validation_required",
                   "no_details")


def ca_forbidden(kind="consumer_invalid", project=None, url=None, array=None):
    """403 PERMISSION_DENIED of one kind: consumer_invalid (fixture 6, array-wrapped),
    iam_denied (fixture 7, array-wrapped), no_license (fixture 8, SUBSCRIPTION_REQUIRED),
    validation_required (VALIDATION_REQUIRED in the Code Assist domain, with
    metadata.validation_link and a google.rpc.Help link: `url`, default the account's
    validation_url), no_details (a bare 403). project None: the envelope's."""
    if kind not in FORBIDDEN_KINDS:
        raise ValueError("unknown kind %r; one of %s" % (kind, ", ".join(FORBIDDEN_KINDS)))

    def body(ctx):
        name = project or ctx["project"] or "default"
        if kind == "consumer_invalid":
            return ca_error_body(403, "The fake backend refuses project %s for this caller."
                                 % name, "PERMISSION_DENIED", [
                error_info("CONSUMER_INVALID", "googleapis.com", {
                    "consumer": "projects/%s" % name, "service": COMPANION_DOMAIN,
                    "containerInfo": name})], array=True if array is None else array)
        if kind == "iam_denied":
            resource = "projects/%s/locations/global" % name
            return ca_error_body(403, "The caller lacks permission "
                                 "'cloudaicompanion.companions.generateChat' on %s (fake)."
                                 % resource, "PERMISSION_DENIED", [
                error_info("IAM_PERMISSION_DENIED", COMPANION_DOMAIN, {
                    "resource": resource,
                    "permission": "cloudaicompanion.companions.generateChat"})],
                array=True if array is None else array)
        if kind == "no_license":
            return ca_error_body(403, "This Cloud project has no Gemini Code Assist license "
                                 "for the caller (fake).", "PERMISSION_DENIED",
                                 [error_info("SUBSCRIPTION_REQUIRED", COMPANION_DOMAIN)],
                                 array=bool(array))
        if kind == "validation_required":
            account = ctx["account"] or {}
            link = url or account.get("validation_url") or \
                "https://accounts.google.com/fake-verify"
            return ca_error_body(403, "Verify your account to keep using Gemini Code Assist "
                                 "(fake).", "PERMISSION_DENIED", [
                error_info("VALIDATION_REQUIRED", CA_DOMAIN, {
                    "validation_link": link, "validation_link_text": "Verify your account"}),
                {"@type": HELP, "links": [{"description": "Verify your account",
                                           "url": link}]}], array=bool(array))
        return ca_error_body(403, "The caller does not have permission (fake).",
                             "PERMISSION_DENIED", array=bool(array))
    return _ca_reply(403, body)


def ca_not_found(model=None):
    """404 NOT_FOUND for a model this account cannot use."""
    return _ca_reply(404, lambda ctx: ca_error_body(
        404, "Model %s was not found on the fake backend, or this account may not use it."
        % (model or ctx["model"] or "?"), "NOT_FOUND"))


def ca_server_error(status=503):
    """A 5xx (or 499) in Google's shape."""
    message = {500: "The fake backend failed inside.", 503: "The fake backend is unavailable "
               "right now.", 504: "The fake backend took too long."}.get(
        status, "Fake server error %d." % status)
    return ca_error(status, message)


ODD_KINDS = ("stray_comma", "odd_domain", "not_json")


def ca_odd_json_error(kind="stray_comma", status=None):
    """An error body a parser must take leniently (A.11): stray_comma (429 whose JSON has a
    stray comma before "metadata": not valid JSON, raw bytes), odd_domain (valid JSON whose
    ErrorInfo.domain carries stray characters), not_json (a 502 HTML page)."""
    if kind == "stray_comma":
        body = ('{"error": {"code": 429, "message": "Slow down (fake); your quota will reset '
                'after 2s.", "status": "RESOURCE_EXHAUSTED", "details": [{"@type": "%s", '
                '"reason": "RATE_LIMIT_EXCEEDED", "domain": "%s",\n, "metadata": '
                '{"quotaResetDelay": "2s"}}, {"@type": "%s", "retryDelay": "2s"}]}}'
                % (ERROR_INFO, CA_DOMAIN, RETRY_INFO)).encode()
        return _ca_reply(status or 429, lambda ctx: body)
    if kind == "odd_domain":
        return _ca_reply(status or 429, lambda ctx: ca_error_body(
            429, "Slow down (fake); your quota will reset after 2s.", "RESOURCE_EXHAUSTED", [
                error_info("RATE_LIMIT_EXCEEDED", ",\n" + CA_DOMAIN + " ",
                           {"quotaResetDelay": "2s"}), retry_info(2)]))
    if kind == "not_json":
        html = b"<html><body><h1>502 Bad Gateway</h1>fake</body></html>"

        def reply(handler, request):
            raw_reply(html, status or 502, "text/html")(handler, request)
        reply.body_for = lambda model=None, project=None, account=None: html
        return reply
    raise ValueError("unknown kind %r; one of %s" % (kind, ", ".join(ODD_KINDS)))


def oauth_error(status, error, description):
    """An OAuth token-endpoint error reply: {"error", "error_description"}."""
    return json_reply({"error": error, "error_description": description}, status)


# == the server ==============================================================================

class GoogleHandler(FakeHandler):
    """FakeHandler that notes the status of its reply in the request's record."""

    def send_response(self, code, message=None):
        if isinstance(self.record, dict):
            self.record["status"] = code
        super().send_response(code, message)


class FakeGoogle(FakeGemini):
    """Google's OAuth endpoints and the Code Assist API on one port (see the module doc).

    State (read freely; change through the methods): accounts (email -> account dict),
    token_calls (form fields of each POST /token, plus "content_type"), auth_requests (query
    of each GET /auth), requests (every request: FakeUpstream's record plus "account", the
    email of the bearer token or None, "number", "status" once answered, "form" for form
    posts, "trace_id" for enveloped replies). Settings: models, client_id / client_secret
    (the pair /token and /auth accept), token_lifetime (expires_in, seconds), token_delay
    (seconds every /token call waits), token_gate (a fake_upstream.Gate every /token call
    waits at), rotate_refresh_tokens, refresh_only_on_first_consent (a later consent without
    prompt=consent gets no refresh_token), strict_fields (unknown envelope / request fields
    are 400). busy / most_busy count generate calls being answered (now / at most at once);
    `rules` are not used (fault() instead); queue() scripts generate calls only."""

    title = "Google (OAuth + Code Assist)"

    def __init__(self, port=0, client_id=GEMINI_CLI_CLIENT_ID,
                 client_secret=GEMINI_CLI_CLIENT_SECRET):
        super().__init__(port)
        self.lock = threading.RLock()
        self.httpd.RequestHandlerClass = GoogleHandler
        self.models = list(CODE_ASSIST_MODELS) + ["fake-model"]
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = 3600
        self.token_delay = 0.0
        self.token_gate = None
        self.rotate_refresh_tokens = False
        self.refresh_only_on_first_consent = False
        self.strict_fields = True
        self.accounts = {}
        self.access_tokens = {}     # token -> {"email", "expires_at" (epoch s), "scope"}
        self.refresh_tokens = {}    # token -> {"email", "scope"}
        self.codes = {}             # code -> the grant it stands for
        self.operations = {}        # name -> {"email", "polls_left", "tier"}
        self.token_calls = []
        self.auth_requests = []
        self.faults = []
        self.consent_email = None
        self._deny = None
        self._token_failures = []
        self._serial = itertools.count(1)
        self._nonce = secrets.token_hex(3)

    # -- URLs -----------------------------------------------------------------------------
    @property
    def token_url(self):
        return self.base_url + "/token"

    @property
    def auth_url(self):
        return self.base_url + "/auth"

    @property
    def userinfo_url(self):
        return self.base_url + "/userinfo"

    @property
    def code_assist_url(self):
        return self.base_url + "/v1internal"

    # -- accounts -------------------------------------------------------------------------
    def add_account(self, email, project=None, tier="free-tier", onboarded=True,
                    onboard_polls=0, paid_tier=None, validation_url=None, models=None):
        """Add (or replace) an account and return its record, the fake's own dict: email, id
        (numeric string), project (default "backend-<local part>": what onboarding hands out),
        tier, onboarded, onboard_polls (GET polls of the onboarding operation answered
        done:false before the one that is done), paid_tier (None, a tier id or a tier dict),
        validation_url (set: loadCodeAssist says VALIDATION_REQUIRED and generate calls get
        403 until validate()), models (None: all of the fake's; else the only ones it may
        use, others 404), onboard_calls, generated (model -> answered calls), quota_limit."""
        with self.lock:
            if project is None:
                taken = {a["project"] for e, a in self.accounts.items() if e != email}
                base = project = "backend-" + _local_slug(email)
                n = 2
                while project in taken:
                    project, n = "%s-%d" % (base, n), n + 1
            if isinstance(paid_tier, str):
                paid_tier = dict(tier_info(paid_tier), availableCredits=[
                    {"creditType": "GOOGLE_ONE_AI", "creditAmount": "1000"}])
            account = {"email": email, "id": str(104000000000000000000 + next(self._serial)),
                       "project": project, "tier": tier, "onboarded": onboarded,
                       "onboard_polls": onboard_polls, "paid_tier": paid_tier,
                       "validation_url": validation_url,
                       "models": list(models) if models is not None else None,
                       "onboard_calls": 0, "consents": 0, "generated": {},
                       "quota_limit": 1000}
            self.accounts[email] = account
            return account

    def account(self, email):
        return self.accounts[email]

    def _ensure_account(self, email):
        with self.lock:
            return self.accounts.get(email) or self.add_account(email)

    def validate(self, email):
        """The user followed the validation link: the account is usable again."""
        with self.lock:
            self.accounts[email]["validation_url"] = None

    def _new(self, prefix):
        return "%s%d-%s" % (prefix, next(self._serial), self._nonce)

    def _issue(self, email, scope=None, refresh=True, expired=False):
        """Tokens for `email` as a token reply dict, and the access token's expiry (epoch)."""
        scope = scope or " ".join(SCOPES)
        now = time.time()
        lifetime = self.token_lifetime
        expires_at = now - 60 if expired else now + lifetime
        with self.lock:
            account = self.accounts[email]
            access = self._new("ya29.fake-")
            self.access_tokens[access] = {"email": email, "expires_at": expires_at,
                                          "scope": scope}
            reply = {"access_token": access, "expires_in": 0 if expired else lifetime,
                     "scope": scope, "token_type": "Bearer",
                     "id_token": fake_id_token(email, account["id"], self.client_id, now,
                                               lifetime)}
            if refresh:
                token = self._new("1//fake-refresh-")
                self.refresh_tokens[token] = {"email": email, "scope": scope}
                reply["refresh_token"] = token
        return reply, expires_at

    def issue_tokens(self, email, expired=False):
        """A token reply (with refresh_token) for the account, as a login would get."""
        return self._issue(email, expired=expired)[0]

    def credentials(self, email, fmt="gemini-cli", expired=False):
        """A credential file (dict) for the account with freshly issued tokens, in one of the
        formats of PROTOCOLS-2 A.5: "gemini-cli" (expiry_date in epoch ms), "google-auth"
        (token, expiry ISO-8601 +00:00, client pair, token_uri, project_id), "cliproxy"
        (type "gemini", nested "token", expiry ISO "Z"), "token-response" (the raw token
        reply: expires_in, no absolute expiry). expired=True: the access token has already
        expired (the refresh token works). project_id only once the account is onboarded."""
        reply, expires_at = self._issue(email, expired=expired)
        account = self.accounts[email]
        project = account["project"] if account["onboarded"] else None
        if fmt == "gemini-cli":
            return {"access_token": reply["access_token"],
                    "refresh_token": reply["refresh_token"], "scope": reply["scope"],
                    "token_type": "Bearer", "id_token": reply["id_token"],
                    "expiry_date": int(expires_at * 1000)}
        if fmt == "google-auth":
            out = {"token": reply["access_token"], "refresh_token": reply["refresh_token"],
                   "client_id": self.client_id, "client_secret": self.client_secret,
                   "token_uri": self.token_url, "scopes": list(SCOPES),
                   "expiry": datetime.fromtimestamp(expires_at, timezone.utc).isoformat()}
            if project:
                out["project_id"] = project
            return out
        if fmt == "cliproxy":
            expiry = rfc3339(expires_at)
            token = {"access_token": reply["access_token"], "token_type": "Bearer",
                     "refresh_token": reply["refresh_token"], "expiry": expiry,
                     "token_uri": self.token_url, "client_id": self.client_id,
                     "client_secret": self.client_secret, "scopes": list(SCOPES),
                     "universe_domain": "googleapis.com"}
            out = {"type": "gemini", "email": email, "auto": False, "checked": True,
                   "access_token": reply["access_token"],
                   "refresh_token": reply["refresh_token"], "token_type": "Bearer",
                   "expiry": expiry, "token": token}
            if project:
                out["project_id"] = project
            return out
        if fmt == "token-response":
            return reply
        raise ValueError("unknown credential format %r" % fmt)

    def revoke(self, email):
        """The account's grant is revoked: its refresh tokens get invalid_grant, its access
        tokens 401. A new consent (GET /auth) or credentials() issues working ones again."""
        with self.lock:
            for table in (self.refresh_tokens, self.access_tokens):
                for token in [t for t, info in table.items() if info["email"] == email]:
                    del table[token]

    def expire_tokens(self, email):
        """The account's live access tokens expire now (401); refreshing still works."""
        with self.lock:
            for info in self.access_tokens.values():
                if info["email"] == email:
                    info["expires_at"] = min(info["expires_at"], time.time() - 1)

    def consent_as(self, email):
        """GET /auth logs in as this account from now on (a login_hint still wins); the
        account is added with defaults if the fake does not know it."""
        self._ensure_account(email)
        with self.lock:
            self.consent_email = email

    def deny_next_consent(self, error="access_denied",
                          description="The user declined the fake consent screen."):
        """The next GET /auth redirects with error / error_description instead of a code."""
        with self.lock:
            self._deny = (error, description)

    def fail_token_calls(self, n, status=500, body=None):
        """The next `n` POST /token calls answer `status` (before looking at the request)
        with `body` (dict, or bytes), by default an OAuth error JSON."""
        if body is None:
            body = {"error": "internal_failure" if status >= 500 else "rate_limit_exceeded",
                    "error_description": "Fake transient failure of the token endpoint."}
        with self.lock:
            self._token_failures.extend([(status, body)] * n)

    def hold_token_calls(self, limit=60.0):
        """Every POST /token from now on waits at a Gate (at most `limit` seconds, and never
        past stop()) before it is answered: gate.entered is set when one is waiting,
        gate.open() lets them all through. Returns the gate (also self.token_gate)."""
        gate = Gate(limit=limit)
        with self.lock:
            self.token_gate = gate
        return gate

    def fault(self, email, reply, model=None, times=None):
        """Generate calls by `email` (only for `model` if given; only the next `times` of them
        if given) answer with `reply` after the fake's own checks (auth, envelope, project,
        model). The earliest matching fault wins. Returns the fault (a dict)."""
        entry = {"email": email, "model": model, "reply": reply, "times": times, "used": 0}
        with self.lock:
            self.faults.append(entry)
        return entry

    def clear_faults(self, email=None):
        with self.lock:
            self.faults = [f for f in self.faults if email is not None and f["email"] != email]

    def _take_fault(self, email, model):
        for entry in self.faults:
            if entry["email"] != email or entry["model"] not in (None, model):
                continue
            if entry["times"] is not None and entry["used"] >= entry["times"]:
                continue
            entry["used"] += 1
            return entry["reply"]
        return None

    # -- what was asked ---------------------------------------------------------------------
    def requests_for(self, email):
        with self.lock:
            return [r for r in self.requests if r.get("account") == email]

    def generate_calls(self, email=None):
        """Records of the generateContent / streamGenerateContent calls (by `email` if given;
        by any bearer, valid or not, otherwise)."""
        with self.lock:
            return [r for r in self.requests if r.get("method_name") in GENERATE_METHODS
                    and (email is None or r.get("account") == email)]

    def onboard_calls(self, email=None):
        """How many onboardUser calls there were (by `email` if given)."""
        with self.lock:
            return sum(a["onboard_calls"] for e, a in self.accounts.items()
                       if email is None or e == email)

    # -- serving ----------------------------------------------------------------------------
    def handle(self, handler, body):
        # absolute-form (through a plain-HTTP proxy) means the same as origin-form
        handler.path = re.sub(r"\Ahttps?://[^/]+", "", handler.path) or "/"
        path, _, query = handler.path.partition("?")
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = {"method": handler.command, "path": path,
                  "query": dict(parse_qsl(query, keep_blank_values=True)),
                  "headers": headers, "key": request_key(headers),
                  "json": parsed, "body": body, "account": None}
        with self.lock:
            self.requests.append(record)
            record["number"] = len(self.requests)
        handler.record = record
        try:
            self.route(handler, record)
        except FakeStopped:
            handler.close_connection = True

    def route(self, handler, record):
        path, method = record["path"], record["method"]
        if path == "/token" and method == "POST":
            return self.serve_token(handler, record)
        if path == "/auth" and method == "GET":
            return self.serve_consent(handler, record)
        if path in ("/userinfo", "/oauth2/v2/userinfo", "/oauth2/v1/userinfo") \
                and method == "GET":
            return self.serve_userinfo(handler, record)
        if path == "/tokeninfo":
            return self.serve_tokeninfo(handler, record)
        if path == "/revoke" and method == "POST":
            return self.serve_revoke(handler, record)
        match = CA_METHOD.match(path)
        if match:
            record["method_name"] = match.group(1)
            return self.serve_code_assist(handler, record, match.group(1))
        match = CA_OPERATION.match(path)
        if match and method == "GET":
            return self.serve_operation(handler, record, match.group(1))
        ca_error(404, "Not found on the fake Google: %s %s" % (method, path))(handler, None)

    # -- OAuth ------------------------------------------------------------------------------
    @staticmethod
    def _page(handler, status, error, text):
        body = ("<html><body><h1>Error %d (%s)</h1><p>%s</p></body></html>"
                % (status, error, text)).encode()
        handler.send_body(status, body, "text/html; charset=utf-8")

    @staticmethod
    def _redirect_allowed(uri):
        if uri == CODEASSIST_REDIRECT:
            return True
        try:
            parts = urlsplit(uri)
        except ValueError:
            return False
        return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")

    @staticmethod
    def _redirect(handler, uri, params):
        location = uri + ("&" if "?" in uri else "?") + urlencode(params)
        handler.send_body(302, b"", "text/html; charset=utf-8", {"location": location})

    def serve_consent(self, handler, record):
        query = record["query"]
        with self.lock:
            self.auth_requests.append(dict(query))
        redirect_uri = query.get("redirect_uri") or ""
        if query.get("client_id") != self.client_id:
            return self._page(handler, 401, "invalid_client", "The OAuth client was not found.")
        if not self._redirect_allowed(redirect_uri):
            return self._page(handler, 400, "redirect_uri_mismatch",
                              "This redirect_uri is not registered for the client.")
        if query.get("response_type") != "code":
            return self._page(handler, 400, "unsupported_response_type",
                              "Only response_type=code is supported.")
        if not query.get("scope"):
            return self._page(handler, 400, "invalid_request",
                              "Missing required parameter: scope")
        challenge = query.get("code_challenge")
        challenge_method = query.get("code_challenge_method")
        if challenge_method and not challenge or \
                challenge and (challenge_method or "plain") not in ("S256", "plain"):
            return self._page(handler, 400, "invalid_request", "Bad PKCE parameters.")
        state = {"state": query["state"]} if "state" in query else {}
        with self.lock:
            denial, self._deny = self._deny, None
        if denial:
            return self._redirect(handler, redirect_uri, dict(
                error=denial[0], error_description=denial[1], **state))
        with self.lock:
            email = query.get("login_hint") or self.consent_email or \
                next(iter(self.accounts), None)
        if email is None:
            return self._page(handler, 400, "no_account", "The fake has no account to log in.")
        account = self._ensure_account(email)
        with self.lock:
            offline = query.get("access_type") == "offline"
            if offline and self.refresh_only_on_first_consent and account["consents"] and \
                    query.get("prompt") != "consent":
                offline = False
            account["consents"] += 1
            code = self._new("4/0fake-code-")
            self.codes[code] = {"email": email, "redirect_uri": redirect_uri,
                                "client_id": query["client_id"], "scope": query["scope"],
                                "challenge": challenge,
                                "challenge_method": challenge_method or
                                ("plain" if challenge else None), "offline": offline}
        record["account"] = email
        self._redirect(handler, redirect_uri,
                       dict(state, code=code, scope=query["scope"], authuser="0"))

    def serve_token(self, handler, record):
        content_type = record["headers"].get("content-type", "")
        form = dict(parse_qsl((record["body"] or b"").decode("utf-8", "replace"),
                              keep_blank_values=True))
        record["form"] = form
        with self.lock:
            self.token_calls.append(dict(form, content_type=content_type))
            failure = self._token_failures.pop(0) if self._token_failures else None
            gate, delay = self.token_gate, self.token_delay
        if gate is not None:
            gate.entered.set()
            handler.pause(gate.limit, until=gate.opened)
        if delay:
            handler.pause(delay)
        if failure is not None:
            status, body = failure
            if isinstance(body, bytes):
                return raw_reply(body, status)(handler, None)
            return json_reply(body, status)(handler, None)
        if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            return oauth_error(400, "invalid_request", "The body must be form-encoded "
                               "(application/x-www-form-urlencoded).")(handler, None)
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = record["headers"].get("authorization", "")
        if client_id is None and auth.lower().startswith("basic "):
            try:
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                pass
        grant_type = form.get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            return oauth_error(400, "unsupported_grant_type",
                               "Invalid grant_type: %s" % grant_type)(handler, None)
        if (client_id, client_secret) != (self.client_id, self.client_secret):
            return oauth_error(401, "invalid_client", "Unauthorized")(handler, None)
        if grant_type == "authorization_code":
            return self._exchange(handler, record, form)
        return self._refresh(handler, record, form)

    def _exchange(self, handler, record, form):
        with self.lock:
            grant = self.codes.pop(form.get("code") or "", None)   # a code is single-use
        if grant is None:
            return oauth_error(400, "invalid_grant", "Malformed auth code.")(handler, None)
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return oauth_error(400, "redirect_uri_mismatch", "Bad Request")(handler, None)
        if grant["challenge"]:
            verifier = form.get("code_verifier") or ""
            if not verifier:
                return oauth_error(400, "invalid_grant",
                                   "Missing code verifier.")(handler, None)
            computed = pkce_challenge(verifier) if grant["challenge_method"] == "S256" \
                else verifier
            if computed != grant["challenge"]:
                return oauth_error(400, "invalid_grant",
                                   "Invalid code verifier.")(handler, None)
        reply, _ = self._issue(grant["email"], grant["scope"], refresh=grant["offline"])
        record["account"] = grant["email"]
        json_reply(reply)(handler, None)

    def _refresh(self, handler, record, form):
        token = form.get("refresh_token") or ""
        with self.lock:
            info = self.refresh_tokens.get(token)
            if info is not None and self.rotate_refresh_tokens:
                del self.refresh_tokens[token]
        if info is None:
            return oauth_error(400, "invalid_grant",
                               "Token has been expired or revoked.")(handler, None)
        reply, _ = self._issue(info["email"], info["scope"], refresh=self.rotate_refresh_tokens)
        record["account"] = info["email"]
        json_reply(reply)(handler, None)

    def _bearer(self, record):
        """(email, token info) of the request's live bearer token, else (None, why)."""
        auth = record["headers"].get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return None, "CREDENTIALS_MISSING"
        with self.lock:
            info = self.access_tokens.get(auth[7:].strip())
            if info is None:
                return None, "ACCESS_TOKEN_INVALID"
            if info["expires_at"] <= time.time():
                return None, "ACCESS_TOKEN_EXPIRED"
            record["account"] = info["email"]
            return info["email"], dict(info)

    def serve_userinfo(self, handler, record):
        email, _ = self._bearer(record)
        if email is None:
            return ca_unauthenticated()(handler, None)
        account = self.accounts[email]
        json_reply({"id": account["id"], "email": email, "verified_email": True})(handler, None)

    def serve_tokeninfo(self, handler, record):
        token = record["query"].get("access_token") or \
            dict(parse_qsl((record["body"] or b"").decode("utf-8", "replace"))).get(
                "access_token")
        if token:
            record["headers"] = dict(record["headers"], authorization="Bearer " + token)
        email, info = self._bearer(record)
        if email is None:
            return oauth_error(400, "invalid_token", "Invalid Value")(handler, None)
        left = int(info["expires_at"] - time.time())
        json_reply({"azp": self.client_id, "aud": self.client_id,
                    "sub": self.accounts[email]["id"], "scope": info["scope"],
                    "exp": str(int(info["expires_at"])), "expires_in": str(left),
                    "email": email, "email_verified": "true",
                    "access_type": "offline"})(handler, None)

    def serve_revoke(self, handler, record):
        token = record["query"].get("token") or dict(parse_qsl(
            (record["body"] or b"").decode("utf-8", "replace"))).get("token") or ""
        with self.lock:
            info = self.refresh_tokens.get(token) or self.access_tokens.get(token)
        if info is None:
            return oauth_error(400, "invalid_token",
                               "Token expired or revoked")(handler, None)
        self.revoke(info["email"])
        record["account"] = info["email"]
        json_reply({})(handler, None)

    # -- Code Assist ------------------------------------------------------------------------
    def serve_code_assist(self, handler, record, method):
        email, info = self._bearer(record)
        if email is None:
            return ca_unauthenticated(info if info == "ACCESS_TOKEN_EXPIRED" else None)(
                handler, record["json"])
        if CLOUD_PLATFORM not in info["scope"].split():
            return ca_error(403, "Request had insufficient authentication scopes (fake).",
                            "PERMISSION_DENIED", [error_info(
                                "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "googleapis.com")])(
                handler, record["json"])
        account = self.accounts[email]
        if method == "getCodeAssistGlobalUserSetting" and record["method"] == "GET":
            return json_reply({"freeTierDataCollectionOptin": False})(handler, None)
        if record["method"] != "POST":
            return ca_error(404, "Not found: GET %s" % record["path"])(handler, None)
        body = record["json"]
        if not isinstance(body, dict):
            return ca_invalid_argument("Invalid JSON payload received (fake): the body must "
                                       "be a JSON object.")(handler, body)
        if method in GENERATE_METHODS:
            return self.serve_generate(handler, record, account, method)
        if method == "countTokens":
            return self.serve_count_tokens(handler, body)
        if method == "loadCodeAssist":
            return json_reply(self.load_code_assist(account))(handler, body)
        if method == "onboardUser":
            return self.serve_onboard(handler, account, body)
        if method == "retrieveUserQuota":
            return self.serve_quota(handler, account, body)
        if method == "listExperiments":
            return json_reply({"experimentIds": [], "flags": []})(handler, body)
        if method in ("recordCodeAssistMetrics", "fetchAdminControls",
                      "setCodeAssistGlobalUserSetting"):
            return json_reply({})(handler, body)
        ca_error(404, "Method not found: %s" % method)(handler, body)

    def _unknown_field(self, fields, allowed):
        if not self.strict_fields:
            return None
        unknown = sorted(set(fields) - allowed)
        return unknown[0] if unknown else None

    def envelope_problem(self, body):
        """Why a generate envelope is malformed (a 400 message), or None."""
        unknown = self._unknown_field(body, ENVELOPE_FIELDS)
        if unknown:
            return 'Invalid JSON payload received. Unknown name "%s": Cannot find field.' \
                % unknown
        request = body.get("request")
        if not isinstance(request, dict):
            return "The envelope has no `request` object (fake)."
        unknown = self._unknown_field(request, REQUEST_FIELDS)
        if unknown:
            return 'Invalid JSON payload received. Unknown name "%s" at \'request\': Cannot ' \
                'find field.' % unknown
        if not isinstance(body.get("project"), str) or not body["project"]:
            return "The envelope has no `project` (fake)."
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return "The envelope has no `model` (fake)."
        if model.startswith("models/"):
            return "The model must be a bare id, not %r (fake)." % model
        return None

    def model_allowed(self, account, model):
        return model in self.models and (account["models"] is None or
                                         model in account["models"])

    def serve_generate(self, handler, record, account, method):
        body = record["json"]
        stream = method == "streamGenerateContent"
        problem = self.envelope_problem(body)
        if problem:
            return ca_invalid_argument(problem)(handler, body)
        if account["validation_url"]:
            return ca_forbidden("validation_required")(handler, body)
        if not account["onboarded"] or body["project"] != account["project"]:
            return ca_forbidden("consumer_invalid", array=stream)(handler, body)
        model = body["model"]
        if not self.model_allowed(account, model):
            return ca_not_found()(handler, body)
        with self.lock:
            reply = self._take_fault(account["email"], model)
            if reply is None and self.script:
                reply = self.script.pop(0)
            if reply is None:
                account["generated"][model] = account["generated"].get(model, 0) + 1
            self.busy += 1
            self.most_busy = max(self.most_busy, self.busy)
        try:
            if reply is None:
                reply = self.generate_reply(record)
            reply(handler, body)
        finally:
            with self.lock:
                self.busy -= 1

    def generate_reply(self, record):
        """The enveloped reply of the rule-based model to a generate call's record: what
        FakeGemini answers to the envelope's `request` as its record["number"]th request."""
        body = record["json"]
        path = "/v1beta/models/%s:%s" % (body["model"], record["method_name"])
        gemini_reply = FakeGemini.automatic(self, {"json": body["request"], "path": path},
                                            record["number"])
        return enveloped(gemini_reply)

    def serve_count_tokens(self, handler, body):
        for name in ("project", "model"):
            if name in body:
                return ca_invalid_argument('Invalid JSON payload received. Unknown name "%s": '
                                           'Cannot find field.' % name)(handler, body)
        unknown = self._unknown_field(body, {"request"})
        if unknown:
            return ca_invalid_argument('Invalid JSON payload received. Unknown name "%s": '
                                       'Cannot find field.' % unknown)(handler, body)
        request = body.get("request")
        if not isinstance(request, dict):
            return ca_invalid_argument("countTokens needs a `request` object (fake).")(
                handler, body)
        model = request.get("model")
        if not isinstance(model, str) or not model.startswith("models/"):
            return ca_invalid_argument("countTokens needs request.model as models/<id> "
                                       "(fake).")(handler, body)
        if model[len("models/"):] not in self.models:
            return ca_not_found(model[len("models/"):])(handler, body)
        json_reply({"totalTokens": fake_token_count(request)})(handler, body)

    def load_code_assist(self, account):
        """The loadCodeAssist answer for the account's present state (PROTOCOLS-2 A.8)."""
        tier = account["tier"]
        allowed = [tier_info("free-tier", tier == "free-tier"),
                   tier_info("standard-tier", tier == "standard-tier")]
        if tier not in ("free-tier", "standard-tier"):
            allowed.append(tier_info(tier, True))
        if account["validation_url"]:
            return {"allowedTiers": [tier_info("standard-tier", True)],
                    "ineligibleTiers": [{
                        "reasonCode": "VALIDATION_REQUIRED", "reasonMessage":
                        "Verify this account to use the free tier (fake).",
                        "tierId": "free-tier", "tierName": TIER_NAMES["free-tier"],
                        "validationUrl": account["validation_url"],
                        "validationUrlLinkText": "Verify"}]}
        if not account["onboarded"]:
            return {"allowedTiers": allowed}
        out = {"currentTier": dict(tier_info(tier), hasOnboardedPreviously=True),
               "allowedTiers": allowed, "cloudaicompanionProject": account["project"]}
        if account["paid_tier"]:
            out["paidTier"] = account["paid_tier"]
        return out

    def _operation(self, name, account, done):
        op = {"name": name, "done": done}
        if done:
            op["response"] = {
                "@type": "type.googleapis.com/google.internal.cloud.code.v1internal."
                         "OnboardUserResponse",
                "cloudaicompanionProject": {"id": account["project"],
                                            "name": "Fake project %s" % account["project"]}}
        return op

    def _poll(self, name, op, account):
        """One poll of an onboarding operation (under the lock): done once its polls ran out."""
        if op["polls_left"] > 0:
            op["polls_left"] -= 1
            return self._operation(name, account, False)
        account["onboarded"] = True
        account["tier"] = op["tier"]
        return self._operation(name, account, True)

    def serve_onboard(self, handler, account, body):
        tier = body.get("tierId")
        allowed = {"free-tier", "standard-tier", "legacy-tier", account["tier"]}
        with self.lock:
            account["onboard_calls"] += 1
        if not isinstance(tier, str) or tier not in allowed:
            return ca_invalid_argument("onboardUser needs a tierId the account may use "
                                       "(fake), not %r." % (tier,))(handler, body)
        if account["validation_url"]:
            return ca_forbidden("validation_required")(handler, body)
        with self.lock:
            pending = [(n, op) for n, op in self.operations.items()
                       if op["email"] == account["email"] and not op.get("done")]
            if pending:     # asked again while it runs: the same operation, polled once
                name, op = pending[0]
                answer = self._poll(name, op, account)
                op["done"] = answer["done"]
            elif account["onboarded"]:
                name = "operations/onboard-%d" % next(self._serial)
                self.operations[name] = {"email": account["email"], "polls_left": 0,
                                         "tier": account["tier"], "done": True}
                answer = self._operation(name, account, True)
            else:
                name = "operations/onboard-%d" % next(self._serial)
                self.operations[name] = {"email": account["email"],
                                         "polls_left": account["onboard_polls"],
                                         "tier": tier, "done": False}
                answer = self._operation(name, account, False)
        json_reply(answer)(handler, body)

    def serve_operation(self, handler, record, name):
        email, info = self._bearer(record)
        if email is None:
            return ca_unauthenticated(info if info == "ACCESS_TOKEN_EXPIRED" else None)(
                handler, None)
        account = self.accounts[email]
        with self.lock:
            op = self.operations.get(name)
            if op is not None and op["email"] == email:
                answer = self._poll(name, op, account) if not op.get("done") else \
                    self._operation(name, account, True)
                op["done"] = answer["done"]
            else:
                answer = None
        if answer is None:
            return ca_error(404, "Operation %s was not found (fake)." % name)(handler, None)
        json_reply(answer)(handler, None)

    def serve_quota(self, handler, account, body):
        project = body.get("project")
        if not isinstance(project, str) or not project:
            return ca_invalid_argument("retrieveUserQuota needs a `project` (fake).")(
                handler, body)
        if not account["onboarded"] or project != account["project"]:
            return ca_forbidden("consumer_invalid")(handler, body)
        reset = rfc3339((int(time.time()) // 86400 + 1) * 86400)
        buckets = []
        with self.lock:
            for model in (account["models"] or self.models):
                limit = account["quota_limit"]
                left = max(0, limit - account["generated"].get(model, 0))
                buckets.append({"modelId": model, "tokenType": "REQUESTS",
                                "remainingAmount": str(left),
                                "remainingFraction": round(left / float(limit), 6)
                                if limit else 0.0, "resetTime": reset})
        json_reply({"buckets": buckets})(handler, body)


def write_credentials(path, creds):
    """Write a credential file as Gemini CLI does (2-space JSON, mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f, indent=2)


if __name__ == "__main__":
    fake = FakeGoogle(int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    fake.add_account("alice@example.com")
    fake.add_account("bob@example.com", onboarded=False, onboard_polls=1)
    fake.consent_as("alice@example.com")
    print("fake %s at %s" % (fake.title, fake.base_url), flush=True)
    print("token_url %s  auth_url %s  userinfo_url %s" % (fake.token_url, fake.auth_url,
                                                         fake.userinfo_url), flush=True)
    if len(sys.argv) > 2:
        write_credentials(sys.argv[2], fake.credentials("alice@example.com"))
        print("gemini-cli credentials of alice@example.com in %s" % sys.argv[2], flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
