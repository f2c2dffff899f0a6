"""Run an agent CLI against the proxy in front of a fake upstream, all in this process
tree, and print what happened as one JSON line. Used by tests/test_agents.py, inside
`unshare -n` where an agent must not reach any network:

    python3 tests/agent_rig.py --upstream gemini -- claude -p "Say hi" --output-format json

In the agent's arguments and environment, and in the files given with --template (a
config file the agent reads, written before the proxy's port is known), {proxy} stands for
the proxy's URL.
--scenario makes the upstream misbehave: "pool" gives the proxy three upstream keys of
which key-b is always rate-limited; "stall" pauses each streamed reply after its first
event for longer than the proxy's keep-alive interval, so the agent gets keep-alives.
--upstream code-assist is a fake Google (tests/fake_google.py) behind a code-assist
upstream, every client model routed to CODE_ASSIST_MODEL: one account, or with "pool" the
three of code_assist_accounts(), one rate-limited and one revoked.
--access-log turns on the proxy's access log. The JSON line holds the agent's exit code,
stdout and stderr, the requests that reached the upstream (for code-assist: the account
and status of each, and the proxy's GET /status at the end), and the proxy's log lines
(proxy_log: warnings and errors, and the access log when it is on).
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from conftest import RunningProxy, make_config  # noqa: E402
from fake_google import FakeGoogle, ca_rate_limit, write_credentials  # noqa: E402
from fake_upstream import pause_after  # noqa: E402
from faults import FAKES, error  # noqa: E402

STALL_SECONDS = 1.0
KEEPALIVE_INTERVAL = 0.2
# key-b's rest in the "pool" scenario: longer than any agent run, however slow the
# machine, so the agent's later turns never find it rested and try it again.
POOL_REST = 3600


def stalling(fake):
    """The fake's own replies, with a pause after a stream's first event."""
    def reply(handler, request):
        automatic = fake.automatic(handler.record, len(fake.requests))
        pause_after(automatic, writes=1, seconds=STALL_SECONDS)(handler, request)
    return reply


def upstream_spec(kind, fake, scenario):
    spec = {"kind": kind, "base_url": fake.base_url, "api_key": "upstream-key"}
    if scenario == "pool":
        # key-b first: an agent that names its session keeps the key its first turn had,
        # so the limited key must be the one that turn meets for the pool to be tested
        spec["api_key"], spec["api_keys"] = "key-b", ["upstream-key", "key-c"]
        fake.rules["key-b"] = error(kind, 429, "key-b is over its quota",
                                    retry_after=POOL_REST)
    elif scenario == "stall":
        fake.rules["*"] = stalling(fake)
    return spec


# -- a code-assist upstream: Google accounts ----------------------------------------------

CODE_ASSIST = "code-assist"
CODE_ASSIST_MODEL = "gemini-2.5-pro"      # every client model name is routed to this one
# The "pool" accounts, in the proxy's round-robin order (their files' names sort so), each
# in a credential file of another format (fake_google.FakeGoogle.credentials): Gemini CLI's
# (a live token, no project: found with loadCodeAssist), CLIProxyAPI's (with its project),
# a bare token reply (no expiry: refreshed before its first use, then the project found).
LIMITED, REVOKED, GOOD = "a-limited@example.com", "b-revoked@example.com", \
    "c-good@example.com"
POOL_ACCOUNTS = [(LIMITED, "gemini-cli"), (REVOKED, "cliproxy"), (GOOD, "token-response")]


def code_assist_accounts(fake, folder, scenario="pool"):
    """Accounts on the FakeGoogle `fake` and their credential files in `folder`: with
    "pool" the three of POOL_ACCOUNTS, where LIMITED's calls of CODE_ASSIST_MODEL get a
    429 RATE_LIMIT_EXCEEDED that asks for POOL_REST seconds, and REVOKED's file holds an
    expired access token whose refresh token Google has revoked (so the proxy refreshes it
    and gets invalid_grant): only GOOD can answer. With "plain", GOOD alone. Returns the
    emails, in file order."""
    os.makedirs(folder, exist_ok=True)
    accounts = POOL_ACCOUNTS if scenario == "pool" else POOL_ACCOUNTS[-1:]
    for email, fmt in accounts:
        fake.add_account(email)
        write_credentials(os.path.join(folder, email.split("@")[0] + ".json"),
                          fake.credentials(email, fmt, expired=email == REVOKED))
    if scenario == "pool":
        fake.revoke(REVOKED)
        fake.fault(LIMITED, ca_rate_limit(POOL_REST, model=CODE_ASSIST_MODEL),
                   model=CODE_ASSIST_MODEL)
    return [email for email, _ in accounts]


def code_assist_config(fake, folder, state_dir):
    """The proxy's configuration: one code-assist upstream, "google", on the fake with the
    credential files in `folder`; every client model name routed to CODE_ASSIST_MODEL."""
    return {"upstreams": {"google": {"kind": CODE_ASSIST, "base_url": fake.base_url,
                                     "oauth_token_url": fake.token_url,
                                     "credentials": [str(folder)]}},
            "routes": [{"model": "*", "upstream": "google",
                        "upstream_model": CODE_ASSIST_MODEL}],
            "server": {"port": 0, "state_dir": str(state_dir)}}


def code_assist_calls(fake):
    """The generate calls the fake Google got: account (the bearer's email, None when the
    token was not live), model, method and the status it answered."""
    return [{"account": r.get("account"), "model": (r.get("json") or {}).get("model"),
             "method": r.get("method_name"), "status": r.get("status")}
            for r in fake.generate_calls()]


class LogLines(logging.Handler):
    """The proxy's log records, kept as lines for the outcome."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record):
        try:
            self.lines.append(self.format(record))
        except Exception:   # a record that does not format is no reason to lose the run
            pass


def can_unshare():
    """Whether this process may make a network namespace (the agents run in one)."""
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_in_netns(upstream, command, env, cwd, options=(), timeout=300):
    """This rig's outcome for `command`, run in a network namespace holding only loopback;
    `options` are more of the rig's flags (--scenario, --template, --access-log)."""
    rig = [sys.executable, os.path.abspath(__file__), "--upstream", upstream,
           "--cwd", str(cwd)] + list(options) + \
        ["--env=%s=%s" % item for item in env.items()] + ["--"] + command
    script = 'ip link set lo up && exec "$@"'
    completed = subprocess.run(["unshare", "-n", "sh", "-c", script, "sh"] + rig,
                               capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def fill_in_template(path, url):
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("{proxy}", url))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", choices=sorted(FAKES) + [CODE_ASSIST], required=True)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the agent")
    parser.add_argument("--cwd", default=".")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--scenario", choices=["plain", "pool", "stall"], default="plain")
    parser.add_argument("--template", action="append", default=[],
                        help="a file in which to replace {proxy} before the agent starts")
    parser.add_argument("--access-log", action="store_true", help="the proxy's access log")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    proxy_log = LogLines()
    logger = logging.getLogger("gemini_proxy")
    logger.addHandler(proxy_log)
    to_stderr = logging.StreamHandler(sys.stderr)   # as before: warnings on the rig's stderr
    to_stderr.setLevel(logging.WARNING)
    logger.addHandler(to_stderr)
    logger.setLevel(logging.INFO if args.access_log else logging.WARNING)
    scratch = tempfile.mkdtemp(prefix="agent-rig-")
    if args.upstream == CODE_ASSIST:
        if args.scenario == "stall":
            parser.error("--upstream code-assist takes --scenario plain or pool")
        fake = FakeGoogle().start()
        code_assist_accounts(fake, os.path.join(scratch, "creds"), args.scenario)
        raw = code_assist_config(fake, os.path.join(scratch, "creds"),
                                 os.path.join(scratch, "state"))
        raw["server"]["keepalive_interval"] = KEEPALIVE_INTERVAL
    else:
        fake = FAKES[args.upstream]().start()
        raw = {"upstreams": {"up": upstream_spec(args.upstream, fake, args.scenario)},
               "default_model": "fake-model",
               "server": {"port": 0, "keepalive_interval": KEEPALIVE_INTERVAL}}
    raw["logging"] = {"access_log": args.access_log}
    proxy_environ = {"HOME": scratch}       # nothing of the real home directory
    proxy = RunningProxy(make_config(raw, proxy_environ), proxy_environ)
    for path in args.template:
        fill_in_template(path, proxy.url)
    env = dict(os.environ)
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value.replace("{proxy}", proxy.url)
    try:
        completed = subprocess.run([part.replace("{proxy}", proxy.url) for part in command],
                                   env=env, cwd=args.cwd, stdin=subprocess.DEVNULL,
                                   capture_output=True, text=True, timeout=args.timeout)
        outcome = {"code": completed.returncode, "stdout": completed.stdout,
                   "stderr": completed.stderr[-4000:]}
    except subprocess.TimeoutExpired as exc:
        outcome = {"code": None, "stdout": exc.stdout or "", "stderr": "timed out"}
    outcome["upstream_requests"] = [{"path": r["path"], "json": r["json"], "key": r["key"]}
                                    for r in fake.requests if r.get("method") == "POST"]
    if args.upstream == CODE_ASSIST:
        outcome["generate_calls"] = code_assist_calls(fake)
        status, _, page = proxy.request("GET", "/status")
        outcome["status_page"] = page.decode("utf-8", "replace")
    proxy.stop()
    fake.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    outcome["proxy_log"] = proxy_log.lines[-200:]
    print(json.dumps(outcome))


if __name__ == "__main__":
    main()


def qwen_home(tmp_path):
    """Qwen Code's environment for a headless run against the proxy: a home of its own
    with settings that pick the OpenAI protocol and turn telemetry and updates off."""
    home = tmp_path / "qwen-home"
    (home / ".qwen").mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    (home / ".qwen" / "settings.json").write_text(json.dumps({
        "security": {"auth": {"selectedType": "openai"}},
        "model": {"name": "qwen3-coder-plus"},
        "privacy": {"usageStatisticsEnabled": False}, "telemetry": {"enabled": False},
        "memory": {"enableManagedAutoMemory": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False}}))
    return {"HOME": str(home), "TMPDIR": str(home / "tmp"), "NO_COLOR": "1",
            "OPENAI_BASE_URL": "{proxy}/v1", "OPENAI_API_KEY": "client-key",
            "OPENAI_MODEL": "qwen3-coder-plus"}
