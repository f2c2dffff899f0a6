"""Run an agent CLI against the proxy in front of a fake upstream, all in this process
tree, and print what happened as one JSON line. Used by tests/test_agents.py, inside
`unshare -n` where an agent must not reach any network:

    python3 tests/agent_rig.py --upstream gemini -- claude -p "Say hi" --output-format json

In the agent's arguments and environment, {proxy} stands for the proxy's URL.
--scenario makes the upstream misbehave: "pool" gives the proxy three upstream keys of
which key-b is always rate-limited; "stall" pauses each streamed reply after its first
event for longer than the proxy's keep-alive interval, so the agent gets keep-alives.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from conftest import RunningProxy, make_config  # noqa: E402
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
        spec["api_keys"] = ["key-b", "key-c"]
        fake.rules["key-b"] = error(kind, 429, "key-b is over its quota",
                                    retry_after=POOL_REST)
    elif scenario == "stall":
        fake.rules["*"] = stalling(fake)
    return spec


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", choices=sorted(FAKES), required=True)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the agent")
    parser.add_argument("--cwd", default=".")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--scenario", choices=["plain", "pool", "stall"], default="plain")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    fake = FAKES[args.upstream]().start()
    proxy = RunningProxy(make_config({
        "upstreams": {"up": upstream_spec(args.upstream, fake, args.scenario)},
        "default_model": "fake-model",
        "server": {"port": 0, "keepalive_interval": KEEPALIVE_INTERVAL},
        "logging": {"access_log": False}}))
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
    proxy.stop()
    fake.stop()
    print(json.dumps(outcome))


if __name__ == "__main__":
    main()
