"""The real command line (section 33), run as a subprocess.

Each run gets an explicit minimal environment (PATH plus what the test sets) and an empty
temporary working directory, so neither the machine's environment nor a stray
./config.json reaches the proxy. A proxy that listens asks the system for a free port
(--port 0) and the test reads it off the "listening on" line: a port picked beforehand
could be taken by someone else in between.
"""

import json
import logging
import marshal
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import PATIENCE, gp, stalled_stream, wait_for

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "gemini_proxy.py")
UPSTREAM_KEY = "sk-upstream-DO-NOT-PRINT-5f3a9c1e"


def minimal_env(**extra):
    """PATH, and the tests' state directory (conftest's): the proxy's usage ledger is
    never written into the home directory of whoever runs the tests."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "GEMINI_PROXY_STATE_DIR": os.environ["GEMINI_PROXY_STATE_DIR"]}
    env.update(extra)
    return env


def run(args, tmp_path, env=None, timeout=2 * PATIENCE, python=None):
    return subprocess.run([python or sys.executable, SCRIPT] + list(args), cwd=str(tmp_path),
                          env=env if env is not None else minimal_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)


def write_config(tmp_path, raw, name="proxy.json"):
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return str(path)


def free_port():
    """A port nothing listens on now (for an upstream that is not there, or a check that
    never listens)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


class Running:
    """A proxy subprocess whose stderr is collected line by line in a thread."""

    def __init__(self, args, tmp_path, env=None, preexec_fn=None, script=SCRIPT, flags=()):
        self.proc = subprocess.Popen([sys.executable] + list(flags) + [script] + list(args),
                                     cwd=str(tmp_path),
                                     env=env if env is not None else minimal_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     universal_newlines=True, preexec_fn=preexec_fn)
        self.lines = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def text(self):
        with self._lock:
            return "\n".join(self.lines)

    def wait_for(self, pattern, timeout=PATIENCE):
        """The first stderr line matching the regex; fails when the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
            if self.proc.poll() is not None:
                self._reader.join(PATIENCE)
                with self._lock:
                    found = [line for line in self.lines if re.search(pattern, line)]
                if found:
                    return found[0]
                pytest.fail("proxy exited with %s before logging %r:\n%s"
                            % (self.proc.returncode, pattern, self.text()))
            time.sleep(0.02)
        pytest.fail("no %r within %ss:\n%s" % (pattern, timeout, self.text()))

    def port(self):
        """The port the proxy listens on, from its "listening on" line."""
        line = self.wait_for(r"listening on ")
        return int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", line).group(1))

    def stop(self, signum=signal.SIGTERM, timeout=PATIENCE):
        """Send a signal; the exit status, after the process ends."""
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(PATIENCE)
            pytest.fail("proxy did not exit within %ss of signal %d:\n%s"
                        % (timeout, signum, self.text()))
        self._reader.join(PATIENCE)     # every line it wrote, up to its last
        assert not self._reader.is_alive(), "stderr still open after the proxy exited"
        return code

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(PATIENCE)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


@pytest.fixture
def start(tmp_path):
    started = []

    def starter(args, env=None, preexec_fn=None, script=SCRIPT, flags=()):
        running = Running(args, tmp_path, env, preexec_fn, script, flags)
        started.append(running)
        return running
    yield starter
    for running in started:
        running.cleanup()


def generate(port, model, text, timeout=PATIENCE):
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": text}]}]}).encode()
    request = urllib.request.Request(
        "http://127.0.0.1:%d/v1beta/models/%s:generateContent" % (port, model), data=body,
        headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read().decode("utf-8"))


# ---- one-shot runs ----------------------------------------------------------------------

def test_version(tmp_path):
    result = run(["--version"], tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == "gemini_proxy.py " + gp.__version__
    assert re.match(r"\d+\.\d+\.\d+", gp.__version__)


def test_a_route_for_every_model_hides_the_catch_all_from_the_route_lines(tmp_path):
    # The catch-all to the default upstream, tried after it, would take nothing.
    path = write_config(tmp_path, {
        "upstreams": {"kimi": {"base_url": "https://api.moonshot.cn/v1",
                               "api_key": UPSTREAM_KEY}},
        "routes": [{"model": "*", "upstream": "kimi", "upstream_model": "kimi-k2"},
                   {"model": "gemini-2.5-pro", "upstream": "kimi"}]})
    result = run(["-c", path, "--check"], tmp_path)
    assert result.returncode == 0, result.stderr
    routes = [line for line in result.stdout.splitlines() if line.startswith("route ")]
    assert routes == ["route * -> kimi/kimi-k2", "route gemini-2.5-pro -> kimi/(same name)"]


def test_check_prints_upstreams_and_routes(tmp_path):
    path = write_config(tmp_path, {
        "upstreams": {"kimi": {"base_url": "https://api.moonshot.cn/v1",
                               "api_key": UPSTREAM_KEY}},
        "routes": [{"model": "gemini-2.5-pro", "upstream": "kimi",
                    "upstream_model": "kimi-k2-0711-preview"},
                   {"model": "gemini-*-flash*", "upstream": "kimi"}],
        "default_model": "kimi-k2-turbo-preview"})
    result = run(["-c", path, "--check"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "configuration OK (%s)" % path
    assert "upstream kimi: openai https://api.moonshot.cn/v1 with key %s" \
        % gp.fingerprint(UPSTREAM_KEY) in lines
    assert "route gemini-2.5-pro -> kimi/kimi-k2-0711-preview" in lines
    assert "route gemini-*-flash* -> kimi/(same name)" in lines
    assert lines[-1] == "route * -> kimi/kimi-k2-turbo-preview"
    assert UPSTREAM_KEY not in result.stdout + result.stderr


def test_check_uses_config_json_in_working_directory(tmp_path):
    write_config(tmp_path, {"upstreams": {"here": {"kind": "echo"}}}, name="config.json")
    result = run(["--check"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "configuration OK (config.json)" in result.stdout
    assert "upstream here: echo (answers locally)" in result.stdout


def test_check_uses_config_from_environment(tmp_path):
    path = write_config(tmp_path, {"upstreams": {"viaenv": {"kind": "echo"}}})
    result = run(["--check"], tmp_path, env=minimal_env(GEMINI_PROXY_CONFIG=path))
    assert result.returncode == 0, result.stderr
    assert "upstream viaenv: echo" in result.stdout


def test_unknown_key_exits_2_and_names_it(tmp_path):
    path = write_config(tmp_path, {"upstreams": {"kimi": {"kind": "echo"}},
                                   "server": {"hots": "127.0.0.1"}})
    result = run(["-c", path, "--check"], tmp_path)
    assert result.returncode == 2
    assert "server.hots" in result.stderr
    assert "did you mean 'host'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_bad_value_exits_2_and_names_the_key_path(tmp_path):
    path = write_config(tmp_path, {"upstreams": {"kimi": {"base_url": "https://x.example/v1",
                                                          "read_timeout": "soon"}}})
    result = run(["-c", path], tmp_path)
    assert result.returncode == 2
    assert "upstreams.kimi.read_timeout" in result.stderr
    assert "Traceback" not in result.stderr


def test_section_that_is_not_an_object_exits_2(tmp_path):
    path = write_config(tmp_path, {"upstreams": {"kimi": {"kind": "echo"}},
                                   "server": "127.0.0.1"})
    result = run(["-c", path, "--check"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "server" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_log_level_in_environment_exits_2(tmp_path):
    result = run(["--upstream-kind", "echo", "--check"], tmp_path,
                 env=minimal_env(GEMINI_PROXY_LOG_LEVEL="verbose"))
    assert result.returncode == 2, result.stderr
    assert "GEMINI_PROXY_LOG_LEVEL" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flag_choice_exits_2(tmp_path):
    result = run(["--upstream-kind", "bogus", "--check"], tmp_path)
    assert result.returncode == 2
    assert "--upstream-kind" in result.stderr


def test_public_host_without_keys_is_refused_with_reason(tmp_path):
    result = run(["--upstream-kind", "echo", "--host", "0.0.0.0", "--port", str(free_port())],
                 tmp_path)
    assert result.returncode != 0
    assert "refusing to listen on 0.0.0.0 with no client keys" in result.stderr
    assert "--allow-public" in result.stderr
    assert "listening on" not in result.stderr


def test_public_host_with_allow_public_passes_check(tmp_path):
    result = run(["--upstream-kind", "echo", "--host", "0.0.0.0", "--allow-public", "--check"],
                 tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("configuration OK")


def test_check_under_python38(tmp_path):
    env38 = minimal_env(PYENV_VERSION="3.8.18")
    try:
        probe = subprocess.run(["python3.8", "-c", "import sys; print(sys.version_info[:2])"],
                               env=env38, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True, timeout=2 * PATIENCE)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip("python3.8 is not available here: %s" % exc)
    if probe.returncode != 0 or probe.stdout.strip() != "(3, 8)":
        pytest.skip("python3.8 (PYENV_VERSION=3.8.18) is not available here: %s"
                    % (probe.stderr.strip() or probe.stdout.strip()))
    path = write_config(tmp_path, {
        "upstreams": {"kimi": {"base_url": "https://api.moonshot.cn/v1",
                               "api_key": UPSTREAM_KEY}},
        "model_mapping": {"gemini-2.5-pro": "kimi-k2-0711-preview"}})
    result = run(["-c", path, "--check"], tmp_path, env=env38, python="python3.8")
    assert result.returncode == 0, result.stderr
    assert "route gemini-2.5-pro -> kimi/kimi-k2-0711-preview" in result.stdout
    assert UPSTREAM_KEY not in result.stdout


# ---- running for real --------------------------------------------------------------------

def test_echo_serves_generate_content_and_stops_on_sigterm(start):
    proxy = start(["--upstream-kind", "echo", "--port", "0"])
    port = proxy.port()
    status, body = generate(port, "gemini-2.5-pro", "hello from the cli test")
    assert status == 200
    candidate = body["candidates"][0]
    assert candidate["content"]["role"] == "model"
    text = "".join(part.get("text", "") for part in candidate["content"]["parts"])
    assert text == "echo (gemini-2.5-pro): hello from the cli test"
    assert candidate["finishReason"] == "STOP"
    assert proxy.stop(signal.SIGTERM) == 0
    assert proxy.lines[-1].endswith("stopped"), proxy.text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=PATIENCE).close()


def test_sigint_stops_cleanly(start):
    proxy = start(["--upstream-kind", "echo", "--port", "0"])
    port = proxy.port()
    status, body = generate(port, "gemini-2.5-flash", "ping")
    assert status == 200
    text = "".join(p.get("text", "") for p in body["candidates"][0]["content"]["parts"])
    assert text == "echo (gemini-2.5-flash): ping"
    assert proxy.stop(signal.SIGINT) == 0
    assert any(line.endswith("stopped") for line in proxy.lines), proxy.text()
    assert "Traceback" not in proxy.text()


def test_port_zero_listens_on_a_port_chosen_by_the_system(start):
    proxy = start(["--upstream-kind", "echo", "--port", "0"])
    port = proxy.port()
    assert port not in (0, gp.SERVER_DEFAULTS["port"])
    status, _ = generate(port, "gemini-2.5-pro", "zero")
    assert status == 200
    assert proxy.stop() == 0


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))


def status_of(port, key=""):
    request = urllib.request.Request("http://127.0.0.1:%d/status" % port, headers={
        "authorization": "Bearer " + key} if key else {})
    with urllib.request.urlopen(request, timeout=PATIENCE) as response:
        return json.loads(response.read().decode("utf-8"))


@pytest.mark.skipif(not os.path.isdir("/proc/self") or sys.version_info < (3, 9),
                    reason="reads /proc; Python 3.8's parser keeps a smaller tree (5 MB)")
def test_a_script_run_does_not_idle_with_its_syntax_tree(start, tmp_path):
    # Run as a script, the file would hold its syntax tree (some 34 MB) for as long as it
    # serves; run by runpy, it is compiled and the tree freed. The script run starts again
    # as a module in the same process, so both idle in about the same memory.
    launcher = tmp_path / "via_runpy.py"
    launcher.write_text("import runpy, sys\nsys.argv[0] = %r\n"
                        "runpy.run_path(%r, run_name='__main__')\n" % (SCRIPT, SCRIPT))
    idle = {}
    for how, script in (("script", SCRIPT), ("runpy", str(launcher))):
        proxy = start(["--upstream-kind", "echo", "--port", "0"], script=script)
        port = proxy.port()
        pid = proxy.proc.pid
        assert status_of(port)["pid"] == pid   # the same process serves
        status, _ = generate(port, "gemini-2.5-pro", "hi")
        assert status == 200
        idle[how] = rss_kb(pid)
        # The file that carried the compiled code was read and closed.
        assert not [fd for fd in os.listdir("/proc/%d/fd" % pid)
                    if "memfd:" in os.readlink("/proc/%d/fd/%s" % (pid, fd))]
        assert proxy.stop() == 0 and "Traceback" not in proxy.text()
    assert idle["script"] < idle["runpy"] + 12 * 1024, idle


def test_module_boot_runs_the_code_handed_on_by_the_same_python_else_the_file(tmp_path):
    # How a script run and worker processes start (section 0): the code compiled by
    # whoever started them, read from a descriptor, when the same Python compiled it;
    # else the file itself. Named as the module gemini_proxy, main given the arguments
    # after the two. The boot keeps none of the bytes it read (a megabyte, for this file).
    module_path = tmp_path / "some_proxy.py"
    module_path.write_text("def main(argv):\n    print('from the file', __name__, argv)\n"
                           "    return 3\n")
    code = marshal.dumps(compile(
        "import sys\n"
        "def main(argv):\n"
        "    kept = [name for name, value in vars(sys.modules['__main__']).items()\n"
        "            if isinstance(value, bytes) and len(value) > 64]\n"
        "    print('handed on', __name__, __file__, argv, 'kept:' + ','.join(kept))\n"
        "    return 4\n", str(module_path), "exec"))
    assert len(code) > 64

    def boot(compiler, *args, handed_code=code):
        handed = tmp_path / "handed.bin"
        handed.write_bytes(compiler + b"\0" + handed_code)
        with open(str(handed), "rb") as compiled:
            done = subprocess.run(
                [sys.executable, "-c", gp.MODULE_BOOT, str(compiled.fileno()),
                 str(module_path)] + list(args), cwd=str(tmp_path),
                pass_fds=[compiled.fileno()], stdout=subprocess.PIPE, timeout=PATIENCE)
        return done.returncode, done.stdout.decode().split()
    assert boot(sys.version.encode(), "a", "b") == (
        4, ["handed", "on", "gemini_proxy", str(module_path), "['a',", "'b']", "kept:"])
    assert boot(b"another Python", "c") == (3, ["from", "the", "file", "gemini_proxy", "['c']"])
    # Cut short (a file truncated under it): the file is compiled instead.
    assert boot(sys.version.encode(), "e", handed_code=code[:len(code) // 2]) == (
        3, ["from", "the", "file", "gemini_proxy", "['e']"])
    from_file = subprocess.run(
        [sys.executable, "-c", gp.MODULE_BOOT, "-", str(module_path), "d"],
        cwd=str(tmp_path), stdout=subprocess.PIPE, timeout=PATIENCE)
    assert (from_file.returncode, from_file.stdout.decode().split()) == (
        3, ["from", "the", "file", "gemini_proxy", "['d']"])


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name != "posix", reason="symlinks")
def test_a_script_run_through_a_symlink_imports_from_its_real_folder(tmp_path):
    # As for any script, the folder first on sys.path is the file's real one, not the
    # link's: a json.py beside an installed command's link is not imported.
    real, bin_ = tmp_path / "real", tmp_path / "bin"
    real.mkdir()
    bin_.mkdir()
    shutil.copy(SCRIPT, str(real / "gemini_proxy.py"))
    (bin_ / "gemini-proxy").symlink_to(real / "gemini_proxy.py")
    (bin_ / "json.py").write_text("raise SystemExit('json.py beside the link imported')\n")
    result = subprocess.run([sys.executable, str(bin_ / "gemini-proxy"), "--version"],
                            cwd=str(tmp_path), env=minimal_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True,
                            timeout=2 * PATIENCE)
    assert (result.returncode, result.stdout.strip()) == (
        0, "gemini_proxy.py " + gp.__version__), result.stderr


def test_a_script_run_imports_nothing_from_the_current_directory_even_with_dash_s(tmp_path):
    # `python -c`, which the relaunch runs, puts the current directory first on sys.path;
    # with -S, os is not imported yet when the boot imports it (up to Python 3.10; later
    # ones have it frozen in).
    (tmp_path / "os.py").write_text("raise SystemExit('os.py from the current directory')\n")
    (tmp_path / "secrets.py").write_text("raise SystemExit('secrets.py from there')\n")
    for flags in ([], ["-S"]):
        result = subprocess.run([sys.executable] + flags + [SCRIPT, "--version"],
                                cwd=str(tmp_path), env=minimal_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True,
                                timeout=2 * PATIENCE)
        assert (result.returncode, result.stdout.strip()) == (
            0, "gemini_proxy.py " + gp.__version__), (flags, result.stderr)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_relaunch_happens_once(start):
    # A program that embeds Python and runs the file as a script whatever its arguments
    # would run it again after the exec: the mark stops a second relaunch.
    for env, relaunched in ((minimal_env(), True),
                            (minimal_env(**{gp.RELAUNCHED_ENV: "1"}), False)):
        proxy = start(["--upstream-kind", "echo", "--port", "0"], env=env)
        proxy.port()
        pid = proxy.proc.pid
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        assert (b"-c" in argv) is relaunched, argv[:4]
        assert proxy.stop() == 0


@pytest.mark.skipif(os.name != "posix", reason="closes a descriptor before the exec")
def test_a_script_started_with_stderr_closed_logs_each_line_once(tmp_path):
    # With descriptor 2 closed, a file opened to carry the code would get its number, and
    # the new interpreter would take it for stderr: the log file, opened next on that
    # number, then got every line twice. The script runs as it is instead.
    log = tmp_path / "proxy.log"
    config = write_config(tmp_path, {"logging": {"file": str(log)}})
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "-c", config, "--upstream-kind", "echo", "--port", "0"],
        cwd=str(tmp_path), env=minimal_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(2))
    try:
        listening = wait_for(lambda: log.exists() and re.search(
            r"listening on http://127\.0\.0\.1:(\d+)", log.read_text()),
            message="no listening line in the log file")
        status, _ = generate(int(listening.group(1)), "gemini-2.5-pro", "once")
        assert status == 200
        wait_for(lambda: "generateContent" in log.read_text(), message="no access line")
    finally:
        proc.terminate()
        proc.wait(PATIENCE)
    text = log.read_text()
    assert text.count("listening on") == 1 and text.count("generateContent") == 1, text


def test_first_lines_name_upstream_and_fingerprint_the_key(start):
    url = "http://127.0.0.1:%d/v1" % free_port()    # never asked: the proxy only starts
    proxy = start(["--upstream-url", url, "--upstream-key", UPSTREAM_KEY,
                   "--model", "some-model", "--port", "0"])
    proxy.wait_for(r"route \* ->")
    lines = proxy.lines
    assert re.search(r"listening on http://127\.0\.0\.1:\d+", lines[0])
    upstream_line = next(line for line in lines[:3] if "upstream default:" in line)
    assert url in upstream_line
    assert "with key " + gp.fingerprint(UPSTREAM_KEY) in upstream_line
    assert re.search(r"key#[0-9a-f]{8}\b", upstream_line)
    assert proxy.stop() == 0
    assert UPSTREAM_KEY not in proxy.text()
    assert UPSTREAM_KEY[-8:] not in proxy.text()
    assert UPSTREAM_KEY not in proxy.proc.stdout.read()


def test_no_config_start_uses_openai_base_url_from_environment(start):
    url = "http://127.0.0.1:%d/v1" % free_port()
    proxy = start(["--port", "0"],
                  env=minimal_env(OPENAI_BASE_URL=url, OPENAI_API_KEY=UPSTREAM_KEY,
                                  OPENAI_MODEL="gpt-test"))
    line = proxy.wait_for(r"upstream default:")
    assert "openai " + url in line
    assert gp.fingerprint(UPSTREAM_KEY) in line
    route = proxy.wait_for(r"route \* ->")
    assert route.endswith("route * -> default/gpt-test")
    assert proxy.stop() == 0
    assert UPSTREAM_KEY not in proxy.text()


def test_no_config_and_no_environment_uses_local_ollama(start):
    proxy = start(["--port", "0"], env=minimal_env())
    line = proxy.wait_for(r"upstream default:")
    assert line.endswith("upstream default: openai http://127.0.0.1:11434/v1")
    assert re.search(r"listening on http://127\.0\.0\.1:\d+", proxy.lines[0])
    assert proxy.stop() == 0


def test_port_in_use_exits_1_with_a_message(tmp_path):
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        result = run(["--upstream-kind", "echo", "--port", str(port)], tmp_path)
    finally:
        busy.close()
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1:%d" % port in result.stderr
    assert "Traceback" not in result.stderr


def test_sighup_reloads_the_config_and_keeps_running_on_a_bad_one(start, tmp_path):
    path = write_config(tmp_path, {"upstreams": {"first": {"kind": "echo"}},
                                   "server": {"port": 0}})
    proxy = start(["-c", path])
    port = proxy.port()
    assert generate(port, "gemini-2.5-pro", "one")[0] == 200
    write_config(tmp_path, {"upstreams": {"second": {"kind": "echo"}},
                            "routes": [{"model": "*", "upstream": "second",
                                        "upstream_model": "renamed"}],
                            "server": {"port": 0}})
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.wait_for(r"configuration reloaded")
    proxy.wait_for(r"route \* -> second/renamed")
    assert generate(port, "gemini-2.5-pro", "two")[0] == 200
    proxy.wait_for(r"generateContent 200 gemini-2.5-pro -> second/renamed")
    write_config(tmp_path, {"upstreams": {"third": {"kind": "echo", "nonsense": 1}}})
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.wait_for(r"reload failed, still running the previous configuration: "
                   r"upstreams.third.nonsense: unknown key")
    assert generate(port, "gemini-2.5-pro", "three")[0] == 200
    wait_for(lambda: proxy.text().count("pro -> second/renamed") >= 2,   # the access line
             message=proxy.text)                                       # follows the response
    assert proxy.text().count("gemini-2.5-pro -> second/renamed") == 2
    assert proxy.stop() == 0


# ---- a fresh clone: the README's run command with nothing else done ----------------------

def test_no_configuration_starts_and_says_how_to_reach_a_provider(start):
    proxy = start(["--port", "0"])
    line = proxy.wait_for(r"no upstream is configured")
    assert " WARNING " in line and "OPENAI_BASE_URL" in line and "config.example.json" in line
    assert proxy.stop() == 0


def test_the_example_config_starts_without_keys_and_turns_off_what_it_lacks(start, tmp_path):
    example = os.path.join(os.path.dirname(SCRIPT), "config.example.json")
    proxy = start(["-c", example, "--port", "0"],
                  env=minimal_env(DEEPSEEK_API_KEY="sk-deep-DO-NOT-PRINT-1"))
    line = proxy.wait_for(r"turned off until their keys are set")
    for variable in ("MOONSHOT_API_KEY", "GEMINI_API_KEY", "ANTHROPIC_API_KEY"):
        assert variable in line
    assert "DEEPSEEK_API_KEY" not in line
    assert "sk-deep-DO-NOT-PRINT-1" not in proxy.text()
    assert proxy.stop() == 0


def test_listening_publicly_without_keys_is_a_warning(start):
    proxy = start(["--upstream-kind", "echo", "--host", "0.0.0.0", "--port", "0",
                   "--allow-public"])
    line = proxy.wait_for(r"listening on ")
    assert " WARNING " in line and "NO CLIENT KEYS" in line
    assert proxy.stop() == 0


# ---- signals, descriptors and log lines -------------------------------------------------

def proxy_port(proxy):
    line = proxy.wait_for(r"listening on ")
    return int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", line).group(1))


def fake_config(tmp_path, fake, **server):
    return write_config(tmp_path, {
        "upstreams": {"fake": {"base_url": fake.base_url, "api_key": UPSTREAM_KEY,
                               "first_byte_timeout": 600, "retries": 0}},
        "server": dict({"port": 0}, **server)})


def ask_in_thread(port, payload, answers):
    def ask():
        request = urllib.request.Request(
            "http://127.0.0.1:%d/v1/chat/completions" % port, json.dumps(payload).encode(),
            {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answers.append((response.status, response.read()))
        except urllib.error.HTTPError as err:
            answers.append((err.code, err.read()))
        except OSError as err:      # the proxy went away (a forced exit)
            answers.append((0, repr(err).encode()))
    thread = threading.Thread(target=ask)
    thread.start()
    return thread


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_sigterm_stops_hung_upstream_calls_after_the_grace_and_tells_clients(start, tmp_path,
                                                                           fake):
    from fake_upstream import Gate, chunk
    whole, streamed = Gate(), Gate()

    def first_event_then_wait(handler, request):
        handler.start_stream()
        handler.write_chunk(b"data: " + json.dumps(chunk({"content": "A"})).encode() + b"\n\n")
        streamed(handler, request)
    fake.queue(whole, first_event_then_wait)
    proxy = start(["-c", fake_config(tmp_path, fake, shutdown_grace=0.3)])
    port = proxy_port(proxy)
    answers, stream_answers = [], []
    threads = [ask_in_thread(port, CHAT, answers)]
    assert whole.entered.wait(30)
    threads.append(ask_in_thread(port, dict(CHAT, stream=True), stream_answers))
    try:
        assert streamed.entered.wait(30)
        assert proxy.stop(signal.SIGTERM, timeout=30) == 0    # not first_byte_timeout (600 s)
        for thread in threads:
            thread.join(30)
    finally:
        whole.open()
        streamed.open()
    status, body = answers[0]
    assert status == 503 and b"shutting down" in body
    status, body = stream_answers[0]      # the chunked body ended properly: no IncompleteRead
    events = [e[6:] for e in body.decode().split("\n\n") if e.startswith("data: ")]
    assert status == 200 and json.loads(events[0])["choices"][0]["delta"]["content"] == "A"
    assert "shutting down" in json.loads(events[-1])["error"]["message"]
    assert "Traceback" not in proxy.text() and "CancelledError" not in proxy.text()


def test_a_stop_with_a_client_that_reads_nothing_ends_its_connection_quietly(start, tmp_path,
                                                                          fake):
    # A client stalled on a flooding stream takes neither the stream nor the shutdown's
    # error event: past the grace its connection is dropped, and its handler ends
    # there, not cancelled by the loop's end (which Python 3.11.7 logs as an error).
    from fake_upstream import flood
    fake.queue(flood)
    proxy = start(["-c", fake_config(tmp_path, fake, shutdown_grace=0.3)])
    sock = stalled_stream(proxy_port(proxy))
    try:
        assert proxy.stop(signal.SIGTERM, timeout=30) == 0
    finally:
        sock.close()
    assert "Traceback" not in proxy.text() and "CancelledError" not in proxy.text(), \
        proxy.text()[-3000:]


def test_a_second_signal_exits_at_once(start, tmp_path, fake):
    from fake_upstream import Gate
    gate = Gate()
    fake.queue(gate)
    proxy = start(["-c", fake_config(tmp_path, fake, shutdown_grace=600)])
    port = proxy_port(proxy)
    answers = []
    thread = ask_in_thread(port, CHAT, answers)
    try:
        assert gate.entered.wait(30)
        proxy.proc.send_signal(signal.SIGTERM)
        proxy.wait_for(r"stopping: 1 requests in flight")
        assert proxy.stop(signal.SIGTERM, timeout=30) == 128 + signal.SIGTERM
        assert "second signal: exiting now" in proxy.text()
    finally:
        gate.open()
        thread.join(30)


@pytest.mark.skipif(not hasattr(gp, "resource") or gp.resource is None,
                    reason="no open-file limit to read on this platform")
def test_the_open_file_limit_is_raised_to_the_hard_limit_and_bounds_connections(start):
    import resource

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 400))
    proxy = start(["--upstream-kind", "echo", "--port", "0"], preexec_fn=low_limit)
    port = proxy_port(proxy)
    with urllib.request.urlopen("http://127.0.0.1:%d/status" % port, timeout=30) as response:
        connections = json.loads(response.read())["connections"]
    assert connections["max"] == (400 - gp.FD_RESERVE) // 2   # not (100 - FD_RESERVE) // 2
    assert proxy.stop() == 0


def test_upstream_text_cannot_forge_or_split_log_lines(start, tmp_path, fake):
    from fake_upstream import json_reply
    fake.queue(json_reply({"error": {"message": "bad\n2026-01-01 00:00:00,000 ERROR forged "
                                                "line\rand \x1b[31mred"}}, status=400))
    proxy = start(["-c", fake_config(tmp_path, fake)])
    port = proxy_port(proxy)
    answers = []
    ask_in_thread(port, CHAT, answers).join(30)
    assert answers[0][0] == 400
    proxy.wait_for(r"POST /v1/chat/completions 400")
    assert proxy.stop() == 0
    lines = proxy.text().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ", line) for line in lines)
    access = [line for line in lines if "POST /v1/chat/completions 400" in line]
    assert len(access) == 1 and "forged line" in access[0]    # logged, on its own line
    assert "\x1b" not in proxy.text() and "\r" not in proxy.text()


def test_log_lines_escape_control_characters_whatever_logs_them():
    formatter = gp.LogFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("gemini_proxy", logging.WARNING, __file__, 1,
                               "upstream said %s", ("a\nFAKE ERROR b\r\x1b[0m\u2028c",), None)
    assert formatter.format(record) == \
        "WARNING upstream said a\\x0aFAKE ERROR b\\x0d\\x1b[0m\\u2028c"


def test_log_lines_are_timed_as_logging_times_them():
    # The time to the second is written once a second; across seconds, at a second's
    # edge and its last millisecond, it reads as logging's own.
    ours = gp.LogFormatter("%(asctime)s %(message)s")
    theirs = logging.Formatter("%(asctime)s %(message)s")
    for created in (1700000000.0, 1700000000.9996, 1700000001.0005, 1700000001.5,
                    1700003600.25, 1719792000.999, time.time()):
        record = logging.LogRecord("gemini_proxy", logging.INFO, __file__, 1, "m", (), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == theirs.format(record)


@pytest.mark.skipif(not hasattr(gp, "resource") or gp.resource is None,
                    reason="no open-file limit to set on this platform")
def test_running_out_of_descriptors_is_logged_once_and_the_proxy_recovers(start):
    import resource

    def tiny_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    proxy = start(["--upstream-kind", "echo", "--port", "0"], preexec_fn=tiny_limit)
    port = proxy_port(proxy)
    flood = []
    for _ in range(300):
        try:
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        except OSError:
            break
    proxy.wait_for(r"out of file descriptors", timeout=30)
    for sock in flood:
        sock.close()
    deadline = time.monotonic() + 30
    while True:     # the connections close on the proxy's side as it reads their EOF
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=10) as r:
                assert json.loads(r.read())["status"] == "ok"
                break
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert proxy.stop() == 0
    text = proxy.text()
    assert "Traceback" not in text and text.count("out of file descriptors") <= 3
    assert len(text.splitlines()) < 20, text[:2000]
