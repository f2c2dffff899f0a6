"""Real OpenAI Responses API clients through the proxy (POST /v1/responses), headless, each
in a private network namespace with only loopback (tests/agent_rig.py runs the fake
upstream and the proxy in there too):

* Codex CLI 0.169.0 (`codex exec --json`, model gpt-5.5) to an OpenAI-compatible, a Gemini
  and an Anthropic upstream, and an OpenAI Responses one (passed through): a plain
  prompt, and a task in which the model runs a shell command (Codex's
  `exec_command` function tool) and edits a file with `apply_patch` (a custom, freeform
  tool, which the proxy gives a non-Responses upstream as a function `apply_patch` with
  one string parameter `input`), both in one turn;
* opencode 1.18.33 with its `@ai-sdk/openai` (Responses) adapter: a plain prompt.

The fake upstream's rule-based model makes the tool calls: a prompt holding
`CALL name {json}` directives is answered with those calls, and the tool results with a
summary of them (tests/fake_upstream.py, brain()).

Codex gets a fresh HOME and CODEX_HOME holding a config.toml like
../shared/clients/codex_headless.sh writes: a provider whose base_url is the proxy's /v1
(agent_rig.py fills in the port), wire_api "responses", its key from an env_key variable,
one retry at most, and analytics, feedback, OpenTelemetry, update checks, plugins and apps
off (with plugins on it looks up github.com and chatgpt.com at start).

opencode gets a fresh HOME with XDG dirs inside it and an opencode.json like
../shared/clients/opencode_headless.sh writes, with OPENCODE_DISABLE_MODELS_FETCH,
_AUTOUPDATE, _LSP_DOWNLOAD, _DEFAULT_PLUGINS and _SHARE set. A provider's "npm" adapter is
installed at run time unless opencode bundles it; 1.18.33 bundles @ai-sdk/openai (and
@ai-sdk/openai-compatible, @ai-sdk/anthropic, ...) inside its binary, which is why the
headless script needs nothing for it offline. So nothing is pre-installed or cached: the
run is offline from the start, and a run that tried to fetch the adapter would fail in the
namespace, with no network to fetch it from.

PWD is set to the work folder: opencode takes its project folder from it, not from the
process's working directory. Set CODEX_BIN / OPENCODE_BIN, or put `codex` / `opencode`
on PATH; .ci/run installs them.
"""

import json
import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import agent_rig  # noqa: E402
from fake_upstream import HELLO  # noqa: E402

CODEX = os.environ.get("CODEX_BIN") or shutil.which("codex")
OPENCODE = os.environ.get("OPENCODE_BIN") or shutil.which("opencode")
# Converted to Chat Completions, Gemini and Anthropic Messages; and passed through to a
# Responses upstream.
UPSTREAMS = ["openai", "gemini", "anthropic", "openai-responses"]


UNSHARE = agent_rig.can_unshare()
needs_unshare = pytest.mark.skipif(
    not UNSHARE, reason="`unshare -n` is not allowed here, and the agents must run with "
                        "no network but loopback")
codex_available = pytest.mark.skipif(
    not CODEX, reason="Codex CLI is not installed (npm install -g @openai/codex@0.169.0, "
                      "or set CODEX_BIN); .ci/run installs it")
opencode_available = pytest.mark.skipif(
    not OPENCODE, reason="opencode is not installed (npm install -g opencode-ai@1.18.33, "
                         "or set OPENCODE_BIN); .ci/run installs it")


def run_in_netns(upstream, command, env, cwd, templates=(), timeout=300):
    """agent_rig's outcome for `command`, with the proxy's access log on (the outcome's
    proxy_log) and {proxy} filled in in the `templates` files."""
    return agent_rig.run_in_netns(upstream, command, env, cwd, ["--access-log"] + [
        "--template=%s" % path for path in templates], timeout)


def explain(outcome):
    """What to show when a run went wrong: the agent's output and the proxy's log."""
    return "\n".join(["exit code: %r" % outcome["code"],
                      "-- agent stdout (tail):", outcome["stdout"][-4000:],
                      "-- agent stderr (tail):", outcome["stderr"][-3000:],
                      "-- proxy log:"] + outcome.get("proxy_log", [])[-40:])


def json_lines(text):
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def proxy_answered(outcome, path="/v1/responses"):
    """The access-log lines of the proxy's answers to POST `path`."""
    return [line for line in outcome.get("proxy_log", []) if " POST %s " % path in line]


@pytest.fixture
def workdir(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the launch code is PINEAPPLE\n")
    (work / "app.py").write_text("print('hi')\n")
    return work


# -- Codex CLI ---------------------------------------------------------------------------

CODEX_CONFIG = """\
model = "gpt-5.5"
model_provider = "proxy"
check_for_update_on_startup = false

[model_providers.proxy]
name = "gemini-proxy"
base_url = "{proxy}/v1"
env_key = "GEMINI_PROXY_TEST_KEY"
wire_api = "responses"
request_max_retries = 1
stream_max_retries = 1

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"

[features]
plugins = false
remote_plugin = false
apps = false
"""


def codex(upstream, prompt, workdir, tmp_path, *flags):
    """(outcome, events of `codex exec --json`) for one run."""
    home = tmp_path / "codex-home"
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    config = home / ".codex" / "config.toml"
    config.write_text(CODEX_CONFIG)
    env = {"HOME": str(home), "CODEX_HOME": str(home / ".codex"), "TMPDIR": str(home / "tmp"),
           "PWD": str(workdir), "NO_COLOR": "1", "RUST_LOG": "warn",
           "GEMINI_PROXY_TEST_KEY": "client-key"}
    command = [CODEX, "exec", "--skip-git-repo-check", "--ephemeral", "-m", "gpt-5.5",
               "--json"] + list(flags) + [prompt]
    outcome = run_in_netns(upstream, command, env, workdir, templates=[str(config)])
    return outcome, json_lines(outcome["stdout"])


def completed_items(events, kind):
    return [e["item"] for e in events
            if e.get("type") == "item.completed" and e.get("item", {}).get("type") == kind]


def final_message(events):
    messages = completed_items(events, "agent_message")
    return messages[-1]["text"] if messages else None


@codex_available
@needs_unshare
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_codex_plain_prompt(upstream, workdir, tmp_path):
    outcome, events = codex(upstream, "Say hi", workdir, tmp_path)
    assert outcome["code"] == 0, explain(outcome)
    assert HELLO in (final_message(events) or ""), explain(outcome)
    assert [e for e in events if e.get("type") == "turn.completed"], explain(outcome)
    assert not [e for e in events if e.get("type") in ("error", "turn.failed")], \
        explain(outcome)
    answered = proxy_answered(outcome)
    assert answered and all(" 200 " in line for line in answered), explain(outcome)
    assert len(outcome["upstream_requests"]) == 1, explain(outcome)     # no retry


PATCH = ("*** Begin Patch\n"
         "*** Update File: notes.txt\n"
         "@@\n"
         "-the launch code is PINEAPPLE\n"
         "+the launch code is MANGO\n"
         "*** End Patch\n")
PATCHED = "Updated the following files:\nM notes.txt"     # what Codex's apply_patch says
# Two calls in one turn: a shell command whose output the prompt does not hold (app.py's
# text), and the patch. They touch different files, so their order does not matter.
TOOL_TASK = 'CALL exec_command {"cmd": "cat app.py"} CALL apply_patch %s' % json.dumps(
    {"input": PATCH})


def reasoning_sent_back(upstream, request):
    """Whether the upstream got its own reasoning back, in its own terms, on the turn with
    the calls: Codex asks for reasoning (gpt-5.5, effort medium), keeps the reasoning item
    the proxy gave it and returns it unchanged, encrypted_content and all. (The
    OpenAI-compatible fake is not asked for reasoning: send_reasoning_effort is off.)"""
    if upstream == "openai":
        return True
    if upstream == "gemini":
        model_turn = [c for c in request["contents"] if c["role"] == "model"][-1]
        call = next(p for p in model_turn["parts"] if "functionCall" in p)
        return call.get("thoughtSignature", "").startswith("sig-fc-")
    if upstream == "anthropic":
        turn = [m for m in request["messages"] if m["role"] == "assistant"][-1]
        first = turn["content"][0]
        return first["type"] == "thinking" and first["signature"].startswith("sig-anthropic-")
    reasoning = [i for i in request["input"] if i.get("type") == "reasoning"]
    return [r.get("encrypted_content") for r in reasoning] == ["enc-fake-1"]


@codex_available
@needs_unshare
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_codex_runs_a_command_and_applies_a_patch(upstream, workdir, tmp_path):
    outcome, events = codex(upstream, TOOL_TASK, workdir, tmp_path,
                            "--dangerously-bypass-approvals-and-sandbox")
    assert outcome["code"] == 0, explain(outcome)
    # The shell command ran and Codex saw its output...
    commands = completed_items(events, "command_execution")
    assert len(commands) == 1 and "cat app.py" in commands[0]["command"], explain(outcome)
    assert commands[0]["exit_code"] == 0, explain(outcome)
    assert "print('hi')" in commands[0]["aggregated_output"], explain(outcome)
    # ...the patch was applied, to the file on disk...
    changes = completed_items(events, "file_change")
    assert len(changes) == 1 and changes[0]["status"] == "completed", explain(outcome)
    assert (workdir / "notes.txt").read_text() == "the launch code is MANGO\n"
    # ...and both results went back upstream, in the one request after the calls, and
    # reached the model under the names of the calls they answer.
    requests = outcome["upstream_requests"]
    assert len(requests) == 2, explain(outcome)
    last = json.dumps(requests[-1]["json"])
    assert all(json.dumps(text)[1:-1] in last for text in ("print('hi')", PATCHED)), \
        explain(outcome)
    assert reasoning_sent_back(upstream, requests[-1]["json"]), explain(outcome)
    answer = final_message(events) or ""
    assert answer.startswith("FAKE got tool result(s): "), explain(outcome)
    assert "exec_command -> " in answer and "print('hi')" in answer, explain(outcome)
    assert "apply_patch -> " in answer and PATCHED in answer, explain(outcome)
    assert not [e for e in events if e.get("type") in ("error", "turn.failed")], \
        explain(outcome)


# -- opencode ----------------------------------------------------------------------------

OPENCODE_CONFIG = {
    "$schema": "https://opencode.ai/config.json",
    "provider": {"fake": {
        "npm": "@ai-sdk/openai",          # the Responses API adapter, bundled in opencode
        "name": "gemini-proxy",
        "options": {"baseURL": "{proxy}/v1", "apiKey": "client-key"},
        "models": {"fake-model": {"name": "fake-model", "tool_call": True, "reasoning": False,
                                  "limit": {"context": 128000, "output": 8192}}}}},
    "model": "fake/fake-model",
    "small_model": "fake/fake-model",
    "autoupdate": False,
    "share": "disabled",
}


def opencode(upstream, prompt, workdir, tmp_path, *flags):
    """(outcome, events of `opencode run --format json`) for one run."""
    home = tmp_path / "opencode-home"
    (home / ".config" / "opencode").mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    config = home / ".config" / "opencode" / "opencode.json"
    config.write_text(json.dumps(OPENCODE_CONFIG, indent=2))
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_DATA_HOME": str(home / ".local" / "share"),
           "XDG_CACHE_HOME": str(home / ".cache"),
           "XDG_STATE_HOME": str(home / ".local" / "state"), "TMPDIR": str(home / "tmp"),
           "PWD": str(workdir), "NO_COLOR": "1",
           "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_AUTOUPDATE": "1",
           "OPENCODE_DISABLE_LSP_DOWNLOAD": "1", "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
           "OPENCODE_DISABLE_SHARE": "1"}
    command = [OPENCODE, "run", "-m", "fake/fake-model", "--format", "json"] + \
        list(flags) + [prompt]
    outcome = run_in_netns(upstream, command, env, workdir, templates=[str(config)])
    return outcome, json_lines(outcome["stdout"])


@opencode_available
@needs_unshare
@pytest.mark.parametrize("upstream", ["openai"])
def test_opencode_responses_adapter_plain_prompt(upstream, workdir, tmp_path):
    outcome, events = opencode(upstream, "Say hi", workdir, tmp_path)
    assert outcome["code"] == 0, explain(outcome)
    assert not [e for e in events if e.get("type") == "error"], explain(outcome)
    texts = "".join(e.get("part", {}).get("text", "") for e in events
                    if e.get("type") == "text")
    assert HELLO in texts, explain(outcome)
    # It spoke the Responses API to the proxy (the adapter, not a Chat Completions one).
    assert proxy_answered(outcome), explain(outcome)
    assert all(" 200 " in line for line in proxy_answered(outcome)), explain(outcome)
    assert not proxy_answered(outcome, "/v1/chat/completions"), explain(outcome)
    assert outcome["upstream_requests"], explain(outcome)
