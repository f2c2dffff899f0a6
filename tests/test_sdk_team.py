"""The official SDKs (openai, anthropic, google-genai) against a proxy run for a team: named
client keys whose model list and request rate the proxy enforces. Each SDK must see the
refusals as its own error types (a 403 it names, a 429 with the time to wait), and the
usage ledger must then say, per client, what each one did."""

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from conftest import wait_for

openai = pytest.importorskip("openai", reason="the openai SDK is not installed (.ci/run "
                                              "installs it in a throwaway venv)")
anthropic = pytest.importorskip("anthropic", reason="the anthropic SDK is not installed")
genai = pytest.importorskip("google.genai", reason="the google-genai SDK is not installed")
from google.genai import errors as genai_errors, types as genai_types  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("same_utc_day")   # the ledger's day

# Each client one SDK: a model list for alice (openai), a rate for bob (anthropic), both
# for carol (google-genai).
CLIENTS = [
    {"key": "alice-team-key-0001", "name": "alice", "models": ["gpt-*"]},
    {"key": "bob-team-key-00002", "name": "bob", "requests_per_minute": 2},
    {"key": "carol-team-key-003", "name": "carol", "models": ["gemini-*"],
     "requests_per_minute": 1},
]


@pytest.fixture
def team(proxy_factory, tmp_path):
    config = {"server": {"api_keys": CLIENTS, "admin_keys": ["admin-team-key-9"],
                         "state_dir": str(tmp_path)},
              "upstreams": {"echo": {"kind": "echo"}},
              "routes": [{"model": "gpt-4o", "upstream": "echo"},
                         {"model": "claude-sonnet-4", "upstream": "echo"}]}
    proxy = proxy_factory(config)
    proxy.config_path = tmp_path / "config.json"
    proxy.config_path.write_text(json.dumps(config))
    proxy.ledger = tmp_path / "usage.sqlite3"
    return proxy


def ledger_rows(path):
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return db.execute("SELECT client, model, status, error_kind FROM requests "
                          "ORDER BY time").fetchall()
    finally:
        db.close()


def test_each_sdk_sees_the_teams_limits_as_its_own_errors(team):
    alice = openai.OpenAI(base_url=team.url + "/v1", api_key="alice-team-key-0001",
                          max_retries=0, _strict_response_validation=True)
    reply = alice.chat.completions.create(model="gpt-x", messages=[
        {"role": "user", "content": "Say hi"}])
    assert reply.choices[0].message.content == "echo (gpt-x): Say hi"
    with pytest.raises(openai.PermissionDeniedError) as refused:
        alice.chat.completions.create(model="claude-x", messages=[
            {"role": "user", "content": "Say hi"}])
    assert "gpt-*" in refused.value.message
    assert [m.id for m in alice.models.list()] == ["gpt-4o"]   # not claude-sonnet-4

    bob = anthropic.Anthropic(base_url=team.url, api_key="bob-team-key-00002",
                              max_retries=0)
    for _ in range(2):
        message = bob.messages.create(model="claude-x", max_tokens=50, messages=[
            {"role": "user", "content": "Say hi"}])
        assert message.content[0].text == "echo (claude-x): Say hi"
    with pytest.raises(anthropic.RateLimitError) as limited:
        bob.messages.create(model="claude-x", max_tokens=50, messages=[
            {"role": "user", "content": "Say hi"}])
    assert 0 < float(limited.value.response.headers["retry-after"]) <= 60
    assert "2 requests a minute" in limited.value.message

    carol = genai.Client(api_key="carol-team-key-003", http_options=genai_types.HttpOptions(
        base_url=team.url, retry_options=genai_types.HttpRetryOptions(attempts=1)))
    answer = carol.models.generate_content(model="gemini-2.5-flash", contents="Say hi")
    assert answer.text == "echo (gemini-2.5-flash): Say hi"
    with pytest.raises(genai_errors.ClientError) as limited:
        carol.models.generate_content(model="gemini-2.5-flash", contents="Say hi")
    assert limited.value.code == 429 and limited.value.status == "RESOURCE_EXHAUSTED"
    retry = [d for d in limited.value.details["error"]["details"]
             if d["@type"].endswith("RetryInfo")]
    assert retry and retry[0]["retryDelay"].endswith("s")

    # The ledger, written a moment later by its own thread, has every request by client.
    expected = [("alice", "gpt-x", 200, ""), ("alice", "claude-x", 403, "model_not_allowed"),
                ("bob", "claude-x", 200, ""), ("bob", "claude-x", 200, ""),
                ("bob", "claude-x", 429, "client_limit"),
                ("carol", "gemini-2.5-flash", 200, ""),
                ("carol", "gemini-2.5-flash", 429, "client_limit")]
    wait_for(lambda: [r for r in ledger_rows(team.ledger) if r[1]] == expected,
             message=lambda: "ledger rows: %r" % ledger_rows(team.ledger))
    report = subprocess.run(
        [sys.executable, os.path.join(ROOT, "gemini_proxy.py"), "usage", "-c", str(team.config_path),
         "--by", "client", "--json"], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin"})
    assert report.returncode == 0, report.stderr
    by_client = {row["client"]: (row["requests"], row["errors"])
                 for row in json.loads(report.stdout)}
    assert by_client["alice"] == (3, 1) and by_client["bob"] == (3, 1)   # the list too
    assert by_client["carol"] == (2, 1)
