"""The README's load-balancer recipes, run: two proxy instances sharing a real redis-server,
behind a real nginx and a real HAProxy (Debian's packages; each test skips without its
program). The configurations are the README's own blocks, with only the addresses (and
HAProxy's check interval, so the test waits less) put in for this machine: a recipe that
stops working, or a README block that changes shape, fails here.

Each instance calls an upstream of its own, so the upstream that got a request says which
instance answered it. Every wait polls for what it waits for, up to a deadline far beyond
what a working setup needs.
"""

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading

import pytest

from conftest import PATIENCE, RunningProxy, make_config, wait_for
from fake_upstream import FakeOpenAI, Gate, completion, json_reply, pause_after, text_stream
from test_cli import free_port
from test_shared_state import redis_url  # noqa: F401  (the fixture: a real redis-server)

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def recipe(language):
    """The README's code block in `language` ("nginx" or "haproxy") under "Several
    instances behind a load balancer"."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("### Several instances behind a load balancer", 1)[1]
    section = section.split("\n## ", 1)[0]
    found = re.search(r"^```%s\n(.*?)^```" % language, section, re.M | re.S)
    assert found, "the README has no %s block under its load-balancer heading" % language
    return found.group(1)


def put_in(text, old, new, times=1):
    assert text.count(old) == times, "the README's recipe no longer says %r" % old
    return text.replace(old, new)


def accepting(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Program:
    """A load balancer in the foreground, its output in a file; stopped at the end."""

    def __init__(self, command, directory, port):
        self.directory = directory
        self.log = os.path.join(directory, "output.log")
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        self.port = port

        def listening():
            assert self.process.poll() is None, "exited: %s" % self.output()
            return accepting(port)
        try:
            wait_for(listening, message=lambda: "not listening: %s" % self.output())
        except BaseException:
            self.stop()
            raise

    def output(self):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()[-2000:]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(PATIENCE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(PATIENCE)


class Instances:
    """Two proxies with the same client keys, sharing a Redis, each with its own upstream."""

    def __init__(self, url, clients, tmp_path, **server):
        self.fakes, self.proxies = [], []
        try:
            self._start(url, clients, tmp_path, server)
        except BaseException:
            self.close()
            raise
        self.ports = [p.port for p in self.proxies]

    def _start(self, url, clients, tmp_path, server):
        self.fakes += [FakeOpenAI().start(), FakeOpenAI().start()]
        namespace = "lb-%s:" % secrets.token_hex(4)
        for index, fake in enumerate(self.fakes):
            state = tmp_path / ("instance-%d" % index)
            state.mkdir()
            raw = {"server": dict({"port": 0, "api_keys": clients, "state_dir": str(state)},
                                  **server),
                   "state": {"redis_url": url, "namespace": namespace},
                   "upstreams": {"fake": {"kind": "openai", "base_url": fake.base_url,
                                          "api_key": "sk-upstream-%d" % index,
                                          "retries": 0}},
                   "default_model": "fake-model"}
            self.proxies.append(RunningProxy(make_config(raw)))

    def counts(self):
        return [len(fake.requests) for fake in self.fakes]

    def close(self):
        for proxy in self.proxies:
            if proxy._thread.is_alive():
                proxy.stop()
        for fake in self.fakes:
            fake.stop()


def ask(port, key, timeout=PATIENCE, chat=CHAT):
    """(status, body) of one chat request through the balancer on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(chat),
                     {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def answered_by(instances, port, key):
    """(status, the index of the instance whose upstream got the request or None, body)."""
    before = instances.counts()
    status, body = ask(port, key)
    grown = [i for i, (a, b) in enumerate(zip(before, instances.counts())) if b > a]
    assert len(grown) <= 1, grown
    return status, (grown[0] if grown else None), body


def balancers(command_for):
    """A fixture's body: start(ports) writes a balancer's configuration in a directory of
    its own (command_for(directory, port, ports) -> its command line) and runs it in front
    of `ports`; every one started is stopped, and its directory removed, at the end."""
    started, directories = [], []

    def start(ports):
        directory = tempfile.mkdtemp(prefix="gp-balancer-")
        directories.append(directory)
        port = free_port()
        program = Program(command_for(directory, port, ports), directory, port)
        started.append(program)
        return program
    yield start
    for program in started:
        program.stop()
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


# ---- nginx --------------------------------------------------------------------------------

@pytest.fixture
def nginx():
    if not os.access(NGINX, os.X_OK):
        pytest.skip("no nginx")
    said = subprocess.run([NGINX, "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True).stdout
    version = tuple(int(n) for n in re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", said).groups())
    if version < (1, 19, 5):
        pytest.skip("nginx %s has no -e (1.19.5 and later)" % ".".join(map(str, version)))
    import pwd   # (POSIX only, as nginx here is)

    def command_for(directory, port, ports):
        os.chmod(directory, 0o755)   # nginx's workers may run as another user
        site = recipe("nginx")
        site = put_in(site, "server 10.0.0.11:8000", "server 127.0.0.1:%d" % ports[0])
        site = put_in(site, "server 10.0.0.12:8000", "server 127.0.0.1:%d" % ports[1])
        site = put_in(site, "listen 443 ssl;", "listen 127.0.0.1:%d;" % port)
        temp = "".join("    %s_temp_path %s/%s;\n" % (kind, directory, kind)
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = os.path.join(directory, "nginx.conf")
        with open(conf, "w") as f:
            # `user` is heeded only when nginx starts as root: then its workers are root too
            f.write("daemon off;\nworker_processes 1;\nuser %s;\npid %s/nginx.pid;\n"
                    "error_log %s/error.log info;\nevents { worker_connections 256; }\n"
                    "http {\n    access_log off;\n%s%s}\n" % (
                        pwd.getpwuid(os.getuid()).pw_name, directory, directory, temp, site))
        return [NGINX, "-p", directory, "-c", conf, "-e", os.path.join(directory, "error.log")]
    yield from balancers(command_for)


def test_nginx_recipe_keeps_a_client_on_one_instance_and_uses_both(redis_url, nginx,
                                                                    tmp_path):
    keys = ["client-key-%02d" % i for i in range(40)]
    instances = Instances(redis_url, [{"key": k, "name": "c%02d" % i}
                                      for i, k in enumerate(keys)], tmp_path)
    try:
        balancer = nginx(instances.ports)
        placed = {}
        for key in keys:
            first = answered_by(instances, balancer.port, key)
            again = answered_by(instances, balancer.port, key)
            assert first[0] == again[0] == 200, (first, again)
            assert first[1] == again[1] is not None, "one client, two instances: %s" % key
            placed[key] = first[1]
        # 40 keys all hashed to one of two instances: a chance of one in 2^39
        assert set(placed.values()) == {0, 1}, placed
    finally:
        instances.close()


def test_nginx_recipe_passes_a_streams_events_on_as_they_come(redis_url, nginx, tmp_path):
    instances = Instances(redis_url, [{"key": "stream-key", "name": "streamer"}], tmp_path)
    try:
        balancer = nginx(instances.ports)
        status, index, _ = answered_by(instances, balancer.port, "stream-key")
        assert status == 200
        release = threading.Event()
        # The upstream sends its first event, then waits for the test: the event must
        # reach the client through nginx while the stream is still open.
        instances.fakes[index].queue(pause_after(text_stream("one two three"), writes=1,
                                                 until=release))
        conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=PATIENCE)
        try:
            conn.request("POST", "/v1/chat/completions",
                         json.dumps(dict(CHAT, stream=True)),
                         {"Authorization": "Bearer stream-key",
                          "Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200
            line = response.readline()
            assert line.startswith(b"data: ") and not release.is_set(), line
            assert json.loads(line[6:])["choices"][0]["delta"]["role"] == "assistant"
            release.set()
            rest = response.read()
        finally:
            release.set()
            conn.close()
        assert rest.rstrip().endswith(b"data: [DONE]"), rest[-200:]
        events = [json.loads(e.strip()[6:]) for e in rest.split(b"\n\n")
                  if e.strip().startswith(b"data: {")]
        assert "".join(c["delta"].get("content") or "" for e in events
                       for c in e["choices"]) == "one two three"
    finally:
        instances.close()


def test_nginx_recipe_moves_a_client_when_its_instance_stops_and_its_limit_holds(
        redis_url, nginx, tmp_path):
    instances = Instances(redis_url, [{"key": "limited-key", "name": "limited",
                                       "requests_per_minute": 4}], tmp_path)
    try:
        balancer = nginx(instances.ports)
        first = [answered_by(instances, balancer.port, "limited-key") for _ in range(2)]
        assert [s for s, _, _ in first] == [200, 200]
        gone = first[0][1]
        assert first[1][1] == gone
        instances.proxies[gone].stop()
        # nginx finds the instance refusing connections and sends the client on to the
        # other one, which knows (from Redis) the two requests already made
        later = [answered_by(instances, balancer.port, "limited-key") for _ in range(3)]
        assert [(s, i) for s, i, _ in later[:2]] == [(200, 1 - gone)] * 2, later
        status, index, body = later[2]
        assert (status, index) == (429, None) and b"4 requests a minute" in body, later[2]
    finally:
        instances.close()


# ---- HAProxy ------------------------------------------------------------------------------

@pytest.fixture
def haproxy():
    if not os.access(HAPROXY, os.X_OK):
        pytest.skip("no haproxy")

    def command_for(directory, port, ports):
        backend = recipe("haproxy")
        backend = put_in(backend, "server a 10.0.0.11:8000", "server a 127.0.0.1:%d" % ports[0])
        backend = put_in(backend, "server b 10.0.0.12:8000", "server b 127.0.0.1:%d" % ports[1])
        backend = put_in(backend, "check inter 5s", "check inter 100ms", times=2)
        conf = os.path.join(directory, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write("global\n    stats socket %s/admin.sock mode 600 level admin\n"
                    # a check fails by its answer, never by a busy machine's slowness
                    "defaults\n    mode http\n    timeout connect 30s\n    timeout client 1h\n"
                    "    timeout check 30s\n"
                    "frontend llm\n    bind 127.0.0.1:%d\n    default_backend gemini_proxy\n"
                    "%s" % (directory, port, backend))
        return [HAPROXY, "-db", "-f", conf]
    yield from balancers(command_for)


def server_states(balancer):
    """HAProxy's view of its servers: name -> "UP", "DOWN", ... (its admin socket); {} while
    the socket is not there yet."""
    data = b""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(PATIENCE)
        try:
            s.connect(os.path.join(balancer.directory, "admin.sock"))
        except (FileNotFoundError, ConnectionRefusedError):
            return {}
        s.sendall(b"show stat\n")
        while True:
            piece = s.recv(65536)
            if not piece:
                break
            data += piece
    lines = data.decode().splitlines()
    fields = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(fields, line.split(","))) for line in lines[1:] if line]
    return {row["svname"]: row["status"].split()[0] for row in rows
            if row["pxname"] == "gemini_proxy" and row["svname"] in ("a", "b")}


def test_haproxy_recipe_takes_a_busy_instance_out_on_its_health_and_back(redis_url, haproxy,
                                                                         tmp_path):
    # Two workers each: the test's own requests, one at a time, always leave one free (so
    # /health says 200), and two requests held at the upstream make an instance's /health
    # say 503.
    instances = Instances(redis_url, [{"key": "team-key", "name": "team"}], tmp_path,
                          workers=2)
    try:
        balancer = haproxy(instances.ports)
        wait_for(lambda: server_states(balancer) == {"a": "UP", "b": "UP"},
                 message=lambda: "servers: %s" % server_states(balancer))
        status, busy, _ = answered_by(instances, balancer.port, "team-key")
        assert status == 200
        for _ in range(3):   # balance source: one client address, one instance
            assert answered_by(instances, balancer.port, "team-key")[:2] == (200, busy)
        # Held midway: a reply that has begun holds its worker (one that has not come
        # yet holds none: the event loop waits for it). Requests too large for the loop
        # to run itself (on an idle connection a small one takes no worker at all).
        gates = [Gate(json_reply(completion("held")), midway=True) for _ in range(2)]
        for gate in gates:
            instances.fakes[busy].queue(gate)
        held = []
        large = dict(CHAT, messages=[{"role": "user", "content": "x" * 20000}])
        holders = [threading.Thread(target=lambda: held.append(
            ask(balancer.port, "team-key", chat=large)), daemon=True) for _ in gates]
        try:
            for holder, gate in zip(holders, gates):
                holder.start()
                assert gate.entered.wait(PATIENCE), "a held request never reached its upstream"
            # (once both workers read their replies: one may still be letting go of its
            # thread as its upstream begins)
            wait_for(lambda: instances.proxies[busy].request("GET", "/health")[0] == 503,
                     message="/health never said the busy instance's workers were busy")
            name, other = ("a", "b") if busy == 0 else ("b", "a")
            wait_for(lambda: server_states(balancer) == {name: "DOWN", other: "UP"},
                     message=lambda: "servers: %s" % server_states(balancer))
            # the client's next request goes to the instance with a worker free
            assert answered_by(instances, balancer.port, "team-key")[:2] == (200, 1 - busy)
        finally:
            for gate in gates:
                gate.open()
            for holder in holders:
                if holder.ident is not None:   # started
                    holder.join(PATIENCE)
        assert [(s, b"held" in body) for s, body in held] == [(200, True)] * 2, held
        wait_for(lambda: server_states(balancer) == {"a": "UP", "b": "UP"},
                 message=lambda: "servers: %s" % server_states(balancer))
        assert answered_by(instances, balancer.port, "team-key")[:2] == (200, busy)
    finally:
        instances.close()
