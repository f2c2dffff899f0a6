"""server.processes (section 32): a supervisor and its worker processes on one port, run as
the real command line."""

import argparse
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import PATIENCE, gp, make_config, wait_for
from test_cli import (SCRIPT, minimal_env, start, status_of,  # noqa: F401  (start: a fixture)
                      write_config)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="worker processes need POSIX")


def pids_answering(port, wanted, tries=400, key=""):
    """The worker pids seen over fresh connections, until `wanted` distinct ones answer
    (each connection lands on a worker the kernel picks)."""
    seen = set()
    for _ in range(tries):
        seen.add(status_of(port, key)["pid"])
        if len(seen) >= wanted:
            break
    return seen


def gone(pid):
    """The process has exited (where /proc says, a zombie nobody reaped counts as
    exited)."""
    if os.path.isdir("/proc/self"):
        try:
            with open("/proc/%d/status" % pid) as f:
                return "\nState:\tZ" in f.read()
        except (FileNotFoundError, ProcessLookupError):   # (reaped between open and read)
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def chat(port):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request("http://127.0.0.1:%d/v1/chat/completions" % port,
                                     data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=PATIENCE) as response:
        return json.loads(response.read().decode("utf-8"))["choices"][0]["message"]["content"]


def test_two_workers_serve_one_port_and_stop_together(start):
    proxy = start(["--upstream-kind", "echo", "--port", "0", "--processes", "2"])
    port = proxy.port()
    assert re.search(r"listening on http://127\.0\.0\.1:\d+ \(2 worker processes",
                     proxy.wait_for("listening on"))
    pids = pids_answering(port, 2)
    assert len(pids) == 2 and os.getpid() not in pids and proxy.proc.pid not in pids
    assert chat(port) == "echo (m): hi"
    assert proxy.stop(signal.SIGTERM) == 0
    assert proxy.lines[-1].endswith("stopped"), proxy.text()
    # every worker's last line came through before the supervisor's own
    assert sorted(line.split(" INFO ")[-1] for line in proxy.lines
                  if line.endswith(" stopped")) == ["stopped", "worker process 1 stopped",
                                                    "worker process 2 stopped"], proxy.text()
    assert all(gone(pid) for pid in pids)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=PATIENCE).close()
    assert "Traceback" not in proxy.text()


def memfds(pid):
    return [fd for fd in os.listdir("/proc/%d/fd" % pid)
            if "memfd:" in os.readlink("/proc/%d/fd/%s" % (pid, fd))]


def test_workers_run_the_code_their_supervisor_runs_whatever_becomes_of_the_file(
        start, tmp_path):
    # Started as a script, the supervisor has the file's code compiled (section 0) and
    # hands it on: no worker compiles the file (none writes __pycache__), and one started
    # again runs what the others run, though the file has been broken since.
    copy = tmp_path / "my-proxy.py"
    shutil.copy(SCRIPT, str(copy))
    proxy = start(["--upstream-kind", "echo", "--port", "0", "--processes", "2"],
                  script=str(copy))
    port = proxy.port()
    pids = pids_answering(port, 2)
    assert len(pids) == 2 and chat(port) == "echo (m): hi"
    if os.path.isdir("/proc/self"):   # the code's one descriptor is the supervisor's
        assert len(memfds(proxy.proc.pid)) == 1
        assert not any(memfds(pid) for pid in pids)
    copy.write_text("raise SystemExit('the file as it is now')\n")
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    proxy.wait_for(r"worker process \d \(pid %d\) exited" % victim)
    again = proxy.wait_for(r"worker process \d \(pid (?!(?:%s)\))\d+\) serving port" % "|".join(
        "%d" % pid for pid in pids))
    replacement = int(re.search(r"\(pid (\d+)\)", again).group(1))
    assert replacement in pids_answering(port, 2) and chat(port) == "echo (m): hi"
    assert not (tmp_path / "__pycache__").exists(), os.listdir(str(tmp_path / "__pycache__"))
    assert proxy.stop(signal.SIGTERM) == 0
    assert "the file as it is now" not in proxy.text() and "Traceback" not in proxy.text()


def test_workers_of_a_supervisor_without_its_code_compile_the_file_once(start, tmp_path):
    # A supervisor run by a tool (runpy here) has no compiled code to hand on: its workers
    # load the file as a module (its syntax tree freed once compiled), and the compiled
    # form is kept in __pycache__ for the next worker. The file's name is not one Python
    # could import by name.
    copy = tmp_path / "my-proxy.py"
    shutil.copy(SCRIPT, str(copy))
    launcher = tmp_path / "via_runpy.py"
    launcher.write_text("import runpy, sys\nsys.argv[0] = %r\n"
                        "runpy.run_path(%r, run_name='__main__')\n" % (str(copy), str(copy)))
    proxy = start(["--upstream-kind", "echo", "--port", "0", "--processes", "2"],
                  script=str(launcher))
    port = proxy.port()
    assert len(pids_answering(port, 2)) == 2 and chat(port) == "echo (m): hi"
    assert list((tmp_path / "__pycache__").glob("my-proxy.*.pyc")), os.listdir(str(tmp_path))
    assert proxy.stop(signal.SIGTERM) == 0
    assert "Traceback" not in proxy.text()


def test_workers_import_what_the_script_would_whatever_its_name(start, tmp_path):
    # Installed as a command (no .py), started from a directory holding a secrets.py:
    # the workers import the standard library's, as the supervisor does (python -c would
    # look in the current directory first).
    (tmp_path / "secrets.py").write_text("raise SystemExit('imported from the current "
                                         "directory')\n")
    folder = tmp_path / "bin"
    folder.mkdir()
    command = folder / "gemini-proxy"
    shutil.copy(SCRIPT, str(command))
    proxy = start(["--upstream-kind", "echo", "--port", "0", "--processes", "2"],
                  script=str(command))
    port = proxy.port()
    assert len(pids_answering(port, 2)) == 2 and chat(port) == "echo (m): hi"
    assert proxy.stop(signal.SIGTERM) == 0
    assert "imported from the current directory" not in proxy.text()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_workers_run_with_the_supervisors_interpreter_flags(start, tmp_path):
    # Isolated mode (-I) leaves the script's folder off sys.path, so a secrets.py there is
    # not imported: not by the supervisor, and not by the workers (whose boot puts the
    # folder first otherwise).
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "secrets.py").write_text("raise SystemExit('imported from the script folder')\n")
    shutil.copy(SCRIPT, str(folder / "gemini_proxy.py"))
    flags = ["-I", "-O", "-W", "ignore::ResourceWarning", "-X", "utf8"]
    proxy = start(["--upstream-kind", "echo", "--port", "0", "--processes", "2"],
                  script=str(folder / "gemini_proxy.py"), flags=flags)
    port = proxy.port()
    pids = pids_answering(port, 2)
    assert len(pids) == 2 and chat(port) == "echo (m): hi"
    for pid in pids | {proxy.proc.pid}:   # the supervisor started again as a module too
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().decode().split("\0")
        assert argv[1:argv.index("-c")] == ["-I", "-O", "-Wignore::ResourceWarning", "-Xutf8"]
    assert proxy.stop(signal.SIGTERM) == 0
    assert "Traceback" not in proxy.text() and "script folder" not in proxy.text()


def test_a_worker_that_dies_is_started_again(start):
    proxy = start(["--upstream-kind", "echo", "--port", "0", "--processes", "2"])
    port = proxy.port()
    first = pids_answering(port, 2)
    victim = sorted(first)[0]
    os.kill(victim, signal.SIGKILL)
    proxy.wait_for(r"worker process \d \(pid %d\) exited .*starting it again" % victim)
    replaced = wait_for(lambda: (pids_answering(port, 2) - first) or None,
                        message="no new worker answered")
    assert victim not in pids_answering(port, 2)
    assert len(replaced) == 1 and chat(port) == "echo (m): hi"
    assert proxy.stop(signal.SIGTERM) == 0


def test_sighup_reaches_every_worker(start, tmp_path):
    config = write_config(tmp_path, {"upstreams": {"echo": {"kind": "echo"}},
                                     "server": {"processes": 2, "port": 0}})
    proxy = start(["-c", config])
    port = proxy.port()
    pids = pids_answering(port, 2)
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: proxy.text().count("configuration reloaded") == 2,
             message=lambda: proxy.text())
    assert pids_answering(port, 2) == pids     # reloaded, not restarted
    assert proxy.stop(signal.SIGTERM) == 0


def test_workers_stop_when_their_supervisor_is_killed(start):
    proxy = start(["--upstream-kind", "echo", "--port", "0", "--processes", "2"])
    port = proxy.port()
    pids = pids_answering(port, 2)
    proxy.proc.kill()
    proxy.proc.wait(PATIENCE)
    wait_for(lambda: all(gone(pid) for pid in pids), message="workers outlived their supervisor")


def test_processes_auto_is_one_per_core(start):
    proxy = start(["--upstream-kind", "echo", "--port", "0"],
                  env=minimal_env(GEMINI_PROXY_PROCESSES="auto"))
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1
    line = proxy.wait_for("listening on")
    if count == 1:
        assert "worker processes" not in line
    else:
        assert "(%d worker processes" % count in line
        assert len(pids_answering(proxy.port(), count, tries=max(400, 60 * count))) == count
    assert proxy.stop(signal.SIGTERM) == 0


@pytest.mark.skipif(not hasattr(os, "process_cpu_count"), reason="-X cpu_count is 3.13's")
def test_the_cores_counted_are_those_python_is_told_of():
    # A container that knows better than its affinity mask says so with -X cpu_count.
    count = subprocess.run(
        [sys.executable, "-X", "cpu_count=3", "-c",
         "import gemini_proxy; print(gemini_proxy.usable_cores())"],
        cwd=os.path.dirname(gp.__file__), capture_output=True, text=True, timeout=PATIENCE)
    assert count.stdout.strip() == "3", count.stderr


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_process_count_is_refused(tmp_path, value):
    from test_cli import run
    result = run(["--upstream-kind", "echo", "--check", "--processes", value], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "processes" in result.stderr


def test_more_than_four_processes_a_core_are_refused_at_start(tmp_path):
    # (--check and reloads take any number: the cores counted are the machine's it runs on)
    from test_cli import run
    too_many = str(4 * gp.process_count("auto") + 1)
    result = run(["--upstream-kind", "echo", "--port", "0", "--processes", too_many], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "server.processes: %s is more than 4 a core" % too_many in result.stderr
    result = run(["--upstream-kind", "echo", "--check", "--processes", too_many], tmp_path)
    assert result.returncode == 0, result.stderr


# ---- the state workers share (section 19: the supervisor's StateServer) -------------------

def team(tmp_path, fake_url, processes=2, rpm=0):
    client = {"key": "alice-key", "name": "alice"}
    if rpm:
        client["requests_per_minute"] = rpm
    return write_config(tmp_path, {
        "server": {"processes": processes, "port": 0, "api_keys": [client],
                   "state_dir": str(tmp_path / "state")},
        "upstreams": {"fake": {"kind": "openai", "base_url": fake_url,
                               "api_key": "sk-upstream-abc", "retries": 0}},
        "default_model": "fake-model"})


def ask(port, key="alice-key"):
    """A chat request on a fresh connection (so the kernel picks a worker each time)."""
    body = json.dumps({"model": "fake-model",
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(
        "http://127.0.0.1:%d/v1/chat/completions" % port, data=body,
        headers={"content-type": "application/json", "authorization": "Bearer " + key})
    try:
        with urllib.request.urlopen(request, timeout=PATIENCE) as response:
            return response.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def test_a_clients_rate_holds_across_worker_processes_and_restarts(start, tmp_path, fake):
    config = team(tmp_path, fake.base_url, rpm=4)
    proxy = start(["-c", config])
    port = proxy.port()
    assert len(pids_answering(port, 2, key="alice-key")) == 2
    statuses = [ask(port) for _ in range(6)]
    assert sorted(statuses) == [200] * 4 + [429] * 2, statuses
    assert len(fake.requests) == 4
    assert proxy.stop(signal.SIGTERM) == 0
    # a new supervisor's store starts from what the usage ledger holds
    again = start(["-c", config])
    assert ask(again.port()) == 429
    assert again.stop(signal.SIGTERM) == 0


def test_a_key_rested_in_one_worker_rests_in_all(start, tmp_path, fake):
    from fake_upstream import raw_reply
    fake.queue(raw_reply(b'{"error": {"message": "slow down"}}', status=429,
                         headers={"retry-after": "120"}))
    proxy = start(["-c", team(tmp_path, fake.base_url)])
    port = proxy.port()
    assert ask(port) == 429
    assert [ask(port) for _ in range(8)] == [429] * 8
    assert len(fake.requests) == 1, "a worker used the key another one rested"
    assert proxy.stop(signal.SIGTERM) == 0


# ---- what went wrong once (an adversarial run) --------------------------------------------

def test_a_second_supervisor_on_the_same_port_is_refused(start):
    first = start(["--upstream-kind", "echo", "--port", "0", "--processes", "2"])
    port = first.port()
    second = start(["--upstream-kind", "echo", "--port", str(port), "--processes", "2"])
    assert second.proc.wait(PATIENCE) == 1
    second.wait_for("cannot listen on")
    assert first.stop(signal.SIGTERM) == 0


def test_sighup_while_a_worker_restarts_does_not_end_it(start):
    proxy = start(["--upstream-kind", "echo", "--port", "0", "--processes", "2"])
    port = proxy.port()
    victim = sorted(pids_answering(port, 2))[0]
    os.kill(victim, signal.SIGKILL)
    proxy.wait_for(r"\(pid %d\) exited" % victim)
    for _ in range(5):      # while the new worker starts, and after
        proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(pids_answering(port, 2)) == 2 and victim not in pids_answering(port, 2))
    assert "status -1" not in proxy.text() and chat(port) == "echo (m): hi"
    assert proxy.stop(signal.SIGTERM) == 0


def test_a_config_file_broken_after_start_reaches_no_worker(start, tmp_path):
    path = write_config(tmp_path, {"upstreams": {"echo": {"kind": "echo"}},
                                   "server": {"processes": 2, "port": 0,
                                              "state_dir": str(tmp_path / "state")}})
    proxy = start(["-c", path])
    port = proxy.port()
    with open(path, "w") as f:
        f.write("{ not json")
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.wait_for("reload failed, the workers keep the previous configuration")
    victim = sorted(pids_answering(port, 2))[0]
    os.kill(victim, signal.SIGKILL)           # started again from the last good copy
    proxy.wait_for(r"\(pid %d\) exited" % victim)
    wait_for(lambda: victim not in pids_answering(port, 2) and
             len(pids_answering(port, 2)) == 2)
    assert chat(port) == "echo (m): hi" and "configuration error" not in proxy.text()
    assert proxy.stop(signal.SIGTERM) == 0


def test_the_log_file_gets_each_line_once(start, tmp_path):
    log_file = tmp_path / "proxy.log"
    path = write_config(tmp_path, {"upstreams": {"echo": {"kind": "echo"}},
                                   "server": {"processes": 2, "port": 0},
                                   "logging": {"file": str(log_file)}})
    proxy = start(["-c", path])
    port = proxy.port()
    for _ in range(4):
        assert chat(port) == "echo (m): hi"
    assert proxy.stop(signal.SIGTERM) == 0
    lines = log_file.read_text().splitlines()
    assert sum(" POST /v1/chat/completions 200 " in line for line in lines) == 4, lines


def test_a_worker_whose_event_loop_is_stuck_is_killed_and_started_again(start, tmp_path):
    # A stopped process stands for a stuck loop: it says nothing, and the kernel still
    # queues new connections on its socket.
    path = write_config(tmp_path, {"upstreams": {"echo": {"kind": "echo"}},
                                   "server": {"processes": 2, "port": 0,
                                              "worker_stall_timeout": 10}})
    proxy = start(["-c", path])
    port = proxy.port()
    first = pids_answering(port, 2)
    stuck = sorted(first)[0]
    os.kill(stuck, signal.SIGSTOP)
    try:
        proxy.wait_for(r"worker process \d \(pid %d\) has said nothing for \d+ s "
                       r"\(worker_stall_timeout\): killed it" % stuck)
        proxy.wait_for(r"\(pid %d\) exited \(status -9\); starting it again" % stuck)
    finally:
        if not gone(stuck):
            os.kill(stuck, signal.SIGCONT)
    wait_for(lambda: gone(stuck))
    wait_for(lambda: len(pids_answering(port, 2) - first) == 1)
    assert chat(port) == "echo (m): hi"
    assert proxy.stop(signal.SIGTERM) == 0
    # the other worker, never silent that long, was left alone
    assert len(re.findall(r"has said nothing", proxy.text())) == 1, proxy.text()


def test_workers_stuck_soon_after_starting_do_not_stop_the_proxy(start, tmp_path):
    # Three workers killed for stalling within WORKER_QUICK_EXIT of their start are not
    # three that cannot start: the supervisor goes on (a request that hangs each new
    # worker's loop must not take the whole proxy down).
    path = write_config(tmp_path, {"upstreams": {"echo": {"kind": "echo"}},
                                   "server": {"processes": 2, "port": 0,
                                              "worker_stall_timeout": 5}})
    proxy = start(["-c", path])
    port = proxy.port()
    stopped = []

    def next_worker_one():
        pids = [int(p) for p in re.findall(r"worker process 1 \(pid (\d+)\) serving port",
                                           proxy.text())]
        fresh = [pid for pid in pids if pid not in stopped]
        return fresh[-1] if fresh else None
    try:
        for _ in range(3):
            wait_for(next_worker_one, message="a new worker 1")
            stopped.append(next_worker_one())
            os.kill(stopped[-1], signal.SIGSTOP)
            proxy.wait_for(r"\(pid %d\) has said nothing for \d+ s \(worker_stall_timeout\): "
                           r"killed it" % stopped[-1])
            wait_for(lambda: gone(stopped[-1]))
    finally:
        for pid in stopped:
            if not gone(pid):
                os.kill(pid, signal.SIGCONT)
    assert proxy.proc.poll() is None, proxy.text()
    wait_for(next_worker_one, message="a fourth worker 1")
    assert chat(port) == "echo (m): hi"
    assert proxy.stop(signal.SIGTERM) == 0
    assert "times in a row" not in proxy.text()


def test_the_supervisor_judges_a_worker_by_its_last_word_or_its_start(caplog):
    config = make_config({"upstreams": {"echo": {"kind": "echo"}},
                          "server": {"processes": 2, "worker_stall_timeout": 10,
                                     "shutdown_grace": 10}})
    supervisor = gp.Supervisor(config, [], argparse.Namespace())

    class Process:
        def __init__(self, pid):
            self.pid, self.killed = pid, False

        def kill(self):
            self.killed = True
    now = time.monotonic()
    cases = [  # started, heard, channel ended, killed?
        ("silent for longer than the timeout", now - 600, now - 21, 0.0, True),
        ("heard a second ago", now - 600, now - 1, 0.0, False),
        ("never ready, started a minute and more ago", now - 61, 0.0, 0.0, True),
        ("starting, past the timeout but within the minute", now - 30, 0.0, 0.0, False),
        ("said it was stopping, still there past grace + margin", now - 600, now - 61,
         now - 16, True),
        ("said it was stopping a moment ago", now - 600, now - 61, now - 1, False),
        ("starting", now - 1, 0.0, 0.0, False)]

    def workers():
        return [gp.WorkerProcess(n, Process(1000 + n), None, started, None, heard=heard,
                                 silent_since=ended)
                for n, (_, started, heard, ended, _) in enumerate(cases, 1)]
    supervisor.workers = workers()
    with caplog.at_level(logging.ERROR, logger="gemini_proxy"):
        supervisor._kill_stalled()
        supervisor._kill_stalled()   # killed once: the next look leaves it to exit
    assert [w.process.killed for w in supervisor.workers] == [c[-1] for c in cases]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3, said
    assert re.search(r"\(pid 1001\) has said nothing for \d+ s \(", said[0]), said
    assert re.search(r"\(pid 1003\) has not said it is ready \d+ s after it was started",
                     said[1]), said
    assert re.search(r"\(pid 1005\) has not exited \d+ s after it said it was stopping",
                     said[2]), said
    # while the log output is blocked, the workers block on theirs: no one is judged
    supervisor.workers = workers()
    supervisor._writing_since[1001] = now - 120
    supervisor._kill_stalled()
    assert not any(w.process.killed for w in supervisor.workers)
    # ...and once it is free again, their silence counts from then
    del supervisor._writing_since[1001]
    supervisor._kill_stalled()
    assert not any(w.process.killed for w in supervisor.workers)


def test_a_too_short_worker_stall_timeout_is_refused(tmp_path):
    from test_cli import run
    path = write_config(tmp_path, {"upstreams": {"echo": {"kind": "echo"}},
                                   "server": {"worker_stall_timeout": 2}})
    result = run(["-c", path, "--check"], tmp_path)
    assert result.returncode == 2 and "worker_stall_timeout: 2 is too short" in result.stderr


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(start, tmp_path):
    path = write_config(tmp_path, {"upstreams": {"echo": {"kind": "echo"}},
                                   "server": {"processes": 2, "port": 0,
                                              "shutdown_grace": 1.0}})
    proxy = start(["-c", path])
    port = proxy.port()
    stuck = sorted(pids_answering(port, 2))[0]
    os.kill(stuck, signal.SIGSTOP)
    try:
        assert proxy.stop(signal.SIGTERM) == 0
    finally:
        try:
            os.kill(stuck, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "(pid %d) did not stop: killing it" % stuck in proxy.text()
    wait_for(lambda: gone(stuck))


def test_two_supervisors_sharing_a_state_dir_keep_their_own_files(start, tmp_path, fake):
    state = tmp_path / "s"          # short: the files go in it, not in a temporary folder
    state.mkdir()
    env = minimal_env(GEMINI_PROXY_STATE_DIR=str(state))
    one = start(["-c", team(tmp_path, fake.base_url, rpm=100), "--state-dir", str(state)],
                env=env)
    port = one.port()
    two_config = tmp_path / "two"
    two_config.mkdir()
    two = start(["-c", team(two_config, fake.base_url, rpm=100), "--state-dir", str(state),
                 "--host", "127.0.0.2", "--port", str(port)], env=env)
    two.wait_for("listening on")
    assert len([n for n in os.listdir(str(state)) if n.endswith(".sock")]) == 2
    assert len([n for n in os.listdir(str(state)) if n.endswith(".json")]) == 2
    assert two.stop(signal.SIGTERM) == 0
    victim = sorted(pids_answering(port, 2, key="alice-key"))[0]
    os.kill(victim, signal.SIGKILL)            # one's worker, started again after two left
    one.wait_for(r"\(pid %d\) exited" % victim)
    wait_for(lambda: victim not in pids_answering(port, 2, key="alice-key") and
             len(pids_answering(port, 2, key="alice-key")) == 2)
    assert [ask(port) for _ in range(4)] == [200] * 4
    assert "shared state" not in one.text()    # its store and its config copy still there
    assert one.stop(signal.SIGTERM) == 0
    assert [n for n in os.listdir(str(state)) if n.endswith((".sock", ".json"))] == []


def test_a_relative_state_dir_works(start, tmp_path):
    proxy = start(["--upstream-kind", "echo", "--port", "0", "--processes", "2",
                   "--state-dir", "st"])
    port = proxy.port()
    assert chat(port) == "echo (m): hi"
    assert proxy.stop(signal.SIGTERM) == 0
