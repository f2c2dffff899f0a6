"""The clients CI runs, through a code-assist upstream whose pool holds three Google
accounts (tests/fake_google.py, set up by agent_rig.code_assist_accounts):

* LIMITED's calls of the model get a 429 RATE_LIMIT_EXCEEDED asking for an hour's rest;
* REVOKED's access token has expired and Google has revoked its refresh token, so the
  proxy must refresh it and gets invalid_grant;
* GOOD alone can answer.

Each client does a tool round trip (the model asks for a tool, the client runs it or the
test gives the result, the model's answer comes back), streamed where the client streams,
without ever seeing an error: the official SDKs (google-genai, openai, anthropic) in this
process, Gemini CLI headless here too, Claude Code and Qwen Code headless in a network
namespace with the proxy and the fake Google (tests/agent_rig.py). Then what Google saw:
every answered generate call was GOOD's, LIMITED was asked and answered 429, REVOKED never
had a token to call with; and the proxy's GET /status: LIMITED cooling for the model,
REVOKED out with a reason about its refresh token, and no token anywhere in the page or in
the proxy's log.

Clients missing here skip (.ci/run installs them): the SDKs in the Python running the
tests; GEMINI_CLI_BIN, CLAUDE_CODE_BIN, QWEN_CODE_BIN (or gemini, claude, qwen on PATH).
"""

import importlib
import json
import logging
import os
import shutil
import subprocess

import pytest

import agent_rig
from agent_rig import CODE_ASSIST, CODE_ASSIST_MODEL, GOOD, LIMITED, REVOKED, qwen_home
from conftest import RunningProxy, make_config
from fake_google import FakeGoogle


def installed(module):
    """The module, or None when it is not installed here."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


genai = installed("google.genai")
openai = installed("openai")
anthropic = installed("anthropic")
GEMINI = os.environ.get("GEMINI_CLI_BIN") or shutil.which("gemini")
CLAUDE = os.environ.get("CLAUDE_CODE_BIN") or shutil.which("claude")
QWEN = os.environ.get("QWEN_CODE_BIN") or shutil.which("qwen")

# What Google's tokens look like (access tokens, refresh tokens): none may be shown.
TOKEN_MARKS = ("ya29.", "1//")
SECRET = "the launch code is PINEAPPLE"     # in the file the agents' tools read
TOOLS = {"read": {"type": "object", "properties": {"path": {"type": "string"}},
                  "required": ["path"]}}
ONE_CALL = 'CALL read {"path": "b.txt"}'
ANSWER = "FAKE got tool result(s): read -> BBB"


# -- what every client's run must leave behind -----------------------------------------------

def assert_only_the_good_account_served(calls, status_page, log_lines, turns):
    """`calls`: the generate calls Google saw (agent_rig.code_assist_calls); `turns`: how
    many answers the client got at least."""
    served = [c for c in calls if c["status"] == 200]
    assert len(served) >= turns, calls
    assert {c["account"] for c in served} == {GOOD}, calls
    assert {c["model"] for c in calls} == {CODE_ASSIST_MODEL}, calls
    # LIMITED was asked (round robin starts with it) and only ever said 429; every call
    # had a live token, so REVOKED made none; GOOD failed none.
    assert [c["status"] for c in calls if c["account"] == LIMITED][:1] == [429], calls
    assert {c["status"] for c in calls if c["account"] == LIMITED} == {429}, calls
    assert {c["account"] for c in calls} == {LIMITED, GOOD}, calls
    assert {c["status"] for c in calls if c["account"] == GOOD} == {200}, calls

    page = json.loads(status_page)
    keys = {k["email"]: k for k in page["upstreams"]["google"]["keys"]}
    assert sorted(keys) == [LIMITED, REVOKED, GOOD], page
    limited, revoked, good = keys[LIMITED], keys[REVOKED], keys[GOOD]
    assert limited["state"] == "cooling", limited
    assert list(limited["cooling_until"]) == [CODE_ASSIST_MODEL], limited
    assert limited["refused"] == {} and limited["rate_limited"] >= 1, limited
    assert revoked["state"] == "refused", revoked
    assert "refresh token" in revoked["refused"]["*"], revoked
    assert "invalid_grant" in revoked["refused"]["*"], revoked
    assert good["state"] == "ready" and good["failures"] == 0, good

    for mark in TOKEN_MARKS:
        assert mark not in status_page, status_page
        assert not [line for line in log_lines if mark in line], log_lines
    said = "\n".join(log_lines)
    assert "account %s is out" % REVOKED in said and "refresh token" in said, said


def tool_result_sent(requests, text):
    """Whether a generate call carried a functionResponse holding `text` (the tool's
    output, back to Code Assist inside the envelope)."""
    for body in requests:
        for content in ((body or {}).get("request") or {}).get("contents") or ():
            for part in content.get("parts") or ():
                if "functionResponse" in part and text in json.dumps(part):
                    return True
    return False


# -- the SDKs and Gemini CLI: proxy and fake Google in this process --------------------------

class Pool:
    def __init__(self, fake, proxy, log):
        self.fake, self.proxy, self.log = fake, proxy, log

    def calls(self):
        return agent_rig.code_assist_calls(self.fake)

    def sent(self):
        """The envelopes of the generate calls GOOD answered."""
        return [r["json"] for r in self.fake.generate_calls(GOOD) if r.get("status") == 200]

    def check(self, turns, tool_output):
        status, _, page = self.proxy.request("GET", "/status")
        assert status == 200, page
        assert_only_the_good_account_served(self.calls(), page.decode("utf-8"),
                                            self.log.lines, turns)
        assert tool_result_sent(self.sent(), tool_output), self.sent()


@pytest.fixture
def pool(tmp_path):
    fake = FakeGoogle().start()
    agent_rig.code_assist_accounts(fake, str(tmp_path / "creds"), "pool")
    log = agent_rig.LogLines()
    log.setLevel(logging.DEBUG)
    logger = logging.getLogger("gemini_proxy")
    level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG)
    environ = {"HOME": str(tmp_path / "home")}      # nothing of the real home directory
    proxy = None
    try:
        proxy = RunningProxy(make_config(agent_rig.code_assist_config(
            fake, tmp_path / "creds", tmp_path / "state"), environ), environ)
        yield Pool(fake, proxy, log)
    finally:
        if proxy is not None:
            proxy.stop()
        fake.stop()
        logger.removeHandler(log)
        logger.setLevel(level)


# -- google-genai ---------------------------------------------------------------------------

@pytest.mark.skipif(not genai, reason="google-genai is not installed (pip install "
                    "google-genai; .ci/run installs it)")
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_google_genai_tool_round_trip(pool, stream):
    from google.genai import types
    client = genai.Client(api_key="client-key", http_options=types.HttpOptions(
        base_url=pool.proxy.url, api_version="v1beta",
        retry_options=types.HttpRetryOptions(attempts=1)))
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
            name="read", description="Read a file", parameters_json_schema=TOOLS["read"])])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))

    def turn(contents):
        if stream:
            chunks = list(client.models.generate_content_stream(
                model="gemini-2.5-flash", contents=contents, config=config))
            parts = [p for c in chunks for p in c.candidates[0].content.parts or []]
            return (types.Content(role="model", parts=parts), parts,
                    [fc for c in chunks for fc in c.function_calls or []])
        response = client.models.generate_content(model="gemini-2.5-flash",
                                                  contents=contents, config=config)
        content = response.candidates[0].content
        return content, list(content.parts or []), response.function_calls or []

    history = [types.Content(role="user", parts=[types.Part.from_text(text=ONE_CALL)])]
    content, _, calls = turn(history)
    assert [(c.name, c.args) for c in calls] == [("read", {"path": "b.txt"})]
    history += [content, types.Content(role="user", parts=[types.Part(
        function_response=types.FunctionResponse(id=calls[0].id, name="read",
                                                 response={"output": "BBB"}))])]
    _, parts, calls = turn(history)
    assert calls == []
    assert "".join(p.text or "" for p in parts) == ANSWER
    pool.check(turns=2, tool_output="BBB")
    methods = {c["method"] for c in pool.calls()}
    assert methods == {"streamGenerateContent" if stream else "generateContent"}


# -- openai ---------------------------------------------------------------------------------

@pytest.mark.skipif(not openai, reason="the openai SDK is not installed (pip install "
                    "openai; .ci/run installs it)")
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_openai_tool_round_trip(pool, stream):
    client = openai.OpenAI(base_url=pool.proxy.url + "/v1", api_key="client-key",
                           max_retries=0, _strict_response_validation=True)
    tools = [{"type": "function", "function": {"name": "read", "description": "Read a file",
                                               "parameters": TOOLS["read"]}}]
    messages = [{"role": "user", "content": ONE_CALL}]
    if stream:
        with client.chat.completions.stream(model="gpt-x", messages=messages,
                                            tools=tools) as events:
            first = events.get_final_completion()
    else:
        first = client.chat.completions.create(model="gpt-x", messages=messages, tools=tools)
    assert first.choices[0].finish_reason == "tool_calls"
    message = first.choices[0].message
    [call] = message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == \
        ("read", {"path": "b.txt"})
    messages += [message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "BBB"}]
    second = client.chat.completions.create(model="gpt-x", messages=messages, tools=tools,
                                            stream=stream)
    if stream:
        chunks = list(second)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    else:
        text = second.choices[0].message.content
    assert text == ANSWER
    pool.check(turns=2, tool_output="BBB")


# -- anthropic ------------------------------------------------------------------------------

@pytest.mark.skipif(not anthropic, reason="the anthropic SDK is not installed (pip install "
                    "anthropic; .ci/run installs it)")
def test_anthropic_streamed_tool_round_trip(pool):
    client = anthropic.Anthropic(base_url=pool.proxy.url, api_key="client-key",
                                 max_retries=0, _strict_response_validation=True)
    tools = [{"name": "read", "description": "Read a file", "input_schema": TOOLS["read"]}]
    messages = [{"role": "user", "content": ONE_CALL}]
    with client.messages.stream(model="claude-x", max_tokens=1000, messages=messages,
                                tools=tools) as events:
        first = events.get_final_message()
    assert first.stop_reason == "tool_use"
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert (call.name, call.input) == ("read", {"path": "b.txt"})
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                               "content": "BBB"}]}]
    with client.messages.stream(model="claude-x", max_tokens=1000, messages=messages,
                                tools=tools) as events:
        text = "".join(events.text_stream)
        second = events.get_final_message()
    assert text == ANSWER and second.stop_reason == "end_turn"
    pool.check(turns=2, tool_output="BBB")


# -- the agents -----------------------------------------------------------------------------

@pytest.fixture
def workdir(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text(SECRET + "\n")
    (work / "app.py").write_text("print('hi')\n")
    return work


GEMINI_SETTINGS = {
    # Without selectedType the CLI picks the "gateway" auth type and headless mode exits 41.
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
}


@pytest.mark.skipif(not GEMINI, reason="Gemini CLI is not installed (npm install -g "
                    "@google/gemini-cli@0.61.0, or set GEMINI_CLI_BIN); .ci/run installs it")
def test_gemini_cli_tool_round_trip(pool, workdir, tmp_path):
    home = tmp_path / "gemini-home"
    (home / ".gemini").mkdir(parents=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps(GEMINI_SETTINGS))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home),
           "GEMINI_CLI_HOME": str(home), "TMPDIR": str(home),
           "GOOGLE_GEMINI_BASE_URL": pool.proxy.url, "GEMINI_API_KEY": "client-key",
           "GEMINI_CLI_TRUST_WORKSPACE": "true", "NO_COLOR": "1"}
    prompt = 'CALL read_file {"file_path": "%s"}' % (workdir / "notes.txt")
    completed = subprocess.run(
        [GEMINI, "-m", "gemini-2.5-flash", "-p", prompt, "--output-format", "json", "--yolo"],
        cwd=str(workdir), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300)
    assert completed.returncode == 0, (completed.stderr[-3000:], completed.stdout[-2000:])
    result = json.loads(completed.stdout[completed.stdout.find("{"):])
    assert "read_file -> " + SECRET in result["response"]
    assert result["stats"]["tools"]["totalSuccess"] == 1
    [stats] = result["stats"]["models"].values()
    assert stats["api"]["totalErrors"] == 0           # the CLI never saw the 429
    pool.check(turns=2, tool_output="PINEAPPLE")


UNSHARE = agent_rig.can_unshare()
needs_unshare = pytest.mark.skipif(
    not UNSHARE, reason="`unshare -n` is not allowed here, and the agents must run with "
                        "no network but loopback")


def run_agent(command, env, workdir):
    """The rig's outcome for an agent run against the pool, inside a network namespace;
    the agent must have succeeded."""
    outcome = agent_rig.run_in_netns(CODE_ASSIST, command, env, workdir,
                                     ["--scenario", "pool", "--access-log"])
    assert outcome["code"] == 0, (outcome["stderr"], outcome["stdout"][-2000:],
                                  outcome["proxy_log"])
    return outcome


def check_agent_run(outcome):
    assert_only_the_good_account_served(outcome["generate_calls"], outcome["status_page"],
                                        outcome["proxy_log"], turns=2)
    generated = [r["json"] for r in outcome["upstream_requests"]
                 if r["path"].endswith("GenerateContent") or
                 r["path"].endswith("generateContent")]
    assert tool_result_sent(generated, "PINEAPPLE"), generated


@pytest.mark.skipif(not CLAUDE, reason="Claude Code is not installed (npm install -g "
                    "@anthropic-ai/claude-code@2.1.330, or set CLAUDE_CODE_BIN); .ci/run "
                    "installs it")
@needs_unshare
def test_claude_code_tool_round_trip(workdir, tmp_path):
    home = tmp_path / "claude-home"
    (home / "tmp").mkdir(parents=True)
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "TMPDIR": str(home / "tmp"), "ANTHROPIC_BASE_URL": "{proxy}",
           "ANTHROPIC_API_KEY": "client-key", "DISABLE_TELEMETRY": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
           "DISABLE_ERROR_REPORTING": "1", "DISABLE_BUG_COMMAND": "1", "NO_COLOR": "1",
           "IS_SANDBOX": "1"}
    prompt = 'CALL Read {"file_path": "%s"}' % (workdir / "notes.txt")
    outcome = run_agent([CLAUDE, "-p", prompt, "--output-format", "json",
                         "--dangerously-skip-permissions"], env, workdir)
    stdout = outcome["stdout"]
    start = stdout.rfind("\n{")
    result = json.loads(stdout[start + 1 if start >= 0 else stdout.find("{"):])
    assert result["is_error"] is False, result
    assert "FAKE got tool result(s): Read -> " in result["result"]
    assert "PINEAPPLE" in result["result"]
    check_agent_run(outcome)


def qwen_answer(stdout):
    """The final answer in Qwen Code's -o json output (a result object or an event list)."""
    data = json.loads(stdout[stdout.find("[") if stdout.lstrip().startswith("[")
                             else stdout.find("{"):])
    if isinstance(data, list):
        return [e for e in data if e.get("type") == "result"][-1]["result"]
    return data.get("result") or data.get("response")


@pytest.mark.skipif(not QWEN, reason="Qwen Code is not installed (npm install -g "
                    "@qwen-code/qwen-code@0.24.4, or set QWEN_CODE_BIN); .ci/run installs it")
@needs_unshare
def test_qwen_code_tool_round_trip(workdir, tmp_path):
    env = qwen_home(tmp_path)
    prompt = 'CALL read_file {"file_path": "%s"}' % (workdir / "notes.txt")
    outcome = run_agent([QWEN, "-p", prompt, "-o", "json", "--yolo"], env, workdir)
    answer = qwen_answer(outcome["stdout"])
    assert "FAKE got tool result(s): read_file -> " in answer and "PINEAPPLE" in answer
    check_agent_run(outcome)
