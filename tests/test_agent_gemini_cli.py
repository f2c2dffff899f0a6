"""Gemini CLI, run headless through the proxy to the fake OpenAI-compatible upstream, and
(its plain prompt and tool round trips) to the Gemini, Anthropic and OpenAI Responses fakes.

The fake's rule-based model answers `CALL name {json}` directives with tool calls and
summarises tool results it gets back, so the CLI really runs its tools (with --yolo).
Set GEMINI_CLI_BIN to the `gemini` executable, or put it on PATH; .ci/run installs
@google/gemini-cli into a throwaway prefix.
"""

import json
import os
import shutil
import subprocess

import pytest

GEMINI = os.environ.get("GEMINI_CLI_BIN") or shutil.which("gemini")
pytestmark = pytest.mark.skipif(
    not GEMINI, reason="Gemini CLI is not installed (npm install -g @google/gemini-cli, "
                       "or set GEMINI_CLI_BIN); .ci/run installs it")

SETTINGS = {
    # Without selectedType the CLI picks the "gateway" auth type and headless mode exits 41.
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
}


def run_gemini(proxy, workdir, home, prompt, *flags, timeout=120, model="gemini-2.5-flash"):
    os.makedirs(os.path.join(home, ".gemini"), exist_ok=True)
    with open(os.path.join(home, ".gemini", "settings.json"), "w") as f:
        json.dump(SETTINGS, f)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": home, "GEMINI_CLI_HOME": home,
           "TMPDIR": home, "GOOGLE_GEMINI_BASE_URL": proxy.url,
           "GEMINI_API_KEY": "client-key", "GEMINI_CLI_TRUST_WORKSPACE": "true", "NO_COLOR": "1"}
    completed = subprocess.run(
        [GEMINI] + (["-m", model] if model else []) +
        ["-p", prompt, "--output-format", "json"] + list(flags), cwd=workdir, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    output = completed.stdout
    start = output.find("{")
    result = json.loads(output[start:]) if start >= 0 else {}
    return completed.returncode, result, completed.stderr


@pytest.fixture
def workdir(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the launch code is tangerine\n")
    (work / "app.py").write_text("print('hi')\n")
    return work


def test_plain_prompt(proxy, fake, workdir, tmp_path):
    code, result, stderr = run_gemini(proxy, str(workdir), str(tmp_path / "home"), "Say hi")
    assert code == 0, stderr
    assert result["response"] == "FAKE says hello."
    stats = result["stats"]["models"]["gemini-2.5-flash"]
    assert stats["api"]["totalErrors"] == 0
    assert stats["tokens"]["prompt"] == 11            # the upstream's usage reached the CLI
    sent = fake.requests[0]
    assert sent["json"]["model"] == "fake-model" and sent["json"]["stream"] is True
    assert sent["json"]["messages"][0]["role"] == "system"


def test_read_file_tool_round_trip(proxy, fake, workdir, tmp_path):
    notes = workdir / "notes.txt"
    code, result, stderr = run_gemini(
        proxy, str(workdir), str(tmp_path / "home"),
        'CALL read_file {"file_path": "%s"}' % notes, "--yolo")
    assert code == 0, stderr
    assert "read_file -> the launch code is tangerine" in result["response"]
    assert result["stats"]["tools"]["totalSuccess"] == 1
    # the second request carried the call and its result, paired by id
    messages = fake.requests[-1]["json"]["messages"]
    call = messages[-2]["tool_calls"][0]
    assert call["function"]["name"] == "read_file"
    assert messages[-1]["role"] == "tool" and messages[-1]["tool_call_id"] == call["id"]


def test_two_parallel_tool_calls(proxy, fake, workdir, tmp_path):
    notes = workdir / "notes.txt"
    code, result, stderr = run_gemini(
        proxy, str(workdir), str(tmp_path / "home"),
        'Two at once. CALL read_file {"file_path": "%s"} CALL glob {"pattern": "*.py"}'
        % notes, "--yolo")
    assert code == 0, stderr
    assert "read_file -> the launch code is tangerine" in result["response"]
    assert "glob -> " in result["response"] and "app.py" in result["response"]
    assert result["stats"]["tools"]["totalCalls"] == 2
    messages = fake.requests[-1]["json"]["messages"]
    assert [m["role"] for m in messages[-3:]] == ["assistant", "tool", "tool"]
    assert len(messages[-3]["tool_calls"]) == 2


def test_model_router_uses_json_mode(proxy, fake, workdir, tmp_path):
    # Without -m the CLI first asks a small model, through generateContent in JSON mode
    # with a responseJsonSchema, which model should answer; that must parse.
    code, result, stderr = run_gemini(proxy, str(workdir), str(tmp_path / "home"), "Say hi",
                                      model=None)
    assert code == 0, stderr
    assert result["response"] == "FAKE says hello."
    assert "invalid content" not in stderr
    router = [r["json"] for r in fake.requests if "response_format" in r["json"]]
    assert router and router[0]["response_format"]["type"] == "json_schema"
    assert router[0].get("stream") is None


def test_a_key_pool_with_one_rate_limited_key(proxy_factory, fake, workdir, tmp_path):
    from faults import error
    proxy = proxy_factory({"upstreams": {"up": {
        "base_url": fake.base_url, "api_keys": ["key-a", "key-b", "key-c"]}},
        "default_model": "fake-model"})
    # key-b rests for an hour: however slow the CLI's later turns, it is not tried again.
    fake.rules["key-b"] = error("openai", 429, "key-b is over its quota", retry_after=3600)
    notes = workdir / "notes.txt"
    code, result, stderr = run_gemini(
        proxy, str(workdir), str(tmp_path / "home"),
        'CALL read_file {"file_path": "%s"}' % notes, "--yolo")
    assert code == 0, stderr
    assert "read_file -> the launch code is tangerine" in result["response"]
    assert result["stats"]["models"]["gemini-2.5-flash"]["api"]["totalErrors"] == 0
    assert fake.keys_used() == ["key-a", "key-b", "key-c"]   # b once, then it rests


def test_a_stream_cut_mid_way_is_retried_by_the_cli(proxy, fake, workdir, tmp_path):
    # The stream ends without finishReason: Gemini CLI treats that as an invalid stream
    # and asks again, which is why the proxy never fakes a normal finish.
    from faults import stream
    fake.queue(stream("openai", "reset"))
    code, result, stderr = run_gemini(proxy, str(workdir), str(tmp_path / "home"), "Say hi")
    assert code == 0, stderr
    assert result["response"].endswith("FAKE says hello."), result["response"]
    assert len(fake.requests) == 2


def test_an_upstream_slower_than_the_clis_60_s_header_wait_is_asked_once(proxy_factory, fake,
                                                                         workdir, tmp_path):
    # Gemini CLI 0.61 gives up on a server that sends no response headers for 60 s and
    # sends the whole request again (the model evaluates the prompt twice). The proxy sends
    # a streamed reply's headers after stream_headers_after, so one request is enough.
    # This test waits for the CLI's own 60 s clock: it is slow by nature.
    from fake_upstream import delayed, text_stream
    proxy = proxy_factory({"upstreams": {"up": {"base_url": fake.base_url,
                                                "upstream_streaming": "always"}},
                           "server": {"stream_headers_after": 5}})
    fake.queue(delayed(65, text_stream("slow but sure", pieces=1)))
    code, result, stderr = run_gemini(proxy, str(workdir), str(tmp_path / "home"), "Say hi",
                                      timeout=300)
    assert code == 0, stderr
    assert result["response"] == "slow but sure"
    assert len([r for r in fake.requests if r["method"] == "POST"]) == 1


# -- through an upstream of each other kind --------------------------------------------------
# The same CLI in front of the Gemini, Anthropic and OpenAI Responses fakes: its requests
# pass through to Gemini and are converted for the other two. The CLI asks for thoughts
# (gemini-2.5-flash thinks), so each fake opens its answer with one, and the reasoning of
# the tool-call turn must reach the upstream again with the tool results: Gemini's
# signature on its call, Anthropic's signed thinking block, the Responses upstream's own
# reasoning item with its encrypted_content (each carried in the CLI's thoughtSignature).

from faults import FAKES  # noqa: E402
from sdk_upstreams import Upstream  # noqa: E402

KINDS = ["gemini", "anthropic", "openai-responses"]
GENERATE_PATHS = {"gemini": "/v1beta/models/fake-model:streamGenerateContent",
                  "anthropic": "/v1/messages", "openai-responses": "/v1/responses"}


@pytest.fixture(params=KINDS, ids=["%s-upstream" % k for k in KINDS])
def upstream(request, proxy_factory):
    kind = request.param
    fake = FAKES[kind]().start()
    proxy = proxy_factory({"upstreams": {"up": {"kind": kind, "base_url": fake.base_url,
                                                "api_key": "upstream-key"}},
                           "default_model": "fake-model"})
    yield Upstream(kind, proxy, fake)
    fake.stop()


def generated(upstream):
    """The requests that asked the fake upstream for an answer."""
    return [r for r in upstream.fake.requests if r["method"] == "POST" and
            r["path"] == GENERATE_PATHS[upstream.kind]]


def test_plain_prompt_through_each_kind(upstream, workdir, tmp_path):
    code, result, stderr = run_gemini(upstream.proxy, str(workdir), str(tmp_path / "home"),
                                      "Say hi")
    assert code == 0, stderr
    assert result["response"] == "FAKE says hello."
    # by the model the reply names: a passed-through Gemini reply names the upstream's
    [stats] = result["stats"]["models"].values()
    assert stats["api"]["totalErrors"] == 0
    assert stats["tokens"]["prompt"] == 11            # the upstream's usage reached the CLI
    [sent] = generated(upstream)
    if upstream.kind == "openai-responses":
        request = sent["json"]
        assert request["model"] == "fake-model" and request["stream"] is True
        assert request["store"] is False and request["instructions"]   # the system prompt
        assert request["reasoning"]["summary"] == "auto"
        assert request["include"] == ["reasoning.encrypted_content"]


def test_read_file_tool_round_trip_through_each_kind(upstream, workdir, tmp_path):
    notes = workdir / "notes.txt"
    code, result, stderr = run_gemini(
        upstream.proxy, str(workdir), str(tmp_path / "home"),
        'CALL read_file {"file_path": "%s"}' % notes, "--yolo")
    assert code == 0, stderr
    assert "read_file -> the launch code is tangerine" in result["response"]
    assert result["stats"]["tools"]["totalSuccess"] == 1
    assert len(generated(upstream)) == 2
    assert upstream.reasoning_sent_back() == upstream.reasoning_given(1, 1)
    if upstream.kind == "openai-responses":    # the call and its result, paired by call_id
        items = upstream.fake.last["input"]
        call, output = items[-2:]
        assert (call["type"], call["name"]) == ("function_call", "read_file")
        assert output["type"] == "function_call_output"
        assert output["call_id"] == call["call_id"]
        assert "tangerine" in output["output"]


def test_two_parallel_tool_calls_through_each_kind(upstream, workdir, tmp_path):
    notes = workdir / "notes.txt"
    code, result, stderr = run_gemini(
        upstream.proxy, str(workdir), str(tmp_path / "home"),
        'Two at once. CALL read_file {"file_path": "%s"} CALL glob {"pattern": "*.py"}'
        % notes, "--yolo")
    assert code == 0, stderr
    assert "read_file -> the launch code is tangerine" in result["response"]
    assert "glob -> " in result["response"] and "app.py" in result["response"]
    assert result["stats"]["tools"]["totalCalls"] == 2
    assert len(generated(upstream)) == 2
    assert upstream.reasoning_sent_back() == upstream.reasoning_given(1, 2)
    if upstream.kind == "openai-responses":
        items = upstream.fake.last["input"]
        assert [i["type"] for i in items[-5:]] == [
            "reasoning", "function_call", "function_call", "function_call_output",
            "function_call_output"]
        assert [i["call_id"] for i in items[-4:-2]] == [i["call_id"] for i in items[-2:]]
