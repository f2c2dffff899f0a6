"""The login and accounts commands (section 29), run as the user runs them: a subprocess
against a fake Google, the browser's part played over HTTP by the test. Both login flows
end to end, their failures, the account file they write, and the accounts listing with
and without a running proxy."""

import http.client
import json
import os
import queue
import re
import stat
import subprocess
import sys
import threading
import urllib.parse

import pytest

from conftest import PATIENCE, RunningProxy, make_config
from fake_google import FakeGoogle, write_credentials

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "gemini_proxy.py")
ANN = "ann@example.com"


@pytest.fixture
def google():
    fake = FakeGoogle().start()
    fake.add_account(ANN, project="backend-ann")
    yield fake
    fake.stop()


def upstream(google):
    return {"kind": "code-assist", "base_url": google.base_url,
            "oauth_token_url": google.token_url, "oauth_auth_url": google.auth_url,
            "oauth_userinfo_url": google.userinfo_url}


def write_config(tmp_path, google, **server):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"server": server, "upstreams": {"google": upstream(google)}}))
    return str(path)


class Command:
    """gemini_proxy.py <args> in a subprocess whose home is a temporary directory; its
    output read line by line as it comes."""

    def __init__(self, tmp_path, *args, stdin=None):
        self.home = tmp_path / "home"
        self.home.mkdir(exist_ok=True)
        env = {"HOME": str(self.home), "PATH": os.environ.get("PATH", ""),
               "BROWSER": "true",      # "opening" the browser does nothing; the test is it
               "PYTHONUNBUFFERED": "1"}
        for name in ("PYENV_VERSION", "PYENV_ROOT", "SYSTEMROOT"):
            if name in os.environ:
                env[name] = os.environ[name]
        self.process = subprocess.Popen(
            [sys.executable, SCRIPT] + list(args), env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, pattern):
        """The first match of `pattern` in the output (waiting for it to appear)."""
        while True:
            line = self.lines.get(timeout=PATIENCE)
            assert line is not None, "the command ended first: %s" % "".join(self.seen)
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def type(self, text):
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def finish(self):
        """(exit status, all of the output)."""
        try:
            self.process.stdin.close()
        except OSError:
            pass
        status = self.process.wait(PATIENCE)
        while True:
            line = self.lines.get(timeout=PATIENCE)
            if line is None:
                return status, "".join(self.seen)
            self.seen.append(line)


def get(url):
    """GET without following redirects: (status, headers, body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=PATIENCE)
    try:
        conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""))
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, \
            response.read().decode()
    finally:
        conn.close()


def consent(command, google):
    """What the user does in the browser: open the address the command printed, sign in;
    Google answers with a redirect. Returns (the consent query, the redirect's target)."""
    url = command.wait_for_line(r"(%s\?\S+)" % re.escape(google.auth_url)).group(1)
    status, headers, _ = get(url)
    assert status == 302
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)), headers["location"]


def saved_account(command):
    path = command.home / ".config" / "gemini-proxy" / "accounts" / (ANN + ".json")
    return path, json.loads(path.read_text())


def test_browser_login_end_to_end(tmp_path, google):
    command = Command(tmp_path, "login", "-c", write_config(tmp_path, google))
    query, target = consent(command, google)
    assert query["redirect_uri"].startswith("http://127.0.0.1:")
    assert query["redirect_uri"].endswith("/oauth2callback")
    assert len(query["state"]) == 64 and query["access_type"] == "offline"
    assert "code_challenge" not in query
    assert target.startswith(query["redirect_uri"] + "?")
    status, _, page = get(target)               # the browser comes back to the command
    assert status == 200 and "Signed in" in page
    code, output = command.finish()
    assert code == 0, output
    assert "Signed in as %s" % ANN in output and "backend-ann (free-tier)" in output
    path, saved = saved_account(command)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert saved["refresh_token"] in google.refresh_tokens
    assert saved["email"] == ANN and "client_id" not in saved     # Gemini CLI's client
    book = command.home / ".config" / "gemini-proxy" / "code-assist-projects.json"
    assert json.loads(book.read_text())[ANN]["project"] == "backend-ann"
    exchange = google.token_calls[0]
    assert exchange["grant_type"] == "authorization_code"
    assert exchange["redirect_uri"] == query["redirect_uri"]
    assert "code_verifier" not in exchange
    assert exchange["content_type"].startswith("application/x-www-form-urlencoded")
    assert not re.search(r"ya29\.|1//", output)        # no token on the screen


def test_the_proxy_then_serves_with_that_login(tmp_path, google):
    command = Command(tmp_path, "login", "-c", write_config(tmp_path, google))
    get(consent(command, google)[1])
    assert command.finish()[0] == 0
    raw = {"server": {"port": 0}, "upstreams": {"google": upstream(google)}}
    proxy = RunningProxy(make_config(raw, {}), {"HOME": str(command.home)})
    try:
        status, _ = proxy.post("/v1/chat/completions", {
            "model": "gemini-2.5-pro", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200
        assert google.generate_calls()[-1]["account"] == ANN
        assert google.onboard_calls() == 0 and len([
            r for r in google.requests if r.get("method_name") == "loadCodeAssist"]) == 1
    finally:
        proxy.stop()


def test_a_callback_with_the_wrong_state_stops_the_login(tmp_path, google):
    command = Command(tmp_path, "login", "-c", write_config(tmp_path, google))
    query, target = consent(command, google)
    forged = re.sub(r"state=[0-9a-f]+", "state=" + "0" * 64, target)
    status, _, page = get(forged)
    assert status == 400 and "State mismatch" in page
    code, output = command.finish()
    assert code == 2 and "state" in output
    assert google.token_calls == []             # the code was never exchanged


def test_a_refused_consent_stops_the_login_with_googles_words(tmp_path, google):
    google.deny_next_consent()
    command = Command(tmp_path, "login", "-c", write_config(tmp_path, google))
    _, target = consent(command, google)
    assert "error=access_denied" in target
    assert get(target)[0] == 400
    code, output = command.finish()
    assert code == 2 and "access_denied" in output


def test_a_stray_request_to_the_callback_port_does_not_end_the_login(tmp_path, google):
    command = Command(tmp_path, "login", "-c", write_config(tmp_path, google))
    query, target = consent(command, google)
    base = query["redirect_uri"].rsplit("/", 1)[0]
    assert get(base + "/favicon.ico")[0] == 404
    assert get(target)[0] == 200
    assert command.finish()[0] == 0


def test_no_browser_login_with_a_pasted_code_and_pkce(tmp_path, google):
    command = Command(tmp_path, "login", "--no-browser", "-c",
                      write_config(tmp_path, google))
    query, target = consent(command, google)
    assert query["redirect_uri"] == "https://codeassist.google.com/authcode"
    assert query["code_challenge_method"] == "S256" and query["code_challenge"]
    pasted = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query))["code"]
    command.type(pasted + "\n")      # what the user pastes at the prompt
    code, output = command.finish()
    assert code == 0, output
    assert "Enter the authorization code: " in output
    exchange = google.token_calls[0]
    assert exchange["code_verifier"] and exchange["redirect_uri"] == query["redirect_uri"]
    assert saved_account(command)[1]["email"] == ANN


def test_a_wrong_pasted_code_is_refused_plainly(tmp_path, google):
    command = Command(tmp_path, "login", "--no-browser", "-c",
                      write_config(tmp_path, google))
    consent(command, google)
    command.type("4/not-the-code\n")
    code, output = command.finish()
    assert code == 2 and "did not accept" in output


def test_accounts_lists_each_account_from_its_files_when_no_proxy_runs(tmp_path, google):
    google.add_account("bob@example.com")
    creds = tmp_path / "creds"
    creds.mkdir()
    write_credentials(str(creds / "ann.json"), google.credentials(ANN))
    write_credentials(str(creds / "bob.json"), google.credentials("bob@example.com",
                                                                 "cliproxy"))
    config = tmp_path / "config.json"
    spec = dict(upstream(google), credentials=[str(creds)])
    config.write_text(json.dumps({"server": {"port": 1}, "upstreams": {"google": spec}}))
    command = Command(tmp_path, "accounts", "--json", "-c", str(config))
    code, output = command.finish()
    assert code == 0, output
    rows = json.loads(output)
    assert [r["email"] for r in rows] == [ANN, "bob@example.com"]
    assert rows[1]["project"] == "backend-bob"          # named in its file
    assert all(r["state"].startswith("not checked") for r in rows)


def test_accounts_shows_the_live_state_of_a_running_proxy(tmp_path, google):
    from fake_google import ca_rate_limit
    google.add_account("bob@example.com")
    creds = tmp_path / "creds"
    creds.mkdir()
    write_credentials(str(creds / "ann.json"), google.credentials(ANN))
    write_credentials(str(creds / "bob.json"), google.credentials("bob@example.com"))
    google.fault(ANN, ca_rate_limit(delay_seconds=600))
    spec = dict(upstream(google), credentials=[str(creds)])
    raw = {"server": {"port": 0, "state_dir": str(tmp_path / "state"),
                      "api_keys": ["client-key-1234567890"]}, "upstreams": {"google": spec}}
    proxy = RunningProxy(make_config(raw, {}), {})
    try:
        for _ in range(2):
            assert proxy.post("/v1/chat/completions", {
                "model": "gemini-2.5-pro", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": "Bearer client-key-1234567890"})[0] == 200
        raw["server"]["port"] = proxy.port
        config = tmp_path / "config.json"
        config.write_text(json.dumps(raw))
        command = Command(tmp_path, "accounts", "-c", str(config))
        code, output = command.finish()
    finally:
        proxy.stop()
    assert code == 0, output
    ann, bob = output.split("bob@example.com")
    assert "resting until" in ann and "gemini-2.5-pro" in ann
    assert "backend-bob (free-tier)" in bob and "today: 2 requests" in bob
