"""Real agent CLIs through the proxy, headless, each in a private network namespace with
only loopback (tests/agent_rig.py runs the fake upstream and the proxy in there too):

* Claude Code (Anthropic Messages client) to an OpenAI-compatible, a Gemini, an
  Anthropic and an OpenAI Responses upstream;
* Qwen Code (OpenAI Chat Completions client) to a Gemini, an Anthropic, an
  OpenAI-compatible and an OpenAI Responses upstream.

Each completes a plain prompt and a tool round trip with two parallel calls, and the tool
round trip again through a troubled upstream: a key pool with one rate-limited key, and
streams that stall long enough for the proxy's keep-alives. Set CLAUDE_CODE_BIN /
QWEN_CODE_BIN, or put `claude` / `qwen` on PATH; .ci/run installs them.
"""

import json
import os
import shutil

import pytest

import agent_rig

CLAUDE = os.environ.get("CLAUDE_CODE_BIN") or shutil.which("claude")
QWEN = os.environ.get("QWEN_CODE_BIN") or shutil.which("qwen")


UNSHARE = agent_rig.can_unshare()
needs_unshare = pytest.mark.skipif(
    not UNSHARE, reason="`unshare -n` is not allowed here, and the agents must run with "
                        "no network but loopback")


@pytest.fixture
def workdir(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the launch code is PINEAPPLE\n")
    (work / "app.py").write_text("print('hi')\n")
    return work


def run_in_netns(upstream, command, env, cwd, timeout=300, scenario="plain"):
    return agent_rig.run_in_netns(upstream, command, env, cwd, ["--scenario", scenario],
                                  timeout)


def last_json(text):
    """The last JSON object an agent printed (its -o json result)."""
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else text.find("{"):])


# -- Claude Code -------------------------------------------------------------------------

def claude(upstream, prompt, workdir, tmp_path, *flags, scenario="plain"):
    home = tmp_path / "claude-home"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "TMPDIR": str(home / "tmp"), "ANTHROPIC_BASE_URL": "{proxy}",
           "ANTHROPIC_API_KEY": "client-key", "DISABLE_TELEMETRY": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
           "DISABLE_ERROR_REPORTING": "1", "DISABLE_BUG_COMMAND": "1", "NO_COLOR": "1",
           "IS_SANDBOX": "1"}
    outcome = run_in_netns(upstream, [CLAUDE, "-p", prompt, "--output-format", "json"] +
                           list(flags), env, workdir, scenario=scenario)
    assert outcome["code"] == 0, (outcome["stderr"], outcome["stdout"][-2000:])
    return last_json(outcome["stdout"]), outcome["upstream_requests"]


claude_available = pytest.mark.skipif(
    not CLAUDE, reason="Claude Code is not installed (npm install -g "
                       "@anthropic-ai/claude-code@2.1.330, or set CLAUDE_CODE_BIN); .ci/run "
                       "installs it")


@claude_available
@needs_unshare
@pytest.mark.parametrize("upstream", ["openai", "gemini", "anthropic", "openai-responses"])
def test_claude_code_plain_prompt(upstream, workdir, tmp_path):
    result, requests = claude(upstream, "Say hi", workdir, tmp_path)
    assert result["result"] == "FAKE says hello."
    assert result["is_error"] is False
    assert requests, "nothing reached the upstream"


@claude_available
@needs_unshare
@pytest.mark.parametrize("upstream", ["openai", "gemini", "anthropic", "openai-responses"])
def test_claude_code_two_parallel_tools(upstream, workdir, tmp_path):
    prompt = 'CALL Read {"file_path": "%s"} CALL Bash {"command": "ls %s"}' % (
        workdir / "notes.txt", workdir)
    result, requests = claude(upstream, prompt, workdir, tmp_path,
                              "--dangerously-skip-permissions")
    assert "FAKE got tool result(s): Read -> " in result["result"]
    assert "PINEAPPLE" in result["result"]                 # Read ran
    assert "app.py" in result["result"]                    # Bash ran
    assert len(requests) == 2


def assert_scenario(scenario, requests):
    """The pool's bad key was tried once and never again; every turn was answered."""
    if scenario == "pool":
        keys = [r["key"] for r in requests]
        assert keys.count("key-b") == 1 and len(keys) == 3, keys


# Pass-through for the stalls (keep-alives go between the upstream's own events), the hub
# for the pool.
TROUBLES = [("pool", "gemini"), ("stall", "anthropic")]


@claude_available
@needs_unshare
@pytest.mark.parametrize("scenario, upstream", TROUBLES)
def test_claude_code_through_a_troubled_upstream(scenario, upstream, workdir, tmp_path):
    prompt = 'CALL Read {"file_path": "%s"} CALL Bash {"command": "ls %s"}' % (
        workdir / "notes.txt", workdir)
    result, requests = claude(upstream, prompt, workdir, tmp_path,
                              "--dangerously-skip-permissions", scenario=scenario)
    assert "PINEAPPLE" in result["result"] and "app.py" in result["result"]
    assert result["is_error"] is False
    assert_scenario(scenario, requests)


# -- Qwen Code ---------------------------------------------------------------------------

def qwen(upstream, prompt, workdir, tmp_path, *flags, scenario="plain"):
    env = agent_rig.qwen_home(tmp_path)
    outcome = run_in_netns(upstream, [QWEN, "-p", prompt, "-o", "json"] + list(flags), env,
                           workdir, scenario=scenario)
    assert outcome["code"] == 0, (outcome["stderr"], outcome["stdout"][-2000:])
    return outcome["stdout"], outcome["upstream_requests"]


qwen_available = pytest.mark.skipif(
    not QWEN, reason="Qwen Code is not installed (npm install -g @qwen-code/qwen-code@0.24.4, "
                     "or set QWEN_CODE_BIN); .ci/run installs it")


def qwen_answer(stdout):
    """The final answer in Qwen Code's -o json output (a result object or an event list)."""
    data = json.loads(stdout[stdout.find("[") if stdout.lstrip().startswith("[")
                             else stdout.find("{"):])
    if isinstance(data, list):
        results = [e for e in data if e.get("type") == "result"]
        return results[-1]["result"]
    return data.get("result") or data.get("response")


@qwen_available
@needs_unshare
@pytest.mark.parametrize("upstream", ["gemini", "anthropic", "openai", "openai-responses"])
def test_qwen_code_plain_prompt(upstream, workdir, tmp_path):
    stdout, requests = qwen(upstream, "Say hi", workdir, tmp_path)
    assert qwen_answer(stdout) == "FAKE says hello."
    assert requests


@qwen_available
@needs_unshare
@pytest.mark.parametrize("upstream", ["gemini", "anthropic", "openai", "openai-responses"])
def test_qwen_code_two_parallel_tools(upstream, workdir, tmp_path):
    prompt = 'CALL read_file {"file_path": "%s"} CALL glob {"pattern": "*.py", "path": "%s"}' \
        % (workdir / "notes.txt", workdir)
    stdout, requests = qwen(upstream, prompt, workdir, tmp_path, "--yolo")
    answer = qwen_answer(stdout)
    assert "FAKE got tool result(s): read_file -> " in answer
    assert "PINEAPPLE" in answer and "app.py" in answer
    assert len(requests) == 2


@qwen_available
@needs_unshare
@pytest.mark.parametrize("scenario, upstream", [("pool", "anthropic"), ("stall", "openai")])
def test_qwen_code_through_a_troubled_upstream(scenario, upstream, workdir, tmp_path):
    prompt = 'CALL read_file {"file_path": "%s"} CALL glob {"pattern": "*.py", "path": "%s"}' \
        % (workdir / "notes.txt", workdir)
    stdout, requests = qwen(upstream, prompt, workdir, tmp_path, "--yolo", scenario=scenario)
    answer = qwen_answer(stdout)
    assert "PINEAPPLE" in answer and "app.py" in answer
    assert_scenario(scenario, requests)
