#!/usr/bin/env python3
"""gemini-proxy: let LLM clients and providers that speak different API dialects talk.

One file, Python 3.8+, standard library only. It serves four client dialects and calls
six kinds of upstream, converting through one neutral model:

    Gemini API (Gemini CLI, google-genai)     ->               -> OpenAI-compatible (Kimi,
    OpenAI Chat Completions (openai, Qwen)    -> gemini_proxy  ->   DeepSeek, OpenAI, Ollama,
    Anthropic Messages (anthropic, Claude)    ->               ->   vLLM, ...), Gemini API,
    OpenAI Responses (Codex CLI, opencode)    ->               ->   Anthropic, OpenAI
                                                                    Responses, Google's Code
                                                                    Assist with Google
                                                                    logins, or echo

When the client and the upstream speak the same dialect, requests pass through with only
the model name and the key replaced.

Upstream failures are absorbed where they can be and reported faithfully where they cannot:
key pools with cooldowns after 429s (refused keys taken out), retries with backoff and route
fallbacks before the client's first byte, the dialect's own error form after it; timeouts
for connect, first byte, silence and total; keep-alives, stop strings and stream/whole
decoupling per upstream; GET /status shows the keys' health; SIGHUP reloads the config.
A code-assist upstream's Google accounts are a pool like keys: tokens refreshed ahead of
time, projects found once, each account rested or taken out by what Google answers.

For a team: named client keys with allowed models, a request rate, a daily token budget
and a concurrency limit; every request a row in an SQLite usage ledger; GET /metrics
(Prometheus), GET /stats (JSON) and GET /dashboard (one page, no external assets) behind
admin keys; CORS for browser clients; log files rotated by size, as text or JSON lines.

At scale: a request's blocking part runs in a worker thread from a pool that grows with
demand (up to server.workers) and shrinks when idle; a request lets go of its thread
while its upstream thinks (nothing back yet, a head and no body yet, or a stream's
first bytes and no answer in them yet), and once a stream's first event is in, the
event loop itself reads and converts the rest, holding no thread meanwhile, nor more of
the request than its end may need (not its JSON, nor, converted, its body); a small
request on a kept connection (plain or TLS), or on a new one to a plain HTTP upstream
on this machine, is run by the event loop itself, whole or streamed (a stream takes a
thread for a moment at its end, for its accounts); server.processes runs worker
processes on one port under a supervisor, which also serves the state they share (key
rests, client limits), or state.redis_url shares it between instances through Redis.

Usage:
    python gemini_proxy.py                      # OPENAI_BASE_URL/OPENAI_API_KEY, else Ollama
    python gemini_proxy.py -c config.json       # upstreams, routes, server, logging
    python gemini_proxy.py --upstream-url https://api.deepseek.com/v1 \\
        --upstream-key sk-... --model deepseek-chat
    python gemini_proxy.py --upstream-kind echo # no provider: check a client's wiring
    python gemini_proxy.py login [--no-browser] # add a Google account (kind code-assist)
    python gemini_proxy.py accounts             # its accounts: project, tier, state
    python gemini_proxy.py usage --by model     # the usage ledger: requests and tokens

Then point a client at it, e.g. Gemini CLI (with security.auth.selectedType set to
"gemini-api-key" in ~/.gemini/settings.json):

    export GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:8000 GEMINI_API_KEY=anything
    export GEMINI_CLI_TRUST_WORKSPACE=true   # headless runs need a trusted folder
    gemini -m gemini-2.5-pro -p "read notes.txt and summarise it" --yolo

or OpenAI clients (Chat Completions or Responses, Codex CLI's provider base_url) at
http://127.0.0.1:8000/v1, Anthropic clients (ANTHROPIC_BASE_URL) at http://127.0.0.1:8000.

Configuration comes from a JSON file (-c, else $GEMINI_PROXY_CONFIG, else ./config.json
when present; comments and trailing commas allowed), then GEMINI_PROXY_* environment
variables, then command-line flags; README.md and config.example.json describe every key.
Unknown keys and bad values stop start-up; an upstream whose key variable is unset is off.

Used as a library, the converters are plain functions over dicts, named by dialect and
direction: decode_gemini_request(payload, model) -> Chat, encode_openai_request(chat,
model) -> dict, decode_anthropic_stream(sse_events) -> neutral events, and so on.

Contents (each section uses only the ones above it):
     0. starting (a script run starts again as a module)
     1. constants and settings
     2. errors
     3. small helpers
     4. configuration
     5. HTTP/1.1 wire format (pure)
     6. neutral chat model
     7. dialect: OpenAI Chat Completions
     8. dialect: Anthropic Messages
     9. dialect: Gemini (the client side)
    10. dialect: Gemini, the upstream side
    11. dialect: OpenAI Responses (the client's requests, the responses kept)
    12. dialect: OpenAI Responses, replies to the client
    13. dialect: OpenAI Responses, the upstream side
    14. upstream: Google Code Assist (the envelope, its errors, credential files)
    15. dialect registry, upstream kinds and routes
    16. upstream connections (HTTP/1.1 and TLS of their own, pooled and kept alive)
    17. upstream replies (a call's steps in a worker or on the event loop, timeouts)
    18. Google accounts (tokens refreshed, projects found)
    19. shared state (what processes share: Redis's protocol, a client, the operations)
    20. key pools (keys and accounts)
    21. worker threads and the pipe to the event loop
    22. requests in flight (what a request holds, its errors)
    23. upstream calls and retries
    24. client limits (named client keys: rate, daily tokens, concurrency)
    25. usage ledger and metrics (SQLite, Prometheus, the dashboard's numbers)
    26. actions and the application
    27. streaming replies (pipe and upstream socket to the client, backpressure, keep-alives)
    28. server (asyncio: connections, limits, shutdown)
    29. Google login (the login and accounts commands)
    30. dashboard page
    31. state server (what worker processes share when there is no Redis)
    32. worker processes (server.processes: a supervisor and its workers)
    33. command line
"""

from __future__ import annotations

import marshal
import os
import sys


# ---- 0. Starting (a script run starts again as a module) --------------------------------
#
# Run as a script (python gemini_proxy.py), this file starts itself again at once, in the
# same process, as the module gemini_proxy. CPython holds a script's syntax tree until the
# script ends, which for a server is never: about 34 MB of an idle proxy's 67 from Python
# 3.9 (its parser keeps more), 5 MB on 3.8. A module's is freed once compiled. The code
# compiled for this run goes along in an unnamed file, so the price is one interpreter
# start. This section comes before the other imports, so that they are not done twice.
# Worker processes (section 32) start the same way.
#
# MODULE_BOOT's arguments: a file descriptor holding compiled code ("-": none), the file's
# path, then main's (so that a command line ends as it was typed). The code is used only
# when the same Python compiled it: `sys.executable` names the interpreter that started,
# which need not be this one (a shim, a renamed argv[0]); otherwise, or when it cannot be
# read (cut short), the file is compiled, or read from __pycache__. The code is read with
# pread, at no position of the descriptor's own: worker processes share their supervisor's
# (see HANDED_CODE_FD below), and may read it at the same time. Its imports see what a
# script's would: the file's own folder first (its real one, through symlinks), never the
# current directory, which `python -c` puts first (an os.py or secrets.py there would be
# imported; os is not imported yet under -S). The loader is named, since the file may have
# any name (no .py: an installed command). Run with -I or -P, a script has no folder of
# its own on sys.path, and -c no current directory. RELAUNCHED_ENV marks a relaunch until
# the boot has run: an embedding program that ran the file as a script whatever its
# arguments (and so would again) starts it once.
RELAUNCHED_ENV = "GEMINI_PROXY_RELAUNCHED"
MODULE_BOOT = ("# gemini-proxy: its file run as the module gemini_proxy (section 0)\n"
               "import sys\n"
               "own_folder = not (sys.flags.isolated or getattr(sys.flags, 'safe_path', 0))\n"
               "if own_folder:\n"
               "    del sys.path[0]\n"
               "import os\n"
               "os.environ.pop('" + RELAUNCHED_ENV + "', None)\n"
               "code_fd, path, argv = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3:]\n"
               "sys.argv = [path] + argv\n"
               "if own_folder:\n"
               "    sys.path.insert(0, os.path.dirname(os.path.realpath(path)))\n"
               "from importlib.machinery import SourceFileLoader\n"
               "from importlib.util import module_from_spec, spec_from_loader\n"
               "loader = SourceFileLoader('gemini_proxy', path)\n"
               "module = module_from_spec(spec_from_loader('gemini_proxy', loader))\n"
               "sys.modules['gemini_proxy'] = module\n"
               "compiled = b''\n"
               "if code_fd != '-':\n"
               "    code_fd = int(code_fd)\n"
               "    os.set_inheritable(code_fd, False)\n"
               "    size = os.fstat(code_fd).st_size\n"
               "    while len(compiled) < size:\n"
               "        more = os.pread(code_fd, size - len(compiled), len(compiled))\n"
               "        if not more:\n"
               "            break\n"
               "        compiled += more\n"
               "        del more\n"
               "compiler, _, compiled = compiled.partition(b'\\0')\n"
               "code = None\n"
               "if compiler == sys.version.encode():\n"
               "    import marshal\n"
               "    try:\n"
               "        code = marshal.loads(compiled)\n"
               "    except (EOFError, ValueError, TypeError):   # cut short: compile the file\n"
               "        pass\n"
               "del compiled\n"
               "if code is not None:\n"
               "    module.HANDED_CODE_FD = code_fd\n"
               "    exec(code, module.__dict__)\n"
               "else:\n"
               "    if code_fd != '-':\n"
               "        os.close(code_fd)\n"
               "    loader.exec_module(module)\n"
               "del code\n"
               "sys.exit(module.main(argv))\n")


# The descriptor of the compiled code MODULE_BOOT ran this module from; None when there
# is none (imported, run by a tool, or the code was not this Python's). The boot sets it
# before this runs. A supervisor hands it on to its workers (section 32): they neither
# compile the file (a quarter of a second each where __pycache__ cannot be written, as
# under systemd's ProtectSystem) nor read it, so a worker started again runs what the
# others run, whatever has become of the file since. A proxy serving alone and the
# commands (login, usage) close it (let_go_of_handed_code): its megabyte is the kernel's
# for as long as it is open. (--check and a configuration refused exit at once.)
HANDED_CODE_FD = globals().get("HANDED_CODE_FD")


def let_go_of_handed_code() -> None:
    global HANDED_CODE_FD
    if HANDED_CODE_FD is not None:
        os.close(HANDED_CODE_FD)
        HANDED_CODE_FD = None


def interpreter_flags() -> List[str]:
    """The command-line flags this interpreter was started with that change how code runs
    (-I, -O, -W, -X, ...): a relaunch or a worker process runs as this one does. Not -u,
    which sys.flags does not record (a worker's output goes to its supervisor, not a
    terminal; a relaunch tells it from its stdout)."""
    flags = sys.flags
    if flags.isolated:   # -I is -E, -s and -P in one
        given = ["-I"]
    else:
        given = ["-E"] if flags.ignore_environment else []
        given += ["-s"] if flags.no_user_site else []
        given += ["-P"] if getattr(flags, "safe_path", False) else []
    given += ["-S"] if flags.no_site else []
    given += ["-B"] if flags.dont_write_bytecode else []
    given += ["-" + "O" * flags.optimize] if flags.optimize else []
    given += ["-" + "b" * flags.bytes_warning] if flags.bytes_warning else []
    given += ["-W" + option for option in sys.warnoptions]
    given += ["-X" + (name if value is True else "%s=%s" % (name, value))
              for name, value in getattr(sys, "_xoptions", {}).items()]
    return given


def relaunch_as_module() -> None:
    """exec this file again as MODULE_BOOT loads it, with the code compiled for this run.
    Returns when this is not the interpreter's own run of the file as a script (imported,
    or run by a tool: a profiler, runpy, pdb; or frozen into an application), with -i
    (its prompt comes after the script), where exec is not Unix's, or when it fails:
    this run goes on, as a script."""
    if os.environ.pop(RELAUNCHED_ENV, None):   # relaunched already: run as we are
        return
    if os.name != "posix" or sys.flags.inspect or not hasattr(sys, "_getframe") or \
            getattr(sys, "frozen", False):
        return
    script = sys._getframe(1)
    if script.f_back is not None or script.f_globals is not globals():
        return
    try:
        try:   # Linux: in memory, even with no writable /tmp
            compiled = open(os.memfd_create("gemini_proxy"), "w+b")
        except (AttributeError, OSError):   # not Linux, or not allowed
            import tempfile   # here: only this fallback needs it before the imports below
            compiled = tempfile.TemporaryFile()
        with compiled:
            if compiled.fileno() <= 2:
                # Started with stdin, stdout or stderr closed: the new interpreter would
                # take this file for it, and once the file is read, its number would go
                # to the next socket or file opened, which would get the log lines.
                return
            compiled.write(sys.version.encode() + b"\0" + marshal.dumps(script.f_code))
            compiled.seek(0)
            os.set_inheritable(compiled.fileno(), True)
            for stream in (sys.stdout, sys.stderr):   # (what a sitecustomize printed)
                if stream is not None:
                    stream.flush()
            # -u, which sys.flags does not record, shows as unbuffered stdout.
            unbuffered = ["-u"] if getattr(sys.stdout, "write_through", False) else []
            os.execve(sys.executable, [sys.executable] + interpreter_flags() + unbuffered + [
                "-c", MODULE_BOOT, str(compiled.fileno()), os.path.abspath(__file__)] +
                sys.argv[1:], dict(os.environ, **{RELAUNCHED_ENV: "1"}))
    except (OSError, ValueError):   # no file for the code, no interpreter to run
        pass


if __name__ == "__main__":
    relaunch_as_module()

# What a running proxy needs. What only a rare path needs is imported there (csv,
# difflib, html, http.client, http.server, logging.handlers, mimetypes, ctypes, ...):
# http.server and http.client bring the email package, and the first seven were 2.5 MB
# of an idle proxy's memory and some 5 ms of each start.
import argparse   # (marshal, os and sys: above, for section 0)
import asyncio
import base64
import bisect
import collections
import contextvars
import copy
import dataclasses
import datetime
import errno
import fnmatch
import functools
import gc
import hashlib
import heapq
import hmac
import http
import ipaddress
import itertools
import json
import logging
import math
import queue
import random
import re
import secrets
import select
import shutil
import signal
import socket
import stat
import struct
import ssl
import subprocess
import tempfile
import threading
import time
import types
import zlib
import urllib.parse
from typing import (Any, Callable, Dict, Generator, Iterable, Iterator, List, Mapping, Optional,
                    Sequence, Set, Tuple, TypeVar, Union)

try:
    import sqlite3      # the usage ledger (section 25); some Pythons are built without it
except ImportError:     # pragma: no cover
    sqlite3 = None      # type: ignore[assignment]
try:
    import resource     # POSIX: the open-file limit (section 28)
except ImportError:     # Windows
    resource = None     # type: ignore[assignment]

__version__ = "0.1.0"


# ---- 1. Constants and settings ----------------------------------------------------------
#
# Every setting is declared once, in SETTINGS: where it lives in a config file, its default
# (whose type is the setting's type), what it means, and the environment variable and
# flag that may set it. Configuration (section 4), --help (section 33) and the README's
# tables are all read from it.

@dataclasses.dataclass(frozen=True)
class Setting:
    section: str                  # server | upstream | logging | usage | route | "" (top)
    key: str
    default: Any
    help: str
    env: str = ""                 # a GEMINI_PROXY_* environment variable that sets it
    flag: str = ""                # a command-line flag that sets it
    choices: Tuple[str, ...] = ()
    zero: bool = False            # seconds: may be 0 (elsewhere 0 would surely be a mistake)
    minimum: int = 0              # whole numbers: the least that works


MiB = 1024 * 1024
# A worker process's event loop says it is alive to its supervisor this often (seconds);
# the shortest worker_stall_timeout allowed leaves room for a few missed beats. (Here, not
# with the other WORKER_* constants in section 32: the setting's help names them.)
WORKER_HEARTBEAT = 1.0
WORKER_STALL_MINIMUM = 5.0

# Gemini CLI's OAuth client (gemini-cli packages/core/src/code_assist/oauth2.ts): an
# "installed application" client, whose secret Google's own guidance says is not treated as
# a secret; a credential file Gemini CLI wrote can only be refreshed with this pair.
GOOGLE_CLIENT_ID = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
GOOGLE_CLIENT_SECRET = "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"
GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",
                 "https://www.googleapis.com/auth/userinfo.email",
                 "https://www.googleapis.com/auth/userinfo.profile")
GOOGLE_AUTH_URL = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_USERINFO_URL = "https://www.googleapis.com/oauth2/v2/userinfo"
# Where the no-browser login sends the user: a Google page that shows the code to paste.
GOOGLE_PASTE_REDIRECT = "https://codeassist.google.com/authcode"

# The models Code Assist serves (gemini-cli config/models.ts), for model lists; and the
# names Gemini CLI changes before sending ("those backends do not expect" the new one).
CODE_ASSIST_MODELS = (
    "gemini-2.5-pro", "gemini-2.5-flash", "gemini-3-pro-preview", "gemini-3.1-pro-preview",
    "gemini-3-flash-preview", "gemini-3-flash", "gemini-3.5-flash", "gemini-3.1-flash-lite")
CODE_ASSIST_MODEL_NAMES = {"gemini-3.5-flash": "gemini-3-flash"}
CODE_ASSIST_API = "/v1internal"

# A token with less than this many seconds left is refreshed before use (gemini-cli's
# auth library refreshes five minutes ahead too).
TOKEN_REFRESH_MARGIN = 300.0

# Seconds a first request (or a login) waits for Code Assist to onboard an account, and a
# browser login for Google to send the browser back.
ONBOARD_TIMEOUT = 120
LOGIN_TIMEOUT = 300.0

SETTINGS: Tuple[Setting, ...] = (
    # -- server: listening, client keys, limits (sections 24, 27-28) --
    Setting("server", "host", "127.0.0.1", "address to listen on",
            env="GEMINI_PROXY_HOST", flag="--host"),
    Setting("server", "port", 8000, "port to listen on (0: any free one)",
            env="GEMINI_PROXY_PORT", flag="--port"),
    Setting("server", "api_keys", [], "keys clients must send (strings, or objects with a "
            "name, models and limits); none means no client authentication (loopback only)",
            env="GEMINI_PROXY_API_KEYS", flag="--api-key"),
    Setting("server", "admin_keys", [], "keys for /dashboard, /stats, /metrics and /status "
            "(none: any client key opens them)", env="GEMINI_PROXY_ADMIN_KEYS",
            flag="--admin-key"),
    Setting("server", "cors_origins", [], "browser origins that may call the proxy (\"*\": "
            "any); none: no CORS", env="GEMINI_PROXY_CORS_ORIGINS", flag="--cors-origin"),
    Setting("server", "allow_public", False, "allow a non-loopback address with no client "
            "keys", env="GEMINI_PROXY_ALLOW_PUBLIC", flag="--allow-public"),
    Setting("server", "workers", 10000, "the most new requests a worker thread (started "
            "when needed, ended when idle) works on at once: until the answer is whole, or "
            "a stream's first event is in (not while its upstream thinks, nor in a retry's "
            "backoff; one that goes on after that takes a thread past the limit; a small "
            "request the event loop answers itself takes none)",
            env="GEMINI_PROXY_WORKERS", flag="--workers", minimum=1),
    Setting("server", "processes", 1, "processes serving the port, each with its own "
            "workers (\"auto\": one per core; at most four per core); state they must "
            "share goes through the supervisor or state.redis_url", env="GEMINI_PROXY_PROCESSES",
            flag="--processes", choices=("auto",), minimum=1),
    Setting("server", "worker_stall_timeout", 60.0, "with processes above 1: seconds a "
            "worker process's event loop may go without a word to its supervisor before "
            "the supervisor kills it and starts another (0: never; else at least %g)"
            % WORKER_STALL_MINIMUM, zero=True),
    Setting("server", "max_connections", 0, "client connections open at once; more are "
            "turned away with a 503 (0: as many as the open-file limit allows)"),
    Setting("server", "max_head_bytes", 64 * 1024, "request line + headers (431 above)",
            minimum=1),
    Setting("server", "max_header_count", 100, "request headers (431 above)", minimum=1),
    Setting("server", "max_body_bytes", 32 * MiB, "request body, inline images included "
            "(413 above)", minimum=1),
    Setting("server", "head_timeout", 30.0, "seconds to receive a whole request head"),
    Setting("server", "body_timeout", 60.0, "seconds of silence allowed while a body "
            "arrives"),
    Setting("server", "body_total_timeout", 300.0, "seconds to receive a whole body, "
            "however it trickles in"),
    Setting("server", "idle_timeout", 120.0, "seconds a keep-alive connection may sit idle"),
    Setting("server", "send_timeout", 60.0, "seconds a client may stop reading its reply "
            "before it is dropped (and its upstream call with it)"),
    Setting("server", "shutdown_grace", 10.0, "seconds in-flight requests get to finish "
            "on SIGINT/SIGTERM"),
    Setting("server", "keepalive_interval", 15.0, "seconds of stream silence before an "
            "OpenAI client gets an SSE comment, an Anthropic client a ping (Gemini: never)"),
    Setting("server", "stream_headers_after", 20.0, "seconds a streaming reply waits for "
            "its upstream before its response headers go out anyway (Gemini CLI gives up "
            "after 60 s without them); 0: wait for the first event", zero=True),
    Setting("server", "stream_queue_chunks", 64, "chunks buffered between a worker and "
            "a slow client (up to a stream's first event, or all of a stream the event loop "
            "cannot read itself)", minimum=1),
    Setting("server", "responses_store", 1000, "Responses API: responses kept in memory "
            "for previous_response_id and GET /v1/responses/{id} (0: none)"),
    Setting("server", "responses_store_ttl", 3600.0, "Responses API: seconds a kept "
            "response lasts"),
    Setting("server", "responses_store_bytes", 256 * MiB, "Responses API: the most the kept "
            "responses may hold (their requests' and answers' bytes)"),
    Setting("server", "state_dir", "", "where the proxy keeps Google logins and what it "
            "learnt about them (empty: $XDG_CONFIG_HOME/gemini-proxy, else "
            "~/.config/gemini-proxy)", env="GEMINI_PROXY_STATE_DIR", flag="--state-dir"),
    Setting("server", "reject_unknown_fields", True, "answer 400 to request fields the "
            "client's dialect does not define"),
    # -- upstreams.<name>: how to reach one provider (sections 14-23, 26) --
    Setting("upstream", "kind", "openai", "kind of upstream", env="GEMINI_PROXY_UPSTREAM_KIND",
            flag="--upstream-kind", choices=("openai", "gemini", "anthropic", "openai-responses",
                                              "code-assist", "echo")),
    Setting("upstream", "base_url", "", "base URL, e.g. https://api.deepseek.com/v1 (empty: "
            "the kind's own)", env="GEMINI_PROXY_UPSTREAM_URL", flag="--upstream-url"),
    Setting("upstream", "api_key", "", "the provider key", env="GEMINI_PROXY_UPSTREAM_KEY",
            flag="--upstream-key"),
    Setting("upstream", "api_keys", [], "more keys: with api_key, one pool"),
    Setting("upstream", "api_key_env", "", "environment variable holding the key (or keys, "
            "comma-separated)"),
    Setting("upstream", "headers", {}, "extra headers for every upstream request (their "
            "values are kept out of logs)"),
    Setting("upstream", "query", {}, "extra query parameters (Azure: api-version)"),
    Setting("upstream", "auth", "auto", "how the key is sent",
            choices=("auto", "bearer", "api-key", "x-api-key", "x-goog-api-key", "none")),
    Setting("upstream", "connect_timeout", 10.0, "seconds to connect"),
    Setting("upstream", "first_byte_timeout", 600.0, "seconds until the reply starts (a "
            "whole non-streamed reply counts)"),
    Setting("upstream", "read_timeout", 300.0, "seconds of silence between two reads once "
            "the reply has started"),
    Setting("upstream", "total_timeout", 0.0, "seconds for the whole call (0: no limit)",
            zero=True),
    Setting("upstream", "max_idle_connections", 32, "keep-alive connections kept per host"),
    Setting("upstream", "max_reply_bytes", 64 * MiB, "the largest whole reply, or single "
            "stream event, read from the upstream (502 above)"),
    Setting("upstream", "key_strategy", "round_robin", "which healthy key a request takes "
            "(a conversation keeps the key it had)",
            choices=("round_robin", "least_recently_failed")),
    Setting("upstream", "cooldown_floor", 1.0, "the shortest rest after a 429", zero=True),
    Setting("upstream", "cooldown", 60.0, "the longest rest after 429s that name no time"),
    Setting("upstream", "cooldown_jitter", 0.2, "up to this fraction added to each rest",
            zero=True),
    Setting("upstream", "daily_quota_cooldown", 3600.0, "rest after a 429 that says a daily "
            "quota is spent"),
    Setting("upstream", "cooldown_scope", "auto", "what a 429 rests",
            choices=("auto", "key", "model")),
    Setting("upstream", "max_concurrency", 0, "requests in flight on this upstream (0: no "
            "limit)"),
    Setting("upstream", "key_concurrency", 0, "requests in flight on each key (0: no limit)"),
    Setting("upstream", "wait_for_keys", False, "when every key is resting, wait for one "
            "instead of a 429"),
    Setting("upstream", "wait_timeout", 30.0, "the longest a request waits for a key or a "
            "free slot"),
    Setting("upstream", "max_waiting", 100, "requests that may wait at once"),
    Setting("upstream", "retries", 2, "extra attempts after a 408/429/5xx or a connection "
            "failure"),
    Setting("upstream", "retry_wait", 0.5, "first backoff in seconds; doubles each time",
            zero=True),
    Setting("upstream", "retry_wait_max", 8.0, "the longest single backoff"),
    Setting("upstream", "retry_budget", 60.0, "seconds after the request came in when no "
            "retry may start"),
    Setting("upstream", "upstream_streaming", "match", "match the client, always ask for a "
            "stream, or never", choices=("match", "always", "never")),
    Setting("upstream", "stop_strings", [], "cut the reply where one of these appears"),
    Setting("upstream", "extra_body", {}, "merged into every upstream request body"),
    Setting("upstream", "models", [], "model names this upstream offers, for model lists"),
    Setting("upstream", "max_output_tokens", 0, "cap on the output tokens a client may ask "
            "for (0: none)"),
    Setting("upstream", "max_tokens_field", "max_tokens", "OpenAI-compatible: the field "
            "for the output limit", choices=("max_tokens", "max_completion_tokens")),
    Setting("upstream", "send_top_k", False, "OpenAI-compatible: send top_k"),
    Setting("upstream", "send_reasoning_effort", False, "OpenAI-compatible: map thinking "
            "settings to reasoning_effort"),
    Setting("upstream", "reasoning_field", "reasoning_content", "OpenAI-compatible: the "
            "field that carries reasoning back upstream"),
    Setting("upstream", "echo_reasoning", True, "OpenAI-compatible: send reasoning back on "
            "tool-call turns"),
    Setting("upstream", "think_tags", ["think"], "OpenAI-compatible: tags in the content "
            "whose text is reasoning (<think>...</think>)"),
    Setting("upstream", "response_format", "json_schema", "how JSON mode is asked for",
            choices=("json_schema", "json_object", "none")),
    Setting("upstream", "stream_usage", True, "OpenAI-compatible: ask for "
            "stream_options.include_usage"),
    Setting("upstream", "gemini_schema", "json_schema", "Gemini: tool and response schemas "
            "as JSON Schema or in Gemini's OpenAPI subset", choices=("json_schema", "openapi")),
    Setting("upstream", "default_max_tokens", 8192, "Anthropic: max_tokens when the client "
            "sets none (thinking may take half)"),
    Setting("upstream", "anthropic_version", "2023-06-01", "Anthropic: the "
            "anthropic-version header"),
    Setting("upstream", "credentials", [], "Code Assist: Google credential files, and "
            "directories of them (every *.json in each); empty: the proxy's accounts "
            "directory (state_dir/accounts), then Gemini CLI's ~/.gemini/oauth_creds.json"),
    Setting("upstream", "project", "", "Code Assist: the Google Cloud project every account "
            "uses (empty: each account's own, found with loadCodeAssist)"),
    Setting("upstream", "oauth_token_url", GOOGLE_TOKEN_URL, "Code Assist: Google's OAuth "
            "token endpoint"),
    Setting("upstream", "oauth_auth_url", GOOGLE_AUTH_URL, "Code Assist: Google's OAuth "
            "consent page (for login)"),
    Setting("upstream", "oauth_userinfo_url", GOOGLE_USERINFO_URL, "Code Assist: Google's "
            "userinfo endpoint (for login)"),
    Setting("upstream", "oauth_client_id", GOOGLE_CLIENT_ID, "Code Assist: the OAuth client "
            "(default: Gemini CLI's public one)"),
    Setting("upstream", "oauth_client_secret", GOOGLE_CLIENT_SECRET, "Code Assist: that "
            "client's secret (public for an installed app)"),
    # -- routes[] --
    Setting("route", "model", "", "the client's model name, exact or a glob"),
    Setting("route", "upstream", "", "the upstream's name"),
    Setting("route", "upstream_model", "", "the model name sent there (empty: the client's)"),
    Setting("route", "fallbacks", [], "upstreams tried in order when this one fails"),
    # -- logging --
    Setting("logging", "level", "info", "log level", env="GEMINI_PROXY_LOG_LEVEL",
            flag="--log-level", choices=("debug", "info", "warning", "error")),
    Setting("logging", "access_log", True, "one line per request"),
    Setting("logging", "log_dir", "", "directory for detailed logs (empty: ./logs)",
            env="GEMINI_PROXY_LOG_DIR", flag="--log-dir"),
    Setting("logging", "detailed", False, "write the four stages of every request to "
            "log_dir", env="GEMINI_PROXY_DETAILED_LOGS", flag="--detailed-logs"),
    Setting("logging", "max_logged_body_bytes", MiB, "per stage, in detailed logs"),
    Setting("logging", "keep_days", 0, "detailed logs older than this many days are "
            "deleted (0: kept)"),
    Setting("logging", "file", "", "write the log to this file too, rotated by size "
            "(empty: standard error only)", env="GEMINI_PROXY_LOG_FILE", flag="--log-file"),
    Setting("logging", "file_max_bytes", 10 * MiB, "the log file's size before it is "
            "rotated", minimum=1024),
    Setting("logging", "file_count", 5, "rotated log files kept beside it"),
    Setting("logging", "format", "text", "log lines as text, or one JSON object each (for "
            "log shippers)", env="GEMINI_PROXY_LOG_FORMAT", flag="--log-format",
            choices=("text", "json")),
    # -- usage: the ledger of every request (section 25) --
    Setting("usage", "database", "usage.sqlite3", "the usage ledger, an SQLite file "
            "(relative: in state_dir; empty: no ledger)", env="GEMINI_PROXY_USAGE_DB",
            flag="--usage-db"),
    Setting("usage", "keep_days", 400, "ledger rows older than this many days are deleted "
            "(0: kept)"),
    # -- state: what processes and instances share (section 19) --
    Setting("state", "redis_url", "", "a Redis that instances share key rests and client "
            "limits through (redis://[:password@]host:port/db, unix:///path); empty: this "
            "instance's own (its supervisor's, with server.processes)",
            env="GEMINI_PROXY_REDIS_URL", flag="--redis-url"),
    Setting("state", "namespace", "gemini-proxy:", "the prefix of every Redis key the proxy "
            "writes (instances that must not share: different prefixes)"),
    # -- top level --
    Setting("", "default_model", "", "upstream model for requests no route maps",
            env="GEMINI_PROXY_MODEL", flag="--model"),
    Setting("", "default_upstream", "", "the upstream that model_mapping and unmatched "
            "names use (default: the first)"),
)


def setting_defaults(section: str) -> Dict[str, Any]:
    return {s.key: s.default for s in SETTINGS if s.section == section}


SERVER_DEFAULTS = setting_defaults("server")
UPSTREAM_DEFAULTS = setting_defaults("upstream")
LOGGING_DEFAULTS = setting_defaults("logging")
SETTINGS_BY_PATH = {(s.section, s.key): s for s in SETTINGS}

# The base URL of each upstream kind when a config gives none.
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1",
                     "openai-responses": "https://api.openai.com/v1",
                     "gemini": "https://generativelanguage.googleapis.com",
                     "anthropic": "https://api.anthropic.com",
                     "code-assist": "https://cloudcode-pa.googleapis.com"}

# Where the no-configuration start sends requests when OPENAI_BASE_URL is not set.
OLLAMA_BASE_URL = "http://127.0.0.1:11434/v1"

# Gemini model names clients are known to ask for; model lists offer those a route covers.
KNOWN_GEMINI_MODELS = (
    "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite",
    "gemini-3-pro-preview", "gemini-3-flash-preview",
)

# Seconds a request may run before the server starts watching for its client leaving
# (a quick answer needs no watcher; a slow one is stopped soon after its client goes).
CLIENT_WATCH_DELAY = 0.05

# OpenAI rejects tool-call ids longer than this ("string_above_max_length").
OPENAI_MAX_TOOL_ID = 40

# Gemini counts every image as this many tokens (its documented flat rate).
IMAGE_TOKEN_ESTIMATE = 258

# Google's documented "no signature available" value; Gemini CLI adds it to tool calls.
GEMINI_SKIP_SIGNATURE = "skip_thought_signature_validator"

# The origin of reasoning an OpenAI Responses upstream gave out: its encrypted_content
# goes back only to an upstream of that kind.
RESPONSES_ORIGIN = "openai-responses"

# The first bytes of the proxy's own reasoning signatures (section 6): reasoning from one
# provider, packed so that a client of another dialect carries it in its history and sends
# it back. Standard base64 of these bytes starts with "Z3B4" whatever follows, and the
# whole signature is canonical base64, which SDKs that type signatures as bytes require.
CARRIER_MAGIC = b"gpx\x02"

# Conversations a key pool remembers the key of (each as long as its session key, at
# most 256 characters: a few MB at most per pool).
MAX_SESSIONS = 16384

# Tries with other options after an upstream refused a request's form (each refusal
# names one thing: a Responses model may refuse top_p, then temperature).
MAX_ALTERNATIVES = 4

# The longest wait an upstream may ask for (Retry-After, RetryInfo, rate-limit resets).
MAX_RETRY_AFTER = 86400.0

# Model names a client may ask for: printable, no whitespace, of a sane length.
MAX_MODEL_NAME = 256
MODEL_NAME = re.compile(r"[!-~]{1,%d}\Z" % MAX_MODEL_NAME)

# Header and query values this long are treated as credentials even in the bytes passed
# through to clients (see Config.credentials); shorter ones only stay out of logs.
MIN_TOKEN_LENGTH = 16
# Upstream headers known to carry no credential: words of the user's that an answer may
# rightly hold (OpenRouter's HTTP-Referer and X-Title, an app's address and name; an
# organisation's or project's id; a feature's name). Their values stay out of logs, as
# every header's, but are not taken out of what clients read. Any other header may be a
# gateway's credential under a name of its own (Cf-Access-Jwt-Assertion, X-PAT...).
PLAIN_HEADERS = frozenset(("http-referer", "referer", "x-title", "user-agent",
                           "anthropic-beta", "anthropic-version", "openai-beta",
                           "openai-organization", "openai-project", "x-goog-user-project"))

# The request header that carries the instance ids a request has passed through, so a
# proxy configured (directly or through others) to call itself answers 508 at once.
HOP_HEADER = "x-gemini-proxy-hops"


# ---- 2. Errors ---------------------------------------------------------------------------

class ProxyError(Exception):
    """A failure with an HTTP status; each client dialect renders it in its own shape."""

    status = 500

    def __init__(self, message: str, status: Optional[int] = None,
                 retry_after: Optional[float] = None, reason: str = ""):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.reason = reason            # machine-readable detail (e.g. "API_KEY_INVALID")

    def __reduce__(self) -> Tuple[Any, ...]:
        # A copy (failures are kept as copies, without their tracebacks: see _attempts)
        # is made without __init__, whose arguments in a subclass are not its args
        # (KeysUnavailable's status, MalformedToolCall's upstream).
        return type(self).__new__, (type(self),) + self.args, self.__dict__

    @property
    def retry_after(self) -> Optional[float]:
        """Seconds until the client should come back."""
        return self._retry_after

    @retry_after.setter
    def retry_after(self, seconds: Optional[float]) -> None:
        # What an upstream says is kept within a day: a Retry-After of "inf" must not rest
        # a key forever, nor break the reply that carries it on.
        if seconds is not None:
            seconds = None if math.isnan(seconds) else min(max(seconds, 0.0), MAX_RETRY_AFTER)
        self._retry_after = seconds


class ClientError(ProxyError):
    """The client's request is wrong (4xx); the message names what is wrong."""

    status = 400


class UpstreamError(ProxyError):
    """The upstream failed; keeps its status (a 429 stays a 429) and its message, and
    its reply as it was (headers, body) for a client that speaks the same dialect."""

    status = 502
    raw: Optional[Tuple[List[Tuple[str, str]], bytes]] = None

    def __init__(self, message: str, status: Optional[int] = None,
                 retry_after: Optional[float] = None, reason: str = "",
                 key_verdict: str = ""):
        super().__init__(message, status, retry_after, reason)
        # What the failure says about the key or account that was used, when its
        # status alone does not (see refusal_scope): "out" (for everything),
        # "out_for_model", "rest" (all of it, for retry_after), "rest_for_model" (for
        # retry_after, which the upstream gave exactly), "keep" (nothing).
        self.key_verdict = key_verdict


class MalformedToolCall(UpstreamError):
    """A converted reply whose model made a tool call that cannot be read (arguments that
    are no JSON object, or no name; Gemini's MALFORMED_FUNCTION_CALL, or a call Gemini
    stopped and left out of its reply: GEMINI_STOPPED_CALLS, named in `detail`), for a
    client whose dialect cannot be told of one: as a plain finish, its agent would take
    the turn for done and stop mid-task. A 502 the proxy does not retry: asked again,
    the model may do better, but the client's own retries (Claude Code's, the SDKs')
    already ask again, and each attempt is a whole generation paid for."""

    def __init__(self, upstream: str, detail: str = ""):
        super().__init__("upstream %r: the model made a tool call that could not be used "
                         "(%s); asking again may work" % (
                             upstream, "the upstream's %s" % detail if detail else
                             "arguments that are no JSON object, or no name"), status=502)


class KeysUnavailable(UpstreamError):
    """No key of an upstream can be used now: all resting (429, reason "resting"), all
    busy (503, "busy"), or all refused by the provider ("refused": 401/403, or 503 for
    Google accounts that are out). Said by the proxy, not the upstream."""

    def __init__(self, message: str, status: int, retry_after: Optional[float] = None,
                 cause: str = ""):
        super().__init__(message, status, retry_after)
        self.cause = cause      # "busy" | "resting" | "refused": whether waiting may help


class ClientGone(Exception):
    """The client closed its connection; the upstream call should stop."""


def forget_traceback(error: BaseException) -> None:
    """Drop the traceback of `error`, and of the errors it was raised from or while
    handling, once it has been dealt with (answered, logged). A traceback holds the
    frames it went through; where one of them holds the error itself (a local it was
    raised from, a closure, a list of failures, a task), that was a cycle, which kept
    the frames and what they held (a request and its body, a connection) until Python's
    cycle collector came by."""
    pending: List[Optional[BaseException]] = [error]
    seen: Set[int] = set()
    while pending:
        each = pending.pop()
        if each is not None and id(each) not in seen:
            seen.add(id(each))
            each.__traceback__ = None
            pending += (each.__cause__, each.__context__)


class ConfigError(Exception):
    """A bad configuration; stops start-up, never rendered as HTTP."""


# ---- 3. Small helpers --------------------------------------------------------------------

def new_id(prefix: str = "", nbytes: int = 12) -> str:
    return prefix + secrets.token_hex(nbytes)


# One encoder for every event (json.dumps with options builds a new one each call). What
# it writes is parsed JSON or the proxy's own dicts, never circular: no check for that.
COMPACT_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False)


def json_compact(obj: Any) -> str:
    """JSON on one line, ASCII only: no raw line separators can reach a strict SSE parser."""
    return COMPACT_JSON.encode(obj)


def json_bytes(obj: Any) -> bytes:
    return json_compact(obj).encode("ascii")


def _not_json_number(text: str) -> Any:
    raise ValueError("%s is not a JSON number" % text)


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):   # 1e999: valid JSON text, but no upstream can take it back
        raise ValueError("%s is too large" % text)
    return value


STRICT_JSON = json.JSONDecoder(parse_constant=_not_json_number, parse_float=_finite)


def strict_json(text: Any) -> Any:
    """json.loads without the NaN, Infinity and 1e999 Python would read: they could not be
    written back as valid JSON. One decoder for all (json.loads with hooks builds a new
    one each call). Raises ValueError."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8")
    return STRICT_JSON.decode(text)


def parse_json_body(body: bytes) -> Any:
    """A client's JSON body. NaN and Infinity (which Python would read) and numbers too
    large for a double are refused: they could not be sent on as valid JSON."""
    if not body.strip():
        raise ClientError("the request body is empty; a JSON object was expected")
    try:
        return strict_json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError("the request body is not valid JSON: %s" % exc) from None
    except RecursionError:
        raise ClientError("the request body is nested too deeply") from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64_decode_any(text: str) -> bytes:
    """Base64 in the standard or the URL-safe alphabet, padded or not (SDKs that hold
    signatures as bytes send them back in either form). Raises ValueError."""
    text = text.strip().rstrip("=").replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def camel_keys(obj: Dict[str, Any]) -> Dict[str, Any]:
    """One level of keys in camelCase (the Python SDK sends some fields in snake_case)."""
    return {snake_to_camel(key) if "_" in key else key: value for key, value in obj.items()}


def estimate_tokens(text: str) -> int:
    """Rough token count: ~4 ASCII characters per token, one per other character."""
    if not text:
        return 0
    ascii_chars = len(text.encode("ascii", "ignore"))
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


RESET_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?"
                            r"(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?\Z")

# Rate-limit headers that say when a limit resets, and the header saying what is left
# of it: OpenAI-style durations ("6m0s", "20ms") and Anthropic's RFC 3339 moments.
RESET_HEADERS = (("x-ratelimit-reset-requests", "x-ratelimit-remaining-requests"),
                 ("x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens"),
                 ("anthropic-ratelimit-requests-reset", "anthropic-ratelimit-requests-remaining"),
                 ("anthropic-ratelimit-tokens-reset", "anthropic-ratelimit-tokens-remaining"),
                 ("anthropic-ratelimit-input-tokens-reset",
                  "anthropic-ratelimit-input-tokens-remaining"),
                 ("anthropic-ratelimit-output-tokens-reset",
                  "anthropic-ratelimit-output-tokens-remaining"))


def _reset_seconds(value: str) -> Optional[float]:
    value = value.strip()
    match = RESET_DURATION.match(value)
    if value and match and any(match.groups()):
        h, m, sec, ms = (float(g) if g else 0.0 for g in match.groups())
        return h * 3600 + m * 60 + sec + ms / 1000
    try:   # 2026-11-23T10:00:00Z; Python 3.8 reads at most 6 digits of a fraction
        moment = datetime.datetime.fromisoformat(
            re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00"))
        return max(0.0, moment.timestamp() - time.time())
    except ValueError:
        return None


def parse_reset_hint(headers: Dict[str, str]) -> Optional[float]:
    """Seconds until a rate limit resets, from the providers' rate-limit headers (for a
    429 without Retry-After): the latest reset among the limits that are spent, else
    the soonest of any."""
    spent, other = [], []
    for reset, remaining in RESET_HEADERS:
        seconds = _reset_seconds(headers.get(reset, ""))
        if seconds is not None:
            (spent if headers.get(remaining, "").strip() == "0" else other).append(seconds)
    return max(spent) if spent else min(other) if other else None


def readable_now(sock: socket.socket, within: float = 0.0) -> bool:
    """Whether a socket has something to read (or has been closed), waiting up to
    `within` seconds for it."""
    return _ready(sock, False, within)


def writable_now(sock: socket.socket) -> bool:
    """Whether a socket can be written to now (a connect has ended, or failed)."""
    return _ready(sock, True, 0.0)


def _ready(sock: socket.socket, to_write: bool, within: float) -> bool:
    # poll(), not select(): select cannot watch a descriptor past 1023, which a busy proxy
    # uses. (Windows has no poll; its select reports a failed connect as an exception.)
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT if to_write else select.POLLIN)
        return bool(poller.poll(within * 1000))
    if to_write:
        ready = select.select([], [sock], [sock], within)
        return bool(ready[1] or ready[2])
    return bool(select.select([sock], [], [], within)[0])


def display_url(url: str) -> str:
    """A URL fit for a log line or a page: without the user and password it may carry."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def clip(text: str, limit: int = 300) -> str:
    """Text cut to about `limit` characters at a word boundary, saying so."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip() + " [...]"


# Control characters, line separators, and the bidirectional controls that can make a
# line read differently from what it holds.
LOG_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x80-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def log_safe(text: str) -> str:
    """Text for one log line: control characters (newlines included) escaped, so that text
    from a client or an upstream cannot forge or split log lines."""
    return LOG_UNSAFE.sub(lambda m: "\\x%02x" % ord(m.group()) if ord(m.group()) < 256
                          else "\\u%04x" % ord(m.group()), text)


log = logging.getLogger("gemini_proxy")
access_log = logging.getLogger("gemini_proxy.access")


# Google's OAuth tokens, wherever they turn up (access tokens start "ya29.", refresh
# tokens "1//"): the proxy holds many that no configuration names.
GOOGLE_TOKEN = re.compile(r"\bya29\.[\w.-]+|(?<![\w/])1//[\w.-]{8,}")


def without_google_tokens(text: str) -> str:
    """Text with GOOGLE_TOKEN's matches replaced. Text holding neither start is returned
    without the search, which costs more than the rest of a log line (the pattern has no
    literal start the regex engine could skip ahead to)."""
    if "ya29." not in text and "1//" not in text:
        return text
    return GOOGLE_TOKEN.sub("[REDACTED]", text)


class LogFormatter(logging.Formatter):
    """Every log line on one line: the message's control characters are escaped (a
    traceback, which is this program's own, keeps its lines), and no Google token is in
    it, whatever quoted one."""

    _second: Tuple[int, str] = (-1, "")   # the last second written, as text

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = without_google_tokens(log_safe(record.message))
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        """logging's own "2026-12-06 01:20:43,123", the part to the second written once
        a second: time.strftime was a seventh of an access line's cost."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        written, text = self._second   # one tuple: handlers in other threads share this
        if written != second:
            text = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, text)
        return self.default_msec_format % (text, record.msecs)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (logging.format "json", for log shippers): time, level,
    logger, message and, for an error with a traceback, the traceback; Google tokens
    removed as from text lines."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.datetime.fromtimestamp(
                     record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name,
                 "message": without_google_tokens(record.getMessage())}
        if record.exc_info:
            entry["traceback"] = without_google_tokens(self.formatException(record.exc_info))
        return json.dumps(entry)   # ASCII: no U+2028 for a line splitter to split at


def fingerprint(secret: str) -> str:
    """A short, stable name for a secret that reveals nothing usable."""
    return "key#" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:8] if secret else "none"


# A secret in a URL's query (?key=..., the Gemini API's way), wherever a URL is quoted.
QUERY_SECRET = re.compile(r"([?&](?:key|api_key|access_token)=)[^&\s\"']+")
SECRET_HEADERS = frozenset(("authorization", "x-api-key", "x-goog-api-key", "api-key",
                            "proxy-authorization", "cookie", "set-cookie"))


class Redactor:
    """Removes the secrets the configuration holds (Config.secrets) from text bound for
    a log, an error or a page, and any key=... query value; and its credentials
    (Config.credentials) from bytes passed through to a client."""

    def __init__(self, secrets_: Iterable[str] = (), credentials: Iterable[str] = ()):
        self._secrets = sorted({s for s in secrets_ if len(s) >= 4}, key=len, reverse=True)
        self._credentials = sorted({s for s in credentials if len(s) >= 4}, key=len,
                                   reverse=True)
        # As written, and as JSON may write it ("/" escaped as "\/").
        self._secret_bytes = [s.encode("utf-8", "surrogatepass") for s in self._credentials]
        self._secret_bytes += [s.replace(b"/", b"\\/") for s in self._secret_bytes
                               if b"/" in s]
        # Bytes that may hold the start of a credential: held back from a client until
        # what follows shows whether it is one.
        self.overlap = max(map(len, self._secret_bytes), default=1) - 1

    def text(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[REDACTED]")
        text = without_google_tokens(text)
        if "key=" not in text and "access_token=" not in text:   # as most text: no search
            return text
        return QUERY_SECRET.sub(r"\1[REDACTED]", text)

    def names(self, text: str) -> str:
        """The configuration's secrets removed from a short name (a model's), cheaply."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[REDACTED]")
        return text

    def reply_text(self, text: str) -> str:
        """Credentials removed from an upstream's reply (an upstream may repeat its key in
        an error, or an answer), at the cost of a search each."""
        for secret in self._credentials:
            if secret in text:
                text = text.replace(secret, "[REDACTED]")
        return text

    def bytes(self, data: bytes) -> bytes:
        """reply_text for bytes passed through to a client."""
        for secret in self._secret_bytes:
            if secret in data:
                data = data.replace(secret, b"[REDACTED]")
        return data

    def headers(self, headers: Iterable[Tuple[str, str]]) -> List[Tuple[str, str]]:
        return [(name, "[REDACTED]" if name.lower() in SECRET_HEADERS else self.text(value))
                for name, value in headers]


# ---- 4. Configuration ----------------------------------------------------------------------
#
# A JSON file (written by hand: // and /* */ comments and trailing commas are allowed),
# then environment variables, then command-line flags. Every key is checked against
# SETTINGS (section 1); an unknown key or a bad value stops start-up with a message naming
# it. Keys starting with "_" are comments and ignored. load_config() is a list of steps.

@dataclasses.dataclass
class Route:
    """Client model name (exact or glob) -> upstream and the model name sent there, and
    the upstreams to try, in order, when that one fails."""

    pattern: str
    upstream: str
    upstream_model: str = ""   # empty: send the client's model name unchanged
    fallbacks: List[Tuple[str, str]] = dataclasses.field(default_factory=list)  # (up, model)

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.pattern) if is_glob(self.pattern) \
            else model == self.pattern


# What a client key object in server.api_keys may hold, besides "key".
CLIENT_KEY_FIELDS = ("name", "models", "requests_per_minute", "tokens_per_day",
                     "max_concurrency")
CLIENT_NAME = re.compile(r"[\w.@+-]{1,64}\Z", re.A)


@dataclasses.dataclass(frozen=True)
class ClientKey:
    """A key clients send, with the name that stands for it in logs, the ledger, metrics
    and the dashboard, the models it may use (globs; none: any) and its limits (0: none)."""

    key: str
    name: str
    models: Tuple[str, ...] = ()
    requests_per_minute: int = 0
    tokens_per_day: int = 0
    max_concurrency: int = 0

    def allows(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, pattern)
                                      for pattern in self.models)


# The client of a proxy that asks for no key.
ANONYMOUS = ClientKey("", "anonymous")


@dataclasses.dataclass
class Config:
    server: Dict[str, Any]
    upstreams: Dict[str, Dict[str, Any]]
    routes: List[Route]
    logging: Dict[str, Any]
    default_upstream: str
    usage: Dict[str, Any] = dataclasses.field(default_factory=lambda: setting_defaults("usage"))
    state: Dict[str, Any] = dataclasses.field(default_factory=lambda: setting_defaults("state"))
    # server.api_keys as ClientKeys (server["api_keys"] holds their key strings).
    clients: List[ClientKey] = dataclasses.field(default_factory=list)
    source: str = ""            # the file it came from, for the start-up lines
    # Upstreams that cannot be used, and why (a key variable that is not set): requests
    # go on to the route's fallbacks, and the start-up lines say what to set.
    disabled: Dict[str, str] = dataclasses.field(default_factory=dict)

    def secrets(self) -> List[str]:
        """Every value in the configuration that must never reach a log, an error or a
        page: client keys, upstream keys, the values of upstream headers and query
        parameters, and the user and password of a URL."""
        found = list(self.server["api_keys"]) + list(self.server["admin_keys"])
        for spec in self.upstreams.values():
            found += spec["api_keys"] + list(spec["headers"].values())
            for value in spec["query"].values():   # as written, and as a URL carries it
                found += [value, urllib.parse.quote_plus(value), urllib.parse.quote(value, "")]
            parts = urllib.parse.urlsplit(spec["base_url"])
            found += [urllib.parse.unquote(v) for v in (parts.username, parts.password) if v]
        try:   # checked by load_config; a Config built by hand may hold anything
            found.append(parse_state_url(self.state["redis_url"]).password)
        except ValueError:
            pass
        return list(dict.fromkeys(s for s in found if s))

    def credentials(self) -> List[str]:
        """The secrets removed even from an upstream's reply passed through to a client
        (an upstream may repeat one in an error): every key and URL password, and the
        values of headers (but PLAIN_HEADERS) and of query parameters as long as a token
        (an api-version date or "true" is none, and a model's answer must not have it
        replaced)."""
        keys = set(self.server["api_keys"]) | set(self.server["admin_keys"])
        words: Set[str] = set()   # header values that are no credentials
        for spec in self.upstreams.values():
            keys.update(spec["api_keys"])
            parts = urllib.parse.urlsplit(spec["base_url"])
            keys.update(urllib.parse.unquote(v) for v in (parts.username, parts.password) if v)
            words.update(value for name, value in spec["headers"].items()
                         if name.lower() in PLAIN_HEADERS)
        tokens = set(self.sent_upstream())   # (a word elsewhere a credential is one)
        return [s for s in self.secrets() if s in keys or (
            len(s) >= MIN_TOKEN_LENGTH and (s not in words or s in tokens))]

    def sent_upstream(self) -> List[str]:
        """The credentials the proxy sends its upstreams (keys, header values but those
        of PLAIN_HEADERS, query values, a URL's user and password) as long as a token:
        what a converted reply may hold whole where an upstream repeated one in pieces.
        (A shorter one, "ollama" or "test", would cut letters out of the proxy's own
        fields, a model's name say.)"""
        found: List[str] = []
        for spec in self.upstreams.values():
            found += spec["api_keys"] + list(spec["query"].values()) + [
                value for name, value in spec["headers"].items()
                if name.lower() not in PLAIN_HEADERS]
            parts = urllib.parse.urlsplit(spec["base_url"])
            found += [urllib.parse.unquote(v) for v in (parts.username, parts.password) if v]
        return [s for s in dict.fromkeys(found) if len(s) >= MIN_TOKEN_LENGTH]


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    import difflib   # (here: see the imports at the top)
    close = difflib.get_close_matches(key, list(known), n=1)
    return " (did you mean %r?)" % close[0] if close else ""


# -- reading a file written by hand ----------------------------------------------------------

_JSON_STRING = r'"(?:[^"\\\n]|\\.)*"'
_JSON_COMMENT = re.compile(_JSON_STRING + r"|//[^\n]*|/\*[\s\S]*?\*/")
_JSON_TRAILING_COMMA = re.compile(_JSON_STRING + r"|,(?=\s*[\]}])")


def _blank(match: "re.Match[str]") -> str:
    """A comment or a trailing comma as spaces (newlines kept), so that line and column
    numbers in an error still point into the file as written; strings stay."""
    text = match.group()
    return text if text.startswith('"') else re.sub(r"[^\n]", " ", text)


def parse_config_text(text: str, path: str) -> Any:
    """A config file's JSON, allowing comments and trailing commas; an error names the
    file, line and column."""
    text = _JSON_TRAILING_COMMA.sub(_blank, _JSON_COMMENT.sub(_blank, text))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("%s line %d column %d is not valid JSON: %s" % (
            path, exc.lineno, exc.colno, exc.msg)) from None


def read_config_file(args: argparse.Namespace, environ: Dict[str, str]
                     ) -> Tuple[str, Dict[str, Any]]:
    """(path, contents) of the config file: -c, else $GEMINI_PROXY_CONFIG, else
    ./config.json when it exists; ("", {}) when there is none."""
    path = getattr(args, "config", None) or environ.get("GEMINI_PROXY_CONFIG") or \
        ("config.json" if os.path.exists("config.json") else "")
    if not path:
        return "", {}
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError("cannot read config file %s: %s" % (path, exc.strerror)) from None
    except UnicodeDecodeError:
        raise ConfigError("config file %s is not UTF-8 text" % path) from None
    raw = parse_config_text(text, path)
    if not isinstance(raw, dict):
        raise ConfigError("config file %s: expected a JSON object at the top" % path)
    return path, raw


# -- checking values ---------------------------------------------------------------------------

def _check_value(value: Any, setting: Setting, path: str) -> Any:
    """`value` checked against the type of the setting's default and its choices; errors
    name `path`."""
    default = setting.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError("%s: expected true or false, got %r" % (path, value))
    elif isinstance(default, int):
        if value in setting.choices:   # a word that stands for a number ("auto")
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < setting.minimum:
            raise ConfigError("%s: expected a whole number >= %d%s, got %r" % (
                path, setting.minimum, "".join(" or %r" % c for c in setting.choices),
                value))
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or value < 0 or (value == 0 and not setting.zero):
            raise ConfigError("%s: expected a number %s 0, got %r" % (
                path, ">=" if setting.zero else ">", value))
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError("%s: expected a string, got %r" % (path, value))
        if setting.choices and value not in setting.choices:
            raise ConfigError("%s: %r is not one of %s" % (path, value,
                                                          ", ".join(setting.choices)))
    elif isinstance(default, list):
        # server.api_keys may hold objects too (_resolve_client_keys checks them)
        objects = (setting.section, setting.key) == ("server", "api_keys")
        wanted = "expected a list of strings" + (" or objects" if objects else "")
        if not isinstance(value, list):
            raise ConfigError("%s: %s, got %s" % (path, wanted, type(value).__name__))
        for i, item in enumerate(value):   # the entries may be keys: never shown
            if not isinstance(item, (str, dict) if objects else str):
                raise ConfigError("%s: %s; entry %d is %s" % (path, wanted, i,
                                                            type(item).__name__))
    elif isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError("%s: expected an object, got %r" % (path, value))
        if setting.key in ("headers", "query") and \
                not all(isinstance(v, str) for v in value.values()):
            raise ConfigError("%s: every value must be a string" % path)
    return value


def _check_section(raw: Any, section: str, path: str) -> Dict[str, Any]:
    """A section of the file, every key checked, with the defaults for the rest."""
    if not isinstance(raw, dict):
        raise ConfigError("%s: expected an object, got %r" % (path, raw))
    defaults = setting_defaults(section)
    checked = copy.deepcopy(defaults)
    for key, value in raw.items():
        if key.startswith("_"):
            continue
        if key not in defaults:
            raise ConfigError("%s.%s: unknown key%s" % (path, key, _did_you_mean(key, defaults)))
        checked[key] = _check_value(value, SETTINGS_BY_PATH[section, key],
                                    "%s.%s" % (path, key))
    return checked


TOP_LEVEL_KEYS = ("server", "upstreams", "routes", "model_mapping", "default_model",
                  "default_upstream", "logging", "usage", "state")

# The seed project's flat format: {openai_api_key, openai_base_url, model_mapping,
# default_openai_model, server{host, port, log_level}, logging{enable_detailed_logs,
# enable_access_logs, log_directory}, retry{max_retries, wait_fixed}}.
SEED_LOGGING_KEYS = {"enable_detailed_logs": "detailed", "enable_access_logs": "access_log",
                     "log_directory": "log_dir"}
SEED_RETRY_KEYS = {"max_retries": "retries", "wait_fixed": "retry_wait"}


def translate_seed_format(raw: Dict[str, Any]) -> Dict[str, Any]:
    """Rewrite the seed project's flat keys into this format, so its files keep working."""
    raw = dict(raw)
    if "providers" in raw:
        raise ConfigError("providers: the seed's multi-provider list is not supported; "
                          "declare each provider under \"upstreams\" and pick them with "
                          "\"routes\" (see README.md)")
    server, logging_ = raw.get("server"), raw.get("logging", {})
    if isinstance(server, dict) and isinstance(logging_, dict):   # else: reported later
        server, logging_ = dict(server), dict(logging_)
        if "log_level" in server:
            logging_.setdefault("level", server.pop("log_level"))
        for old, new in SEED_LOGGING_KEYS.items():
            if old in logging_:
                logging_[new] = logging_.pop(old)
        raw["server"] = server
        if logging_ or "logging" in raw:
            raw["logging"] = logging_
    flat = {k: raw.pop(k) for k in ("openai_api_key", "openai_base_url", "retry") if k in raw}
    if "default_openai_model" in raw:
        raw.setdefault("default_model", raw.pop("default_openai_model"))
    if flat:
        upstreams = dict(raw.get("upstreams") or {})
        default = dict(upstreams.get("default") or {"kind": "openai"})
        if "openai_api_key" in flat:
            default["api_key"] = flat["openai_api_key"]
        default["base_url"] = flat.get("openai_base_url") or default.get("base_url") \
            or DEFAULT_BASE_URLS["openai"]
        retry = flat.get("retry", {})
        if not isinstance(retry, dict):
            raise ConfigError("retry: expected an object, got %r" % (retry,))
        for key, value in retry.items():
            if key not in SEED_RETRY_KEYS:
                raise ConfigError("retry.%s: unknown key%s" % (
                    key, _did_you_mean(key, SEED_RETRY_KEYS)))
            new = SEED_RETRY_KEYS[key]
            default[new] = _check_value(value, SETTINGS_BY_PATH["upstream", new], "retry." + key)
        upstreams["default"] = default
        raw["upstreams"] = upstreams
    return raw


FALLBACK_KEYS = ("upstream", "upstream_model")


def _check_fallbacks(raw: Any, path: str) -> List[Tuple[str, str]]:
    """A route's fallbacks: upstream names, or {"upstream", "upstream_model"} objects."""
    if not isinstance(raw, list):
        raise ConfigError("%s: expected a list of upstream names or {upstream, upstream_model}"
                          % path)
    fallbacks = []
    for i, item in enumerate(raw):
        where = "%s[%d]" % (path, i)
        if isinstance(item, str):
            item = {"upstream": item}
        for key in item if isinstance(item, dict) else ():
            if key not in FALLBACK_KEYS and not key.startswith("_"):
                raise ConfigError("%s.%s: unknown key%s" % (where, key,
                                                           _did_you_mean(key, FALLBACK_KEYS)))
        entry = _check_section(item, "route", where)
        if not entry["upstream"]:
            raise ConfigError("%s: needs \"upstream\"" % where)
        fallbacks.append((entry["upstream"], entry["upstream_model"]))
    return fallbacks


def _check_routes(raw: Any) -> List[Route]:
    if not isinstance(raw, list):
        raise ConfigError("routes: expected a list of {model, upstream, upstream_model, "
                          "fallbacks}")
    routes = []
    for i, item in enumerate(raw):
        where = "routes[%d]" % i
        if not isinstance(item, dict):
            raise ConfigError("%s: expected an object, got %r" % (where, item))
        fallbacks = _check_fallbacks(item.get("fallbacks", []), where + ".fallbacks")
        entry = _check_section({k: v for k, v in item.items() if k != "fallbacks"}, "route",
                               where)
        if not entry["model"] or not entry["upstream"]:
            raise ConfigError("%s: needs both \"model\" and \"upstream\"" % where)
        routes.append(Route(entry["model"], entry["upstream"], entry["upstream_model"],
                            fallbacks))
    return routes


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_value(environ: Dict[str, str], setting: Setting) -> Any:
    """A setting's environment variable parsed to the setting's type; errors name it."""
    text = environ[setting.env]
    default = setting.default
    try:
        if isinstance(default, bool):
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            value: Any = text.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            value = text if text in setting.choices else int(text)
        elif isinstance(default, float):
            value = float(text)
        elif isinstance(default, list):
            value = [item.strip() for item in text.split(",") if item.strip()]
        else:
            value = text
    except ValueError:
        raise ConfigError("%s: cannot use %r here" % (setting.env, text)) from None
    return _check_value(value, setting, setting.env)


def flag_dest(setting: Setting) -> str:
    return setting.flag.lstrip("-").replace("-", "_")


# -- the steps of load_config -------------------------------------------------------------------

def _sections_of(raw: Dict[str, Any], path: str) -> Config:
    """The file's sections, checked, as a Config without its catch-all route yet."""
    for key in raw:
        if not key.startswith("_") and key not in TOP_LEVEL_KEYS:
            raise ConfigError("%s: unknown key%s" % (key, _did_you_mean(key, TOP_LEVEL_KEYS)))
    raw_upstreams = raw.get("upstreams", {})
    if not isinstance(raw_upstreams, dict):
        raise ConfigError("upstreams: expected an object of name -> upstream")
    upstreams = {name: _check_section(spec, "upstream", "upstreams.%s" % name)
                 for name, spec in raw_upstreams.items() if not name.startswith("_")}
    mapping = raw.get("model_mapping", {})
    if not isinstance(mapping, dict):
        raise ConfigError("model_mapping: expected an object of client model -> upstream model")
    mapping_routes = []
    for pattern, target in mapping.items():
        if pattern.startswith("_"):
            continue
        if not isinstance(target, str):
            raise ConfigError("model_mapping.%s: expected an upstream model name" % pattern)
        mapping_routes.append(Route(pattern, "", target))   # its upstream: the default one
    top = {key: _check_value(raw.get(key, s.default), s, key) for (section, key), s
           in SETTINGS_BY_PATH.items() if section == ""}
    config = Config(_check_section(raw.get("server", {}), "server", "server"), upstreams,
                    _check_routes(raw.get("routes", [])) + mapping_routes,
                    _check_section(raw.get("logging", {}), "logging", "logging"),
                    top["default_upstream"],
                    _check_section(raw.get("usage", {}), "usage", "usage"),
                    _check_section(raw.get("state", {}), "state", "state"), source=path)
    config.routes.append(Route("*", "", top["default_model"]))   # the catch-all
    return config


def _apply_environment(config: Config, environ: Dict[str, str]) -> None:
    """GEMINI_PROXY_* variables for the server and logging sections (those for the default
    upstream are _apply_default_upstream's). A misspelled one is an error, like a key."""
    known = {s.env for s in SETTINGS if s.env} | {"GEMINI_PROXY_CONFIG"}
    for name in environ:
        if name.startswith("GEMINI_PROXY_") and name not in known:
            raise ConfigError("%s: unknown environment variable%s"
                              % (name, _did_you_mean(name, known)))
    sections = {"server": config.server, "logging": config.logging, "usage": config.usage,
                "state": config.state}
    for setting in SETTINGS:
        if setting.env in environ and setting.section in sections:
            sections[setting.section][setting.key] = _env_value(environ, setting)


def _apply_default_upstream(config: Config, args: argparse.Namespace,
                            environ: Dict[str, str]) -> None:
    """The default upstream and model: flags, then GEMINI_PROXY_UPSTREAM_* and
    GEMINI_PROXY_MODEL, then (only when nothing is configured at all) OPENAI_BASE_URL,
    OPENAI_API_KEY and OPENAI_MODEL, else a local Ollama."""
    given: Dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.section not in ("upstream", "") or not setting.flag:
            continue
        value = getattr(args, flag_dest(setting), None)
        if value:
            given[setting.key] = _check_value(value, setting, setting.flag)
        elif environ.get(setting.env):
            given[setting.key] = _env_value(environ, setting)
    model = given.pop("default_model", "")
    if not config.upstreams and not (given.get("kind") or given.get("base_url")):
        if environ.get("OPENAI_BASE_URL") or environ.get("OPENAI_API_KEY"):
            given["base_url"] = environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URLS["openai"]
            given.setdefault("api_key", environ.get("OPENAI_API_KEY", ""))
            model = model or environ.get("OPENAI_MODEL", "")
        else:
            given["base_url"] = OLLAMA_BASE_URL
    if given:
        name = config.default_upstream or ("default" if "default" in config.upstreams or
                                           not config.upstreams else next(iter(config.upstreams)))
        spec = config.upstreams.setdefault(name, _check_section({}, "upstream", name))
        spec.update(given)
        if given.get("api_key"):   # a key given here replaces the file's keys and variable
            spec["api_key_env"], spec["api_keys"] = "", []
    if model:
        config.routes[-1].upstream_model = model


def _apply_flags(config: Config, args: argparse.Namespace) -> None:
    sections = {"server": config.server, "logging": config.logging, "usage": config.usage,
                "state": config.state}
    for setting in SETTINGS:
        value = getattr(args, flag_dest(setting), None) if setting.flag else None
        if setting.section in sections and value is not None and value is not False \
                and value != []:
            sections[setting.section][setting.key] = _check_value(value, setting, setting.flag)


def _resolve_upstreams(config: Config, environ: Dict[str, str]) -> None:
    """Each upstream's key pool and base URL. An upstream whose key variable is not set is
    disabled, not fatal (a user may start from the example with only the keys they have);
    every missing variable is named at once."""
    for name, spec in config.upstreams.items():
        keys = [spec["api_key"]] + spec["api_keys"]
        variable = spec["api_key_env"]
        if variable:
            keys = [k.strip() for k in environ.get(variable, "").split(",")]
            if not any(keys):
                config.disabled[name] = "environment variable %s is not set" % variable
        # One pool, in the order given, each key once; api_key is its first.
        spec["api_keys"] = list(dict.fromkeys(k for k in keys if k))
        spec["api_key"] = spec["api_keys"][0] if spec["api_keys"] else ""
        if spec["kind"] == "code-assist" and not spec["models"]:
            spec["models"] = list(CODE_ASSIST_MODELS)
        if spec["kind"] != "echo":
            spec["base_url"] = spec["base_url"] or DEFAULT_BASE_URLS[spec["kind"]]
            parsed = urllib.parse.urlsplit(spec["base_url"])
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ConfigError("upstreams.%s.base_url: %r is not an http(s) URL"
                                  % (name, display_url(spec["base_url"])))
    if config.upstreams and len(config.disabled) == len(config.upstreams):
        raise ConfigError("no upstream can be used: " + "; ".join(
            "%s: %s" % item for item in config.disabled.items()))


def _resolve_routes(config: Config) -> None:
    """Routes with no upstream of their own (model_mapping, the catch-all) go to the
    default upstream; every upstream a route names must exist."""
    if not config.default_upstream:
        config.default_upstream = next(iter(config.upstreams))
    elif config.default_upstream not in config.upstreams:
        raise ConfigError("default_upstream: no upstream named %r%s" % (
            config.default_upstream, _did_you_mean(config.default_upstream, config.upstreams)))
    for i, route in enumerate(config.routes):
        route.upstream = route.upstream or config.default_upstream
        for where, name in [("upstream", route.upstream)] + [
                ("fallbacks[%d]" % j, up) for j, (up, _) in enumerate(route.fallbacks)]:
            if name not in config.upstreams:
                raise ConfigError("routes[%d].%s: no upstream named %r%s" % (
                    i, where, name, _did_you_mean(name, config.upstreams)))


def _client_key(raw: Any, path: str) -> ClientKey:
    """One entry of server.api_keys: a key, or {"key", "name", "models", limits...}."""
    if isinstance(raw, str):
        raw = {"key": raw}
    for field in raw:
        if field != "key" and field not in CLIENT_KEY_FIELDS and not field.startswith("_"):
            raise ConfigError("%s.%s: unknown key%s" % (path, field, _did_you_mean(
                field, ("key",) + CLIENT_KEY_FIELDS)))
    key, name, models = raw.get("key"), raw.get("name"), raw.get("models", [])
    if not isinstance(key, str) or not key.strip():
        raise ConfigError("%s: an empty or blank key would let anyone in; give each entry "
                          "its \"key\"" % path)
    if name is None:
        name = fingerprint(key)
    elif not isinstance(name, str) or not CLIENT_NAME.match(name):
        raise ConfigError("%s.name: %r: expected 1-64 letters, digits or . _ @ + -"
                          % (path, name))
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ConfigError("%s.models: expected a list of model names or globs" % path)
    limits = {}
    for field in CLIENT_KEY_FIELDS[2:]:
        value = raw.get(field, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError("%s.%s: expected a whole number >= 0 (0: no limit), got %r"
                              % (path, field, value))
        limits[field] = value
    return ClientKey(key, name, tuple(models), **limits)


def _resolve_client_keys(config: Config) -> None:
    """server.api_keys as ClientKeys, each key and name once; server["api_keys"] keeps
    only the key strings (what secrets() and authorization compare)."""
    clients: List[ClientKey] = []
    for i, raw in enumerate(config.server["api_keys"]):
        client = _client_key(raw, "server.api_keys[%d]" % i)
        for other in clients:
            if other.key == client.key:
                raise ConfigError("server.api_keys[%d]: the same key is listed twice" % i)
            if other.name == client.name:
                raise ConfigError("server.api_keys[%d].name: %r names another key too"
                                  % (i, client.name))
        clients.append(client)
    config.clients = clients
    config.server["api_keys"] = [c.key for c in clients]
    for i, key in enumerate(config.server["admin_keys"]):
        if not key.strip():
            raise ConfigError("server.admin_keys[%d]: an empty or blank key would let anyone "
                              "in; remove it" % i)
        if key in config.server["api_keys"]:
            raise ConfigError("server.admin_keys[%d]: is also a client key; an admin key "
                              "should be one no client holds" % i)


def _check_safety(config: Config) -> None:
    server = config.server
    if server["port"] > 65535:
        raise ConfigError("server.port: %d is not a TCP port" % server["port"])
    if 0 < server["worker_stall_timeout"] < WORKER_STALL_MINIMUM:
        raise ConfigError("server.worker_stall_timeout: %g is too short: a worker's loop "
                          "says it is alive every %g s (0: never, else at least %g)" % (
                              server["worker_stall_timeout"], WORKER_HEARTBEAT,
                              WORKER_STALL_MINIMUM))
    if not is_loopback_host(server["host"]) and not server["api_keys"] \
            and not server["allow_public"]:
        raise ConfigError(
            "refusing to listen on %s with no client keys: anyone who can reach that address "
            "could use your upstream credit. Set server.api_keys (or GEMINI_PROXY_API_KEYS, or "
            "--api-key), or pass --allow-public if something else guards the port."
            % server["host"])


# -- state.redis_url -----------------------------------------------------------------------------

def redacted_url(url: str) -> str:
    """A store's URL fit for logs and messages: everything between "://" and the last "@"
    (the user and password, or a lone part that may be a password) and any password=
    query value replaced by ***. Over-redacting an odd URL is fine; leaking is not."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        rest = (user + ":***" if colon and "/" not in user else "***") + "@" + rest
    return re.sub(r"(?i)([?&](?:password|pass|pwd)=)[^&#]*", r"\1***", scheme + sep + rest)


@dataclasses.dataclass
class StateAddress:
    path: str = ""          # a Unix socket, or else host and port
    host: str = ""
    port: int = 6379
    tls: bool = False
    user: str = ""
    password: str = dataclasses.field(default="", repr=False)
    db: int = 0


def parse_state_url(url: str) -> StateAddress:
    """redis://[[user]:password@]host[:port][/db], rediss://... (TLS, the system's CAs),
    unix://[[user]:password@]/path/to/socket[?db=N]. Errors name the URL redacted."""
    shown = redacted_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    except ValueError:
        raise ValueError("%s is not a URL" % shown) from None
    if parts.scheme not in ("redis", "rediss", "unix") or set(query) - {"db"}:
        raise ValueError("%s: a state URL is redis://, rediss:// or unix:// (with at most "
                         "?db=N)" % shown)
    if parts.username and parts.password is None:
        raise ValueError("%s names a user but no password (user:password@)" % shown)
    address = StateAddress(tls=parts.scheme == "rediss",
                           user=urllib.parse.unquote(parts.username or ""),
                           password=urllib.parse.unquote(parts.password or ""))
    db = query.get("db", [""])[-1]
    if parts.scheme == "unix":
        address.path = urllib.parse.unquote(parts.path)
        if parts.hostname or not address.path:
            raise ValueError("%s: a unix URL is unix:///path/to/socket" % shown)
    else:
        address.host, address.port = parts.hostname or "", port or 6379
        db = db or parts.path.strip("/")
        if not address.host:
            raise ValueError("%s names no host" % shown)
    if db and not db.isdigit():
        raise ValueError("%s: the database is a number" % shown)
    address.db = int(db or 0)
    return address


def _resolve_state(config: Config) -> None:
    url = config.state["redis_url"]
    if url:
        try:
            parse_state_url(url)
        except ValueError as exc:
            raise ConfigError("state.redis_url: %s" % exc) from None


def load_config(args: Optional[argparse.Namespace] = None,
                environ: Optional[Dict[str, str]] = None) -> Config:
    """Build the configuration: file < environment < flags. Raises ConfigError."""
    args = args or argparse.Namespace()
    environ = dict(os.environ if environ is None else environ)
    path, raw = read_config_file(args, environ)
    config = _sections_of(translate_seed_format(raw), path)
    _apply_environment(config, environ)
    _apply_default_upstream(config, args, environ)
    _apply_flags(config, args)
    _resolve_upstreams(config, environ)
    _resolve_routes(config)
    _resolve_client_keys(config)
    _resolve_state(config)
    _check_safety(config)
    return config


def resolve_route(config: Config, model: str) -> Tuple[Route, str]:
    """The route for a client model and the upstream model name: exact names first,
    then globs in the order written, then the catch-all to the default upstream."""
    exact = [r for r in config.routes if not is_glob(r.pattern)]
    globs = [r for r in config.routes if is_glob(r.pattern)]
    for route in itertools.chain(exact, globs):
        if route.matches(model):
            return route, route.upstream_model or model
    raise ClientError("no route for model %r" % model, status=404)


def route_candidates(config: Config, model: str) -> List[Tuple[str, str]]:
    """(upstream, upstream model) to try for a client model: its route's upstream, then
    the route's fallbacks in order (a fallback with no model gets the client's name)."""
    route, upstream_model = resolve_route(config, model)
    return [(route.upstream, upstream_model)] + [
        (upstream, fallback_model or model) for upstream, fallback_model in route.fallbacks]


# ---- 5. HTTP/1.1 wire format (pure) -------------------------------------------------------
#
# Parsing and framing over bytes, no sockets: the server (section 28) feeds these from a
# buffer it owns, so pipelined requests and trailing bytes stay where they belong.

HTTP_TOKEN_CHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"   # a header's name, a method
HTTP_CONTROLS = r"\x00-\x08\x0a-\x1f\x7f"           # never in a header's value (tab is)
HTTP_TOKEN = re.compile(HTTP_TOKEN_CHARS.encode() + rb"+\Z")
HTTP_BAD_VALUE = re.compile(("[%s]" % HTTP_CONTROLS).encode())
HTTP_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
# A well-formed header line of a request head (decoded as latin-1), found all at once: a
# head whose every line is one, as nearly all are, is read in one pass rather than a few
# regular expressions a line (40% less time). Any other is read line by line, for the
# error that says what is wrong.
REQUEST_HEADER_LINE = re.compile(r"\r\n(%s+):([^%s]*)(?=\r\n|\Z)"
                                 % (HTTP_TOKEN_CHARS, HTTP_CONTROLS))
CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\Z")
# A chunk's size line as nearly all are, hex digits alone; and the end of a chunk's data
# followed by such a line (ChunkedDecoder's fast path).
PLAIN_CHUNK_HEAD = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")
PLAIN_CHUNK_BOUNDARY = re.compile(rb"\r\n([0-9A-Fa-f]{1,16})\r\n")
HEX_DIGITS = b"0123456789abcdefABCDEF"
MAX_CHUNK_LINE = 4096      # a chunk-size line with extensions
MAX_TRAILER_BYTES = 16384

HTTP_REASONS = {status.value: status.phrase for status in http.HTTPStatus}
HTTP_REASONS.update({499: "Client Closed Request", 529: "Overloaded"})


@dataclasses.dataclass
class RequestHead:
    method: str
    target: str
    path: str                       # percent-decoded
    query: Dict[str, List[str]]
    version: str                    # "HTTP/1.1" or "HTTP/1.0"
    headers: List[Tuple[str, str]]  # (lowercase name, value) in arrival order

    def header(self, name: str, default: str = "") -> str:
        """A header's value; repeated headers are joined with ", " as RFC 9110 allows."""
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else default

    def query_value(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.header("connection").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def parse_request_head(data: bytes, max_headers: int = 100) -> RequestHead:
    """Parse a request line and headers (without the final blank line). Strict about what
    request smuggling relies on: bare LF or CR, obs-fold, spaces before the colon."""
    if data.count(b"\n") != data.count(b"\r\n") or data.count(b"\r") != data.count(b"\n"):
        raise ClientError("malformed request: bare CR or LF in the request head")
    lines = data.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not HTTP_TOKEN.match(parts[0]) or not HTTP_TARGET.match(parts[1]):
        raise ClientError("malformed request line")
    method, target, version = parts[0].decode("ascii"), parts[1].decode("ascii"), parts[2]
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if re.match(rb"HTTP/\d\.\d\Z", version):
            raise ClientError("HTTP version %s is not supported" % version.decode(), status=505)
        raise ClientError("malformed request line")
    if len(lines) - 1 > max_headers:
        raise ClientError("too many request headers", status=431)
    # Every match starts a line and takes all of it, so as many matches as lines means
    # all are well formed; exact only because a bare CR or LF was refused above.
    found = REQUEST_HEADER_LINE.findall(data.decode("latin-1"), len(lines[0]))
    if len(found) == len(lines) - 1:
        headers = [(name.lower(), value.strip(" \t")) for name, value in found]
    else:
        headers = request_header_lines(lines[1:])
    hosts = sum(1 for name, _ in headers if name == "host")
    if hosts > 1 or (hosts == 0 and version == b"HTTP/1.1"):   # RFC 9112 3.2
        raise ClientError("an HTTP/1.1 request needs exactly one Host header")
    if target.startswith(("http://", "https://")):   # absolute-form, as sent to proxies
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    raw_path, _, raw_query = target.partition("?")
    return RequestHead(method, target,
                       urllib.parse.unquote(raw_path) if "%" in raw_path else raw_path,
                       urllib.parse.parse_qs(raw_query, keep_blank_values=True)
                       if raw_query else {}, version.decode("ascii"), headers)


def request_header_lines(lines: List[bytes]) -> List[Tuple[str, str]]:
    """Header lines one at a time: the error for the first that is not well formed."""
    headers = []
    for line in lines:
        # partition and strip, not a regex: "(.*?)[ \t]*" backtracks quadratically on a
        # value of many spaces, and one such head would stall the event loop for seconds.
        name, colon, value = line.partition(b":")
        if not colon or not HTTP_TOKEN.match(name):
            raise ClientError("malformed header line")
        value = value.strip(b" \t")
        if HTTP_BAD_VALUE.search(value):
            raise ClientError("control character in header %s" % name.decode("ascii"))
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return headers


def request_body_length(head: RequestHead, max_body: int) -> int:
    """Bytes of body that follow the head; -1 for a chunked body. Rejects the shapes
    request smuggling uses (Content-Length with Transfer-Encoding, conflicting lengths)."""
    has_encoding = any(n == "transfer-encoding" for n, _ in head.headers)
    # Only HTTP's own whitespace is stripped: str.strip() would take a NEL (\x85) or a
    # no-break space (\xa0) for it too, and read "chunked\xa0" as chunked, where a proxy
    # in front may not.
    encodings = [t.strip(" \t").lower() for t in head.header("transfer-encoding").split(",")]
    lengths = {v.strip(" \t") for n, v in head.headers if n == "content-length"}
    if has_encoding:
        if lengths:
            raise ClientError("Content-Length and Transfer-Encoding together are not allowed")
        if head.version == "HTTP/1.0":
            raise ClientError("Transfer-Encoding is not allowed in HTTP/1.0")
        if encodings[-1] != "chunked":   # the body's end would be unknowable (RFC 9112 6.3)
            raise ClientError("Transfer-Encoding %r does not end in chunked"
                              % head.header("transfer-encoding"))
        if encodings != ["chunked"]:
            raise ClientError("Transfer-Encoding %s is not supported"
                              % head.header("transfer-encoding"), status=501)
        return -1
    if not lengths:
        return 0
    if len(lengths) > 1 or any("," in v for v in lengths):
        raise ClientError("conflicting Content-Length headers")
    text = lengths.pop()
    if not re.match(r"[0-9]{1,18}\Z", text):
        raise ClientError("invalid Content-Length %r" % text)
    if int(text) > max_body:
        raise ClientError("request body of %s bytes is over the limit of %d" % (text, max_body),
                          status=413)
    return int(text)


class ChunkedDecoder:
    """Incremental chunked transfer decoding. feed() consumes what it can from the
    caller's buffer and leaves the rest (the next pipelined request) in place."""

    def __init__(self, max_body: int):
        self.max_body = max_body
        self.size = 0
        self.done = False
        self._remaining = 0       # bytes left in the current chunk's data
        self._state = "size"      # size | data | data_end | trailer
        self._trailer_bytes = 0
        # _whole_chunks is tried until a chunk it splits is not what it says (an
        # extension, data that looks like framing): a body made of such would otherwise
        # be split, and thrown away, a read at a time.
        self._fast = True

    @property
    def last_chunk_seen(self) -> bool:
        """The zero-size chunk has come: only the trailer is left."""
        return self._state == "trailer"

    def feed(self, buf: bytearray) -> List[bytes]:
        pieces: List[bytes] = []
        fast = self._fast   # once a call, so that its cost is linear in what it is given
        while not self.done:
            if fast and self._state == "size":
                fast = False
                self._whole_chunks(buf, pieces)
                continue
            if self._state == "data":
                if not buf:
                    break
                piece = bytes(buf[:self._remaining])
                del buf[:len(piece)]
                pieces.append(piece)
                self._remaining -= len(piece)
                if self._remaining == 0:
                    self._state = "data_end"
                continue
            end = buf.find(b"\r\n")
            if end < 0 and len(buf) <= MAX_CHUNK_LINE:
                if 10 in buf:   # a line ended by LF alone: no CRLF will come to end it
                    raise ClientError("chunked body: a line ends without its CR")
                break
            if end < 0 or end > MAX_CHUNK_LINE:
                raise ClientError("chunked body: line too long")
            line = bytes(buf[:end])
            del buf[:end + 2]
            if self._state == "data_end":
                if line:
                    raise ClientError("chunked body: data longer than its chunk size")
                self._state = "size"
            elif self._state == "size":
                if 0 < len(line) <= 16 and not line.strip(HEX_DIGITS):   # most size lines
                    self._remaining = int(line, 16)
                else:
                    match = CHUNK_SIZE_LINE.match(line)
                    if not match:
                        raise ClientError("chunked body: bad chunk size line")
                    self._remaining = int(match.group(1), 16)
                self.size += self._remaining
                if self.size > self.max_body:
                    raise ClientError("request body is over the limit of %d bytes"
                                      % self.max_body, status=413)
                self._state = "data" if self._remaining else "trailer"
                size = self._remaining
                if size and buf[size:size + 2] == b"\r\n":   # the whole chunk is here
                    pieces.append(bytes(buf[:size]))
                    del buf[:size + 2]
                    self._remaining, self._state = 0, "size"
            else:  # trailer fields are read and dropped; a blank line ends the body
                self._trailer_bytes += len(line) + 2
                if self._trailer_bytes > MAX_TRAILER_BYTES:
                    raise ClientError("chunked body: trailer too long", status=431)
                if not line:
                    self.done = True
        return pieces

    def _whole_chunks(self, buf: bytearray, pieces: List[bytes]) -> None:
        """From a chunk's start, the common case in one pass: chunks whose size lines
        are hex digits alone, whole in buf. A stream's read holds hundreds of one-event
        chunks, and reading them a line at a time was half the cost of relaying a
        passed-through event (5.4 us a chunk on the machine measured; 1.4 this way).
        buf is split at every CRLF, hex, CRLF: what is between is taken as a chunk's
        data only where its length is the size before it, so data that looks like
        framing is found out (a split in a chunk's data makes it short). It stops at
        anything else (the last chunk, an extension, a chunk not all here, the limit),
        for feed()'s own loop to read as ever, errors included; after a chunk that is
        not what it seems (see _fast), it is not tried again."""
        first = PLAIN_CHUNK_HEAD.match(buf)
        if first is None:
            return
        with memoryview(buf) as view:
            # the first chunk's data, then each next chunk's size and data; the last
            # part is a chunk whose end has not been seen (or no chunk)
            parts = PLAIN_CHUNK_BOUNDARY.split(view[first.end():])
        whole = len(parts) // 2     # chunks with a boundary after them
        if not whole:
            return
        datas = parts[0:2 * whole:2]
        sizes = [int(first.group(1), 16)]
        sizes += map(int, parts[1:2 * whole - 1:2], itertools.repeat(16))
        if list(map(len, datas)) != sizes or 0 in sizes or \
                self.size + sum(sizes) > self.max_body:
            total = self.size
            for taken, size in enumerate(sizes):
                if not size or total + size > self.max_body:   # the end, or too much
                    whole = taken
                    break
                if len(datas[taken]) != size:
                    whole, self._fast = taken, False
                    break
                total += size
            if not whole:
                return
        pieces += datas[:whole]
        self.size += sum(sizes[:whole])
        del buf[:first.end() + sum(map(len, parts[:2 * whole - 1])) + 4 * whole - 2]


def media_type(content_type: str) -> str:
    """A Content-Type's media type, lower case, without its parameters (charset...)."""
    return content_type.split(";")[0].strip().lower()


def looks_like_json(body: bytes) -> bool:
    """Whether a body labelled JSON (its first bytes) is an object or an array, not
    events labelled so."""
    return body.lstrip()[:1] in (b"{", b"[")


def response_head(status: int, headers: List[Tuple[str, str]]) -> bytes:
    lines = ["HTTP/1.1 %d %s" % (status, HTTP_REASONS.get(status, "Unknown"))]
    lines.extend("%s: %s" % (name, value) for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"


def sse_complete_length(data: bytes, start: int = 0) -> int:
    """How many leading bytes of an SSE body hold only whole events (each ends in a blank
    line: a line end, LF or CRLF, then LF or CRLF; lone CRs are made CRLFs first, LineEnds),
    looking for the last end at or after `start` (where an earlier look left off: a long
    event is not searched again and again)."""
    ends = [at + len(mark) for mark in (b"\n\n", b"\n\r\n")
            for at in (data.rfind(mark, start),) if at >= 0]
    return max(ends, default=0)


def sse_data(text: str) -> bytes:
    """One SSE event holding a single-line JSON text (the only form Gemini CLI parses)."""
    return b"data: " + text.encode("utf-8") + b"\n\n"


def sse_event(event: str, text: str) -> bytes:
    return b"event: " + event.encode("ascii") + b"\ndata: " + text.encode("utf-8") + b"\n\n"


LONE_CR = re.compile(rb"\r(?!\n)")


UTF8_BOM = b"\xef\xbb\xbf"


class LineEnds:
    """SSE's three line ends (CRLF, LF and a lone CR) made two: each lone CR becomes a
    CRLF, in a stream read in pieces. Few parsers split lines on a lone CR (this file's
    and many clients' do not), and an event never seen to end holds everything after it;
    nor do all take a mix of LF and CRLF (google-genai's event pattern wants LF LF, CR CR
    or CRLF CRLF), so LF and CRLF streams pass unchanged, even cut between a CR and its
    LF. A CR that ends a piece becomes a CRLF at once (its event is not held for the next
    read): an LF that opens the next piece was its pair and is dropped.
    A byte order mark that opens the stream is dropped, as a reader's UTF-8 decoding
    drops it: before the first line it would make `data` a field no one knows."""

    def __init__(self) -> None:
        self._after_cr = False    # the last piece ended in a CR
        self._opening: Optional[bytes] = b""   # what came while it may be a BOM; None after

    def unify(self, chunk: bytes) -> bytes:
        if self._opening is not None:
            chunk = self._opening + chunk
            if UTF8_BOM.startswith(chunk):   # a piece of one, or nothing yet
                self._opening = chunk
                return b""
            self._opening = None
            if chunk.startswith(UTF8_BOM):
                chunk = chunk[len(UTF8_BOM):]
        if self._after_cr and chunk:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        # (13 is CR: an int is looked for with memchr, many times faster than b"\r")
        if 13 not in chunk:     # LF line ends, as most streams have
            return chunk
        self._after_cr = chunk[-1:] == b"\r"
        return LONE_CR.sub(b"\r\n", chunk)   # (CRLF line ends: the same bytes back)


class SSEParser:
    """Incremental text/event-stream parser for upstream replies. Splits lines on LF,
    CRLF or a lone CR (never on U+2028 and friends; see LineEnds, which also drops an
    opening byte order mark), skips comments, joins multi-line data. A line or an event
    longer than `max_event` bytes is an error (ValueError): an upstream that never ends
    one must not fill memory."""

    def __init__(self, max_event: int = 64 * 1024 * 1024):
        self.max_event = max_event
        self.line_ends = LineEnds()
        self._partial = bytearray()     # a line not yet ended
        self._event = ""
        self._data: List[str] = []
        self._size = 0                  # bytes of the event so far

    def feed(self, chunk: bytes) -> List[Tuple[str, str]]:
        return self.feed_lines(self.line_ends.unify(chunk))

    def feed_lines(self, chunk: bytes) -> List[Tuple[str, str]]:
        """feed() for a piece whose lone CRs this parser's line_ends has made CRLFs
        already (a passed-through stream sends the client that piece too)."""
        if 10 not in chunk:     # a long line's piece: no copy of what came (10 is LF)
            self._partial += chunk
            if len(self._partial) + self._size > self.max_event:
                raise ValueError("an event of over %d bytes" % self.max_event)
            return []
        if self._partial:
            self._partial += chunk
            lines = self._partial.split(b"\n")
        else:     # most reads start with a fresh line: no copy into the buffer
            lines = chunk.split(b"\n")
        self._partial = bytearray(lines.pop())
        events = []
        for raw in lines:
            line = raw[:-1] if raw[-1:] == b"\r" else raw
            if not line:
                if self._data:
                    events.append((self._event or "message", "\n".join(self._data)))
                self._event, self._data, self._size = "", [], 0
                continue
            self._size += len(line)
            if self._size > self.max_event:
                raise ValueError("an event of over %d bytes" % self.max_event)
            if line.startswith(b"data: "):   # most lines: no partition needed
                self._data.append(line[6:].decode("utf-8", "replace"))
                continue
            if line.startswith(b":"):
                continue
            field, _, value = line.decode("utf-8", "replace").partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                self._data.append(value)
            elif field == "event":
                self._event = value
        return events

    @property
    def between_events(self) -> bool:
        """Nothing of an event read yet: no line begun, no field of one."""
        return not self._partial and not self._data and not self._event

    def finish(self) -> List[Tuple[str, str]]:
        """Events still pending at end of stream. A last event without its blank line is
        kept; a last line without its newline is a truncated stream and is dropped."""
        self._partial = bytearray()
        pending = [(self._event or "message", "\n".join(self._data))] if self._data else []
        self._event, self._data, self._size = "", [], 0
        return pending


def client_key(head: RequestHead) -> str:
    """The key a client sent, in any of the places the dialects put it."""
    key = head.header("x-goog-api-key") or head.query_value("key") or head.header("x-api-key")
    if key:
        return key
    scheme, _, value = head.header("authorization").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return ""
    return ""


# The upstream's side of the wire: the proxy's own HTTP client (section 16) reads replies
# with these. Lenient where servers differ harmlessly (bare LF line ends, folded header
# lines), strict where a mistake would mix one reply into the next.

MAX_REPLY_HEAD = 65536
MAX_REPLY_HEADERS = 100
REPLY_HEAD_END = re.compile(rb"\r?\n\r?\n")
REPLY_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?\Z")
# A reply head's header lines (decoded as latin-1) when all are well formed, as nearly all
# are: checked, then split, in one pass each (see REQUEST_HEADER_LINE).
WELL_FORMED_REPLY_HEADERS = re.compile(r"(?:%s+:[^%s]*\r?\n)*\r?\n"
                                       % (HTTP_TOKEN_CHARS, HTTP_CONTROLS))
REPLY_HEADER_LINE = re.compile(r"([^:\n]+):([^\r\n]*)\r?\n")
CONTENT_LENGTH = re.compile(r"[0-9]{1,18}\Z")


class BadReply(ValueError):
    """An upstream reply this proxy cannot read (its framing, not its content)."""


@dataclasses.dataclass
class ReplyHead:
    status: int
    headers: List[Tuple[str, str]]   # (lowercase name, value) in arrival order
    keep_alive: bool                 # what the head says; the body's framing may not allow it


def reply_head_length(buf: bytearray, searched: int = 0) -> int:
    """Bytes up to the end of the reply head in buf (its blank line included), 0 while it
    has not all arrived. `searched`: bytes already looked through (a head that trickles
    in is not searched from its start each time)."""
    end = REPLY_HEAD_END.search(buf, max(0, searched - 3))
    return end.end() if end else 0


def parse_reply_head(data: bytes) -> ReplyHead:
    """A reply's head, its blank line included."""
    text = data.decode("latin-1")
    status_end = text.find("\n") + 1 or len(text)
    status = REPLY_STATUS_LINE.match(text[:status_end].rstrip("\r\n").encode("latin-1"))
    if not status:
        raise BadReply("a bad status line")
    if WELL_FORMED_REPLY_HEADERS.fullmatch(text, status_end):
        headers = [(name.lower(), value.strip(" \t"))
                   for name, value in REPLY_HEADER_LINE.findall(text, status_end)]
    else:
        headers = reply_header_lines(text[status_end:].split("\n"))
    if len(headers) > MAX_REPLY_HEADERS:
        raise BadReply("more than %d headers" % MAX_REPLY_HEADERS)
    connection = ",".join(v for k, v in headers if k == "connection").lower()
    keep_alive = "keep-alive" in connection if status.group(1) == b"0" else \
        "close" not in connection
    return ReplyHead(int(status.group(2)), headers, keep_alive)


def reply_header_lines(lines: List[str]) -> List[Tuple[str, str]]:
    """Header lines one at a time: obsolete folded lines, and the first bad line."""
    headers: List[Tuple[str, str]] = []
    for line in lines:
        line = line.rstrip("\r")
        if not line:
            continue
        if line[0] in " \t" and headers:    # an obsolete folded line continues the last
            name, value = headers[-1]
            headers[-1] = (name, (value + " " + line.strip(" \t")).strip(" \t"))
            continue
        name, colon, value = line.partition(":")
        # A bare CR or another control character in a value could end a line of the
        # head this proxy writes to its client with it.
        if not colon or not HTTP_TOKEN.match(name.encode("latin-1")) or \
                HTTP_BAD_VALUE.search(value.encode("latin-1")):
            raise BadReply("a bad header line")
        headers.append((name.lower(), value.strip(" \t")))
    return headers


class ReplyBody:
    """Where a reply's body ends: its chunked framing, its Content-Length, or (neither)
    the end of the connection. feed() takes what it can from the caller's buffer; what
    is left after the end is not the body's."""

    def __init__(self, head: ReplyHead, method: str):
        self._chunks: Optional[ChunkedDecoder] = None
        self._left = -1            # bytes still to come under Content-Length; -1: none
        self.to_close = False      # the body ends where the connection does
        self.reusable = True       # False: framed two ways, so not to be trusted again
        encodings = ",".join(v for k, v in head.headers if k == "transfer-encoding")
        # Only HTTP's whitespace, as in a request's framing (request_body_length).
        lengths = {v.strip(" \t") for k, value in head.headers if k == "content-length"
                   for v in value.split(",")}
        if method == "HEAD" or head.status in (204, 304) or head.status < 200:
            self._left = 0
        elif encodings:   # (Content-Length as well: ignored, as RFC 9112 says)
            if encodings.strip(" \t").lower() != "chunked":
                raise BadReply("a body framed by a transfer coding other than chunked")
            # 16 hex digits at most: no size line goes over, and the reply's limits are
            # its reader's (max_reply_bytes)
            self._chunks = ChunkedDecoder(1 << 64)
            self.reusable = not lengths
        elif lengths:
            if len(lengths) > 1 or not all(CONTENT_LENGTH.match(v) for v in lengths):
                raise BadReply("a bad Content-Length")
            self._left = int(lengths.pop())
        else:
            self.to_close = True
        self.done = self._left == 0

    def feed(self, buf: bytearray) -> bytes:
        """The body bytes in buf (taken from it), decoded; b"" when there are none yet."""
        if self.done or not buf:
            return b""
        if self._chunks is not None:
            try:
                pieces = self._chunks.feed(buf)
            except ClientError as exc:
                raise BadReply(exc.message) from None
            self.done = self._chunks.done
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if self.to_close:
            data = bytes(buf)
            buf.clear()
            return data
        data = bytes(buf[:self._left])
        del buf[:len(data)]
        self._left -= len(data)
        self.done = self._left == 0
        return data

    def end_of_connection(self) -> None:
        """The upstream closed the connection: the end of a body framed by it (or of a
        chunked one whose last chunk came, its trailer's blank line not), or a reply cut
        short."""
        if self.to_close or self._chunks is not None and self._chunks.last_chunk_seen:
            self.done = True
        elif not self.done:
            raise BadReply("the reply ended before its body did")


# ---- 6. Neutral chat model -------------------------------------------------------------
#
# Every dialect decodes into these and encodes from them, so stop reasons, ids, usage and
# reasoning are decided once. A stream is a sequence of Part deltas (text, thinking, whole
# tool calls, media), each choice's ending in one Finish; events carry the index of their
# choice (n > 1 asks for several), and the stream is over when its iterator ends. Parts
# carry `extra` for fields a dialect wants back unchanged.
#
# A stream the event loop reads (UpstreamRelay) never waits for its upstream: where a
# read would wait, its source yields IDLE instead, and every stage of a conversion, from
# the upstream's events to the client's bytes, yields it on at once, unchanged, and goes
# on where it was when pulled again. A stream read in a worker thread carries it only
# where its request may let go of the thread (UpstreamResponse.parks: up to its first
# events, or to its end for a whole reply made from it); the steps that read it then
# wait for the upstream's bytes (next_event).


class _Idle:
    def __repr__(self) -> str:
        return "IDLE"


IDLE: Any = _Idle()

TEXT, THINKING, MEDIA, TOOL_CALL, TOOL_RESULT = \
    "text", "thinking", "media", "tool_call", "tool_result"

# Neutral stop reasons; each dialect maps these in its own table.
STOP, LENGTH, TOOL_CALLS, CONTENT_FILTER, MALFORMED_TOOL_CALL = \
    "stop", "length", "tool_calls", "content_filter", "malformed_tool_call"


@dataclasses.dataclass
class Part:
    type: str
    text: str = ""                            # TEXT, THINKING
    mime: str = ""                            # MEDIA
    data: str = ""                            # MEDIA inline, base64
    url: str = ""                             # MEDIA by reference
    id: str = ""                              # TOOL_CALL, TOOL_RESULT
    name: str = ""                            # TOOL_CALL, TOOL_RESULT
    args: Optional[Dict[str, Any]] = None     # TOOL_CALL
    content: Optional[List["Part"]] = None    # TOOL_RESULT: text and media parts
    is_error: bool = False                    # TOOL_RESULT
    signature: str = ""                       # opaque reasoning signature
    origin: str = ""                          # provider family that issued it
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
    choice: int = 0                           # in a stream: the choice it belongs to


@dataclasses.dataclass
class Message:
    role: str                                 # "user" | "assistant"
    parts: List[Part]


@dataclasses.dataclass
class Tool:
    name: str
    description: str = ""
    schema: Dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"type": "object", "properties": {}})  # JSON Schema


@dataclasses.dataclass
class Thinking:
    budget: Optional[int] = None              # tokens; 0 = off, -1 = the model decides
    effort: str = ""                          # none | minimal | low | medium | high | xhigh | max
    include_thoughts: bool = False            # return thought text to the client


@dataclasses.dataclass
class ResponseFormat:
    """JSON output was asked for; `schema` (JSON Schema) when the client gave one."""

    schema: Optional[Dict[str, Any]] = None
    name: str = "response"


@dataclasses.dataclass
class Chat:
    model: str = ""
    messages: List[Message] = dataclasses.field(default_factory=list)
    system: List[Part] = dataclasses.field(default_factory=list)   # TEXT parts
    tools: List[Tool] = dataclasses.field(default_factory=list)
    tool_choice: str = "auto"                 # auto | none | required
    allowed_tools: List[str] = dataclasses.field(default_factory=list)  # with "required"
    parallel_tool_calls: Optional[bool] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    stop: List[str] = dataclasses.field(default_factory=list)
    n: int = 1
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    seed: Optional[int] = None
    thinking: Optional[Thinking] = None
    response_format: Optional[ResponseFormat] = None
    stream: bool = False
    user: str = ""
    # What the client asked for that only its own dialect can express (Gemini built-in
    # tools, safety settings); kept for a same-dialect upstream, listed in the debug log.
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Usage:
    input_tokens: int = 0                     # the whole prompt, cached part included
    output_tokens: int = 0                    # everything generated, reasoning included
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False                   # we counted (all, or the prompt: see below)
    # The upstream counted the output but not the prompt: input_tokens is no count until
    # the reply's end fills it in (with_prompt_estimate).
    input_missing: bool = False


@dataclasses.dataclass
class Finish:
    """The end of one choice of a stream or a reply. Usage is the whole request's."""

    reason: str = STOP
    usage: Optional[Usage] = None
    stop_sequence: str = ""
    choice: int = 0
    # A MALFORMED_TOOL_CALL's own name upstream (Gemini's MALFORMED_FUNCTION_CALL,
    # UNEXPECTED_TOOL_CALL, ...): what the client's error says, and a Gemini client is told.
    detail: str = ""


@dataclasses.dataclass
class Choice:
    parts: List[Part]
    finish: Finish


@dataclasses.dataclass
class Reply:
    id: str
    model: str
    choices: List[Choice]
    usage: Optional[Usage]                    # None: the upstream reported none
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))


EFFORT_BUDGETS = {"none": 0, "minimal": 512, "low": 2048, "medium": 8192, "high": 24576,
                  "xhigh": 32768, "max": 32768}


def thinking_effort(thinking: Thinking) -> str:
    """The effort word for a thinking setting given as a budget, or as a word already."""
    if thinking.effort:
        return thinking.effort
    if thinking.budget is None or thinking.budget < 0:
        return ""
    for effort in ("none", "low", "medium"):
        if thinking.budget <= EFFORT_BUDGETS[effort]:
            return effort
    return "high"


def offered_tools(chat: Chat) -> List[Tool]:
    """The tools a request offers the model: when it must call one of some, just those
    (for upstreams that cannot name a set of allowed tools)."""
    if chat.tool_choice == "required" and chat.allowed_tools:
        return [t for t in chat.tools if t.name in chat.allowed_tools] or chat.tools
    return chat.tools


def tool_result_text(part: Part) -> str:
    return "".join(p.text for p in part.content or () if p.type == TEXT)


def message_text(message: Message) -> str:
    return "".join(p.text for p in message.parts if p.type == TEXT)


def make_tool_ids_unique(messages: List[Message]) -> None:
    """Rename a tool-call id that an earlier turn already used (Moonshot rejects repeats),
    and its results with it. Ids are otherwise kept exactly as the backend issued them."""
    seen = set()
    renamed: Dict[str, str] = {}
    for message in messages:
        if message.role == "assistant":
            renamed = {}
            for part in message.parts:
                if part.type == TOOL_CALL:
                    if part.id in seen:
                        new = "%s_%d" % (part.id, len(seen))
                        renamed[part.id], part.id = new, new
                    seen.add(part.id)
        else:
            for part in message.parts:
                if part.type == TOOL_RESULT and part.id in renamed:
                    part.id = renamed[part.id]


def order_tool_results(messages: List[Message]) -> None:
    """Put each turn's tool results in the order of the calls they answer (Claude Code
    sends them in the order the tools finished; Gemini pairs them by position)."""
    order: Dict[str, int] = {}
    for message in messages:
        if message.role == "assistant":
            order = {p.id: i for i, p in enumerate(p for p in message.parts
                                                   if p.type == TOOL_CALL)}
        elif any(p.type == TOOL_RESULT for p in message.parts):
            results = sorted((p for p in message.parts if p.type == TOOL_RESULT),
                             key=lambda p: order.get(p.id, len(order)))
            others = iter(results)
            message.parts = [next(others) if p.type == TOOL_RESULT else p
                             for p in message.parts]


def fit_tool_id(tool_id: str, limit: int) -> str:
    """A tool id within a length limit: long ids keep a prefix and gain a hash of the
    whole, so the call and its result still match and distinct ids stay distinct."""
    if len(tool_id) <= limit:
        return tool_id
    digest = hashlib.sha256(tool_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return tool_id[:limit - 13] + "_" + digest


def _continues(last: Optional[Part], delta: Part) -> bool:
    """Whether a stream delta joins the part before it: adjacent text joins; thinking
    joins until a signature closes its block (a signature-only delta closes the open
    block)."""
    if last is None or delta.type != last.type:
        return False
    return delta.type == TEXT or (delta.type == THINKING and not last.signature and
                                  not last.extra and not delta.extra)


def append_delta(parts: List[Part], delta: Part) -> None:
    """Add a stream delta to assembled parts (for a few; merge_deltas for a stream)."""
    last = parts[-1] if parts else None
    if _continues(last, delta):
        assert last is not None
        last.text += delta.text
        if delta.type == THINKING:
            last.signature, last.origin = delta.signature, delta.origin or last.origin
    elif delta.type != TEXT or delta.text:
        parts.append(copy.copy(delta))   # a copy: later deltas are joined into it


def merge_deltas(deltas: Iterable[Part]) -> List[Part]:
    """The parts a stream's deltas make, as append_delta would join them, in linear time:
    a long run is joined once, not copied again at every delta (80,000 reasoning deltas
    took minutes)."""
    parts: List[Part] = []
    pieces: List[str] = []      # the texts of parts[-1]
    for delta in deltas:
        last = parts[-1] if parts else None
        if _continues(last, delta):
            assert last is not None
            pieces.append(delta.text)
            if delta.type == THINKING:
                last.signature, last.origin = delta.signature, delta.origin or last.origin
        elif delta.type != TEXT or delta.text:
            if pieces:
                parts[-1].text = "".join(pieces)
            parts.append(copy.copy(delta))
            pieces = [delta.text]
    if pieces:
        parts[-1].text = "".join(pieces)
    return parts


@dataclasses.dataclass
class ReplyOptions:
    """How a client asked for its reply to be shaped, beyond the reply itself: every
    client-side encoder takes (reply or events, model, response id, these)."""

    include_thoughts: bool = False  # Gemini: thinkingConfig.includeThoughts
    include_usage: bool = False     # OpenAI: stream_options.include_usage
    sse: bool = True                # Gemini: ?alt=sse; without it the JSON-array form
    reasoning_cache: Optional["ReasoningCache"] = None   # OpenAI: None is the process's
    responses: Optional["ResponsesTurn"] = None  # Responses: the request's turn (section 11)


def collect_reply(events: Iterable[Any], reply_id: str, model: str) -> Reply:
    """Assemble a stream of events into a reply, a choice for each index seen."""
    deltas: Dict[int, List[Part]] = {}
    finishes: Dict[int, Finish] = {}
    for event in events:
        if isinstance(event, Finish):
            finishes[event.choice] = event
        else:
            deltas.setdefault(event.choice, []).append(event)
    indexes = sorted(set(deltas) | set(finishes)) or [0]
    usage = next((f.usage for f in reversed(list(finishes.values())) if f.usage), None)
    return Reply(reply_id, model, [Choice(merge_deltas(deltas.get(i, [])),
                                          finishes.get(i, Finish())) for i in indexes], usage)


def reply_events(reply: Reply) -> Iterator[Any]:
    """A whole reply as the events of a stream, to serve a streaming client from an
    upstream asked for a whole reply."""
    for index, choice in enumerate(reply.choices):
        for part in choice.parts:
            yield dataclasses.replace(part, choice=index)
    for index, choice in enumerate(reply.choices):
        yield dataclasses.replace(choice.finish, usage=reply.usage or choice.finish.usage,
                                  choice=index)


def _stop_prefix_length(text: str, stops: List[str]) -> int:
    """How much of the end of `text` could be the start of a stop string."""
    for length in range(min(len(text), max(map(len, stops)) - 1), 0, -1):
        if any(stop.startswith(text[-length:]) for stop in stops):
            return length
    return 0


def cut_at_stop_strings(events: Iterable[Any], stops: List[str], choices: int = 1,
                        on_cut: Callable[[], None] = lambda: None) -> Iterator[Any]:
    """Pass events on until one of `stops` appears in a choice's generated text; end that
    choice there with a normal finish that names it (and no usage: the caller counts).
    Once every one of the `choices` has ended and one was cut, call on_cut (which hangs
    up on the upstream) and stop. The end of a text delta that might begin a stop string
    waits for the next delta of its choice to decide."""
    stops = [stop for stop in stops if stop]
    if not stops:
        yield from events
        return
    held: Dict[int, str] = {}
    ended: Dict[int, bool] = {}    # choice -> whether it was cut
    for event in events:
        if event is IDLE:
            yield event
            continue
        index = event.choice
        if index in ended:
            continue     # a choice already cut: what it still generates is dropped
        if not isinstance(event, Finish) and event.type != TEXT:
            if held.get(index):
                yield Part(TEXT, text=held.pop(index), choice=index)
            yield event
            continue
        if isinstance(event, Finish):
            finish = event
            if held.get(index):
                yield Part(TEXT, text=held.pop(index), choice=index)
        else:
            text = held.pop(index, "") + event.text
            found = [(text.find(stop), stop) for stop in stops if stop in text]
            if not found:
                keep = _stop_prefix_length(text, stops)
                if keep:
                    held[index] = text[len(text) - keep:]
                if len(text) > keep:
                    yield dataclasses.replace(event, text=text[:len(text) - keep])
                continue
            at, stop = min(found)
            if at:
                yield dataclasses.replace(event, text=text[:at])
            finish = Finish(STOP, stop_sequence=stop, choice=index)
        ended[index] = finish is not event
        if len(ended) >= choices and any(ended.values()):
            on_cut()     # before the last finish: a client's encoder may stop there
            yield finish
            return
        yield finish
    for index, text in held.items():
        yield Part(TEXT, text=text, choice=index)


def cut_reply(reply: Reply, stops: List[str]) -> Reply:
    """A whole reply cut at the first stop string of each choice. The upstream's usage
    stays: it is what was generated (and billed)."""
    for choice in reply.choices:
        events = list(cut_at_stop_strings(itertools.chain(choice.parts, [choice.finish]), stops))
        if events and isinstance(events[-1], Finish) and events[-1] is not choice.finish:
            choice.finish = dataclasses.replace(events[-1], usage=choice.finish.usage)
        choice.parts = []
        for event in events:
            if not isinstance(event, Finish):
                append_delta(choice.parts, event)
    return reply


class ThinkTagSplitter:
    """Reasoning that some servers put inside the answer text between <think> and
    </think> (DeepSeek-R1 distills, QwQ, many Ollama and vLLM models), taken out as
    thinking, for one choice fed delta by delta. Only a block that opens before any answer
    text counts (a tag later on is the answer's own text), and a tag may be split across
    deltas: text that could be the start of one waits for the next delta."""

    def __init__(self, tags: List[str], choice: int = 0):
        self.opens = ["<%s>" % tag for tag in tags]
        self.close = ""
        self.state = "start"        # start | thinking | after (</think> seen) | answer
        self.held = ""
        self.choice = choice

    def _part(self, kind: str, text: str) -> List[Part]:
        if not text:
            return []
        return [Part(kind, text=text, choice=self.choice,
                     origin="openai" if kind == THINKING else "")]

    def feed(self, text: str) -> List[Part]:
        if self.state == "answer":
            return self._part(TEXT, text)
        text, self.held = self.held + text, ""
        out: List[Part] = []
        while text:
            if self.state == "start":
                stripped = text.lstrip()
                tag = next((t for t in self.opens if stripped.startswith(t)), None)
                if tag is not None:
                    self.state, self.close = "thinking", "</" + tag[1:]
                    text = stripped[len(tag):]
                elif not stripped or any(t.startswith(stripped) for t in self.opens):
                    self.held = text          # whitespace, or the start of a tag
                    return out
                else:
                    self.state = "answer"
            elif self.state == "thinking":
                at = text.find(self.close)
                if at >= 0:
                    out += self._part(THINKING, text[:at])
                    self.state, text = "after", text[at + len(self.close):]
                    continue
                keep = next((n for n in range(min(len(text), len(self.close) - 1), 0, -1)
                             if self.close.startswith(text[-n:])), 0)
                out += self._part(THINKING, text[:len(text) - keep])
                self.held = text[len(text) - keep:]
                return out
            elif self.state == "after":      # the blank lines between reasoning and answer
                text = text.lstrip()
                if text:
                    self.state = "answer"
            else:
                out += self._part(TEXT, text)
                text = ""
        return out

    def finish(self) -> List[Part]:
        """What is still held when the choice ends: an unclosed block stays thinking."""
        held, self.held = self.held, ""
        return self._part(THINKING if self.state == "thinking" else TEXT,
                          held if self.state != "after" else "")


def split_think_tags(events: Iterable[Any], tags: List[str]) -> Iterator[Any]:
    """Events with <think> blocks in their text taken out as thinking (ThinkTagSplitter),
    for each choice."""
    if not tags:
        yield from events
        return
    splitters: Dict[int, ThinkTagSplitter] = {}
    for event in events:
        if event is IDLE:
            yield event
            continue
        splitter = splitters.get(event.choice)
        if splitter is None:
            splitter = splitters[event.choice] = ThinkTagSplitter(tags, event.choice)
        if splitter.state == "answer":    # most of a reply: nothing held, nothing to look for
            yield event
            continue
        if not isinstance(event, Finish) and event.type == TEXT:
            yield from splitter.feed(event.text)
            continue
        if isinstance(event, Finish) or splitter.state != "answer":
            yield from splitter.finish()
            splitter.state = "answer"     # after a tool call or the end: no more tags
        yield event


def split_reply_think_tags(reply: Reply, tags: List[str]) -> Reply:
    """A whole reply's <think> blocks taken out as thinking, choice by choice."""
    for choice in reply.choices:
        if not _may_open_think_block(choice.parts):
            continue     # as most replies: left as they are, not taken apart and rejoined
        parts: List[Part] = []
        for event in split_think_tags(itertools.chain(choice.parts, [choice.finish]), tags):
            if not isinstance(event, Finish):
                append_delta(parts, event)
        choice.parts = parts
    return reply


def _may_open_think_block(parts: List[Part]) -> bool:
    """Whether a choice's parts begin with text that may open a <think> block (see
    ThinkTagSplitter: only text before anything else can)."""
    for part in parts:
        if part.type != TEXT:
            return False
        text = part.text.lstrip()
        if text:
            return text.startswith("<")
    return False


def chat_prompt_text(chat: Chat) -> str:
    """All the text a prompt carries, for estimating its tokens."""
    pieces = [p.text for p in chat.system]
    for message in chat.messages:
        for part in message.parts:
            if part.type in (TEXT, THINKING):
                pieces.append(part.text)
            elif part.type == TOOL_CALL:
                pieces.append(part.name + json.dumps(part.args or {}))
            elif part.type == TOOL_RESULT:
                pieces.append(tool_result_text(part))
    pieces.extend(t.name + t.description + json.dumps(t.schema) for t in chat.tools)
    return "\n".join(pieces)


def chat_image_count(chat: Chat) -> int:
    count = 0
    for message in chat.messages:
        for part in message.parts:
            count += part.type == MEDIA
            if part.type == TOOL_RESULT:
                count += sum(p.type == MEDIA for p in part.content or ())
    return count


def estimate_prompt_tokens(chat: Chat) -> int:
    return estimate_tokens(chat_prompt_text(chat)) + IMAGE_TOKEN_ESTIMATE * chat_image_count(chat)


def estimate_usage(chat: Chat, parts: Iterable[Part]) -> Usage:
    """Token counts when an upstream reports none (marked estimated in the logs)."""
    tally = OutputTally()
    for part in parts:
        tally.add(part)
    return tally.usage(estimate_prompt_tokens(chat))


class OutputTally:
    """The estimated tokens of a reply's parts, counted as they go by: a stream of an
    hour holds two numbers, not every delta it has passed on."""

    def __init__(self) -> None:
        self.output = self.reasoning = 0

    def add(self, part: Part) -> None:
        if part.type == TOOL_CALL:
            self.output += estimate_tokens(part.name + json.dumps(part.args or {}))
        elif part.type == THINKING:
            self.reasoning += estimate_tokens(part.text)
        else:
            self.output += estimate_tokens(part.text)

    def usage(self, prompt_tokens: int) -> Usage:
        return Usage(prompt_tokens, self.output + self.reasoning,
                     reasoning_tokens=self.reasoning, estimated=True)


def broken_off_usage(usage: Optional[Usage], output: int, reasoning: int,
                     prompt_tokens: Callable[[], int]) -> Optional[Usage]:
    """What a stream broken off spent: the usage the upstream had reported (its prompt
    estimated where it counted none), its output at least `output` (of which `reasoning`),
    the estimate of what went by; None when nothing was reported nor went by."""
    if usage is None:
        return Usage(prompt_tokens(), output, reasoning_tokens=reasoning,
                     estimated=True) if output else None
    usage = with_prompt_estimate(usage, prompt_tokens)
    if output > usage.output_tokens:   # (Anthropic's opening count is 1)
        usage = dataclasses.replace(usage, output_tokens=output, estimated=True,
                                    reasoning_tokens=max(reasoning, usage.reasoning_tokens))
    return usage


def later_usage(usage: Optional[Usage], previous: Optional[Usage]) -> Optional[Usage]:
    """A stream's usage as its events bring more: the latest, but with the prompt's count
    an earlier one gave when the latest counts the output alone."""
    if usage is None:
        return previous
    if usage.input_missing and previous is not None and not previous.input_missing:
        return dataclasses.replace(
            usage, input_tokens=previous.input_tokens, input_missing=False,
            cached_tokens=usage.cached_tokens or previous.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens or previous.cache_write_tokens)
    return usage


def with_prompt_estimate(usage: Usage, prompt_tokens: Callable[[], int]) -> Usage:
    """`usage` as the reply's end records it: an upstream that counted the output alone
    gets the prompt's estimate (and the mark of an estimate), not a prompt of no tokens."""
    if not usage.input_missing:
        return usage
    return dataclasses.replace(usage, input_tokens=prompt_tokens(), estimated=True,
                               input_missing=False)


def merge_consecutive_turns(messages: List[Message]) -> List[Message]:
    """One message per turn: dialects that want strict user/assistant alternation (many
    chat templates, Anthropic) get it, and nothing is lost."""
    merged: List[Message] = []
    for message in messages:
        if merged and merged[-1].role == message.role:
            merged[-1] = Message(message.role, merged[-1].parts + message.parts)
        else:
            merged.append(Message(message.role, list(message.parts)))
    return merged


def thinking_budget(thinking: Thinking, default: int = EFFORT_BUDGETS["medium"]) -> int:
    """Tokens for a thinking setting given as an effort word, or as a budget already
    (-1, "the model decides", becomes `default`)."""
    if thinking.budget is not None:
        return default if thinking.budget < 0 else thinking.budget
    return EFFORT_BUDGETS.get(thinking.effort, default) if thinking.effort else default


def pack_thinking(blocks: List[Part], with_text: bool = True) -> str:
    """Reasoning a client cannot carry in its own terms, packed as an opaque signature it
    keeps and sends back: in a Gemini client's thoughtSignature (Gemini CLI drops thought
    parts from its history but keeps signatures), or an Anthropic client's thinking block
    signature (whose text comes back beside it, so with_text=False leaves it out). It is
    canonical standard base64: google-genai holds signatures as bytes."""
    items = [{k: v for k, v in (("t", b.text if with_text else ""), ("s", b.signature),
                                ("o", b.origin), ("r", b.extra.get("redacted", ""))) if v}
             for b in blocks]
    return base64.b64encode(CARRIER_MAGIC + zlib.compress(json_bytes(items))).decode("ascii")


CARRIER_START = base64.b64encode(CARRIER_MAGIC[:3]).decode("ascii")

# The most a carrier may hold once inflated (reasoning of a long turn is well under this),
# and all the carriers of one request together: a request full of small carriers that
# inflate to the limit must not cost gigabytes.
MAX_CARRIER_BYTES = 16 * MiB
MAX_CARRIER_BYTES_PER_REQUEST = 64 * MiB

# What the carriers of the request a worker thread is decoding may still inflate to (a
# one-item list, so unpack_thinking can spend it), the request's own, set by the thread
# for each part of the request it runs; unset: no budget beyond MAX_CARRIER_BYTES (the
# converters used as a library).
CARRIER_BUDGET: "contextvars.ContextVar[Optional[List[int]]]" = contextvars.ContextVar(
    "carrier_budget", default=None)


# The JSON fields a carrier comes back in, holding one (see Request.holds_packed_thinking).
PACKED_SIGNATURE_FIELD = re.compile(
    rb'"(?:signature|thoughtSignature|thought_signature|encrypted_content)"\s*:\s*"' +
    re.escape(CARRIER_START.encode("ascii")))


def is_carrier(signature: str) -> bool:
    """Whether a signature may be one of pack_thinking's (in either base64 alphabet)."""
    return signature.startswith(CARRIER_START)


def unpack_thinking(signature: str) -> List[Part]:
    """The reasoning blocks a carrier signature holds, whether it comes back in standard
    or URL-safe base64, padded or not; [] for anything else."""
    if not is_carrier(signature):
        return []
    try:
        data = b64_decode_any(signature)
        if not data.startswith(CARRIER_MAGIC):
            return []
        inflate = zlib.decompressobj()
        budget = CARRIER_BUDGET.get()
        limit = MAX_CARRIER_BYTES if budget is None else min(MAX_CARRIER_BYTES, budget[0])
        if limit <= 0:      # spent (and 0 would mean no limit to zlib)
            return []
        text = inflate.decompress(data[len(CARRIER_MAGIC):], limit)
        if budget is not None:
            budget[0] -= len(text)
        if inflate.unconsumed_tail:     # a small signature must not inflate without bound
            return []
        items = json.loads(text)
    except (ValueError, TypeError, RecursionError, zlib.error):
        return []
    # A client can send anything back: a carrier holding more than strings is not ours.
    if not isinstance(items, list) or not all(
            isinstance(i, dict) and all(isinstance(v, str) for v in i.values())
            for i in items):
        return []
    return [Part(THINKING, text=i.get("t", ""), signature=i.get("s", ""), origin=i.get("o", ""),
                 extra={"redacted": i["r"]} if i.get("r") else {}) for i in items]


class ReasoningCache:
    """Reasoning state by tool-call id, for clients that drop what they do not know (an
    OpenAI client keeps reasoning text but no signatures). Bounded, with a time to live;
    the carriers above are the stateless path, this is the fallback."""

    def __init__(self, max_entries: int = 4096, ttl: float = 3600.0):
        self._entries: "collections.OrderedDict[str, Tuple[float, List[Part]]]" = \
            collections.OrderedDict()
        self._lock = threading.Lock()
        self.max_entries, self.ttl = max_entries, ttl

    def put(self, key: str, parts: List[Part]) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl, parts)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, key: str) -> List[Part]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] < time.monotonic():
                self._entries.pop(key, None)
                return []
            return [copy.copy(p) for p in entry[1]]


REASONING_CACHE = ReasoningCache()


@dataclasses.dataclass
class EmbedRequest:
    model: str
    texts: List[str]
    dimensions: Optional[int] = None
    task_type: str = ""                       # Gemini's taskType, when a client gave one
    title: str = ""


@dataclasses.dataclass
class EmbedReply:
    vectors: List[List[float]]
    input_tokens: int = 0


def expect(value: Any, kind: Any, where: str, what: str) -> Any:
    """`value` if it has the expected JSON type, else a 400 naming the field."""
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ClientError("%s: expected %s, got %s" % (where, what, clip(json.dumps(value), 100)))
    return value


def expect_text(value: Any, where: str) -> str:
    """An optional string field: "" when absent, else it must be a string."""
    return "" if value is None else expect(value, str, where, "a string")


def expect_strings(value: Any, where: str) -> List[str]:
    """An optional list of strings: [] when absent."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ClientError("%s: expected a list of strings" % where)
    return value


MAX_CHOICES = 128     # n / candidateCount: more is surely a mistake, and costs memory


def check_choices(n: int, where: str) -> int:
    if not 1 <= n <= MAX_CHOICES:
        raise ClientError("%s: %d choices asked for; 1 to %d are possible"
                          % (where, n, MAX_CHOICES))
    return n


def check_model_name(name: str) -> str:
    """A model name a client asked for: printable, without spaces, at most 256
    characters (it becomes part of an upstream URL, quoted)."""
    if not MODEL_NAME.match(name):
        raise ClientError("model: %r is not a model name" % clip(name, 80))
    return name


def reject_unknown(fields: Iterable[str], known: frozenset, message: str) -> None:
    """A 400 for the first field not in `known`; `message` has one %s for its name."""
    for name in fields:
        if name not in known:
            raise ClientError(message % name)


# Upstream replies: the fields that make the answer (its parts, their text, tool calls,
# finish reasons) must have their type, or the reply is the upstream's failure (a 502 via
# reply_object and friends); metadata of the wrong type (ids, usage counts) counts as
# absent. A decoder never raises anything else: that would be a bug of this file.

def _unreadable(value: Any, what: str) -> UpstreamError:
    return UpstreamError("the upstream sent %s where %s belongs" % (
        clip(json.dumps(value), 100), what), status=502)


def reply_object(value: Any, what: str) -> Dict[str, Any]:
    """A field of an upstream reply that must be an object when present ({} when not);
    anything else is the upstream's failure (502), never a quiet empty answer."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _unreadable(value, what)
    return value


def reply_list(value: Any, what: str) -> List[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _unreadable(value, what)
    return value


def embedding_vector(value: Any) -> List[float]:
    if not isinstance(value, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in value):
        raise UpstreamError("the upstream embeddings are not lists of numbers", status=502)
    return value


def reply_text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _unreadable(value, what)
    return value


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else ""


def fields_of(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


def tokens_of(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and 0 < value < 1e15 else 0     # JSON's 1e999 reads as infinity


def stream_event_json(data: str, event_error: Callable[[str], Optional[UpstreamError]] =
                      lambda data: None) -> Any:
    """The JSON of one upstream stream event; an error the upstream put in the stream
    (`event_error` knows its dialect's form) is raised, and so is data that is not JSON."""
    error = event_error(data)
    if error is not None:
        raise error
    try:
        return strict_json(data)
    except (ValueError, RecursionError):
        raise UpstreamError("the upstream sent invalid JSON in its stream: %r" % data[:200],
                            status=502) from None


# ---- 7. Dialect: OpenAI Chat Completions -------------------------------------------------
#
# Client side: /v1/chat/completions, /v1/models, /v1/embeddings as the official SDKs and
# agents such as Qwen Code use them. Upstream side: any OpenAI-compatible server (OpenAI,
# Azure, Kimi, DeepSeek, Zhipu, Ollama, vLLM, llama.cpp); their differences are upstream
# options (section 1).

OPENAI_REQUEST_FIELDS = frozenset((
    "model", "messages", "stream", "stream_options", "max_completion_tokens", "max_tokens",
    "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty", "seed",
    "logprobs", "top_logprobs", "logit_bias", "reasoning_effort", "response_format", "tools",
    "tool_choice", "parallel_tool_calls", "functions", "function_call", "modalities", "audio",
    "prediction", "metadata", "store", "service_tier", "user", "safety_identifier",
    "prompt_cache_key", "prompt_cache_retention", "verbosity", "web_search_options",
    # extensions that OpenAI-compatible servers define and clients send
    "top_k", "min_p", "repetition_penalty", "thinking", "enable_thinking",
    "chat_template_kwargs", "reasoning", "include_reasoning", "extra_body"))
OPENAI_UNKNOWN = "Unrecognized request argument supplied: %s"

OPENAI_STOP_REASONS = {           # finish_reason -> neutral
    "stop": STOP, "length": LENGTH, "tool_calls": TOOL_CALLS, "function_call": TOOL_CALLS,
    "content_filter": CONTENT_FILTER,
}
OPENAI_FINISH_REASONS = {         # neutral -> finish_reason
    STOP: "stop", LENGTH: "length", TOOL_CALLS: "tool_calls", CONTENT_FILTER: "content_filter",
    MALFORMED_TOOL_CALL: "stop",
}
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                      403: "permission_error", 404: "not_found_error",
                      413: "invalid_request_error", 429: "rate_limit_error",
                      503: "overloaded_error", 529: "overloaded_error"}

OPENAI_AUDIO_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav",
                        "audio/mpeg": "mp3", "audio/mp3": "mp3"}

OPENAI_JSON_NOTE = "Reply with a single JSON object and nothing else."


def json_mode_note(fmt: ResponseFormat) -> str:
    """The instruction that asks for JSON in the prompt itself, for upstreams asked for a
    bare JSON object (or for nothing): OpenAI's json_object needs the word in the prompt."""
    if fmt.schema is None:
        return OPENAI_JSON_NOTE
    return OPENAI_JSON_NOTE + " It must match this JSON Schema:\n" + json.dumps(
        fmt.schema, ensure_ascii=False)

DATA_URL = re.compile(r"data:([^;,]*)(;base64)?,(.*)\Z", re.S)


# -- requests: client -> neutral -----------------------------------------------------------

def _openai_text(content: Any, where: str) -> str:
    """A message's content when only text is allowed (system, tool): string or text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    expect(content, list, where, "a string or a list of text parts")
    return "".join(expect_text(p.get("text") if p.get("type") != "refusal" else
                               p.get("refusal", p.get("text")), "%s[%d].text" % (where, j))
                   for j, p in enumerate(content) if isinstance(p, dict)
                   and p.get("type") in ("text", "input_text", "output_text", "refusal"))


def _openai_media_part(part: Dict[str, Any], where: str) -> Part:
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url", "") if isinstance(image, dict) else image
        expect(url, str, where + ".image_url.url", "a URL")
        match = DATA_URL.match(url)
        extra = {"detail": image["detail"]} if isinstance(image, dict) and \
            image.get("detail") else {}
        if match and match.group(2):
            return Part(MEDIA, mime=match.group(1) or "image/png", data=match.group(3),
                        extra=extra)
        return Part(MEDIA, mime="", url=url, extra=extra)
    if kind == "input_audio":
        audio = expect(part.get("input_audio"), dict, where + ".input_audio", "an object")
        mime = {"wav": "audio/wav", "mp3": "audio/mpeg"}.get(
            expect_text(audio.get("format"), where + ".input_audio.format"), "audio/wav")
        return Part(MEDIA, mime=mime, data=expect_text(audio.get("data"),
                                                       where + ".input_audio.data"))
    if kind == "file":
        file = expect(part.get("file"), dict, where + ".file", "an object")
        match = DATA_URL.match(expect_text(file.get("file_data"), where + ".file.file_data"))
        if not match:
            raise ClientError("%s.file: only inline file_data is supported, not file ids"
                              % where)
        filename = expect_text(file.get("filename"), where + ".file.filename")
        extra = {"filename": filename} if filename else {}
        return Part(MEDIA, mime=match.group(1), data=match.group(3), extra=extra)
    raise ClientError("%s.type: unknown content part type %r" % (where, kind))


def _openai_user_parts(content: Any, where: str) -> List[Part]:
    if isinstance(content, str):
        return [Part(TEXT, text=content)]
    parts = []
    for j, part in enumerate(expect(content, list, where, "a string or a list of parts")):
        expect(part, dict, "%s[%d]" % (where, j), "a content part")
        if part.get("type") in ("text", "input_text"):
            parts.append(Part(TEXT, text=expect(part.get("text", ""), str,
                                                "%s[%d].text" % (where, j), "text")))
        else:
            parts.append(_openai_media_part(part, "%s[%d]" % (where, j)))
    return parts


def _openai_assistant_parts(message: Dict[str, Any], where: str,
                            cache: ReasoningCache) -> List[Part]:
    parts: List[Part] = []
    calls = expect(message.get("tool_calls") or [], list, where + ".tool_calls", "a list")
    # What this proxy remembered when it gave out this turn: signed reasoning, and the
    # signatures of its tool calls (see _openai_remember).
    first_id = calls[0].get("id") if calls and isinstance(calls[0], dict) else None
    remembered = cache.get(first_id) if isinstance(first_id, str) else []
    signatures = {p.id: p.signature for p in remembered if p.type == TOOL_CALL}
    thinking = [p for p in remembered if p.type == THINKING]
    if thinking:
        parts.extend(thinking)
    else:
        reasoning = _openai_reasoning(message)
        if reasoning:
            parts.append(Part(THINKING, text=reasoning, origin="openai"))
    text = _openai_text(message.get("content"), where + ".content")
    if text:
        parts.append(Part(TEXT, text=text))
    for k, call in enumerate(calls):
        call_where = "%s.tool_calls[%d]" % (where, k)
        expect(call, dict, call_where, "a tool call")
        part = _openai_function(call.get("function"), call_where + ".function")
        part.id = expect_text(call.get("id"), call_where + ".id") or "call_%d" % k
        extra = expect(call.get("extra_content") or {}, dict, call_where + ".extra_content",
                       "an object")
        google = expect(extra.get("google") or {}, dict, call_where + ".extra_content.google",
                        "an object")
        signature = expect_text(google.get("thought_signature"),
                                call_where + ".extra_content.google.thought_signature") or \
            signatures.get(part.id)
        if signature:   # extra_content.google is where Google's own OpenAI layer puts it
            part.signature, part.origin = signature, "gemini"
        parts.append(part)
    if message.get("function_call"):          # the deprecated single-function form
        part = _openai_function(message["function_call"], where + ".function_call")
        part.id = "call_legacy"
        parts.append(part)
    return parts


def _openai_function(fn: Any, where: str) -> Part:
    """A client's function call ({name, arguments as a JSON text}) as a TOOL_CALL part."""
    fn = expect(fn, dict, where, "an object")
    arguments = fn.get("arguments") or "{}"
    try:
        args = strict_json(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        raise ClientError("%s.arguments: not valid JSON" % where) from None
    return Part(TOOL_CALL, name=expect_text(fn.get("name"), where + ".name"),
                args=expect(args, dict, where + ".arguments", "a JSON object"))


def _openai_tool_choice(chat: Chat, choice: Any) -> None:
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise ClientError("tool_choice: %r is not auto, none or required" % choice)
        chat.tool_choice = choice
        return
    expect(choice, dict, "tool_choice", "a string or an object")
    if choice.get("type") == "function":
        chat.tool_choice = "required"
        fn = expect(choice.get("function"), dict, "tool_choice.function", "an object")
        chat.allowed_tools = [expect_text(fn.get("name"), "tool_choice.function.name")]
    elif choice.get("type") == "allowed_tools":
        allowed = expect(choice.get("allowed_tools"), dict, "tool_choice.allowed_tools",
                         "an object")
        chat.tool_choice = "required" if allowed.get("mode") == "required" else "auto"
        chat.allowed_tools = [expect_text((t.get("function") or {}).get("name") if isinstance(
            t, dict) else None, "tool_choice.allowed_tools.tools[%d].function.name" % i)
            for i, t in enumerate(expect(allowed.get("tools") or [], list,
                                         "tool_choice.allowed_tools.tools", "a list"))]
    else:
        raise ClientError("tool_choice: unknown type %r" % choice.get("type"))


def decode_openai_request(payload: Any, strict: bool = True,
                          cache: Optional[ReasoningCache] = None) -> Chat:
    """Chat Completions request -> neutral Chat. Raises ClientError naming the field."""
    cache = cache or REASONING_CACHE
    expect(payload, dict, "request", "a JSON object")
    if strict:
        reject_unknown(payload, OPENAI_REQUEST_FIELDS, OPENAI_UNKNOWN)
    chat = Chat(model=expect(payload.get("model"), str, "model", "a model name"))
    messages = expect(payload.get("messages"), list, "messages", "a list of messages")
    if not messages:
        raise ClientError("messages: at least one message is required")
    call_names: Dict[str, str] = {}
    for i, message in enumerate(messages):
        where = "messages[%d]" % i
        expect(message, dict, where, "a message object")
        role = message.get("role")
        if role in ("system", "developer"):
            chat.system.append(Part(TEXT, text=_openai_text(message.get("content"),
                                                            where + ".content")))
        elif role == "user":
            chat.messages.append(Message("user", _openai_user_parts(message.get("content"),
                                                                    where + ".content")))
        elif role == "assistant":
            parts = _openai_assistant_parts(message, where, cache)
            call_names.update((p.id, p.name) for p in parts if p.type == TOOL_CALL)
            chat.messages.append(Message("assistant", parts))
        elif role in ("tool", "function"):
            tool_id = expect_text(message.get("tool_call_id") or message.get("name"),
                                  where + ".tool_call_id")
            result = Part(TOOL_RESULT, id=tool_id,
                          name=call_names.get(tool_id, message.get("name") or ""),
                          content=[Part(TEXT, text=_openai_text(message.get("content"),
                                                                where + ".content"))])
            if chat.messages and chat.messages[-1].role == "user" and \
                    all(p.type == TOOL_RESULT for p in chat.messages[-1].parts):
                chat.messages[-1].parts.append(result)
            else:
                chat.messages.append(Message("user", [result]))
        else:
            raise ClientError("%s.role: %r is not system, developer, user, assistant or tool"
                              % (where, role))
    tools = payload.get("tools") or [{"type": "function", "function": f}
                                     for f in payload.get("functions") or ()]
    for i, tool in enumerate(expect(tools, list, "tools", "a list")):
        expect(tool, dict, "tools[%d]" % i, "a tool object")
        if tool.get("type", "function") != "function":
            raise ClientError("tools[%d].type: only function tools are supported" % i)
        fn = expect(tool.get("function"), dict, "tools[%d].function" % i, "an object")
        name = expect(fn.get("name"), str, "tools[%d].function.name" % i, "a name")
        chat.tools.append(Tool(name, expect_text(fn.get("description"),
                                                 "tools[%d].function.description" % i),
                               expect(fn.get("parameters") or {"type": "object",
                                                               "properties": {}},
                                      dict, "tools[%d].function.parameters" % i,
                                      "a JSON Schema")))
    _openai_tool_choice(chat, payload.get("tool_choice"))
    legacy_choice = payload.get("function_call")
    if isinstance(legacy_choice, dict):
        chat.tool_choice = "required"
        chat.allowed_tools = [expect_text(legacy_choice.get("name"), "function_call.name")]
    elif legacy_choice in ("none", "auto"):
        chat.tool_choice = legacy_choice
    chat.parallel_tool_calls = payload.get("parallel_tool_calls")
    fmt = payload.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        chat.response_format = ResponseFormat()
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = expect(fmt.get("json_schema") or {}, dict, "response_format.json_schema",
                      "an object")
        schema = spec.get("schema")
        chat.response_format = ResponseFormat(
            expect(schema, dict, "response_format.json_schema.schema", "a JSON Schema")
            if schema is not None else None,
            expect_text(spec.get("name"), "response_format.json_schema.name") or "response")
    effort = payload.get("reasoning_effort")
    if effort is not None:
        chat.thinking = Thinking(effort=expect(effort, str, "reasoning_effort", "a word"),
                                 include_thoughts=effort != "none")
    for field, kind, what in (("temperature", (int, float), "a number"),
                              ("top_p", (int, float), "a number"),
                              ("presence_penalty", (int, float), "a number"),
                              ("frequency_penalty", (int, float), "a number"),
                              ("seed", int, "a whole number"), ("top_k", int, "a whole number")):
        if payload.get(field) is not None:
            setattr(chat, field, expect(payload[field], kind, field, what))
    limit = payload.get("max_completion_tokens", payload.get("max_tokens"))
    if limit is not None:
        chat.max_tokens = expect(limit, int, "max_completion_tokens", "a whole number")
    stop = payload.get("stop")
    chat.stop = [stop] if isinstance(stop, str) else list(expect(stop or [], list, "stop",
                                                                 "a string or a list"))
    n = payload.get("n")
    chat.n = 1 if n is None else check_choices(expect(n, int, "n", "a whole number"), "n")
    chat.stream = bool(payload.get("stream"))
    chat.user = payload.get("user") or payload.get("safety_identifier") or ""
    return chat


# -- requests: neutral -> upstream ----------------------------------------------------------

def _openai_media(part: Part) -> Dict[str, Any]:
    mime = part.mime.lower()
    if part.url and not part.data:
        if mime.startswith("image/") or not mime:
            return {"type": "image_url", "image_url": {"url": part.url}}
        return {"type": "text", "text": "[%s attachment: %s]" % (mime, part.url)}
    if mime.startswith("image/"):
        image = {"url": "data:%s;base64,%s" % (mime, part.data)}
        if part.extra.get("detail"):
            image["detail"] = part.extra["detail"]
        return {"type": "image_url", "image_url": image}
    if mime in OPENAI_AUDIO_FORMATS:
        return {"type": "input_audio",
                "input_audio": {"data": part.data, "format": OPENAI_AUDIO_FORMATS[mime]}}
    if mime == "application/pdf":
        return {"type": "file", "file": {"filename": part.extra.get("filename", "document.pdf"),
                                         "file_data": "data:%s;base64,%s" % (mime, part.data)}}
    if mime.startswith("text/") or mime in ("application/json", "application/xml"):
        try:
            return {"type": "text", "text": base64.b64decode(part.data).decode("utf-8")}
        except (ValueError, UnicodeDecodeError):
            pass
    return {"type": "text", "text": "[%s attachment omitted: this upstream does not take it]"
            % (mime or "unknown")}


def _openai_content(parts: List[Part]) -> Any:
    """A plain string when every part is text (llama.cpp rejects lists), else a list."""
    if all(p.type == TEXT for p in parts):
        return "\n\n".join(p.text for p in parts)
    return [{"type": "text", "text": p.text} if p.type == TEXT else _openai_media(p)
            for p in parts if p.type in (TEXT, MEDIA)]


def _openai_user_messages(message: Message, tool_id_limit: int) -> List[Dict[str, Any]]:
    """Tool results become `tool` messages first (answering the calls before anything
    else), then the turn's own text and media, then media the tools returned."""
    out: List[Dict[str, Any]] = []
    rest = [p for p in message.parts if p.type in (TEXT, MEDIA)]
    tool_media: List[Part] = []
    for part in message.parts:
        if part.type != TOOL_RESULT:
            continue
        text = tool_result_text(part)
        out.append({"role": "tool", "tool_call_id": fit_tool_id(part.id, tool_id_limit),
                    "content": json.dumps({"error": text}, ensure_ascii=False)
                    if part.is_error else text})
        media = [p for p in part.content or () if p.type == MEDIA]
        if media:
            tool_media.append(Part(TEXT, text="Attachments returned by %s:" % part.name))
            tool_media.extend(media)
    if rest or tool_media:
        out.append({"role": "user", "content": _openai_content(rest + tool_media)})
    return out


def _openai_assistant_message(message: Message, options: Dict[str, Any],
                              tool_id_limit: int) -> Dict[str, Any]:
    text = message_text(message)
    calls = [{"id": fit_tool_id(p.id, tool_id_limit), "type": "function",
              "function": {"name": p.name,
                           "arguments": json.dumps(p.args or {}, ensure_ascii=False)}}
             for p in message.parts if p.type == TOOL_CALL]
    out: Dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        out["tool_calls"] = calls
        reasoning = "".join(p.text for p in message.parts if p.type == THINKING)
        # DeepSeek and Kimi in thinking mode reject a tool-call turn without its reasoning.
        if reasoning and options["echo_reasoning"]:
            out[options["reasoning_field"]] = reasoning
    return out


def _openai_response_format(chat: Chat, options: Dict[str, Any]) -> Tuple[Any, str]:
    """(response_format, instruction for the system prompt) for a JSON-mode request."""
    fmt = chat.response_format
    if fmt is None:
        return None, ""
    mode = options["response_format"]
    if mode == "json_schema" and fmt.schema is not None:
        return {"type": "json_schema", "json_schema": {
            "name": fmt.name, "schema": fmt.schema, "strict": False}}, ""
    return ({"type": "json_object"} if mode != "none" else None), json_mode_note(fmt)


def encode_openai_request(chat: Chat, model: str,
                          options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Neutral request -> Chat Completions payload for an OpenAI-compatible upstream."""
    options = options or UPSTREAM_DEFAULTS
    tool_id_limit = OPENAI_MAX_TOOL_ID
    response_format, json_note = _openai_response_format(chat, options)
    system = "\n\n".join(p.text for p in chat.system if p.text)
    if json_note:
        system = (system + "\n\n" + json_note).strip()
    messages: List[Dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for message in merge_consecutive_turns(chat.messages):
        if message.role == "assistant":
            messages.append(_openai_assistant_message(message, options, tool_id_limit))
        else:
            messages.extend(_openai_user_messages(message, tool_id_limit))
    payload: Dict[str, Any] = {"model": model, "messages": messages}
    if chat.stream:
        payload["stream"] = True
        if options["stream_usage"]:
            payload["stream_options"] = {"include_usage": True}
    tools = offered_tools(chat)
    if tools:
        payload["tools"] = [{"type": "function", "function": dict(
            {"name": t.name, "parameters": t.schema},
            **({"description": t.description} if t.description else {}))} for t in tools]
        if chat.tool_choice == "required" and len(chat.allowed_tools) == 1:
            payload["tool_choice"] = {"type": "function",
                                      "function": {"name": chat.allowed_tools[0]}}
        elif chat.tool_choice != "auto":
            payload["tool_choice"] = chat.tool_choice
        if chat.parallel_tool_calls is not None:
            payload["parallel_tool_calls"] = chat.parallel_tool_calls
    for field, value in (("temperature", chat.temperature), ("top_p", chat.top_p),
                         ("presence_penalty", chat.presence_penalty),
                         ("frequency_penalty", chat.frequency_penalty), ("seed", chat.seed),
                         (options["max_tokens_field"], chat.max_tokens),
                         ("user", chat.user or None)):
        if value is not None:
            payload[field] = value
    if chat.top_k is not None and options["send_top_k"]:
        payload["top_k"] = chat.top_k
    if chat.stop:
        payload["stop"] = chat.stop
    if chat.n > 1:
        payload["n"] = chat.n
    if chat.thinking is not None and options["send_reasoning_effort"]:
        effort = thinking_effort(chat.thinking)
        if effort:
            payload["reasoning_effort"] = effort
    if response_format is not None:
        payload["response_format"] = response_format
    payload.update(options["extra_body"])
    return payload


# -- replies: upstream -> neutral ------------------------------------------------------------

def decode_openai_usage(usage: Any) -> Optional[Usage]:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if prompt is None and completion is None:
        return None     # counts nothing (an empty object, a total alone): no usage
    prompt_details = fields_of(usage.get("prompt_tokens_details"))
    completion_details = fields_of(usage.get("completion_tokens_details"))
    cached = (tokens_of(prompt_details.get("cached_tokens")) or   # OpenAI, DeepSeek, Moonshot
              tokens_of(usage.get("prompt_cache_hit_tokens")) or
              tokens_of(usage.get("cached_tokens")))
    return Usage(tokens_of(prompt), tokens_of(completion), cached_tokens=cached,
                 reasoning_tokens=tokens_of(completion_details.get("reasoning_tokens")),
                 input_missing=prompt is None)


def _openai_tool_call(call_id: str, name: str, arguments: Any) -> Tuple[Part, bool]:
    """A whole tool call, and whether it is malformed: arguments that are no JSON object,
    or no name (no client could run it)."""
    if isinstance(arguments, dict):
        args, malformed = arguments, False
    else:
        try:
            arguments = text_of(arguments)
            args = strict_json(arguments) if arguments.strip() else {}
            malformed = not isinstance(args, dict)
        except (ValueError, RecursionError):
            args, malformed = {}, True
    malformed = malformed or not text_of(name)
    return Part(TOOL_CALL, id=text_of(call_id) or new_id("call_"), name=text_of(name),
                args=args if not malformed else {}), malformed


def _openai_finish(reason: Any, parts: List[Part], malformed: bool,
                   usage: Optional[Usage]) -> Finish:
    if malformed:
        return Finish(MALFORMED_TOOL_CALL, usage)
    if any(p.type == TOOL_CALL for p in parts):   # some servers say "stop" after tool calls
        return Finish(TOOL_CALLS, usage)
    return Finish(OPENAI_STOP_REASONS.get(reason, STOP), usage)


def _openai_reasoning(fields: Dict[str, Any]) -> str:
    """DeepSeek and Kimi say reasoning_content; vLLM >= 0.10 says reasoning (some send both)."""
    value = fields.get("reasoning_content")
    if value is None:
        value = fields.get("reasoning")
    return value if isinstance(value, str) else ""


def _openai_reply_content(message: Dict[str, Any]) -> str:
    """A message's text: a string, or (some servers) a list of text parts."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(reply_text(reply_object(p, "a content part").get("text"), "text")
                       for p in content)
    return reply_text(content, "message.content")


def decode_openai_response(payload: Any, model: str = "") -> Reply:
    """Chat Completions reply -> neutral reply."""
    payload = reply_object(payload, "the reply")
    if "choices" not in payload:
        raise UpstreamError("the upstream reply has no choices: %s"
                            % clip(json.dumps(payload), 300), status=502)
    usage = decode_openai_usage(payload.get("usage"))
    raw_choices = [reply_object(c, "a choice") for c in reply_list(payload["choices"],
                                                                 "choices")]
    choices = []
    for choice in sorted(raw_choices, key=lambda c: tokens_of(c.get("index"))):
        message = reply_object(choice.get("message"), "message")
        parts: List[Part] = []
        reasoning = _openai_reasoning(message)
        if reasoning:
            parts.append(Part(THINKING, text=reasoning, origin="openai"))
        content = _openai_reply_content(message)
        if content:
            parts.append(Part(TEXT, text=content))
        refusal = text_of(message.get("refusal"))
        if refusal:
            parts.append(Part(TEXT, text=refusal))
        malformed = False
        for call in reply_list(message.get("tool_calls"), "tool_calls"):
            call = reply_object(call, "a tool call")
            fn = reply_object(call.get("function"), "tool_calls[].function")
            part, bad = _openai_tool_call(call.get("id", ""), fn.get("name", ""),
                                          fn.get("arguments"))
            malformed |= bad
            if not bad:
                parts.append(part)
        finish = _openai_finish(text_of(choice.get("finish_reason")), parts, malformed, usage)
        if refusal and not content:
            finish.reason = CONTENT_FILTER
        choices.append(Choice(parts, finish))
    if not choices:
        raise UpstreamError("the upstream reply has an empty choices list", status=502)
    return Reply(text_of(payload.get("id")) or new_id("chatcmpl-"),
                 text_of(payload.get("model")) or model, choices, usage)


def _merge_tool_fragment(calls: Dict[int, List[Dict[str, Any]]],
                         fragment: Dict[str, Any]) -> None:
    """Streamed tool calls arrive in fragments keyed by index. Arguments concatenate; id
    and name are kept from the first fragment (llama.cpp repeats them in every one). A
    call begins with its name: a fragment naming one under another id, at an index
    already taken, begins a call of its own there (some servers number every parallel
    call 0, and joined, both calls would be lost as one malformed). Without index, a
    fragment goes to its id's call, else begins a call if it names one, else goes on
    with the last call."""
    call_id = text_of(fragment.get("id"))
    fn = reply_object(fragment.get("function"), "tool_calls[].function")
    name = text_of(fn.get("name"))
    index = fragment.get("index")
    if not isinstance(index, int):   # servers that send each call whole, without index
        last = max(calls, default=-1)
        index = next((i for i, at in calls.items() if call_id and at[-1]["id"] == call_id),
                     last + 1 if name or last < 0 else last)
    at = calls.setdefault(index, [])
    if not at or (name and call_id and at[-1]["id"] not in ("", call_id)):
        at.append({"id": "", "name": "", "args": []})
    call = at[-1]
    call["id"] = call["id"] or call_id
    call["name"] = call["name"] or name
    arguments = fn.get("arguments")
    if isinstance(arguments, dict):
        call["args"] = [json.dumps(arguments)]
    elif isinstance(arguments, str):
        call["args"].append(arguments)


def _rejoined(at: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The calls at one index, as the stream ends: pieces of one call that each named it
    under a new id (vLLM's gpt-oss streaming did) are joined again, when only together
    are their arguments a JSON object."""
    def whole(call: Dict[str, Any]) -> bool:
        arguments = "".join(call["args"])
        try:
            return not arguments.strip() or isinstance(strict_json(arguments), dict)
        except (ValueError, RecursionError):
            return False
    if len(at) < 2 or all(map(whole, at)):
        return at
    joined = dict(at[0], args=[piece for call in at for piece in call["args"]])
    return [joined] if whole(joined) else at


OPENAI_FINISH_FIELD = re.compile(r'"finish_reason": ?"[^"]')   # "" is no finish


def openai_stream_end(data: str) -> bool:
    """Whether an event of a passed-through stream is its last: [DONE], or a choice's
    finish (one pattern with both would be searched for at every position: 7x slower)."""
    return data.startswith("[DONE]") or OPENAI_FINISH_FIELD.search(data) is not None


# The HTTP status an OpenAI error's code (or type) stands for, where a reply has only
# the name: an error inside a 200, a failed Responses response. Others are 502s.
OPENAI_ERROR_STATUS = {"rate_limit_exceeded": 429, "rate_limit_error": 429,
                       "insufficient_quota": 429, "context_length_exceeded": 400,
                       "invalid_prompt": 400, "invalid_request_error": 400,
                       "server_is_overloaded": 503, "slow_down": 503}


def openai_stream_error(data: str) -> Optional[UpstreamError]:
    """An error an OpenAI-compatible server sent inside a 200 (a stream's event, or the
    whole body), if `data` is one; its status is its code's, a number or a name."""
    if not data.startswith("{") or '"error"' not in data:
        return None
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(chunk, dict) or not chunk.get("error"):
        return None
    error = fields_of(chunk["error"])
    code, status = error.get("code"), None
    if isinstance(code, str) and re.fullmatch(r"[0-9]{3}", code):
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        status = code
    else:   # a name, or a number no HTTP status is: its name's, or its type's
        status = OPENAI_ERROR_STATUS.get(text_of(code)) or \
            OPENAI_ERROR_STATUS.get(text_of(error.get("type")))
    return decode_openai_error(status, chunk)


def decode_openai_stream(raw_events: Iterable[Tuple[str, str]]) -> Iterator[Any]:
    """Chat Completions SSE events -> neutral events, for every choice (n > 1). Tool calls
    are held until the turn ends and then emitted whole, once each; a stream that stops
    before its finish (neither finish_reason nor [DONE]) raises, so no client sees a
    false normal end."""
    calls: Dict[int, Dict[int, List[Dict[str, Any]]]] = {}   # choice -> index -> calls
    finish_reasons: Dict[int, str] = {}
    choices_seen = {0}
    answered = False        # any choice at all (a stream of [DONE] alone is no reply)
    usage = None
    done = False
    for raw in raw_events:
        if raw is IDLE:
            yield raw
            continue
        data = raw[1]
        if data.strip() == "[DONE]":
            done = True
            break
        chunk = reply_object(stream_event_json(data, openai_stream_error), "a stream chunk")
        usage = later_usage(decode_openai_usage(chunk.get("usage")), usage)
        for choice in reply_list(chunk.get("choices"), "choices"):
            choice = reply_object(choice, "a choice")
            index = choice.get("index", 0)
            index = index if isinstance(index, int) and 0 <= index < MAX_CHOICES else 0
            choices_seen.add(index)
            answered = True
            usage = later_usage(decode_openai_usage(choice.get("usage")), usage)   # Moonshot
            delta = reply_object(choice.get("delta"), "delta")
            reasoning = _openai_reasoning(delta)
            if reasoning:
                yield Part(THINKING, text=reasoning, origin="openai", choice=index)
            content = reply_text(delta.get("content"), "delta.content")
            if content:
                yield Part(TEXT, text=content, choice=index)
            for fragment in reply_list(delta.get("tool_calls"), "delta.tool_calls"):
                _merge_tool_fragment(calls.setdefault(index, {}),
                                     reply_object(fragment, "a tool call"))
            if isinstance(choice.get("finish_reason"), str) and choice["finish_reason"]:
                finish_reasons[index] = choice["finish_reason"]   # ("": some servers' null)
    if not finish_reasons and not done:
        raise UpstreamError("the upstream stream ended before the reply was finished",
                            status=502)
    if not finish_reasons and not answered:
        raise UpstreamError("the upstream stream ended ([DONE]) without any reply",
                            status=502)
    for index in sorted(choices_seen):
        parts, malformed = [], False
        for call in [c for position in sorted(calls.get(index, {}))
                     for c in _rejoined(calls[index][position])]:
            arguments = "".join(call["args"])
            if not call["name"] and not arguments.strip():
                continue    # fragments that held nothing (an empty trailing one, say)
            part, bad = _openai_tool_call(call["id"], call["name"], arguments)
            malformed |= bad
            if not bad:
                part.choice = index
                parts.append(part)
        yield from parts
        finish = _openai_finish(finish_reasons.get(index), parts, malformed, usage)
        finish.choice = index
        yield finish


def decode_openai_error(status: Optional[int], payload: Any,
                        headers: Optional[Dict[str, str]] = None) -> UpstreamError:
    """An error reply from an OpenAI-compatible server (its JSON, or text) -> UpstreamError."""
    message, reason = "", ""
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or ""
            reason = error.get("code") or error.get("type") or ""   # insufficient_quota
            reason = reason if isinstance(reason, str) else ""
        elif isinstance(error, str):
            message = error
        message = message or payload.get("message") or payload.get("detail") or ""
        if not isinstance(message, str):
            message = json.dumps(message, ensure_ascii=False)
    elif isinstance(payload, str):
        message = payload.strip()
    status = status if isinstance(status, int) and 400 <= status <= 599 else 502
    retry_after = parse_retry_after((headers or {}).get("retry-after"))
    return UpstreamError(clip(message, 2000) or "HTTP %d with no message" % status,
                         status=status, retry_after=retry_after, reason=reason)


# -- replies: neutral -> client ---------------------------------------------------------------

def openai_usage(usage: Usage) -> Dict[str, Any]:
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


def _openai_client_call(part: Part, index: Optional[int] = None) -> Dict[str, Any]:
    call: Dict[str, Any] = {"id": part.id, "type": "function", "function": {
        "name": part.name, "arguments": json.dumps(part.args or {}, ensure_ascii=False)}}
    if index is not None:
        call = dict({"index": index}, **call)
    if part.origin == "gemini" and part.signature:   # the field Google's own layer uses
        call["extra_content"] = {"google": {"thought_signature": part.signature}}
    return call


def _openai_remember(parts: List[Part], cache: ReasoningCache) -> None:
    """Keep a turn's signed reasoning, and its tool calls' signatures, under its first
    tool call's id: an OpenAI client sends back reasoning text at best, and extra_content
    only if it keeps unknown fields."""
    keep = [p for p in parts if p.type == THINKING and (p.signature or p.extra)]
    keep += [Part(TOOL_CALL, id=p.id, signature=p.signature, origin=p.origin)
             for p in parts if p.type == TOOL_CALL and p.signature]
    first_call = next((p for p in parts if p.type == TOOL_CALL), None)
    if keep and first_call is not None:
        cache.put(first_call.id, keep)


def _openai_media_text(part: Part) -> str:
    return "![image](%s)" % (part.url or "data:%s;base64,%s" % (part.mime, part.data))


def encode_openai_response(reply: Reply, model: str, response_id: str,
                           options: Optional[ReplyOptions] = None) -> Dict[str, Any]:
    """Neutral reply -> chat.completion object."""
    options = options or ReplyOptions()
    cache = options.reasoning_cache or REASONING_CACHE
    choices = []
    for index, choice in enumerate(reply.choices):
        text = "".join(p.text if p.type == TEXT else _openai_media_text(p)
                       for p in choice.parts if p.type in (TEXT, MEDIA))
        reasoning = "".join(p.text for p in choice.parts if p.type == THINKING)
        calls = [_openai_client_call(p) for p in choice.parts if p.type == TOOL_CALL]
        message: Dict[str, Any] = {"role": "assistant", "content": text or None,
                                   "refusal": None}
        if reasoning:
            message["reasoning_content"] = reasoning
        if calls:
            message["tool_calls"] = calls
            _openai_remember(choice.parts, cache)
        choices.append({"index": index, "message": message, "logprobs": None,
                        "finish_reason": OPENAI_FINISH_REASONS[choice.finish.reason]})
    return {"id": response_id, "object": "chat.completion", "created": reply.created,
            "model": model, "choices": choices, "usage": openai_usage(reply.usage or Usage()),
            "system_fingerprint": None}


def openai_stream_error_event(error: ProxyError) -> bytes:
    """How an OpenAI client learns that a stream failed after it began (the SDK raises)."""
    return sse_data(json_compact({"error": {"message": error.message,
                                            "type": OPENAI_ERROR_TYPES.get(error.status,
                                                                           "server_error"),
                                            "code": error.status}}))


def encode_openai_stream(events: Iterable[Any], model: str, response_id: str,
                         options: Optional[ReplyOptions] = None) -> Iterator[bytes]:
    """Neutral events -> chat.completion.chunk SSE, a choice per index, ending in [DONE]
    once the events end. Tool calls go out whole, one fragment each."""
    options = options or ReplyOptions()
    cache = options.reasoning_cache or REASONING_CACHE
    created = int(time.time())
    head = '{"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":' % (
        json_compact(response_id), created, json_compact(model))

    def chunk(index: int, delta: Dict[str, Any], finish: Optional[str] = None) -> bytes:
        return sse_data(head + json_compact([{"index": index, "delta": delta, "logprobs": None,
                                              "finish_reason": finish}]) + "}")

    seen: Dict[int, List[Part]] = {}     # choice -> its reasoning and calls, to remember
    calls: Dict[int, int] = {}           # choice -> tool calls sent
    usage: Optional[Usage] = None
    finished = False
    for event in events:
        if event is IDLE:
            yield event
            continue
        index = event.choice
        if index not in seen:
            seen[index] = []
            yield chunk(index, {"role": "assistant", "content": ""})
        if isinstance(event, Finish):
            _openai_remember(merge_deltas(seen[index]), cache)
            yield chunk(index, {}, OPENAI_FINISH_REASONS[event.reason])
            usage, finished = event.usage or usage, True
        elif event.type == TEXT and event.text:
            yield chunk(index, {"content": event.text})
        elif event.type == THINKING:
            seen[index].append(event)
            if event.text:
                yield chunk(index, {"reasoning_content": event.text})
        elif event.type == TOOL_CALL:
            seen[index].append(event)
            yield chunk(index, {"tool_calls": [_openai_client_call(event, calls.get(index, 0))]})
            calls[index] = calls.get(index, 0) + 1
        elif event.type == MEDIA:
            yield chunk(index, {"content": _openai_media_text(event)})
    if not finished:
        raise UpstreamError("the reply ended before it was finished", status=502)
    if options.include_usage:
        yield sse_data(head + '[],"usage":%s}' % json_compact(openai_usage(usage or Usage())))
    yield b"data: [DONE]\n\n"


def encode_openai_error(error: ProxyError) -> Tuple[int, List[Tuple[str, str]], bytes]:
    status = 503 if error.status == 529 else error.status
    kind = OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500
                                  else "invalid_request_error")
    headers = [("content-type", "application/json")]
    if error.retry_after is not None:
        headers.append(("retry-after", str(int(math.ceil(error.retry_after)))))
    return status, headers, json_bytes({"error": {
        "message": error.message, "type": kind, "param": None,
        "code": error.reason or ("rate_limit_exceeded" if status == 429 else None)}})


def openai_model_list(names: List[str]) -> Dict[str, Any]:
    return {"object": "list", "data": [openai_model_info(n) for n in names]}


def openai_model_info(name: str) -> Dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "gemini-proxy"}


# -- embeddings ---------------------------------------------------------------------------------

def decode_openai_embeddings_request(payload: Any) -> EmbedRequest:
    expect(payload, dict, "request", "a JSON object")
    reject_unknown(payload, frozenset(("model", "input", "dimensions", "encoding_format",
                                       "user")), OPENAI_UNKNOWN)
    texts = payload.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ClientError("input: expected a string or a list of strings (token arrays are "
                          "only passed through to OpenAI-compatible upstreams)")
    dimensions = payload.get("dimensions")
    return EmbedRequest(expect(payload.get("model"), str, "model", "a model name"), texts,
                        expect(dimensions, int, "dimensions", "a whole number")
                        if dimensions is not None else None)


def encode_openai_embeddings_request(request: EmbedRequest, model: str) -> Dict[str, Any]:
    payload: Dict[str, Any] = {"model": model, "input": request.texts}
    if request.dimensions:
        payload["dimensions"] = request.dimensions
    return payload


def decode_openai_embeddings_response(payload: Any) -> EmbedReply:
    payload = reply_object(payload, "the embeddings reply")
    if not isinstance(payload.get("data"), list):
        raise UpstreamError("the upstream embeddings reply has no data", status=502)
    items = [reply_object(item, "an embedding") for item in payload["data"]]
    vectors = [embedding_vector(item.get("embedding"))
               for item in sorted(items, key=lambda d: tokens_of(d.get("index")))]
    return EmbedReply(vectors, tokens_of(fields_of(payload.get("usage")).get("prompt_tokens")))


def encode_openai_embeddings_response(reply: EmbedReply, model: str,
                                      encoding_format: str = "float") -> Dict[str, Any]:
    def encode(vector: List[float]) -> Any:
        if encoding_format != "base64":
            return vector
        return base64.b64encode(struct.pack("<%df" % len(vector), *vector)).decode("ascii")
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                     for i, v in enumerate(reply.vectors)],
            "usage": {"prompt_tokens": reply.input_tokens, "total_tokens": reply.input_tokens}}


# ---- 8. Dialect: Anthropic Messages ----------------------------------------------------
#
# Client side: /v1/messages (with ?beta=true) and /v1/messages/count_tokens as the SDK and
# Claude Code send them. Upstream side: api.anthropic.com or anything speaking the same.
# Tool-use ids must match [A-Za-z0-9_-]; other ids (Kimi's functions.read:0) travel
# base64url-encoded and come back unchanged.

ANTHROPIC_REQUEST_FIELDS = frozenset((
    "model", "max_tokens", "messages", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "output_config",
    "output_format", "service_tier", "container", "context_management", "mcp_servers",
    "inference_geo", "cache_control", "betas"))
ANTHROPIC_UNKNOWN = "%s: Extra inputs are not permitted"

ANTHROPIC_STOP_REASONS = {        # stop_reason -> neutral
    "end_turn": STOP, "stop_sequence": STOP, "pause_turn": STOP, "max_tokens": LENGTH,
    "model_context_window_exceeded": LENGTH, "tool_use": TOOL_CALLS, "refusal": CONTENT_FILTER,
}
ANTHROPIC_FINISH_REASONS = {      # neutral -> stop_reason
    STOP: "end_turn", LENGTH: "max_tokens", TOOL_CALLS: "tool_use", CONTENT_FILTER: "refusal",
    MALFORMED_TOOL_CALL: "end_turn",
}
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                         402: "billing_error", 403: "permission_error", 404: "not_found_error",
                         413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                         503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}
ANTHROPIC_ERROR_STATUS = {kind: status for status, kind in ANTHROPIC_ERROR_TYPES.items()
                          if status != 503}
ANTHROPIC_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
ANTHROPIC_TOOL_ID = re.compile(r"[A-Za-z0-9_-]+\Z")
ANTHROPIC_ENCODED_ID = "pxid_"
ANTHROPIC_JSON_NOTE = "Reply with a single JSON object and nothing else."


def anthropic_tool_id(tool_id: str) -> str:
    """A tool id in Anthropic's charset: valid ids unchanged, others base64url-encoded
    (its alphabet is exactly the allowed one) so they can be restored."""
    if ANTHROPIC_TOOL_ID.match(tool_id):
        return tool_id
    # surrogatepass: an id is opaque, lone surrogates included, and must come back as sent
    return ANTHROPIC_ENCODED_ID + b64url_encode(tool_id.encode("utf-8", "surrogatepass"))


def original_tool_id(tool_id: str) -> str:
    if tool_id.startswith(ANTHROPIC_ENCODED_ID):
        try:
            return b64url_decode(tool_id[len(ANTHROPIC_ENCODED_ID):]).decode(
                "utf-8", "surrogatepass")
        except (ValueError, UnicodeDecodeError):
            pass
    return tool_id


# -- requests: client -> neutral -----------------------------------------------------------

def _anthropic_source(block: Dict[str, Any], where: str) -> Part:
    source = expect(block.get("source"), dict, where + ".source", "an object")
    kind = source.get("type")
    if kind == "base64":
        return Part(MEDIA, mime=expect_text(source.get("media_type"), where + ".media_type"),
                    data=expect_text(source.get("data"), where + ".source.data"))
    if kind == "url":
        return Part(MEDIA, mime="application/pdf" if block["type"] == "document" else "",
                    url=expect_text(source.get("url"), where + ".source.url"))
    if kind == "text":
        return Part(TEXT, text=expect_text(source.get("data"), where + ".source.data"))
    raise ClientError("%s.source.type: %r is not supported" % (where, kind))


def _anthropic_thinking_part(block: Dict[str, Any], where: str) -> List[Part]:
    """A thinking block: Anthropic's own, or one this proxy made around reasoning from
    another provider (its signature is a carrier; the text is the block's)."""
    signature = expect_text(block.get("signature"), where + ".signature")
    text = expect_text(block.get("thinking"), where + ".thinking")
    if is_carrier(signature):
        parts = unpack_thinking(signature)
        if parts:
            parts[0].text = text
            return parts
        # A carrier that did not unpack is no signature: what is left is its text.
        return [Part(THINKING, text=text, origin="openai")] if text else []
    return [Part(THINKING, text=text, signature=signature, origin="anthropic")]


def _anthropic_blocks(content: Any, where: str) -> List[Part]:
    if isinstance(content, str):
        return [Part(TEXT, text=content)]
    parts: List[Part] = []
    for j, block in enumerate(expect(content, list, where, "a string or a list of blocks")):
        at = "%s[%d]" % (where, j)
        expect(block, dict, at, "a content block")
        kind = block.get("type")
        extra = {"cache_control": block["cache_control"]} if block.get("cache_control") else {}
        if kind == "text":
            parts.append(Part(TEXT, text=expect(block.get("text", ""), str, at + ".text",
                                                "text"), extra=extra))
        elif kind in ("image", "document"):
            parts.append(_anthropic_source(block, at))
        elif kind == "tool_use":
            parts.append(Part(TOOL_CALL, id=original_tool_id(expect_text(block.get("id"),
                                                                         at + ".id")),
                              name=expect_text(block.get("name"), at + ".name"),
                              args=expect(block.get("input") or {}, dict, at + ".input",
                                          "an object")))
        elif kind == "tool_result":
            inner = block.get("content")
            result = _anthropic_blocks(inner, at + ".content") if inner is not None else []
            parts.append(Part(TOOL_RESULT, id=original_tool_id(expect_text(
                block.get("tool_use_id"), at + ".tool_use_id")),
                              content=[p for p in result if p.type in (TEXT, MEDIA)],
                              is_error=bool(block.get("is_error"))))
        elif kind == "thinking":
            parts.extend(_anthropic_thinking_part(block, at))
        elif kind == "redacted_thinking":
            parts.append(Part(THINKING, origin="anthropic", extra={
                "redacted": expect_text(block.get("data"), at + ".data")}))
        elif kind in ("server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
                      "code_execution_tool_result", "mcp_tool_use", "mcp_tool_result",
                      "search_result", "container_upload"):
            continue   # results of Anthropic's own server tools: nothing to translate
        else:
            raise ClientError("%s.type: unknown content block type %r" % (at, kind))
    return parts


def decode_anthropic_request(payload: Any, strict: bool = True,
                             counting: bool = False) -> Chat:
    """Messages request (or count_tokens request when `counting`) -> neutral Chat."""
    expect(payload, dict, "request", "a JSON object")
    if strict:
        reject_unknown(payload, ANTHROPIC_REQUEST_FIELDS, ANTHROPIC_UNKNOWN)
    chat = Chat(model=expect(payload.get("model"), str, "model", "a model name"))
    if not counting:
        chat.max_tokens = expect(payload.get("max_tokens"), int, "max_tokens",
                                 "a whole number")
    system = payload.get("system")
    if system is not None:
        chat.system = [p for p in _anthropic_blocks(system, "system") if p.type == TEXT]
    messages = expect(payload.get("messages"), list, "messages", "a list of messages")
    for i, message in enumerate(messages):
        expect(message, dict, "messages[%d]" % i, "a message")
        role = message.get("role")
        parts = _anthropic_blocks(message.get("content"), "messages[%d].content" % i)
        if role == "system":   # newer Claude Code puts system text among the messages
            chat.system.extend(p for p in parts if p.type == TEXT)
        elif role in ("user", "assistant"):
            chat.messages.append(Message(role, parts))
        else:
            raise ClientError("messages[%d].role: %r is not user or assistant" % (i, role))
    names: Dict[str, str] = {}
    for message in chat.messages:     # tool_result carries no name; its call does
        for part in message.parts:
            if part.type == TOOL_CALL:
                names[part.id] = part.name
            elif part.type == TOOL_RESULT:
                part.name = names.get(part.id, "")
    for i, tool in enumerate(expect(payload.get("tools") or [], list, "tools", "a list")):
        expect(tool, dict, "tools[%d]" % i, "a tool")
        if tool.get("type") not in (None, "custom"):   # Anthropic's server tools
            chat.extra.setdefault("anthropic_tools", []).append(tool)
            continue
        chat.tools.append(Tool(expect(tool.get("name"), str, "tools[%d].name" % i, "a name"),
                               expect_text(tool.get("description"),
                                           "tools[%d].description" % i),
                               expect(tool.get("input_schema") or {"type": "object",
                                                                   "properties": {}},
                                      dict, "tools[%d].input_schema" % i, "a JSON Schema")))
    choice = payload.get("tool_choice")
    if choice is not None:
        expect(choice, dict, "tool_choice", "an object")
        kind = choice.get("type")
        if kind not in ("auto", "any", "tool", "none"):
            raise ClientError("tool_choice.type: %r is not auto, any, tool or none" % kind)
        chat.tool_choice = {"auto": "auto", "none": "none"}.get(kind, "required")
        if kind == "tool":
            chat.allowed_tools = [choice.get("name", "")]
        if choice.get("disable_parallel_tool_use"):
            chat.parallel_tool_calls = False
    output_config = expect(payload.get("output_config") or {}, dict, "output_config",
                           "an object")
    thinking = payload.get("thinking")
    if thinking is not None:
        kind = expect(thinking, dict, "thinking", "an object").get("type")
        shown = thinking.get("display") != "omitted"
        if kind == "enabled":
            chat.thinking = Thinking(budget=expect(thinking.get("budget_tokens"), int,
                                                   "thinking.budget_tokens", "a number"),
                                     include_thoughts=shown)
        elif kind == "adaptive":
            chat.thinking = Thinking(effort=expect_text(output_config.get("effort"),
                                                        "output_config.effort") or "high",
                                     include_thoughts=shown)
        elif kind == "disabled":
            chat.thinking = Thinking(budget=0)
        else:
            raise ClientError("thinking.type: %r is not enabled, adaptive or disabled" % kind)
    fmt = output_config.get("format") or payload.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        chat.response_format = ResponseFormat(fmt.get("schema"))
    for field, kind, what in (("temperature", (int, float), "a number"),
                              ("top_p", (int, float), "a number"),
                              ("top_k", int, "a whole number")):
        if payload.get(field) is not None:
            setattr(chat, field, expect(payload[field], kind, field, what))
    chat.stop = list(expect(payload.get("stop_sequences") or [], list, "stop_sequences",
                            "a list"))
    chat.stream = bool(payload.get("stream"))
    # metadata.user_id is for Anthropic's abuse tracking (Claude Code puts a JSON document
    # there); other providers are not given it.
    return chat


# -- requests: neutral -> upstream ----------------------------------------------------------

def _anthropic_media(part: Part) -> Dict[str, Any]:
    kind = "document" if part.mime == "application/pdf" else "image"
    if part.url and not part.data:
        return {"type": kind, "source": {"type": "url", "url": part.url}}
    if kind == "image" and part.mime not in ANTHROPIC_IMAGE_TYPES:
        return {"type": "text", "text": "[%s attachment omitted: this upstream does not take "
                "it]" % (part.mime or "unknown")}
    return {"type": kind, "source": {"type": "base64", "media_type": part.mime,
                                     "data": part.data}}


def _anthropic_text(part: Part) -> Dict[str, Any]:
    block: Dict[str, Any] = {"type": "text", "text": part.text}
    if part.extra.get("cache_control"):
        block["cache_control"] = part.extra["cache_control"]
    return block


def _anthropic_user_content(message: Message) -> List[Dict[str, Any]]:
    """tool_result blocks first (Anthropic wants them at the start), then the rest."""
    results, rest = [], []
    for part in message.parts:
        if part.type == TOOL_RESULT:
            inner = [_anthropic_text(p) if p.type == TEXT else _anthropic_media(p)
                     for p in part.content or () if p.type == MEDIA or p.text]
            block: Dict[str, Any] = {"type": "tool_result",
                                     "tool_use_id": anthropic_tool_id(part.id)}
            if inner:
                block["content"] = inner[0]["text"] if len(inner) == 1 and \
                    inner[0]["type"] == "text" and "cache_control" not in inner[0] else inner
            if part.is_error:
                block["is_error"] = True
            results.append(block)
        elif part.type == TEXT and part.text:
            rest.append(_anthropic_text(part))
        elif part.type == MEDIA:
            rest.append(_anthropic_media(part))
    return results + rest


def _anthropic_assistant_content(message: Message) -> List[Dict[str, Any]]:
    """Anthropic's own signed thinking first (it must precede tool_use), then text and
    tool_use. Reasoning from other providers cannot be signed and is left out."""
    thinking, rest = [], []
    for part in message.parts:
        if part.type == THINKING and part.origin == "anthropic":
            if part.extra.get("redacted"):
                thinking.append({"type": "redacted_thinking", "data": part.extra["redacted"]})
            elif part.signature:
                thinking.append({"type": "thinking", "thinking": part.text,
                                 "signature": part.signature})
        elif part.type == TEXT and part.text:
            rest.append(_anthropic_text(part))
        elif part.type == TOOL_CALL:
            rest.append({"type": "tool_use", "id": anthropic_tool_id(part.id),
                         "name": part.name, "input": part.args or {}})
    return thinking + rest


def _anthropic_thinking(chat: Chat, messages: List[Dict[str, Any]],
                        room: int) -> Optional[Dict[str, Any]]:
    """The thinking setting for an Anthropic upstream, or None to leave thinking off:
    asked for no thinking, too little `room` (the most of max_tokens it may take), or a
    tool-use turn in the history without its signed thinking block (Anthropic would
    answer 400)."""
    if chat.thinking is None or chat.thinking.budget == 0 or chat.thinking.effort == "none":
        return None
    budget = min(thinking_budget(chat.thinking), room)
    if budget < 1024:
        return None
    last = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
    if last is not None and any(b["type"] == "tool_use" for b in last["content"]) and \
            not any(b["type"] in ("thinking", "redacted_thinking") for b in last["content"]):
        return None
    return {"type": "enabled", "budget_tokens": budget}


def encode_anthropic_request(chat: Chat, model: str,
                             options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Neutral request -> Messages payload for an Anthropic upstream."""
    options = options or UPSTREAM_DEFAULTS
    if chat.n > 1:
        raise ClientError("an Anthropic upstream returns one choice; n must be 1")
    messages = []
    for message in merge_consecutive_turns(chat.messages):
        content = _anthropic_assistant_content(message) if message.role == "assistant" \
            else _anthropic_user_content(message)
        if content:
            messages.append({"role": message.role, "content": content})
    max_tokens = chat.max_tokens or options["default_max_tokens"]
    if options["max_output_tokens"]:
        max_tokens = min(max_tokens, options["max_output_tokens"])
    payload: Dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    system = [_anthropic_text(p) for p in chat.system if p.text]
    fmt = chat.response_format
    native_json = fmt is not None and fmt.schema is not None and \
        options["response_format"] == "json_schema"
    if fmt is not None and not native_json:
        note = ANTHROPIC_JSON_NOTE + (" It must match this JSON Schema:\n" + json.dumps(
            fmt.schema, ensure_ascii=False) if fmt.schema is not None else "")
        system.append({"type": "text", "text": note})
    if system:
        payload["system"] = system if any("cache_control" in b for b in system) \
            else "\n\n".join(b["text"] for b in system)
    if native_json:
        payload["output_config"] = {"format": {"type": "json_schema", "schema": fmt.schema}}
    # A client's own max_tokens is shared as it chose (a budget may take all but one);
    # one it did not choose (the default, or a cap) leaves the answer half: Gemini CLI asks
    # for 8,192 tokens of thinking and no output limit, and a budget just under
    # default_max_tokens could leave it a token.
    chosen = chat.max_tokens is not None and chat.max_tokens <= max_tokens
    thinking = _anthropic_thinking(chat, messages,
                                   max_tokens - 1 if chosen else max_tokens // 2)
    if thinking is not None:
        payload["thinking"] = thinking
    if chat.tools and chat.tool_choice != "none":
        payload["tools"] = [{"name": t.name, "description": t.description,
                             "input_schema": t.schema if t.schema.get("type") == "object"
                             else {"type": "object", "properties": {}}} for t in chat.tools]
        # Thinking allows only automatic tool choice.
        choice: Dict[str, Any] = {"type": "auto"}
        if chat.tool_choice == "required" and thinking is None:
            choice = {"type": "tool", "name": chat.allowed_tools[0]} \
                if len(chat.allowed_tools) == 1 else {"type": "any"}
        if chat.parallel_tool_calls is False:
            choice["disable_parallel_tool_use"] = True
        payload["tool_choice"] = choice
    if thinking is None:   # with thinking on, Anthropic takes no sampling changes
        if chat.temperature is not None:
            payload["temperature"] = min(max(chat.temperature, 0.0), 1.0)
        if chat.top_p is not None:
            payload["top_p"] = chat.top_p
        if chat.top_k is not None:
            payload["top_k"] = chat.top_k
    if chat.stop:
        payload["stop_sequences"] = chat.stop
    if chat.user:
        payload["metadata"] = {"user_id": chat.user}
    if chat.stream:
        payload["stream"] = True
    payload.update(options["extra_body"])
    return payload


def encode_anthropic_count_request(chat: Chat, model: str) -> Dict[str, Any]:
    payload = encode_anthropic_request(dataclasses.replace(chat, stream=False, thinking=None),
                                       model)
    return {k: v for k, v in payload.items() if k in ("model", "messages", "system", "tools")}


# -- replies: upstream -> neutral ------------------------------------------------------------

def decode_anthropic_count_response(payload: Any) -> int:
    if not isinstance(payload, dict) or not isinstance(payload.get("input_tokens"), int) or \
            isinstance(payload["input_tokens"], bool):
        raise UpstreamError("the upstream count_tokens reply has no input_tokens", status=502)
    return payload["input_tokens"]


def decode_anthropic_usage(usage: Any, previous: Optional[Usage] = None
                           ) -> Optional[Usage]:
    """`previous` brought up to date; as it was (None at first) when `usage` counts
    nothing: an Anthropic-compatible upstream that reports no usage gets its counts
    estimated, not shown as zero."""
    usage = fields_of(usage)
    given_input = any(usage.get(k) is not None for k in (
        "input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))
    if not given_input and usage.get("output_tokens") is None:
        return previous
    out = copy.copy(previous) if previous else Usage(input_missing=True)
    reported = [tokens_of(usage.get(k)) for k in (
        "input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")]
    # A later 0 (some compatible servers' message_delta says so) undoes no count.
    if given_input and (any(reported) or out.input_missing):
        out.cached_tokens = reported[1] or out.cached_tokens
        out.cache_write_tokens = reported[2] or out.cache_write_tokens
        out.input_tokens = reported[0] + out.cached_tokens + out.cache_write_tokens
        out.input_missing = False
    if usage.get("output_tokens") is not None:   # cumulative in message_delta
        out.output_tokens = tokens_of(usage["output_tokens"])
    return out


def _anthropic_block_parts(block: Dict[str, Any]) -> List[Part]:
    kind = block.get("type")
    if kind == "text":
        return [Part(TEXT, text=reply_text(block.get("text"), "text"))]
    if kind == "thinking":
        return [Part(THINKING, text=reply_text(block.get("thinking"), "thinking"),
                     signature=reply_text(block.get("signature"), "signature"),
                     origin="anthropic")]
    if kind == "redacted_thinking":
        return [Part(THINKING, origin="anthropic",
                     extra={"redacted": reply_text(block.get("data"), "data")})]
    if kind == "tool_use":
        return [Part(TOOL_CALL, id=text_of(block.get("id")) or new_id("toolu_"),
                     name=reply_text(block.get("name"), "tool_use.name"),
                     args=reply_object(block.get("input"), "tool_use.input"))]
    return []   # server tool blocks have no counterpart


def decode_anthropic_response(payload: Any, model: str = "") -> Reply:
    payload = reply_object(payload, "the reply")
    if not isinstance(payload.get("content"), list):
        raise UpstreamError("the upstream reply has no content: %s"
                            % clip(json.dumps(payload), 300), status=502)
    parts = [p for block in payload["content"]
             for p in _anthropic_block_parts(reply_object(block, "a content block"))]
    finish = Finish(ANTHROPIC_STOP_REASONS.get(text_of(payload.get("stop_reason")), STOP),
                    decode_anthropic_usage(payload.get("usage")),
                    text_of(payload.get("stop_sequence")))
    return Reply(text_of(payload.get("id")) or new_id("msg_"),
                 text_of(payload.get("model")) or model, [Choice(parts, finish)], finish.usage)


def anthropic_stream_error(data: str) -> Optional[UpstreamError]:
    if '"error"' not in data:
        return None
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if isinstance(event, dict) and event.get("type") == "error":
        return decode_anthropic_error(None, event)
    return None


def decode_anthropic_stream(raw_events: Iterable[Tuple[str, str]]) -> Iterator[Any]:
    """Messages SSE events -> neutral events; tool_use inputs are gathered and emitted
    whole at their block's end; a stream without message_stop raises."""
    usage: Optional[Usage] = None   # (None to the end: estimated)
    stop_reason, stop_sequence = None, ""
    blocks: Dict[Any, Dict[str, Any]] = {}
    malformed = False
    for raw in raw_events:
        if raw is IDLE:
            yield raw
            continue
        event = reply_object(stream_event_json(raw[1]), "a stream event")
        kind = event.get("type")
        index = event.get("index", 0)
        index = index if isinstance(index, int) else 0
        if kind == "error":
            raise decode_anthropic_error(None, event)
        if kind == "message_start":
            usage = decode_anthropic_usage(fields_of(event.get("message")).get("usage"), usage)
        elif kind == "content_block_start":
            block = reply_object(event.get("content_block"), "content_block")
            blocks[index] = {"type": block.get("type"), "id": text_of(block.get("id")),
                             "name": reply_text(block.get("name"), "content_block.name"),
                             "json": []}
            if block.get("type") == "redacted_thinking":
                yield Part(THINKING, origin="anthropic",
                           extra={"redacted": reply_text(block.get("data"), "data")})
            elif block.get("type") == "text" and reply_text(block.get("text"), "text"):
                yield Part(TEXT, text=block["text"])
        elif kind == "content_block_delta":
            delta = reply_object(event.get("delta"), "delta")
            state = blocks.get(index, {"json": []})
            if delta.get("type") == "text_delta":
                text = reply_text(delta.get("text"), "text_delta.text")
                if text:
                    yield Part(TEXT, text=text)
            elif delta.get("type") == "thinking_delta":
                text = reply_text(delta.get("thinking"), "thinking_delta.thinking")
                if text:
                    yield Part(THINKING, text=text, origin="anthropic")
            elif delta.get("type") == "signature_delta":
                yield Part(THINKING, origin="anthropic", signature=reply_text(
                    delta.get("signature"), "signature_delta.signature"))
            elif delta.get("type") == "input_json_delta":
                state["json"].append(reply_text(delta.get("partial_json"), "partial_json"))
        elif kind == "content_block_stop":
            state = blocks.pop(index, {})
            if state.get("type") == "tool_use":
                text = "".join(state["json"])
                try:
                    args = strict_json(text) if text.strip() else {}
                except (ValueError, RecursionError):
                    args = None
                if not isinstance(args, dict):
                    malformed = True
                    continue
                yield Part(TOOL_CALL, id=state.get("id") or new_id("toolu_"),
                           name=state.get("name") or "", args=args)
        elif kind == "message_delta":
            delta = fields_of(event.get("delta"))
            stop_reason = text_of(delta.get("stop_reason")) or stop_reason
            stop_sequence = text_of(delta.get("stop_sequence")) or stop_sequence
            usage = decode_anthropic_usage(event.get("usage"), usage)
        elif kind == "message_stop":
            reason = MALFORMED_TOOL_CALL if malformed else \
                ANTHROPIC_STOP_REASONS.get(stop_reason, STOP)
            yield Finish(reason, usage, stop_sequence)
            return
    raise UpstreamError("the upstream stream ended before message_stop", status=502)


def decode_anthropic_error(status: Optional[int], payload: Any,
                           headers: Optional[Dict[str, str]] = None) -> UpstreamError:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = error.get("message") or ""
        kind = error.get("type")
        status = status or ANTHROPIC_ERROR_STATUS.get(kind if isinstance(kind, str) else "",
                                                      502)
    else:
        message = payload
    if not isinstance(message, str):
        message = json.dumps(message, ensure_ascii=False)
    status = status if isinstance(status, int) and 400 <= status <= 599 else 502
    return UpstreamError(clip(message.strip(), 2000) or "HTTP %s with no message" % status,
                         status=status,
                         retry_after=parse_retry_after((headers or {}).get("retry-after")))


# -- replies: neutral -> client ---------------------------------------------------------------

def anthropic_usage(usage: Usage) -> Dict[str, Any]:
    return {"input_tokens": max(0, usage.input_tokens - usage.cached_tokens -
                                usage.cache_write_tokens),
            "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": usage.cached_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens}


def _anthropic_client_blocks(parts: List[Part]) -> List[Dict[str, Any]]:
    """Neutral reply parts -> content blocks for an Anthropic client. Reasoning from other
    providers becomes a thinking block whose signature is a carrier; a Gemini signature
    on a tool call rides in the thinking block before it (made empty if there is none)."""
    blocks: List[Dict[str, Any]] = []
    carried: List[Part] = []    # the foreign reasoning of the thinking block being built

    def close_thinking() -> None:
        if carried:
            blocks.append({"type": "thinking", "thinking": "".join(p.text for p in carried),
                           "signature": pack_thinking(carried, with_text=False)})
            carried.clear()
    for part in parts:
        if part.type == THINKING and part.origin == "anthropic":
            close_thinking()
            blocks.append({"type": "redacted_thinking", "data": part.extra["redacted"]}
                          if part.extra.get("redacted") else
                          {"type": "thinking", "thinking": part.text,
                           "signature": part.signature})
        elif part.type == THINKING:
            append_delta(carried, part)
        elif part.type == TOOL_CALL:
            if part.origin == "gemini" and part.signature:
                append_delta(carried, Part(THINKING, signature=part.signature, origin="gemini"))
            close_thinking()
            blocks.append({"type": "tool_use", "id": anthropic_tool_id(part.id),
                           "name": part.name, "input": part.args or {}})
        elif part.type == TEXT and part.text:
            close_thinking()
            blocks.append({"type": "text", "text": part.text})
        elif part.type == MEDIA and part.data:
            close_thinking()
            blocks.append(_anthropic_media(part))
    close_thinking()
    return blocks


def _anthropic_stop(finish: Finish) -> Tuple[str, Optional[str]]:
    if finish.reason == STOP and finish.stop_sequence:
        return "stop_sequence", finish.stop_sequence
    return ANTHROPIC_FINISH_REASONS[finish.reason], None


def encode_anthropic_response(reply: Reply, model: str, message_id: str,
                              options: Optional[ReplyOptions] = None) -> Dict[str, Any]:
    """Neutral reply -> Message (Anthropic has one choice: the first)."""
    choice = reply.choices[0]
    stop_reason, stop_sequence = _anthropic_stop(choice.finish)
    return {"id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": _anthropic_client_blocks(choice.parts), "stop_reason": stop_reason,
            "stop_sequence": stop_sequence, "usage": anthropic_usage(reply.usage or Usage())}


def anthropic_stream_error_event(error: ProxyError) -> bytes:
    """An Anthropic client's in-stream error (the SDK raises it)."""
    return sse_event("error", json_compact({"type": "error", "error": {
        "type": ANTHROPIC_ERROR_TYPES.get(error.status, "api_error"),
        "message": error.message}}))


def encode_anthropic_stream(events: Iterable[Any], model: str, message_id: str,
                            options: Optional[ReplyOptions] = None) -> Iterator[bytes]:
    """Neutral events (one choice) -> the Messages event sequence: message_start, ping,
    one start/delta/stop run per content block, message_delta, message_stop. Thinking
    from other providers closes with a carrier signature_delta."""
    def event(name: str, payload: Dict[str, Any]) -> bytes:
        return sse_event(name, json_compact(dict({"type": name}, **payload)))

    index = -1
    open_kind = ""               # "text" | "thinking" | "foreign" (thinking we must sign)
    carried: List[Part] = []

    def start(kind: str, block: Dict[str, Any]) -> bytes:
        nonlocal index, open_kind
        index += 1
        open_kind = kind
        return event("content_block_start", {"index": index, "content_block": block})

    def stop() -> Iterator[bytes]:
        nonlocal open_kind
        if open_kind == "foreign":
            yield event("content_block_delta", {"index": index, "delta": {
                "type": "signature_delta",
                "signature": pack_thinking(carried, with_text=False)}})
            carried.clear()
        if open_kind:
            yield event("content_block_stop", {"index": index})
        open_kind = ""

    yield event("message_start", {"message": {
        "id": message_id, "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0}}})
    yield event("ping", {})
    for part in events:
        if part is IDLE:
            yield part
            continue
        if isinstance(part, Finish):
            yield from stop()
            stop_reason, stop_sequence = _anthropic_stop(part)
            yield event("message_delta", {
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": anthropic_usage(part.usage or Usage())})
            yield event("message_stop", {})
            return
        if part.type == THINKING and part.extra.get("redacted"):
            yield from stop()
            yield start("", {"type": "redacted_thinking", "data": part.extra["redacted"]})
            yield event("content_block_stop", {"index": index})
        elif part.type == THINKING:
            kind = "thinking" if part.origin == "anthropic" else "foreign"
            if open_kind != kind:
                yield from stop()
                yield start(kind, {"type": "thinking", "thinking": "", "signature": ""})
            if part.text:
                yield event("content_block_delta", {"index": index, "delta": {
                    "type": "thinking_delta", "thinking": part.text}})
            if kind == "foreign":
                append_delta(carried, dataclasses.replace(part, text=""))
            elif part.signature:
                yield event("content_block_delta", {"index": index, "delta": {
                    "type": "signature_delta", "signature": part.signature}})
                yield from stop()
        elif part.type == TEXT and part.text:
            if open_kind != "text":
                yield from stop()
                yield start("text", {"type": "text", "text": ""})
            yield event("content_block_delta", {"index": index, "delta": {
                "type": "text_delta", "text": part.text}})
        elif part.type == TOOL_CALL:
            if part.origin == "gemini" and part.signature:
                if open_kind != "foreign":
                    yield from stop()
                    yield start("foreign", {"type": "thinking", "thinking": "",
                                            "signature": ""})
                append_delta(carried, Part(THINKING, signature=part.signature,
                                           origin="gemini"))
            yield from stop()
            yield start("", {"type": "tool_use", "id": anthropic_tool_id(part.id),
                             "name": part.name, "input": {}})
            yield event("content_block_delta", {"index": index, "delta": {
                "type": "input_json_delta",
                "partial_json": json.dumps(part.args or {}, ensure_ascii=False)}})
            yield event("content_block_stop", {"index": index})
    raise UpstreamError("the reply ended before it was finished", status=502)


def encode_anthropic_error(error: ProxyError) -> Tuple[int, List[Tuple[str, str]], bytes]:
    status = error.status
    headers = [("content-type", "application/json")]
    if error.retry_after is not None:
        headers.append(("retry-after", str(int(math.ceil(error.retry_after)))))
    return status, headers, json_bytes({"type": "error", "error": {
        "type": ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500
                                          else "invalid_request_error"),
        "message": error.message}})


def anthropic_model_list(names: List[str]) -> Dict[str, Any]:
    data = [anthropic_model_info(n) for n in names]
    return {"data": data, "has_more": False, "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None}


def anthropic_model_info(name: str) -> Dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name,
            "created_at": "1970-01-01T00:00:00Z", "lifecycle": "active"}


# ---- 9. Dialect: Gemini --------------------------------------------------------------------
#
# Client side: what Gemini CLI and the google-genai SDKs send, and the strict shapes they
# parse: single-line `data: <json>` events with ASCII-escaped JSON, no comments and no
# [DONE]; each functionCall whole and exactly once; no empty text parts; finishReason and
# usageMetadata together on the last chunk.

GEMINI_REQUEST_FIELDS = frozenset((
    "contents", "systemInstruction", "tools", "toolConfig", "safetySettings",
    "generationConfig", "cachedContent", "labels", "model", "sessionId"))
GEMINI_GENERATION_FIELDS = frozenset((
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences",
    "presencePenalty", "frequencyPenalty", "seed", "responseMimeType", "responseSchema",
    "responseJsonSchema", "responseLogprobs", "logprobs", "responseModalities",
    "mediaResolution", "speechConfig", "thinkingConfig", "imageConfig", "routingConfig",
    "modelSelectionConfig", "audioTimestamp", "enableEnhancedCivicAnswers",
    "enableAffectiveDialog"))
GEMINI_PART_FIELDS = frozenset((
    "text", "thought", "thoughtSignature", "inlineData", "fileData", "functionCall",
    "functionResponse", "executableCode", "codeExecutionResult", "videoMetadata",
    "mediaResolution", "partMetadata"))
GEMINI_DECLARATION_FIELDS = frozenset((
    "name", "description", "parameters", "parametersJsonSchema", "response",
    "responseJsonSchema", "behavior"))

GEMINI_FINISH_REASONS = {         # neutral -> finishReason (a turn of tool calls is STOP)
    STOP: "STOP", LENGTH: "MAX_TOKENS", TOOL_CALLS: "STOP", CONTENT_FILTER: "SAFETY",
    MALFORMED_TOOL_CALL: "MALFORMED_FUNCTION_CALL",
}


def gemini_finish_reason(finish: Finish) -> str:
    """A finish as a Gemini client is told it: a tool call gone wrong as a Gemini upstream
    named it (UNEXPECTED_TOOL_CALL, say), as talking to Gemini itself would have."""
    if finish.reason == MALFORMED_TOOL_CALL and finish.detail:
        return finish.detail
    return GEMINI_FINISH_REASONS.get(finish.reason, "STOP")


GEMINI_STATUS_NAMES = {           # HTTP status -> google.rpc status name
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE",
    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}

GEMINI_UNKNOWN = ('Invalid JSON payload received. Unknown name "%%s" at \'%s\': '
                  'Cannot find field.')

GEMINI_TOOL_MODES = {"AUTO": "auto", "VALIDATED": "auto", "MODE_UNSPECIFIED": "auto",
                     "ANY": "required", "NONE": "none"}

# JSON Schema keywords whose values are schemas (maps of them, lists of them, or one).
SCHEMA_MAP_KEYWORDS = ("properties", "patternProperties", "$defs", "definitions",
                       "dependentSchemas")
SCHEMA_LIST_KEYWORDS = ("anyOf", "oneOf", "allOf", "prefixItems")
SCHEMA_ONE_KEYWORDS = ("items", "additionalProperties", "not", "if", "then", "else",
                       "contains", "propertyNames", "additionalItems",
                       "unevaluatedProperties", "unevaluatedItems")


def gemini_schema_to_json_schema(schema: Any) -> Any:
    """Gemini `Schema` (OpenAPI subset: upper-case types, nullable, propertyOrdering) or
    Gemini CLI's `parametersJsonSchema` (JSON Schema with its non-standard `nullable`)
    -> plain JSON Schema that OpenAI-compatible and Anthropic servers take."""
    if isinstance(schema, list):
        return [gemini_schema_to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: Dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            out[key] = value.lower() if isinstance(value, str) else \
                [v.lower() if isinstance(v, str) else v for v in value] \
                if isinstance(value, list) else value
        elif key in SCHEMA_MAP_KEYWORDS and isinstance(value, dict):
            out[key] = {name: gemini_schema_to_json_schema(v) for name, v in value.items()}
        elif key in SCHEMA_LIST_KEYWORDS and isinstance(value, list):
            out[key] = [gemini_schema_to_json_schema(v) for v in value]
        elif key in SCHEMA_ONE_KEYWORDS:
            out[key] = gemini_schema_to_json_schema(value)
        elif key == "example":
            out["examples"] = [value]
        elif key in ("propertyOrdering", "nullable") or (key == "format" and value == "enum"):
            continue
        else:
            out[key] = value
    if schema.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        elif isinstance(out.get("anyOf"), list):
            out["anyOf"] = out["anyOf"] + [{"type": "null"}]
    return out


# Where reasoning a Gemini client carries in a thoughtSignature came from.
FOREIGN_ORIGINS = ("openai", "anthropic", RESPONSES_ORIGIN)


def _gemini_signature(part: Part, signature: str) -> List[Part]:
    """Attach a thoughtSignature to its part; a proxy carrier becomes the reasoning parts
    it holds, placed before the part; Google's skip value means no signature."""
    carried = unpack_thinking(signature)
    if carried:
        return carried + [part]
    # A carrier that did not unpack is no provider's signature: it is dropped.
    if signature and signature != GEMINI_SKIP_SIGNATURE and not is_carrier(signature):
        part.signature, part.origin = signature, "gemini"
    return [part]


def _gemini_media(raw: Dict[str, Any], where: str) -> Part:
    raw = camel_keys(expect(raw, dict, where, "an object"))
    mime = expect_text(raw.get("mimeType"), where + ".mimeType")
    if "fileUri" in raw:
        return Part(MEDIA, mime=mime, url=expect_text(raw["fileUri"], where + ".fileUri"))
    return Part(MEDIA, mime=mime, data=expect_text(raw.get("data"), where + ".data"))


def _gemini_tool_result(raw: Dict[str, Any], where: str) -> Part:
    raw = camel_keys(expect(raw, dict, where, "an object"))
    response = raw.get("response") or {}
    expect(response, dict, where + ".response", "an object")
    # Gemini's documented keys: "output" for the result, "error" for a failure.
    if set(response) == {"output"} and isinstance(response["output"], str):
        content, is_error = response["output"], False
    elif set(response) == {"error"}:
        error = response["error"]
        content, is_error = error if isinstance(error, str) else json.dumps(error), True
    else:
        content, is_error = json.dumps(response, ensure_ascii=False), False
    parts = [Part(TEXT, text=content)]
    for j, media in enumerate(expect(raw.get("parts") or [], list, where + ".parts", "a list")):
        media = camel_keys(expect(media, dict, "%s.parts[%d]" % (where, j), "a part"))
        key = "inlineData" if "inlineData" in media else "fileData"
        parts.append(_gemini_media(media.get(key), "%s.parts[%d].%s" % (where, j, key)))
    return Part(TOOL_RESULT, id=expect_text(raw.get("id"), where + ".id"),
                name=expect_text(raw.get("name"), where + ".name"), content=parts,
                is_error=is_error)


def _gemini_part(raw: Any, where: str, strict: bool) -> List[Part]:
    raw = camel_keys(expect(raw, dict, where, "a part object"))
    if strict:
        reject_unknown(raw, GEMINI_PART_FIELDS, GEMINI_UNKNOWN % where)
    signature = expect_text(raw.get("thoughtSignature"), where + ".thoughtSignature")
    if "text" in raw:
        text = expect(raw["text"], str, where + ".text", "text")
        if raw.get("thought"):
            return _gemini_signature(Part(THINKING, text=text), signature)
        return _gemini_signature(Part(TEXT, text=text), signature)
    if "inlineData" in raw or "fileData" in raw:
        key = "inlineData" if "inlineData" in raw else "fileData"
        return _gemini_signature(_gemini_media(raw[key], where + "." + key), signature)
    if "functionCall" in raw:
        call = camel_keys(expect(raw["functionCall"], dict, where + ".functionCall", "an object"))
        args = call.get("args") or {}
        expect(args, dict, where + ".functionCall.args", "an object")
        name = expect(call.get("name", ""), str, where + ".functionCall.name", "a name")
        return _gemini_signature(Part(TOOL_CALL, id=expect_text(
            call.get("id"), where + ".functionCall.id"), name=name, args=args), signature)
    if "functionResponse" in raw:
        return [_gemini_tool_result(raw["functionResponse"], where + ".functionResponse")]
    if "executableCode" in raw:
        code = camel_keys(expect(raw["executableCode"], dict, where + ".executableCode",
                                 "an object"))
        return [Part(TEXT, text="```%s\n%s\n```" % (str(code.get("language", "")).lower(),
                                                    code.get("code", "")))]
    if "codeExecutionResult" in raw:
        result = camel_keys(expect(raw["codeExecutionResult"], dict,
                                   where + ".codeExecutionResult", "an object"))
        return [Part(TEXT, text=str(result.get("output", "")))]
    return []


def _pair_gemini_tool_results(messages: List[Message]) -> None:
    """Give every call an id and every response its call's id: by id when the client sent
    one, else the first unanswered call of that name in the model turn before it
    (Gemini allows both to go without ids). Calls left unanswered get an error result
    and responses with no call become text, so every upstream sees a consistent turn.
    Linear in the number of parts: a turn of thousands of calls costs no more than that."""
    calls: List[Part] = []
    for turn, message in enumerate(messages):
        if message.role == "assistant":
            calls = [p for p in message.parts if p.type == TOOL_CALL]
            for k, call in enumerate(calls):
                call.id = call.id or "call_%d_%d" % (turn, k)
            continue
        by_id = {call.id: call for call in reversed(calls)}     # the first of an id wins
        by_name: Dict[str, collections.deque] = {}
        for call in calls:
            by_name.setdefault(call.name, collections.deque()).append(call)
        taken: set = set()

        def first_unanswered(queue: Optional[collections.deque]) -> Optional[Part]:
            while queue:
                call = queue.popleft()
                if id(call) not in taken:
                    return call
            return None
        answered: List[Part] = []
        parts: List[Part] = []
        for part in message.parts:
            if part.type != TOOL_RESULT:
                parts.append(part)
                continue
            call = by_id.get(part.id) if part.id else None
            if call is None or id(call) in taken:
                call = first_unanswered(by_name.get(part.name))
            if call is None:
                parts.append(Part(TEXT, text="[result of %s]\n%s"
                                  % (part.name or "a tool", tool_result_text(part))))
                continue
            taken.add(id(call))
            part.id, part.name = call.id, part.name or call.name
            answered.append(part)
        missing = [Part(TOOL_RESULT, id=c.id, name=c.name, is_error=True,
                        content=[Part(TEXT, text="the client sent no result for this call")])
                   for c in calls if id(c) not in taken]
        calls = []
        message.parts = answered + missing + parts


def _gemini_number(config: Dict[str, Any], key: str, integer: bool = False) -> Any:
    value = config.get(key)
    if value is None:
        return None
    kind = int if integer else (int, float)
    return expect(value, kind, "generationConfig." + key, "a whole number" if integer
                   else "a number")


def _gemini_generation_config(chat: Chat, raw: Any, strict: bool) -> None:
    config = camel_keys(expect(raw, dict, "generationConfig", "an object"))
    if strict:
        reject_unknown(config, GEMINI_GENERATION_FIELDS, GEMINI_UNKNOWN % "generationConfig")
    chat.temperature = _gemini_number(config, "temperature")
    chat.top_p = _gemini_number(config, "topP")
    chat.top_k = _gemini_number(config, "topK", integer=True)
    chat.max_tokens = _gemini_number(config, "maxOutputTokens", integer=True)
    chat.presence_penalty = _gemini_number(config, "presencePenalty")
    chat.frequency_penalty = _gemini_number(config, "frequencyPenalty")
    chat.seed = _gemini_number(config, "seed", integer=True)
    chat.n = check_choices(_gemini_number(config, "candidateCount", integer=True) or 1,
                           "generationConfig.candidateCount")
    chat.stop = expect_strings(config.get("stopSequences"), "generationConfig.stopSequences")
    if expect_text(config.get("responseMimeType"), "generationConfig.responseMimeType") == \
            "application/json":
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        chat.response_format = ResponseFormat(
            gemini_schema_to_json_schema(schema) if isinstance(schema, dict) else None)
    thinking = config.get("thinkingConfig")
    if thinking is not None:
        thinking = camel_keys(expect(thinking, dict, "generationConfig.thinkingConfig",
                                      "an object"))
        budget = thinking.get("thinkingBudget")
        if budget is not None:
            expect(budget, int, "generationConfig.thinkingConfig.thinkingBudget", "a number")
        level = expect_text(thinking.get("thinkingLevel"),
                            "generationConfig.thinkingConfig.thinkingLevel")
        chat.thinking = Thinking(budget=budget, effort=level.lower(),
                                 include_thoughts=bool(thinking.get("includeThoughts")))


def decode_gemini_request(payload: Any, model: str = "", strict: bool = True) -> Chat:
    """GenerateContentRequest (camelCase or the Python SDK's snake_case) -> neutral Chat.
    Raises ClientError naming the offending field."""
    payload = camel_keys(expect(payload, dict, "request", "a JSON object"))
    if strict:
        reject_unknown(payload, GEMINI_REQUEST_FIELDS, GEMINI_UNKNOWN % "request")
    contents = payload.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ClientError("contents is not specified")
    chat = Chat(model=model)
    system = payload.get("systemInstruction")
    if isinstance(system, str):
        chat.system = [Part(TEXT, text=system)]
    elif system is not None:
        system = expect(system, dict, "systemInstruction", "a Content object")
        chat.system = [p for j, raw in enumerate(expect(system.get("parts") or [], list,
                                                        "systemInstruction.parts", "a list"))
                       for p in _gemini_part(raw, "systemInstruction.parts[%d]" % j, strict)
                       if p.type == TEXT]
    for i, content in enumerate(contents):
        content = expect(content, dict, "contents[%d]" % i, "a Content object")
        role = content.get("role") or "user"
        if role not in ("user", "model"):
            raise ClientError("contents[%d].role: Please use a valid role: user, model." % i)
        raw_parts = expect(content.get("parts") or [], list, "contents[%d].parts" % i, "a list")
        parts = [p for j, raw in enumerate(raw_parts)
                 for p in _gemini_part(raw, "contents[%d].parts[%d]" % (i, j), strict)]
        if any(p.type == THINKING and p.origin in FOREIGN_ORIGINS for p in parts):
            # A carrier holds the turn's reasoning whole; the thought parts a client kept
            # beside it are the same text, shown to it, and would go upstream twice.
            parts = [p for p in parts if p.type != THINKING or p.origin]
        chat.messages.append(Message("user" if role == "user" else "assistant", parts))
    _pair_gemini_tool_results(chat.messages)
    make_tool_ids_unique(chat.messages)

    for i, tool in enumerate(expect(payload.get("tools") or [], list, "tools", "a list")):
        tool = camel_keys(expect(tool, dict, "tools[%d]" % i, "a Tool object"))
        declarations = tool.pop("functionDeclarations", None) or []
        for j, decl in enumerate(expect(declarations, list, "tools[%d].functionDeclarations"
                                         % i, "a list")):
            where = "tools[%d].functionDeclarations[%d]" % (i, j)
            decl = camel_keys(expect(decl, dict, where, "a FunctionDeclaration"))
            if strict:
                reject_unknown(decl, GEMINI_DECLARATION_FIELDS, GEMINI_UNKNOWN % where)
            name = decl.get("name")
            if not isinstance(name, str) or not name:
                raise ClientError("%s.name: a function needs a name" % where)
            schema = decl.get("parametersJsonSchema") or decl.get("parameters")
            chat.tools.append(Tool(name, expect_text(decl.get("description"),
                                                     where + ".description"),
                                   gemini_schema_to_json_schema(schema)
                                   if isinstance(schema, dict)
                                   else {"type": "object", "properties": {}}))
        if tool:   # googleSearch, codeExecution, urlContext: only Gemini runs these
            chat.extra.setdefault("gemini_tools", []).append(tool)
    tool_config = payload.get("toolConfig")
    if tool_config:
        calling = camel_keys(expect(camel_keys(expect(tool_config, dict, "toolConfig",
                                                      "an object"))
                                    .get("functionCallingConfig") or {}, dict,
                                    "toolConfig.functionCallingConfig", "an object"))
        mode = expect_text(calling.get("mode"), "toolConfig.functionCallingConfig.mode") \
            .upper() or "AUTO"
        if mode not in GEMINI_TOOL_MODES:
            raise ClientError("toolConfig.functionCallingConfig.mode: unknown mode %r" % mode)
        chat.tool_choice = GEMINI_TOOL_MODES[mode]
        chat.allowed_tools = expect_strings(calling.get("allowedFunctionNames"),
                                            "toolConfig.functionCallingConfig."
                                            "allowedFunctionNames")
    if payload.get("safetySettings"):
        chat.extra["safety_settings"] = expect(payload["safetySettings"], list,
                                               "safetySettings", "a list")
    if payload.get("generationConfig") is not None:
        _gemini_generation_config(chat, payload["generationConfig"], strict)
    return chat


def gemini_usage(usage: Usage) -> Dict[str, Any]:
    out = {"promptTokenCount": usage.input_tokens,
           "candidatesTokenCount": max(0, usage.output_tokens - usage.reasoning_tokens),
           "totalTokenCount": usage.input_tokens + usage.output_tokens}
    if usage.reasoning_tokens:
        out["thoughtsTokenCount"] = usage.reasoning_tokens
    if usage.cached_tokens:
        out["cachedContentTokenCount"] = usage.cached_tokens
    return out


class _GeminiPartWriter:
    """Turns neutral parts into Gemini parts, for one candidate. Reasoning that came from
    a non-Gemini upstream is gathered and packed into the first functionCall's
    thoughtSignature, so it comes back with the history (DeepSeek and Kimi need their
    reasoning on tool-call turns, Anthropic its signed thinking blocks)."""

    def __init__(self, include_thoughts: bool):
        self.include_thoughts = include_thoughts
        self.carried: List[Part] = []
        self.carrier_placed = False

    def part(self, part: Part) -> Optional[Dict[str, Any]]:
        out: Optional[Dict[str, Any]] = None
        if part.type == THINKING:
            if part.origin != "gemini":
                self.carried.append(part)
            if self.include_thoughts and part.text:
                out = {"text": part.text, "thought": True}
        elif part.type == TEXT and part.text:
            out = {"text": part.text}
        elif part.type == MEDIA:
            out = {"fileData": {"mimeType": part.mime, "fileUri": part.url}} if part.url \
                else {"inlineData": {"mimeType": part.mime, "data": part.data}}
        elif part.type == TOOL_CALL:
            call = {"name": part.name, "args": part.args or {}}
            if part.id:
                call["id"] = part.id
            out = {"functionCall": call}
            if not self.carrier_placed and self.carried:
                out["thoughtSignature"] = pack_thinking(merge_deltas(self.carried))
                self.carrier_placed = True
        if part.origin == "gemini" and part.signature:
            # Gemini signs any part, an empty text part included; the signature must
            # go back unchanged, so it is never dropped with the part's empty text.
            out = out if out is not None else {"text": ""}
            out["thoughtSignature"] = part.signature
        return out


def _gemini_chunk(parts: List[Dict[str, Any]], model: str, response_id: str,
                  finish: Optional[Finish] = None, index: int = 0) -> Dict[str, Any]:
    candidate: Dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": index}
    body: Dict[str, Any] = {"candidates": [candidate]}
    if finish is not None:
        candidate["finishReason"] = gemini_finish_reason(finish)
        body["usageMetadata"] = gemini_usage(finish.usage or Usage())
    body["modelVersion"] = model
    body["responseId"] = response_id
    return body


def encode_gemini_response(reply: Reply, model: str, response_id: str,
                           options: Optional[ReplyOptions] = None) -> Dict[str, Any]:
    """Neutral reply -> GenerateContentResponse."""
    options = options or ReplyOptions()
    candidates = []
    for index, choice in enumerate(reply.choices):
        writer = _GeminiPartWriter(options.include_thoughts)
        parts = [p for p in map(writer.part, choice.parts) if p is not None]
        candidates.append({"content": {"role": "model", "parts": parts},
                           "finishReason": gemini_finish_reason(choice.finish),
                           "index": index})
    return {"candidates": candidates, "usageMetadata": gemini_usage(reply.usage or Usage()),
            "modelVersion": model or reply.model, "responseId": response_id}


def encode_gemini_stream(events: Iterable[Any], model: str, response_id: str,
                         options: Optional[ReplyOptions] = None) -> Iterator[bytes]:
    """Neutral events -> streamGenerateContent bytes: SSE (alt=sse) or the JSON-array
    form, a candidate per choice. Tool calls wait to share one chunk with their choice's
    finish. A stream that breaks is cut without finishReason: Gemini CLI then retries
    the turn (it has no in-band error event to parse)."""
    options = options or ReplyOptions()
    writers: Dict[int, _GeminiPartWriter] = {}
    held_calls: Dict[int, List[Dict[str, Any]]] = {}
    first = True
    finished = False

    def frame(body: Dict[str, Any]) -> bytes:
        nonlocal first
        text = json_compact(body)
        if options.sse:
            return sse_data(text)
        prefix, first = ("[" if first else ",\r\n"), False
        return (prefix + text).encode("ascii")

    for event in events:
        if event is IDLE:
            yield event
            continue
        index = event.choice
        if isinstance(event, Finish):
            yield frame(_gemini_chunk(held_calls.pop(index, []), model, response_id, event,
                                      index))
            finished = True
            continue
        writer = writers.get(index)
        if writer is None:
            writer = writers[index] = _GeminiPartWriter(options.include_thoughts)
        part = writer.part(event)
        if part is None:
            continue
        if "functionCall" in part:
            held_calls.setdefault(index, []).append(part)
            continue
        if held_calls.get(index):
            yield frame(_gemini_chunk(held_calls.pop(index), model, response_id, None, index))
        yield frame(_gemini_chunk([part], model, response_id, None, index))
    if not finished:
        raise UpstreamError("the reply ended before it was finished", status=502)
    if not options.sse:
        yield b"]"


def encode_gemini_error(error: ProxyError) -> Tuple[int, List[Tuple[str, str]], bytes]:
    """An error in Google's shape, with RetryInfo when the client should come back later."""
    status = 503 if error.status == 529 else error.status   # Anthropic's "overloaded"
    body: Dict[str, Any] = {"code": status, "message": error.message,
                            "status": GEMINI_STATUS_NAMES.get(status, "INVALID_ARGUMENT"
                                                              if status < 500 else "INTERNAL")}
    details = []
    headers = [("content-type", "application/json; charset=utf-8")]
    if error.retry_after is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": ("%.3f" % error.retry_after).rstrip("0").rstrip(".")
                        + "s"})
        headers.append(("retry-after", str(int(math.ceil(error.retry_after)))))
    if error.reason:
        details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": error.reason, "domain": "gemini-proxy"})
    if details:
        body["details"] = details
    return status, headers, json_bytes({"error": body})


def decode_gemini_count_request(payload: Any, model: str = "", strict: bool = True) -> Chat:
    """countTokens body ({contents} or {generateContentRequest}) -> the prompt to count."""
    payload = camel_keys(expect(payload, dict, "request", "a JSON object"))
    if strict:
        reject_unknown(payload, frozenset(("contents", "generateContentRequest")),
                       GEMINI_UNKNOWN % "request")
    request = payload.get("generateContentRequest")
    if request is None:
        request = {"contents": payload.get("contents") or []}
    request = dict(expect(request, dict, "generateContentRequest", "an object"))
    request.pop("model", None)
    if not request.get("contents"):
        return Chat(model=model)
    return decode_gemini_request(request, model, strict)


def gemini_model_info(name: str, description: str = "") -> Dict[str, Any]:
    return {"name": "models/" + name, "baseModelId": name, "version": "proxied",
            "displayName": name, "description": description,
            "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "streamGenerateContent",
                                           "countTokens", "embedContent"],
            "temperature": 1, "maxTemperature": 2, "topP": 0.95, "topK": 64, "thinking": True}


# ---- 10. Dialect: Gemini, the upstream side ----------------------------------------------
#
# Requests to the Gemini API with an API key, and its replies; embeddings both ways.
# Tool schemas go as parametersJsonSchema after a light clean (what Gemini CLI itself
# sends); when Gemini rejects one, the request is retried once with every schema
# rewritten into Gemini's OpenAPI subset by json_schema_to_gemini_schema (which keeps
# only the keywords Gemini's Schema type defines).

GEMINI_STOP_REASONS = {           # finishReason -> neutral
    "STOP": STOP, "MAX_TOKENS": LENGTH, "MALFORMED_FUNCTION_CALL": MALFORMED_TOOL_CALL,
    "UNEXPECTED_TOOL_CALL": STOP, "TOO_MANY_TOOL_CALLS": STOP,   # (with the call: see below)
    "FINISH_REASON_UNSPECIFIED": STOP,
}   # everything else Gemini names (SAFETY, RECITATION, BLOCKLIST, ...) is a content filter
# A tool call Gemini stopped: one made with no tools declared, or one too many in a row.
# With its call in the reply the client gets the call (its agent says there is no such
# tool, and the model goes on); without it the turn is cut short, and as a plain STOP an
# agent took it for done (see MalformedToolCall).
GEMINI_STOPPED_CALLS = frozenset(("UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"))

GEMINI_SCHEMA_FIELDS = frozenset((
    "type", "format", "title", "description", "nullable", "enum", "items", "minItems",
    "maxItems", "properties", "required", "propertyOrdering", "minProperties",
    "maxProperties", "minLength", "maxLength", "pattern", "minimum", "maximum", "anyOf",
    "default", "example"))
GEMINI_FORMATS = {"STRING": ("enum", "date-time"), "NUMBER": ("float", "double"),
                  "INTEGER": ("int32", "int64")}
GEMINI_TYPES = {"string": "STRING", "number": "NUMBER", "integer": "INTEGER",
                "boolean": "BOOLEAN", "array": "ARRAY", "object": "OBJECT"}
# Constraints Gemini's Schema cannot hold; kept as a hint in the description instead.
SCHEMA_HINT_KEYWORDS = ("exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
                        "minContains", "maxContains")
SCHEMA_MAX_DEPTH = 32
# Words in a 400 from Gemini that mean a tool or response schema was refused.
GEMINI_SCHEMA_ERRORS = re.compile(r"parameters|schema|function_declarations|Unknown name|"
                                  r"Cannot find field|response_schema", re.I)


def clean_json_schema_for_gemini(schema: Any) -> Any:
    """The light clean for parametersJsonSchema / responseJsonSchema: drop the keywords
    Gemini refuses outright ($schema, $id, $comment, strict, x-*) and write a nullable
    type pair [X, "null"] as X + nullable, as Gemini CLI does for MCP tools."""
    if isinstance(schema, list):
        return [clean_json_schema_for_gemini(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: Dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("$schema", "$id", "$comment", "strict") or key.startswith("x-"):
            continue
        if key in SCHEMA_MAP_KEYWORDS and isinstance(value, dict):
            out[key] = {name: clean_json_schema_for_gemini(v) for name, v in value.items()}
        elif key in SCHEMA_LIST_KEYWORDS + SCHEMA_ONE_KEYWORDS:
            out[key] = clean_json_schema_for_gemini(value)
        else:
            out[key] = value
    kind = out.get("type")
    others = [k for k in kind if k != "null"] if isinstance(kind, list) else []
    if isinstance(kind, list) and len(kind) == 2 and len(others) == 1:
        out["type"], out["nullable"] = others[0], True
    return out


def _merge_all_of(schema: Dict[str, Any]) -> Dict[str, Any]:
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for branch in schema.get("allOf") if isinstance(schema.get("allOf"), list) else ():
        if not isinstance(branch, dict):
            continue
        for key, value in branch.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = dict(value, **fields_of(merged.get("properties")))
            elif key == "required" and isinstance(value, list):
                merged["required"] = list(dict.fromkeys(
                    [r for r in _schema_list(merged.get("required")) + value
                     if isinstance(r, str)]))
            else:
                merged.setdefault(key, value)
    return merged


def _schema_list(value: Any) -> List[Any]:
    return value if isinstance(value, list) else []


# The most nodes a schema may have once its $refs are inlined: a few $defs that each use
# the next several times would otherwise grow exponentially (a small request, a CPU held).
MAX_SCHEMA_NODES = 20000


def json_schema_to_gemini_schema(schema: Any, defs: Optional[Dict[str, Any]] = None,
                                 seen: Tuple[str, ...] = (), depth: int = 0,
                                 budget: Optional[List[int]] = None) -> Dict[str, Any]:
    """JSON Schema -> Gemini's `Schema` (the OpenAPI subset `parameters` takes), completely:
    $ref/$defs inlined (cycles cut), allOf merged, null branches and type pairs made
    `nullable`, const/enum as strings, only Gemini's keywords and formats kept, other
    constraints moved into the description, empty object properties dropped. Whatever a
    client wrote, the result is a Schema or a ClientError (too large once inlined)."""
    budget = [MAX_SCHEMA_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise ClientError("a tool or response schema is too large once its $refs are "
                          "inlined (over %d nodes)" % MAX_SCHEMA_NODES)
    if not isinstance(schema, dict) or depth > SCHEMA_MAX_DEPTH:
        return {"type": "STRING"}

    def convert(sub: Any, names: Tuple[str, ...] = seen) -> Dict[str, Any]:
        return json_schema_to_gemini_schema(sub, defs, names, depth + 1, budget)
    if defs is None:
        defs = dict(fields_of(schema.get("definitions")), **fields_of(schema.get("$defs")))
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen or not isinstance(defs.get(name), dict):  # a cycle, or nothing
            return {"type": "OBJECT", "description": text_of(schema.get("description"))
                    or "(a %s; its definition is recursive)" % name}
        return convert(dict(defs[name], **{k: v for k, v in schema.items() if k != "$ref"}),
                       seen + (name,))
    if "allOf" in schema:
        schema = _merge_all_of(schema)
    out: Dict[str, Any] = {}
    hints = ["%s: %s" % (k, json.dumps(schema[k])) for k in SCHEMA_HINT_KEYWORDS if k in schema]
    nullable = schema.get("nullable") is True
    branches = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(branches, list):
        concrete = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
        nullable |= len(concrete) < len(branches)
        if len(concrete) == 1 and isinstance(concrete[0], dict):
            collapsed = dict(concrete[0], **{k: v for k, v in schema.items()
                                             if k in ("description", "title", "default")})
            result = convert(collapsed)
            if nullable:
                result["nullable"] = True
            return result
        out["anyOf"] = [convert(b) for b in concrete]
    kind = schema.get("type")
    if isinstance(kind, list):
        nullable |= "null" in kind
        kind = next((k for k in kind if k != "null"), "string")
    values = schema.get("enum")
    if "const" in schema:
        values = [schema["const"]]
    if isinstance(values, list):
        nullable |= None in values
        out["enum"] = [v if isinstance(v, str) else json.dumps(v) for v in values
                       if v is not None]
        kind = "string"   # Gemini allows enum only on STRING
    if kind is None and "anyOf" not in out:
        kind = "object" if "properties" in schema else "array" if "items" in schema \
            else "string"
    if isinstance(kind, str):
        out["type"] = GEMINI_TYPES.get(kind.lower(), "STRING")
    elif "anyOf" not in out:
        out["type"] = "STRING"
    fmt = schema.get("format")
    if isinstance(fmt, str):
        if fmt in GEMINI_FORMATS.get(out.get("type", ""), ()):
            out["format"] = fmt
        else:
            hints.append("format: " + fmt)
    properties = schema.get("properties")
    if isinstance(properties, dict) and properties:
        out["properties"] = {name: convert(sub) for name, sub in properties.items()}
        required = [r for r in _schema_list(schema.get("required"))
                    if isinstance(r, str) and r in out["properties"]]
        if required:
            out["required"] = required
    if out.get("type") == "ARRAY":
        items = schema.get("items")
        out["items"] = convert(items) if isinstance(items, dict) and items \
            else {"type": "OBJECT"}
    for key in GEMINI_SCHEMA_FIELDS - {"type", "format", "enum", "anyOf", "properties",
                                       "required", "items", "nullable", "description"}:
        if key in schema and not isinstance(schema[key], (dict, list)) or \
                key == "propertyOrdering" and isinstance(schema.get(key), list):
            out[key] = schema[key]
    if "anyOf" in out:
        out.pop("default", None)   # Gemini is confused by anyOf beside default
    description = text_of(schema.get("description"))
    if hints:
        description = (description + " (" + "; ".join(hints) + ")").strip()
    if description:
        out["description"] = description
    if nullable:
        out["nullable"] = True
    return out


def _gemini_response_value(part: Part) -> Dict[str, Any]:
    """A tool result as functionResponse.response: Gemini's "output"/"error" keys, or the
    result itself when it is a JSON object."""
    text = tool_result_text(part)
    if part.is_error:
        return {"error": text}
    if text.startswith("{"):
        try:
            value = json.loads(text)
            if isinstance(value, dict):
                return value
        except ValueError:
            pass
    return {"output": text}


def _gemini_media_part(part: Part) -> Dict[str, Any]:
    if part.url and not part.data:
        return {"fileData": {"mimeType": part.mime or "application/octet-stream",
                             "fileUri": part.url}}
    return {"inlineData": {"mimeType": part.mime, "data": part.data}}


def _gemini_user_parts(message: Message, model: str) -> List[Dict[str, Any]]:
    """Function responses first (Gemini pairs them with the calls by count and order);
    media a tool returned goes inside the response for Gemini 3, after it otherwise."""
    responses, rest = [], []
    inline_media = model.startswith("gemini-3")
    for part in message.parts:
        if part.type == TOOL_RESULT:
            response: Dict[str, Any] = {"name": part.name or "tool",
                                        "response": _gemini_response_value(part)}
            if part.id:
                response["id"] = part.id
            media = [_gemini_media_part(p) for p in part.content or () if p.type == MEDIA]
            if media and inline_media:
                response["parts"] = media
            else:
                rest.extend(media)
            responses.append({"functionResponse": response})
        elif part.type == TEXT and part.text:
            rest.append({"text": part.text})
        elif part.type == MEDIA:
            rest.append(_gemini_media_part(part))
    return responses + rest


def _gemini_model_parts(message: Message) -> List[Dict[str, Any]]:
    """A model turn for Gemini: its own signatures back on their parts (a signature held
    by a thought part moves to the next part); thought text is not sent back. The first
    functionCall with no signature gets Google's documented skip value, which Gemini 3
    needs for tool calls made by another provider."""
    out: List[Dict[str, Any]] = []
    pending = ""
    signed_call = False
    for part in message.parts:
        signature = part.signature if part.origin == "gemini" else ""
        if part.type == THINKING:
            pending = signature or pending
            continue
        if part.type == TEXT and (part.text or signature or pending):
            item: Dict[str, Any] = {"text": part.text}
        elif part.type == TOOL_CALL:
            call = {"name": part.name, "args": part.args or {}}
            if part.id:
                call["id"] = part.id
            item = {"functionCall": call}
            signature = signature or pending or ("" if signed_call else GEMINI_SKIP_SIGNATURE)
            signed_call = True
        elif part.type == MEDIA:
            item = _gemini_media_part(part)
        else:
            continue
        signature = signature or pending
        if signature:
            item["thoughtSignature"] = signature
        pending = ""
        out.append(item)
    return out


def _gemini_thinking_config(chat: Chat, model: str) -> Optional[Dict[str, Any]]:
    thinking = chat.thinking
    if thinking is None:
        return None
    config: Dict[str, Any] = {"includeThoughts": thinking.include_thoughts}
    if model.startswith("gemini-3"):   # the Gemini 3 family takes a level, not a budget
        effort = thinking_effort(thinking) or "high"
        config["thinkingLevel"] = {"none": "LOW", "minimal": "LOW", "low": "LOW",
                                   "medium": "MEDIUM"}.get(effort, "HIGH")
    else:
        config["thinkingBudget"] = thinking.budget if thinking.budget is not None \
            else EFFORT_BUDGETS.get(thinking.effort, -1)
    return config


def encode_gemini_request(chat: Chat, model: str,
                          options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Neutral request -> GenerateContentRequest for a Gemini API upstream."""
    options = options or UPSTREAM_DEFAULTS
    openapi = options["gemini_schema"] == "openapi"
    contents = []
    messages = merge_consecutive_turns(chat.messages)
    order_tool_results(messages)
    for message in messages:
        parts = _gemini_model_parts(message) if message.role == "assistant" \
            else _gemini_user_parts(message, model)
        if parts:
            contents.append({"role": "model" if message.role == "assistant" else "user",
                             "parts": parts})
    payload: Dict[str, Any] = {"contents": contents}
    system = [{"text": p.text} for p in chat.system if p.text]
    if system:
        payload["systemInstruction"] = {"parts": system}
    declarations = []
    for tool in chat.tools:
        declaration: Dict[str, Any] = {"name": tool.name}
        if tool.description:
            declaration["description"] = tool.description
        if openapi:
            parameters = json_schema_to_gemini_schema(tool.schema)
            if parameters.get("properties"):   # an empty OBJECT is refused; omit it
                declaration["parameters"] = parameters
        else:
            declaration["parametersJsonSchema"] = clean_json_schema_for_gemini(tool.schema)
        declarations.append(declaration)
    tools = ([{"functionDeclarations": declarations}] if declarations else []) + \
        list(chat.extra.get("gemini_tools", ()))
    if tools:
        payload["tools"] = tools
    if chat.tool_choice != "auto" and declarations:
        calling: Dict[str, Any] = {"mode": "ANY" if chat.tool_choice == "required" else "NONE"}
        if chat.tool_choice == "required" and chat.allowed_tools:
            calling["allowedFunctionNames"] = chat.allowed_tools
        payload["toolConfig"] = {"functionCallingConfig": calling}
    config: Dict[str, Any] = {}
    for field, value in (("temperature", chat.temperature), ("topP", chat.top_p),
                         ("topK", chat.top_k), ("maxOutputTokens", chat.max_tokens),
                         ("presencePenalty", chat.presence_penalty),
                         ("frequencyPenalty", chat.frequency_penalty), ("seed", chat.seed)):
        if value is not None:
            config[field] = value
    if chat.stop:
        config["stopSequences"] = chat.stop
    if chat.n > 1:
        config["candidateCount"] = chat.n
    if chat.response_format is not None:
        config["responseMimeType"] = "application/json"
        schema = chat.response_format.schema
        if schema is not None and openapi:
            config["responseSchema"] = json_schema_to_gemini_schema(schema)
        elif schema is not None:
            config["responseJsonSchema"] = clean_json_schema_for_gemini(schema)
    thinking = _gemini_thinking_config(chat, model)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    if config:
        payload["generationConfig"] = config
    if chat.extra.get("safety_settings"):
        payload["safetySettings"] = chat.extra["safety_settings"]
    payload.update(options["extra_body"])
    return payload


def gemini_schema_retry(error: UpstreamError, options: Dict[str, Any]
                        ) -> Optional[Dict[str, Any]]:
    """Options for one more attempt when Gemini refused a JSON Schema: the same request
    with every schema rewritten into Gemini's own Schema subset."""
    if error.status == 400 and options["gemini_schema"] == "json_schema" and \
            GEMINI_SCHEMA_ERRORS.search(error.message):
        return dict(options, gemini_schema="openapi")
    return None


def decode_gemini_usage(usage: Any) -> Optional[Usage]:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("promptTokenCount")
    if prompt is None and usage.get("candidatesTokenCount") is None and \
            usage.get("thoughtsTokenCount") is None:
        return None     # counts nothing: no usage
    thoughts = tokens_of(usage.get("thoughtsTokenCount"))
    return Usage(tokens_of(prompt) + tokens_of(usage.get("toolUsePromptTokenCount")),
                 tokens_of(usage.get("candidatesTokenCount")) + thoughts,
                 cached_tokens=tokens_of(usage.get("cachedContentTokenCount")),
                 reasoning_tokens=thoughts, input_missing=prompt is None)


def _gemini_candidates(payload: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [reply_object(c, "a candidate") for c in reply_list(payload.get("candidates"),
                                                              "candidates")]


def _gemini_finish_reason(candidate: Dict[str, Any]) -> str:
    return reply_text(candidate.get("finishReason"), "finishReason")


def _gemini_reply_parts(candidate: Dict[str, Any]) -> List[Part]:
    """A candidate's parts; a part of a kind the neutral model has no place for (an
    unknown field, say) is skipped, a part of a known kind must be well formed."""
    content = reply_object(candidate.get("content"), "candidate content")
    parts = []
    for raw in reply_list(content.get("parts"), "content.parts"):
        raw = reply_object(raw, "a part")
        signature = reply_text(raw.get("thoughtSignature"), "thoughtSignature")
        origin = "gemini" if signature else ""
        if "functionCall" in raw:
            call = reply_object(raw["functionCall"], "functionCall")
            parts.append(Part(TOOL_CALL, id=text_of(call.get("id")) or new_id("call_"),
                              name=reply_text(call.get("name"), "functionCall.name"),
                              args=reply_object(call.get("args"), "functionCall.args"),
                              signature=signature, origin=origin))
        elif "text" in raw:
            parts.append(Part(THINKING if raw.get("thought") is True else TEXT,
                              text=reply_text(raw["text"], "text"), signature=signature,
                              origin="gemini"))
        elif "inlineData" in raw or "fileData" in raw:
            media = reply_object(raw.get("inlineData") or raw.get("fileData"), "media")
            parts.append(Part(MEDIA, mime=reply_text(media.get("mimeType"), "mimeType"),
                              data=reply_text(media.get("data"), "inlineData.data"),
                              url=reply_text(media.get("fileUri"), "fileData.fileUri"),
                              signature=signature, origin=origin))
        elif "executableCode" in raw:
            code = reply_object(raw["executableCode"], "executableCode")
            parts.append(Part(TEXT, text="```%s\n%s\n```" % (
                text_of(code.get("language")).lower(), text_of(code.get("code")))))
        elif "codeExecutionResult" in raw:
            result = reply_object(raw["codeExecutionResult"], "codeExecutionResult")
            parts.append(Part(TEXT, text=text_of(result.get("output"))))
    return parts


def finish_of_gemini_reason(reason: str, calls: bool, usage: Optional[Usage],
                            choice: int = 0) -> Finish:
    """The neutral finish of a candidate's finishReason; `calls`: whether the candidate
    holds a tool call. A tool call gone wrong keeps Gemini's name for it (detail)."""
    if reason in GEMINI_STOPPED_CALLS and not calls:
        neutral = MALFORMED_TOOL_CALL
    else:
        neutral = GEMINI_STOP_REASONS.get(reason, CONTENT_FILTER)
        neutral = TOOL_CALLS if neutral == STOP and calls else neutral
    return Finish(neutral, usage, choice=choice,
                  detail=reason if neutral == MALFORMED_TOOL_CALL else "")


def _gemini_finish(candidate: Dict[str, Any], parts: List[Part],
                   usage: Optional[Usage]) -> Finish:
    return finish_of_gemini_reason(_gemini_finish_reason(candidate) or "STOP",
                                   any(p.type == TOOL_CALL for p in parts), usage)


def decode_gemini_response(payload: Any, model: str = "") -> Reply:
    """GenerateContentResponse -> neutral reply. A prompt Gemini blocked (no candidates,
    promptFeedback.blockReason) is an empty reply that ends in CONTENT_FILTER."""
    payload = reply_object(payload, "the reply")
    usage = decode_gemini_usage(payload.get("usageMetadata"))
    choices = []
    for candidate in _gemini_candidates(payload):
        parts = _gemini_reply_parts(candidate)
        choices.append(Choice(parts, _gemini_finish(candidate, parts, usage)))
    if not choices:
        if not fields_of(payload.get("promptFeedback")).get("blockReason"):
            raise UpstreamError("the upstream reply has no candidates: %s"
                                % clip(json.dumps(payload), 300), status=502)
        choices.append(Choice([], Finish(CONTENT_FILTER, usage)))
    return Reply(text_of(payload.get("responseId")) or new_id("gen-"),
                 text_of(payload.get("modelVersion")) or model, choices, usage)


def decode_gemini_stream(raw_events: Iterable[Tuple[str, str]]) -> Iterator[Any]:
    """streamGenerateContent SSE -> neutral events, a choice per candidate. A stream that
    ends without a finishReason raises, like Gemini CLI would."""
    return decode_gemini_chunks(raw if raw is IDLE else
                                stream_event_json(raw[1], gemini_stream_error)
                                for raw in raw_events)


def decode_gemini_chunks(chunks: Iterable[Any]) -> Iterator[Any]:
    """decode_gemini_stream of the events' JSON, read (Code Assist's envelope is taken
    off between the two)."""
    finish_reasons: Dict[int, str] = {}
    calls: Dict[int, bool] = {}
    usage = None
    blocked = False
    for chunk in chunks:
        if chunk is IDLE:
            yield chunk
            continue
        if not isinstance(chunk, dict):
            raise UpstreamError("the upstream stream sent %s where an object belongs"
                                % clip(json.dumps(chunk), 100), status=502)
        usage = later_usage(decode_gemini_usage(chunk.get("usageMetadata")), usage)
        blocked |= bool(fields_of(chunk.get("promptFeedback")).get("blockReason"))
        for candidate in _gemini_candidates(chunk):
            index = candidate.get("index", 0)
            index = index if isinstance(index, int) and 0 <= index < MAX_CHOICES else 0
            for part in _gemini_reply_parts(candidate):
                calls[index] = calls.get(index, False) or part.type == TOOL_CALL
                part.choice = index
                yield part
            reason = _gemini_finish_reason(candidate)
            if reason:
                finish_reasons[index] = reason
    if blocked and not finish_reasons:
        finish_reasons[0] = "SAFETY"
    if not finish_reasons:
        raise UpstreamError("the upstream stream ended before the reply was finished",
                            status=502)
    for index, reason in sorted(finish_reasons.items()):
        yield finish_of_gemini_reason(reason, calls.get(index, False), usage, index)


GEMINI_STATUS_CODES = {name: status for status, name in GEMINI_STATUS_NAMES.items()
                       if status not in (408, 502)}


def decode_gemini_error(status: Optional[int], payload: Any,
                        headers: Optional[Dict[str, str]] = None) -> UpstreamError:
    """A Google error body (also wrapped in a list, as the JSON-array stream sends it)."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    error = payload.get("error") if isinstance(payload, dict) else None
    retry_after = parse_retry_after((headers or {}).get("retry-after"))
    reason = ""
    if isinstance(error, dict):
        message = error.get("message") or ""
        name = error.get("status")
        status = status or error.get("code") or GEMINI_STATUS_CODES.get(
            name if isinstance(name, str) else "")
        details = error.get("details")
        for detail in details if isinstance(details, list) else ():
            if not isinstance(detail, dict):
                continue
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    retry_after = float(delay.rstrip("ms")) / (1000 if delay.endswith("ms")
                                                               else 1)
                except ValueError:
                    pass
            reason = text_of(detail.get("reason")) or reason
            violations = detail.get("violations")
            for violation in violations if isinstance(violations, list) else ():
                if isinstance(violation, dict) and isinstance(violation.get("quotaId"), str):
                    reason = violation["quotaId"]   # QuotaFailure: ...PerDayPerProject...
    else:
        message = payload
    if not isinstance(message, str):
        message = json.dumps(message, ensure_ascii=False)
    status = status if isinstance(status, int) and 400 <= status <= 599 else 502
    return UpstreamError(clip(message.strip(), 2000) or "HTTP %d with no message" % status,
                         status=status, retry_after=retry_after, reason=reason)


def gemini_stream_error(data: str, decode: Callable[..., UpstreamError] = decode_gemini_error
                        ) -> Optional[UpstreamError]:
    """An error event in a Google stream, as an object or (as failed streams send it) in
    a list; `decode` reads it (Code Assist's decoder knows more)."""
    if '"error"' not in data[:30]:
        return None
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return decode(payload["error"].get("code"), payload)
    return None


def encode_gemini_count_request(chat: Chat, model: str) -> Dict[str, Any]:
    request = encode_gemini_request(dataclasses.replace(chat, thinking=None), model)
    request.pop("generationConfig", None)
    request["model"] = "models/" + model
    return {"generateContentRequest": request}


def decode_gemini_count_response(payload: Any) -> int:
    if not isinstance(payload, dict) or not isinstance(payload.get("totalTokens"), int) or \
            isinstance(payload["totalTokens"], bool):
        raise UpstreamError("the upstream countTokens reply has no totalTokens", status=502)
    return payload["totalTokens"]


# -- embeddings ------------------------------------------------------------------------------

def _gemini_embed_text(content: Any, where: str) -> str:
    content = camel_keys(expect(content, dict, where, "a Content object"))
    parts = expect(content.get("parts") or [], list, where + ".parts", "a list of parts")
    return "".join(expect_text(p.get("text"), "%s.parts[%d].text" % (where, j))
                   for j, p in enumerate(parts) if isinstance(p, dict))


def decode_gemini_embed_request(payload: Any, model: str, batch: bool) -> EmbedRequest:
    payload = camel_keys(expect(payload, dict, "request", "a JSON object"))
    requests = payload.get("requests") if batch else [payload]
    expect(requests, list, "requests", "a list")
    if not requests:
        raise ClientError("requests: at least one request is required")
    texts = []
    for i, request in enumerate(requests):
        request = camel_keys(expect(request, dict, "requests[%d]" % i, "an object"))
        texts.append(_gemini_embed_text(request.get("content"), "requests[%d].content" % i))
    first = camel_keys(requests[0])
    dimensions = first.get("outputDimensionality")
    return EmbedRequest(model, texts, None if dimensions is None else expect(
        dimensions, int, "outputDimensionality", "a whole number"),
        expect_text(first.get("taskType"), "taskType"),
        expect_text(first.get("title"), "title"))


def encode_gemini_embed_request(request: EmbedRequest, model: str) -> Dict[str, Any]:
    """Always the batch form: the Gemini API answers one text or many the same way."""
    items = []
    for text in request.texts:
        item: Dict[str, Any] = {"model": "models/" + model,
                                "content": {"parts": [{"text": text}]}}
        if request.dimensions:
            item["outputDimensionality"] = request.dimensions
        if request.task_type:
            item["taskType"] = request.task_type
        if request.title:
            item["title"] = request.title
        items.append(item)
    return {"requests": items}


def decode_gemini_embed_response(payload: Any) -> EmbedReply:
    if isinstance(payload, dict) and isinstance(payload.get("embedding"), dict):
        payload = {"embeddings": [payload["embedding"]]}
    embeddings = payload.get("embeddings") if isinstance(payload, dict) else None
    if not isinstance(embeddings, list):
        raise UpstreamError("the upstream embeddings reply has no embeddings", status=502)
    return EmbedReply([embedding_vector(reply_object(e, "an embedding").get("values"))
                       for e in embeddings])


def encode_gemini_embed_response(reply: EmbedReply, batch: bool) -> Dict[str, Any]:
    if batch:
        return {"embeddings": [{"values": v} for v in reply.vectors]}
    return {"embedding": {"values": reply.vectors[0]}}


# ---- 11. Dialect: OpenAI Responses ------------------------------------------------------
#
# Client side: /v1/responses as Codex CLI and the openai SDK's client.responses use it,
# with the responses kept for previous_response_id (PROTOCOLS-2 §B, §C). Reasoning the
# client cannot read (signed thinking, Gemini's signatures) rides in a reasoning item's
# encrypted_content: a carrier (section 6) that Codex keeps and sends back unchanged on
# every later turn. Tools come back under the client's names: custom (freeform) tools as
# custom_tool_call, namespaced ones with their namespace.

RESPONSES_REQUEST_FIELDS = frozenset((
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
    "reasoning", "text", "store", "stream", "stream_options", "include", "prompt_cache_key",
    "prompt_cache_retention", "client_metadata", "max_output_tokens", "max_tool_calls",
    "temperature", "top_p", "top_logprobs", "previous_response_id", "conversation",
    "metadata", "user", "safety_identifier", "service_tier", "truncation", "background",
    "context_management", "moderation", "prompt"))

# Tools that only OpenAI's own models know: hosted ones OpenAI runs (web_search,
# file_search...) and built-in ones it trained its models to call (shell, apply_patch,
# tool_search). Only a Responses upstream, passed the request as it is, can use them;
# elsewhere they are left out when the client declared them beside its own tools (Codex
# always declares web_search), and refused when they are all it declared or its
# tool_choice demands one: an answer without the search it asked for would look normal.
RESPONSES_HOSTED_TOOLS = frozenset((
    "web_search", "web_search_preview", "web_search_2025_08_26", "file_search", "computer",
    "computer_use_preview", "code_interpreter", "image_generation", "mcp", "local_shell",
    "shell", "apply_patch", "tool_search"))

# History items of those tools: nothing another upstream could replay; left out.
RESPONSES_HOSTED_ITEMS = frozenset((
    "web_search_call", "file_search_call", "tool_search_call", "tool_search_output",
    "image_generation_call", "code_interpreter_call", "local_shell_call",
    "local_shell_call_output", "shell_call", "shell_call_output", "apply_patch_call",
    "apply_patch_call_output", "mcp_call", "mcp_list_tools", "mcp_approval_request",
    "mcp_approval_response", "computer_call", "computer_call_output"))

# A custom (freeform) tool becomes a function with this one string parameter.
CUSTOM_TOOL_INPUT = "input"

# response.failed codes that Codex treats in their own way (anything else: retried), as
# OpenAI sends them; an upstream's own code among these is kept.
RESPONSES_ERROR_CODES = frozenset((
    "context_length_exceeded", "insufficient_quota", "rate_limit_exceeded", "invalid_prompt",
    "server_is_overloaded", "slow_down", "usage_not_included"))


# -- tools: client -> neutral, and the names that go back ---------------------------------

@dataclasses.dataclass
class ResponsesTools:
    """A request's tools as neutral function tools, and what turns a call's flat name
    back into the client's terms: custom tools (whose single argument is the raw input)
    and namespaced ones (a namespace's tools are offered as <namespace>__<name>)."""

    tools: List[Tool] = dataclasses.field(default_factory=list)
    custom: Set[str] = dataclasses.field(default_factory=set)
    namespaced: Dict[str, Tuple[str, str]] = dataclasses.field(default_factory=dict)
    hosted: List[str] = dataclasses.field(default_factory=list)

    @staticmethod
    def qualify(namespace: str, name: str) -> str:
        if not namespace or name.startswith(namespace):
            return name
        return namespace + name if namespace.endswith("__") else namespace + "__" + name

    def call_name(self, flat: str) -> Tuple[str, str]:
        """(namespace, name) for the name a model called; a model that calls a
        namespaced tool by its bare name is understood too."""
        if flat in self.namespaced:
            return self.namespaced[flat]
        if not any(t.name == flat for t in self.tools):
            owners = [v for v in self.namespaced.values() if v[1] == flat]
            if len(owners) == 1:
                return owners[0]
        return "", flat


def _responses_function_tool(tool: Dict[str, Any], where: str, namespace: str) -> Tool:
    name = expect(tool.get("name"), str, where + ".name", "a name")
    schema = tool.get("parameters")
    return Tool(ResponsesTools.qualify(namespace, name),
                expect_text(tool.get("description"), where + ".description"),
                expect(schema, dict, where + ".parameters", "a JSON Schema")
                if schema is not None else {"type": "object", "properties": {}})


def _responses_custom_tool(tool: Dict[str, Any], where: str) -> Tool:
    """A freeform tool (Codex's apply_patch) as a function of one string, its grammar in
    the description: the model needs the grammar to write valid input."""
    name = expect(tool.get("name"), str, where + ".name", "a name")
    description = expect_text(tool.get("description"), where + ".description")
    fmt = fields_of(tool.get("format"))
    if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        description += "\n\nThe input must follow this %s grammar:\n%s" % (
            text_of(fmt.get("syntax")) or "", fmt["definition"])
    return Tool(name, description.strip(), {
        "type": "object", "required": [CUSTOM_TOOL_INPUT],
        "properties": {CUSTOM_TOOL_INPUT: {"type": "string",
                                           "description": "the raw input of the tool"}}})


def _type_of(obj: Dict[str, Any], where: str) -> Optional[str]:
    """An item's, tool's or choice's `type`: a string, or absent."""
    kind = obj.get("type")
    if kind is not None and not isinstance(kind, str):
        raise ClientError("%s.type: expected a string, got %s" % (where, clip(json.dumps(kind),
                                                                             60)))
    return kind


def decode_responses_tools(payload: Dict[str, Any]) -> ResponsesTools:
    """The tools of a Responses request: its `tools`, and those of additional_tools items
    in its input (a name declared twice: the first wins)."""
    out = ResponsesTools()
    declared = list(enumerate(expect(payload.get("tools") or [], list, "tools", "a list")))
    for i, item in enumerate(payload.get("input") if isinstance(payload.get("input"), list)
                             else ()):
        if isinstance(item, dict) and _type_of(item, "input[%d]" % i) == "additional_tools":
            declared += [("input[%d].tools" % i, t) for t in
                         expect(item.get("tools") or [], list, "input[%d].tools" % i, "a list")]
    seen: Set[str] = set()

    def add(tool: Tool, namespace: str = "", name: str = "", custom: bool = False) -> None:
        if tool.name in seen:       # declared twice: the first declaration wins
            return
        seen.add(tool.name)
        out.tools.append(tool)
        if namespace:
            out.namespaced[tool.name] = (namespace, name)
        if custom:
            out.custom.add(tool.name)

    for i, tool in declared:
        where = i if isinstance(i, str) else "tools[%d]" % i
        expect(tool, dict, where, "a tool object")
        kind = _type_of(tool, where) or "function"
        if kind == "function":
            add(_responses_function_tool(tool, where, ""))
        elif kind == "custom":
            add(_responses_custom_tool(tool, where), custom=True)
        elif kind == "namespace":
            namespace = expect(tool.get("name"), str, where + ".name", "a name")
            for j, child in enumerate(expect(tool.get("tools") or [], list, where + ".tools",
                                             "a list")):
                at = "%s.tools[%d]" % (where, j)
                expect(child, dict, at, "a tool object")
                if _type_of(child, at) == "custom":
                    custom = _responses_custom_tool(child, at)
                    custom.name = ResponsesTools.qualify(namespace, custom.name)
                    add(custom, namespace, child["name"], custom=True)
                else:
                    function = _responses_function_tool(child, at, namespace)
                    add(function, namespace, child["name"])
        elif kind in RESPONSES_HOSTED_TOOLS or kind.startswith(("web_search", "computer")):
            out.hosted.append(kind)
        else:
            raise ClientError("%s.type: unknown tool type %r" % (where, kind))
    return out


def _hosted_tool_error(kinds: List[str]) -> ClientError:
    return ClientError("tools: %s %s OpenAI's own, and this request does not go to an "
                       "OpenAI Responses upstream as it is; declare function tools instead"
                       % (", ".join(sorted(set(kinds))), "is" if len(set(kinds)) == 1
                          else "are"))


def _responses_tool_choice(chat: Chat, choice: Any) -> None:
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise ClientError("tool_choice: %r is not auto, none or required" % choice)
        chat.tool_choice = choice
        return
    choice = expect(choice, dict, "tool_choice", "a string or an object")
    kind = _type_of(choice, "tool_choice")
    if kind in ("function", "custom"):
        chat.tool_choice = "required"
        chat.allowed_tools = [ResponsesTools.qualify(
            expect_text(choice.get("namespace"), "tool_choice.namespace"),
            expect(choice.get("name"), str, "tool_choice.name", "a tool name"))]
    elif kind == "allowed_tools":
        mode = choice.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise ClientError("tool_choice.mode: %r is not auto or required" % mode)
        names = set()
        for i, tool in enumerate(expect(choice.get("tools") or [], list, "tool_choice.tools",
                                        "a list")):
            tool = expect(tool, dict, "tool_choice.tools[%d]" % i, "a tool")
            if _type_of(tool, "tool_choice.tools[%d]" % i) in RESPONSES_HOSTED_TOOLS:
                continue
            names.add(ResponsesTools.qualify(text_of(tool.get("namespace")),
                                             expect(tool.get("name"), str, "tool_choice.tools"
                                                    "[%d].name" % i, "a tool name")))
        chat.tools = [t for t in chat.tools if t.name in names]
        chat.tool_choice = mode
    elif kind in ("auto", "none", "required"):      # what some clients send (Cursor)
        chat.tool_choice = kind
    elif kind in RESPONSES_HOSTED_TOOLS:
        raise _hosted_tool_error([kind])
    else:
        raise ClientError("tool_choice.type: unknown type %r" % kind)


# -- requests: client -> neutral ------------------------------------------------------------

def _responses_image(part: Dict[str, Any], where: str) -> Part:
    if part.get("file_id"):
        raise ClientError("%s.file_id: this proxy has no Files API; send the image as a "
                          "data: URL or an https URL" % where)
    url = expect(part.get("image_url"), str, where + ".image_url", "a URL")
    extra = {"detail": part["detail"]} if part.get("detail") not in (None, "auto") else {}
    match = DATA_URL.match(url)
    if match and match.group(2):
        return Part(MEDIA, mime=match.group(1) or "image/png", data=match.group(3),
                    extra=extra)
    return Part(MEDIA, url=url, extra=extra)


def _responses_file(part: Dict[str, Any], where: str) -> Part:
    if part.get("file_id"):
        raise ClientError("%s.file_id: this proxy has no Files API; send file_data instead"
                          % where)
    filename = expect_text(part.get("filename"), where + ".filename")
    extra = {"filename": filename} if filename else {}
    import mimetypes
    if part.get("file_url") is not None:
        return Part(MEDIA, url=expect(part["file_url"], str, where + ".file_url", "a URL"),
                    mime=mimetypes.guess_type(filename)[0] or "", extra=extra)
    data = expect(part.get("file_data"), str, where + ".file_data", "a data: URL")
    match = DATA_URL.match(data)
    if match and match.group(2):
        return Part(MEDIA, mime=match.group(1), data=match.group(3), extra=extra)
    return Part(MEDIA, mime=mimetypes.guess_type(filename)[0] or "application/octet-stream",
                data=data, extra=extra)    # plain base64, as some clients send it


def _responses_content(content: Any, where: str) -> List[Part]:
    """A message's content, or a tool's output: a string or a list of parts."""
    if isinstance(content, str):
        return [Part(TEXT, text=content)]
    parts = []
    for j, part in enumerate(expect(content, list, where, "a string or a list of parts")):
        at = "%s[%d]" % (where, j)
        expect(part, dict, at, "a content part")
        kind = _type_of(part, at)
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            parts.append(Part(TEXT, text=expect(part.get("text", ""), str, at + ".text",
                                                "text")))
        elif kind == "refusal":
            parts.append(Part(TEXT, text=expect_text(part.get("refusal"), at + ".refusal")))
        elif kind == "input_image":
            parts.append(_responses_image(part, at))
        elif kind == "input_file":
            parts.append(_responses_file(part, at))
        else:
            raise ClientError("%s.type: unknown content part type %r" % (at, kind))
    return parts


def _responses_reasoning(item: Dict[str, Any], where: str) -> List[Part]:
    """A reasoning item from the history: what this proxy packed into its
    encrypted_content when it gave it out, else its readable text (another server's
    encrypted_content is of no use to any upstream here)."""
    encrypted = expect_text(item.get("encrypted_content"), where + ".encrypted_content")
    carried = unpack_thinking(encrypted)
    if carried:
        return carried
    pieces = [p.text for key in ("summary", "content")
              for p in _responses_content(item.get(key) or [], "%s.%s" % (where, key))]
    text = "\n\n".join(p for p in pieces if p)
    return [Part(THINKING, text=text, origin="openai")] if text else []


def _responses_call(item: Dict[str, Any], where: str) -> Part:
    name = ResponsesTools.qualify(expect_text(item.get("namespace"), where + ".namespace"),
                                  expect(item.get("name"), str, where + ".name", "a name"))
    call_id = expect(item.get("call_id"), str, where + ".call_id", "a call id")
    if item.get("type") == "custom_tool_call":
        part = Part(TOOL_CALL, id=call_id, name=name, args={
            CUSTOM_TOOL_INPUT: expect_text(item.get("input"), where + ".input")})
    else:
        arguments = item.get("arguments") or "{}"
        try:
            args = strict_json(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            args = None
        # Arguments that are not a JSON object (a model's slip the client echoes back)
        # go on as {}: refusing them would end the conversation for good.
        part = Part(TOOL_CALL, id=call_id, name=name, args=args if isinstance(args, dict)
                    else {})
    # A stored call keeps the Gemini signature its turn had no reasoning item to carry.
    for carried in unpack_thinking(text_of(item.get("encrypted_content"))):
        if carried.origin == "gemini" and carried.signature:
            part.signature, part.origin = carried.signature, "gemini"
    return part


class _HistoryReader:
    """Builds neutral messages from Responses items: consecutive assistant items (its
    reasoning, text and calls) make one assistant turn, as Anthropic and Gemini need."""

    def __init__(self, chat: Chat, cache: ReasoningCache):
        self.chat, self.cache = chat, cache
        self.thinking: List[Part] = []      # reasoning waiting for the assistant turn
        self.names: Dict[str, str] = {}     # call id -> tool name
        self.remembered: Dict[str, str] = {}   # call id -> signature, from the cache

    def add(self, role: str, parts: List[Part]) -> None:
        if role == "user":
            self.thinking = []     # reasoning that no answer followed belongs to none
        messages = self.chat.messages
        if messages and messages[-1].role == role:
            messages[-1].parts.extend(parts)
        else:
            messages.append(Message(role, list(parts)))

    def assistant(self, parts: List[Part]) -> None:
        if self.thinking:
            parts, self.thinking = self.thinking + parts, []
        self.add("assistant", parts)

    def call(self, part: Part) -> None:
        """A tool call; the first of a turn with no reasoning carried by the client looks
        for what this proxy remembered when it gave the call out."""
        self.names[part.id] = part.name
        messages = self.chat.messages
        turn = messages[-1].parts if messages and messages[-1].role == "assistant" else []
        if not any(p.type == TOOL_CALL for p in turn) and not any(
                p.type == THINKING and (p.signature or p.extra) for p in self.thinking + turn):
            remembered = self.cache.get(part.id)
            self.remembered = {p.id: p.signature for p in remembered if p.type == TOOL_CALL}
            thinking = [p for p in remembered if p.type == THINKING]
            if thinking:
                self.thinking = thinking
        if part.id in self.remembered:
            part.signature, part.origin = self.remembered[part.id], "gemini"
        self.assistant([part])


def decode_responses_input(history: List[Tuple[str, Dict[str, Any]]], chat: Chat,
                           cache: ReasoningCache) -> None:
    """The conversation's items (see responses_history) as chat messages; system and
    developer messages before the conversation starts join the system prompt."""
    reader = _HistoryReader(chat, cache)
    started = False
    for where, item in history:
        kind = _type_of(item, where) or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            parts = _responses_content(item.get("content"), where + ".content")
            if role in ("system", "developer"):
                text = "\n\n".join(p.text for p in parts if p.type == TEXT)
                if not started:
                    chat.system.append(Part(TEXT, text=text))
                else:
                    reader.add("user", [Part(TEXT, text=text)])
                continue
            started = True
            if role == "user":
                reader.add("user", parts)
            elif role == "assistant":
                reader.assistant(parts)
            else:
                raise ClientError("%s.role: %r is not user, assistant, system or developer"
                                  % (where, role))
        elif kind == "reasoning":
            started = True
            reader.thinking.extend(_responses_reasoning(item, where))
        elif kind in ("function_call", "custom_tool_call"):
            started = True
            reader.call(_responses_call(item, where))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            started = True
            call_id = expect(item.get("call_id"), str, where + ".call_id", "a call id")
            output = item.get("output")
            content = _responses_content(output if output is not None else "",
                                         where + ".output")
            reader.add("user", [Part(TOOL_RESULT, id=call_id, name=reader.names.get(call_id, ""),
                                    content=[p for p in content if p.type in (TEXT, MEDIA)])])
        elif kind in ("compaction", "compaction_trigger"):
            raise ClientError("%s.type: %s needs OpenAI's own compaction; this proxy lets "
                              "the client compact its history itself" % (where, kind))
        elif kind == "additional_tools" or kind in RESPONSES_HOSTED_ITEMS:
            continue      # tools: merged in decode_responses_tools; hosted: see above
        else:
            raise ClientError("%s.type: unknown input item type %r" % (where, kind))
    order_tool_results(chat.messages)
    make_tool_ids_unique(chat.messages)


# The most the items a request names by reference may add to it: as much as a request
# may hold itself (a small request must not multiply a big stored item into gigabytes).
MAX_REFERENCED_BYTES = 32 * MiB


def responses_names_stored_items(payload: Any) -> bool:
    """Whether a request's history includes stored items (responses_history): how much
    it expands to, and costs to convert, the request does not tell."""
    if not isinstance(payload, dict):
        return False
    given = payload.get("input")
    return payload.get("previous_response_id") is not None or isinstance(given, list) and \
        any(isinstance(item, dict) and item.get("type") == "item_reference" for item in given)


def responses_history(payload: Dict[str, Any], store: "ResponseStore", owner: str = ""
                      ) -> Tuple[List[Tuple[str, Dict[str, Any]]], int]:
    """(where, item) for every item of the conversation: the stored one that
    previous_response_id names, then this request's input (a string is one user
    message), item_reference items looked up among the stored responses, all of them
    `owner`'s; and the bytes that the stored ones bring (to keep this one costs them too)."""
    items: List[Tuple[str, Dict[str, Any]]] = []
    brought = 0
    previous = payload.get("previous_response_id")
    if previous is not None:
        stored = store.get(expect(previous, str, "previous_response_id", "a response id"),
                           owner)
        if stored is None:
            raise ClientError("previous_response_id: Previous response with id %r not found "
                              "(this proxy keeps the responses it made in memory for a while: "
                              "server.responses_store)" % clip(previous, 80))
        items += [("previous_response_id", item) for item in stored.conversation()]
        brought += stored.size
    given = payload.get("input")
    if isinstance(given, str):
        return items + [("input", {"type": "message", "role": "user", "content": given})], \
            brought
    referenced: Set[str] = set()
    referenced_bytes = 0
    for i, item in enumerate(expect(given if given is not None else [], list, "input",
                                    "a string or a list of items")):
        where = "input[%d]" % i
        expect(item, dict, where, "an input item")
        if item.get("type") == "item_reference":
            item_id = expect(item.get("id"), str, where + ".id", "an item id")
            found = store.item(item_id, owner)
            if found is None:
                raise ClientError("%s.id: no stored item %r" % (where, clip(item_id, 80)))
            if item_id in referenced:
                raise ClientError("%s.id: item %r is referenced twice" % (where, clip(item_id,
                                                                                      80)))
            referenced.add(item_id)
            size = len(json_compact(found))
            brought += size
            referenced_bytes = referenced_bytes + size
            if referenced_bytes > MAX_REFERENCED_BYTES:
                raise ClientError("input: the items it references hold more than %d MiB"
                                  % (MAX_REFERENCED_BYTES // MiB), status=413)
            item = found
        items.append((where, item))
    return items, brought


def decode_responses_request(payload: Any, strict: bool = True,
                             turn: Optional["ResponsesTurn"] = None,
                             cache: Optional[ReasoningCache] = None,
                             store: Optional["ResponseStore"] = None) -> Chat:
    """Responses request -> neutral Chat. Raises ClientError naming the field."""
    expect(payload, dict, "request", "a JSON object")
    if strict:
        reject_unknown(payload, RESPONSES_REQUEST_FIELDS, OPENAI_UNKNOWN)
    for field, why in (("conversation", "stored conversations"),
                       ("prompt", "stored prompt templates")):
        if payload.get(field) is not None:
            raise ClientError("%s: %s are OpenAI's; send the input itself" % (field, why))
    if payload.get("background") is True:
        raise ClientError("background: this proxy answers while the client waits; leave "
                          "background off")
    turn = turn or responses_turn(payload)
    expect_strings(payload.get("include"), "include")
    turn.tools = decode_responses_tools(payload)
    chat = Chat(model=expect(payload.get("model"), str, "model", "a model name"),
                tools=list(turn.tools.tools))
    if turn.tools.hosted:
        if not chat.tools:
            raise _hosted_tool_error(turn.tools.hosted)
        chat.extra["hosted_tools"] = turn.tools.hosted
    instructions = expect_text(payload.get("instructions"), "instructions")
    if instructions:
        chat.system.append(Part(TEXT, text=instructions))
    history, brought = responses_history(payload, store or RESPONSE_STORE, turn.owner)
    if turn.store:
        turn.history = [item for _, item in history]
        turn.size += brought
    decode_responses_input(history, chat, cache or REASONING_CACHE)
    _responses_tool_choice(chat, payload.get("tool_choice"))
    if payload.get("parallel_tool_calls") is not None:
        chat.parallel_tool_calls = expect(payload["parallel_tool_calls"], bool,
                                          "parallel_tool_calls", "true or false")
    reasoning = expect(payload.get("reasoning") or {}, dict, "reasoning", "an object")
    effort = expect_text(reasoning.get("effort"), "reasoning.effort")
    if effort or reasoning.get("summary"):
        chat.thinking = Thinking(budget=None if effort else -1, effort=effort,
                                 include_thoughts=effort != "none")
    text = expect(payload.get("text") or {}, dict, "text", "an object")
    fmt = expect(text.get("format") or {}, dict, "text.format", "an object")
    if fmt.get("type") == "json_object":
        chat.response_format = ResponseFormat()
    elif fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        chat.response_format = ResponseFormat(
            expect(schema, dict, "text.format.schema", "a JSON Schema")
            if schema is not None else None,
            expect_text(fmt.get("name"), "text.format.name") or "response")
    elif fmt.get("type") not in (None, "text"):
        raise ClientError("text.format.type: %r is not text, json_object or json_schema"
                          % fmt.get("type"))
    for field, kind, what in (("temperature", (int, float), "a number"),
                              ("top_p", (int, float), "a number")):
        if payload.get(field) is not None:
            setattr(chat, field, expect(payload[field], kind, field, what))
    if payload.get("max_output_tokens") is not None:
        chat.max_tokens = expect(payload["max_output_tokens"], int, "max_output_tokens",
                                 "a whole number")
    chat.stream = payload.get("stream") is True
    chat.user = expect_text(payload.get("safety_identifier"), "safety_identifier") or \
        expect_text(payload.get("user"), "user")
    metadata = expect(payload.get("metadata") or {}, dict, "metadata", "an object")
    if len(metadata) > 16 or not all(isinstance(v, str) for v in metadata.values()):
        raise ClientError("metadata: at most 16 keys, each with a string value")
    return chat


# -- the turn: what a reply repeats of its request, and the responses kept ---------------------

@dataclasses.dataclass
class ResponsesTurn:
    """What a Responses reply needs from its request: the fields it repeats, the tool
    names to give back, whether the client wants encrypted_content, whether (and what)
    to store; and, while a stream is written, where it is (so that an error after the
    start continues its numbering)."""

    request: Dict[str, Any]
    tools: ResponsesTools
    encrypted: bool = False
    store: bool = True
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)   # to store
    model: str = ""
    owner: str = ""                    # response_owner: only that client key reads it back
    size: int = 0                      # bytes of the request, for the store's budget
    response_id: str = ""
    created: int = 0
    sequence: int = 0                  # the next event's sequence_number
    announced: bool = False            # response.created has gone to the client
    output: List[Dict[str, Any]] = dataclasses.field(default_factory=list)   # done items

    def shown(self, item: Dict[str, Any]) -> Dict[str, Any]:
        """An output item as the client sees it: carriers only if it asked for them."""
        if self.encrypted or "encrypted_content" not in item:
            return dict(item)
        return {k: v for k, v in item.items() if k != "encrypted_content"}

    def passed(self, event: str) -> None:
        """An event of a passed-through stream went by: an error after it continues
        from its number, as the response its first event announced."""
        number = SEQUENCE_NUMBER.search(event)
        if number:
            self.sequence = int(number.group(1)) + 1
        if not self.announced and '"response.created"' in event:
            self.announced = True
            try:
                response = fields_of(fields_of(json.loads(event)).get("response"))
            except (ValueError, RecursionError):
                return
            self.response_id = text_of(response.get("id"))
            self.model = text_of(response.get("model")) or self.model
            self.created = tokens_of(response.get("created_at")) or self.created


SEQUENCE_NUMBER = re.compile(r'"sequence_number": ?(\d{1,15})')


# The request fields a response object repeats.
RESPONSES_ECHOED = ("instructions", "max_output_tokens", "metadata", "parallel_tool_calls",
                    "previous_response_id", "reasoning", "temperature", "text", "tool_choice",
                    "tools", "top_p", "user")


def responses_turn(payload: Any) -> ResponsesTurn:
    """The turn of a request, read leniently: a request passed through to a Responses
    upstream is that upstream's to judge (it may name tools and responses this proxy does
    not know). Decoding the request checks it, fills in its tools and its history."""
    payload = fields_of(payload)
    include = payload.get("include")
    try:
        tools = decode_responses_tools(payload)
    except ClientError:
        tools = ResponsesTools()
    echoed = {k: payload[k] for k in RESPONSES_ECHOED if k in payload}
    try:     # a reply repeats these: they must go into JSON again a level or two deeper
        json_compact([[[echoed]]])
    except (RecursionError, ValueError):
        echoed = {}
    return ResponsesTurn(echoed, tools,
                         isinstance(include, list) and "reasoning.encrypted_content" in include,
                         payload.get("store") is not False, model=text_of(payload.get("model")))


class StoredResponse:
    """A response kept for previous_response_id: the object as the client saw it, the
    conversation up to it, and its output with every carrier (the client may not have
    asked for them, the next turn still needs them)."""

    __slots__ = ("response", "history", "output", "expires", "size", "owner")

    def __init__(self, response: Dict[str, Any], history: List[Dict[str, Any]],
                 output: List[Dict[str, Any]], expires: float, size: int, owner: str):
        self.response, self.history, self.output = response, history, output
        self.expires, self.size, self.owner = expires, size, owner

    def conversation(self) -> List[Dict[str, Any]]:
        return self.history + self.output


class ResponseStore:
    """Recent responses by id, bounded in number, bytes and age, for previous_response_id,
    item_reference and GET/DELETE /v1/responses/{id}. In memory: a restart forgets. An
    entry's size is its request's (the history a follow-up sends is new bytes) and its
    answer's; the oldest go first."""

    def __init__(self, max_entries: int = 1000, ttl: float = 3600.0,
                 max_bytes: int = 256 * MiB):
        self._entries: "collections.OrderedDict[str, StoredResponse]" = \
            collections.OrderedDict()
        self._lock = threading.Lock()
        self.max_entries, self.ttl, self.max_bytes = max_entries, ttl, max_bytes
        self.bytes = 0

    def configure(self, max_entries: int, ttl: float, max_bytes: int) -> None:
        with self._lock:
            self.max_entries, self.ttl, self.max_bytes = max_entries, ttl, max_bytes
            self._trim()

    def _trim(self) -> None:
        """Drop the expired, then the oldest while over a bound (entries are in the order
        they were kept, so the expired are at the front)."""
        now = time.monotonic()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires >= now and len(self._entries) <= self.max_entries and \
                    self.bytes <= self.max_bytes:
                return
            self.bytes -= self._entries.popitem(last=False)[1].size

    def put(self, response: Dict[str, Any], history: List[Dict[str, Any]],
            output: List[Dict[str, Any]], size: int, owner: str = "") -> None:
        size += len(json_compact(output))
        if self.max_entries <= 0 or size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(response["id"], None)
            self.bytes += size - (old.size if old else 0)
            self._entries[response["id"]] = StoredResponse(
                response, history, output, time.monotonic() + self.ttl, size, owner)
            self._trim()

    def get(self, response_id: str, owner: str = "") -> Optional[StoredResponse]:
        """A kept response, if `owner` (the client key that made it) asks."""
        with self._lock:
            self._trim()
            entry = self._entries.get(response_id)
            if entry is None or entry.owner != owner or entry.expires < time.monotonic():
                return None     # (a reload may have shortened the time to live)
            return entry

    def delete(self, response_id: str, owner: str = "") -> bool:
        with self._lock:
            entry = self._entries.get(response_id)
            if entry is None or entry.owner != owner:
                return False
            del self._entries[response_id]
            self.bytes -= entry.size
            return True

    def item(self, item_id: str, owner: str = "") -> Optional[Dict[str, Any]]:
        """An output item of a kept response of `owner`'s, by its id (newest first)."""
        with self._lock:
            self._trim()
            now = time.monotonic()
            entries = [e for e in reversed(self._entries.values())
                       if e.owner == owner and e.expires >= now]
        for entry in entries:
            for item in entry.output:
                if item.get("id") == item_id:
                    return item
        return None


RESPONSE_STORE = ResponseStore()


# ---- 12. Dialect: OpenAI Responses, replies to the client ------------------------------
#
# One writer turns neutral events into output items and the stream events that announce
# them, for streams and whole replies alike; a reply that is stored is kept here too.

def responses_usage(usage: Usage) -> Dict[str, Any]:
    return {"input_tokens": usage.input_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                     "cache_write_tokens": usage.cache_write_tokens},
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.input_tokens + usage.output_tokens}


def _responses_object(turn: ResponsesTurn, model: str, status: str,
                      output: List[Dict[str, Any]], usage: Optional[Usage] = None,
                      **fields: Any) -> Dict[str, Any]:
    request = turn.request
    reasoning = fields_of(request.get("reasoning"))
    body = {"id": turn.response_id, "object": "response", "created_at": turn.created,
            "status": status, "error": None, "incomplete_details": None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"), "model": model,
            "output": output, "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": request.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"),
                          "summary": reasoning.get("summary")},
            "store": turn.store, "temperature": request.get("temperature", 1.0),
            "text": request.get("text") or {"format": {"type": "text"}},
            "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools") or [], "top_p": request.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": responses_usage(usage) if usage is not None else None,
            "user": request.get("user"), "metadata": request.get("metadata") or {}}
    body.update(fields)
    return body


RESPONSES_INCOMPLETE = {LENGTH: "max_output_tokens", CONTENT_FILTER: "content_filter"}


class ResponsesWriter:
    """Neutral events -> the output items of a response and the stream events that
    announce them (PROTOCOLS-2 §B.6, §C.2): one item per reasoning block, text run and
    tool call, in the order they come, each with its whole life cycle (added, its parts,
    deltas, done; a stream that fails leaves its open item undone: see
    encode_responses_stream). Used for whole replies too, so that both have one owner."""

    def __init__(self, turn: ResponsesTurn, cache: ReasoningCache):
        self.turn, self.cache = turn, cache
        self.kind = ""                         # the open item: reasoning | message | ""
        self.item: Dict[str, Any] = {}
        self.text: List[str] = []
        self.carried: List[Part] = []          # the open reasoning item's blocks
        self.parts: List[Part] = []            # the reply so far, to remember for calls
        self.index = 0                         # the open item's output_index

    def _event(self, kind: str, **fields: Any) -> Dict[str, Any]:
        return dict({"type": kind}, **fields)

    def _ref(self) -> Dict[str, Any]:
        return {"item_id": self.item["id"], "output_index": self.index}

    def _open(self, kind: str, item: Dict[str, Any]) -> List[Dict[str, Any]]:
        events = self.close()
        self.kind, self.item, self.text = kind, item, []
        self.index = len(self.turn.output)
        events.append(self._event("response.output_item.added", output_index=self.index,
                                  item=dict(item)))
        return events

    def _done(self, item: Dict[str, Any]) -> Dict[str, Any]:
        """An item finished: kept in the output (with its carrier), announced to the
        client (without it, unless asked for)."""
        self.turn.output.append(item)
        return self._event("response.output_item.done", output_index=self.index,
                           item=self.turn.shown(item))

    def close(self, status: str = "completed") -> List[Dict[str, Any]]:
        """Finish the open item, if any."""
        kind, self.kind = self.kind, ""
        text = "".join(self.text)
        if kind == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            return [self._event("response.output_text.done", **self._ref(), content_index=0,
                                text=text, logprobs=[]),
                    self._event("response.content_part.done", **self._ref(), content_index=0,
                                part=part),
                    self._done(dict(self.item, status=status, content=[part]))]
        if kind == "reasoning":
            events = []
            summary = []
            if self.text:
                part = {"type": "summary_text", "text": text}
                summary.append(part)
                events += [self._event("response.reasoning_summary_text.done", **self._ref(),
                                       summary_index=0, text=text),
                           self._event("response.reasoning_summary_part.done", **self._ref(),
                                       summary_index=0, part=part)]
            item = dict(self.item, status=status, summary=summary)
            if self.carried:
                item["encrypted_content"] = pack_thinking(merge_deltas(self.carried))
            self.carried = []
            return events + [self._done(item)]
        return []

    def _reasoning(self) -> List[Dict[str, Any]]:
        if self.kind == "reasoning":
            return []
        return self._open("reasoning", {"type": "reasoning", "id": new_id("rs_"),
                                        "status": "in_progress", "summary": []})

    def feed(self, event: Any) -> List[Dict[str, Any]]:
        """The stream events for one neutral event (Finish: see finish)."""
        if event.choice:
            return []     # Responses has a single answer
        if event.type == THINKING:
            events = self._reasoning()
            self.parts.append(event)
            self.carried.append(event)
            if event.text:
                if not self.text:
                    events.append(self._event("response.reasoning_summary_part.added",
                                              **self._ref(), summary_index=0,
                                              part={"type": "summary_text", "text": ""}))
                self.text.append(event.text)
                events.append(self._event("response.reasoning_summary_text.delta",
                                          **self._ref(), summary_index=0, delta=event.text))
            return events
        if event.type in (TEXT, MEDIA):
            text = event.text if event.type == TEXT else _openai_media_text(event)
            if not text:
                return []
            events = []
            if self.kind != "message":
                events = self._open("message", {"type": "message", "id": new_id("msg_"),
                                                "status": "in_progress", "role": "assistant",
                                                "content": []})
                events.append(self._event("response.content_part.added", **self._ref(),
                                          content_index=0, part={
                                              "type": "output_text", "text": "",
                                              "annotations": [], "logprobs": []}))
            self.text.append(text)
            events.append(self._event("response.output_text.delta", **self._ref(),
                                      content_index=0, delta=text, logprobs=[]))
            return events
        if event.type == TOOL_CALL:
            return self._call(event)
        return []

    def _call(self, part: Part) -> List[Dict[str, Any]]:
        self.parts.append(part)
        events: List[Dict[str, Any]] = []
        if part.origin == "gemini" and part.signature and (
                self.turn.encrypted or self.kind == "reasoning"):
            # The signature rides in the reasoning item before the call (one made for it
            # if none is open); Gemini wants it back on this call. A client that keeps no
            # carriers gets it back through the cache instead (finish).
            events += self._reasoning()
            self.carried.append(Part(THINKING, signature=part.signature, origin="gemini"))
        events += self.close()
        kept = {}     # for the stored copy only (see _done): the signature it needs back
        if part.origin == "gemini" and part.signature and not self.turn.encrypted:
            kept = {"encrypted_content": pack_thinking([Part(
                THINKING, signature=part.signature, origin="gemini")])}
        call_id = part.id or new_id("call_")
        namespace, name = self.turn.tools.call_name(part.name)
        if part.name in self.turn.tools.custom:
            value = (part.args or {}).get(CUSTOM_TOOL_INPUT)
            value = value if isinstance(value, str) else json.dumps(part.args or {})
            item = {"type": "custom_tool_call", "id": new_id("ctc_"), "status": "in_progress",
                    "call_id": call_id, "name": name, "input": ""}
            field, delta, done = "input", "response.custom_tool_call_input.delta", \
                "response.custom_tool_call_input.done"
        else:
            value = json.dumps(part.args or {}, ensure_ascii=False)
            item = {"type": "function_call", "id": new_id("fc_"), "status": "in_progress",
                    "call_id": call_id, "name": name, "arguments": ""}
            field, delta, done = "arguments", "response.function_call_arguments.delta", \
                "response.function_call_arguments.done"
        if namespace:
            item["namespace"] = namespace
        events += self._open("call", item)
        extra = {"name": name} if field == "arguments" else {}
        events += [self._event(delta, **self._ref(), delta=value),
                   self._event(done, **self._ref(), **{field: value}, **extra),
                   self._done(dict(item, status="completed", **{field: value}, **kept))]
        self.kind = ""
        return events

    def finish(self, finish: Finish, model: str) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
        """The last events, and the whole response."""
        incomplete = RESPONSES_INCOMPLETE.get(finish.reason)
        events = self.close("incomplete" if incomplete else "completed")
        if not self.turn.encrypted:     # the fallback for clients that drop carriers
            _openai_remember(merge_deltas(self.parts), self.cache)
        shown = [self.turn.shown(item) for item in self.turn.output]
        status = "incomplete" if incomplete else "completed"
        response = _responses_object(
            self.turn, model, status, shown, finish.usage or Usage(),
            completed_at=int(time.time()) if not incomplete else None,
            incomplete_details={"reason": incomplete} if incomplete else None)
        if self.turn.store:
            RESPONSE_STORE.put(response, self.turn.history, list(self.turn.output),
                               self.turn.size, self.turn.owner)
        return events + [self._event("response." + status, response=response)], response


def _start_turn(options: ReplyOptions, model: str, response_id: str) -> ResponsesTurn:
    if options.responses is None:     # a library caller with no request at hand
        options.responses = ResponsesTurn({}, ResponsesTools(), store=False)
    turn = options.responses
    turn.model, turn.response_id, turn.created = model, response_id, int(time.time())
    turn.sequence, turn.output, turn.announced = 0, [], True   # created is its first event
    return turn


def encode_responses_response(reply: Reply, model: str, response_id: str,
                              options: Optional[ReplyOptions] = None) -> Dict[str, Any]:
    """Neutral reply -> response object (kept for previous_response_id when stored)."""
    options = options or ReplyOptions()
    turn = _start_turn(options, model, response_id)
    writer = ResponsesWriter(turn, options.reasoning_cache or REASONING_CACHE)
    choice = reply.choices[0] if reply.choices else Choice([], Finish())
    for part in choice.parts:
        writer.feed(part)
    return writer.finish(dataclasses.replace(choice.finish, usage=reply.usage or
                                             choice.finish.usage), model)[1]


def _responses_sse(turn: ResponsesTurn, events: List[Dict[str, Any]]) -> bytes:
    """Events numbered from where the stream is, as `event:` + `data:` SSE."""
    out = []
    for event in events:
        kind = event.pop("type")
        body = dict({"type": kind, "sequence_number": turn.sequence}, **event)
        turn.sequence += 1
        out.append(sse_event(kind, json_compact(body)))
    return b"".join(out)


def encode_responses_stream(events: Iterable[Any], model: str, response_id: str,
                            options: Optional[ReplyOptions] = None) -> Iterator[bytes]:
    """Neutral events -> Responses SSE: response.created, response.in_progress, each
    item's life cycle, and one terminal event carrying the whole response. No [DONE]."""
    options = options or ReplyOptions()
    turn = _start_turn(options, model, response_id)
    writer = ResponsesWriter(turn, options.reasoning_cache or REASONING_CACHE)
    start = _responses_object(turn, model, "in_progress", [])
    yield _responses_sse(turn, [{"type": "response.created", "response": start},
                                {"type": "response.in_progress", "response": dict(start)}])
    # On a failure the item being written is left without its output_item.done: Codex
    # keeps every done item as said, and a half message kept so was sent back to the model
    # as its own finished turn when Codex retried. The server adds the response.failed
    # (responses_stream_error_event), which lists the items that were done.
    finished = False
    for event in events:
        if event is IDLE:
            yield event
            continue
        if finished:
            continue          # more choices than one: Responses has no place for them
        if isinstance(event, Finish):
            if event.choice == 0:
                yield _responses_sse(turn, writer.finish(event, model)[0])
                finished = True
            continue
        out = writer.feed(event)
        if out:
            yield _responses_sse(turn, out)
    if not finished:
        raise UpstreamError("the reply ended before it was finished", status=502)


def responses_error_code(error: ProxyError) -> str:
    """A failure's code in a response.failed, from those Codex acts on."""
    if error.reason in RESPONSES_ERROR_CODES:
        return error.reason
    if error.status == 429:
        return "rate_limit_exceeded"
    return "server_error"     # Codex retries it; the openai SDK's types know it


def responses_stream_error_event(error: ProxyError, options: ReplyOptions) -> bytes:
    """How a Responses client learns that a stream failed after it began: a
    response.failed that continues the stream's numbering. A rate limit's message says
    when to try again in the words Codex reads."""
    turn = options.responses or ResponsesTurn({}, ResponsesTools(), store=False)
    code = responses_error_code(error)
    message = error.message
    if code == "rate_limit_exceeded" and error.retry_after is not None:
        message += " Please try again in %ds." % math.ceil(error.retry_after)
    events = []
    if not turn.announced:     # the headers went out early; no event (of this attempt) yet
        turn.sequence, turn.announced = 0, True
        turn.response_id = turn.response_id or new_id("resp_")
        turn.created = turn.created or int(time.time())
        events.append({"type": "response.created", "response": _responses_object(
            turn, turn.model, "in_progress", [])})
    shown = [turn.shown(item) for item in turn.output]
    events.append({"type": "response.failed", "response": _responses_object(
        turn, turn.model, "failed", shown, error={"code": code, "message": message})})
    return _responses_sse(turn, events)


# Errors before a stream starts have Chat Completions' envelope.
encode_responses_error = encode_openai_error


def response_owner(head: RequestHead) -> str:
    """Whose a kept response is: a digest of the client key that asked for it."""
    return hashlib.sha256(client_key(head).encode("utf-8", "surrogatepass")).hexdigest()


def _not_stored(response_id: str) -> ClientError:
    return ClientError("Response with id %r not found. This proxy keeps the responses it "
                       "made itself, for a while (server.responses_store), for the client key "
                       "that asked for them; one a Responses upstream made is that "
                       "upstream's." % clip(response_id, 80), status=404)


def get_stored_response(head: RequestHead, params: Dict[str, str]) -> Tuple[int, Any]:
    """GET /v1/responses/{id}: a kept response, whole (its events are not kept)."""
    if head.query_value("stream") not in ("", "false"):
        raise ClientError("stream: a kept response is given whole; its events are not kept")
    stored = RESPONSE_STORE.get(params["response_id"], response_owner(head))
    if stored is None:
        raise _not_stored(params["response_id"])
    return 200, stored.response


def delete_stored_response(head: RequestHead, params: Dict[str, str]) -> Tuple[int, Any]:
    """DELETE /v1/responses/{id}."""
    if not RESPONSE_STORE.delete(params["response_id"], response_owner(head)):
        raise _not_stored(params["response_id"])
    return 200, {"id": params["response_id"], "object": "response.deleted", "deleted": True}


# ---- 13. Dialect: OpenAI Responses, the upstream side -------------------------------------
#
# Any server that speaks Responses: OpenAI, Azure, another proxy. Requests are stateless
# (store: false): the whole conversation goes each time, with the reasoning items this
# upstream gave out (their encrypted_content), as OpenAI recommends for store: false.

# -- requests: neutral -> upstream ----------------------------------------------------------

def _responses_input_part(part: Part) -> Dict[str, Any]:
    if part.type == TEXT:
        return {"type": "input_text", "text": part.text}
    mime = part.mime.lower()
    detail = part.extra.get("detail", "auto")
    if part.url and not part.data:
        if mime.startswith("image/") or not mime:
            return {"type": "input_image", "image_url": part.url, "detail": detail}
        return {"type": "input_file", "file_url": part.url}
    if mime.startswith("image/"):
        return {"type": "input_image", "image_url": "data:%s;base64,%s" % (mime, part.data),
                "detail": detail}
    return {"type": "input_file", "filename": part.extra.get("filename") or "attachment",
            "file_data": "data:%s;base64,%s" % (mime or "application/octet-stream", part.data)}


def _responses_user_items(message: Message) -> List[Dict[str, Any]]:
    """Tool results first (answering the calls), then the turn's own text and media."""
    items: List[Dict[str, Any]] = []
    for part in message.parts:
        if part.type != TOOL_RESULT:
            continue
        text = tool_result_text(part)
        if part.is_error:
            text = json.dumps({"error": text}, ensure_ascii=False)
        media = [_responses_input_part(p) for p in part.content or () if p.type == MEDIA]
        items.append({"type": "function_call_output",
                      "call_id": fit_tool_id(part.id, OPENAI_MAX_TOOL_ID),
                      "output": [{"type": "input_text", "text": text}] + media if media
                      else text})
    rest = [_responses_input_part(p) for p in message.parts if p.type in (TEXT, MEDIA)]
    if rest:
        items.append({"type": "message", "role": "user", "content": rest})
    return items


def _responses_assistant_items(message: Message) -> List[Dict[str, Any]]:
    """An assistant turn as items: this kind's own reasoning (with its encrypted_content,
    which lets a stateless conversation keep its reasoning), text, calls. Reasoning from
    other providers is not sent: OpenAI takes only its own."""
    items: List[Dict[str, Any]] = []
    for part in message.parts:
        if part.type == THINKING and part.origin == RESPONSES_ORIGIN and part.signature:
            items.append({"type": "reasoning", "encrypted_content": part.signature,
                          "summary": [{"type": "summary_text", "text": part.text}]
                          if part.text else []})
        elif part.type == TEXT and part.text:
            items.append({"type": "message", "role": "assistant", "content": part.text})
        elif part.type == TOOL_CALL:
            items.append({"type": "function_call",
                          "call_id": fit_tool_id(part.id, OPENAI_MAX_TOOL_ID),
                          "name": part.name,
                          "arguments": json.dumps(part.args or {}, ensure_ascii=False)})
    return items


def _responses_tool_fields(chat: Chat) -> Dict[str, Any]:
    tools = offered_tools(chat)
    if not tools:
        return {}
    fields: Dict[str, Any] = {"tools": [
        {"type": "function", "name": t.name, "description": t.description,
         "parameters": t.schema, "strict": False} for t in tools]}
    if chat.tool_choice == "required" and len(chat.allowed_tools) == 1:
        fields["tool_choice"] = {"type": "function", "name": chat.allowed_tools[0]}
    elif chat.tool_choice != "auto":
        fields["tool_choice"] = chat.tool_choice
    if chat.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = chat.parallel_tool_calls
    return fields


def encode_responses_request(chat: Chat, model: str,
                             options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Neutral request -> Responses payload, stateless (store: false): the whole
    conversation goes each time, with the reasoning items this upstream gave out."""
    options = options or UPSTREAM_DEFAULTS
    if chat.n > 1:
        raise ClientError("n: an OpenAI Responses upstream gives one answer per request; "
                          "ask for one")
    items: List[Dict[str, Any]] = []
    for message in merge_consecutive_turns(chat.messages):
        items += _responses_assistant_items(message) if message.role == "assistant" \
            else _responses_user_items(message)
    payload: Dict[str, Any] = {"model": model, "input": items, "store": False}
    system = "\n\n".join(p.text for p in chat.system if p.text)
    fmt = chat.response_format
    if fmt is not None:
        if fmt.schema is not None and options["response_format"] == "json_schema":
            payload["text"] = {"format": {"type": "json_schema", "name": fmt.name,
                                          "schema": fmt.schema, "strict": False}}
        else:
            system = (system + "\n\n" + json_mode_note(fmt)).strip()
            if options["response_format"] != "none":
                payload["text"] = {"format": {"type": "json_object"}}
    if system:
        payload["instructions"] = system
    if chat.stream:
        payload["stream"] = True
    payload.update(_responses_tool_fields(chat))
    if chat.thinking is not None:
        effort = thinking_effort(chat.thinking)
        reasoning = {"effort": effort} if effort else {}
        if chat.thinking.include_thoughts:
            reasoning["summary"] = "auto"
        if reasoning:
            payload["reasoning"] = reasoning
    if chat.thinking is not None or any(item.get("type") == "reasoning" for item in items):
        payload["include"] = ["reasoning.encrypted_content"]
    limit = max(chat.max_tokens, RESPONSES_MIN_OUTPUT) if chat.max_tokens is not None else None
    for field, value in (("temperature", chat.temperature), ("top_p", chat.top_p),
                         ("max_output_tokens", limit), ("user", chat.user or None)):
        if value is not None:
            payload[field] = value
    for field in options.get(RESPONSES_REFUSED, ()):
        payload.pop(field, None)
    payload.update(options["extra_body"])
    return payload


# OpenAI refuses a smaller output limit.
RESPONSES_MIN_OUTPUT = 16

# The request fields a model may refuse ("Unsupported parameter: 'top_p' is not supported
# with this model": gpt-5 refuses sampling, gpt-4.1 reasoning), and the options key that
# lists those a request goes without on its next try.
RESPONSES_OPTIONAL = ("temperature", "top_p", "reasoning", "include", "max_output_tokens",
                      "parallel_tool_calls", "user")
RESPONSES_REFUSED = "responses_refused"
UNSUPPORTED_PARAMETER = re.compile(r"(?i)unsupported (?:parameter|value): '?([a-z_]+)")


def responses_parameter_retry(error: UpstreamError, options: Dict[str, Any]
                              ) -> Optional[Dict[str, Any]]:
    """Options for one more try when a Responses model refused a parameter it does not
    take: the same request without it."""
    found = UNSUPPORTED_PARAMETER.search(error.message) if error.status == 400 else None
    refused = tuple(options.get(RESPONSES_REFUSED, ()))
    if found is None or found.group(1) not in RESPONSES_OPTIONAL or found.group(1) in refused:
        return None
    return dict(options, **{RESPONSES_REFUSED: refused + (found.group(1),)})


# Fields of /responses/input_tokens that change the count (the ones about generating,
# reasoning included, it refuses, or a model may).
RESPONSES_COUNT_FIELDS = ("model", "input", "instructions", "tools", "tool_choice", "text")


def encode_responses_count_request(chat: Chat, model: str) -> Dict[str, Any]:
    payload = encode_responses_request(dataclasses.replace(chat, stream=False), model)
    return {k: v for k, v in payload.items() if k in RESPONSES_COUNT_FIELDS}


def decode_responses_count_response(payload: Any) -> int:
    tokens = payload.get("input_tokens") if isinstance(payload, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        raise UpstreamError("the upstream input_tokens reply has no input_tokens", status=502)
    return tokens


# -- replies: upstream -> neutral ------------------------------------------------------------

def decode_responses_usage(usage: Any) -> Optional[Usage]:
    if not isinstance(usage, dict):
        return None
    prompt, output = usage.get("input_tokens"), usage.get("output_tokens")
    if prompt is None and output is None:
        return None     # counts nothing: no usage
    given = fields_of(usage.get("input_tokens_details"))
    made = fields_of(usage.get("output_tokens_details"))
    return Usage(tokens_of(prompt), tokens_of(output),
                 cached_tokens=tokens_of(given.get("cached_tokens")),
                 cache_write_tokens=tokens_of(given.get("cache_write_tokens")),
                 reasoning_tokens=tokens_of(made.get("reasoning_tokens")),
                 input_missing=prompt is None)


# How OpenAI says when to come back inside a rate limit's message (what Codex reads too):
# "try again in 1.5s", "in 250ms", "in 6m15.84s", "in 1h2m".
TRY_AGAIN = re.compile(r"(?i)try again in\s*((?:\d{1,9}(?:\.\d{1,9})?\s*"
                       r"(?:ms|h|m(?!s)|s(?:econds?)?)\s*)+)")
WAIT_UNITS = {"ms": 0.001, "h": 3600.0, "m": 60.0, "s": 1.0}


def responses_failure(response: Dict[str, Any]) -> UpstreamError:
    """A failed response (status failed, or an `error` event) as the upstream's error."""
    error = fields_of(response.get("error")) or response
    code = text_of(error.get("code")) or text_of(error.get("type"))
    status = OPENAI_ERROR_STATUS.get(code, 502)
    message = text_of(error.get("message"))
    wait = TRY_AGAIN.search(message)
    retry_after = sum(float(number) * WAIT_UNITS[unit.lower()] for number, unit in re.findall(
        r"(?i)(\d+(?:\.\d+)?)\s*(ms|h|m|s)", wait.group(1))) if wait else None
    return UpstreamError("the upstream's response failed: %s" % (
        clip(message or code or "no reason given", 2000)),
        status=status, reason=code, retry_after=retry_after)


def _responses_reasoning_part(item: Dict[str, Any], with_text: bool = True
                              ) -> Optional[Part]:
    """A reasoning item of the upstream's as thinking: its summary and content texts
    (left out when they came as deltas already) and its encrypted_content; None if it
    has neither."""
    texts = [reply_text(reply_object(p, "a reasoning part").get("text"), "reasoning text")
             for key in ("summary", "content") if with_text
             for p in reply_list(item.get(key), "reasoning " + key)]
    text, signature = "\n\n".join(t for t in texts if t), text_of(item.get("encrypted_content"))
    if not text and not signature:
        return None
    return Part(THINKING, text=text, signature=signature, origin=RESPONSES_ORIGIN)


def _responses_output_call(item: Dict[str, Any]) -> Tuple[Part, bool]:
    name = reply_text(item.get("name"), "a call's name")
    if not name:
        raise UpstreamError("the upstream sent a tool call without a name", status=502)
    name = ResponsesTools.qualify(text_of(item.get("namespace")), name)
    if item.get("type") == "custom_tool_call":
        return Part(TOOL_CALL, id=text_of(item.get("call_id")) or new_id("call_"), name=name,
                    args={CUSTOM_TOOL_INPUT: reply_text(item.get("input"), "input")}), False
    return _openai_tool_call(item.get("call_id", ""), name, item.get("arguments"))


def decode_responses_response(payload: Any, model: str = "") -> Reply:
    """Response object -> neutral reply."""
    payload = reply_object(payload, "the reply")
    if not isinstance(payload.get("output"), list):
        raise UpstreamError("the upstream reply has no output: %s"
                            % clip(json.dumps(payload), 300), status=502)
    if payload.get("status") == "failed":
        raise responses_failure(payload)
    parts: List[Part] = []
    malformed = refused = False
    for item in payload["output"]:
        item = reply_object(item, "an output item")
        kind = item.get("type")
        if kind == "reasoning":
            part = _responses_reasoning_part(item)
            if part is not None:
                parts.append(part)
        elif kind == "message":
            for content in reply_list(item.get("content"), "message.content"):
                content = reply_object(content, "a content part")
                if content.get("type") == "refusal":
                    refused = True
                    parts.append(Part(TEXT, text=text_of(content.get("refusal"))))
                else:
                    parts.append(Part(TEXT, text=reply_text(content.get("text"),
                                                            "output_text.text")))
        elif kind in ("function_call", "custom_tool_call"):
            part, bad = _responses_output_call(item)
            malformed |= bad
            if not bad:
                parts.append(part)
    usage = decode_responses_usage(payload.get("usage"))
    return Reply(text_of(payload.get("id")) or new_id("resp_"),
                 text_of(payload.get("model")) or model,
                 [Choice(parts, _responses_finish(payload, parts, malformed, refused, usage))],
                 usage)


def _responses_finish(response: Dict[str, Any], parts: List[Part], malformed: bool,
                      refused: bool, usage: Optional[Usage]) -> Finish:
    if malformed:
        return Finish(MALFORMED_TOOL_CALL, usage)
    if response.get("status") == "incomplete":
        reason = fields_of(response.get("incomplete_details")).get("reason")
        return Finish(CONTENT_FILTER if reason == "content_filter" else LENGTH, usage)
    if any(p.type == TOOL_CALL for p in parts):
        return Finish(TOOL_CALLS, usage)
    return Finish(CONTENT_FILTER if refused else STOP, usage)


def responses_stream_error(data: str) -> Optional[UpstreamError]:
    """A failure a Responses server sent as a stream event, if `data` is one; or as a
    whole reply, a failed response or an error body, both with an `error` and no `type`
    (a passed-through reply is looked at with this too)."""
    if '"error"' not in data and "response.failed" not in data:
        return None
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict):
        return None
    if event.get("type") == "error":
        return responses_failure(fields_of(event.get("error")) or event)
    if event.get("type") == "response.failed":
        return responses_failure(fields_of(event.get("response")))
    if "type" not in event and fields_of(event.get("error")):
        return responses_failure(event)
    return None


def _stream_item_keys(event: Dict[str, Any], id_field: str) -> List[Any]:
    """What identifies the item an event is about: its id, and its output_index (some
    servers leave one of them out)."""
    keys: List[Any] = [text_of(event.get(id_field))] if text_of(event.get(id_field)) else []
    if isinstance(event.get("output_index"), int):
        keys.append(("index", event["output_index"]))
    return keys


def decode_responses_stream(raw_events: Iterable[Tuple[str, str]]) -> Iterator[Any]:
    """Responses SSE events -> neutral events: text and reasoning as their deltas come,
    reasoning's encrypted_content and tool calls whole when their item is done, and the
    finish from the terminal event. A stream without one raises: it was cut off."""
    streamed: Set[Any] = set()      # items (by id and by index) whose text came as deltas
    parts: List[Part] = []
    malformed = refused = False
    for raw in raw_events:
        if raw is IDLE:
            yield raw
            continue
        name, data = raw
        event = reply_object(stream_event_json(data, responses_stream_error), "a stream event")
        kind = text_of(event.get("type")) or name
        if kind == "response.output_text.delta":
            streamed.update(_stream_item_keys(event, "item_id"))
            delta = reply_text(event.get("delta"), "delta")
            if delta:
                yield Part(TEXT, text=delta)
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            streamed.update(_stream_item_keys(event, "item_id"))
            delta = reply_text(event.get("delta"), "delta")
            if delta:
                yield Part(THINKING, text=delta, origin=RESPONSES_ORIGIN)
        elif kind == "response.reasoning_summary_part.added" and \
                tokens_of(event.get("summary_index")) > 0:
            yield Part(THINKING, text="\n\n", origin=RESPONSES_ORIGIN)
        elif kind == "response.output_item.done":
            item = reply_object(event.get("item"), "item")
            item_kind = item.get("type")
            seen = bool(streamed.intersection(_stream_item_keys(dict(event, id=item.get("id")),
                                                                "id")))
            if item_kind == "reasoning":
                part = _responses_reasoning_part(item, with_text=not seen)
                if part is not None:     # a signature-only delta closes the block
                    yield part
            elif item_kind == "message":
                for content in reply_list(item.get("content"), "message.content"):
                    content = reply_object(content, "a content part")
                    if content.get("type") == "refusal":
                        refused = True
                        yield Part(TEXT, text=text_of(content.get("refusal")))
                    elif not seen and text_of(content.get("text")):
                        yield Part(TEXT, text=content["text"])
            elif item_kind in ("function_call", "custom_tool_call"):
                part, bad = _responses_output_call(item)
                malformed |= bad
                if not bad:
                    parts.append(part)
                    yield part
        elif kind in ("response.completed", "response.incomplete"):
            response = reply_object(event.get("response"), "response")
            yield _responses_finish(response, parts, malformed, refused,
                                    decode_responses_usage(response.get("usage")))
            return
    raise UpstreamError("the upstream stream ended before response.completed", status=502)


def _responses_usage_from(payload: Any, previous: Optional[Usage]) -> Optional[Usage]:
    """Usage in a passed-through response, or in a stream's terminal event."""
    if not isinstance(payload, dict):
        return previous
    usage = payload.get("usage") or fields_of(payload.get("response")).get("usage")
    return later_usage(decode_responses_usage(usage), previous)


# ---- 14. Upstream: Google Code Assist -------------------------------------------------------
#
# Gemini through Google's Code Assist endpoint, which Gemini CLI's "Login with Google" uses:
# the Gemini dialect inside an envelope ({model, project, user_prompt_id, request} out,
# {response, traceId} back, every stream event too), its errors sorted by what they say
# about the account that sent the request, and the pure half of a Google login: the
# credential files people already have, in the four shapes they come in, and the OAuth
# URLs. The half that does I/O (tokens, projects) is section 18's, the login commands
# section 29's.


# What the setup methods are told about the caller (gemini-cli code_assist/setup.ts).
CODE_ASSIST_METADATA = {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED",
                        "pluginType": "GEMINI"}



def objects_of(value: Any) -> List[Dict[str, Any]]:
    """A list of objects in a reply, read leniently: whatever else is in it is {}."""
    return [fields_of(item) for item in value] if isinstance(value, list) else []


def code_assist_model(model: str) -> str:
    """The model name Code Assist takes: bare, and renamed where Gemini CLI renames it."""
    model = model[len("models/"):] if model.startswith("models/") else model
    return CODE_ASSIST_MODEL_NAMES.get(model, model)


def encode_code_assist_request(chat: Chat, model: str,
                               options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Neutral request -> the envelope around a Gemini request. options["envelope"] holds
    what the account and the request add: project, user_prompt_id, session_id."""
    options = options or UPSTREAM_DEFAULTS
    envelope = options.get("envelope") or {}
    request = encode_gemini_request(chat, model, options)
    if envelope.get("session_id"):
        request["session_id"] = envelope["session_id"]
    wrapped = {"model": code_assist_model(model), "project": envelope.get("project", ""),
               "request": request}
    if envelope.get("user_prompt_id"):
        wrapped["user_prompt_id"] = envelope["user_prompt_id"]
    return wrapped


def code_assist_usage_node(payload: Dict[str, Any]) -> Any:
    """The usage of an enveloped reply: in the response (where Google puts it) or beside
    it, in either spelling; only a node with a count in it."""
    response = fields_of(payload.get("response"))
    for node in (response.get("usageMetadata"), response.get("usage_metadata"),
                 payload.get("usageMetadata"), payload.get("usage_metadata")):
        if isinstance(node, dict) and any(k.endswith(("TokenCount", "token_count"))
                                          for k in node):
            return camel_keys(node)
    return None


def unwrap_code_assist(payload: Any) -> Dict[str, Any]:
    """{response, traceId} -> the GenerateContentResponse inside, usage included. No
    response is a reply with no candidates (the Gemini decoders say what that means)."""
    payload = reply_object(payload, "the reply")
    response = dict(reply_object(payload.get("response"), "the reply's response"))
    usage = code_assist_usage_node(payload)
    if usage is not None:
        response["usageMetadata"] = usage
    return response


def decode_code_assist_response(payload: Any, model: str = "") -> Reply:
    return decode_gemini_response(unwrap_code_assist(payload), model)


def code_assist_stream_error(data: str) -> Optional[UpstreamError]:
    return gemini_stream_error(data, decode_code_assist_error)


def decode_code_assist_stream(raw_events: Iterable[Tuple[str, str]]) -> Iterator[Any]:
    """The SSE of :streamGenerateContent -> neutral events. As tolerant as Gemini CLI's
    own reader: an event that is not JSON is skipped (a stream that never finishes still
    fails, at its end)."""
    def chunks() -> Iterator[Any]:
        for raw in raw_events:
            if raw is IDLE:
                yield raw
                continue
            data = raw[1]
            error = code_assist_stream_error(data)
            if error is not None:
                raise error
            try:
                payload = strict_json(data)
            except (ValueError, RecursionError):
                log.debug("skipped an event Code Assist sent that is not JSON: %r",
                          data[:100])
                continue
            yield unwrap_code_assist(payload)
    return decode_gemini_chunks(chunks())


def encode_code_assist_count_request(chat: Chat, model: str) -> Dict[str, Any]:
    """:countTokens takes the model and the contents only (gemini-cli's converter)."""
    contents = encode_gemini_request(dataclasses.replace(chat, thinking=None, tools=[]),
                                     model)["contents"]
    return {"request": {"model": "models/" + code_assist_model(model), "contents": contents}}


# -- errors ------------------------------------------------------------------------------------

GO_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
GO_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6,
                     "ns": 1e-9}
# Times Google writes in an error's words: "reset after 19h14m47s.", "Please retry in 54.8s".
RESET_IN_WORDS = re.compile(r"(?:reset after|retry in) ((?:\d+(?:\.\d+)?(?:h|ms|m|s))+)")
# Server capacity, not the account's quota (gemini-cli googleQuotaErrors.ts).
CAPACITY_REASONS = ("MODEL_CAPACITY_EXHAUSTED", "MODEL_CAPACITY_EXCEEDED")
CAPACITY_WORDS = re.compile(r"no capacity available|capacity exceeded", re.I)


def parse_go_duration(text: str) -> Optional[float]:
    """Seconds in a Go duration ("373.801628ms", "13h19m1.2s"); None if it is not one."""
    parts = GO_DURATION_PART.findall(text.strip()) if isinstance(text, str) else []
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(number) * GO_DURATION_UNITS[unit] for number, unit in parts)


def _lenient_error_fields(text: str) -> Dict[str, Any]:
    """What can be read from an error body that is not quite JSON (a stray character
    from an SSE reader): its message and its ErrorInfo reason."""
    message = re.search(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
    reason = re.search(r'"reason"\s*:\s*"(\w+)"', text)
    code = re.search(r'"code"\s*:\s*(\d{3})', text)
    fields: Dict[str, Any] = {"message": message.group(1) if message else text}
    if reason:
        fields["details"] = [{"reason": reason.group(1)}]
    if code:
        fields["code"] = int(code.group(1))
    return {"error": fields}


def decode_code_assist_error(status: Optional[int], payload: Any,
                             headers: Optional[Dict[str, str]] = None) -> UpstreamError:
    """A Code Assist error, with what it says about the account (key_verdict) and how
    long to rest it: RetryInfo, then ErrorInfo's quotaResetDelay, then the time in the
    words. A 429 for Google's capacity rests no account; a 403 takes the account out; a
    404 takes it out for that model (preview models are not on every account)."""
    if isinstance(payload, str):
        payload = _lenient_error_fields(payload)
    if isinstance(payload, list) and payload:
        payload = payload[0]
    error = decode_gemini_error(status, payload, headers)
    details = fields_of(fields_of(payload).get("error")).get("details")
    infos = objects_of(details)
    metadata: Dict[str, Any] = {}
    for info in infos:
        metadata.update(fields_of(info.get("metadata")))
    # ErrorInfo's reason, which a QuotaFailure's quotaId must not hide here
    reason = next((text_of(i.get("reason")) for i in infos if text_of(i.get("reason"))), "")
    if error.retry_after is None:
        delay = parse_go_duration(text_of(metadata.get("quotaResetDelay")))
        words = RESET_IN_WORDS.search(error.message)
        error.retry_after = delay if delay is not None else \
            parse_go_duration(words.group(1)) if words else None
    if error.status == 429 and (reason in CAPACITY_REASONS or (
            CAPACITY_WORDS.search(error.message) and reason not in (
                "RATE_LIMIT_EXCEEDED", "QUOTA_EXHAUSTED"))):
        error.key_verdict = "keep"
    elif error.status == 429 and reason == "INSUFFICIENT_G1_CREDITS_BALANCE":
        error.key_verdict = "keep"      # credits are only spent when asked to
    elif error.status == 429 and error.retry_after is not None:
        error.key_verdict = "rest_for_model"    # till the reset Google names, a day's too
    elif error.status == 403:
        error.key_verdict = "out"
        link = text_of(metadata.get("validation_link") or metadata.get("validationUrl"))
        for info in infos:
            for item in objects_of(info.get("links")):
                link = link or text_of(item.get("url"))
        if reason == "VALIDATION_REQUIRED" and link:
            error.message += " (verify the account at %s)" % link
    elif error.status == 404:
        error.key_verdict = "out_for_model"
    return error


# -- Google logins: the pure half ------------------------------------------------------------

@dataclasses.dataclass
class GoogleCredential:
    """One credential file, in whichever of the four shapes it came (Gemini CLI's
    oauth_creds.json; google-auth's authorized-user files; CLIProxyAPI's auth files; a raw
    token reply), read into one record."""

    path: str
    refresh_token: str
    access_token: str = ""
    expires_at: float = 0.0     # epoch seconds; 0: unknown, so refresh before first use
    email: str = ""
    project: str = ""           # the file's own, if it names one
    client_id: str = ""         # the file's own OAuth client, if it names one
    client_secret: str = ""


def _expiry_seconds(value: Any) -> float:
    """An expiry in epoch seconds from epoch milliseconds (Gemini CLI) or an ISO 8601
    time (a naive one is UTC, as google-auth writes it); 0 when unknown."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        try:
            seconds = value / 1000.0 if value > 1e11 else float(value)
        except OverflowError:       # an integer no float holds
            return 0.0
        return seconds if seconds < 1e11 else 0.0     # past year 5000 (or inf): nonsense
    if not isinstance(value, str) or not value:
        return 0.0
    text = value.strip().replace("Z", "+00:00")
    # Python before 3.11 reads exactly six digits of a fraction; Go writes one to nine
    text = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def id_token_email(id_token: Any) -> str:
    """The email in an OpenID id_token's payload; no signature check, as it only names
    the account on a screen."""
    try:
        payload = text_of(id_token).split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return ""
    return text_of(fields_of(claims).get("email"))


def parse_google_credential(data: Any, path: str) -> GoogleCredential:
    """A credential file's JSON -> GoogleCredential; ValueError when it is none of the
    four shapes or has no refresh token (it could not outlive its hour)."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    nested = fields_of(data.get("token"))
    refresh = text_of(data.get("refresh_token")) or text_of(nested.get("refresh_token"))
    if not refresh:
        raise ValueError("no refresh_token in it")
    access = text_of(data.get("access_token")) or text_of(nested.get("access_token")) or \
        text_of(data.get("token") if isinstance(data.get("token"), str) else "")
    expires = _expiry_seconds(data.get("expiry_date")) or \
        _expiry_seconds(data.get("expiry")) or _expiry_seconds(nested.get("expiry"))
    project = text_of(data.get("project_id")) or text_of(data.get("quota_project_id"))
    if project.upper() == "ALL" or "," in project:   # CLIProxyAPI: several; use the first
        project = "" if project.upper() == "ALL" else project.split(",")[0].strip()
    return GoogleCredential(
        path=path, refresh_token=refresh, access_token=access if expires else "",
        expires_at=expires, email=text_of(data.get("email")) or id_token_email(
            data.get("id_token")), project=project,
        client_id=text_of(data.get("client_id")) or text_of(nested.get("client_id")),
        client_secret=text_of(data.get("client_secret")) or
        text_of(nested.get("client_secret")))


def pkce_challenge(verifier: str) -> str:
    """RFC 7636's S256 challenge of a code verifier."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def google_auth_url(auth_url: str, client_id: str, redirect_uri: str, state: str,
                    verifier: str = "") -> str:
    """The consent page's address: offline access (a refresh token), asked again each
    time (Google leaves the refresh token out of a silent re-consent), PKCE when the code
    will be pasted."""
    query = [("client_id", client_id), ("redirect_uri", redirect_uri),
             ("response_type", "code"), ("access_type", "offline"),
             ("scope", " ".join(GOOGLE_SCOPES)), ("state", state), ("prompt", "consent")]
    if verifier:
        query += [("code_challenge_method", "S256"),
                  ("code_challenge", pkce_challenge(verifier))]
    return auth_url + ("&" if "?" in auth_url else "?") + urllib.parse.urlencode(
        query, quote_via=urllib.parse.quote)


def read_code_assist_setup(payload: Any, requested: str) -> Dict[str, str]:
    """What loadCodeAssist's answer means: {"project", "tier"} when the account is set up;
    {"onboard": tier id} when it must be onboarded first; {"error": why} when it cannot be
    used (to verify, with the address to do it at; or a project it needs)."""
    payload = fields_of(payload)
    current = fields_of(payload.get("currentTier"))
    project = _project_id(payload.get("cloudaicompanionProject"))
    ineligible = objects_of(payload.get("ineligibleTiers"))
    if not current:
        for tier in ineligible:
            if tier.get("reasonCode") == "VALIDATION_REQUIRED" and tier.get("validationUrl"):
                return {"error": "Google asks to verify this account first: %s (%s)" % (
                    text_of(tier.get("validationUrl")),
                    text_of(tier.get("reasonMessage")) or "then try again")}
        default = next((t for t in objects_of(payload.get("allowedTiers"))
                        if t.get("isDefault")), {})
        return {"onboard": text_of(default.get("id")) or "legacy-tier"}
    tier = text_of(fields_of(payload.get("paidTier")).get("id")) or \
        text_of(current.get("id")) or "standard-tier"
    project = project or requested     # the project asked for, when the answer names none
    if not project:
        reasons = "; ".join(text_of(t.get("reasonMessage")) for t in ineligible
                            if t.get("reasonMessage"))
        return {"error": reasons or "this account needs a Google Cloud project: set "
                "\"project\" on the code-assist upstream"}
    return {"project": project, "tier": tier}


def onboarded_project(operation: Any) -> str:
    """The project a finished onboardUser operation gives."""
    return _project_id(fields_of(fields_of(operation).get("response")).get(
        "cloudaicompanionProject"))


def _project_id(project: Any) -> str:
    """cloudaicompanionProject: an id in loadCodeAssist, an {id, name} object in an
    onboarding's result (either may come in either)."""
    return text_of(fields_of(project).get("id")) if isinstance(project, dict) \
        else text_of(project)


# ---- 15. Dialect registry, upstream kinds and routes ----------------------------------
#
# A client dialect is a set of endpoints plus the functions that read its requests and
# write its replies; an upstream kind is how to talk to one provider API. The pipeline
# and the server (sections 21-28) know nothing dialect-specific beyond these tables: a
# new client dialect is one more section and one more entry here.

@dataclasses.dataclass
class Exchange:
    """One client request on its way through the proxy: what the access log reports and
    what the client-side encoders need to know about the request."""

    rid: str
    dialect: str                    # client dialect
    action: str                     # generate | stream | count_tokens | embed | ...
    client_model: str = ""
    upstream: str = ""
    upstream_model: str = ""
    stream: bool = False
    passthrough: bool = False       # same dialect on both sides: bytes forwarded as they are
    request_bytes: int = 0          # the request body's length
    session: str = ""               # the client's conversation, for sticky keys
    options: ReplyOptions = dataclasses.field(default_factory=ReplyOptions)
    encoding_format: str = "float"  # OpenAI embeddings: float | base64
    status: int = 0
    usage: Optional[Usage] = None
    error: str = ""
    attempts: int = 0               # upstream attempts (retries and fallbacks included)
    started: float = dataclasses.field(default_factory=time.monotonic)
    first_byte: float = 0.0         # seconds from the start to the response head
    client: Optional[ClientKey] = None  # who sent it (None: no key was accepted)
    key: str = ""                   # the upstream key's fingerprint or account's email
    response_bytes: int = 0         # the response body's bytes, as written
    error_kind: str = ""            # a failure's kind, where its status does not tell
    reply_headers: List[Tuple[str, str]] = dataclasses.field(default_factory=list)  # CORS
    # What a stream being delivered has spent so far, from when it is handed on until it
    # ends whole (then None): see settle_usage.
    usage_so_far: Optional[Callable[[], Optional[Usage]]] = None

    def settle_usage(self) -> None:
        """At a request's end (in its worker: a passed-through prompt's estimate decodes
        its body): a stream broken off (the upstream's failure or silence, the client
        leaving, a shutdown) is counted as far as it came, for the log, the ledger, the
        key and the client's limits. The model spent those tokens, though a stream's
        usage comes at its end."""
        so_far, self.usage_so_far = self.usage_so_far, None
        if so_far is not None:
            self.usage = so_far()


@dataclasses.dataclass(frozen=True)
class Endpoint:
    method: str
    pattern: "re.Pattern[str]"
    action: str
    accepts: Optional[Callable[[RequestHead], bool]] = None   # when paths are shared
    open_to_all: bool = False       # answered without a client key (health probes)
    admin: bool = False             # opened by server.admin_keys when there are any


@dataclasses.dataclass(frozen=True)
class ClientDialect:
    name: str
    endpoints: Tuple[Endpoint, ...]
    request_model: Callable[[Exchange, Any], str]
    reply_options: Callable[[RequestHead, Any], ReplyOptions]
    decode_request: Callable[[Exchange, RequestHead, Any, bool], Chat]
    response_id: Callable[[str], str]               # the reply's id, from the request id
    encode_response: Callable[[Reply, str, str, ReplyOptions], Dict[str, Any]]
    encode_stream: Callable[[Iterable[Any], str, str, ReplyOptions], Iterator[bytes]]
    stream_content_type: Callable[[Exchange], str]
    # How a stream that broke mid-way ends (the reply options say where it had got to).
    stream_error: Callable[[ProxyError, ReplyOptions], bytes]
    keepalive: bytes                                # sent when a stream is silent (b"": never)
    encode_error: Callable[[ProxyError], Tuple[int, List[Tuple[str, str]], bytes]]
    list_models: Callable[[List[str]], Dict[str, Any]]
    get_model: Callable[[str], Dict[str, Any]]
    # Pass-through (the upstream speaks this dialect too): whether a request streams, the
    # request with another model name, with its output capped, and the client's headers
    # that go on to the upstream.
    streams: Callable[[Exchange, Dict[str, Any]], bool]
    with_model: Callable[[Dict[str, Any], str], Dict[str, Any]]
    cap_output: Callable[[Dict[str, Any], int], Dict[str, Any]]
    passthrough_headers: Tuple[str, ...] = ()
    decode_count_request: Optional[Callable[[Exchange, Any, bool], Chat]] = None
    encode_count_response: Optional[Callable[[int], Dict[str, Any]]] = None
    decode_embed_request: Optional[Callable[[Exchange, Any], EmbedRequest]] = None
    encode_embed_response: Optional[Callable[[Exchange, EmbedReply], Dict[str, Any]]] = None
    # Each whole event of a passed-through stream, as it goes by (a dialect whose
    # in-stream error must continue the stream, as Responses' numbering does).
    note_passed: Optional[Callable[[ReplyOptions, str], None]] = None
    # Endpoints answered from what the proxy keeps, by action: (status, JSON body) from
    # the request head and the path's parameters.
    local_actions: Dict[str, Callable[[RequestHead, Dict[str, str]], Tuple[int, Any]]] = \
        dataclasses.field(default_factory=dict)
    # Whether its replies can say the model's tool call was malformed (Gemini's
    # MALFORMED_FUNCTION_CALL, which Gemini CLI retries); for the others it is the
    # upstream's failure (MalformedToolCall).
    tells_malformed_tool_calls: bool = False


def _body_model(ex: Exchange, payload: Any) -> str:
    model = payload.get("model") if isinstance(payload, dict) else None
    return expect(model, str, "model", "a model name")


def _is_gemini_client(head: RequestHead) -> bool:
    return bool(head.header("x-goog-api-key") or head.query_value("key"))


def _is_anthropic_client(head: RequestHead) -> bool:
    return bool(head.header("anthropic-version"))


def _capped(payload: Dict[str, Any], fields: Tuple[str, ...], cap: int) -> Dict[str, Any]:
    """A pass-through body whose output limit (any of `fields`) is at most `cap`; the
    same object when nothing changes."""
    over = [f for f in fields if cap and isinstance(payload.get(f), int) and
            not isinstance(payload[f], bool) and payload[f] > cap]
    return dict(payload, **{f: cap for f in over}) if over else payload


def _with_model(payload: Dict[str, Any], model: str) -> Dict[str, Any]:
    return payload if payload.get("model") == model else dict(payload, model=model)


def _gemini_client_request(ex: Exchange, head: RequestHead, payload: Any,
                           strict: bool) -> Chat:
    chat = decode_gemini_request(payload, ex.client_model, strict)
    chat.stream = ex.action == "stream"
    return chat


def _gemini_reply_options(head: RequestHead, payload: Any) -> ReplyOptions:
    config = camel_keys(fields_of(camel_keys(fields_of(payload)).get("generationConfig")))
    thinking = camel_keys(fields_of(config.get("thinkingConfig")))
    return ReplyOptions(include_thoughts=thinking.get("includeThoughts") is True,
                        sse=head.query_value("alt") == "sse")


def _gemini_cap_output(payload: Dict[str, Any], cap: int) -> Dict[str, Any]:
    for key in ("generationConfig", "generation_config"):
        config = payload.get(key)
        if isinstance(config, dict):
            capped = _capped(config, ("maxOutputTokens", "max_output_tokens"), cap)
            if capped is not config:
                payload = dict(payload, **{key: capped})
    return payload


def _gemini_embed_request(ex: Exchange, payload: Any) -> EmbedRequest:
    return decode_gemini_embed_request(payload, ex.client_model, ex.action == "batch_embed")


GEMINI_VERSIONS = r"/v1(?:beta|alpha)?"
GEMINI_DIALECT = ClientDialect(
    name="gemini",
    endpoints=tuple(
        [Endpoint("POST", re.compile(GEMINI_VERSIONS + r"/models/(?P<model>[^:]+):" + method
                                     + r"\Z"), action)
         for method, action in (("generateContent", "generate"),
                                ("streamGenerateContent", "stream"),
                                ("countTokens", "count_tokens"), ("embedContent", "embed"),
                                ("batchEmbedContents", "batch_embed"))] +
        [Endpoint("GET", re.compile(r"/v1(?:beta|alpha)/models\Z"), "list_models"),
         Endpoint("GET", re.compile(r"/v1(?:beta|alpha)/models/(?P<model>[^:]+)\Z"),
                  "get_model"),
         # /v1/models is also OpenAI's and Anthropic's: Gemini clients send a Google key.
         Endpoint("GET", re.compile(r"/v1/models\Z"), "list_models", _is_gemini_client),
         Endpoint("GET", re.compile(r"/v1/models/(?P<model>[^:]+)\Z"), "get_model",
                  _is_gemini_client)]),
    request_model=lambda ex, payload: ex.client_model,
    reply_options=_gemini_reply_options,
    decode_request=_gemini_client_request,
    response_id=lambda rid: rid,
    encode_response=encode_gemini_response,
    encode_stream=encode_gemini_stream,
    stream_content_type=lambda ex: "text/event-stream" if ex.options.sse else "application/json",
    stream_error=lambda error, options: b"",   # Gemini CLI retries a stream with no finishReason
    keepalive=b"",                    # Gemini CLI's parser hangs on anything but data lines
    tells_malformed_tool_calls=True,
    encode_error=encode_gemini_error,
    list_models=lambda names: {"models": [gemini_model_info(n) for n in names]},
    get_model=gemini_model_info,
    streams=lambda ex, payload: ex.action == "stream",
    with_model=lambda payload, model: payload,     # the model is in the path
    cap_output=_gemini_cap_output,
    decode_count_request=lambda ex, payload, strict: decode_gemini_count_request(
        payload, ex.client_model, strict),
    encode_count_response=lambda tokens: {"totalTokens": tokens},
    decode_embed_request=_gemini_embed_request,
    encode_embed_response=lambda ex, reply: encode_gemini_embed_response(
        reply, ex.action == "batch_embed"),
)


def _anthropic_client_request(ex: Exchange, head: RequestHead, payload: Any,
                              strict: bool) -> Chat:
    return decode_anthropic_request(payload, strict)


ANTHROPIC_DIALECT = ClientDialect(
    name="anthropic",
    endpoints=(
        Endpoint("POST", re.compile(r"/v1/messages\Z"), "generate"),
        Endpoint("POST", re.compile(r"/v1/messages/count_tokens\Z"), "count_tokens"),
        Endpoint("GET", re.compile(r"/v1/models\Z"), "list_models", _is_anthropic_client),
        Endpoint("GET", re.compile(r"/v1/models/(?P<model>.+)\Z"), "get_model",
                 _is_anthropic_client),
    ),
    request_model=_body_model,
    reply_options=lambda head, payload: ReplyOptions(),
    decode_request=_anthropic_client_request,
    response_id=lambda rid: "msg_" + rid,
    encode_response=encode_anthropic_response,
    encode_stream=encode_anthropic_stream,
    stream_content_type=lambda ex: "text/event-stream",
    stream_error=lambda error, options: anthropic_stream_error_event(error),
    keepalive=b'event: ping\ndata: {"type":"ping"}\n\n',
    encode_error=encode_anthropic_error,
    list_models=anthropic_model_list,
    get_model=anthropic_model_info,
    streams=lambda ex, payload: payload.get("stream") is True,
    with_model=_with_model,
    cap_output=lambda payload, cap: _capped(payload, ("max_tokens",), cap),
    passthrough_headers=("anthropic-version", "anthropic-beta"),
    decode_count_request=lambda ex, payload, strict: decode_anthropic_request(
        payload, strict, counting=True),
    encode_count_response=lambda tokens: {"input_tokens": tokens},
)


def _openai_reply_options(head: RequestHead, payload: Any) -> ReplyOptions:
    options = payload.get("stream_options") if isinstance(payload, dict) else None
    options = expect(options or {}, dict, "stream_options", "an object")
    return ReplyOptions(include_usage=options.get("include_usage") is True)


def _openai_embed_request(ex: Exchange, payload: Any) -> EmbedRequest:
    request = decode_openai_embeddings_request(payload)
    ex.encoding_format = payload.get("encoding_format") or "float"
    return request


OPENAI_DIALECT = ClientDialect(
    name="openai",
    endpoints=(
        Endpoint("POST", re.compile(r"(?:/v1)?/chat/completions\Z"), "generate"),
        Endpoint("POST", re.compile(r"(?:/v1)?/embeddings\Z"), "embed"),
        Endpoint("GET", re.compile(r"(?:/v1)?/models\Z"), "list_models"),
        Endpoint("GET", re.compile(r"(?:/v1)?/models/(?P<model>[^:]+)\Z"), "get_model"),
    ),
    request_model=_body_model,
    reply_options=_openai_reply_options,
    decode_request=lambda ex, head, payload, strict: decode_openai_request(payload, strict),
    response_id=lambda rid: "chatcmpl-" + rid,
    encode_response=encode_openai_response,
    encode_stream=encode_openai_stream,
    stream_content_type=lambda ex: "text/event-stream",
    stream_error=lambda error, options: openai_stream_error_event(error),
    keepalive=b": keep-alive\n\n",    # an SSE comment: every client skips it
    encode_error=encode_openai_error,
    list_models=openai_model_list,
    get_model=openai_model_info,
    streams=lambda ex, payload: payload.get("stream") is True,
    with_model=_with_model,
    cap_output=lambda payload, cap: _capped(payload, ("max_tokens", "max_completion_tokens"),
                                            cap),
    decode_embed_request=_openai_embed_request,
    encode_embed_response=lambda ex, reply: encode_openai_embeddings_response(
        reply, ex.client_model, ex.encoding_format),
)

def _responses_client_request(ex: Exchange, head: RequestHead, payload: Any,
                              strict: bool) -> Chat:
    turn = ex.options.responses
    if turn is not None:     # whose it is, and what keeping it would cost
        turn.owner, turn.size = response_owner(head), ex.request_bytes
    return decode_responses_request(payload, strict, turn)


RESPONSE_PATH = r"(?:/v1)?/responses/(?P<response_id>[^/]+)\Z"
RESPONSES_DIALECT = ClientDialect(
    name="responses",
    endpoints=(
        Endpoint("POST", re.compile(r"(?:/v1)?/responses\Z"), "generate"),
        Endpoint("POST", re.compile(r"(?:/v1)?/responses/input_tokens\Z"), "count_tokens"),
        Endpoint("GET", re.compile(RESPONSE_PATH), "get_response"),
        Endpoint("DELETE", re.compile(RESPONSE_PATH), "delete_response"),
    ),
    request_model=_body_model,
    reply_options=lambda head, payload: ReplyOptions(responses=responses_turn(payload)),
    decode_request=_responses_client_request,
    response_id=lambda rid: "resp_" + rid + new_id(nbytes=8),   # stored: unique for long
    encode_response=encode_responses_response,
    encode_stream=encode_responses_stream,
    stream_content_type=lambda ex: "text/event-stream",
    stream_error=responses_stream_error_event,
    keepalive=b": keep-alive\n\n",    # Codex and the SDK skip SSE comments
    encode_error=encode_responses_error,
    list_models=openai_model_list,    # /v1/models is OpenAI's endpoint for both
    get_model=openai_model_info,
    streams=lambda ex, payload: payload.get("stream") is True,
    with_model=_with_model,
    cap_output=lambda payload, cap: _capped(payload, ("max_output_tokens",), cap),
    decode_count_request=lambda ex, payload, strict: decode_responses_request(
        payload, strict, ex.options.responses),
    encode_count_response=lambda tokens: {"object": "response.input_tokens",
                                          "input_tokens": tokens},
    note_passed=lambda options, event: options.responses.passed(event)
    if options.responses is not None else None,
    local_actions={"get_response": get_stored_response,
                   "delete_response": delete_stored_response},
)

# Order matters where paths are shared: an endpoint with `accepts` is tried before
# OpenAI's, which takes what is left.
CLIENT_DIALECTS: Dict[str, ClientDialect] = {
    "gemini": GEMINI_DIALECT, "anthropic": ANTHROPIC_DIALECT, "openai": OPENAI_DIALECT,
    "responses": RESPONSES_DIALECT}

# The proxy's own endpoints, answered whatever the dialect; /health is open to all (load
# balancers probe it); the operator's pages need an admin key (or, with none set, a client
# key like everything else).
SERVICE_ENDPOINTS = (
    Endpoint("GET", re.compile(r"/healthz?\Z"), "health", open_to_all=True),
    Endpoint("GET", re.compile(r"/status\Z"), "status", admin=True),
    Endpoint("GET", re.compile(r"/stats\Z"), "stats", admin=True),
    Endpoint("GET", re.compile(r"/metrics\Z"), "metrics", admin=True),
    Endpoint("GET", re.compile(r"/dashboard/?\Z"), "dashboard", admin=True),
)


@dataclasses.dataclass(frozen=True)
class UpstreamKind:
    """How to talk to one provider API over HTTP, or (answer_locally) without any."""

    name: str
    dialect: str = ""                           # the client dialect it speaks natively
    auth_headers: Callable[[str, Dict[str, Any]], List[Tuple[str, str]]] = \
        lambda key, options: []
    generate_path: Callable[[str, bool], str] = lambda model, stream: ""
    encode_request: Optional[Callable[[Chat, str, Dict[str, Any]], Dict[str, Any]]] = None
    decode_response: Optional[Callable[[Any, str], Reply]] = None
    decode_stream: Optional[Callable[[Iterable[Tuple[str, str]]], Iterator[Any]]] = None
    stream_event_error: Callable[[str], Optional[UpstreamError]] = lambda data: None
    decode_error: Optional[Callable[[int, Any, Dict[str, str]], UpstreamError]] = None
    retry_with: Callable[[UpstreamError, Dict[str, Any]], Optional[Dict[str, Any]]] = \
        lambda error, options: None             # different options worth one more try
    usage_from: Callable[[Any, Optional[Usage]], Optional[Usage]] = \
        lambda payload, previous: previous      # usage in a passed-through reply or event
    count_path: Optional[Callable[[str], str]] = None
    encode_count_request: Optional[Callable[[Chat, str], Dict[str, Any]]] = None
    decode_count_response: Optional[Callable[[Any], int]] = None
    embed_path: Optional[Callable[[str], str]] = None
    encode_embed_request: Optional[Callable[[EmbedRequest, str], Dict[str, Any]]] = None
    decode_embed_response: Optional[Callable[[Any], EmbedReply]] = None
    passthrough_path: Callable[[Exchange, RequestHead, str], str] = \
        lambda ex, head, model: ""
    answer_locally: Optional[Callable[[Chat, str], Iterator[Any]]] = None
    # Truthy for a passed-through stream's last event (or, in Gemini's JSON-array form,
    # a stretch of its text holding the end): a stream that ends without it was cut
    # off, and the client must hear so.
    stream_end: Optional[Callable[[str], Any]] = None
    # True for the one (name, data) event after which nothing of the reply can come
    # ([DONE], message_stop, a response's terminal event): a stream read up to it is
    # whole, whatever its body does next. A finish is not it: with several choices
    # another may still be talking, and usage may follow. Named events are known by
    # their name, which no key inside their JSON can fake. None (Gemini): each candidate
    # finishes in a chunk of its own, and only the body's end ends the reply.
    stream_last: Optional[Callable[[Tuple[str, str]], bool]] = None
    reads_think_tags: bool = False              # <think> blocks in the text (think_tags)
    sends_stop: bool = True                     # False: the proxy cuts at stop strings
    # For a passed-through chat reply: whether a whole reply's JSON, or a stream event's,
    # holds any of the reply (an OpenAI-compatible one: a choice). None: all that is not
    # an error does.
    reply_begun: Optional[Callable[[Any], bool]] = None
    # The text fields of its stream's events, for an estimate of a passed-through
    # stream's output when no usage came (None: TEXT_FIELD, in section 26).
    stream_text_field: Optional["re.Pattern[str]"] = None


def openai_auth_headers(key: str, options: Dict[str, Any]) -> List[Tuple[str, str]]:
    return _auth_headers(key, options, "bearer")


def gemini_auth_headers(key: str, options: Dict[str, Any]) -> List[Tuple[str, str]]:
    return _auth_headers(key, options, "x-goog-api-key")


def anthropic_auth_headers(key: str, options: Dict[str, Any]) -> List[Tuple[str, str]]:
    return _auth_headers(key, options, "x-api-key") + \
        [("anthropic-version", options["anthropic_version"])]


def _auth_headers(key: str, options: Dict[str, Any], native: str) -> List[Tuple[str, str]]:
    style = native if options["auth"] == "auto" else options["auth"]
    if not key or style == "none":
        return []
    if style == "bearer":
        return [("authorization", "Bearer " + key)]
    return [(style, key)]    # api-key (Azure), x-api-key, x-goog-api-key


def _usage_field(decode: Callable[[Any], Optional[Usage]], field: str
                 ) -> Callable[[Any, Optional[Usage]], Optional[Usage]]:
    return lambda payload, previous: later_usage(
        decode(payload.get(field)) if isinstance(payload, dict) else None, previous)


def _anthropic_usage_from(payload: Any, previous: Optional[Usage]) -> Optional[Usage]:
    if not isinstance(payload, dict):
        return previous
    usage = payload.get("usage") or fields_of(payload.get("message")).get("usage")
    return decode_anthropic_usage(usage, previous) if usage else previous


def gemini_model_path(model: str, method: str) -> str:
    """/v1beta/models/<model>:<method>, the model quoted as one path segment: a name with
    "/" or ".." in it stays a name (the key goes with the request)."""
    return "/v1beta/models/%s:%s" % (urllib.parse.quote(model, safe=""), method)


GEMINI_METHODS = {"generate": "generateContent", "stream": "streamGenerateContent",
                  "count_tokens": "countTokens", "embed": "embedContent",
                  "batch_embed": "batchEmbedContents"}


def _gemini_passthrough_path(ex: Exchange, head: RequestHead, model: str) -> str:
    """The client's method, on the API version converted requests use too (a client on
    /v1 gets what /v1beta serves), with its query but never its key."""
    query = {k: v for k, v in head.query.items() if k != "key"}
    return gemini_model_path(model, GEMINI_METHODS[ex.action]) + (
        "?" + urllib.parse.urlencode(query, doseq=True) if query else "")


def echo_events(chat: Chat, model: str) -> Iterator[Any]:
    """The echo upstream: "echo (<model>): " and the last user text (or what the tools
    returned), to check a client's wiring with no provider at all. Streams it word by
    word like a model would, once for each choice asked for."""
    last = next((m for m in reversed(chat.messages) if m.role == "user"), Message("user", []))
    texts = [p.text.strip() for p in last.parts if p.type == TEXT and p.text.strip()]
    said = texts[-1] if texts else "; ".join(
        "%s returned %s" % (p.name, clip(tool_result_text(p), 200))
        for p in last.parts if p.type == TOOL_RESULT)
    text = "echo (%s): %s" % (chat.model or model, said or "(no text)")
    parts = []
    for index in range(max(1, chat.n)):
        for word in re.findall(r"\S+\s*", text):
            part = Part(TEXT, text=word, choice=index)
            parts.append(part)
            yield part
    usage = estimate_usage(chat, parts)
    for index in range(max(1, chat.n)):
        yield Finish(STOP, usage, choice=index)


RESPONSES_FINAL_EVENTS = frozenset(("response.completed", "response.incomplete",
                                    "response.failed"))
UPSTREAM_KINDS: Dict[str, UpstreamKind] = {
    "openai": UpstreamKind(
        name="openai", dialect="openai", auth_headers=openai_auth_headers,
        generate_path=lambda model, stream: "/chat/completions",
        encode_request=encode_openai_request, decode_response=decode_openai_response,
        decode_stream=decode_openai_stream, stream_event_error=openai_stream_error,
        decode_error=decode_openai_error, usage_from=_usage_field(decode_openai_usage, "usage"),
        embed_path=lambda model: "/embeddings",
        encode_embed_request=encode_openai_embeddings_request,
        decode_embed_response=decode_openai_embeddings_response,
        passthrough_path=lambda ex, head, model: "/embeddings" if ex.action == "embed"
        else "/chat/completions",
        stream_end=openai_stream_end, stream_last=lambda event: event[1].startswith("[DONE]"),
        reads_think_tags=True,
        reply_begun=lambda payload: isinstance(payload, dict) and bool(payload.get("choices"))),
    "gemini": UpstreamKind(
        name="gemini", dialect="gemini", auth_headers=gemini_auth_headers,
        generate_path=lambda model, stream: gemini_model_path(
            model, "streamGenerateContent?alt=sse" if stream else "generateContent"),
        encode_request=encode_gemini_request, decode_response=decode_gemini_response,
        decode_stream=decode_gemini_stream, stream_event_error=gemini_stream_error,
        decode_error=decode_gemini_error, retry_with=gemini_schema_retry,
        usage_from=_usage_field(decode_gemini_usage, "usageMetadata"),
        count_path=lambda model: gemini_model_path(model, "countTokens"),
        encode_count_request=encode_gemini_count_request,
        decode_count_response=decode_gemini_count_response,
        embed_path=lambda model: gemini_model_path(model, "batchEmbedContents"),
        encode_embed_request=encode_gemini_embed_request,
        decode_embed_response=decode_gemini_embed_response,
        passthrough_path=_gemini_passthrough_path,
        stream_end=re.compile(r'"finishReason": ?"').search),
    "anthropic": UpstreamKind(
        name="anthropic", dialect="anthropic", auth_headers=anthropic_auth_headers,
        generate_path=lambda model, stream: "/v1/messages",
        encode_request=encode_anthropic_request, decode_response=decode_anthropic_response,
        decode_stream=decode_anthropic_stream, stream_event_error=anthropic_stream_error,
        decode_error=decode_anthropic_error, usage_from=_anthropic_usage_from,
        count_path=lambda model: "/v1/messages/count_tokens",
        encode_count_request=encode_anthropic_count_request,
        decode_count_response=decode_anthropic_count_response,
        passthrough_path=lambda ex, head, model: "/v1/messages/count_tokens"
        if ex.action == "count_tokens" else "/v1/messages",
        stream_end=re.compile(r'"type": ?"message_stop"').search,
        stream_last=lambda event: event[0] == "message_stop"),
    "openai-responses": UpstreamKind(
        name="openai-responses", dialect="responses", auth_headers=openai_auth_headers,
        generate_path=lambda model, stream: "/responses",
        encode_request=encode_responses_request, decode_response=decode_responses_response,
        decode_stream=decode_responses_stream, stream_event_error=responses_stream_error,
        decode_error=decode_openai_error, retry_with=responses_parameter_retry,
        usage_from=_responses_usage_from,
        count_path=lambda model: "/responses/input_tokens",
        encode_count_request=encode_responses_count_request,
        decode_count_response=decode_responses_count_response,
        embed_path=lambda model: "/embeddings",     # OpenAI's, beside /responses
        encode_embed_request=encode_openai_embeddings_request,
        decode_embed_response=decode_openai_embeddings_response,
        passthrough_path=lambda ex, head, model: "/responses/input_tokens"
        if ex.action == "count_tokens" else "/responses",
        stream_end=re.compile(r'"type": ?"response\.(?:completed|incomplete|failed)"').search,
        stream_last=lambda event: event[0] in RESPONSES_FINAL_EVENTS,
        # Its deltas only: each text comes again whole in its .done events, its item's
        # and the response's.
        stream_text_field=re.compile(r'"delta": ?"([^"\\]*(?:\\.[^"\\]*)*)"'),
        sends_stop=False),
    # No dialect of its own: a Gemini client's requests are converted too (the envelope,
    # the account's project), never passed through.
    "code-assist": UpstreamKind(
        name="code-assist", auth_headers=openai_auth_headers,
        generate_path=lambda model, stream: CODE_ASSIST_API + (
            ":streamGenerateContent?alt=sse" if stream else ":generateContent"),
        encode_request=encode_code_assist_request,
        decode_response=decode_code_assist_response,
        decode_stream=decode_code_assist_stream, stream_event_error=code_assist_stream_error,
        decode_error=decode_code_assist_error, retry_with=gemini_schema_retry,
        count_path=lambda model: CODE_ASSIST_API + ":countTokens",
        encode_count_request=encode_code_assist_count_request,
        decode_count_response=decode_gemini_count_response),
    "echo": UpstreamKind(name="echo", answer_locally=echo_events),
}
assert set(UPSTREAM_KINDS) == set(SETTINGS_BY_PATH["upstream", "kind"].choices)


def upstream_path(base_path: str, path: str) -> str:
    """A kind's path under a base URL that may already end in an API version
    (https://api.anthropic.com/v1, .../v1beta): that version wins over the kind's."""
    last = base_path.rsplit("/", 1)[-1]
    if re.match(r"v\d+(?:beta|alpha)?\d*\Z", last):
        first, _, rest = path.lstrip("/").partition("/")
        if re.match(r"v\d+(?:beta|alpha)?\d*\Z", first):
            return "/" + rest
    return path


def routable_models(config: Config) -> List[str]:
    """Model names a client can ask for: every exact route, each upstream's listed models
    that route to it, and the well-known Gemini names a pattern route covers."""
    names = [r.pattern for r in config.routes if not is_glob(r.pattern)]
    for name, spec in config.upstreams.items():
        names += [m for m in spec["models"] if resolve_route(config, m)[0].upstream == name]
    globs = [r for r in config.routes if is_glob(r.pattern)]
    names += [n for n in KNOWN_GEMINI_MODELS if any(r.matches(n) for r in globs)]
    return list(dict.fromkeys(names))


def match_endpoint(head: RequestHead) -> Tuple[Optional[ClientDialect], Optional[Endpoint],
                                              Dict[str, str], List[str]]:
    """(dialect, endpoint, path parameters, methods the path allows) for a request; the
    dialect is None for the proxy's own endpoints, the endpoint None when nothing takes
    this method on this path (the allowed methods then say 404 or 405)."""
    allowed: List[str] = []
    for dialect, endpoints in [(None, SERVICE_ENDPOINTS)] + [
            (d, d.endpoints) for d in CLIENT_DIALECTS.values()]:
        for endpoint in endpoints:
            match = endpoint.pattern.match(head.path)
            if match is None or (endpoint.accepts is not None and not endpoint.accepts(head)):
                continue
            methods = [endpoint.method] + (["HEAD"] if endpoint.method == "GET" else [])
            if head.method in methods:
                return dialect, endpoint, match.groupdict(), methods
            allowed += methods
    return None, None, {}, sorted(set(allowed))


def session_key(head: RequestHead, payload: Any) -> str:
    """The conversation a request belongs to, as its client names it, so that a key pool
    keeps it on one key: prompt_cache_key (OpenAI's Chat Completions and Responses;
    Codex sets it), else a session-id header (Codex and other agents send one; Claude
    Code its own), else Anthropic's metadata.user_id (Claude Code names its session in
    it too). Only the pool sees it: an upstream that takes a session id gets a hash."""
    key = fields_of(payload).get("prompt_cache_key")
    if not isinstance(key, str) or not key:
        key = head.header("session-id") or head.header("x-session-id") or \
            head.header("x-claude-code-session-id") or \
            text_of(fields_of(fields_of(payload).get("metadata")).get("user_id"))
    return key[:256]


def guess_dialect(head: Optional[RequestHead]) -> ClientDialect:
    """The dialect an unroutable or malformed request most likely speaks, for its error:
    by the headers each SDK sends, else Gemini (the proxy's first clients)."""
    if head is None:
        return GEMINI_DIALECT
    if _is_anthropic_client(head) or head.path.startswith("/v1/messages"):
        return ANTHROPIC_DIALECT
    if head.path.startswith(("/v1/responses", "/responses")):
        return RESPONSES_DIALECT
    if not _is_gemini_client(head) and (head.header("authorization") or
                                        head.path.startswith(("/v1/chat", "/chat/"))):
        return OPENAI_DIALECT
    return GEMINI_DIALECT


# ---- 16. Upstream connections --------------------------------------------------------------
#
# HTTP/1.1 connections of the proxy's own, TLS decrypted by its own reads: read by worker
# threads with blocking reads, or by the event loop reading only what has come (section
# 17 says when). Connections are kept alive and pooled per target (scheme, host, port,
# base path, proxy): a fresh TLS handshake costs real users 100-300 ms.
# HTTPS_PROXY/HTTP_PROXY/NO_PROXY are honoured.

@dataclasses.dataclass(frozen=True)
class UpstreamTarget:
    scheme: str
    host: str
    port: int
    base_path: str
    proxy: Optional[Tuple[str, int]] = None     # (host, port) of an HTTP proxy
    proxy_auth: str = ""                        # Proxy-Authorization value

    def url(self, path: str) -> str:
        """The request target: absolute-form through a plain-HTTP proxy, else a path."""
        if self.proxy and self.scheme == "http":
            return "http://%s%s%s" % (host_header(self.host, self.port, 80), self.base_path,
                                      path)
        return self.base_path + path


def upstream_target(base_url: str, environ: Optional[Dict[str, str]] = None) -> UpstreamTarget:
    parts = urllib.parse.urlsplit(base_url)
    scheme, host = parts.scheme, parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    proxies = proxies_named_in(os.environ if environ is None else environ)
    proxy_url = proxies.get(scheme)
    bypass = proxies.get("no", "")
    if proxy_url and not _proxy_bypassed(host, port, bypass):
        proxy = urllib.parse.urlsplit(proxy_url if "://" in proxy_url else "http://" + proxy_url)
        auth = ""
        if proxy.username:
            credentials = "%s:%s" % (urllib.parse.unquote(proxy.username),
                                     urllib.parse.unquote(proxy.password or ""))
            auth = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
        return UpstreamTarget(scheme, host, port, parts.path.rstrip("/"),
                              (proxy.hostname or "", proxy.port or 8080), auth)
    return UpstreamTarget(scheme, host, port, parts.path.rstrip("/"))


def is_this_address(target: UpstreamTarget, host: str, port: int) -> bool:
    """Whether an upstream is this proxy itself: its port, and its listening address or
    a loopback one while it listens on loopback or on every address."""
    if target.proxy or target.port != port:
        return False
    if target.host.lower() == host.lower():
        return True
    listens_here = host in ("", "0.0.0.0", "::") or is_loopback_host(host)
    return listens_here and is_loopback_host(target.host)


def proxies_named_in(environ: Mapping[str, str]) -> Dict[str, str]:
    """The HTTP proxies an environment names, by scheme ("https" for https_proxy, "no"
    for no_proxy's list), as Python's urllib reads them: a lowercase name over its
    uppercase twin, an empty one unsetting it (`https_proxy= python3 gemini_proxy.py`
    goes around a site-wide HTTPS_PROXY); never HTTP_PROXY in a CGI request
    (REQUEST_METHOD set: its client's Proxy header could have set it, httpoxy)."""
    found: Dict[str, str] = {}
    cgi = "REQUEST_METHOD" in environ
    for name, value in sorted(environ.items(), key=lambda item: item[0].islower()):
        lowered = name.lower()
        if not lowered.endswith("_proxy") or \
                (cgi and lowered == "http_proxy" and not name.islower()):
            continue
        if value:
            found[lowered[:-len("_proxy")]] = value
        elif name.islower():
            found.pop(lowered[:-len("_proxy")], None)
    return found


def _proxy_bypassed(host: str, port: int, no_proxy: str) -> bool:
    """NO_PROXY semantics as curl has them: "*", exact hosts, domain suffixes, host:port."""
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.partition(":")
        if entry_port and entry_port != str(port):
            continue
        name = name.lstrip(".")
        if host.lower() == name or host.lower().endswith("." + name):
            return True
    return False


DEADLINE_SLACK = 0.05    # seconds a read may end past its deadline (see _receive)
REQUEST_TARGET_BAD = re.compile(r"[\x00-\x20\x7f]")


class TunnelRefused(OSError):
    """An HTTP proxy would not open a CONNECT tunnel to the upstream."""


# The most bytes a connection takes from its socket in one read. On the event loop, over
# TLS, it is also the most ciphertext one read decrypts: an upstream that sends records
# with nothing in them (key updates, session tickets) cannot keep a read going.
READ_BYTES = 65536
# After a read that brought records with no data, the loop's next takes a record's
# worth: 64 KiB of key updates that each ask for one back cost it some 76 ms (measured:
# 2,400 records).
TLS_RECORD_BYTES = 16384
# ... and the most such records one reply may bring before it is given up (a 502), data
# between them or not: a server sends two session tickets after its handshake and,
# seldom, a key update. So they cost the loop under 0.1 s a request (the first read's
# 64 KiB the most of it).
TLS_EMPTY_RECORDS = 1000
# A large request body is encrypted a slice at a time (never held twice over, whole).
TLS_WRITE_BYTES = 262144


class TLSSession:
    """TLS as bytes in and bytes out (ssl.SSLObject over memory BIOs): the connection does
    the socket's reads and writes, so one read decrypts only the ciphertext that read
    took. An SSLSocket's non-blocking recv goes on through every record already in the
    socket that holds no data (OpenSSL's auto-retry, which Python sets): an upstream
    sending key updates without end held the event loop for seconds in one call."""

    def __init__(self, context: ssl.SSLContext, server_hostname: str):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_hostname=server_hostname)
        self.ended = False  # the server's close_notify, or the connection's end, was read
        # Records with no data in them since the request (TLS_EMPTY_RECORDS), and
        # whether the last read brought some.
        self.empty_records = 0
        self.last_read_empty = False
        # Where the server's records end (OpenSSL takes a record's start from the BIO
        # and says nothing of it): bytes of the record under way yet to come, and the
        # start of a record header split between reads.
        self._record_left = 0
        self._header = b""

    def handshake(self, ciphertext: bytes = b"") -> bool:
        """Whether the handshake is done, given the server's next bytes (what to answer
        is to_send()'s)."""
        if ciphertext:
            self._frame(ciphertext)
            self._incoming.write(ciphertext)
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def encrypt(self, plaintext: bytes) -> bytes:
        self._tls.write(plaintext)  # (no renegotiation: a write never waits for a read)
        return self._outgoing.read()

    def to_send(self) -> bytes:
        """Records the session made by itself: the handshake's, a key update's answer."""
        return self._outgoing.read()

    def decrypt(self, ciphertext: bytes) -> bytes:
        """The data of every whole record so far, given the socket's next bytes (b"": the
        connection's end, after which `ended`). BadReply past TLS_EMPTY_RECORDS."""
        whole = 0   # records that have come whole with these bytes
        if ciphertext:
            under_way = self._record_left > 0   # (begun in an earlier read)
            whole = under_way + self._frame(ciphertext) - (self._record_left > 0)
            self._incoming.write(ciphertext)
        else:
            self._incoming.write_eof()
        parts = []
        while True:     # (until OpenSSL wants more: it may have taken a record's start)
            try:
                data = self._tls.read(READ_BYTES)   # (a record at most)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                # (closed with no close_notify, which SSLSocket reads as the end too; or
                # one, where a Python takes OpenSSL 3's unexpected EOFs as clean)
                data = b""
            if not data:
                self.ended = True
                break
            parts.append(data)
        empty = whole - len(parts)  # (a record's data comes whole, in one read of it)
        self.last_read_empty = empty > 0
        self.empty_records += empty
        if self.empty_records > TLS_EMPTY_RECORDS:
            raise BadReply("over %d TLS records with no data in them" % TLS_EMPTY_RECORDS)
        return b"".join(parts)

    def _frame(self, ciphertext: bytes) -> int:
        """The records begun in these bytes."""
        if self._header:    # (seldom: copies the read)
            ciphertext, self._header = self._header + ciphertext, b""
        at, size = self._record_left, len(ciphertext)
        begun = 0
        while at + 5 <= size:   # (five bytes of header, the record's length its last two)
            at += 5 + (ciphertext[at + 3] << 8 | ciphertext[at + 4])
            begun += 1
        self._record_left = max(at - size, 0)
        self._header = ciphertext[at:] if at < size else b""
        return begun

    def partway(self) -> bool:
        """Whether a record has begun to arrive and not yet ended."""
        return bool(self._record_left or self._header) and not self.ended


class UpstreamConnection:
    """One HTTP/1.1 connection to an upstream: plain, TLS, or TLS through an HTTP proxy's
    CONNECT tunnel, as its target says. The request goes out in one write (a large body
    after its head, a slice at a time); the reply is read into one buffer and framed by
    section 5. A body is handed over as all of it that has arrived (http.client hands a
    chunked body over a chunk at a time: a stream would pay a pass through the whole
    proxy for every event). `sock` is the TCP socket, TLS or not (TLSSession encrypts
    and decrypts).

    Every blocking read has a deadline (time.monotonic()), however the bytes trickle in:
    the socket's timeout bounds one recv, the deadline the whole wait. The event loop's
    reads never block; it keeps the clocks itself (UpstreamResponse.silence_left)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self._tls: Optional[TLSSession] = None
        # A byte of the reply to the last request has come (over TLS: its data, or part
        # of a record: a reply cut inside its first record had begun all the same).
        self.replied = False
        self._unsent = b""  # records the TLS session made that the socket has not taken
        # The last non-blocking read took less than it asked for, and data: the socket
        # was empty, and the loop has something to work on.
        self._emptied = False

    @classmethod
    def connect(cls, target: UpstreamTarget, tls: Callable[[], ssl.SSLContext],
                timeout: float) -> "UpstreamConnection":
        """A connection to the target; `tls()` gives the TLS settings, for https."""
        deadline = time.monotonic() + timeout
        sock = socket.create_connection(target.proxy or (target.host, target.port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = cls(sock)
            if target.scheme == "https":
                if target.proxy:
                    conn._tunnel(target, deadline)
                conn._shake_hands(TLSSession(tls(), target.host), deadline)
        except BaseException:
            sock.close()
            raise
        return conn

    @classmethod
    def connected_at_once(cls, family: int, address: Any) -> Optional["UpstreamConnection"]:
        """On the event loop: a plain connection to `address`, if connecting ends without
        a wait, as to an upstream on this machine; None otherwise (a worker connects, and
        says what failed, as it does when no socket can be made: EMFILE)."""
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            return None
        try:
            sock.setblocking(False)
            error = sock.connect_ex(address)
            if error in CONNECT_UNDER_WAY and writable_now(sock):
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if not error:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return cls(sock)
        except OSError:
            pass
        sock.close()
        return None

    def _tunnel(self, target: UpstreamTarget, deadline: float) -> None:
        authority = host_header(target.host, target.port, 0)
        lines = ["CONNECT %s HTTP/1.1" % authority, "host: " + authority]
        if target.proxy_auth:
            lines.append("proxy-authorization: " + target.proxy_auth)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = self.read_head(deadline)
        if head.status != 200 or self.buf:
            raise TunnelRefused("the HTTPS proxy refused a tunnel to %s (%d%s)" % (
                authority, head.status, ": it wants credentials in HTTPS_PROXY"
                if head.status == 407 else ""))

    def _shake_hands(self, tls: TLSSession, deadline: float) -> None:
        """The TLS handshake, all of it within the deadline (socket.timeout past it)."""
        received = b""
        while not tls.handshake(received):
            self.sock.sendall(tls.to_send())
            self._wait_at_most(deadline)
            received = self.sock.recv(READ_BYTES)
            if not received:
                raise ConnectionResetError(errno.ECONNRESET,
                                           "the connection closed in the TLS handshake")
        self.sock.sendall(tls.to_send())
        self._tls = tls

    def send(self, method: str, url: str, target: UpstreamTarget,
             headers: Dict[str, str], body: bytes, at_once: bool = False) -> bytes:
        """The request; a ValueError, before anything is sent, for a target or header
        that would not make a well-formed one (from the configuration: base_url, headers).
        `at_once` (on the event loop): what the socket takes without waiting, and the
        rest of the bytes for the socket (encrypted, over TLS) is returned, for a worker
        to send (an upstream that reads its requests slowly fills the buffers between);
        otherwise b"", all of it sent."""
        if REQUEST_TARGET_BAD.search(url):
            raise ValueError("the request target has spaces or control characters")
        lines = ["%s %s HTTP/1.1" % (method, url)]
        given = {name.lower() for name in headers}
        if "host" not in given:
            lines.append("host: " + host_header(target.host, target.port,
                                                443 if target.scheme == "https" else 80))
        if "accept-encoding" not in given:
            lines.append("accept-encoding: identity")   # never a compressed reply
        for name, value in headers.items():
            # (a name or value latin-1 cannot encode is a ValueError as well)
            if not HTTP_TOKEN.match(name.encode("latin-1")) or \
                    HTTP_BAD_VALUE.search(value.encode("latin-1")):
                raise ValueError("a header name or value that HTTP does not allow")
            lines.append("%s: %s" % (name, value))
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.replied = self._emptied = False
        if self._tls is not None:
            self._tls.empty_records = 0
        if at_once:     # (a small request: LOOP_BODY_BYTES at most)
            data = self._sealed(data + body)
            self.sock.settimeout(0.0)
            try:
                return data[self.sock.send(data):]
            except BlockingIOError:
                return data
        if len(body) < 65536:
            self.sock.sendall(self._sealed(data + body))
        else:   # (not copied whole, nor held encrypted whole)
            self.sock.sendall(self._sealed(data))
            view = memoryview(body)
            for at in range(0, len(body), TLS_WRITE_BYTES):
                self.sock.sendall(self._sealed(view[at:at + TLS_WRITE_BYTES]))
        return b""

    def _sealed(self, plaintext: Union[bytes, memoryview]) -> Union[bytes, memoryview]:
        """The bytes for the socket: over TLS, the records (after any the session made
        itself and the socket has not taken)."""
        if self._tls is None:
            return plaintext
        data, self._unsent = self._unsent + self._tls.encrypt(plaintext), b""
        return data

    def read_head(self, deadline: float) -> ReplyHead:
        searched = 0
        while True:
            length = reply_head_length(self.buf, searched)
            searched = len(self.buf)
            if length > MAX_REPLY_HEAD or not length and len(self.buf) > MAX_REPLY_HEAD:
                raise BadReply("a reply head of over %d bytes" % MAX_REPLY_HEAD)
            if length:
                head = parse_reply_head(bytes(self.buf[:length]))
                del self.buf[:length]
                return head
            if not self._receive(deadline):
                raise BadReply("the connection closed before a reply" if not self.buf
                               else "the connection closed in the reply's head")

    def read_body(self, body: ReplyBody, deadline: Optional[float]) -> Optional[bytes]:
        """The body bytes that have arrived, waiting for some when none have, up to
        `deadline`; b"" at its end. With no deadline (the event loop's reads, the socket
        non-blocking) it never waits: None when none have arrived."""
        while not body.done:
            data = body.feed(self.buf)
            if data:
                return data
            if body.done:
                break
            received = self._receive(deadline) if deadline is not None else \
                self.receive_ready()
            if received is None:
                return None
            if not received:
                body.end_of_connection()
        return b""

    def _wait_at_most(self, deadline: float) -> None:
        """The socket's timeout for a read that must end by `deadline`."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        timeout = self.sock.gettimeout()
        if not timeout or timeout > left + DEADLINE_SLACK:
            # Seldom: the socket's timeout is the whole wait already, so only a reply that
            # trickles gets here (settimeout lets go of the interpreter: not every recv).
            self.sock.settimeout(left)

    def _receive(self, deadline: float) -> bool:
        """Bytes of the reply into the buffer (False: the connection's end), waiting for
        them up to `deadline`; over TLS, through records with no data in them."""
        while True:
            if self.tls_ended:
                return False   # (after a close_notify, a server may wait for ours to close)
            self._wait_at_most(deadline)
            if self._unsent:   # (left by the event loop's reads)
                self.sock.sendall(self._unsent)
                self._unsent = b""
            received = self._received(self.sock.recv(READ_BYTES))
            if received is not None:
                return received

    def receive_ready(self) -> Optional[bool]:
        """_receive for a non-blocking socket: None when nothing has arrived (or over TLS
        no data yet). After a read that took data and less than it asked for, None
        without a read: what arrives later the selector reports (it says a socket is
        readable for as long as it is), and a TLS read leaves no data behind where the
        selector cannot see it. A lone event is read with one recv, not two (the second only said there
        was nothing more: the loop spent 7% more on streams of lone events, measured)."""
        if self.tls_ended:
            return False    # (before _emptied: the end may have come with the last data)
        if self._emptied:
            self._emptied = False
            return None
        if self._unsent:
            self._send_unsent()
            if self._unsent:   # (an upstream that reads none of ours gets no more read)
                return None
        size = TLS_RECORD_BYTES if self._tls is not None and self._tls.last_read_empty else \
            READ_BYTES
        try:
            data = self.sock.recv(size)
        except BlockingIOError:
            return None
        received = self._received(data)
        self._emptied = received is True and len(data) < size
        return received

    @property
    def tls_ended(self) -> bool:
        """The server has said close_notify (or the connection ended) under TLS."""
        return self._tls is not None and self._tls.ended

    @property
    def wants_write(self) -> bool:
        """A non-blocking read waits for the socket to be writable: records the TLS
        session made (a key update's answer) that the socket did not take."""
        return bool(self._unsent)

    def _received(self, data: bytes) -> Optional[bool]:
        """What a read took into the buffer: True; the connection's end: False; None, over
        TLS, for bytes with no data yet (part of a record, records with none in them)."""
        if self._tls is not None:
            try:
                data = self._tls.decrypt(data)
            except ssl.SSLError:
                self.replied = True     # bytes came, if none that decrypt
                raise
            self.replied = self.replied or self._tls.partway()
            unsent = self._tls.to_send()
            if unsent:
                self._unsent += unsent
                if self.sock.gettimeout() == 0.0:
                    self._send_unsent()
                else:
                    self.sock.sendall(self._unsent)
                    self._unsent = b""
            if not data:
                return False if self._tls.ended else None
        if data:
            self.buf += data
            self.replied = True
        return bool(data)

    def _send_unsent(self) -> None:
        """On the event loop: the TLS session's records not yet sent, as far as the socket
        takes them now."""
        try:
            self._unsent = self._unsent[self.sock.send(self._unsent):]
        except BlockingIOError:
            pass

    def bytes_within(self, seconds: float, seen: int = 0) -> bool:
        """Whether the reply has bytes to read (or its end) within `seconds`, more than the
        `seen` the buffer holds. A TLS socket may be readable with no data behind it (TLS
        1.3's session tickets, which follow the handshake): those records are read here,
        and the wait goes on."""
        deadline = time.monotonic() + seconds
        while True:
            if len(self.buf) > seen or self.tls_ended:
                return True
            if not readable_now(self.sock, max(deadline - time.monotonic(), 0.0)):
                return False
            if self._tls is None:
                return True
            # Readable: this read takes what is there without waiting, and the records
            # the session makes go out as far as the socket takes them (an upstream that
            # reads none of ours would hold this worker until the socket's time-out).
            timeout = self.sock.gettimeout()
            self.sock.settimeout(0.0)
            try:
                received = self._received(self.sock.recv(READ_BYTES))
            finally:
                self.sock.settimeout(timeout)
            if received is not None:
                return True     # data, or the end
            if time.monotonic() >= deadline:
                return False    # (records with no data that go on and on: the loop waits)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@functools.lru_cache(maxsize=256)
def host_header(host: str, port: int, default_port: int) -> str:
    """A Host (or CONNECT) authority: an IPv6 address in brackets, a name in IDNA."""
    name = "[%s]" % host if ":" in host else host.encode("idna").decode("ascii")
    return name if port == default_port else "%s:%d" % (name, port)


# What a non-blocking connect says while it is under way (Windows: WSAEWOULDBLOCK).
CONNECT_UNDER_WAY = (errno.EINPROGRESS, getattr(errno, "WSAEWOULDBLOCK", errno.EINPROGRESS))

# How long the event loop connects to the address a worker's connection found for a local
# upstream's name (localhost), without looking it up again (that may block) ...
LOCAL_ADDRESS_TTL = 60.0
# ... and how long it leaves new connections to a local upstream to workers after one of
# its own did not end at once (the upstream is down, or its queue of connections to
# accept is full in a burst): that request holds a key already, and goes on in a worker
# past server.workers; the requests after it go to workers as new ones, which it bounds.
LOCAL_CONNECT_PAUSE = 5.0


class ConnectionPool:
    """Idle keep-alive connections per target; thread-safe. `open` counts connections
    that exist (idle or in use), so tests can assert that nothing leaks.

    New connections are made in workers (a name to look up, a TLS handshake), but the
    event loop's (connection_at_once) to an upstream on this machine over plain HTTP
    (Ollama, vLLM, llama.cpp): its connect ends at once."""

    def __init__(self):
        self._idle: Dict[UpstreamTarget, List[UpstreamConnection]] = {}
        # (host, port) -> (until when, family, address; or None, after a connect of the
        # loop's that did not end at once): see _local_address.
        self._local: Dict[Tuple[str, int], Tuple[float, int, Any]] = {}
        self._lock = threading.Lock()
        # The TLS settings are made for the first https connection: loading the system's
        # CA certificates took a start 20 ms and an idle proxy 1.7 MB here, which a proxy
        # of local upstreams (Ollama, vLLM, llama.cpp) never needs.
        self._tls: Optional[ssl.SSLContext] = None
        self._tls_lock = threading.Lock()
        self.open = 0
        self.created = 0

    def acquire(self, target: UpstreamTarget, connect_timeout: float,
                read_timeout: float, fresh: bool = False) -> Tuple[UpstreamConnection, bool]:
        """A connection to the target and whether it was reused; `fresh`: a new one."""
        if not fresh:
            idle = self.idle_connection(target, read_timeout)
            if idle is not None:
                return idle, True
        conn = UpstreamConnection.connect(target, self._tls_context, connect_timeout)
        self._count_new()
        conn.sock.settimeout(read_timeout)
        if target.scheme == "http" and not target.proxy:
            self._remember_local(target, conn.sock)
        return conn, False

    def _remember_local(self, target: UpstreamTarget, sock: socket.socket) -> None:
        """The address a worker's connection found for a target's name, if it is this
        machine's own (see _local_address)."""
        try:
            address = sock.getpeername()
        except OSError:     # (reset at once: the next connection finds out)
            return
        if _is_loopback(address[0]) and not self._pausing_local(target):
            self._local[target.host, target.port] = (
                time.monotonic() + LOCAL_ADDRESS_TTL, sock.family, address)

    def _pausing_local(self, target: UpstreamTarget) -> bool:
        known = self._local.get((target.host, target.port))
        return known is not None and known[2] is None and known[0] > time.monotonic()

    def _count_new(self) -> None:
        with self._lock:
            self.open += 1
            self.created += 1

    def _local_address(self, target: UpstreamTarget) -> Optional[Tuple[int, Any]]:
        """(family, socket address) of a plain HTTP target on this machine, known without
        looking a name up: its host's own (127.0.0.1, ::1), or the address a worker's
        connection to it found within LOCAL_ADDRESS_TTL."""
        if target.scheme != "http" or target.proxy:
            return None
        known = self._local.get((target.host, target.port))
        if known is not None and known[0] > time.monotonic():
            return (known[1], known[2]) if known[2] is not None else None
        if not _is_loopback(target.host):
            return None
        family, address = (socket.AF_INET6, (target.host, target.port, 0, 0)) \
            if ":" in target.host else (socket.AF_INET, (target.host, target.port))
        self._local[target.host, target.port] = (math.inf, family, address)
        return family, address

    def connects_at_once(self, target: UpstreamTarget) -> bool:
        """Whether the event loop may connect to the target itself (connection_at_once)."""
        return self._local_address(target) is not None

    def connection_at_once(self, target: UpstreamTarget,
                           read_timeout: float) -> Optional[UpstreamConnection]:
        """On the event loop: a new connection to a local target, if connecting ends
        without a wait; None otherwise, and for LOCAL_CONNECT_PAUSE the loop makes no
        more (a worker connects, looks the name up again, and says what failed)."""
        address = self._local_address(target)
        conn = UpstreamConnection.connected_at_once(*address) if address else None
        if conn is None:
            self._local[target.host, target.port] = (
                time.monotonic() + LOCAL_CONNECT_PAUSE, 0, None)
            return None
        conn.sock.settimeout(read_timeout)
        self._count_new()
        return conn

    def has_idle(self, target: UpstreamTarget) -> bool:
        return bool(self._idle.get(target))   # (a look, not a take: no lock needed)

    def idle_connection(self, target: UpstreamTarget,
                        read_timeout: float) -> Optional[UpstreamConnection]:
        """An idle connection to the target that its server has not closed, or None
        (never a new one: connecting may block)."""
        while True:
            with self._lock:
                idle = self._idle.get(target)
                conn = idle.pop() if idle else None
            if conn is None:
                return None
            if _connection_alive(conn):
                conn.sock.settimeout(read_timeout)
                return conn
            self.discard(conn)

    def _tls_context(self) -> ssl.SSLContext:
        with self._tls_lock:
            if self._tls is None:
                self._tls = ssl.create_default_context()
                # A TLS 1.2 server asking to renegotiate is refused (TLS 1.3 has none): a
                # request's write never has to wait for the server's handshake first.
                self._tls.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
            return self._tls

    @property
    def idle(self) -> int:
        """Connections waiting in the pool (open - idle are in use)."""
        with self._lock:
            return sum(len(conns) for conns in self._idle.values())

    def release(self, target: UpstreamTarget, conn: UpstreamConnection,
                max_idle: int) -> None:
        with self._lock:
            idle = self._idle.setdefault(target, [])
            if len(idle) < max_idle:
                idle.append(conn)
                return
        self.discard(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        conn.close()
        with self._lock:
            self.open -= 1

    def close_all(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            self.discard(conn)


def _is_loopback(host: str) -> bool:
    """Whether a host (an address, not a name) is this machine's own."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _connection_alive(conn: UpstreamConnection) -> bool:
    """An idle keep-alive socket that is readable has been closed by the server (or its
    TLS, in the last reply's reads: the server may wait for ours before it closes)."""
    if conn.buf or conn.tls_ended:
        return False     # bytes no request asked for, or the end
    try:
        return not readable_now(conn.sock)
    except (OSError, ValueError):
        return False


# ---- 17. Upstream replies ----------------------------------------------------------------
#
# An upstream call from its request to its reply's end: the time-outs (Timeouts), the
# reply read (UpstreamResponse), the call stopped from another thread (CallStopper), and
# its opening (opening_upstream).
#
# A request's steps up to its answer are generators (opening_upstream, and in section 23
# UpstreamCall.send_steps and the attempts around it): where the upstream has its
# request and has sent nothing back (a model thinking, seconds or minutes), or its head
# and not yet its body's first bytes, or a stream's first bytes and nothing that answers
# yet (a role-only delta, a comment, Azure's prompt filter), they yield (the socket's
# descriptor, when to go on anyway), and the worker lets go of its thread while the
# event loop waits for the socket (Proxy._conclude); the steps go on in whichever worker
# is free when the bytes come. A retry's backoff is waited for the same way, with no
# socket (pausing). A thread a stream held until its first event was most of the
# memory and the thread switching of thousands of streams begun at once.
#
# The event loop runs a small request's steps itself (Proxy.handle, on_loop) as long as
# none would block: on an upstream's idle connection, plain or TLS (a read decrypts every
# whole record it took, so no data waits where the loop's selector cannot see it, and
# no more than READ_BYTES of ciphertext), or on a new plain one to an upstream on this
# machine (ConnectionPool.connection_at_once), a whole reply or a stream's first events
# read as they come, the loop waiting for the socket between reads. Where something may
# block (another new connection, a whole body read at once: an error's, a large reply's;
# a retry, a shared store's round trip) the steps yield IN_A_THREAD and go on in a
# worker from there. A request that needs no thread saves the hand-overs between the
# loop and a worker: a third of a whole request's CPU.

T = TypeVar("T")
Steps = Generator[Tuple[int, float], None, T]
NO_SOCKET = -1      # what steps that wait only for the time yield for a socket
IN_A_THREAD = -2    # ... and steps the loop runs, for the rest to go on in a worker
# The largest request (the client's, and the upstream's) the loop runs itself: it is
# parsed and converted there, holding up every stream meanwhile.
LOOP_BODY_BYTES = 16384
# ... and the most of a reply it reads: the rest of a larger one (an image, say) is read,
# decoded and converted in a worker, not on the loop.
LOOP_REPLY_BYTES = 262144
# The most of a reply the loop reads at a go, before it waits for the socket again (which
# is readable at once if more has come) and its other work has a turn: an upstream that
# floods bytes that make nothing to write (comments, before a stream's first event or
# after it) held the loop for as long as it flooded, past the total timeout.
LOOP_READ_TURN = 262144
# How long a worker waits for an upstream's first bytes before it lets go of its
# thread: letting go and taking one again costs the loop and a worker some 0.1 ms of
# CPU, where this wait costs none, and an upstream that answers at once does it within
# it.
FIRST_BYTES_GRACE = 0.002
# The same for the silences of a stream a worker reads (up to its first event for the
# client; all of it for a whole reply made from it): longer than most gaps between
# tokens, shorter than a model's thinking. A tool call's arguments may stream for
# seconds with no event made of them (the call is held until whole); a hand-over in each
# of their gaps cost four times the CPU of the reads.
EVENT_GAP_GRACE = 0.1


def run_through(steps: "Steps[T]") -> T:
    """Steps, in this thread to their end (what they wait for is read here)."""
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


def pausing(seconds: float) -> "Steps[None]":
    """`seconds` (a backoff), or less when the request is abandoned meanwhile; the worker
    lets go of its thread."""
    yield NO_SOCKET, time.monotonic() + seconds


def awaiting_bytes(conn: UpstreamConnection, due: float,
                   grace: float = FIRST_BYTES_GRACE, seen: int = 0) -> "Steps[bool]":
    """Until the connection has bytes to read (True) or `due` (time.monotonic()) has
    passed (False): at once when they come within `grace`, else yielding, for the worker
    to let go of its thread; again after a wake-up that brought none (a TLS record with
    no data in it). `seen`: how much of the buffer was read already and found too little
    (part of the chunked framing), which only more bytes make something of."""
    within = grace
    while not conn.bytes_within(within, seen):
        if time.monotonic() >= due:
            return False
        yield conn.sock.fileno(), due
        within = 0.0
    return True


def receiving_head(conn: UpstreamConnection, due: float) -> "Steps[bool]":
    """On the event loop: steps until the connection's buffer holds a whole reply head,
    too long a one, or the connection has closed (read_head then says which), reading
    only what has come and never waiting in a read; socket.timeout at `due`. False when
    they went on in a worker, whose read_head blocks for the rest."""
    conn.sock.settimeout(0.0)
    searched = 0    # (a head that trickles in is not searched from its start each time)
    while not reply_head_length(conn.buf, searched) and len(conn.buf) <= MAX_REPLY_HEAD:
        searched = len(conn.buf)
        received = conn.receive_ready()
        if received is None and conn.wants_write:
            # TLS records to send first (a key update's answer) that the socket did not
            # take (seldom): the loop waits only for sockets to read, a worker's send
            # blocks.
            yield IN_A_THREAD, 0.0
            return False
        if received is None:
            if time.monotonic() >= due:
                raise socket.timeout("timed out")
            yield conn.sock.fileno(), due
        elif not received:
            break
    return True


@dataclasses.dataclass
class Timeouts:
    """The clocks of one upstream call, in seconds: to connect, to the first byte (one
    budget from the start of the call to the status line and a stream's first bytes),
    of silence between reads after that, and (deadline, a time.monotonic() value) for
    the whole call."""

    PAST_TOTAL = "was still answering at its total timeout"   # (not a field: no annotation)

    connect: float
    first_byte: float
    idle: float
    deadline: Optional[float] = None

    def __post_init__(self) -> None:
        self.first_byte_by = time.monotonic() + self.first_byte
        self._went_silent = "went silent for %gs" % self.idle   # not formatted per read

    def next_read(self, first: bool) -> Tuple[float, str]:
        """(socket timeout for the next read, what it means when it expires)."""
        now = time.monotonic()
        timeout, meaning = self.silence_left(now, now) if not first else self.first_left(now)
        return max(timeout, 0.001), meaning

    def first_left(self, now: float) -> Tuple[float, str]:
        """Before the first bytes: how much longer they may take (<= 0: no longer), and
        what it means when they have."""
        return self._within_total(now, self.first_byte_by - now,
                                  "sent nothing within %gs" % self.first_byte)

    def silence_left(self, quiet_since: float, now: float) -> Tuple[float, str]:
        """After the first bytes: how much longer the upstream may stay silent, silent
        since `quiet_since` (<= 0: too long already), and what it means when it has."""
        return self._within_total(now, self.idle - (now - quiet_since),
                                  self._went_silent)

    def _within_total(self, now: float, timeout: float, meaning: str) -> Tuple[float, str]:
        if self.deadline is not None and self.deadline - now < timeout:
            return self.deadline - now, self.PAST_TOTAL
        return timeout, meaning

    def past_total(self) -> bool:
        """Whether the whole call's time is up (a reply that never pauses never lets a
        read time out)."""
        return self.deadline is not None and time.monotonic() >= self.deadline


class UpstreamResponse:
    """An upstream reply, read in a worker thread (the rest of a stream perhaps by the
    event loop: read_on_loop). close() returns a fully read connection to the pool and
    drops any other, first disarming its stopper (see CallStopper) so that nothing can
    cut the connection once another request has it."""

    def __init__(self, pool: ConnectionPool, target: UpstreamTarget, conn: UpstreamConnection,
                 head: ReplyHead, body: ReplyBody, max_idle: int, name: str,
                 timeouts: Timeouts, stopper: "CallStopper", parks: bool = False):
        self._pool, self._target, self._conn, self._body = pool, target, conn, body
        self._keep_alive = head.keep_alive and not body.to_close
        self._stopper = stopper
        self._max_idle, self._name, self._timeouts = max_idle, name, timeouts
        self._closed = False
        self._peeked = b""          # read by peek(), for the next read to hand out
        # Since when the reads that said None (parks) have had nothing: the silence's
        # time-out runs from there, however many reads and waits it takes.
        self._silent_since: Optional[float] = None
        # The last bytes were a keep-alive (comments only): the next read does not wait
        # EVENT_GAP_GRACE for more, which come seconds later (see keep_alive_read).
        self._quiet_next = False
        self._waiting = ""          # what an expired read timeout means
        # The event loop reads the rest (read_on_loop): no read waits, and silences are
        # timed from the last bytes that came.
        self.on_loop = False
        self._quiet_since = 0.0
        self._read_this_turn = 0    # by the loop, since it last waited (LOOP_READ_TURN)
        # Its request lets go of its thread while the upstream is silent: in a worker, its
        # stream's reads never wait either (IDLE, and next_event waits for the bytes).
        self.parks = parks
        self.status = head.status
        self.headers = dict(head.headers)

    def _read(self, first: bool, parks: bool = False) -> Optional[bytes]:
        """What of the body has arrived, b"" at its end: in a worker, waiting for some
        up to the timeout (`parks`: None when none come within EVENT_GAP_GRACE, but a
        part of the chunked framing alone, seldom sent apart from its data, is waited
        for); on the event loop (read_on_loop) never, None when nothing has, or when it
        has read LOOP_READ_TURN since it last waited for the socket. The loop
        leaves the socket non-blocking; the blocking reads, close() and the pool set
        their own timeouts."""
        if self._peeked:
            data, self._peeked = self._peeked, b""
            return data
        if self._body.done:
            return b""
        sock = self._conn.sock
        try:
            if self.on_loop:
                if self._read_this_turn >= LOOP_READ_TURN:
                    # (None, as if nothing had come: what the buffer holds was handed out
                    # by the last read, so the socket says when there is more)
                    self._read_this_turn = 0
                    return None
                if sock.gettimeout() != 0.0:
                    sock.settimeout(0.0)
                data = self._conn.read_body(self._body, None)
                if data:
                    self._quiet_since = time.monotonic()
                    self._read_this_turn += len(data)
                else:
                    self._read_this_turn = 0
                return data
            if parks and self._timeouts.past_total():
                # A stream's bytes that never pause (comments before its first event)
                # never let a read time out. (A whole body: read_body looks. The loop's
                # reads have their own checks: LOOP_READ_TURN, and the relay's.)
                raise self._timed_out(Timeouts.PAST_TOTAL)
            if not parks:
                timeout, self._waiting = self._timeouts.next_read(first)
                wait = timeout
            elif self._quiet_next:   # no grace: the request lets go of its thread at once
                self._quiet_next = False
                if self._silent_since is None:
                    self._silent_since = time.monotonic()
                return None
            else:
                started = time.monotonic()
                if self._silent_since is not None:   # a silence goes on, its clock too
                    timeout, self._waiting = self._timeouts.silence_left(
                        self._silent_since, started)
                    timeout = max(timeout, 0.001)
                else:
                    timeout, self._waiting = self._timeouts.next_read(first)
                # (One blocking read with a short timeout, not a poll before it: a stream
                # of small pieces paid 15-25% more CPU for the poll.)
                wait = min(EVENT_GAP_GRACE, timeout)
            if sock.gettimeout() != wait:
                # Only when it changes (after the first read, seldom): settimeout lets go
                # of the interpreter, and each read would wait to get it back.
                sock.settimeout(wait)
            try:
                data = self._conn.read_body(self._body, time.monotonic() + wait)
            except socket.timeout:
                if wait == timeout:
                    raise
                if self._silent_since is None:
                    self._silent_since = started    # (next_event's wait goes on from here)
                return None
            self._silent_since = None
            return data
        except socket.timeout:
            raise self._timed_out(self._waiting) from None
        except (OSError, BadReply) as exc:
            raise self._broke(exc) from None

    def _broke(self, exc: Exception) -> UpstreamError:
        return UpstreamError("the connection to upstream %r broke: %s" % (
            self._name, exc if isinstance(exc, BadReply) else exc.__class__.__name__),
            status=502)

    def peek(self) -> bytes:
        """The body's first bytes (b"": it has none), read in a worker (on the loop, those
        receiving_first_bytes read) and handed out again by the next read: what a body
        is, told before it is read as such."""
        if not self._peeked:
            self._peeked = self._read(first=True) or b""
        return self._peeked

    def _timed_out(self, meaning: str) -> UpstreamError:
        return UpstreamError("upstream %r %s" % (self._name, meaning), status=504)

    def awaiting_body(self, first: bool) -> "Steps[None]":
        """Steps until the body has bytes to read (awaiting_bytes); the time-out of its
        next read if none have come by then: `first`, of a stream, whose budget ran from
        the call's start; else of the silence after the head, or of the silence a read
        has already waited out its grace in (which it does not wait again). Where the
        loop reads the reply (on_loop): one wait for the socket, with no grace (the next
        read says what came), the silence timed from the last bytes that came."""
        if self._peeked or self._body.done:
            return
        if self.on_loop and self._conn.wants_write:
            yield from self.leaving_the_loop()   # (TLS, as in receiving_head: the rest so)
        if self.on_loop:
            # A wait for the socket, whatever the buffer holds: what is in it has been
            # read (part of the chunked framing: its rest is to come).
            now = time.monotonic()
            timeout, meaning = self._timeouts.first_left(now) if first else \
                self._timeouts.silence_left(self._quiet_since, now)
            if timeout <= 0:
                raise self._timed_out(meaning)
            yield self._conn.sock.fileno(), now + timeout
            return
        if self._silent_since is None:
            timeout, meaning = self._timeouts.next_read(first)
            grace, seen = FIRST_BYTES_GRACE, 0
        else:
            timeout, meaning = self._timeouts.silence_left(self._silent_since,
                                                           time.monotonic())
            # A read has found what the buffer holds too little (part of the chunked
            # framing): only more bytes make something of it. (Counted as bytes, they had
            # the worker read again and again, holding its thread, until the time-out.)
            grace, seen = 0.0, len(self._conn.buf)
        try:   # (a TLS connection reads while it waits: records with no data in them)
            came = yield from awaiting_bytes(self._conn, time.monotonic() + timeout, grace,
                                             seen)
        except (OSError, BadReply) as exc:
            raise self._broke(exc) from None
        if not came:
            raise self._timed_out(meaning)

    def receiving_first_bytes(self) -> "Steps[None]":
        """On the event loop: steps until the body's first bytes have come (kept for the
        reads that follow), or its end; the first byte's time-out if neither has by then.
        The loop reads the reply from now on (on_loop), as long as its steps run there:
        no read waits; where one must (a whole body), leaving_the_loop."""
        self.read_on_loop()
        while not self._peeked:
            data = self._read(first=True)
            if data is None:
                yield from self.awaiting_body(first=True)
            else:
                self._peeked = data
                if not data:
                    break
        self._quiet_since = time.monotonic()

    def leaving_the_loop(self) -> "Steps[None]":
        """Where the loop reads this reply (receiving_first_bytes) and the next read must
        wait (a whole body read at once, TLS records to send first): the steps go on in
        a worker, whose reads wait (see Request.leave_the_loop). Nothing, in a worker."""
        if self.on_loop:
            self.on_loop = False
            yield IN_A_THREAD, 0.0

    def receiving_body(self, limit: int) -> "Steps[bool]":
        """On the event loop: steps until the whole body has come (True), or more than
        `limit` bytes of it (False), kept for the reads that follow (which need no socket
        for what has come); the loop waits for the socket between reads, as long as a
        silence may last."""
        parts: List[bytes] = []
        size = 0
        self.read_on_loop()
        try:
            while size <= limit:
                data = self._read(first=False)
                if data is None and self._conn.wants_write:
                    yield IN_A_THREAD, 0.0   # (TLS, as in receiving_head: the rest so)
                    return False
                if data is None:
                    left = self.silence_left()
                    if left <= 0:
                        raise self.silence_error()
                    yield self._conn.sock.fileno(), time.monotonic() + left
                elif not data:
                    return True
                else:
                    parts.append(data)
                    size += len(data)
            return False
        finally:
            self.on_loop = False
            self._peeked = b"".join(parts)

    def next_event(self, events: Iterator[Any]) -> "Steps[Any]":
        """The next of `events`, read from this reply (None: they have ended), in a
        worker: where they would wait for the upstream longer (IDLE: its reads waited
        EVENT_GAP_GRACE), the steps wait for its bytes without the thread
        (awaiting_body), as long as its silence may last, and read on."""
        while True:
            event = next(events, None)
            if event is not IDLE:
                return event
            yield from self.awaiting_body(first=False)

    def every_event(self, events: Iterator[Any]) -> "Steps[List[Any]]":
        """All of `events`, read as next_event reads them."""
        every = []
        while True:
            event = yield from self.next_event(events)
            if event is None:
                return every
            every.append(event)

    def read_on_loop(self) -> None:
        """From now on the event loop reads this reply (see UpstreamRelay)."""
        self.on_loop = True
        self._quiet_since = time.monotonic()

    def listening_again(self) -> None:
        """On the loop: it has not read this reply for a while (its client was slow),
        and reads again: silence is timed from now (the total timeout still holds)."""
        self._quiet_since = time.monotonic()

    def fileno(self) -> int:
        return self._conn.sock.fileno()

    def waits_to_write(self) -> bool:
        """On the loop: the last read needs the socket writable, not readable (TLS)."""
        return self._conn.wants_write

    def silence_left(self) -> float:
        """On the event loop: how much longer it may wait for the next bytes (<= 0: no
        longer; then silence_error() ends the stream)."""
        return self._timeouts.silence_left(self._quiet_since, time.monotonic())[0]

    def silence_error(self) -> UpstreamError:
        """The idle timeout, or the total, that silence_left found expired."""
        return self._timed_out(self._timeouts.silence_left(self._quiet_since,
                                                           time.monotonic())[1])

    def read_body(self, limit: int, cut: bool = False) -> bytearray:
        """The whole body, read as it arrives into one buffer, in a worker (where the loop
        reads the reply, leaving_the_loop first); more than `limit` bytes is the
        upstream's failure, or with `cut` (an error body, read for its message) just
        where reading stops."""
        body = bytearray()
        while True:
            piece = self._read(first=False)
            if not piece:
                return body
            body += piece
            # (A failure lets go of what was read before it is raised: its traceback
            # holds this frame for as long as the request keeps the error.)
            if not cut and not self._body.done and self._timeouts.past_total():
                # (A body that never pauses never lets a read time out. Not an error's,
                # read for its message and Retry-After; nor a body all here already.)
                del body
                raise self._timed_out(Timeouts.PAST_TOTAL)
            if len(body) > limit:
                if cut:
                    del body[limit:]
                    return body
                del body
                raise UpstreamError("upstream %r sent a reply of more than %d bytes "
                                    "(max_reply_bytes)" % (self._name, limit), status=502)

    def raw_chunks(self, on_raw: Optional[Callable[[bytes], None]] = None) -> Iterator[Any]:
        """The body as it arrives, all that has arrived at a time; the first read waits
        up to the first-byte timeout, later ones up to the idle timeout. Once the event
        loop reads it (read_on_loop), or where its request parks, IDLE where a read
        would wait."""
        first = True
        while True:
            data = self._read(first, self.parks)
            if data is None:
                yield IDLE
                continue
            first = False
            if not data:
                return
            if on_raw is not None:
                on_raw(data)
            yield data

    def keep_alive_read(self) -> None:
        """The bytes just read were only a keep-alive (comments, which some upstreams send
        every few seconds while the model thinks, as OpenRouter does): where the request
        parks, its next read lets go of the thread at once rather than after
        EVENT_GAP_GRACE (with server.workers small, each comment held a worker that
        long, and /health said all were busy a third of the time)."""
        self._quiet_next = self.parks

    def sse_events(self, max_event: int, on_raw: Optional[Callable[[bytes], None]] = None
                   ) -> Iterator[Tuple[str, str]]:
        parser = SSEParser(max_event)
        try:
            for data in self.raw_chunks(on_raw):
                if data is IDLE:
                    yield data
                    continue
                events = parser.feed(data)
                if not events and parser.between_events:
                    self.keep_alive_read()
                yield from events
        except ValueError as exc:
            raise UpstreamError("upstream %r sent %s (max_reply_bytes)" % (self._name, exc),
                                status=502) from None
        yield from parser.finish()

    def close(self, reuse: bool = True) -> None:
        """Release the connection: back to the pool when the reply was read to its end
        (reuse=False when it was abandoned, so the upstream stops generating)."""
        if self._closed:
            return
        self._closed = True
        self._stopper.disarm()
        # A call stopped while its reply was whole (the client left after the final
        # event) may still read the rest of a shut socket's bytes: not a connection to keep.
        reuse = reuse and not self._stopper.fired
        body, conn = self._body, self._conn
        if reuse and self._keep_alive and not body.done:
            # A reply read up to its logical end ([DONE]) usually has only the last
            # chunk marker left in flight; read it briefly so the connection is reusable.
            try:
                conn.sock.settimeout(0.05)
                give_up = time.monotonic() + 0.2
                for _ in range(4):
                    if not conn.read_body(body, give_up):
                        break
            except (OSError, BadReply):
                pass
        if reuse and self._keep_alive and body.done and body.reusable and not conn.buf:
            self._pool.release(self._target, conn, self._max_idle)
        else:
            self._pool.discard(conn)


class CallStopper:
    """Stops one upstream call from another thread (the client left, or the proxy is
    stopping) by shutting its socket, which wakes a blocked read at once. Disarmed, under
    the same lock, before the connection goes back to the pool: a late stop must never
    cut a connection another request is using."""

    def __init__(self, sock: socket.socket):
        self._sock: Optional[socket.socket] = sock
        self._lock = threading.Lock()
        self.fired = False      # the socket was shut: never to be pooled again

    def stop(self) -> None:
        with self._lock:
            if self._sock is not None:
                self.fired = True
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def disarm(self) -> None:
        with self._lock:
            self._sock = None


MAX_INTERIM = 5    # interim (1xx) replies read past before the reply proper


def _through(target: UpstreamTarget) -> str:
    """Where a connection failed, when not at the upstream: a refusal from the HTTP proxy
    on the way read as the upstream's own (a real-client run's finding)."""
    return " through the HTTP proxy %s:%d" % target.proxy if target.proxy else ""


def opening_upstream(pool: ConnectionPool, target: UpstreamTarget, name: str, method: str,
                     path: str, body: bytes, headers: List[Tuple[str, str]],
                     timeouts: Timeouts, max_idle: int,
                     watch: Callable[[Callable[[], None]], None] = lambda stop: None,
                     park: bool = False, on_loop: bool = False) -> "Steps[UpstreamResponse]":
    """Send a request and wait for the status line and headers; `park`: by yielding
    (awaiting_bytes), and the reply's stream parks too (UpstreamResponse.parks);
    `on_loop`: the event loop runs these steps, which then take only an idle connection,
    or a new one to a local upstream that connects at once (else they go on in a
    worker: IN_A_THREAD), and read the head as it comes. `watch`
    is given a function that stops the call at once from another thread (the client
    left, or the proxy is shutting down) as soon as there is a connection to stop.
    Interim replies (1xx but 101) are read past, as RFC 9110 asks of a client. A reused
    connection that the server had closed (it fails before a byte of the reply has
    come) is retried once on a fresh one: never a request the upstream may have
    answered. Everything else that goes wrong becomes an UpstreamError with a status
    (502 unreachable, 504 timeout)."""
    request_headers = dict(headers)
    request_headers["content-length"] = str(len(body))
    if target.proxy and target.scheme == "http" and target.proxy_auth:
        request_headers["proxy-authorization"] = target.proxy_auth
    retry_stale = True
    while True:
        wait, meaning = timeouts.next_read(first=True)
        conn: Optional[UpstreamConnection] = None
        if on_loop:
            conn = pool.idle_connection(target, wait) if retry_stale else None
            reused = conn is not None
            conn = conn or pool.connection_at_once(target, wait)
            if conn is None:   # connecting may block (a name to look up, a handshake)
                yield IN_A_THREAD, 0.0
                on_loop = False
        if conn is None:
            try:
                # The retry is on a new connection: the idle ones beside a dead one were
                # often closed with it (an upstream restarted, its idle timer).
                conn, reused = pool.acquire(target, timeouts.connect, wait,
                                            fresh=not retry_stale)
            except socket.timeout:
                raise UpstreamError("connecting to upstream %r%s timed out after %gs" % (
                    name, _through(target), timeouts.connect), status=504) from None
            except (OSError, ValueError) as exc:   # ValueError: IDNA cannot encode the host
                raise UpstreamError("cannot reach upstream %r (%s:%d%s): %s" % (
                    name, target.host, target.port, _through(target), exc if isinstance(
                        exc, (TunnelRefused, BadReply)) else getattr(exc, "strerror", None)
                    or exc.__class__.__name__), status=502) from None
        stopper = CallStopper(conn.sock)
        watch(stopper.stop)
        try:
            unsent = conn.send(method, target.url(path), target, request_headers, body,
                               at_once=on_loop)
            if unsent:   # the socket's buffer is full: a worker waits for room
                yield IN_A_THREAD, 0.0
                on_loop = False
                conn.sock.settimeout(wait)
                conn.sock.sendall(unsent)
            deadline = time.monotonic() + wait
            for _ in range(1 + MAX_INTERIM):   # 100 Continue, 102, 103 Early Hints: skipped
                if on_loop:
                    on_loop = yield from receiving_head(conn, deadline)
                elif park:   # (past the deadline, read_head says so)
                    yield from awaiting_bytes(conn, deadline)
                head = conn.read_head(deadline)
                if not 100 <= head.status < 200 or head.status == 101:
                    break
            reply_body = ReplyBody(head, method)
        except socket.timeout:
            stopper.disarm()
            pool.discard(conn)
            raise UpstreamError("upstream %r %s" % (name, meaning), status=504) from None
        except (OSError, ValueError) as exc:    # BadReply is a ValueError
            stopper.disarm()
            pool.discard(conn)
            # (Not a connection the request's own stop shut: a client gone, a shutdown.)
            if reused and retry_stale and not conn.replied and not stopper.fired and \
                    isinstance(exc, (OSError, BadReply)):
                retry_stale = False
                continue
            raise UpstreamError("the connection to upstream %r broke before it replied: %s"
                                % (name, exc if isinstance(exc, ValueError)
                                   else exc.__class__.__name__), status=502) from None
        if head.status < 200:
            # 101 Switching Protocols, or interim replies past MAX_INTERIM: what follows on
            # this connection belongs to this request, never to another.
            stopper.disarm()
            pool.discard(conn)
            raise UpstreamError("upstream %r sent an interim %d reply, which this proxy "
                                "does not read past" % (name, head.status), status=502)
        return UpstreamResponse(pool, target, conn, head, reply_body, max_idle, name,
                                timeouts, stopper, parks=park)


@dataclasses.dataclass(frozen=True)
class GoogleEndpoints:
    """Where a code-assist upstream's logins and calls go, the OAuth client it uses, and
    the HTTP proxies (*_proxy variables) on the way, as for every upstream."""

    base_url: str = DEFAULT_BASE_URLS["code-assist"]
    token_url: str = GOOGLE_TOKEN_URL
    auth_url: str = GOOGLE_AUTH_URL
    userinfo_url: str = GOOGLE_USERINFO_URL
    client_id: str = GOOGLE_CLIENT_ID
    client_secret: str = GOOGLE_CLIENT_SECRET
    timeout: float = 30.0
    proxies: Tuple[Tuple[str, str], ...] = ()

    @classmethod
    def of(cls, spec: Dict[str, Any], environ: Dict[str, str]) -> "GoogleEndpoints":
        return cls(spec["base_url"] or DEFAULT_BASE_URLS["code-assist"],
                   spec["oauth_token_url"], spec["oauth_auth_url"],
                   spec["oauth_userinfo_url"], spec["oauth_client_id"],
                   spec["oauth_client_secret"], max(spec["connect_timeout"], 30.0),
                   # (REQUEST_METHOD too, which proxies_named_in looks at)
                   tuple(sorted((k, v) for k, v in environ.items()
                                if k.lower().endswith("_proxy") or k == "REQUEST_METHOD")))


# Connections to Google's token and setup endpoints.
GOOGLE_CONNECTIONS = ConnectionPool()


def google_call(endpoints: GoogleEndpoints, url: str, form: Optional[Dict[str, str]] = None,
                body: Any = None, token: str = "", method: str = "") -> Tuple[int, Any]:
    """One call to a Google endpoint (token, userinfo, the Code Assist setup methods):
    (status, the JSON answer, or its text when it is not JSON). Within 2 x
    endpoints.timeout however slowly it trickles; a network failure is an UpstreamError
    (502; 504 for a timeout)."""
    parts = urllib.parse.urlsplit(url)
    headers = [("user-agent", "gemini-proxy/" + __version__), ("accept", "application/json")]
    data = b""
    if form is not None:
        data = urllib.parse.urlencode(form).encode("ascii")
        headers.append(("content-type", "application/x-www-form-urlencoded"))
    elif body is not None:
        data = json_bytes(body)
        headers.append(("content-type", "application/json"))
    if token:
        headers.append(("authorization", "Bearer " + token))
    target = upstream_target("%s://%s" % (parts.scheme, parts.netloc), dict(endpoints.proxies))
    timeouts = Timeouts(endpoints.timeout, endpoints.timeout, endpoints.timeout,
                        time.monotonic() + 2 * endpoints.timeout)
    response = run_through(opening_upstream(
        GOOGLE_CONNECTIONS, target, parts.hostname or "Google",
        method or ("POST" if form is not None or body is not None else "GET"),
        (parts.path or "/") + ("?" + parts.query if parts.query else ""), data, headers,
        timeouts, 4))
    try:
        raw = bytes(response.read_body(4 * MiB))
    finally:
        response.close()
    try:
        return response.status, json.loads(raw)
    except (ValueError, RecursionError):
        return response.status, raw.decode("utf-8", "replace")


# ---- 18. Google accounts ---------------------------------------------------------------------
#
# The accounts of a code-assist upstream. Each is a Google login whose access token is
# refreshed ahead of its expiry, one refresh at a time however many requests need it; whose
# Code Assist project is found once (onboarding the account to the free tier when it has
# none) and remembered across restarts; and which is out, with the reason, when Google will
# not refresh it or set it up. It sits in the upstream's KeyPool as a key does and answers
# the same questions. Credential files are only read, but for the proxy's own (the login
# command writes them, and refreshed tokens go back into them): Gemini CLI's ~/.gemini is
# never written. No lock here is held while Google is asked anything.

def state_directory(configured: str, environ: Dict[str, str]) -> str:
    """Where the proxy keeps what it must remember: server.state_dir, else
    $XDG_CONFIG_HOME/gemini-proxy, else ~/.config/gemini-proxy."""
    if configured:
        return os.path.expanduser(configured)
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "gemini-proxy")


def accounts_directory(state_dir: str) -> str:
    return os.path.join(state_dir, "accounts")


def project_book_path(state_dir: str) -> str:
    return os.path.join(state_dir, "code-assist-projects.json")


def gemini_cli_credentials(environ: Dict[str, str]) -> str:
    """Gemini CLI's own login: ~/.gemini/oauth_creds.json ($GEMINI_CLI_HOME for ~)."""
    home = environ.get("GEMINI_CLI_HOME") or environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".gemini", "oauth_creds.json")


def credential_sources(spec: Dict[str, Any], state_dir: str,
                       environ: Dict[str, str]) -> List[str]:
    """Where a code-assist upstream's logins are: its credentials, else the proxy's own
    accounts directory and then Gemini CLI's login."""
    return spec["credentials"] or [accounts_directory(state_dir),
                                   gemini_cli_credentials(environ)]


def credential_files(sources: List[str]) -> List[str]:
    """The files behind a credentials list: files as named, and every *.json in each
    directory, sorted. Only regular files (a FIFO would hang whoever opens it)."""
    found: List[str] = []
    for source in sources:
        path = os.path.expanduser(source)
        if os.path.isdir(path):
            found += sorted(os.path.join(path, name) for name in os.listdir(path)
                            if name.endswith(".json") and not name.startswith("."))
        else:
            found.append(path)
    return list(dict.fromkeys(os.path.abspath(p) for p in found if os.path.isfile(p)))


def read_small_json(path: str) -> Any:
    """A small JSON file (a credential, the project book); ValueError for anything else,
    a file too big or nested too deep included."""
    with open(path, "rb") as f:
        data = f.read(MiB + 1)
    if len(data) > MiB:
        raise ValueError("larger than 1 MiB")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def write_private_json(path: str, data: Any) -> None:
    """Write a file only its owner can read, whole or not at all (a crash mid-write
    leaves the old one)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    temporary = "%s.%s.tmp" % (path, new_id(nbytes=4))
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


class TokenRefused(Exception):
    """Google will not give a token for this refresh token or code (invalid_grant and
    its kind): only a new login helps."""


# The OAuth errors that mean the grant itself is bad; anything else (a 5xx, a 429, the
# network) passes.
REFUSED_GRANT = ("invalid_grant", "invalid_client", "unauthorized_client", "access_denied",
                 "invalid_request")


def token_call(endpoints: GoogleEndpoints, form: Dict[str, str]) -> Dict[str, Any]:
    """POST the token endpoint: the token reply, with expires_at (epoch seconds) added.
    Raises TokenRefused, or UpstreamError (key_verdict "rest") when Google could not
    answer now."""
    try:
        status, answer = google_call(endpoints, endpoints.token_url, form=form)
    except UpstreamError as exc:
        exc.key_verdict, exc.retry_after = "rest", 60.0
        raise
    answer_fields = fields_of(answer)
    if status == 200 and text_of(answer_fields.get("access_token")):
        try:
            lifetime = float(answer_fields.get("expires_in"))   # may be a string, or 10**400
        except (TypeError, ValueError, OverflowError):
            lifetime = 3600.0
        lifetime = lifetime if math.isfinite(lifetime) else 3600.0
        return dict(answer_fields, expires_at=time.time() + min(max(lifetime, 0.0), 86400.0))
    code = text_of(answer_fields.get("error"))
    said = without_google_tokens("%s%s" % (
        code or "HTTP %d" % status, ": " + text_of(answer_fields.get("error_description"))
        if answer_fields.get("error_description") else ""))
    if code in REFUSED_GRANT or status in (400, 401, 403):
        raise TokenRefused(clip(said, 300))
    raise UpstreamError("Google's token endpoint answered %d (%s)" % (status, clip(said, 200)),
                        status=503, retry_after=60.0, key_verdict="rest")


class ProjectBook:
    """The Code Assist project and tier found for each account, kept in the state
    directory so that a restart does not look them up (or onboard) again. Read again
    before each write: a login in another process may have added to it."""

    _open: Dict[str, "ProjectBook"] = {}
    _open_lock = threading.Lock()

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._entries: Optional[Dict[str, Any]] = None

    @classmethod
    def at(cls, path: str) -> "ProjectBook":
        """The one book kept at `path` (upstreams that share a state directory share
        it, and its writes)."""
        with cls._open_lock:
            return cls._open.setdefault(path, cls(path))

    def _read(self) -> Dict[str, Any]:
        try:
            return dict(fields_of(read_small_json(self.path)))
        except (OSError, ValueError):
            return {}

    def get(self, account: str) -> Dict[str, Any]:
        with self._lock:
            if self._entries is None:
                self._entries = self._read()
            return dict(fields_of(self._entries.get(account)))

    def put(self, account: str, entry: Optional[Dict[str, Any]]) -> None:
        """Remember an account's entry (None: forget it)."""
        with self._lock:
            self._entries = self._read()
            if entry is None:
                self._entries.pop(account, None)
            else:
                self._entries[account] = entry
            try:
                write_private_json(self.path, self._entries)
            except OSError as exc:
                log.warning("cannot remember the Code Assist project in %s: %s", self.path,
                            exc.strerror or exc)


class SharedWork:
    """Work that many requests may need at once and one of them does (a refresh, a
    project's discovery): the others wait for its outcome, success or the same failure,
    instead of doing it again; a failure is kept a little while for those who come just
    after. A waiter gives up when its client leaves or its deadline passes."""

    def __init__(self, what: str):
        self.what = what
        self._done = threading.Condition()
        self._busy = False
        self._rounds = 0
        self._last_failure: Optional[ProxyError] = None    # the last round's, for its waiters
        self._failure: Optional[ProxyError] = None         # kept for those who come after
        self._failed_until = 0.0

    def forget_failure(self) -> None:
        """Let the next request try again at once (a reload may have mended it)."""
        with self._done:
            self._failure = None

    def run(self, work: Callable[[], Any], deadline: float,
            cancelled: Callable[[], bool]) -> Any:
        """work()'s result; None to a waiter whose round succeeded (the state it
        changed is there to read)."""
        with self._done:
            if self._failure is not None and time.monotonic() < self._failed_until:
                raise copy.copy(self._failure)
            if self._busy:
                round_ = self._rounds
                while self._rounds == round_:
                    left = deadline - time.monotonic()
                    if cancelled():
                        raise ClientGone()
                    if left <= 0:
                        raise UpstreamError("gave up waiting for %s" % self.what, status=504)
                    self._done.wait(min(left, 0.25))
                if self._last_failure is not None:
                    raise copy.copy(self._last_failure)
                return None
            self._busy = True
        failure: Optional[ProxyError] = None
        try:
            return work()
        except ProxyError as exc:
            failure = copy.copy(exc)
            raise
        except BaseException:   # a bug: the leader's request answers 500, its waiters 502
            failure = UpstreamError("internal error in gemini-proxy during %s" % self.what,
                                    status=502, key_verdict="rest")
            raise
        finally:
            with self._done:
                self._busy, self._rounds = False, self._rounds + 1
                self._last_failure = self._failure = failure
                kept = failure.retry_after if failure is not None and \
                    failure.retry_after is not None else 5.0
                self._failed_until = time.monotonic() + min(kept, 60.0)
                self._done.notify_all()


# Why an account is out: Google refused its login (a new login in its file brings it
# back), or refused to set it up (a reload tries again: the user may have fixed it).
OUT_LOGIN, OUT_SETUP = "login", "setup"


class GoogleAccount:
    """One Google login of a code-assist upstream: ready() gives a live access token and
    the account's project, refreshing and discovering as needed; `out` says why the
    account cannot be used ("" while it can)."""

    def __init__(self, credential: GoogleCredential, endpoints: GoogleEndpoints,
                 book: ProjectBook, writes_back: bool, project: str = ""):
        self.credential = credential
        self.endpoints = endpoints
        self.book = book
        self.writes_back = writes_back    # the proxy's own file: refreshed tokens go in
        self.configured_project = project  # the upstream's "project", for every account
        self.project = self.tier = ""
        self.out = self.out_kind = ""
        self._lock = threading.Lock()      # short: swapping the credential or the project
        self._refreshing = SharedWork("a token refresh of " + self.name)
        self._setting_up = SharedWork("the Code Assist setup of " + self.name)
        self._forgot_project_at = -math.inf
        self._remembered()

    @property
    def requested_project(self) -> str:
        """The project asked for in discovery: the upstream's, else the file's own."""
        return self.configured_project or self.credential.project

    @property
    def _book_key(self) -> str:
        """An account's entry in the project book: its email (else a fingerprint of its
        refresh token), and the project asked for."""
        who = self.credential.email or fingerprint(self.credential.refresh_token)
        return who + ("|" + self.requested_project if self.requested_project else "")

    def _remembered(self) -> None:
        known = self.book.get(self._book_key)
        self.project, self.tier = text_of(known.get("project")), text_of(known.get("tier"))

    @property
    def name(self) -> str:
        return self.credential.email or "account " + fingerprint(
            self.credential.refresh_token)[4:]

    def ready(self, deadline: float = math.inf,
              cancelled: Callable[[], bool] = lambda: False) -> Tuple[str, str]:
        """(access token, project) for a request; an UpstreamError when the account
        cannot be used (key_verdict "out", or "rest" when Google could not answer now)."""
        return self.token(deadline=deadline, cancelled=cancelled), \
            self.setup(deadline, cancelled)

    def _take_out(self, kind: str, why: str, status: int = 503) -> UpstreamError:
        self.out, self.out_kind = without_google_tokens(why), kind
        log.warning("account %s is out: %s", self.name, self.out)
        return UpstreamError(self.out, status=status, key_verdict="out")

    def _check_out(self) -> None:
        if self.out:
            raise UpstreamError(self.out, status=503, key_verdict="out")

    # -- tokens --------------------------------------------------------------------------

    def token(self, stale: str = "", deadline: float = math.inf,
              cancelled: Callable[[], bool] = lambda: False) -> str:
        """A live access token. `stale`: one the upstream has just refused (401), to be
        replaced even if it has not expired. Every request that needs a new token waits
        for the one refresh."""
        self._check_out()
        credential = self.credential
        if self._fresh(credential, stale):
            return credential.access_token
        token = self._refreshing.run(lambda: self._refresh(stale), deadline, cancelled)
        self._check_out()
        return token or self.credential.access_token

    @staticmethod
    def _fresh(credential: GoogleCredential, stale: str) -> bool:
        return bool(credential.access_token) and credential.access_token != stale and \
            credential.expires_at - time.time() > TOKEN_REFRESH_MARGIN

    def _refresh(self, stale: str) -> str:
        """A new access token (one thread at a time). A refused refresh token is read
        from the file once more first (Gemini CLI, or another proxy, may have logged in
        again or refreshed it), then the account is out."""
        current = self.credential
        if self._fresh(current, stale):     # a refresh just before this one did it
            return current.access_token
        try:
            return self._adopt(current, self._refreshed(current))
        except TokenRefused as exc:
            refused = str(exc)
        try:
            reread = self._read_file()
        except (OSError, ValueError, ArithmeticError):
            reread = None
        if reread is not None and reread.refresh_token != current.refresh_token:
            log.info("account %s: its credential file has a new login; using it", self.name)
            self._replace_credential(reread)
            try:
                return self._adopt(reread, self._refreshed(reread))
            except TokenRefused as exc:
                refused = str(exc)
        raise self._take_out(OUT_LOGIN, "needs a new login: Google refused its refresh "
                             "token (%s); run `python3 gemini_proxy.py login`" % refused)

    def _refreshed(self, credential: GoogleCredential) -> Dict[str, Any]:
        return token_call(self.endpoints, {
            "refresh_token": credential.refresh_token,
            "client_id": credential.client_id or self.endpoints.client_id,
            "client_secret": credential.client_secret or self.endpoints.client_secret,
            "grant_type": "refresh_token"})

    def _adopt(self, credential: GoogleCredential, reply: Dict[str, Any]) -> str:
        """A token reply into the credential (a new refresh token replaces the old, when
        Google sends one), and into the file when it is the proxy's own."""
        renewed = dataclasses.replace(
            credential, access_token=reply["access_token"], expires_at=reply["expires_at"],
            refresh_token=text_of(reply.get("refresh_token")) or credential.refresh_token,
            email=credential.email or id_token_email(reply.get("id_token")))
        with self._lock:
            if self.credential.refresh_token != credential.refresh_token:
                # a new login came in (a reload) while this refresh ran: it wins, and
                # this token serves only the request that asked for it
                return renewed.access_token
        try:
            on_disk = self._read_file().refresh_token
        except (OSError, ValueError, ArithmeticError):
            on_disk = credential.refresh_token
        if on_disk != credential.refresh_token:     # a login wrote the file meanwhile
            return renewed.access_token
        self._replace_credential(renewed)
        if self.writes_back:
            try:
                self.save()
            except OSError as exc:
                log.warning("account %s: cannot write %s: %s", self.name, renewed.path,
                            exc.strerror or exc)
        return renewed.access_token

    def save(self) -> None:
        """Write the proxy's own credential file: Gemini CLI's shape, with the account's
        email (and its OAuth client, when it is not Gemini CLI's). Raises OSError."""
        credential = self.credential
        record: Dict[str, Any] = {
            "type": "gemini-proxy", "email": credential.email,
            "access_token": credential.access_token, "token_type": "Bearer",
            "refresh_token": credential.refresh_token, "scope": " ".join(GOOGLE_SCOPES),
            "expiry_date": int(credential.expires_at * 1000)}
        client = credential.client_id or self.endpoints.client_id
        if client != GOOGLE_CLIENT_ID:
            record.update(client_id=client, client_secret=credential.client_secret or
                          self.endpoints.client_secret)
        write_private_json(credential.path, record)

    def _read_file(self) -> GoogleCredential:
        return parse_google_credential(read_small_json(self.credential.path),
                                       self.credential.path)

    def _replace_credential(self, fresh: GoogleCredential) -> None:
        """Another credential for this account's file: another person's login (another
        email) has another project."""
        with self._lock:
            other = fresh.email != self.credential.email or \
                fresh.project != self.credential.project
            self.credential = fresh
        if other:
            self._remembered()

    def reread(self) -> None:
        """On a configuration reload (on the event loop: no waiting here). A file with a
        new login brings an account Google refused back; one Google would not set up is
        tried again (the user may have verified it, or fixed its project)."""
        try:
            fresh = self._read_file()
        except (OSError, ValueError, ArithmeticError):
            return
        if fresh.refresh_token != self.credential.refresh_token:
            self._replace_credential(fresh)
            if self.out_kind == OUT_LOGIN:
                self.out = self.out_kind = ""
        if self.out_kind == OUT_SETUP:
            self.out = self.out_kind = ""
            self.project = ""
        self._refreshing.forget_failure()
        self._setting_up.forget_failure()

    # -- the project ---------------------------------------------------------------------

    def setup(self, deadline: float = math.inf,
              cancelled: Callable[[], bool] = lambda: False) -> str:
        """The account's Code Assist project: remembered, or found now with
        loadCodeAssist (and onboardUser when the account has no tier yet), once for
        every request that needs it, using the project the server names rather than the
        one asked for."""
        if self.project:
            return self.project
        self._setting_up.run(self._discover, deadline, cancelled)
        self._check_out()
        if not self.project:    # a reload forgot it while this request waited
            raise UpstreamError("the Code Assist setup of %s started again; try again"
                                % self.name, status=503, retry_after=1.0)
        return self.project

    def forget_project(self) -> bool:
        """Code Assist refused the remembered project (403): forget it, so that it is
        found again, at most once every ten minutes. False when it was just found."""
        with self._lock:
            if time.monotonic() - self._forgot_project_at < 600:
                return False
            self._forgot_project_at = time.monotonic()
            self.project = ""
        self.book.put(self._book_key, None)
        log.info("account %s: Code Assist refused its project; looking it up again",
                 self.name)
        return True

    def _setup_call(self, method: str, body: Any = None) -> Dict[str, Any]:
        url = self.endpoints.base_url.rstrip("/") + CODE_ASSIST_API + method
        token, status, answer = "", 401, None
        for _ in range(2):    # a 401: one new token, one more try (as for requests)
            if status != 401:
                break
            token = self.token(stale=token)
            status, answer = google_call(self.endpoints, url, body=body, token=token,
                                         method="POST" if body is not None else "GET")
        what = method.lstrip(":/")
        if status == 200 and isinstance(answer, dict):
            return answer
        if status == 200:
            raise UpstreamError("Code Assist %s answered something that is not a JSON "
                                "object" % what, status=502, retry_after=60.0,
                                key_verdict="rest")
        error = decode_code_assist_error(status, answer)
        if status in (400, 401, 403):
            raise self._take_out(OUT_SETUP, "Code Assist would not set up this account (%s "
                                 "%d: %s)" % (what, status, error.message))
        raise UpstreamError("Code Assist %s failed (%d: %s)" % (what, status,
                            clip(error.message, 200)), status=503,
                            retry_after=error.retry_after if status == 429 and
                            error.retry_after else 60.0, key_verdict="rest")

    def _discover(self) -> None:
        if self.project:
            return
        requested = self.requested_project
        metadata = dict(CODE_ASSIST_METADATA, **({"duetProject": requested} if requested
                                                   else {}))
        body: Dict[str, Any] = {"metadata": metadata}
        if requested:
            body["cloudaicompanionProject"] = requested
        found = read_code_assist_setup(self._setup_call(":loadCodeAssist", body), requested)
        if "onboard" in found:
            found = self._onboard(found["onboard"], requested, metadata)
        if "error" in found:
            raise self._take_out(OUT_SETUP, found["error"])
        with self._lock:
            self.project, self.tier = found["project"], found["tier"]
        log.info("account %s: Code Assist project %s (%s)", self.name, self.project,
                 self.tier)
        self.book.put(self._book_key, {"project": self.project, "tier": self.tier})

    def _onboard(self, tier: str, requested: str, metadata: Dict[str, Any]
                 ) -> Dict[str, str]:
        """onboardUser, then its long-running operation polled (briefly at first, every
        5 s later, ONBOARD_TIMEOUT at most). The free tier takes no project."""
        body: Dict[str, Any] = {"tierId": tier, "metadata": metadata}
        if requested and tier != "free-tier":
            body["cloudaicompanionProject"] = requested
        log.info("account %s: onboarding to Code Assist (%s)", self.name, tier)
        operation = self._setup_call(":onboardUser", body)
        give_up, pause = time.monotonic() + ONBOARD_TIMEOUT, 0.5
        while not operation.get("done"):
            name = text_of(operation.get("name"))
            if not name or time.monotonic() + pause > give_up:
                raise UpstreamError("Code Assist onboarding did not finish within %ds" %
                                    ONBOARD_TIMEOUT, status=503, retry_after=60.0,
                                    key_verdict="rest")
            time.sleep(pause)       # a poll Google answers at its pace; bounded above
            pause = min(pause * 2, 5.0)
            operation = self._setup_call("/" + name.lstrip("/"))
        project = onboarded_project(operation) or requested
        if not project:
            return {"error": "Code Assist onboarded this account but named no project; set "
                             "\"project\" on the code-assist upstream"}
        return {"project": project, "tier": tier}


def load_google_accounts(spec: Dict[str, Any], state_dir: str, environ: Dict[str, str],
                         previous: Dict[str, GoogleAccount]) -> Dict[str, GoogleAccount]:
    """The accounts of a code-assist upstream, by credential file path: those already
    loaded kept (their tokens are good; see GoogleAccount.reread), new files read. A file
    that is no credential is skipped, said so; so is a second file of the same account
    (the first, the proxy's own before Gemini CLI's, is its account)."""
    endpoints = GoogleEndpoints.of(spec, environ)
    book = ProjectBook.at(project_book_path(state_dir))
    own = os.path.abspath(accounts_directory(state_dir)) + os.sep
    accounts: Dict[str, GoogleAccount] = {}
    emails: Dict[str, str] = {}
    for path in credential_files(credential_sources(spec, state_dir, environ)):
        old = previous.get(path)
        if old is not None and old.endpoints == endpoints and \
                old.configured_project == spec["project"]:
            old.reread()
            account = old
        else:
            try:
                credential = parse_google_credential(read_small_json(path), path)
            except (OSError, ValueError, ArithmeticError) as exc:
                log.warning("skipping %s: not a usable Google credential file (%s)", path,
                            getattr(exc, "strerror", None) or exc)
                continue
            account = GoogleAccount(credential, endpoints, book, path.startswith(own),
                                    spec["project"])
        email = account.credential.email.lower()
        if email and email in emails:
            log.info("skipping %s: the same account (%s) as %s", path, email, emails[email])
            continue
        emails[email] = path
        accounts[path] = account
    return accounts


# ---- 19. Shared state ---------------------------------------------------------------------
#
# With server.processes above 1, or state.redis_url, what the processes must agree on
# lives in one store: key rests (a key that got a 429 rests in every process) and client
# limits (the rate's window, the day's tokens and requests). The store is Redis
# (state.redis_url) or else the supervisor's StateServer (section 31) on a 0600 Unix
# socket; processes speak RESP2 to either through RespStore, and the shared_* operations
# at the end give the same answers from both. The parser is pure, like section 5's: bytes
# in, values out, the sockets are the caller's. When the store fails, each process
# decides alone until it answers again (SharedState).

RESP_MAX_BULK = 512 * 1024 * 1024   # Redis's own proto-max-bulk-len: the client's limit
RESP_MAX_LINE = 64 * 1024           # a type line (simple string, error, length) unended
RESP_MAX_DEPTH = 32                 # arrays within arrays in one reply
INT64_MAX = 2 ** 63 - 1
RATE_WINDOW = 60.0                  # seconds: a client's requests_per_minute window
STATE_DAY_TTL = 2 * 86400           # a day's counters outlive their UTC day by a day
STATE_BACKOFF = 1.0                 # seconds calls fail at once after the store failed
STATE_BUSY_WAIT = 30.0              # seconds a call may wait for a connection in use


class StateError(Exception):
    """Shared state failed: the store is out of reach (StateUnavailable) or refused a
    command (RespError). The proxy catches this one class."""


class StateUnavailable(StateError):
    """The store cannot be reached, or did not answer in time. Its message names the store
    by redacted_url, never with a password."""


class RespError(StateError):
    """An error reply ("ERR ...", "WRONGTYPE ..."): raised by RespStore.call, a value in
    its place among a pipeline's replies."""


class RespProtocolError(ValueError):
    """Bytes that are not RESP, or a reply or request over a limit."""


# -- the protocol (pure) ---------------------------------------------------------------------

RESP_LENGTH = re.compile(rb"(?:-1|[0-9]{1,19})\Z")
RESP_INTEGER = re.compile(rb"-?[0-9]{1,19}\Z")


def resp_bytes(value: Any) -> bytes:
    """A command's argument as RESP carries it; floats as repr (round-trips exactly)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, int) and not isinstance(value, bool):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode("ascii")
    raise TypeError("a RESP argument is str, bytes, int or float, not %s" % type(value).__name__)


def encode_resp_command(*args: Any) -> bytes:
    """A command as clients send it: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = resp_bytes(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def encode_resp_reply(value: Any) -> bytes:
    """A reply as a server sends it: None is the nil bulk string, a str a simple string."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(encode_resp_reply(item) for item in value)
    # A line break in an error's text would end the line early: the next reply would be
    # read from the rest of it. Redis turns them into spaces too.
    line = str(value).replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")
    return (b"-" if isinstance(value, RespError) else b"+") + line + b"\r\n"


class RespParser:
    """Incremental RESP2 parser: feed() returns the values its bytes completed (one split
    across reads waits for the rest). Simple strings come out as str, errors as RespError
    values (returned, not raised: a pipeline's replies keep their places), integers as
    int, bulk strings as bytes, arrays as lists, nil as None. With requests=True it reads
    what a server receives instead: arrays of bulk strings, each a command as a list of
    bytes (empty arrays skipped, as Redis does; inline commands are not accepted), of at
    most max_items arguments and max_bulk bytes of them together. Anything else raises
    RespProtocolError; the parser is then unusable (its connection should close)."""

    def __init__(self, requests: bool = False, max_bulk: int = RESP_MAX_BULK,
                 max_items: int = INT64_MAX):
        self.requests = requests
        self.max_bulk = max_bulk
        self.max_items = max_items
        self._buffer = bytearray()
        self._open: List[Tuple[List[Any], int]] = []   # arrays being filled, their lengths
        self._command_bytes = 0       # of the request being read (requests=True)

    def feed(self, data: bytes) -> List[Any]:
        buf = self._buffer
        buf += data
        done: List[Any] = []
        at = 0     # the start of what is not read yet
        try:
            while True:
                end = buf.find(b"\r\n", at, at + RESP_MAX_LINE)
                if end < 0:
                    if len(buf) - at >= RESP_MAX_LINE:
                        raise RespProtocolError("a line of over %d bytes" % RESP_MAX_LINE)
                    return done
                kind, line = buf[at:at + 1], buf[at + 1:end]
                if self.requests and kind != (b"$" if self._open else b"*"):
                    raise RespProtocolError("expected '%s', got '%s'" % (
                        "$" if self._open else "*", kind.decode("latin-1")))
                if kind == b"$":
                    limit = self.max_bulk - self._command_bytes
                    size = self._length(line, limit if self.requests else self.max_bulk, "bulk")
                    if size < 0 and self.requests:
                        raise RespProtocolError("invalid bulk length")
                    if size < 0:
                        value, at = None, end + 2
                    elif len(buf) < end + 4 + size:
                        return done     # the header is read again with the rest
                    elif buf[end + 2 + size:end + 4 + size] != b"\r\n":
                        raise RespProtocolError("a bulk string longer than its length")
                    else:
                        value, at = bytes(buf[end + 2:end + 2 + size]), end + 4 + size
                        self._command_bytes += size
                elif kind == b"*":
                    count, at = self._length(line, self.max_items, "multibulk"), end + 2
                    if count > 0:
                        if len(self._open) >= (1 if self.requests else RESP_MAX_DEPTH):
                            raise RespProtocolError("arrays nested too deep")
                        self._open.append(([], count))
                        continue
                    if self.requests:
                        continue
                    value = [] if count == 0 else None
                elif kind == b"+":
                    value, at = line.decode("utf-8", "replace"), end + 2
                elif kind == b"-":
                    value, at = RespError(line.decode("utf-8", "replace")), end + 2
                elif kind == b":" and RESP_INTEGER.match(line):
                    value, at = int(line), end + 2
                else:
                    raise RespProtocolError("not a RESP2 value: %r" % bytes(buf[at:end][:20]))
                while self._open:     # a value may complete the arrays it ends
                    items, count = self._open[-1]
                    items.append(value)
                    if len(items) < count:
                        break
                    value = self._open.pop()[0]
                if not self._open:
                    done.append(value)
                    self._command_bytes = 0
        finally:
            del buf[:at]

    @staticmethod
    def _length(line: bytearray, limit: int, what: str) -> int:
        length = int(line) if RESP_LENGTH.match(line) else limit + 1
        if length > limit:
            raise RespProtocolError("invalid %s length" % what)
        return length


# -- the client ------------------------------------------------------------------------------

class RespConnection:
    """One blocking connection to a store and its reply parser."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.parser = RespParser()

    def exchange(self, payload: bytes, count: int, timeout: float) -> List[Any]:
        """Send commands and read their `count` replies, within `timeout` seconds in all
        (a store that trickles bytes cannot hold a worker longer)."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        self.sock.sendall(payload)
        replies: List[Any] = []
        while len(replies) < count:
            try:
                self.sock.settimeout(max(deadline - time.monotonic(), 1e-6))
                data = self.sock.recv(65536)
            except socket.timeout:
                raise socket.timeout("no reply within %gs" % timeout) from None
            if not data:
                raise ConnectionError("the store closed the connection")
            replies += self.parser.feed(data)
        if len(replies) > count:
            raise RespProtocolError("more replies than commands")
        return replies

    def closed_by_peer(self) -> bool:
        """Whether an idle connection has something to read: the store closed it (or sent
        what nobody asked for)."""
        return readable_now(self.sock)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class RespStore:
    """A thread-safe client of one RESP store (Redis, or StateServer) at a URL (see
    parse_state_url). A call takes an idle connection, or opens one (AUTH and SELECT
    first) while fewer than max_connections are open, or waits up to busy_timeout for one
    to be given back; one that failed is closed, as are the idle ones then. A failure
    makes calls fail at once with StateUnavailable for `backoff` seconds; then one call
    tries again while the others still fail at once (an unreachable store costs a worker
    one connect timeout a back-off, not one a call)."""

    def __init__(self, url: str, connect_timeout: float = 1.0, reply_timeout: float = 1.0,
                 namespace: str = "gemini-proxy:", max_connections: int = 16,
                 backoff: float = STATE_BACKOFF):
        self.address = parse_state_url(url)
        self.url = redacted_url(url)
        self.namespace = namespace      # the start of every key the shared_* functions use
        self.connect_timeout, self.reply_timeout = connect_timeout, reply_timeout
        self.max_connections, self.backoff = max_connections, backoff
        # Waiting for a connection another thread is using: a store that is busy (a burst
        # of requests) has not failed, and deciding alone then would break client limits.
        self.busy_timeout = max(reply_timeout, STATE_BUSY_WAIT)
        self._tls = ssl.create_default_context() if self.address.tls else None
        self._lock = threading.Condition()      # notified when a connection is free
        self._idle: List[RespConnection] = []
        self._open = 0              # connections open, idle or in use
        self._down_until = 0.0      # time.monotonic(): calls fail at once until then
        self._down_why = ""
        self._probing = False       # a call is trying the store again after a failure
        self._pid = os.getpid()
        self._closed = False

    def call(self, *args: Any) -> Any:
        """One command's reply; an error reply is raised (RespError)."""
        reply = self.pipeline([args])[0]
        if isinstance(reply, RespError):
            raise reply
        return reply

    def pipeline(self, commands: Iterable[Sequence[Any]]) -> List[Any]:
        """Commands sent together, their replies in order, error replies as RespError
        values; one round trip."""
        commands = list(commands)
        if not commands:
            return []
        payload = b"".join(encode_resp_command(*command) for command in commands)
        connection = self._take()
        try:
            replies = connection.exchange(payload, len(commands), self.reply_timeout)
        except BaseException as error:
            self._discard(connection)   # its replies are out of step with its commands
            if isinstance(error, (OSError, RespProtocolError)):
                raise self._down(error) from error
            raise
        with self._lock:
            self._down_until = 0.0      # it answered: an older failure is over
            if not self._closed:
                self._idle.append(connection)
                self._lock.notify()
                return replies
        self._discard(connection)
        return replies

    def transaction(self, commands: Iterable[Sequence[Any]]) -> List[Any]:
        """MULTI, the commands, EXEC in one round trip: EXEC's replies (an error of one
        command as a RespError value in its place). A command refused while queueing
        (unknown, wrong arguments, a full store) discards all of them: raised."""
        replies = self.pipeline([("MULTI",)] + list(commands) + [("EXEC",)])
        if isinstance(replies[-1], list):
            return replies[-1]
        queued = [reply for reply in replies[:-1] if isinstance(reply, RespError)]
        raise RespError("%s (%s)" % (replies[-1], queued[0]) if queued else
                        str(replies[-1] or "EXEC aborted"))

    def close(self) -> None:
        """Close the connections (those in use when they are given back). A call after
        this opens new ones, kept no longer than the call."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._lock.notify_all()
        for connection in idle:
            connection.close()

    def _take(self) -> RespConnection:
        deadline = time.monotonic() + self.busy_timeout
        with self._lock:
            if self._pid != os.getpid():    # a forked child: the connections are the parent's
                self._pid, self._idle, self._open = os.getpid(), [], 0
            while True:
                if self._probing or time.monotonic() < self._down_until:
                    raise StateUnavailable(self._down_why)
                if self._idle:
                    connection = self._idle.pop()
                    if not connection.closed_by_peer():
                        return connection
                    connection.close()
                    self._open -= 1
                elif self._open < self.max_connections:
                    break
                elif not self._lock.wait(deadline - time.monotonic()) and \
                        time.monotonic() >= deadline:     # busy, not down: no back-off
                    raise StateUnavailable("shared state at %s: all %d connections stayed "
                                           "busy for %gs" % (self.url, self._open,
                                                             self.busy_timeout))
            self._open += 1
            self._probing = self._down_until > 0
        try:
            connection = self._connect()
        except BaseException as error:
            failure = self._down(error) if isinstance(
                error, (OSError, RespError, RespProtocolError)) else None
            with self._lock:    # (after _down: no moment without both probe and back-off)
                self._open -= 1
                self._probing = False
                self._lock.notify()
            if failure is not None:
                raise failure from error
            raise
        with self._lock:
            self._down_until, self._probing = 0.0, False
        return connection

    def _discard(self, connection: RespConnection) -> None:
        connection.close()
        with self._lock:
            self._open -= 1
            self._lock.notify()

    def _down(self, error: Exception) -> StateUnavailable:
        """Note a failure (calls fail at once for a while) and say what it was."""
        why = "shared state at %s is unavailable: %s" % (
            self.url, str(error) or type(error).__name__)
        with self._lock:
            self._down_until = time.monotonic() + self.backoff
            self._down_why = why + " (tried again after %gs)" % self.backoff
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._lock.notify_all()     # the calls waiting for a connection fail now
        for connection in idle:     # they are likely as dead (a restart, a network down)
            connection.close()
        return StateUnavailable(why)

    def _connect(self) -> RespConnection:
        address = self.address
        if address.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:   # (resolving the name is not bounded by the timeout: prefer addresses)
            sock = socket.create_connection((address.host, address.port), self.connect_timeout)
        connection = RespConnection(sock)
        try:
            if address.path:
                sock.settimeout(self.connect_timeout)
                sock.connect(address.path)
            else:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                connection.sock = self._tls.wrap_socket(sock, server_hostname=address.host)
            setup: List[Tuple[Any, ...]] = []
            if address.password:
                setup.append(("AUTH", address.user, address.password) if address.user else
                             ("AUTH", address.password))
            if address.db:
                setup.append(("SELECT", address.db))
            if setup:
                payload = b"".join(encode_resp_command(*command) for command in setup)
                for reply in connection.exchange(payload, len(setup), self.connect_timeout):
                    if isinstance(reply, RespError):
                        raise reply
        except BaseException:
            connection.close()
            sock.close()
            raise
        return connection



def utc_day(wall: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(wall))


# -- what the proxy shares -----------------------------------------------------------------------
#
# Keys: the namespace, a kind, then a name from the configuration (a client's, an
# upstream's: any characters at all) after its length in bytes, so that no two names make
# the same key: "gemini-proxy:rpm:5:alice", "gemini-proxy:tpd:5:alice:2025-01-31". Every
# function raises StateError (StateUnavailable or RespError) when the store fails; the
# answers are the same from Redis (6.2 or later: ZADD GT) and from StateServer.

def state_key(namespace: str, kind: str, name: str, day: str = "") -> bytes:
    raw = name.encode("utf-8", "surrogatepass")
    key = b"%s%s:%d:%s" % (namespace.encode("utf-8"), kind.encode("ascii"), len(raw), raw)
    return key + b":" + day.encode("ascii") if day else key


def state_transaction(store: RespStore, commands: List[Tuple[Any, ...]]) -> List[Any]:
    """A transaction whose every command must succeed (the first error reply is raised)."""
    replies = store.transaction(commands)
    for reply in replies:
        if isinstance(reply, RespError):
            raise reply
    return replies


def shared_admit(store: RespStore, client_name: str, requests_per_minute: int,
                 tokens_per_day: int, now: float) -> Optional[Tuple[float, str]]:
    """ClientLimits.admit across processes: count a request in (None), or say why not and
    for how long: (seconds, "tokens") when the day's tokens are spent (until midnight UTC),
    (seconds, "rate") when requests_per_minute requests started in the last minute (until
    the oldest leaves it). A limit of 0 is none; the request is counted still.

    One transaction reads the day's tokens and, in the rate window (a sorted set of start
    times), drops what is older than a minute, adds this request and counts; it counts the
    day's requests too. A refused request is taken out again, in a second round trip:
    until then it counts against other requests, so racing processes may both refuse
    (never both admit past the limit). If that second trip fails, the refused request
    stays counted (for a minute, and in the day's requests)."""
    day = utc_day(now)
    window = state_key(store.namespace, "rpm", client_name)
    requests = state_key(store.namespace, "rpd", client_name, day)
    member = "%r:%s" % (now, secrets.token_hex(8))     # two requests, two members
    tokens, _, _, count, oldest, _, _, _ = state_transaction(store, [
        ("GET", state_key(store.namespace, "tpd", client_name, day)),
        ("ZREMRANGEBYSCORE", window, "-inf", now - RATE_WINDOW),
        ("ZADD", window, now, member),
        ("ZCARD", window),
        ("ZRANGE", window, 0, 0, "WITHSCORES"),
        ("PEXPIRE", window, int(RATE_WINDOW * 1000) + 1000),
        ("INCR", requests),
        ("EXPIRE", requests, STATE_DAY_TTL)])
    refusal: Optional[Tuple[float, str]] = None
    if tokens_per_day and int(tokens or 0) >= tokens_per_day:
        refusal = (86400 - now % 86400, "tokens")
    elif requests_per_minute and count > requests_per_minute:
        refusal = (max(float(oldest[1]) + RATE_WINDOW - now, 0.0), "rate")
    if refusal is not None:
        try:
            state_transaction(store, [("ZREM", window, member), ("DECR", requests)])
        except StateError:   # still refused: it counts a minute longer, that is all
            pass
    return refusal


def shared_spent(store: RespStore, client_name: str, tokens: int, now: float) -> None:
    """An admitted request cost `tokens` (ClientLimits.spent)."""
    if tokens > 0:
        key = state_key(store.namespace, "tpd", client_name, utc_day(now))
        state_transaction(store, [("INCRBY", key, tokens), ("EXPIRE", key, STATE_DAY_TTL)])


def shared_usage(store: RespStore, client_name: str, now: float) -> Dict[str, int]:
    """ClientLimits.snapshot: requests of the last minute, requests and tokens today."""
    day = utc_day(now)
    window = state_key(store.namespace, "rpm", client_name)
    _, recent, requests, tokens = state_transaction(store, [
        ("ZREMRANGEBYSCORE", window, "-inf", now - RATE_WINDOW),
        ("ZCARD", window),
        ("GET", state_key(store.namespace, "rpd", client_name, day)),
        ("GET", state_key(store.namespace, "tpd", client_name, day))])
    return {"requests_last_minute": recent, "requests_today": int(requests or 0),
            "tokens_today": int(tokens or 0)}


def rest_member(key_name: str, scope: str) -> bytes:
    raw = key_name.encode("utf-8", "surrogatepass")
    return b"%d:%s%s" % (len(raw), raw, scope.encode("utf-8", "surrogatepass"))


def shared_rest(store: RespStore, upstream: str, key_name: str, scope: str,
                until_wall: float) -> None:
    """A key of an upstream rests until `until_wall` (Unix time) for `scope` (a model, or
    "*"); a longer rest already recorded stays. The rests of an upstream are a sorted set,
    (key, scope) -> until, so "keep the longer" is ZADD GT: atomic in the store, safe when
    processes record rests of one key at once (no read-then-write). The set lives two days
    past its last rest (or as long as a longer rest: such a rest may be cut short by a
    later, shorter one's expiry; MAX_RETRY_AFTER keeps the upstream's rests within a day)."""
    key = state_key(store.namespace, "rests", upstream)
    ttl = max(STATE_DAY_TTL, until_wall - time.time() + 60)
    state_transaction(store, [("ZADD", key, "GT", until_wall, rest_member(key_name, scope)),
                              ("PEXPIRE", key, int(ttl * 1000))])


def shared_rests(store: RespStore, upstream: str, now: float) -> Dict[Tuple[str, str], float]:
    """The rests of an upstream's keys still in force at `now`: (key_name, scope) ->
    until (Unix time). Those over are removed."""
    key = state_key(store.namespace, "rests", upstream)
    _, flat = state_transaction(store, [("ZREMRANGEBYSCORE", key, "-inf", now),
                                        ("ZRANGE", key, 0, -1, "WITHSCORES")])
    rests = {}
    for member, until in zip(flat[::2], flat[1::2]):
        length, _, rest = member.partition(b":")
        if length.isdigit():
            key_name, scope = rest[:int(length)], rest[int(length):]
            rests[(key_name.decode("utf-8", "surrogatepass"),
                   scope.decode("utf-8", "surrogatepass"))] = float(until)
    return rests


# Seconds between a process's looks at the rests other processes recorded (a key pool
# looks when a request takes a key, at most this often).
SHARED_RESTS_EVERY = 1.0


class SharedState:
    """A process's way to the shared store, and its conduct when the store fails: the
    caller then decides alone (this process's own counts and rests) until the store
    answers again. The log says so once a minute while it lasts, and when it ends."""

    def __init__(self, url: str, namespace: str):
        self.store = RespStore(url, namespace=namespace)
        self.url = self.store.url       # the password replaced
        self._lock = threading.Lock()
        self._said_failing = False     # a warning went out, and no word since that it is back
        self._warned = 0.0

    def failed(self, what: str, error: StateError) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._warned < 60:
                return
            self._warned, self._said_failing = now, True
        log.warning("shared state at %s: %s failed (%s); this process decides alone until "
                    "it answers", self.url, what, error)

    def worked(self) -> None:
        """The store answered: said once after each warning (so at most a pair a
        minute, however often a flaky store comes and goes)."""
        if self._said_failing:
            with self._lock:
                if not self._said_failing:
                    return
                self._said_failing = False
            log.info("shared state at %s answers again", self.url)

    def close(self) -> None:
        self.store.close()


# ---- 20. Key pools -----------------------------------------------------------------------
#
# An upstream's keys and their health. A 429 cools a key down (for the model, where the
# provider limits per model) for as long as the provider says, with a floor and jitter so
# a pool cannot storm; a daily quota cools it for long. A 401 (or Gemini's 400
# API_KEY_INVALID) takes the key out until a restart or a configuration reload; a 403
# takes it out for that model only, so a client naming a model the key may not use
# cannot take the whole upstream down.

# A 429 that says a quota for the day (or the billing plan) is spent: Gemini's quotaId
# ("...PerDayPerProject..."), the words, or OpenAI's insufficient_quota.
DAILY_QUOTA = re.compile(r"per ?day|daily|insufficient_quota", re.I)

# The most a rest's jitter adds (a day's rest need not grow by hours), and the most
# models a key remembers being refused for (their names are the clients' choice).
MAX_COOLDOWN_JITTER = 60.0
MAX_REFUSED_MODELS = 64

# Reasons that say the key itself is bad, whatever the status (Gemini answers 400).
INVALID_KEY_REASONS = ("API_KEY_INVALID", "invalid_api_key")


def refusal_scope(error: UpstreamError) -> str:
    """Whether a failure refuses the key: "*" (for everything), "model" (for this model),
    or "" (it says nothing about the key). An upstream kind that knows better says so in
    the error's key_verdict."""
    if error.key_verdict:
        return {"out": "*", "out_for_model": "model"}.get(error.key_verdict, "")
    if error.status == 401 or error.reason in INVALID_KEY_REASONS:
        return "*"
    return "model" if error.status == 403 else ""


@dataclasses.dataclass
class KeyState:
    key: str
    name: str                               # a fingerprint: what logs and /status show
    requests: int = 0
    failures: int = 0
    rate_limited: int = 0
    strikes: int = 0                        # 429s in a row, for rests that double
    in_flight: int = 0
    refused: Dict[str, Tuple[int, str]] = dataclasses.field(default_factory=dict)
    cooling: Dict[str, float] = dataclasses.field(default_factory=dict)  # scope -> until
    last_error: str = ""
    last_failure: float = 0.0
    account: Optional[GoogleAccount] = None     # a code-assist upstream's: the login
    day: int = -1                               # the UTC day the counts below are of
                                                # (days since 1970: cheap to get per request)
    requests_today: int = 0
    tokens_today: int = 0

    def refusal(self, model: str) -> Optional[Tuple[int, str]]:
        """(status, error) when the provider refused this key (or the account is out),
        for everything or for this model."""
        if self.account is not None and self.account.out:
            return 503, self.account.out
        return self.refused.get("*") or self.refused.get(model)

    def _today(self) -> None:
        today = int(time.time() // 86400)
        if self.day != today:
            self.day, self.requests_today, self.tokens_today = today, 0, 0

    def count_request(self) -> None:
        self._today()
        self.requests_today += 1

    def count_tokens(self, tokens: int) -> None:
        self._today()
        self.tokens_today += tokens


class KeyPool:
    """Hands out the keys of one upstream: a healthy one, by round robin or the least
    recently failed first, within the upstream's and each key's concurrency limits.
    acquire() can wait, up to a deadline, for a free slot or (with wait_for_keys) for a
    key to come back from its cooldown; at most max_waiting requests wait at once. With a
    shared store (section 19), a key's rest is recorded there and the rests other
    processes recorded are taken from it."""

    def __init__(self, name: str, keys: List[str], spec: Dict[str, Any], kind: str,
                 accounts: Optional[Dict[str, GoogleAccount]] = None,
                 shared: Optional[SharedState] = None):
        self.name = name
        self.shared = shared
        self._rests_read = 0.0                  # time.monotonic() of the last look
        self._reading_rests = threading.Lock()  # one thread looks; the others go on
        self.states: List[KeyState] = []
        self.in_flight = 0
        self.waiting = 0
        self._next = 0
        self._lock = threading.Condition()
        # The key each recent conversation last used (its provider-side prompt cache
        # is that key's, or that account's), bounded.
        self._sessions: "collections.OrderedDict[str, KeyState]" = collections.OrderedDict()
        self.reconfigure(keys, spec, kind, accounts)

    def reconfigure(self, keys: List[str], spec: Dict[str, Any], kind: str,
                    accounts: Optional[Dict[str, GoogleAccount]] = None) -> None:
        """Take new keys and settings (a configuration reload). A key still configured
        keeps its state, cooldowns included (the provider still limits it), and the
        requests it has in flight still count; refusals are forgotten (the reload may be
        the fix). A code-assist upstream's keys are its accounts' credential files."""
        with self._lock:
            self.spec = spec
            scope = spec["cooldown_scope"]
            self.per_model = scope == "model" or (scope == "auto" and kind in (
                "gemini", "code-assist"))
            previous = {state.key: state for state in self.states}
            if accounts is not None:
                keys = list(accounts)
            self.states = [previous.get(k) or KeyState(k, fingerprint(k)) for k in keys] or \
                [previous.get("") or KeyState("", "no key")]
            for state in self.states:
                state.refused.clear()
                state.account = accounts.get(state.key) if accounts else None
                if state.account is not None:
                    state.name = state.account.name
            self._next %= len(self.states)
            self._sessions.clear()      # they may name keys no longer here
            self._lock.notify_all()

    def _scope(self, model: str) -> str:
        return model if self.per_model else "*"

    def _rest_until(self, state: KeyState, model: str) -> float:
        """When the key may take this model again (a rest of all of it counts too)."""
        return max(state.cooling.get(self._scope(model), 0), state.cooling.get("*", 0))

    def _resting(self, state: KeyState, model: str, now: float) -> bool:
        return self._rest_until(state, model) > now

    def acquire(self, model: str, deadline: float = 0.0,
                cancelled: Callable[[], bool] = lambda: False, session: str = "",
                avoid: Iterable[KeyState] = (), read_rests: bool = True) -> Any:
        """A KeyState to use (release() it when the request ends), or, when none is
        usable before `deadline` (a time.monotonic() value), the KeysUnavailable that says
        why: 503 (every slot busy: worth waiting for), 429 (every key resting: waited
        for only with wait_for_keys), or the refusal. A conversation (`session`, the
        client's session key) keeps the key it had while that key is usable; a retry
        takes a key it has not tried (`avoid`) while there is one. `read_rests`: False
        on the event loop, which never waits on the shared store (see rests_due)."""
        tried = {id(state) for state in avoid}
        if self.shared is not None and read_rests:
            self._read_rests()
        with self._lock:
            waited = False
            try:
                while True:
                    now = time.monotonic()
                    upstream_full = self.spec["max_concurrency"] and \
                        self.in_flight >= self.spec["max_concurrency"]
                    limit = self.spec["key_concurrency"]
                    usable = [] if upstream_full else [
                        s for s in self.states if not s.refusal(model) and
                        not self._resting(s, model, now) and (not limit or s.in_flight < limit)]
                    if usable:
                        state = self._pick([s for s in usable if id(s) not in tried] or
                                           usable, session)
                        state.in_flight += 1
                        state.requests += 1
                        state.count_request()
                        self.in_flight += 1
                        return state
                    error = self._unavailable(model, now, upstream_full)
                    worth_waiting = error.cause == "busy" or (
                        error.cause == "resting" and self.spec["wait_for_keys"])
                    if deadline <= now or cancelled() or not worth_waiting:
                        return error
                    if not waited:
                        if self.waiting >= self.spec["max_waiting"]:
                            error.message += " (and %d requests are already waiting)" % \
                                self.waiting
                            return error
                        waited = True
                        self.waiting += 1
                    # Short naps: a client that leaves stops waiting soon after.
                    self._lock.wait(min(deadline - now, 0.25))
            finally:
                if waited:
                    self.waiting -= 1

    def rests_due(self) -> bool:
        """Whether the next acquire() looks at the shared store (a round trip)."""
        return self.shared is not None and \
            time.monotonic() - self._rests_read >= SHARED_RESTS_EVERY

    def _read_rests(self) -> None:
        """The rests other processes recorded, at most once a SHARED_RESTS_EVERY."""
        assert self.shared is not None
        now = time.monotonic()
        if now - self._rests_read < SHARED_RESTS_EVERY or \
                not self._reading_rests.acquire(blocking=False):
            return
        try:
            self._rests_read, wall = now, time.time()
            try:
                rests = shared_rests(self.shared.store, self.name, wall)
            except StateError as exc:
                self.shared.failed("reading the rests of upstream %r's keys" % self.name, exc)
                return
            self.shared.worked()
            with self._lock:
                by_name = {state.name: state for state in self.states}
                for (name, scope), until in rests.items():
                    state = by_name.get(name)
                    if state is not None:
                        until += now - wall     # the wall clock's moment on this one's
                        if until > state.cooling.get(scope, 0):
                            state.cooling[scope] = until
        finally:
            self._reading_rests.release()

    def _pick(self, usable: List[KeyState], session: str = "") -> KeyState:
        if len(self.states) < 2:
            return usable[0]
        had = self._sessions.get(session) if session else None
        if had is not None and any(state is had for state in usable):
            self._sessions.move_to_end(session)
            return had
        state = self._pick_by_strategy(usable)
        if session:
            self._sessions[session] = state
            self._sessions.move_to_end(session)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return state

    def _pick_by_strategy(self, usable: List[KeyState]) -> KeyState:
        if self.spec["key_strategy"] == "least_recently_failed":
            return min(usable, key=lambda s: s.last_failure)
        for offset in range(len(self.states)):   # round robin
            state = self.states[(self._next + offset) % len(self.states)]
            if state in usable:
                self._next = (self._next + offset + 1) % len(self.states)
                return state
        return usable[0]

    def _unavailable(self, model: str, now: float, upstream_full: bool) -> KeysUnavailable:
        """Why no key can be used: a busy key or a full upstream frees up soonest, then a
        resting key; only when every key is refused is that the answer."""
        busy = KeysUnavailable("upstream %r is at its concurrency limit" % self.name,
                               status=503, retry_after=1.0, cause="busy")
        if upstream_full:
            return busy
        allowed = [s for s in self.states if not s.refusal(model)]
        if not allowed:
            status, why = self.states[-1].refusal(model) or (403, "")
            if all(s.account is not None and s.refusal("*") for s in self.states):
                # every account out: the proxy's trouble, not the client's key's
                return KeysUnavailable("every Google account of upstream %r is out: %s" % (
                    self.name, why), status=503, cause="refused")
            return KeysUnavailable("every key of upstream %r was refused: %s" % (
                self.name, why), status=status, cause="refused")
        resting = [self._rest_until(s, model) for s in allowed
                   if self._resting(s, model, now)]
        if len(resting) < len(allowed):
            return busy
        wait = min(resting) - now
        return KeysUnavailable("every key of upstream %r is rate limited; the first is free "
                               "again in %.1fs" % (self.name, wait), status=429,
                               retry_after=wait, cause="resting")

    def release(self, state: KeyState, tokens: int = 0) -> None:
        """The key is free again; `tokens`: what the request it served used."""
        with self._lock:
            if tokens:
                state.count_tokens(tokens)
            state.in_flight -= 1
            self.in_flight -= 1
            self._lock.notify_all()

    def succeeded(self, state: KeyState) -> None:
        with self._lock:
            state.strikes = 0

    def failed(self, state: KeyState, model: str, error: UpstreamError) -> None:
        """What a failure says about the key: a 429 cools it down, a refusal (see
        refusal_scope) takes it out; an upstream kind may say more (key_verdict). A rest
        is recorded in the shared store, for the other processes."""
        rest: Optional[Tuple[str, float]] = None
        with self._lock:
            state.failures += 1
            state.last_failure = time.monotonic()
            state.last_error = "%d: %s" % (error.status, clip(error.message, 200))
            scope = refusal_scope(error)
            if scope:
                state.refused["*" if scope == "*" else model] = (error.status,
                                                                 state.last_error)
                while len(state.refused) > MAX_REFUSED_MODELS:  # names clients chose
                    state.refused.pop(next(k for k in state.refused if k != "*"))
            elif error.key_verdict == "rest":
                rest = ("*", error.retry_after or self.spec["cooldown"])
            elif error.status == 429 and error.key_verdict != "keep":
                state.rate_limited += 1
                state.strikes += 1
                floor = self.spec["cooldown_floor"]
                if error.key_verdict == "rest_for_model" and error.retry_after is not None:
                    pause = error.retry_after       # the upstream's own time is exact
                elif DAILY_QUOTA.search(error.reason) or DAILY_QUOTA.search(error.message):
                    pause = self.spec["daily_quota_cooldown"]
                elif error.retry_after is not None:
                    pause = error.retry_after
                else:
                    pause = min(floor * 2 ** (state.strikes - 1), self.spec["cooldown"])
                pause = max(pause, floor)
                pause += min(pause * random.uniform(0, self.spec["cooldown_jitter"]),
                             MAX_COOLDOWN_JITTER)
                rest = (self._scope(model), pause)
            if rest is not None:
                state.cooling[rest[0]] = time.monotonic() + rest[1]
        if rest is not None and self.shared is not None:
            try:
                shared_rest(self.shared.store, self.name, state.name, rest[0],
                            time.time() + rest[1])
                self.shared.worked()
            except StateError as exc:
                self.shared.failed("recording a rest of upstream %r's key" % self.name, exc)

    def status(self) -> Dict[str, Any]:
        """The pool's health for /status; a key appears only as its fingerprint."""
        now, wall = time.monotonic(), time.time()

        def moment(until: float) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall + until - now))
        def key_status(s: KeyState) -> Dict[str, Any]:
            refused = {scope: why for scope, (_, why) in s.refused.items()}
            if s.account is not None and s.account.out:
                refused["*"] = s.account.out
            today = int(wall // 86400) == s.day
            cooling = {scope: until for scope, until in s.cooling.items() if until > now}
            page = {
                "key": s.name,
                "state": "refused" if "*" in refused else "cooling" if cooling else "ready",
                "health": "out" if "*" in refused else "resting" if cooling else "ok",
                "resting_until": wall + max(cooling.values()) - now if cooling else None,
                "resting_for": ", ".join(sorted(cooling)),
                "requests": s.requests, "failures": s.failures,
                "rate_limited": s.rate_limited, "in_flight": s.in_flight,
                "requests_today": s.requests_today if today else 0,
                "tokens_today": s.tokens_today if today else 0,
                "cooling_until": {scope: moment(until) for scope, until in s.cooling.items()
                                  if until > now},
                "refused": refused, "last_error": s.last_error}
            if s.account is not None:
                page.update(email=s.account.credential.email, project=s.account.project,
                            tier=s.account.tier)
            return page
        with self._lock:
            return {"in_flight": self.in_flight, "waiting": self.waiting,
                    "keys": [key_status(s) for s in self.states]}


# ---- 21. Worker threads and the pipe to the event loop ---------------------------------
#
# A request's blocking part (JSON, conversion, the upstream call) runs in a worker thread
# from an elastic pool; its answer goes back to the event loop through a bounded pipe
# (ChunkPipe), which the loop empties in one hop and whose end says whether the reply went
# out whole. While an upstream thinks (nothing back yet, or its head and no body yet)
# the loop waits for its socket and no thread does (ChunkPipe.await_bytes). Once a
# stream's first event is in, the loop reads and converts the rest itself
# (UpstreamRelay): the cost of an event is then one wake-up, not two, and the worker
# thread goes back to the pool until the stream is over and its request is to be ended.

# A worker thread with nothing to do for this long ends (a proxy that held thousands of
# streams at noon holds a few threads at night); its stack is this big. What a thread
# costs in memory is what it touches, about 16-20 KiB whatever the size; the size bounds
# address space (10,000 threads at the default 8 MiB would reserve 80 GB). JSON nested as
# deep as the json module reads (10,000 levels on 3.13) needs more than 1 MiB of C stack
# (and 512 KiB on 3.8 is not enough either); 4 MiB leaves room.
WORKER_IDLE_EXIT = 30.0
WORKER_STACK_BYTES = 4 * MiB
# A pool that has shrunk by this many threads, to half its size or less, gives the C
# heap's free pages back to the system (return_free_memory). What a burst of thousands
# of streams left behind is mostly freed but scattered, and glibc keeps it: 1,000 streams
# begun at once and relayed on held 96 MB half a minute later, 70 MB with the trim, 61 MB
# being an idle proxy's (bench/bench.py's slow streams). A trim takes some 20 ms, in the
# thread that ends; glibc locks each arena while it trims it, so a malloc in another
# thread (the event loop's) may wait as long, once in a while.
WORKER_SHRINK_TRIM = 64
# Seconds after which a request whose upstream's bytes have come asks again for a worker
# thread, when the system started none (its thread limit, a container's pids limit).
GO_ON_RETRY = 1.0
# The stack size threads start with is one setting for the whole process: pools in one
# process (tests run several proxies) take turns setting it, or one would put back the
# other's value instead of the process's own.
THREAD_STACK_SIZE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        import ctypes   # here: only a running server needs it, never a library user
        return ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError, TypeError):   # not glibc
        return None


def return_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's malloc_trim); False
    where there is no such call (musl, macOS, Windows)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class WorkerPool:
    """Threads for the blocking part of requests: `limit` (server.workers) new requests
    are worked on at once, each in a thread found idle or started for it; past that new
    requests queue for the next thread to finish one. A request holds its thread until
    its answer is whole, or its stream's first event is in, but not while its upstream
    thinks (the loop waits for it); the event loop relays the rest of a stream, and a
    worker ends the request after it (a stream of an hour holds a thread for some
    milliseconds). So memory, not a thread count, is the bound on the requests held.
    The rest of a request already begun (resuming: its upstream's bytes in, or its relay
    ended) goes before new requests, in the order such rests came, and past the limit:
    it holds keys that queued requests may wait for. Threads may then outnumber the
    limit, by as many as the requests whose upstreams answer at one moment, until they
    have read their answers (or their streams' first events); the threads busy with such
    rests hold no new request back (a steady flow of them once starved every new one).

    One lock keeps the tasks, the idle threads and the thread counts consistent: a task
    finds an idle thread (woken), or a new one (counted in `threads` at once, started by
    the pool's starter thread, which is not counted), or waits in the queue for a thread
    that finishes; a thread ends for idleness only when, under the lock, no task waits.
    The starter starts a thread counted for a task only while tasks wait when it comes
    to it, not one for each task counted: a burst of short tasks (requests that let go
    of their thread while their upstream thinks) is taken by the threads there are as
    they finish. The thread idle the shortest time is woken first, so that under a
    steady load the others stay idle long enough to end (woken in turn, none ever
    would)."""

    def __init__(self, limit: int, name: str = "upstream"):
        self.limit = limit
        self.threads = 0
        self._name = name
        self._lock = threading.Lock()
        # Tasks waiting for a thread, (function, args): new requests, and the rests of
        # requests already begun, which go first, in the order they came (a request
        # resumed long ago is not left behind by the many that wake after it).
        self._new: "collections.deque[Tuple[Callable[..., None], tuple]]" = \
            collections.deque()
        self._resumed: "collections.deque[Tuple[Callable[..., None], tuple]]" = \
            collections.deque()
        # Threads working on a new request (what `limit` bounds; threads busy with the
        # rests of requests do not count: they must not hold new requests back).
        self._running_new = 0
        # Idle threads' wake-ups, latest last: each a lock its thread holds and waits to
        # acquire again; released to wake it (cheaper than an Event, which is a Condition).
        self._idle: List[threading.Lock] = []
        self._peak = 0                  # the most threads since memory was last given back
        self._serial = itertools.count(1)
        self._start_failed_at = 0.0
        self._closed = False
        # Threads counted in `threads` that the starter has yet to start; the starter's
        # wake-up while it waits for more (as an idle thread's).
        self._to_start = 0
        self._starter_running = False
        self._starter_wake: Optional[threading.Lock] = None

    def submit(self, function: Callable[..., None], *args: Any,
               resuming: bool = False) -> None:
        """Run function(*args) in a worker; it must not raise (what it does is its
        own to report). resuming: the rest of a request already begun, taken before new
        ones (and in the order they came), past the limit, and after close(). A new
        thread is started by the pool's starter thread, not here: see _start_threads."""
        with self._lock:
            if self._closed and not resuming:
                raise RuntimeError("the worker pool is closed")
            task = (function, args)
            queue = self._resumed if resuming else self._new
            queue.append(task)
            if not resuming and self._running_new + len(self._new) > self.limit:
                return   # queued: a thread that finishes a new request takes it
            if self._idle:
                self._idle.pop().release()
                return
            self.threads += 1
            self._to_start += 1
            if self._starter_running:
                if self._starter_wake is not None:
                    self._starter_wake.release()
                    self._starter_wake = None
                return
            # No starter: this starts one, under the lock, so that no other submit
            # counts on it meanwhile (once in a while: a starter lives until it has been
            # idle for WORKER_IDLE_EXIT).
            self._starter_running = True
            try:
                self._start_thread(self._start_threads, "%s-starter" % self._name)
                return
            except RuntimeError as exc:   # the system's thread limit
                # (Its words kept, not the error: its traceback holds this frame, which
                # holds the task, a request perhaps, in a cycle the collector alone frees.)
                refused = str(exc)
                self._starter_running = False
                self._to_start -= 1
                self.threads -= 1
                started = self.threads
                if not started:       # nobody would ever take it
                    queue.remove(task)
        self._could_not_start(refused, started)
        if not started:
            raise RuntimeError(refused)

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        with THREAD_STACK_SIZE_LOCK:
            previous = threading.stack_size(WORKER_STACK_BYTES)
            try:
                threading.Thread(target=target, daemon=True, name=name).start()
            finally:
                threading.stack_size(previous)

    def _could_not_start(self, why: str, running: int) -> None:
        now = time.monotonic()
        if now - self._start_failed_at > 60:
            log.error("cannot start another worker thread (%s) with %d running; "
                      "requests wait for one to free (raise the system's thread "
                      "limit, or lower server.workers)", why, running)
        self._start_failed_at = now

    def _start_threads(self) -> None:
        """The starter: starts the threads submit() counted. Thread.start() waits until
        the new thread runs, which takes a turn of the GIL: with the loop and a burst
        of requests busy, some milliseconds each. Done by submit(), on the event loop,
        that stopped every stream for as long (a second in all, 500 streams begun at
        once); here it stops nobody but the starter. Where the system starts no worker
        at all, the starter runs a waiting task itself (late rather than never), and is
        the starter again after it only if no other has started meanwhile."""
        wake = threading.Lock()
        wake.acquire()
        while True:
            task = None
            with self._lock:
                if self._to_start:
                    self._to_start -= 1
                    if not self._waiting():   # the threads running took them meanwhile
                        self.threads -= 1
                        continue
                    self._peak = max(self._peak, self.threads - self._to_start)
                elif self._waiting() and not self.threads:   # no thread would ever take it
                    new = not self._resumed
                    task = (self._resumed or self._new).popleft()
                    self._running_new += new
                    # Meanwhile a submit starts another starter: threads may start again
                    # (a request's end, say, must not wait for this task).
                    self._starter_running = False
                elif self._closed:
                    self._starter_running = False
                    return
                else:
                    self._starter_wake = wake
                    self._lock.release()
                    try:
                        woken = wake.acquire(timeout=WORKER_IDLE_EXIT)
                    finally:
                        self._lock.acquire()
                    if not (woken or wake.acquire(blocking=False)):   # idle this long
                        self._starter_wake = None
                        self._starter_running = False
                        return
                    continue
            if task is not None:
                function, args = task
                try:
                    function(*args)
                except Exception:   # pragma: no cover - the functions submitted never raise
                    log.exception("worker task failed")
                del task, function, args
                with self._lock:
                    self._running_new -= new
                    if self._starter_running:   # another took over
                        return
                    self._starter_running = True
                continue
            try:
                self._start_thread(self._work, "%s-%d" % (self._name, next(self._serial)))
            except RuntimeError as exc:
                with self._lock:
                    self.threads -= 1
                    running = self.threads
                self._could_not_start(str(exc), running)

    def _work(self) -> None:
        wake = threading.Lock()
        wake.acquire()
        new = False
        while True:
            task = self._next_task(wake, new)
            if task is None:
                return
            function, args, new = task
            try:
                function(*args)
            except Exception:   # pragma: no cover - the functions submitted never raise
                log.exception("worker task failed")
            del task, function, args    # hold nothing of a finished request while idle

    def _next_task(self, wake: threading.Lock, finished_new: bool
                   ) -> Optional[Tuple[Callable[..., None], tuple, bool]]:
        """The next task and whether it is a new request's, once there is one (this
        thread's last was a new request's: `finished_new`); None when this thread is to
        end: the pool closed, idle for WORKER_IDLE_EXIT (memory given back first if the
        pool has shrunk enough: WORKER_SHRINK_TRIM), or started past the limit for a
        request's end and that done (new requests wait for a thread within it)."""
        shrunk = False
        with self._lock:
            self._running_new -= finished_new
            while True:
                if self._resumed:
                    return self._resumed.popleft() + (False,)
                if self._new and self._running_new < self.limit:
                    self._running_new += 1
                    return self._new.popleft() + (True,)
                if self._closed or self.threads > self.limit:
                    self.threads -= 1
                    if self._new and self._idle:   # woken for a task: pass it on
                        self._idle.pop().release()
                    return None
                self._idle.append(wake)
                self._lock.release()
                try:
                    woken = wake.acquire(timeout=WORKER_IDLE_EXIT)
                finally:
                    self._lock.acquire()
                # Woken (taken off _idle under the lock) just as the wait ran out: the
                # release is there to take.
                if woken or wake.acquire(blocking=False):
                    continue
                self._idle.remove(wake)
                if not self._waiting():   # idle for WORKER_IDLE_EXIT
                    self.threads -= 1
                    shrunk = self._peak - self.threads >= WORKER_SHRINK_TRIM and \
                        self.threads <= self._peak // 2
                    if shrunk:
                        self._peak = self.threads
                    break
        if shrunk:   # out of the lock: a trim takes a while
            try:
                return_free_memory()
            except Exception:   # pragma: no cover - ctypes calling a C function
                log.exception("could not give free memory back")
        return None

    def _waiting(self) -> bool:
        """Whether a task waits for a thread (under the lock)."""
        return bool(self._resumed or self._new)

    @property
    def closed(self) -> bool:
        """close() was called: new tasks are refused."""
        return self._closed

    @property
    def starved(self) -> bool:
        """Requests wait for a thread the system would not start (its thread limit, a
        container's pids limit) in the last minute."""
        return bool(self._start_failed_at) and self._waiting() and \
            time.monotonic() - self._start_failed_at < 60

    def close(self) -> None:
        """Idle threads end; busy ones when their request does."""
        with self._lock:
            self._closed = True
            for wake in self._idle:
                wake.release()
            self._idle.clear()
            if self._starter_wake is not None:
                self._starter_wake.release()
                self._starter_wake = None


@dataclasses.dataclass
class ResponseHead:
    status: int
    headers: List[Tuple[str, str]]
    body: Optional[bytes] = None    # None: a chunked stream follows


class LoopWaker:
    """Runs functions on the event loop for worker threads, many in one hop: one asked
    for while earlier ones still wait for the loop joins them, so a loop that is busy
    (thousands of streams) is woken once a batch, not once an event."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: List[Tuple[Callable[..., None], Tuple[Any, ...]]] = []

    def wake(self, waiter: asyncio.Future) -> None:
        self.call(_wake, waiter)

    def call(self, function: Callable[..., None], *args: Any) -> bool:
        """function(*args) on the loop; False when the loop has closed (a forced exit:
        nothing is waiting for it; calls asked for just before it closed may never
        run)."""
        with self._lock:
            if self._loop.is_closed():
                return False
            self._pending.append((function, args))
            if len(self._pending) > 1:
                return True         # a hop is on its way already
        try:
            self._loop.call_soon_threadsafe(self._call_all)
        except RuntimeError:
            with self._lock:
                self._pending.clear()
            return False
        return True

    def _call_all(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for function, args in pending:
            try:
                function(*args)
            except Exception:   # a bug: the others still run, as the loop's own would
                log.exception("a call on the event loop failed")


class UpstreamRelay:
    """The rest of a streamed reply, handed by its worker to the event loop: `output`
    gives the client's bytes, and IDLE where it would wait for the upstream `response`,
    which the loop then waits for. No thread waits meanwhile: an event costs one wake-up
    of the loop, and a stream of an hour holds no thread (nor its memory) for the hour.
    Once the loop is done, settle() calls `resume` (set by whoever hands the relay over)
    with what ended it, and that runs the request's rest, `after`, and its end.
    `past_final_event` says whether the client has had the stream's final event (see
    UpstreamKind.stream_last)."""

    def __init__(self, response: "UpstreamResponse", output: Iterator[Any],
                 after: Optional[Callable[[], None]] = None,
                 past_final_event: Callable[[], bool] = lambda: False):
        self.response, self.output, self.after = response, output, after
        self.past_final_event = past_final_event
        self.resume: Callable[[Optional[BaseException]], None] = _never_resumed
        self._lock = threading.Lock()
        self._settled = False

    def after_silence(self, rid: str) -> None:
        """The upstream has been silent too long: raises its time-out, for the client to
        hear of; or, when the reply is whole, only says so in the log (an error event
        after the final one would make a whole answer a failed one)."""
        error = self.response.silence_error()
        if not self.past_final_event():
            raise error
        log.warning("%s: %s, after the stream's final event", rid, error)

    def settle(self, error: Optional[BaseException] = None) -> None:
        """The reply has been relayed to its end (error None) or not (an UpstreamError
        for the client to hear of, ClientGone); the first word counts. Called by the
        loop, or by the request's abort when the loop never began it."""
        with self._lock:
            if self._settled:
                return
            self._settled = True
            # Let go of it: resume holds the request, which holds this relay (a cycle
            # only the collector's oldest generation would free).
            resume, self.resume = self.resume, _never_resumed
        try:
            resume(error)
        except Exception:   # a bug: the request is lost, the loop or the abort goes on
            log.exception("could not resume a request after its relay")


def _never_resumed(error: Optional[BaseException]) -> None:
    pass


def _nothing() -> None:
    pass


class ChunkPipe:
    """Worker thread -> event loop: a ResponseHead, then body chunks, then None. Bounded,
    so a slow client slows the upstream read instead of filling memory; the loop takes
    everything waiting in one hop. A stream's rest may come as an UpstreamRelay instead
    of chunks, when the loop can read sockets itself (`loop_reads`): the loop then pulls
    it, and the worker thread is free for other requests.

    While the request's upstream thinks, the loop waits for its socket for the worker
    (await_bytes), which lets go of its thread meanwhile.

    A streamed reply may have its head sent before the worker has one (commit_early:
    Gemini CLI gives up on a server that sends no headers for 60 s); the worker's own
    head is then dropped and its errors go in-stream. abort() (the client left, or the
    proxy is stopping) makes put() raise ClientGone, runs the hooks that stop a blocked
    upstream call, and settles a relay the loop has not begun.

    Puts from the event loop's own thread (`loop_thread`: a request the loop runs,
    Proxy.handle on_loop) never wait for room: nothing would take the items meanwhile.
    What such a request puts is bounded: a small reply, or a stream's head, first event
    and relay."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int,
                 waker: Optional[LoopWaker] = None, loop_reads: bool = False,
                 loop_thread: Optional[int] = None):
        self._loop = loop
        self._loop_thread = loop_thread
        self.loop_reads = loop_reads
        self._waker = waker or LoopWaker(loop)
        self._items: List[Any] = []   # a list: the loop takes them all (a deque is 1 KB)
        self._lock = threading.Lock()
        # Room for items, under the lock. The Event a worker waits on is made only when
        # it has to wait (a full pipe): most requests never do, and each costs a
        # Condition and a lock to make.
        self._room = capacity
        self._room_freed: Optional[threading.Event] = None
        self._waiter: Optional[asyncio.Future] = None
        self._abort_hooks: List[Callable[[], None]] = []
        # A relay put in the pipe that the loop has not begun (begin_relay): an abort
        # settles it. Once begun, the loop settles it, after it has let go of the socket.
        self._relay: Optional[UpstreamRelay] = None
        self.gone = False
        self.why_gone = ""              # "client" | "send_timeout" | "shutdown"
        self.early_head: Optional[ResponseHead] = None   # what commit_early may send
        self.head_sent = False          # by the worker, or early by the loop
        self.committed_early = False
        self.finished = False           # the worker is done with the request
        # The reply is all in the pipe or written, only its end to come (the worker's
        # end, or a relay's final event: mark_whole). Abandoned before that, it is cut:
        # what the pipe holds must not be ended as if it were whole.
        self.whole = False
        self.whole_taken = False        # the loop has taken all of the reply
        self.cut = False

    def put(self, item: Any, quietly: bool = False, whole: bool = False) -> None:
        """Queue an item for the loop, waiting for room. `quietly`: without waking the
        loop, if there is room for the next item, whose put wakes it (see put_head).
        `whole`: the item holds the stream's final event (see mark_whole)."""
        while True:
            with self._lock:
                if self.gone:
                    if isinstance(item, UpstreamRelay):
                        break   # settled at once by _append, as one withdrawn
                    raise ClientGone()
                if self._room > 0 or threading.get_ident() == self._loop_thread:
                    self._room -= 1
                    quietly = quietly and self._room > 0
                    break
                if self._room_freed is None:
                    self._room_freed = threading.Event()
                freed = self._room_freed
                freed.clear()
            freed.wait(0.5)
        self._append(item, wake=not quietly, whole=whole)

    def put_head(self, head: ResponseHead, more_at_once: bool = False) -> bool:
        """Send the worker's response head; False when one went out early instead.
        `more_at_once`: the worker puts more at once (a stream's first event, or its
        relay), and that wakes the loop, which takes both in one hop and writes them in
        one send. Only when the loop reads the upstream: a worker that reads it itself
        may find nothing to put for a while (an event that makes no bytes). Every way
        a worker goes on ends in a put or in finish(), which wake the loop."""
        with self._lock:
            if self.committed_early:
                return False
            self.head_sent = True
        self.put(head, quietly=more_at_once and self.loop_reads)
        return True

    def commit_early(self) -> Optional[ResponseHead]:
        """For the loop: the head of a streamed reply whose worker has sent none yet
        (from then on the worker's own head is dropped); None if there is none to send."""
        with self._lock:
            if self.head_sent or self.early_head is None or self._items:
                return None
            self.head_sent = self.committed_early = True
            return self.early_head

    def finish(self) -> None:
        """The end marker; never blocks (the loop may have stopped reading)."""
        self._append(None)

    def _abandoned_relay_outcome(self) -> Optional[BaseException]:
        """How a relay never begun ends when its request is abandoned: ClientGone, or
        nothing lost when the client left after the whole reply (the loop may take the
        final event before the worker hands it the rest, and the client read it and left)."""
        return ClientGone() if self.cut else None

    def mark_whole(self) -> None:
        """For the loop: a relay has written its stream's final event, or all it will
        write; nothing but the end is to come. A client that leaves now loses nothing.
        (The worker says so with the item that holds it: put(whole=True).)"""
        with self._lock:
            self.whole = True

    def _append(self, item: Any, wake: bool = True, whole: bool = False) -> None:
        with self._lock:
            # With the item, under the lock: abort() sees both or neither.
            if item is None:
                self.finished = self.whole = True
            elif whole:
                self.whole = True
            withdrawn = isinstance(item, UpstreamRelay) and self.gone
            if not withdrawn:
                if isinstance(item, UpstreamRelay):
                    self._relay = item
                self._items.append(item)
            waiter = None
            if wake:
                waiter, self._waiter = self._waiter, None
        if withdrawn:   # abandoned since put() looked: no loop will take it
            item.settle(self._abandoned_relay_outcome())
        elif waiter is not None:
            self._waker.wake(waiter)

    def on_abort(self, hook: Callable[[], None]) -> None:
        """Run `hook` when the request is abandoned (at once if it already is)."""
        with self._lock:
            if not self.gone:
                self._abort_hooks.append(hook)
                return
        hook()

    def forget_hooks(self) -> None:
        """The worker is letting go of its upstream connections: an abort after this
        must not touch them (they may already serve another request)."""
        with self._lock:
            self._abort_hooks.clear()

    def await_bytes(self, fd: int, due: float, go_on: Callable[[], None],
                    on_loop: bool = False) -> None:
        """From a worker (or `on_loop`, from the loop): go_on() is called, on the loop,
        once the upstream's socket `fd` has bytes to read, `due` (time.monotonic()) has
        come, or the request was abandoned (the abort shuts the socket, which the loop
        sees as readable; with NO_SOCKET, a pause, an abort hook ends the wait). No
        thread waits meanwhile. go_on hands the request to a worker (or goes on with the
        loop's own steps); where the system starts no thread at all (RuntimeError), it is
        called again GO_ON_RETRY later: a worker's steps may block, and must never run
        on the loop."""
        if on_loop:
            self._await_bytes(fd, due, go_on)
        elif not self._waker.call(self._await_bytes, fd, due, go_on):
            go_on()     # the loop has closed (a forced exit): no waiting, then

    def _await_bytes(self, fd: int, due: float, go_on: Callable[[], None]) -> None:
        loop = self._loop
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                if fd != NO_SOCKET:
                    loop.remove_reader(fd)
                timer.cancel()   # the handle holds end, and end the timer: no longer
                _hand_over(loop, go_on)
        timer = loop.call_at(due, end)   # (the loop's clock is time.monotonic())
        if fd == NO_SOCKET:
            self.on_abort(functools.partial(self._waker.call, end))   # (in any thread)
            return
        try:
            loop.add_reader(fd, end)
        except (OSError, ValueError):    # not a socket to watch (any more): read it now
            end()

    def begin_relay(self, relay: UpstreamRelay) -> bool:
        """For the loop: from now on it settles `relay` itself; False when the request
        was abandoned first (the abort settled it)."""
        with self._lock:
            if self.gone:
                return False
            self._relay = None
            return True

    def watch(self, waiter: asyncio.Future) -> bool:
        """For the loop, while it relays: `waiter` is woken when the request is
        abandoned; False when it already is."""
        with self._lock:
            if self.gone:
                return False
            self._waiter = waiter
            return True

    async def finished_within(self, seconds: float) -> None:
        """For the loop: until the worker has finished, or `seconds` have passed."""
        deadline = self._loop.time() + seconds
        while True:
            with self._lock:
                if self.finished:
                    return
                waiter = self._waiter = self._loop.create_future()
            left = deadline - self._loop.time()
            if left <= 0:
                return
            timer = self._loop.call_later(left, _wake, waiter)
            await waiter
            timer.cancel()

    async def take(self, timeout: Optional[float] = None) -> List[Any]:
        """Everything waiting, once something is; [] when `timeout` passes first or the
        request is abandoned."""
        while True:
            with self._lock:
                if self._items:
                    items, self._items = self._items, []
                    self._room += len(items)
                    self.whole_taken = self.whole
                    freed = self._room_freed
                    break
                if self.gone:
                    return []
                waiter = self._waiter = self._loop.create_future()
            if timeout is None:
                await waiter
                continue
            timer = self._loop.call_later(timeout, _wake, waiter)
            await waiter
            timer.cancel()
            with self._lock:
                if not self._items:
                    return []
        if freed is not None:    # a worker may wait for room
            freed.set()
        return items

    def abort(self, why: str = "client") -> None:
        """Abandon the request: stop its upstream call, wake whoever waits on the pipe. A
        request whose worker has finished has nothing left to stop."""
        with self._lock:
            if self.gone or (self.finished and why == "shutdown"):
                return
            self.gone, self.why_gone = True, why
            self.cut = not self.whole
            for hook in self._abort_hooks:   # under the lock: see forget_hooks
                hook()
            self._abort_hooks.clear()
            relay, self._relay = self._relay, None
            if relay is not None and relay in self._items:   # withdrawn (its space in
                self._items.remove(relay)   # the pipe is not given back: nothing else comes)
            waiter, self._waiter = self._waiter, None
            freed = self._room_freed
        if freed is not None:   # a worker waiting for room
            freed.set()
        if relay is not None:   # out of the lock: it resumes the request in a worker
            relay.settle(self._abandoned_relay_outcome())
        if waiter is not None:
            self._waker.wake(waiter)


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _hand_over(loop: asyncio.AbstractEventLoop, go_on: Callable[[], None]) -> None:
    """go_on(), from the loop (ChunkPipe.await_bytes); again GO_ON_RETRY later where no
    thread could start. A function of its own, not a closure calling itself: that would
    be a cycle holding go_on, and with it the request and its body, until the collector
    came by."""
    try:
        go_on()
    except RuntimeError:
        loop.call_later(GO_ON_RETRY, _hand_over, loop, go_on)


# ---- 22. Requests in flight ------------------------------------------------------------------
#
# What one request holds while a worker thread answers it: the pipe its answer goes back
# to the event loop through (section 21), its detailed log, the upstream replies and keys
# it must let go of, and the one place its errors are rendered (Request.fail). Everything
# that blocks runs in the worker (a small request blocks on nothing, and the event loop
# answers it itself: Proxy.handle); the event loop moves finished bytes.

def prune_detailed_logs(directory: str, keep_days: int, now: float) -> int:
    """Delete the detailed logs' day folders (<log_dir>/YYYY-MM-DD) older than keep_days;
    nothing else in the directory is touched. The number deleted."""
    oldest = time.strftime("%Y-%m-%d", time.localtime(now - keep_days * 86400))
    deleted = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        folder = os.path.join(directory, name)
        if re.match(r"\d{4}-\d{2}-\d{2}\Z", name) and name < oldest and \
                os.path.isdir(folder) and not os.path.islink(folder):
            try:
                shutil.rmtree(folder)
                deleted += 1
            except OSError as exc:
                log.warning("cannot delete old detailed logs %s: %s", folder, exc)
    return deleted


class DetailLog:
    """The four stages of one request (client request, upstream request, upstream
    response, client response) in one file under logging.log_dir, secrets redacted. A
    file that cannot be written (a full disk, a folder removed) is given up with a
    warning: the request goes on without it."""

    def __init__(self, directory: str, rid: str, redactor: Redactor, limit: int):
        folder = os.path.join(directory, time.strftime("%Y-%m-%d"))
        self.path = os.path.join(folder, "%s-%s.log" % (time.strftime("%H%M%S"), rid))
        self._redact = redactor
        self._limit = limit
        self._streams: Dict[str, bytearray] = {}
        self._broken = False
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        if not self._broken:
            self._broken = True
            log.warning("cannot write the detailed log %s: %s", self.path,
                        exc.strerror or exc)

    def stage(self, title: str, headers: Iterable[Tuple[str, str]] = (),
              body: bytes = b"") -> None:
        if self._broken:
            return
        text = body[:self._limit].decode("utf-8", "replace")
        if len(body) > self._limit:
            text += "\n... (%d more bytes)" % (len(body) - self._limit)
        lines = ["=== %s" % self._redact.text(title)]
        lines += ["%s: %s" % pair for pair in self._redact.headers(headers)]
        try:
            with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write("\n".join(lines) + "\n\n" + self._redact.text(text) + "\n\n")
        except OSError as exc:
            self._give_up(exc)

    def stream(self, title: str) -> Callable[[bytes], None]:
        """A sink for a streamed body, written out by close()."""
        buffer = self._streams.setdefault(title, bytearray())

        def sink(data: bytes) -> None:
            if len(buffer) <= self._limit:
                buffer.extend(data)
        return sink

    def close(self) -> None:
        for title, buffer in self._streams.items():
            self.stage(title, body=bytes(buffer))
        self._streams.clear()


@dataclasses.dataclass
class UpstreamRuntime:
    name: str
    spec: Dict[str, Any]
    kind: UpstreamKind
    target: Optional[UpstreamTarget]
    keys: KeyPool


@dataclasses.dataclass
class Live:
    """What a configuration reload replaces, as one object: a request takes it once when
    it starts and keeps it to its end, so it never sees half of an old and half of a new
    configuration."""

    config: Config
    upstreams: Dict[str, UpstreamRuntime]
    redactor: Redactor
    # For what the proxy makes of an upstream's reply (Config.sent_upstream): see generate.
    made_redactor: Redactor
    # Upstreams that cannot be called: (the status a client gets, why). A key variable
    # that is not set (503), or a base_url that leads back to this proxy (508).
    unusable: Dict[str, Tuple[int, str]] = dataclasses.field(default_factory=dict)


class Responder:
    """Writes one response into the pipe, and knows whether its head has gone out: after
    that, a failure can only end the stream in the dialect's own way."""

    def __init__(self, ex: Exchange, pipe: ChunkPipe, detail: Optional[DetailLog],
                 before_whole: Callable[[], None] = _nothing):
        self.ex, self.pipe, self.detail = ex, pipe, detail
        # Let go of upstream connections and keys before the client has its answer: a
        # client that asks again at once then finds the connection pooled, the key free.
        self.before_whole = before_whole
        self._sink: Optional[Callable[[bytes], None]] = None
        self.handed_over: Optional[UpstreamRelay] = None

    @property
    def committed(self) -> bool:
        return self.pipe.head_sent

    def whole(self, status: int, headers: List[Tuple[str, str]], body: bytes) -> bool:
        """A whole response; False when a stream's head went out early instead."""
        if self.pipe.committed_early:
            return False
        self.ex.status = status   # before the put: the loop logs as soon as it has the reply
        if self.detail:
            self.detail.stage("4. client response: %d" % status, headers, body)
        self.before_whole()
        return self.pipe.put_head(ResponseHead(status, headers, body))

    def json(self, payload: Any, redact: Callable[[bytes], bytes] = lambda data: data) -> None:
        self.whole(200, [("content-type", "application/json")], redact(json_bytes(payload)))

    def expect_stream(self, content_type: str) -> None:
        """The reply will be a stream of this type: its head may go out early."""
        self.pipe.early_head = ResponseHead(200, stream_headers(content_type))

    def start(self, content_type: str) -> None:
        """A stream's head: its caller puts its first event or relays the rest at once."""
        self.ex.status = 200
        self.pipe.put_head(ResponseHead(200, stream_headers(content_type)), more_at_once=True)
        self._sink = self.detail.stream("4. client response: 200") if self.detail else None

    def chunk(self, data: bytes, final: bool = False) -> None:
        """Part of a stream; `final`: it holds the stream's final event."""
        if not data:
            return
        if self._sink:
            self._sink(data)
        self.pipe.put(data, whole=final)

    def relay(self, response: "UpstreamResponse", output: Iterator[Any],
              after: Optional[Callable[[], None]] = None,
              past_final_event: Callable[[], bool] = lambda: False) -> None:
        """The rest of a streamed reply, pulled and written by the event loop (see
        UpstreamRelay): `output`, the client's bytes, made from what `response` brings;
        `after`, what the request does once they are all out; `past_final_event`, whether
        the stream's final event is out. The last thing an answer does: the relay is left in
        `handed_over` for the request's worker to hand over as it lets go
        (Proxy._conclude)."""
        if not self.pipe.loop_reads:   # an event loop that cannot watch sockets
            for piece in output:
                self.chunk(piece, final=not self.pipe.whole and past_final_event())
            if after is not None:
                after()
            return
        response.read_on_loop()
        sink = self._sink
        if sink is not None:
            output = _sunk(output, sink)
        self.handed_over = UpstreamRelay(response, output, after, past_final_event)


def _sunk(output: Iterator[Any], sink: Callable[[bytes], None]) -> Iterator[Any]:
    for piece in output:
        if piece is not IDLE:
            sink(piece)
        yield piece


def abandoned(pipe: ChunkPipe) -> Tuple[int, str]:
    """(status, reason) for the access log of a request given up before its end."""
    return {"shutdown": (503, "the proxy is shutting down"),
            "send_timeout": (499, "the client stopped reading (send_timeout)")}.get(
        pipe.why_gone, (499, "the client closed the connection"))


def stream_headers(content_type: str) -> List[Tuple[str, str]]:
    return [("content-type", content_type), ("cache-control", "no-cache")]


class Request:
    """One client request inside its worker thread (or on the event loop, as long as
    nothing it does may block: on_loop): what every attempt on an upstream needs, what
    must be let go when the request ends (upstream replies, keys), and fail(), the one
    place an error becomes what the client sees."""

    def __init__(self, live: Live, ex: Exchange, head: RequestHead, body: bytes,
                 dialect: ClientDialect, pipe: ChunkPipe, detail: Optional[DetailLog],
                 pool: ConnectionPool, hops: str):
        self.live, self.ex, self.head, self.body = live, ex, head, body
        self.dialect, self.pipe, self.detail = dialect, pipe, detail
        self.pool = pool        # upstream connections, the process's
        self.hops = hops        # for HOP_HEADER: the proxies this request has been through
        self.out = Responder(ex, pipe, detail, before_whole=self.end)
        self.strict = live.config.server["reject_unknown_fields"]
        self.payload: Any = None   # the body's JSON, once read (see parsed())
        self.opened: List[UpstreamResponse] = []
        self.held: List[Tuple[KeyPool, KeyState]] = []
        self.admitted = False   # by its client's limits: what it spent is counted at its end
        self.on_loop = False    # its steps run on the event loop (Proxy.handle)
        self.carrier_budget = [MAX_CARRIER_BYTES_PER_REQUEST]   # see CARRIER_BUDGET
        self._chat: Optional[Chat] = None
        self._prompt_tokens: Optional[int] = None   # see prompt_estimate()
        self._payload_let_go = False
        self._packed_thinking: Optional[bool] = None   # see holds_packed_thinking()

    def leave_the_loop(self) -> None:
        """Its steps go on in a worker from now on, and so do the reads of its replies,
        which may wait there (UpstreamResponse.on_loop)."""
        self.on_loop = False
        for response in self.opened:
            response.on_loop = False

    def let_go_of_request(self) -> None:
        """A stream the loop relays, for minutes perhaps, needs nothing of its request
        but, at its end, the estimate of its prompt's tokens should the upstream report
        none. An agent's request of 50 KB is about 100 KB more once read as JSON, and as
        much again in the neutral model (which holds its strings). A converted stream
        counts that estimate now, from its neutral model (some 0.15 ms for such a
        request), and lets go of all three: on the loop at its end, reading the body
        again would hold up every other stream. A passed-through one has no neutral
        model to count from (decoding one for every stream would cost more than the rare
        upstream without usage): it keeps its body, which a worker reads again then."""
        if self._chat is not None:
            self.prompt_estimate()
            self._chat, self.body = None, b""
        else:
            self._payload_let_go = True
        self.payload = None

    def holds_packed_thinking(self) -> bool:
        """Whether its history carries reasoning this proxy packed for its client when
        another kind of upstream answered (pack_thinking: a Gemini client's
        thoughtSignature, an Anthropic client's thinking signature, a Responses client's
        encrypted_content). Passed through to an upstream of the client's own dialect
        (a model switched, a fallback), the packed signatures would be refused, and
        every later turn of the session with them. Converted, they are unpacked and
        what the upstream cannot take is left out; so is what any converted request
        leaves out (fields the proxy does not know, an Anthropic client's server
        tools), which is why a body that only mentions the prefix elsewhere (in a
        message's text) is not taken for one."""
        if self._packed_thinking is None:
            body = self.body
            self._packed_thinking = b'"' + CARRIER_START.encode("ascii") in body and \
                PACKED_SIGNATURE_FIELD.search(body) is not None
        return self._packed_thinking

    def prompt_estimate(self) -> int:
        """The prompt's tokens as estimate_prompt_tokens counts them, counted once: from
        the neutral model, or for a request passed through (never decoded), from its
        body read again and decoded leniently (0 when it cannot be)."""
        if self._prompt_tokens is None:
            chat = self._chat
            try:
                if chat is None:
                    chat = self.dialect.decode_request(self.ex, self.head, self.parsed(),
                                                       False)
                self._prompt_tokens = estimate_prompt_tokens(chat)
            except (ProxyError, RecursionError):
                self._prompt_tokens = 0
        return self._prompt_tokens

    def parsed(self) -> Any:
        """The body's JSON (read again after let_go_of_request(); a converted stream's
        is gone for good then, its body with it: nothing reads either after its relay)."""
        if self._payload_let_go:
            self.payload, self._payload_let_go = parse_json_body(self.body), False
        return self.payload

    def chat(self) -> Chat:
        """The request in the neutral model, decoded once, when the first upstream that
        needs it is tried (a pass-through never does); for a token count, what the
        dialect counts."""
        if self._chat is None:
            dialect = self.dialect
            try:
                if self.ex.action == "count_tokens":
                    assert dialect.decode_count_request is not None
                    self._chat = dialect.decode_count_request(self.ex, self.parsed(),
                                                              self.strict)
                else:
                    self._chat = dialect.decode_request(self.ex, self.head, self.parsed(),
                                                        self.strict)
            except RecursionError:
                raise ClientError("the request is nested too deeply") from None
        return self._chat

    def close_replies(self, reuse: bool) -> None:
        """Let go of the upstream replies opened so far: a failed attempt's, or at the
        end all of them (a reply read to its end goes back to the connection pool)."""
        for response in self.opened:
            response.close(reuse=reuse)
        self.opened.clear()

    def release_key(self, pool: KeyPool, state: KeyState) -> None:
        self.held.remove((pool, state))
        pool.release(state)

    def fail(self, error: ProxyError) -> None:
        """What the client sees of a failure, secrets removed: an HTTP error in its
        dialect (a passed-through upstream's own reply, when there is one), or after the
        head went out, the dialect's in-stream error."""
        error.message = self.live.redactor.text(error.message)
        self.ex.error = error.message
        if not self.out.committed:
            raw = error.raw if isinstance(error, UpstreamError) else None
            if raw is not None and self.out.whole(error.status, raw[0],
                                                  self.live.redactor.bytes(raw[1])):
                return
            if raw is None and self.out.whole(*self.dialect.encode_error(error)):
                return
        log.warning("%s: stream to the client ended early: %s", self.ex.rid,
                    clip(error.message))
        self.out.chunk(self.dialect.stream_error(error, self.ex.options))

    def end(self) -> None:
        """Let go of everything the request holds (more than once does no harm)."""
        # Its Responder's hook is this method: a cycle (request, responder, request) that
        # kept the request, and its body, until the collector next went through the
        # generation it had reached (the oldest, for a stream). Once ended, a whole
        # answer's end() would find nothing left to do.
        self.out.before_whole = _nothing
        self.pipe.forget_hooks()
        self.close_replies(reuse=self.ex.status == 200 and not self.ex.error)
        self.ex.settle_usage()
        usage = self.ex.usage
        for pool, state in self.held:   # the one that answered: what it spent today
            pool.release(state, usage.input_tokens + usage.output_tokens if usage else 0)
        self.held.clear()


# ---- 23. Upstream calls and retries ------------------------------------------------------
#
# One attempt is an UpstreamCall: one upstream, one key, one HTTP exchange. failover()
# is the policy around attempts: the route's upstream, then its fallbacks; on each, more
# attempts on other keys after a rate limit or a refusal, and after a backoff when the
# upstream failed; waiting for a key or a slot where the upstream allows it. All of it
# happens before the client has received anything but (perhaps) a stream's head.

# Headers whose value is a list, the configuration's and a client's joined.
LIST_HEADERS = frozenset(("anthropic-beta",))


def joined_list(*values: str) -> str:
    """Comma-separated lists as one, each item once, none empty."""
    items = (item.strip() for value in values for item in value.split(","))
    return ",".join(dict.fromkeys(item for item in items if item))


class UpstreamCall:
    """One attempt of a request on one upstream with one key: sends, opens the reply
    (closed by the Request), writes detailed logs."""

    def __init__(self, rq: Request, runtime: UpstreamRuntime, model: str, key: KeyState):
        self.rq, self.runtime, self.model, self.key = rq, runtime, model, key
        kind, spec = runtime.kind, runtime.spec
        # Bytes go through untouched only when nothing asks the proxy to look inside.
        self.passthrough = kind.dialect == rq.ex.dialect and (
            rq.ex.action in ("count_tokens", "embed", "batch_embed") or (
                spec["upstream_streaming"] == "match" and not spec["stop_strings"])) and \
            not rq.holds_packed_thinking()
        rq.ex.upstream, rq.ex.upstream_model = runtime.name, model
        rq.ex.passthrough = self.passthrough
        # The streamed reply opening_stream read the first event of: the event loop may
        # read the rest (Responder.relay).
        self.stream_response: Optional[UpstreamResponse] = None

    def sink(self, title: str) -> Optional[Callable[[bytes], None]]:
        return self.rq.detail.stream(title) if self.rq.detail else None

    def client_headers(self) -> List[Tuple[str, str]]:
        """The client's headers its dialect passes on (anthropic-version, anthropic-beta),
        for an upstream of that dialect. Converted, the request keeps those the upstream
        kind does not set itself: its betas (a 1M-token context window is one; without
        it a long session converted after a fallback was refused as too long), not the
        version, which the converted body is written for."""
        kind, head = self.runtime.kind, self.rq.head
        if kind.dialect != self.rq.ex.dialect:
            return []
        names = self.rq.dialect.passthrough_headers
        if not self.passthrough:
            own = {name for name, _ in kind.auth_headers("", self.runtime.spec)}
            names = tuple(name for name in names if name not in own)
        # Betas the operator set in the upstream's headers go too, in one list: the
        # client's alone took their place.
        configured = {name.lower(): value for name, value in
                      self.runtime.spec["headers"].items()}
        return [(name, joined_list(configured[name], head.header(name))
                 if name in LIST_HEADERS and name in configured else head.header(name))
                for name in names if head.header(name)]

    def send_steps(self, path: str, build_body: Callable[[Dict[str, Any]], Any],
                   prepare: Callable[[UpstreamResponse], Any], stream: bool = False,
                   extra_headers: Iterable[Tuple[str, str]] = (), alternatives: bool = True
                   ) -> "Steps[Any]":
        """POST to the upstream and return prepare(2xx response), the steps of a
        `stream`'s prepare (it reads the first events, which may be a while coming); a
        non-2xx reply, or prepare raising, is an UpstreamError (retries are the
        caller's). An upstream kind may ask for a few more tries with different options
        (Gemini: schemas in its own subset; Responses: without a parameter the model
        refused). `build_body(options)` gives the body, a dict or bytes. Where nothing
        has come back yet, or a head without its body's first bytes, or a stream without
        its first events, the steps yield, for the worker to let go of its thread until
        they come (the wait of a model's thinking: see Proxy._conclude); where the event
        loop cannot watch a socket, the worker waits for them as for any other read. On
        the loop (rq.on_loop), a stream's reply is read as it comes up to its first events
        (UpstreamResponse.receiving_first_bytes), a whole one up to LOOP_REPLY_BYTES."""
        runtime, rq = self.runtime, self.rq
        spec = options = runtime.spec
        kind = runtime.kind
        assert runtime.target is not None
        full_path = upstream_path(runtime.target.base_path, path)
        if spec["query"]:
            full_path += ("&" if "?" in full_path else "?") + \
                urllib.parse.urlencode(spec["query"])
        headers = [("content-type", "application/json"),
                   ("accept", "text/event-stream" if stream else "application/json"),
                   ("user-agent", "gemini-proxy/" + __version__), (HOP_HEADER, rq.hops)]
        secret, account = self.key.key, self.key.account
        target = runtime.target
        if rq.on_loop and (account is not None or target.proxy):
            # A Google token, an HTTP proxy: the rest in a worker. (loop_may_call sent
            # such a request to one before its key was taken; this keeps the loop from
            # them should a kind or a setting ever get past it.)
            yield IN_A_THREAD, 0.0
        if account is not None:   # a Google login: its token now, its project in the body
            secret, options = self._with_account(account, options)
        extra_headers = list(extra_headers)
        named = {name.lower() for name, _ in extra_headers}   # (those take their place)
        extra = [(name, value) for name, value in spec["headers"].items()
                 if name.lower() not in named] + extra_headers
        alternatives_left = MAX_ALTERNATIVES if alternatives else 0
        renewed: Set[int] = set()      # the statuses a new token or project answered
        while True:
            headers_now = headers + kind.auth_headers(secret, spec) + extra
            body = request_bytes(build_body(options))
            if rq.detail:
                rq.detail.stage("2. upstream request: POST %s%s (attempt %d, %s)" % (
                    display_url(spec["base_url"]), full_path, rq.ex.attempts, self.key.name),
                    headers_now, body)
            timeouts = Timeouts(spec["connect_timeout"], spec["first_byte_timeout"],
                                spec["read_timeout"], time.monotonic() + spec["total_timeout"]
                                if spec["total_timeout"] else None)
            if rq.on_loop and len(body) > LOOP_BODY_BYTES:   # a send may wait for room
                yield IN_A_THREAD, 0.0
            try:
                response = yield from opening_upstream(
                    rq.pool, runtime.target, runtime.name, "POST", full_path, body,
                    headers_now, timeouts, spec["max_idle_connections"], rq.pipe.on_abort,
                    park=rq.pipe.loop_reads, on_loop=rq.on_loop)
                rq.opened.append(response)
                if account is not None and response.status in (401, 403) and \
                        response.status not in renewed:
                    again = self._renew(account, response.status, secret, options)
                    if again is not None:
                        renewed.add(response.status)
                        rq.close_replies(reuse=False)
                        secret, options = again
                        continue
                if response.status >= 300:
                    if rq.on_loop:   # its body, read for its message, in a worker
                        yield IN_A_THREAD, 0.0
                    raise self._failure(response)
                if rq.on_loop and stream:   # the loop reads on, up to the first events
                    yield from response.receiving_first_bytes()
                elif rq.on_loop:
                    whole = yield from response.receiving_body(LOOP_REPLY_BYTES)
                    if not whole:   # a large reply: the rest is read in a worker
                        yield IN_A_THREAD, 0.0
                elif rq.pipe.loop_reads:
                    yield from response.awaiting_body(first=stream)
                return (yield from prepare(response)) if stream else prepare(response)
            except UpstreamError as err:
                if rq.on_loop:   # closing its reply, another try: in a worker
                    yield IN_A_THREAD, 0.0
                alternative = kind.retry_with(err, options) if alternatives_left else None
                if alternative is None or rq.pipe.gone:
                    raise
                forget_traceback(err)   # dropped: see _attempts
                alternatives_left, options = alternatives_left - 1, alternative
                rq.close_replies(reuse=True)
                log.info("%s: upstream %s refused the request (%s); trying again with "
                         "other options", rq.ex.rid, runtime.name,
                         clip(rq.live.redactor.text(err.message), 200))

    def _with_account(self, account: GoogleAccount, options: Dict[str, Any]
                      ) -> Tuple[str, Dict[str, Any]]:
        """A Google account's token, and the options with its envelope: its project, and
        the conversation's session (hashed: Google needs no client's own id for it)."""
        session = self.rq.ex.session
        token, project = account.ready(time.monotonic() + self.runtime.spec[
            "first_byte_timeout"], lambda: self.rq.pipe.gone)
        return token, dict(options, envelope={
            "project": project, "user_prompt_id": self.rq.ex.rid,
            "session_id": hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()[:32]
            if session else ""})

    def _renew(self, account: GoogleAccount, status: int, token: str,
               options: Dict[str, Any]) -> Optional[Tuple[str, Dict[str, Any]]]:
        """(token, options) for one replay after Code Assist refused a request: a 401
        before the token's time (revoked, clocks apart) gets a new token; a 403 a project
        found again (it may have moved). None: the refusal stands."""
        if status == 401:
            return account.token(stale=token, deadline=time.monotonic() + self.runtime.spec[
                "first_byte_timeout"], cancelled=lambda: self.rq.pipe.gone), options
        return self._with_account(account, options) if account.forget_project() else None

    def opening_stream(self, response: UpstreamResponse) -> "Steps[Iterator[Any]]":
        """A streamed reply's events, once its first event has arrived and is not an
        error (an upstream may answer 200 and then put its error in the stream)."""
        kind, name = self.runtime.kind, self.runtime.name
        assert kind.decode_stream is not None
        if media_type(response.headers.get("content-type", "")) == "application/json" and \
                looks_like_json(response.peek()):   # (events labelled so are read as events)
            yield from response.leaving_the_loop()
            raise self.json_for_stream(self.read_body(response))
        raw = response.sse_events(self.runtime.spec["max_reply_bytes"],
                                  self.sink("3. upstream response: %d" % response.status))
        first = yield from response.next_event(raw)
        if first is None:
            raise UpstreamError("upstream %r ended its stream without sending anything"
                                % name, status=502)
        redact = self.rq.live.redactor.reply_text
        events = (event if event is IDLE else (event[0], redact(event[1]))
                  for event in itertools.chain([first], raw))
        first = next(events)
        error = kind.stream_event_error(first[1])
        if error is not None:
            raise error
        self.stream_response = response
        return kind.decode_stream(itertools.chain([first], events))

    def json_for_stream(self, data: bytes) -> UpstreamError:
        """A stream was asked for and a whole JSON reply came: the upstream's error in a
        200 (some answer a stream so), raised here with its own status, so that a 429
        rests its key; otherwise a 502, returned to raise."""
        self.reply_json(data)
        return UpstreamError("upstream %r answered a stream request with a whole JSON reply: "
                             "%s" % (self.runtime.name, clip(data.decode("utf-8", "replace"),
                                                             200)), status=502)

    def read_body(self, response: UpstreamResponse) -> bytes:
        """A whole reply, its credentials removed (whatever reads it next)."""
        data = self.rq.live.redactor.bytes(bytes(response.read_body(
            self.runtime.spec["max_reply_bytes"])))
        if self.rq.detail:
            self.rq.detail.stage("3. upstream response: %d" % response.status,
                                 response.headers.items(), data)
        return data

    def read_json(self, response: UpstreamResponse) -> Any:
        return self.reply_json(self.read_body(response))

    def reply_json(self, data: bytes) -> Any:
        """A whole 2xx reply's JSON. One that is the upstream's error (some answer 200
        with one) raises it with its own status, as the error in a stream would: a 429
        rests its key. Its form is the one its kind puts into a stream, read again only
        for a body that has the look of one (a response object's "error" is null)."""
        reply = self.json_of(data)
        top = reply[0] if isinstance(reply, list) and reply else reply
        if isinstance(top, dict) and (top.get("error") or top.get("type") == "error"):
            error = self.runtime.kind.stream_event_error(
                data.decode("utf-8", "replace").strip())
            if error is not None:
                raise error
        return reply

    def json_of(self, data: bytes) -> Any:
        try:
            return json.loads(data, parse_constant=_not_json_number)
        except ValueError:
            raise UpstreamError("upstream %r replied with invalid JSON: %r"
                                % (self.runtime.name, bytes(data[:200])), status=502) from None
        except RecursionError:
            raise UpstreamError("upstream %r replied with JSON nested too deeply"
                                % self.runtime.name, status=502) from None

    def _failure(self, response: UpstreamResponse) -> UpstreamError:
        """A non-2xx reply as an UpstreamError that keeps the status, the message and the
        retry time (Retry-After, the kind's own hint, or a rate-limit reset header), and
        for a pass-through the raw body and its headers."""
        # Every secret out before anything quotes or cuts the text (a cut secret would
        # leave its start behind).
        data = self.rq.live.redactor.text(bytes(response.read_body(MiB, cut=True)).decode(
            "utf-8", "replace")).encode("utf-8")
        if self.rq.detail:
            self.rq.detail.stage("3. upstream response: %d" % response.status,
                                 response.headers.items(), data)
        try:
            payload: Any = json.loads(data)
        except (ValueError, RecursionError):
            payload = data.decode("utf-8", "replace")
        assert self.runtime.kind.decode_error is not None
        error = self.runtime.kind.decode_error(response.status, payload, response.headers)
        error.message = "upstream %r answered %d: %s" % (self.runtime.name, response.status,
                                                         error.message)
        if error.retry_after is None and error.status == 429:
            error.retry_after = parse_reset_hint(response.headers)
        if self.passthrough and 400 <= response.status <= 599:
            # The upstream's own error, as it was (a 3xx or 999 is no error a client of
            # this dialect could read: those get the proxy's own 502).
            # Header values too are the upstream's text: a key it repeats there goes.
            redact = self.rq.live.redactor.text
            headers = [("content-type",
                        redact(response.headers.get("content-type", "application/json")))]
            if "retry-after" in response.headers:
                headers.append(("retry-after", redact(response.headers["retry-after"])))
            error.raw = (headers, data)
        return error


def request_bytes(body: Any) -> bytes:
    """An upstream request body as bytes. Text that is not valid Unicode (a lone UTF-16
    surrogate, which JSON can spell) or nesting Python cannot write is the client's
    mistake: a 400, not a crash."""
    if isinstance(body, bytes):
        return body
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ClientError("the request holds text that is not valid Unicode (a lone "
                          "surrogate such as \\ud800)") from None
    except RecursionError:
        raise ClientError("the request is nested too deeply") from None


def retryable(error: ProxyError) -> bool:
    """Worth another attempt before the client has seen anything: rate limits, timeouts,
    server errors and connection failures; never other 4xx, nor a loop (508), which
    would only come round again, nor a model's malformed tool call (MalformedToolCall)."""
    if isinstance(error, MalformedToolCall):   # the model's, not the upstream's
        return False
    return error.status in (408, 429) or (error.status >= 500 and error.status != 508)


def backoff_delay(spec: Dict[str, Any], tries: int, retry_after: Optional[float]) -> float:
    """Seconds before attempt `tries` + 1: retry_wait doubling per attempt up to
    retry_wait_max, half of it random (so clients failing together do not come back
    together), and never sooner than the upstream asked."""
    ceiling = min(spec["retry_wait"] * 2 ** (tries - 1), spec["retry_wait_max"])
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


# An attempt: the steps that give the function that writes its answer.
Attempt = Callable[[UpstreamCall], "Steps[Callable[[], None]]"]


def failover(rq: Request, candidates: List[Tuple[UpstreamRuntime, str]],
             attempt: Attempt) -> "Steps[Callable[[], None]]":
    """attempt() on the route's upstream, then on its fallbacks in order, until one
    answers; returns what it returned (the function that writes the answer). Before the
    client has received anything, failures are retried: see _attempts. When no upstream
    had a usable key or a free slot, wait for one on the first upstream that allows
    waiting. Raises the most useful failure when nothing worked: a 429 with the earliest
    retry time when rate limits were the trouble."""
    failures: List[UpstreamError] = []
    skipped: List[UpstreamError] = []              # upstreams that cannot be called at all
    unavailable: Dict[str, KeysUnavailable] = {}   # upstream -> why no key was free
    give_up_at = rq.ex.started + candidates[0][0].spec["retry_budget"]
    for runtime, model in candidates:
        if runtime.name in rq.live.unusable:
            status, why = rq.live.unusable[runtime.name]
            skipped.append(UpstreamError("upstream %r %s" % (runtime.name, why),
                                         status=status))
            failures.append(skipped[-1])
            continue
        deliver = yield from _attempts(rq, runtime, model, attempt, failures, unavailable,
                                       give_up_at, 0.0)
        if deliver is not None:
            return deliver
    for runtime, model in candidates:
        why_busy = unavailable.get(runtime.name)
        if why_busy is not None and (why_busy.cause == "busy" or (
                why_busy.cause == "resting" and runtime.spec["wait_for_keys"])):
            log.info("%s: waiting up to %gs for upstream %s: %s", rq.ex.rid,
                     runtime.spec["wait_timeout"], runtime.name,
                     rq.live.redactor.text(why_busy.message))
            wait_until = time.monotonic() + runtime.spec["wait_timeout"]
            deliver = yield from _attempts(rq, runtime, model, attempt, failures,
                                           unavailable, max(give_up_at, wait_until),
                                           wait_until)
            if deliver is not None:
                return deliver
            break
    limited = [f for f in failures if f.status == 429]
    if limited:   # the provider's own words, with the soonest time anything frees up
        said = [f for f in limited if not isinstance(f, KeysUnavailable)]
        best = (said or limited)[-1]
        waits = [f.retry_after for f in limited if f.retry_after is not None]
        if waits and (best.retry_after is None or min(waits) < best.retry_after):
            # A sooner time than the provider's own reply says: the client gets the
            # error in its dialect, which carries that time, instead of the raw reply.
            best.retry_after, best.raw = min(waits), None
        raise best
    # What an upstream that was tried said, before why another was not tried at all.
    raise ([f for f in failures if not any(f is s for s in skipped)] or failures)[-1]


def loop_may_call(rq: Request, runtime: UpstreamRuntime) -> bool:
    """Whether the event loop may make a request's call on this upstream itself (see
    Proxy.handle): one that answers locally, or an upstream with a connection to it idle
    in the pool (plain HTTP or TLS; not through an HTTP proxy), or on this machine over
    plain HTTP (ConnectionPool.connects_at_once), and no Google login."""
    target = runtime.target
    return target is None or (
        not target.proxy and runtime.kind.name != "code-assist" and (
            rq.pool.has_idle(target) or rq.pool.connects_at_once(target)))


def _attempts(rq: Request, runtime: UpstreamRuntime, model: str, attempt: Attempt,
              failures: List[UpstreamError], unavailable: Dict[str, KeysUnavailable],
              give_up_at: float, wait_until: float
              ) -> "Steps[Optional[Callable[[], None]]]":
    """Attempts on one upstream, each on a key from its pool: up to 1 + retries of them,
    and none that would start after give_up_at (but the request's first). A 429 rests
    the key and a refusal (refusal_scope) takes it out, and the next attempt takes
    another key at once (a refused key costs no attempt); a 408, a 5xx, a timeout or a
    broken connection waits a backoff first, unless that would pass give_up_at. Another
    4xx is the client's answer as it is. None when this upstream is done with; its
    failures are in `failures`."""
    spec, keys, ex = runtime.spec, runtime.keys, rq.ex
    tries = 0
    tried: List[KeyState] = []
    while True:
        if ex.attempts and time.monotonic() >= give_up_at:
            log.warning("%s: out of retry time (retry_budget) before trying %s",
                        ex.rid, runtime.name)
            return None
        if rq.on_loop and (wait_until or keys.rests_due() or not loop_may_call(rq, runtime)):
            # A wait for a key, the shared store's round trip, a call that may block: in a
            # worker, and before the key is taken (one that holds a key goes past
            # server.workers, which would then bound nothing). An idle connection whose
            # server has closed it is found only later (opening_upstream): that request
            # goes on past the limit, one a connection the pool held at most.
            yield IN_A_THREAD, 0.0
        if rq.pipe.gone:
            # Its client left while the request waited for a worker to go on in (the
            # yield above; one begun in a worker looked in answer()): no upstream is
            # called for it, nor connected to.
            raise ClientGone()
        # A retry after a failure goes to another key, conversation or not.
        key = keys.acquire(model, wait_until, lambda: rq.pipe.gone,
                           ex.session if not tries else "", avoid=tried,
                           read_rests=not rq.on_loop)
        if isinstance(key, KeysUnavailable):
            if rq.pipe.gone:
                raise ClientGone()
            unavailable[runtime.name] = key
            failures.append(key)
            return None
        rq.held.append((keys, key))
        tried.append(key)
        ex.attempts += 1
        ex.key = key.name
        # an earlier attempt's, if it counted any, is not this reply's
        ex.usage, ex.usage_so_far = None, None
        try:
            deliver = yield from attempt(UpstreamCall(rq, runtime, model, key))
            keys.succeeded(key)
            return deliver
        except MalformedToolCall:
            # The model's mistake, not the key's: the key worked, and keeps what the
            # reply spent (released with it at the request's end, as an answer's).
            keys.succeeded(key)
            raise
        except UpstreamError as err:
            if rq.on_loop:   # closing its reply, a key's rest to share, a retry: in a worker
                yield IN_A_THREAD, 0.0
            rq.close_replies(reuse=True)
            keys.failed(key, model, err)    # before the release: no waiter may take
            rq.release_key(keys, key)       # a key that has just been rate limited
            if rq.pipe.gone:
                raise ClientGone() from None
            # A copy is kept, without the traceback and the context: their frames (this
            # one, which holds `failures`, and those it was raised through, with what they
            # had read) made a cycle that held every attempt's reply, up to
            # max_reply_bytes each, until the collector came by (a whole reply over the
            # limit: 12 MB a request at 4 MB). The error itself may be dropped here (a
            # retry) and one raised from a local (the frame that raised it holds it) would
            # be a cycle too: no traceback is ever shown for an upstream's failure.
            failures.append(copy.copy(err))
            forget_traceback(err)
            what = "%s with %s" % (runtime.name, key.name)
            message = clip(rq.live.redactor.text(err.message))
            scope = refusal_scope(err)
            if scope:
                log.warning("%s: %s refused (%d: %s); that key is out %s until a reload",
                            ex.rid, what, err.status, message,
                            "for everything" if scope == "*" else "for " + model)
                continue
            if not retryable(err):
                raise
            tries += 1
            if tries > spec["retries"]:
                log.warning("%s: %s failed (%d: %s); no attempts left on %s", ex.rid,
                            what, err.status, message, runtime.name)
                return None
            if err.status == 429 or err.key_verdict == "rest":
                log.info("%s: %s is %s (%s); trying another key", ex.rid, what,
                         "rate limited" if err.status == 429 else "resting", message)
                continue
            delay = backoff_delay(spec, tries, err.retry_after)
            if time.monotonic() + delay > give_up_at:
                log.warning("%s: %s failed (%d: %s); out of retry time", ex.rid, what,
                            err.status, message)
                return None
            log.warning("%s: %s failed (%d: %s); attempt %d of %d in %.2fs", ex.rid,
                        what, err.status, message, tries + 1, spec["retries"] + 1, delay)
            yield from pausing(delay)
            if rq.pipe.gone:
                raise ClientGone() from None


# ---- 24. Client limits -----------------------------------------------------------------------
#
# A named client key (server.api_keys objects, section 4) may be held to a request rate, a
# daily token budget and a number of requests at once. ClientLimits (rate and budget)
# decides in the worker thread, before any upstream is called, and is told what each
# request cost when it ends; ClientSlots (requests at once) decides on the event loop,
# before a worker is taken. What they count outlives a reload (the Proxy keeps them), and
# the rate and budget a restart (read back from the usage ledger, section 25).

# Seconds a request waits for one of its client's max_concurrency slots before a 429, and
# how many of a client's requests may wait at once (waiting costs no worker, but a
# client's queue should not grow without end).
CLIENT_QUEUE_TIMEOUT = 300.0
CLIENT_MAX_WAITING = 16


def check_client_model(client: ClientKey, model: str) -> None:
    if not client.allows(model):
        raise ClientError("client key %r may not use the model %r; it may use %s" % (
            client.name, model, ", ".join(client.models)), status=403,
            reason="model_not_allowed")


@dataclasses.dataclass
class ClientUsage:
    """One client's use: when its requests of the last minute started (wall clock), and
    its tokens and requests on the current UTC day."""

    recent: "collections.deque[float]" = dataclasses.field(default_factory=collections.deque)
    day_ends: float = 0.0           # the next midnight UTC (Unix time)
    tokens_today: int = 0
    requests_today: int = 0

    def roll(self, now: float) -> None:
        """Forget what fell out of the window and the day."""
        while self.recent and self.recent[0] <= now - RATE_WINDOW:
            self.recent.popleft()
        if now >= self.day_ends:
            self.day_ends, self.tokens_today, self.requests_today = now - now % 86400 + \
                86400, 0, 0


class ClientLimits:
    """requests_per_minute and tokens_per_day, decided in worker threads: through the
    shared store when there is one (section 19), else (or while it fails) from this
    process's own counts, which are kept either way. A client with neither limit is
    counted by each process alone (nothing to agree on, so no round trip to pay)."""

    def __init__(self, shared: Optional[SharedState] = None) -> None:
        self.shared = shared
        self._lock = threading.Lock()
        self._usage: Dict[str, ClientUsage] = collections.defaultdict(ClientUsage)

    def through_store(self, client: ClientKey) -> bool:
        """Whether this client's requests are counted in the shared store (a round trip
        when one is admitted and when it ends)."""
        return self.shared is not None and bool(client.requests_per_minute or
                                                client.tokens_per_day)

    def seed(self, history: "LedgerHistory") -> None:
        """What the ledger says each client used before this process started."""
        with self._lock:
            for name, times in history.recent_requests.items():
                self._usage[name].recent.extend(sorted(times))
            for name, (requests, tokens) in history.today_by_client.items():
                usage = self._usage[name]
                usage.roll(history.now)
                usage.requests_today += requests
                usage.tokens_today += tokens

    def admit(self, client: ClientKey) -> None:
        """Count a request in, or raise the 429 that says when to come back: over the
        daily token budget (until midnight UTC), or over the request rate (until the
        oldest request of the minute leaves the window)."""
        now = time.time()
        if self.through_store(client):
            try:
                refusal = shared_admit(self.shared.store, client.name,
                                       client.requests_per_minute, client.tokens_per_day, now)
            except StateError as exc:
                self.shared.failed("counting a request of client %r" % client.name, exc)
            else:
                self.shared.worked()
                if refusal is not None:
                    raise self._refusal(client, *refusal)
                self._count(client, now, enforce=False)
                return
        self._count(client, now, enforce=True)

    def _count(self, client: ClientKey, now: float, enforce: bool) -> None:
        with self._lock:
            usage = self._usage[client.name]
            usage.roll(now)
            if enforce and client.tokens_per_day and \
                    usage.tokens_today >= client.tokens_per_day:
                raise self._refusal(client, 86400 - now % 86400, "tokens")
            if enforce and client.requests_per_minute and \
                    len(usage.recent) >= client.requests_per_minute:
                raise self._refusal(client, usage.recent[0] + RATE_WINDOW - now, "rate")
            usage.recent.append(now)
            usage.requests_today += 1

    @staticmethod
    def _refusal(client: ClientKey, retry_after: float, why: str) -> ClientError:
        if why == "tokens":
            message = "client key %r has used its %d tokens for today (UTC)" % (
                client.name, client.tokens_per_day)
        else:
            message = "client key %r is limited to %d requests a minute" % (
                client.name, client.requests_per_minute)
        return ClientError(message, status=429, retry_after=retry_after,
                           reason="client_limit")

    def spent(self, client: ClientKey, tokens: int) -> None:
        """An admitted request ended, having cost `tokens` (so a request that starts
        while another is ending may still see the budget before that one's tokens)."""
        now = time.time()
        if self.through_store(client):
            try:
                shared_spent(self.shared.store, client.name, tokens, now)
                self.shared.worked()
            except StateError as exc:
                self.shared.failed("counting the tokens of client %r" % client.name, exc)
        with self._lock:
            usage = self._usage[client.name]
            usage.roll(now)
            usage.tokens_today += tokens

    def snapshot(self, client: ClientKey) -> Dict[str, Any]:
        """The client's use: every process's from the shared store (a blocking call:
        not for the event loop), else this process's."""
        now = time.time()
        if self.through_store(client):
            try:
                found = shared_usage(self.shared.store, client.name, now)
                self.shared.worked()
                return found
            except StateError as exc:
                self.shared.failed("reading the use of client %r" % client.name, exc)
        with self._lock:
            usage = self._usage[client.name]
            usage.roll(now)
            return {"requests_last_minute": len(usage.recent),
                    "requests_today": usage.requests_today, "tokens_today": usage.tokens_today}

    def snapshots(self, clients: Iterable[ClientKey]) -> Dict[str, Dict[str, Any]]:
        return {client.name: self.snapshot(client) for client in clients}


class ClientSlots:
    """A client's requests in flight, and its max_concurrency. Decided on the event loop
    before a worker is taken, so that a request waiting for its client's slot holds no
    worker (one client's queue cannot starve the others)."""

    def __init__(self) -> None:
        self.in_flight: Dict[str, int] = collections.Counter()
        self._waiting: Dict[str, "collections.deque[asyncio.Future[None]]"] = \
            collections.defaultdict(collections.deque)

    async def acquire(self, client: ClientKey, gone: "Optional[asyncio.Future[Any]]"
                      ) -> bool:
        """Take a slot (True), or wait for one: False when `gone` (the client left) is
        done first; a 429 when too many wait already or none frees within
        CLIENT_QUEUE_TIMEOUT. A slot taken is release()d when the request ends. A client
        without max_concurrency never waits (its requests are only counted)."""
        name = client.name
        if not client.max_concurrency or self.in_flight[name] < client.max_concurrency:
            self.in_flight[name] += 1
            return True
        assert gone is not None
        waiting = self._waiting[name]
        if len(waiting) >= CLIENT_MAX_WAITING:
            raise ClientError("client key %r already has %d requests in flight (its "
                              "max_concurrency) and %d waiting" % (
                                  name, self.in_flight[name], len(waiting)),
                              status=429, retry_after=1, reason="client_limit")
        turn: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        waiting.append(turn)
        try:
            await asyncio.wait([turn, gone], timeout=CLIENT_QUEUE_TIMEOUT,
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:   # stopped (a shutdown): a slot handed over is freed
            if turn.done() and not turn.cancelled():
                self.release(client)
            raise
        finally:
            if not turn.done():
                turn.cancel()
                waiting.remove(turn)
        if turn.cancelled():
            if gone.done():
                return False
            raise ClientError("client key %r: no request of its %d in flight ended for %ds"
                              % (name, client.max_concurrency, CLIENT_QUEUE_TIMEOUT),
                              status=429, retry_after=1, reason="client_limit")
        if gone.done():   # handed a slot just as it left: pass it on
            self.release(client)
            return False
        return True

    def release(self, client: ClientKey) -> None:
        """A request's slot is free: the next waiting one of its client takes it over."""
        waiting = self._waiting.get(client.name)
        while waiting:
            turn = waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.in_flight[client.name] -= 1

    def waiting(self, name: str) -> int:
        return len(self._waiting.get(name, ()))


# ---- 25. Usage ledger and metrics ------------------------------------------------------------
#
# Operations read, they do not steer: both are fed from the one point where a request is
# finished (the access log's, on the event loop). Metrics are counters in memory that only
# the loop touches, so they need no lock; the ledger's rows go through a queue to one
# thread, which writes them to SQLite in batches (WAL: readers never wait for it). Nothing
# here can fail a request: a ledger that cannot write says so in a warning and drops rows.

# One row per request; the order is the table's.
LEDGER_COLUMNS = (
    ("time", "REAL"), ("request_id", "TEXT"), ("client", "TEXT"), ("dialect", "TEXT"),
    ("action", "TEXT"), ("model", "TEXT"), ("upstream", "TEXT"), ("upstream_model", "TEXT"),
    ("key", "TEXT"), ("status", "INTEGER"), ("error_kind", "TEXT"), ("error", "TEXT"),
    ("input_tokens", "INTEGER"), ("output_tokens", "INTEGER"), ("cached_tokens", "INTEGER"),
    ("reasoning_tokens", "INTEGER"), ("estimated", "INTEGER"), ("ttfb", "REAL"),
    ("duration", "REAL"), ("bytes_in", "INTEGER"), ("bytes_out", "INTEGER"),
    ("stream", "INTEGER"), ("passthrough", "INTEGER"))
LEDGER_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS requests (%s)" % ", ".join(
        "%s %s" % column for column in LEDGER_COLUMNS),
    "CREATE INDEX IF NOT EXISTS requests_time ON requests (time)")
LEDGER_BATCH = 5000              # rows written in one transaction at most
# Rows one INSERT writes: as many as 999 values make (the most an SQLite before 3.32 takes
# in one statement). SQLite lets go of the interpreter in each statement it runs, and the
# writer must then wait to have it back from the event loop, which under load is always
# running: written a row a statement, the writer took 17 us of CPU a row (3.5 us with
# nothing else running) and the loop some more, about a tenth of a request's in all.
# (An SQLite before 3.7.11 has no INSERT of several rows: one a statement there.)
LEDGER_ROWS_PER_INSERT = 999 // len(LEDGER_COLUMNS) if sqlite3 is not None and \
    sqlite3.sqlite_version_info >= (3, 7, 11) else 1


def ledger_insert(rows: int) -> str:
    """The INSERT of `rows` rows at once."""
    row = "(%s)" % ", ".join("?" * len(LEDGER_COLUMNS))
    return "INSERT INTO requests VALUES " + ", ".join([row] * rows)


LEDGER_INSERT = ledger_insert(LEDGER_ROWS_PER_INSERT)
# An upstream may report any number of tokens: past this, one row could overflow the
# ledger's 64-bit sums.
MAX_TOKEN_COUNT = 10 ** 12
LEDGER_FLUSH_EVERY = 0.5         # seconds a row may wait for others to share its write
LEDGER_OPEN_WAIT = 10.0          # seconds the ledger may be locked by another process
LEDGER_WARNING_EVERY = 60.0      # seconds between two warnings of a failing ledger
RECENT_ERRORS = 50
# Series of the dashboard: (name, seconds per bucket, buckets).
SERIES = (("hour", 60, 60), ("week", 3600, 168))
SERIES_DIMENSIONS = ("model", "client", "upstream")
# A client chooses model names: past this many, new ones count as "(other)", so that no
# client can grow the proxy's memory or /metrics without bound.
MAX_LABEL_VALUES = 200
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)


def kind_of_error(error: ProxyError) -> str:
    """The kind of an error that ended a request: what the ledger and dashboard show."""
    if isinstance(error, ClientError):
        return error.reason if error.reason in ("client_limit", "model_not_allowed") \
            else "client"
    if isinstance(error, KeysUnavailable):
        return "keys_" + (error.cause or "unavailable")
    if isinstance(error, UpstreamError):
        return "upstream_timeout" if error.status == 504 else "upstream"
    return "proxy"


def failure_kind(ex: Exchange, status: int) -> str:
    """What kind of failure a finished request was, in one word for the ledger and the
    dashboard ("" for none)."""
    if status == 499:   # whatever it met on its way, the client left first
        return "client_gone"
    if ex.error_kind:
        return ex.error_kind
    if status >= 500 or (ex.error and status < 400):
        return "upstream" if ex.upstream else "proxy"
    if status == 401:
        return "unauthorized"
    return "client" if status >= 400 else ""


def storable(text: str) -> str:
    """Text SQLite can store: a lone surrogate (an upstream's broken message may hold one)
    would make the whole batch fail."""
    return text.encode("utf-8", "replace").decode("utf-8")


def ledger_row(ex: Exchange, status: int, wall: float, duration: float) -> Tuple[Any, ...]:
    """A finished request as a ledger row (LEDGER_COLUMNS' order)."""
    usage = ex.usage or Usage()
    return (wall - duration, ex.rid, ex.client.name if ex.client else "", ex.dialect,
            ex.action, storable(ex.client_model), ex.upstream, storable(ex.upstream_model),
            ex.key, status, failure_kind(ex, status), storable(clip(ex.error, 500)),
            min(usage.input_tokens, MAX_TOKEN_COUNT), min(usage.output_tokens, MAX_TOKEN_COUNT),
            min(usage.cached_tokens, MAX_TOKEN_COUNT),
            min(usage.reasoning_tokens, MAX_TOKEN_COUNT), int(usage.estimated),
            round(ex.first_byte, 6), round(duration, 6), ex.request_bytes, ex.response_bytes,
            int(ex.stream), int(ex.passthrough))


def ledger_path(config: Config, environ: Dict[str, str]) -> str:
    """Where the ledger is ("" when it is off): usage.database, in state_dir if relative."""
    database = config.usage["database"]
    if not database:
        return ""
    return os.path.join(state_directory(config.server["state_dir"], environ),
                        os.path.expanduser(database))


def open_ledger_database(path: str, readonly: bool = False) -> "sqlite3.Connection":
    if sqlite3 is None:
        raise OSError("this Python was built without sqlite3")
    if readonly:
        return sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(path), uri=True,
                               timeout=LEDGER_OPEN_WAIT)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    deadline = time.monotonic() + LEDGER_OPEN_WAIT
    while True:
        db = sqlite3.connect(path, timeout=LEDGER_OPEN_WAIT, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")   # WAL: a crash loses nothing
            for statement in LEDGER_SCHEMA:
                db.execute(statement)
            return db
        except sqlite3.Error as exc:
            db.close()
            # Worker processes (server.processes) that make a new ledger at once: of two
            # switching it to WAL, SQLite fails one at once ("database is locked": to
            # wait would be a deadlock), and that worker recorded nothing all its life.
            # (A try that waited for a lock may end past the deadline: twice it at most.)
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.05))   # (apart: not again at the same time)


@dataclasses.dataclass
class LedgerHistory:
    """What the ledger knew at start: for limits, charts and the error list."""

    now: float = 0.0                # when it was read
    recent_requests: Dict[str, List[float]] = dataclasses.field(default_factory=dict)
    today_by_client: Dict[str, Tuple[int, int]] = dataclasses.field(default_factory=dict)
    # the last week per minute: (minute, client, dialect, model, upstream, status,
    # requests, errors, input tokens, output tokens)
    minutes: List[Tuple[Any, ...]] = dataclasses.field(default_factory=list)
    errors: List[Dict[str, Any]] = dataclasses.field(default_factory=list)


# Requests the limits never counted: refused before they were admitted, or token counts
# (which cost no generation, and Claude Code asks for many).
NOT_ADMITTED = "error_kind NOT IN ('client_limit', 'model_not_allowed', 'unauthorized') " \
               "AND action != 'count_tokens'"


def read_ledger_history(db: "sqlite3.Connection", now: float) -> LedgerHistory:
    """What the ledger says of the last week, summed by SQLite (a busy week is millions
    of rows: they are never all read into Python)."""
    history = LedgerHistory(now=now)
    for client, at in db.execute("SELECT client, time FROM requests WHERE time > ? AND "
                                 "client != '' AND " + NOT_ADMITTED, (now - RATE_WINDOW,)):
        history.recent_requests.setdefault(client, []).append(at)
    midnight = now - now % 86400
    history.today_by_client = {
        client: (requests, tokens or 0) for client, requests, tokens in db.execute(
            "SELECT client, COUNT(*), SUM(input_tokens + output_tokens) FROM requests "
            "WHERE time >= ? AND client != '' AND " + NOT_ADMITTED + " GROUP BY client",
            (midnight,))}
    week = now - SERIES[-1][1] * SERIES[-1][2]
    history.minutes = db.execute(
        "SELECT CAST(time / 60 AS INTEGER), client, dialect, model, upstream, status, "
        "COUNT(*), SUM(error_kind != ''), SUM(input_tokens), SUM(output_tokens) FROM "
        "requests WHERE time > ? GROUP BY 1, 2, 3, 4, 5, 6", (week,)).fetchall()
    history.errors = [
        {"time": at, "request_id": rid, "client": client or "-", "model": model or "-",
         "upstream": upstream or "-", "status": status, "error": error}
        for at, rid, client, model, upstream, status, error in db.execute(
            "SELECT time, request_id, client, model, upstream, status, error FROM requests "
            "WHERE time > ? AND error_kind != '' ORDER BY time DESC LIMIT ?",
            (week, RECENT_ERRORS))]
    return history


class Ledger:
    """The usage ledger: add() queues a row (cheap, from the event loop); one thread
    writes what has queued within LEDGER_FLUSH_EVERY in one transaction (a kill -9 loses
    at most that much), and prunes rows older than usage.keep_days once a day."""

    def __init__(self, path: str, keep_days: int):
        self.path = path
        self.keep_days = keep_days
        self.warning = ""             # the last trouble, for /stats
        self.written = self.dropped = 0
        self._queue: "queue.SimpleQueue[Optional[Tuple[Any, ...]]]" = queue.SimpleQueue()
        self._db: Optional["sqlite3.Connection"] = None
        self._warned_at = -LEDGER_WARNING_EVERY
        self._pruned_day = ""
        self._thread = threading.Thread(target=self._run, name="usage-ledger", daemon=True)

    def open(self) -> LedgerHistory:
        """Open (create) the database and start the writer; what it held, for seeding."""
        try:
            self._db = open_ledger_database(self.path)
            history = read_ledger_history(self._db, time.time())
        except (OSError,) + sqlite3_errors() as exc:
            self._trouble("cannot open the usage ledger %s (%s); requests are served but "
                          "not recorded" % (self.path, exc))
            self._db = None
            history = LedgerHistory(now=time.time())
        self._thread.start()
        return history

    def add(self, row: Tuple[Any, ...]) -> None:
        self._queue.put(row)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        behind = False
        while True:
            batch = [self._queue.get()]
            if batch[0] is not None and not behind:
                # Asleep while rows gather: woken once a flush, not once a row (each
                # wake-up would take the interpreter from the requests for a moment).
                time.sleep(LEDGER_FLUSH_EVERY)
            while batch[-1] is not None and len(batch) < LEDGER_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            behind = len(batch) >= LEDGER_BATCH
            rows = [row for row in batch if row is not None]
            if rows:
                self._write(rows)
            if batch[-1] is None:
                if self._db is not None:
                    self._db.close()
                return

    def _write(self, rows: List[Tuple[Any, ...]]) -> None:
        if self._db is None:
            self.dropped += len(rows)
            return
        try:
            # (A row of the wrong length is a bug; bound with others in one INSERT, its
            # values would shift into the next row's columns.)
            if any(len(row) != len(LEDGER_COLUMNS) for row in rows):
                raise ValueError("a ledger row of the wrong length")
            with self._db:      # one transaction (BEGIN ... COMMIT, ROLLBACK on error)
                self._db.execute("BEGIN")
                step = LEDGER_ROWS_PER_INSERT
                whole = len(rows) - len(rows) % step
                if whole:
                    self._db.executemany(LEDGER_INSERT, (
                        tuple(itertools.chain.from_iterable(rows[at:at + step]))
                        for at in range(0, whole, step)))
                if whole < len(rows):
                    self._db.execute(ledger_insert(len(rows) - whole),
                                     tuple(itertools.chain.from_iterable(rows[whole:])))
            self.written += len(rows)
            self.warning = ""
        except Exception as exc:   # a full or read-only disk, or a bug: keep serving
            if len(rows) > 1 and isinstance(exc, ledger_row_errors()):
                warning = ""
                for row in rows:   # one bad row (a bug) costs itself, not its batch's
                    self._write([row])
                    warning = self.warning or warning   # (a good row after clears it)
                self.warning = warning
                return
            self.dropped += len(rows)
            self._trouble("the usage ledger %s cannot be written (%s); %d rows dropped so "
                          "far" % (self.path, exc, self.dropped))
            return
        try:
            self._prune(rows[-1][0])
        except Exception as exc:
            self._trouble("the usage ledger %s cannot delete old rows: %s" % (self.path, exc))

    def _prune(self, now: float) -> None:
        if not self.keep_days or self._pruned_day == utc_day(now):
            return
        self._pruned_day = utc_day(now)
        assert self._db is not None
        self._db.execute("DELETE FROM requests WHERE time < ?",
                         (now - self.keep_days * 86400,))

    def summary(self) -> Dict[str, Any]:
        """For /stats: where it is, how it goes (a path and counts: no secret)."""
        return {"on": True, "path": self.path, "warning": self.warning,
                "rows_written": self.written, "rows_dropped": self.dropped}

    def _trouble(self, message: str) -> None:
        self.warning = message
        if time.monotonic() - self._warned_at >= LEDGER_WARNING_EVERY:
            self._warned_at = time.monotonic()
            log.warning("%s", message)


def sqlite3_errors() -> Tuple[type, ...]:
    return (sqlite3.Error,) if sqlite3 is not None else ()


def ledger_row_errors() -> Tuple[type, ...]:
    """What SQLite raises for a value a row holds (a type it cannot store, an integer too
    large), unlike a full disk, which fails every row."""
    values = (ValueError, TypeError, OverflowError)
    if sqlite3 is None:
        return values
    return values + (sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.DataError,
                     sqlite3.IntegrityError)


# A cell of counts: requests, errors, input, output, cached and reasoning tokens.
CELL_SIZE = 6


def _add_cell(into: Dict[Any, List[int]], key: Any, cell: List[int]) -> None:
    mine = into.get(key)
    if mine is None:
        into[key] = list(cell)
    else:
        for i, count in enumerate(cell):
            mine[i] += count


def by_dimension(cells: Dict[Tuple[Any, ...], List[int]]
                 ) -> Dict[Tuple[str, str], List[int]]:
    """Cells keyed (client, dialect, model, upstream, status) as the charts count them:
    (dimension, value) -> [requests, tokens, errors], for each of SERIES_DIMENSIONS."""
    spread: Dict[Tuple[str, str], List[int]] = {}
    for key, cell in cells.items():
        for dimension, value in zip(SERIES_DIMENSIONS, (key[2], key[0], key[3])):
            _add_cell(spread, (dimension, value), [cell[0], cell[2] + cell[3], cell[1]])
    return spread


class Metrics:
    """Counters of finished requests, updated on the event loop only. A request adds to
    one cell of the current minute, by (client, dialect, model, upstream, status); when
    the minute turns, its cells are folded into the totals (Prometheus' counters), today's
    counts and the week's hours. So a request costs a few additions, and the charts a
    little work each time someone looks."""

    def __init__(self) -> None:
        self._minute = 0                                  # Unix time // 60, now
        self._cells: Dict[Tuple[Any, ...], List[int]] = {}    # the current minute's
        self._past: "collections.deque[Tuple[int, Dict[Tuple[Any, ...], List[int]]]]" = \
            collections.deque()                           # the last hour's other minutes
        self._totals: Dict[Tuple[Any, ...], List[int]] = {}   # since start, but this minute
        # hour (Unix time // 3600) -> (dimension, value) -> [requests, tokens, errors]
        self._hours: Dict[int, Dict[Tuple[str, str], List[int]]] = {}
        self._today_day = 0                               # Unix time // 86400
        self._today: Dict[Tuple[Any, ...], List[int]] = {}    # today's cells, but this minute
        # (metric, upstream) -> counts per LATENCY_BUCKETS (then +Inf), then their sum
        self.latency: Dict[Tuple[str, str], List[float]] = {}
        self.errors: "collections.deque[Dict[str, Any]]" = collections.deque(
            maxlen=RECENT_ERRORS)
        # the last minute, a slot a second: [second, requests, tokens, errors]
        self._seconds = [[0, 0, 0, 0] for _ in range(int(RATE_WINDOW))]
        self._durations: "collections.deque[Tuple[float, float]]" = collections.deque(
            maxlen=1000)
        self._models: Set[str] = set()

    def _model_label(self, model: str) -> str:
        """A client chooses model names; past MAX_LABEL_VALUES of them, "(other)"."""
        if model in self._models:
            return model
        if len(self._models) >= MAX_LABEL_VALUES:
            return "(other)"
        self._models.add(model)
        return model

    def seed(self, history: LedgerHistory, now: float) -> None:
        """The charts, today's counts and the last errors as the ledger has them (not the
        counters: Prometheus expects those to start from zero)."""
        minutes: Dict[int, Dict[Tuple[Any, ...], List[int]]] = {}
        for minute, client, dialect, model, upstream, status, requests, errors, \
                input_tokens, output_tokens in history.minutes:
            key = (client or "-", dialect, self._model_label(model or "-"), upstream or "-",
                   status)
            _add_cell(minutes.setdefault(minute, {}), key,
                      [requests, errors or 0, input_tokens or 0, output_tokens or 0, 0, 0])
        self._today_day = int(now // 86400)
        for minute in sorted(minutes):
            self._fold(minute, minutes[minute], now, counters=False)
        self.errors.extend(history.errors)

    def _fold(self, minute: int, cells: Dict[Tuple[Any, ...], List[int]], now: float,
              counters: bool = True) -> None:
        """A finished minute into the totals, today's counts, the last hour and the
        week's hours."""
        if counters:
            for key, cell in cells.items():
                _add_cell(self._totals, key, cell)
        if minute // 1440 == self._today_day:
            for key, cell in cells.items():
                _add_cell(self._today, key, cell)
        self._past.append((minute, cells))
        while self._past and self._past[0][0] <= now // 60 - SERIES[0][2]:
            self._past.popleft()
        hour = self._hours.setdefault(minute // 60, {})
        for key, cell in by_dimension(cells).items():
            _add_cell(hour, key, cell)
        for old in [h for h in self._hours if h <= now // 3600 - SERIES[1][2]]:
            del self._hours[old]

    def record(self, ex: Exchange, status: int, wall: float, duration: float) -> None:
        """A finished request."""
        minute = int(wall // 60)
        if minute > self._minute:
            if self._cells:
                self._fold(self._minute, self._cells, wall)
            self._cells, self._minute = {}, minute
            if minute // 1440 != self._today_day:
                self._today_day, self._today = minute // 1440, {}
        usage = ex.usage
        failed = int(bool(failure_kind(ex, status)))
        model = self._model_label(ex.client_model or "-")
        upstream = ex.upstream or "-"
        key = (ex.client.name if ex.client else "-", ex.dialect, model, upstream, status)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = [0] * CELL_SIZE
        cell[0] += 1
        cell[1] += failed
        tokens = 0
        if usage is not None:
            cell[2] += usage.input_tokens
            cell[3] += usage.output_tokens
            cell[4] += usage.cached_tokens
            cell[5] += usage.reasoning_tokens
            tokens = usage.input_tokens + usage.output_tokens
        for metric, seconds in (("duration", duration), ("ttfb", ex.first_byte)):
            if seconds:
                counts = self.latency.get((metric, upstream))
                if counts is None:
                    counts = self.latency[metric, upstream] = [0.0] * (
                        len(LATENCY_BUCKETS) + 2)
                counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
                counts[-1] += seconds
        second = int(wall)
        slot = self._seconds[second % len(self._seconds)]
        if slot[0] != second:
            slot[:] = [second, 0, 0, 0]
        slot[1] += 1
        slot[2] += tokens
        slot[3] += failed
        self._durations.append((wall, duration))
        if failed:
            self.errors.appendleft({
                "time": wall, "request_id": ex.rid, "client": key[0], "model": model,
                "upstream": upstream, "status": status, "error": clip(ex.error, 300)})

    # -- what is read, when someone looks ---------------------------------------------

    def counters(self) -> Dict[Tuple[Any, ...], List[int]]:
        """Since start: key -> cell."""
        totals = {key: list(cell) for key, cell in self._totals.items()}
        for key, cell in self._cells.items():
            _add_cell(totals, key, cell)
        return totals

    def today(self, wall: float) -> Dict[str, int]:
        cells = dict(self._today) if self._today_day == wall // 86400 else {}
        if self._cells and self._minute // 1440 == wall // 86400:
            cells = {key: list(cell) for key, cell in cells.items()}
            for key, cell in self._cells.items():
                _add_cell(cells, key, cell)
        return {name: sum(cell[i] for cell in cells.values()) for i, name in enumerate(
            ("requests", "errors", "input_tokens", "output_tokens"))}

    def series(self, wall: float) -> Dict[str, Any]:
        """The dashboard's charts: per minute over the last hour, per hour over the last
        week; requests, tokens and errors by model, client and upstream."""
        pages = {}
        minutes = [(minute, by_dimension(cells)) for minute, cells in
                   list(self._past) + [(self._minute, self._cells)]]
        hours = dict(self._hours)
        if self._cells:   # the current minute is in no hour yet
            merged = {k: list(v) for k, v in hours.get(self._minute // 60, {}).items()}
            for key, cell in by_dimension(self._cells).items():
                _add_cell(merged, key, cell)
            hours[self._minute // 60] = merged
        for (name, step, buckets), source in zip(SERIES, (minutes, sorted(hours.items()))):
            last = int(wall // step)
            first = last - buckets + 1
            by: Dict[str, Dict[str, Dict[str, List[int]]]] = {d: {} for d in SERIES_DIMENSIONS}
            for bucket, cells in source:
                if not first <= bucket <= last:
                    continue
                for (dimension, value), (requests, tokens, errors) in cells.items():
                    arrays = by[dimension].get(value)
                    if arrays is None:
                        arrays = by[dimension][value] = {
                            what: [0] * buckets for what in ("requests", "tokens", "errors")}
                    arrays["requests"][bucket - first] += requests
                    arrays["tokens"][bucket - first] += tokens
                    arrays["errors"][bucket - first] += errors
            pages[name] = {"step_seconds": step, "start": float(first * step),
                           "buckets": buckets, "by": by}
        return pages

    def now(self, wall: float) -> Dict[str, Any]:
        """The last minute's rates; latency percentiles of the last 5 minutes."""
        slots = [s for s in self._seconds if wall - RATE_WINDOW < s[0] <= wall]
        requests = sum(s[1] for s in slots)
        durations = sorted(d for at, d in self._durations if at > wall - 300)

        def percentile(share: float) -> Optional[float]:
            if not durations:
                return None
            return round(durations[min(len(durations) - 1, int(share * len(durations)))]
                         * 1000, 1)
        return {"requests_per_minute": requests, "tokens_per_minute": sum(s[2] for s in slots),
                "error_rate": round(sum(s[3] for s in slots) / requests, 4) if requests else 0.0,
                "p50_ms": percentile(0.5), "p95_ms": percentile(0.95)}


def prometheus_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(metrics: Metrics, gauges: List[Tuple[str, str, Dict[str, str], float]]
                    ) -> str:
    """The metrics in the Prometheus text exposition format (version 0.0.4). `gauges`:
    (name, help, labels, value) read at the moment of asking."""
    lines: List[str] = []

    def family(name: str, kind: str, text: str) -> None:
        lines.append("# HELP gemini_proxy_%s %s" % (name, text))
        lines.append("# TYPE gemini_proxy_%s %s" % (name, kind))

    def sample(name: str, labels: Dict[str, str], value: float) -> None:
        inner = ",".join('%s="%s"' % (k, prometheus_label(v)) for k, v in labels.items())
        lines.append("gemini_proxy_%s%s %s" % (name, "{%s}" % inner if inner else "",
                                               repr(float(value)) if isinstance(value, float)
                                               else value))
    counters = metrics.counters()
    family("requests_total", "counter", "Requests finished, by client, client dialect, "
           "model asked, upstream and status.")
    tokens: Dict[Tuple[str, str, str], List[int]] = {}
    for (client, dialect, model, upstream, status), cell in sorted(counters.items(),
                                                                    key=str):
        sample("requests_total", {"client": client, "dialect": dialect, "model": model,
                                  "upstream": upstream, "status": str(status)}, cell[0])
        _add_cell(tokens, (client, model, upstream), cell[2:])
    family("tokens_total", "counter", "Tokens, by client, model, upstream and kind (input, "
           "output, and the cached part of input, the reasoning part of output).")
    for (client, model, upstream), counts in sorted(tokens.items()):
        for kind, count in zip(("input", "output", "cached", "reasoning"), counts):
            if count:
                sample("tokens_total", {"client": client, "model": model,
                                        "upstream": upstream, "kind": kind}, count)
    for metric, text in (("duration", "Seconds from a request's head to its last byte."),
                         ("ttfb", "Seconds from a request's head to the response head.")):
        name = "request_%s_seconds" % metric
        family(name, "histogram", text + " By upstream.")
        for (which, upstream), cells in sorted(metrics.latency.items()):
            if which != metric:
                continue
            total = 0.0
            for bound, count in zip(LATENCY_BUCKETS + (math.inf,), cells):
                total += count
                sample(name + "_bucket", {"upstream": upstream,
                                          "le": "+Inf" if bound == math.inf else repr(bound)},
                       int(total))
            sample(name + "_sum", {"upstream": upstream}, cells[-1])
            sample(name + "_count", {"upstream": upstream}, int(total))
    named: Dict[str, bool] = {}
    for name, text, labels, value in gauges:
        if name not in named:
            named[name] = True
            family(name, "gauge", text)
        sample(name, labels, value)
    return "\n".join(lines) + "\n"


# ---- 26. Actions and the application ---------------------------------------------------------
#
# What each kind of request does with an upstream call (generate, count tokens, embed,
# or pass the bytes through), and Proxy, the application: configuration, upstreams and
# handle, the entry point (in a worker thread, or on the event loop), which never raises.

def generate(call: UpstreamCall) -> "Steps[Callable[[], None]]":
    """A chat request, converted through the neutral model (or answered locally)."""
    if call.passthrough:
        return (yield from passthrough(call))
    rq, kind, spec = call.rq, call.runtime.kind, call.runtime.spec
    ex, dialect = rq.ex, rq.dialect
    chat = rq.chat()
    ex.stream = chat.stream
    cap = spec["max_output_tokens"]
    if cap and chat.max_tokens is not None and chat.max_tokens > cap:
        chat = dataclasses.replace(chat, max_tokens=cap)
    if chat.extra:
        log.debug("%s: not sent to %s (it cannot take them): %s", ex.rid,
                  call.runtime.name, ", ".join(sorted(chat.extra)))
    mode = spec["upstream_streaming"]
    upstream_streams = chat.stream if mode == "match" else mode == "always"
    tags = spec["think_tags"] if kind.reads_think_tags else []
    reply: Optional[Reply] = None
    events: Iterator[Any] = iter(())
    if kind.answer_locally is not None:
        events = kind.answer_locally(chat, call.model)
    elif upstream_streams:
        assert kind.encode_request is not None
        events = split_think_tags((yield from call.send_steps(
            kind.generate_path(call.model, True),
            lambda options: kind.encode_request(dataclasses.replace(chat, stream=True),
                                                call.model, options),
            call.opening_stream, stream=True, extra_headers=call.client_headers())), tags)
    else:
        assert kind.encode_request is not None and kind.decode_response is not None
        reply = split_reply_think_tags((yield from call.send_steps(
            kind.generate_path(call.model, False),
            lambda options: kind.encode_request(dataclasses.replace(chat, stream=False),
                                                call.model, options),
            lambda response: kind.decode_response(call.read_json(response), call.model),
            extra_headers=call.client_headers())), tags)
    stops = spec["stop_strings"] + (chat.stop if not kind.sends_stop else [])
    reply_id = dialect.response_id(ex.rid)
    # Credentials are taken out of what the upstream sent, and those it was sent again out
    # of what the proxy made of it: text it joined from a stream's pieces (an assembled
    # reply, Responses' .done events) or read from JSON escapes may hold one whole. (Split
    # between two of a stream's deltas, a key reaches a streaming client in two pieces.)
    redact = rq.live.made_redactor.bytes
    upstream = call.stream_response
    if reply is None and not chat.stream:   # a stream assembled for a whole reply
        if upstream is not None:
            # (in a worker: assembled and converted whole, a large one would hold up
            # every stream the loop relays, as a large whole reply would)
            yield from upstream.leaving_the_loop()
            events = iter((yield from upstream.every_event(events)))
        reply = collect_reply(events, ex.rid, call.model)
    # (One choice's mistake among several is not the reply's: n > 1 keeps plain finishes.)
    malformed_fails = not dialect.tells_malformed_tool_calls and chat.n == 1
    if reply is not None:   # all here: a mistake is found before anything is sent
        if stops:
            reply = cut_reply(reply, stops)
        if reply.usage is None:
            reply.usage = estimate_usage(chat, [p for c in reply.choices for p in c.parts])
        reply.usage = ex.usage = with_prompt_estimate(reply.usage, rq.prompt_estimate)
        if malformed_fails:
            malformed = next((c.finish for c in reply.choices
                              if c.finish.reason == MALFORMED_TOOL_CALL), None)
            if malformed is not None:
                raise MalformedToolCall(call.runtime.name, malformed.detail)
        if not chat.stream:
            payload = dialect.encode_response(reply, ex.client_model, reply_id, ex.options)
            return lambda: rq.out.json(payload, redact)
        events = reply_events(reply)
    tally = OutputTally()
    events = _track_usage(ex, rq.prompt_estimate, cut_at_stop_strings(
        events, stops, chat.n, on_cut=lambda: rq.close_replies(reuse=False)), tally)
    if malformed_fails and reply is None:   # (a whole reply's was looked at above)
        events = _malformed_tool_call_fails(events, call.runtime.name)
    # The last moment a failure can still be retried:
    first = (yield from upstream.next_event(events)) if upstream else next(events, None)
    if first is None:
        raise UpstreamError("upstream %r ended its stream without an answer"
                            % call.runtime.name, status=502)

    def deliver() -> None:
        ex.usage_so_far = lambda: broken_off_usage(
            ex.usage, tally.output + tally.reasoning, tally.reasoning, rq.prompt_estimate)
        rq.out.start(dialect.stream_content_type(ex))
        chunks = _whole_then_counted(ex, (
            piece if piece is IDLE else redact(piece) for piece in dialect.encode_stream(
                itertools.chain([first], events), ex.client_model, reply_id, ex.options)))
        if upstream is not None:
            rq.out.relay(upstream, chunks)
            return
        for chunk in chunks:   # answered here, or from a whole reply: no upstream to wait for
            rq.out.chunk(chunk)
    return deliver


def _whole_then_counted(ex: Exchange, chunks: Iterator[Any]) -> Iterator[Any]:
    """The client's stream; once it is whole, its usage is what was reported (or counted
    at its finish), no longer what a stream broken off spent (usage_so_far). (Not when
    the events end: an encoder may stop reading at the finish, as Anthropic's does.)"""
    yield from chunks
    ex.usage_so_far = None


def _malformed_tool_call_fails(events: Iterator[Any], upstream: str) -> Iterator[Any]:
    """Pass events on; a malformed tool call ends them as MalformedToolCall (the client
    hears of it in-stream when something went out before)."""
    for event in events:
        if isinstance(event, Finish) and event.reason == MALFORMED_TOOL_CALL:
            raise MalformedToolCall(upstream, event.detail)
        yield event


def _track_usage(ex: Exchange, prompt_tokens: Callable[[], int], events: Iterator[Any],
                 tally: Optional[OutputTally] = None) -> Iterator[Any]:
    """Pass events on; record the usage, counting it (in `tally`) when the upstream did
    not (the prompt's part asked of `prompt_tokens` only then: see
    Request.let_go_of_request)."""
    tally = tally or OutputTally()
    for event in events:
        if event is IDLE:
            pass
        elif isinstance(event, Finish):
            if event.usage is None:
                event.usage = tally.usage(prompt_tokens())
            event.usage = ex.usage = with_prompt_estimate(event.usage, prompt_tokens)
        else:
            tally.add(event)
        yield event


def count_tokens(call: UpstreamCall) -> "Steps[Callable[[], None]]":
    """A token count: the upstream's own where it can count, else a local estimate."""
    if call.passthrough:
        return (yield from passthrough(call))
    rq, kind = call.rq, call.runtime.kind
    dialect = rq.dialect
    assert dialect.encode_count_response
    chat = rq.chat()
    if kind.count_path is not None and kind.encode_count_request and \
            kind.decode_count_response and chat.messages:
        encode, decode = kind.encode_count_request, kind.decode_count_response
        tokens = yield from call.send_steps(
            kind.count_path(call.model), lambda options: encode(chat, call.model),  # no options
            lambda response: decode(call.read_json(response)),
            extra_headers=call.client_headers(), alternatives=False)
    else:
        tokens = estimate_prompt_tokens(chat)
    payload = dialect.encode_count_response(tokens)
    return lambda: rq.out.json(payload)


def embed(call: UpstreamCall) -> "Steps[Callable[[], None]]":
    if call.passthrough:
        return (yield from passthrough(call))
    rq, kind = call.rq, call.runtime.kind
    dialect = rq.dialect
    assert dialect.decode_embed_request and dialect.encode_embed_response
    request = dialect.decode_embed_request(rq.ex, rq.payload)
    if kind.embed_path is None or kind.encode_embed_request is None or \
            kind.decode_embed_response is None:
        raise ClientError("upstream %r (%s) has no embeddings; route the model %r to an "
                          "upstream that has them" % (call.runtime.name, kind.name,
                                                      rq.ex.client_model))
    encode, decode = kind.encode_embed_request, kind.decode_embed_response
    reply = yield from call.send_steps(
        kind.embed_path(call.model), lambda options: encode(request, call.model),  # no options
        lambda response: decode(call.read_json(response)), alternatives=False)
    payload = dialect.encode_embed_response(rq.ex, reply)
    return lambda: rq.out.json(payload)


ACTIONS: Dict[str, Attempt] = {"generate": generate, "stream": generate,
                               "count_tokens": count_tokens, "embed": embed,
                               "batch_embed": embed}


# The text fields of the dialects' replies and stream events, for an estimate of the output
# of a passed-through reply whose upstream reported no usage, or whose stream broke before
# its usage came (a Responses stream counts its deltas: UpstreamKind.stream_text_field).
# The string's body is written unrolled (runs of plain characters, then one escape at a
# time): as an alternation per character, one 40 MB event held the loop for 20 s.
TEXT_FIELD = re.compile(r'"(?:content|text|thinking|partial_json|arguments|'
                        r'reasoning_content|reasoning)": ?"([^"\\]*(?:\\.[^"\\]*)*)"')


def text_field_chars(json_text: str, field: "re.Pattern[str]" = TEXT_FIELD) -> int:
    """The characters of the text fields in a reply's (or its events') JSON."""
    return sum(map(len, field.findall(json_text)))


def passthrough(call: UpstreamCall) -> "Steps[Callable[[], None]]":
    """Client and upstream speak the same dialect: forward the request with the model
    name, the key and (max_output_tokens) the output limit replaced, and the reply's bytes
    as they come, secrets removed. A stream that ends without its dialect's last event
    was cut off: the client hears so. A 200 that holds an error, or no reply at all, is
    the upstream's failure, as it is on a converted path: never passed on as an answer."""
    rq, runtime = call.rq, call.runtime
    ex, head, dialect, out = rq.ex, rq.head, rq.dialect, rq.out
    kind, spec = runtime.kind, runtime.spec
    begun = kind.reply_begun if ex.action in ("generate", "stream") else None
    payload = expect(rq.payload, dict, "request", "a JSON object")
    ex.stream = dialect.streams(ex, payload)
    changed = dialect.cap_output(dialect.with_model(payload, call.model),
                                 spec["max_output_tokens"])
    if spec["extra_body"]:
        changed = dict(changed, **spec["extra_body"])
    body = rq.body if changed is payload else request_bytes(changed)
    expected_type = dialect.stream_content_type(ex)

    def content_type_of(response: UpstreamResponse) -> str:
        return rq.live.redactor.text(response.headers.get("content-type", "application/json"))

    def counted(usage: Optional[Usage], text_chars: Callable[[], int]) -> Usage:
        """The upstream's usage, the prompt estimated where it counted the output alone;
        where it gave none, all estimated: the prompt as the hub would count it, the
        output from the characters of its text fields."""
        if usage is None:
            return Usage(rq.prompt_estimate(), math.ceil(text_chars() / 4), estimated=True)
        return with_prompt_estimate(usage, rq.prompt_estimate)

    def whole(response: UpstreamResponse) -> Tuple[str, bytes, None]:
        """Parsed to be sure it is JSON with a reply, and for the usage."""
        data = call.read_body(response)
        reply = call.reply_json(data)
        if begun is not None and not begun(reply):
            raise UpstreamError("upstream %r answered without a reply: %s" % (
                runtime.name, clip(data.decode("utf-8", "replace"), 300)), status=502)
        usage = kind.usage_from(reply, None)
        if usage is not None or ex.action in ("generate", "stream"):   # (not a count)
            ex.usage = counted(usage, lambda: text_field_chars(data.decode("utf-8",
                                                                           "replace")))
        return content_type_of(response), data, None

    def streamed(response: UpstreamResponse) -> "Steps[Tuple[str, bytes, Any]]":
        content_type = content_type_of(response)
        if media_type(content_type) != expected_type:
            if media_type(content_type) == "application/json" and \
                    looks_like_json(response.peek()):
                yield from response.leaving_the_loop()
                raise call.json_for_stream(call.read_body(response))
            raise UpstreamError("upstream %r answered a stream with %s, not %s" % (
                runtime.name, clip(content_type, 60), expected_type), status=502)
        chunks = response.raw_chunks(call.sink("3. upstream response: %d" % response.status))
        passing = PassingStream(ex, kind, content_type, spec["max_reply_bytes"],
                                rq.live.redactor)
        # Up to the first whole event, which shows what follows (an error, say); for a
        # chat reply whose kind tells (reply_begun), up to the first that holds some of
        # the reply: those before it are held back (Azure opens with its prompt filter's,
        # choices empty), and a stream that ends first was no answer.
        first, over, received, answering = bytearray(), False, False, False
        while not (first and answering) and not over:
            data = yield from response.next_event(chunks)
            if data:
                received = True
                piece, events = passing.take(data)
                if not events and passing.between_events:
                    response.keep_alive_read()
            else:           # the end: what was held back, if anything came at all
                piece, events = passing.finish()
                if not first and not piece:
                    raise UpstreamError("upstream %r ended its stream %s" % (
                        runtime.name, "before the reply was finished" if received
                        else "without sending anything"), status=502)
                over = True
            first += piece
            for event in events:
                if answering:
                    break
                if kind.stream_last is not None and kind.stream_last(event):
                    error = kind.stream_event_error(event[1])   # (response.failed is one)
                    if error is not None:
                        raise error
                    if begun is not None:
                        raise UpstreamError("upstream %r ended its stream (%s) without any "
                                            "reply" % (runtime.name, clip(event[1], 40)),
                                            status=502)
                    answering = True   # an end at once: what comes of it is the client's
                    break
                reply = stream_event_json(event[1], kind.stream_event_error)
                answering = begun is None or begun(reply)
            # (Bytes with no event in them: Gemini's JSON-array form, or comments.)
            answering = answering or (begun is None and bool(first))
            if len(first) > spec["max_reply_bytes"]:
                raise UpstreamError("upstream %r sent over %d bytes of its stream and no "
                                    "reply (max_reply_bytes)" % (runtime.name,
                                                                 spec["max_reply_bytes"]),
                                    status=502)
        if over and not (passing.ended and answering):   # a 502 now, not 200 and garble
            raise UpstreamError("upstream %r ended its stream before the reply was "
                                "finished" % runtime.name, status=502)
        return content_type, bytes(first), (response, chunks, passing)
    content_type, first, rest = yield from call.send_steps(
        kind.passthrough_path(ex, head, call.model), lambda options: body,
        streamed if ex.stream else whole, stream=ex.stream,
        extra_headers=call.client_headers(), alternatives=False)
    if rest is None:
        return lambda: out.whole(200, [("content-type", content_type)], first)

    def deliver() -> None:
        response, chunks, passing = rest
        ex.usage_so_far = lambda: broken_off_usage(
            ex.usage, math.ceil(passing.text_chars / 4), 0, rq.prompt_estimate)

        def after() -> None:
            last, _ = passing.finish()
            if not passing.ended:
                raise UpstreamError("upstream %r ended its stream before the reply was "
                                    "finished" % runtime.name, status=502)
            out.chunk(last)
            ex.usage, ex.usage_so_far = counted(ex.usage, lambda: passing.text_chars), None

        def relayed() -> Iterator[Any]:
            # Up to the read that holds the final event, which makes the reply whole
            # whatever the body does next: an upstream that held it open (or broke it)
            # after [DONE] kept a client that reads to the body's end (the OpenAI SDKs
            # do) waiting for read_timeout. Nothing after that event is the reply's;
            # what came in the same read goes with it. Closing the reply reads the
            # body's end briefly, to keep the connection.
            while not passing.whole:
                data = next(chunks, None)
                if data is None:
                    return
                yield data if data is IDLE else passing.take(data)[0]
        out.start(content_type)
        out.chunk(first, final=passing.whole)
        out.relay(response, relayed(), after, past_final_event=lambda: passing.whole)
    return deliver


class PassingStream:
    """A passed-through stream as it goes by: its usage (for the access log), whether
    it finished (`ended`: a stream that stops before was cut off) and whether it is
    whole (`whole`: its dialect's final event went by), and for SSE the start of an
    event not yet whole, held back, so that a stream cut in the middle of an event never
    hands the client half of one (and the error event that ends it starts clean). Secrets
    the upstream repeats are removed from whole events."""

    def __init__(self, ex: Exchange, kind: UpstreamKind, content_type: str, max_event: int,
                 redactor: Redactor):
        self.ex, self.kind, self.redactor = ex, kind, redactor
        self.sse = content_type.lower().startswith("text/event-stream")
        self.ended = kind.stream_end is None
        self.whole = False
        self.held = bytearray()
        self.max_event = max_event
        self.text_chars = 0
        self._parser = SSEParser(max_event)
        self._tail = ""
        self._note = CLIENT_DIALECTS[ex.dialect].note_passed

    @property
    def between_events(self) -> bool:
        """An event stream's reads so far end where an event does (see SSEParser)."""
        return self.sse and self._parser.between_events

    def take(self, data: bytes) -> Tuple[bytes, List[Tuple[str, str]]]:
        """(the bytes that may go to the client now, the whole events that arrived)."""
        try:
            if self.sse:   # clients are sent what the parser reads: no lone CR
                data = self._parser.line_ends.unify(data)
                events = self._parser.feed_lines(data)
            else:
                events = self._parser.feed(data)
        except ValueError as exc:
            raise UpstreamError("the upstream sent %s (max_reply_bytes)" % exc,
                                status=502) from None
        if events:
            # Looked through all at once: a fast stream brings hundreds of events a read.
            # (The text estimate is wanted only when no usage ever comes; an event that is
            # not JSON may add a few characters to it, joined to the next.)
            texts = "\n".join(text for _, text in events)
            if self._note is not None:
                for _, text in events:
                    self._note(self.ex.options, text)
            if "usage" in texts:   # the only events worth parsing, for the access log
                for _, text in events:
                    if "usage" in text:
                        try:
                            self.ex.usage = self.kind.usage_from(json.loads(text),
                                                                 self.ex.usage)
                        except (ValueError, RecursionError):
                            pass
            # (While no usage counts the output: Anthropic's message_start says 1, its
            # message_delta the count at the end. For a stream broken off, or one whose
            # upstream reported no usage.)
            if self.ex.usage is None or self.ex.usage.output_tokens <= 1:
                self.text_chars += text_field_chars(texts, self.kind.stream_text_field or
                                                    TEXT_FIELD)
        if not self.sse:   # Gemini's JSON-array form: look for the marker in the bytes
            end = self.kind.stream_end
            window = self._tail + data.decode("utf-8", "replace")
            self.ended = self.ended or (end is not None and bool(end(window)))
            self._tail = window[-64:]
            # No events to wait for: hold back what could be the start of a credential.
            self.held = bytearray(self.redactor.bytes(bytes(self.held + data)))
            ready = len(self.held) - self.redactor.overlap
            if ready <= 0:
                return b"", events
            out = bytes(self.held[:ready])
            del self.held[:ready]
            return out, events
        self._look_for_ends(events)
        if not self.held and data.endswith(b"\n\n"):   # whole events, as most reads are
            return self.redactor.bytes(data), events
        searched = max(0, len(self.held) - 3)   # an end may straddle the old and the new
        self.held += data
        whole = sse_complete_length(self.held, searched)
        if not whole:
            return b"", events
        ready = bytes(self.held[:whole])
        del self.held[:whole]
        return self.redactor.bytes(ready), events

    def finish(self) -> Tuple[bytes, List[Tuple[str, str]]]:
        """At the end of the body: what is still held back that may go to the client,
        and the event in it. In SSE that is only a last event whose blank line never
        came (the hub's own reading accepts it), given that line and cut before a last
        line cut short: a client that reads a body ending inside an event fails the
        whole answer (@google/genai: "Incomplete JSON segment at the end"). Nothing that
        follows the stream's final event is part of the reply."""
        was_whole = self.whole
        events = self._parser.finish()
        held, self.held = bytes(self.held), bytearray()
        if not self.sse:   # Gemini's JSON-array form: body bytes held back for redaction
            self._look_for_ends(events)
            return self.redactor.bytes(held), events
        if was_whole or not events:
            return b"", []
        self._look_for_ends(events)
        held = held[:held.rfind(b"\n") + 1]
        # The blank line in the stream's own line ends: @google/genai finds events by
        # "\n\n" or "\r\n\r\n", and reads "\r\n\n" as an event never finished.
        blank = b"\r\n" if held.endswith(b"\r\n") else b"\n"
        return self.redactor.bytes(held + blank), events

    def _look_for_ends(self, events: List[Tuple[str, str]]) -> None:
        end, last = self.kind.stream_end, self.kind.stream_last
        self.whole = self.whole or (last is not None and any(map(last, events)))
        self.ended = self.ended or self.whole or (
            end is not None and any(end(text) for _, text in events))


class Proxy:
    """The application: configuration, upstreams and the blocking request handler that
    runs in worker threads. The asyncio server (ProxyServer) is its only caller."""

    def __init__(self, config: Config, environ: Optional[Dict[str, str]] = None,
                 shared_url: str = ""):
        self.environ = environ
        # What processes share (section 19): the supervisor's store, or state.redis_url.
        url = shared_url or config.state["redis_url"]
        self.shared = SharedState(url, config.state["namespace"]) if url else None
        self.pool = ConnectionPool()
        self.workers = WorkerPool(config.server["workers"])
        self.started = time.time()
        self.instance = new_id(nbytes=6)   # in HOP_HEADER: a request that comes back is a loop
        self.listening: Optional[Tuple[str, int]] = None
        self.active = 0    # requests in flight: begun by a worker, not yet ended
        self.working = 0   # of those, the ones a worker thread is busy with now
        self._active_lock = threading.Lock()
        self.live = self._make_live(config, None)
        self.limits = ClientLimits(self.shared)
        self.slots = ClientSlots()     # the event loop's
        self.metrics = Metrics()
        self.ledger: Optional[Ledger] = None

    def open_ledger(self) -> None:
        """Start the usage ledger (when usage.database names one), and take back what it
        holds: the clients' use so far, the charts, the last errors."""
        path = ledger_path(self.config, dict(os.environ if self.environ is None
                                              else self.environ))
        if not path:
            return
        self.ledger = Ledger(path, self.config.usage["keep_days"])
        history = self.ledger.open()
        self.limits.seed(history)
        self.metrics.seed(history, time.time())

    def _make_live(self, config: Config, previous: Optional[Live]) -> Live:
        RESPONSE_STORE.configure(config.server["responses_store"],
                                 config.server["responses_store_ttl"],
                                 config.server["responses_store_bytes"])
        upstreams = {}
        unusable = {name: (503, "is off: " + why) for name, why in config.disabled.items()}
        for name, spec in config.upstreams.items():
            old = previous.upstreams.get(name) if previous else None
            accounts = self._google_accounts(name, spec, config, old) \
                if spec["kind"] == "code-assist" else None
            if accounts == {}:   # where it looked: in the log, not in clients' errors
                unusable[name] = (503, "has no Google login (run `python3 gemini_proxy.py "
                                  "login`)")
            if old is not None:   # the same pool: requests in flight on it still count
                keys = old.keys
                keys.reconfigure(spec["api_keys"], spec, spec["kind"], accounts)
            else:
                keys = KeyPool(name, spec["api_keys"], spec, spec["kind"], accounts,
                               self.shared)
            target = upstream_target(spec["base_url"], self.environ) \
                if spec["kind"] != "echo" else None
            upstreams[name] = UpstreamRuntime(name, spec, UPSTREAM_KINDS[spec["kind"]],
                                              target, keys)
            if target is not None and self.listening and is_this_address(
                    target, *self.listening):
                unusable[name] = (508, "leads back to this proxy: upstreams.%s.base_url "
                                  "(%s) is the address this proxy listens on"
                                  % (name, display_url(spec["base_url"])))
        return Live(config, upstreams, Redactor(config.secrets(), config.credentials()),
                    Redactor((), config.sent_upstream()),
                    unusable)

    def _google_accounts(self, name: str, spec: Dict[str, Any], config: Config,
                         old: Optional[UpstreamRuntime]) -> Dict[str, GoogleAccount]:
        environ = dict(os.environ if self.environ is None else self.environ)
        state_dir = state_directory(config.server["state_dir"], environ)
        previous = {s.key: s.account for s in old.keys.states if s.account is not None} \
            if old is not None else {}
        accounts = load_google_accounts(spec, state_dir, environ, previous)
        if not accounts:
            log.warning("upstream %s: no Google login in %s", name, ", ".join(
                credential_sources(spec, state_dir, environ)))
        return accounts

    @property
    def config(self) -> Config:
        return self.live.config

    @property
    def upstreams(self) -> Dict[str, UpstreamRuntime]:
        return self.live.upstreams

    @property
    def workers_free(self) -> int:
        # (resumed requests go past the limit: more may be busy than there are workers)
        return max(self.config.server["workers"] - self.working, 0)

    def listen_on(self, host: str, port: int) -> None:
        """Where the server listens: an upstream whose base_url is that address would
        send each request back to this proxy, forever."""
        self.listening = (host, port)
        self.live = self._make_live(self.config, self.live)

    def reload(self, config: Config) -> None:
        """Use a new configuration from the next request on: upstreams, keys (refused
        ones get another chance), routes, client keys, logging. Requests in flight end
        on the old one. The listening address, processes, the shared state and the
        server's timeouts and sizes need a restart."""
        self.workers.limit = config.server["workers"]
        for key in ("host", "port", "processes"):
            if config.server[key] != self.config.server[key]:
                log.warning("reload: server.%s changed; it takes effect after a restart", key)
        if config.usage != self.config.usage:
            log.warning("reload: usage.* changed; it takes effect after a restart")
        if config.state != self.config.state:
            log.warning("reload: state.* changed; it takes effect after a restart")
        for key in ("file", "file_max_bytes", "file_count", "format"):
            if config.logging[key] != self.config.logging[key]:
                log.warning("reload: logging.%s changed; it takes effect after a restart",
                            key)
        self.live = self._make_live(config, self.live)

    def close(self) -> None:
        self.workers.close()
        self.pool.close_all()
        if self.shared is not None:
            self.shared.close()
        if self.ledger is not None:
            self.ledger.close()

    def client_of(self, head: RequestHead) -> Optional[ClientKey]:
        """The client key a request carries; ANONYMOUS when the proxy asks for none;
        None for a missing or wrong key."""
        clients = self.config.clients
        if not clients:
            return ANONYMOUS
        sent = client_key(head).encode("utf-8")
        found = None
        for client in clients:   # compare with every key: timing says nothing about which
            if hmac.compare_digest(sent, client.key.encode("utf-8")):
                found = client
        return found

    def admin_authorized(self, head: RequestHead) -> bool:
        """May this request open the operator's pages (/dashboard, /stats, /metrics,
        /status)? With admin keys set, only they may; else whoever may send requests."""
        keys = self.config.server["admin_keys"]
        if not keys:
            return self.client_of(head) is not None
        sent = client_key(head).encode("utf-8")
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(sent, key.encode("utf-8"))
        return matched

    def describe(self) -> List[str]:
        """The start-up lines: where requests go."""
        lines = []
        for name, runtime in self.upstreams.items():
            spec = runtime.spec
            where = display_url(spec["base_url"]) if runtime.target else "(answers locally)"
            keys = spec["api_keys"]
            accounts = [s.account.name for s in runtime.keys.states if s.account is not None]
            _, why = self.live.unusable.get(name, (0, ""))
            lines.append("upstream %s: %s %s%s" % (
                name, spec["kind"], where, " " + why if why else
                " with Google account%s %s" % ("s" if len(accounts) > 1 else "",
                                               ", ".join(accounts)) if accounts else
                " with key " + fingerprint(keys[0]) if len(keys) == 1 else
                " with %d keys" % len(keys) if keys else ""))
        routes = self.config.routes
        if any(route.pattern == "*" for route in routes[:-1]):
            routes = routes[:-1]   # the catch-all: a "*" of the file's takes all first
        for route in routes:
            lines.append("route %s -> %s/%s%s" % (
                route.pattern, route.upstream, route.upstream_model or "(same name)",
                "".join(", then %s/%s" % (up, model or "(same name)")
                        for up, model in route.fallbacks)))
        return lines

    def health(self) -> Tuple[int, Dict[str, Any]]:
        """GET /health: 200 while a request can start now; 503 when every worker is busy
        with a request (a load balancer should send new requests elsewhere)."""
        free = self.workers_free
        if self.workers.starved:
            return 503, {"status": "degraded", "workers_free": free,
                         "reason": "requests wait: the system refuses more threads than %d"
                         % self.workers.threads}
        if free > 0:
            return 200, {"status": "ok", "workers_free": free}
        return 503, {"status": "degraded", "workers_free": 0,
                     "reason": "all %d workers are busy" % self.config.server["workers"]}

    def status(self) -> Dict[str, Any]:
        """GET /status: requests in flight and each upstream's keys, as fingerprints."""
        live = self.live
        upstreams = {}
        for name, runtime in live.upstreams.items():
            pool = runtime.keys.status()
            for key in pool["keys"]:
                key["last_error"] = live.redactor.text(key["last_error"])
                key["refused"] = {scope: live.redactor.text(why)
                                  for scope, why in key["refused"].items()}
            upstreams[name] = dict({
                "kind": runtime.kind.name,
                "base_url": display_url(runtime.spec["base_url"]) if runtime.target else "",
                "unusable": live.unusable.get(name, (0, ""))[1],
                "max_concurrency": runtime.spec["max_concurrency"]}, **pool)
        return {"version": __version__, "uptime_seconds": int(time.time() - self.started),
                "pid": os.getpid(),   # with server.processes: which worker answered
                "in_flight": self.active, "workers_free": self.workers_free,
                "upstreams": upstreams}

    # -- operations (on the event loop) ----------------------------------------------

    def record(self, ex: Exchange, status: int, wall: float, duration: float) -> None:
        """A finished request, into the metrics and the ledger. A model name is the
        client's text: clipped, and any secret in it (a key pasted in the wrong field)
        removed."""
        names = self.live.redactor.names
        ex.client_model = names(ex.client_model[:MAX_MODEL_NAME])
        ex.upstream_model = names(ex.upstream_model[:MAX_MODEL_NAME])
        self.metrics.record(ex, status, wall, duration)
        if self.ledger is not None:
            self.ledger.add(ledger_row(ex, status, wall, duration))

    def _keys(self) -> Iterator[Tuple[str, Dict[str, Any]]]:
        """(upstream, key page) for every key and account, secrets out of their errors."""
        for name, upstream in self.status()["upstreams"].items():
            for key in upstream["keys"]:
                yield name, key

    def stats(self, connections_open: int,
              client_usage: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
        """GET /stats: what the dashboard shows."""
        wall = time.time()
        metrics = self.metrics
        status = self.status()
        return {
            "version": __version__, "uptime_seconds": int(wall - self.started),
            "generated_at": wall,
            "ledger": self.ledger.summary() if self.ledger else {
                "on": False, "path": "", "warning": "", "rows_written": 0, "rows_dropped": 0},
            "now": dict(metrics.now(wall), in_flight=self.active, workers_busy=self.working,
                        workers=self.config.server["workers"],
                        worker_threads=self.workers.threads,
                        connections_open=connections_open),
            "today": metrics.today(wall),
            "series": metrics.series(wall),
            "clients": [dict(
                {"name": c.name, "models": list(c.models),
                 "requests_per_minute": c.requests_per_minute or None,
                 "tokens_per_day": c.tokens_per_day or None,
                 "max_concurrency": c.max_concurrency or None,
                 "in_flight": self.slots.in_flight[c.name],
                 "waiting": self.slots.waiting(c.name)},
                **client_usage[c.name]) for c in self.config.clients],
            "upstreams": [
                {"name": name, "kind": page["kind"], "base_url": page["base_url"],
                 "unusable": page["unusable"], "in_flight": page["in_flight"],
                 "waiting": page["waiting"], "keys": [
                     {"key": key["key"], "health": key["health"],
                      "resting_until": key["resting_until"], "resting_for": key["resting_for"],
                      "out_reason": key["refused"].get("*", ""),
                      "last_error": key["last_error"],
                      "requests_today": key["requests_today"],
                      "tokens_today": key["tokens_today"], "in_flight": key["in_flight"],
                      "requests": key["requests"], "failures": key["failures"]}
                     for key in page["keys"]]}
                for name, page in status["upstreams"].items()],
            "errors": list(metrics.errors)}

    def prometheus(self, connections_open: int, in_flight: int) -> str:
        """GET /metrics: the counters, and gauges read now."""
        gauges = [
            ("requests_in_flight", "Requests being answered now (some may wait for a "
             "worker).", {}, in_flight),
            ("workers_busy", "Worker threads busy with a request (one whose upstream "
             "thinks, or a stream the event loop relays, holds none).", {}, self.working),
            ("workers", "The most worker threads (server.workers).", {},
             self.config.server["workers"]),
            ("worker_threads", "Worker threads running or starting now, busy or idle.", {},
             self.workers.threads),
            ("upstream_connections_open", "Connections to upstreams, in use or idle.", {},
             self.pool.open),
            ("client_connections_open", "Client connections open.", {}, connections_open),
            ("uptime_seconds", "Seconds since the proxy started.", {},
             round(time.time() - self.started, 3)),
            ("ledger_rows_dropped", "Ledger rows that could not be written.", {},
             self.ledger.dropped if self.ledger else 0)]
        for upstream, key in self._keys():
            for state in ("ok", "resting", "out"):
                gauges.append(("key_state", "Each upstream key or account's state (1: in it).",
                               {"upstream": upstream, "key": key["key"], "state": state},
                               int(key["health"] == state)))
        return prometheus_text(self.metrics, gauges)

    # -- a request's own work: in worker threads (a small one's on the event loop) --------

    def handle(self, ex: Exchange, head: RequestHead, body: bytes, pipe: ChunkPipe,
               on_loop: bool = False) -> None:
        """Answer one request into the pipe; never raises. In a worker thread, or
        (`on_loop`) on the event loop, for as long as nothing would block (IN_A_THREAD;
        see runs_on_loop). A stream whose rest the event loop relays is ended by another
        worker task when the relay is done (_resume)."""
        with self._active_lock:
            self.active += 1
            self.working += 1
        live = self.live
        dialect = CLIENT_DIALECTS[ex.dialect]
        settings = live.config.logging
        detail = DetailLog(settings["log_dir"] or "logs", ex.rid, live.redactor,
                           settings["max_logged_body_bytes"]) if settings["detailed"] else None
        hops = [h.strip() for h in head.header(HOP_HEADER).split(",") if h.strip()]
        rq = Request(live, ex, head, body, dialect, pipe, detail, self.pool,
                     ", ".join(hops + [self.instance]))
        rq.on_loop = on_loop

        def answer() -> "Steps[None]":
            if pipe.gone:   # its client left while it waited for a worker (all were busy)
                raise ClientGone()
            client = ex.client or ANONYMOUS
            if detail:
                detail.stage("1. client request: %s %s" % (head.method, head.target),
                             head.headers, body)
            ex.request_bytes = len(body)
            rq.payload = parse_json_body(body)
            if rq.on_loop and dialect is RESPONSES_DIALECT and \
                    responses_names_stored_items(rq.payload):
                yield IN_A_THREAD, 0.0   # (read as JSON: a key may be spelled in escapes)
            ex.client_model = check_model_name(dialect.request_model(ex, rq.payload))
            if self.instance in hops:
                raise self._loop_error(ex.client_model)
            check_client_model(client, ex.client_model)
            ex.options = dialect.reply_options(head, rq.payload)
            ex.session = session_key(head, rq.payload)
            if ex.action in ("generate", "stream") and dialect.streams(ex, rq.payload):
                rq.out.expect_stream(dialect.stream_content_type(ex))
            if client is not ANONYMOUS and ex.action != "count_tokens":
                if rq.on_loop and self.limits.through_store(client):
                    yield IN_A_THREAD, 0.0
                if pipe.gone:   # it left while it waited for a worker, after either yield
                    raise ClientGone()
                self.limits.admit(client)
                rq.admitted = True
            candidates = [(live.upstreams[name], model) for name, model
                          in route_candidates(live.config, ex.client_model)]
            deliver = yield from failover(rq, candidates, ACTIONS[ex.action])
            deliver()
        self._conclude(rq, answer())

    def _resume(self, rq: Request, relay: UpstreamRelay,
                error: Optional[BaseException]) -> None:
        """A request again, once the loop has relayed its stream: what comes after the
        relay, then its end; never raises."""
        with self._active_lock:
            self.working += 1

        def after_relay() -> None:
            if error is not None:
                raise error
            if relay.after is not None:
                relay.after()
        self._conclude(rq, after_relay)

    def _go_on(self, rq: Request, steps: "Steps[None]") -> None:
        """A request again, once the reply it waited for has bytes, or the time it
        waited for has come (a time-out: the first byte's, a silence's, the total; a
        backoff's end), or the request was abandoned (the read then says so)."""
        with self._active_lock:
            self.working += 1
        self._conclude(rq, steps)

    def runs_on_loop(self, pipe: ChunkPipe, body: bytes) -> bool:
        """Whether the event loop begins this request itself (Proxy.handle, on_loop): a
        small one, where the loop can wait for sockets and nothing is written to a
        detailed log's files. (One that names stored Responses items, whose history may
        be large to expand and convert, goes on in a worker once it is read: answer().)"""
        return pipe.loop_reads and len(body) <= LOOP_BODY_BYTES and \
            not self.live.config.logging["detailed"]

    def _conclude(self, rq: Request, steps: "Union[Steps[None], Callable[[], None]]") -> None:
        """Run one part of a request in this worker (or on the event loop:
        rq.on_loop), its errors answered; then end the request, unless the part handed a
        stream to the event loop (the relay's end resumes the request in a worker: not
        this one, it is free meanwhile), or its steps wait for an upstream's bytes,
        which the loop waits for (they go on once they come: _go_on, in a worker, or on
        the loop for steps it runs), or the loop's steps came to what may block
        (IN_A_THREAD: they go on in a worker)."""
        ex, pipe = rq.ex, rq.pipe
        handed = False
        budget = CARRIER_BUDGET.set(rq.carrier_budget)   # this thread's, for this request
        try:
            if isinstance(steps, types.GeneratorType):
                try:
                    fd, due = next(steps)
                    while fd == IN_A_THREAD and not rq.on_loop:   # in one already
                        fd, due = next(steps)
                except StopIteration:
                    pass
                else:
                    if fd == IN_A_THREAD:
                        rq.leave_the_loop()
                        self._in_a_thread(rq, steps)
                    elif rq.on_loop:
                        pipe.await_bytes(fd, due, functools.partial(self._go_on, rq, steps),
                                         on_loop=True)
                    else:
                        # Before new requests and past the pool's limit, as a relay's end:
                        # a request queued for a thread may be waiting for the key this
                        # one holds; and past close(), which stops no request in flight.
                        pipe.await_bytes(fd, due, functools.partial(
                            self.workers.submit, self._go_on, rq, steps, resuming=True))
                    handed = True
                    return
            else:
                steps()
            relay, rq.out.handed_over = rq.out.handed_over, None
            if relay is not None:
                relay.resume = functools.partial(self._resume_later, rq, relay)
                rq.let_go_of_request()
                pipe.put(relay)
                handed = True
        except ClientGone as gone:
            ex.status, ex.error = abandoned(pipe)
            forget_traceback(gone)
        except ProxyError as err:
            ex.error_kind = kind_of_error(err)
            self._fail(rq, err)
            forget_traceback(err)
        except Exception as exc:   # a bug: answer 500 and keep serving everyone else
            log.exception("%s: internal error", ex.rid)
            self._fail(rq, ProxyError("internal error in gemini-proxy (request %s)" % ex.rid))
            ex.error = "internal error: %s" % exc.__class__.__name__
            ex.error_kind = "internal"
            forget_traceback(exc)
        finally:
            try:
                if not handed:
                    self._end(rq)
            finally:
                with self._active_lock:
                    self.working -= 1
                CARRIER_BUDGET.reset(budget)

    def _in_a_thread(self, rq: Request, steps: "Steps[None]") -> None:
        """From the loop: the rest of a request's steps in a worker, as a new request's
        (within server.workers) unless it holds a key already, or the pool has closed
        (the proxy is stopping, which stops no request in flight). Where the system
        starts no thread at all, asked again GO_ON_RETRY later: late rather than on the
        loop."""
        try:
            self.workers.submit(self._go_on, rq, steps,
                                resuming=bool(rq.held) or self.workers.closed)
        except RuntimeError:
            asyncio.get_running_loop().call_later(GO_ON_RETRY, self._in_a_thread, rq, steps)

    def _resume_later(self, rq: Request, relay: UpstreamRelay,
                      error: Optional[BaseException]) -> None:
        """From the loop (or an abort): the relay is done; the request's rest may block
        (a shared store's round trip), so it goes to a worker: before new requests and
        past the pool's limit, since a request queued for a thread may be waiting for the
        key this one lets go of, and past close()."""
        try:
            self.workers.submit(self._resume, rq, relay, error, resuming=True)
        except RuntimeError:   # no thread could start at all: here, late rather than never
            self._resume(rq, relay, error)

    def _end(self, rq: Request) -> None:
        """Let go of what the request holds, tell the loop it is over, count what it
        spent against its client's limits."""
        ex = rq.ex
        try:
            rq.end()
            if rq.detail:
                rq.detail.close()
        finally:   # whatever a bug above did, the client has its end and the count holds
            rq.pipe.finish()
            try:
                # after the answer's end: a shared store's round trip is not the client's wait
                if rq.admitted:
                    usage = ex.usage
                    self.limits.spent(ex.client or ANONYMOUS,
                                      usage.input_tokens + usage.output_tokens if usage else 0)
            finally:
                with self._active_lock:
                    self.active -= 1

    @staticmethod
    def _fail(rq: Request, error: ProxyError) -> None:
        if rq.pipe.gone:
            rq.ex.status, rq.ex.error = abandoned(rq.pipe)
            return
        try:
            rq.fail(error)
        except ClientGone:
            pass
        except Exception:   # a bug while rendering an error: still an answer, and logged
            log.exception("%s: internal error while answering with an error", rq.ex.rid)
            try:
                rq.fail(ProxyError("internal error in gemini-proxy (request %s)" % rq.ex.rid))
            except ClientGone:
                pass

    def _loop_error(self, model: str) -> ProxyError:
        """The answer to a request that has already been through this proxy: some
        upstream's base_url leads back here (directly, or through other proxies)."""
        try:
            upstream = route_candidates(self.config, model)[0][0]
            where = "; requests for %r go to upstream %r, whose base_url is %s" % (
                model, upstream, display_url(self.config.upstreams[upstream]["base_url"]))
        except ProxyError:
            where = ""
        return ProxyError("loop detected: this request has already passed through this "
                          "proxy, so an upstream's base_url leads back to it%s. Point that "
                          "base_url at the provider itself." % where, status=508)


# ---- 27. Streaming replies ---------------------------------------------------------------
#
# The loop's side of a streamed reply: what its worker put in the pipe, and the rest of
# the stream, which the loop may read from the upstream's socket itself (UpstreamRelay),
# written to the client as it comes, with keep-alives in its silences and the client's
# backpressure felt all the way back to the upstream. The server (section 28) hands a
# stream here once its head is decided.

class SendTimeout(Exception):
    """A client stopped reading for server.send_timeout seconds."""


def _expire(task: "asyncio.Task[Any]", expired: List[bool]) -> None:
    expired.append(True)
    task.cancel()


async def let_go_of_lost_connection(reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
    """After writer.close(), where the connection was lost to an error (the client reset
    it, or a write found it gone): asyncio keeps that error in the reader and in the
    writer's close waiter, each with its traceback, whose frames hold this connection's
    coroutines and the request they relayed. Taken from the waiter (done already: at
    once) and forgotten, it goes with the connection, not when the collector comes by."""
    lost = reader.exception()
    if lost is None:
        return
    try:
        await writer.wait_closed()
    except Exception:   # the same error, raised again here
        pass
    forget_traceback(lost)


async def drain_within(writer: asyncio.StreamWriter, seconds: float) -> None:
    """writer.drain(), but a client that reads nothing for `seconds` is given up on
    (SendTimeout; its worker and upstream call are freed by the caller)."""
    transport = writer.transport
    if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
        await writer.drain()     # not paused: returns at once, no timer needed
        return
    task = asyncio.current_task()
    expired: List[bool] = []
    timer = asyncio.get_running_loop().call_later(seconds, _expire, task, expired)
    try:
        await writer.drain()
    except asyncio.CancelledError:
        if expired:
            raise SendTimeout() from None
        raise
    finally:
        timer.cancel()


# How long a whole stream given up (its client left after its final event) waits for
# its worker's end, which its upstream call stopped makes near: well within the 2 s a
# stopping server gives streams once it has stopped their upstream calls.
WORKER_END_WAIT = 1.5

# What a relayed stream gathers for the client before it writes when its upstream keeps
# sending (it writes at once when it must wait), and turns to other connections.
RELAY_WRITE_BYTES = 64 * 1024


def loop_watches_sockets(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the loop can wait for an upstream socket itself (add_reader): Windows'
    default loop (proactor) cannot, and its streams stay with their threads."""
    return isinstance(loop, asyncio.SelectorEventLoop)


def ends_between_events(data: bytes, chunked: bool) -> bool:
    """Whether what was written of a stream ends where an event does (so that a
    keep-alive or an error event may follow): a line end, then LF or CRLF (lone CRs are
    CRLFs by now: LineEnds), before the chunk's own CRLF when framed in chunks."""
    if not chunked:
        return data.endswith((b"\n\n", b"\n\r\n"))
    return data.endswith(b"\r\n") and data.endswith((b"\n\n", b"\n\r\n"), 0, len(data) - 2)


class UpstreamWatch:
    """What a stream relayed on the loop waits for between its upstream's events: the
    upstream's socket readable (writable in the middle of a TLS read), a deadline, or
    its request abandoned. The socket stays watched from one wait to the next, and the
    deadline's timer stays armed while it is early enough: for a lone event, watching
    the socket anew (two epoll_ctl calls and the selector's bookkeeping) and a timer
    (pushed into and popped from a heap of one a stream) cost a fifth of the loop's
    time. A timer that fires early wakes the relay to find nothing and wait again."""

    def __init__(self, loop: asyncio.AbstractEventLoop, response: "UpstreamResponse",
                 pipe: ChunkPipe):
        self._loop, self._response, self._pipe = loop, response, pipe
        self._fd = response.fileno()
        self._watching = False
        self._waiter: Optional[asyncio.Future] = None
        self._armed = False     # whether the socket's readiness may wake the waiter
        self._timer: Optional[asyncio.TimerHandle] = None

    async def wait(self, seconds: float) -> bool:
        """Until the socket is ready (already ready: the next turn of the loop),
        `seconds` pass, or the request is abandoned; False, without waiting, if it was
        abandoned before. It may end early (a timer armed for an earlier deadline):
        the caller looks again at what it waits for."""
        loop = self._loop
        waiter = loop.create_future()
        if not self._pipe.watch(waiter):
            return False
        deadline = loop.time() + seconds
        if self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._expired)
        writing = self._response.waits_to_write()
        if writing:
            self.pause()
            loop.add_writer(self._fd, self._ready)
        elif not self._watching:
            loop.add_reader(self._fd, self._ready)
            self._watching = True
        self._waiter, self._armed = waiter, False
        loop.call_soon(self._arm, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if writing:
                loop.remove_writer(self._fd)
        return True

    def _arm(self, waiter: asyncio.Future) -> None:
        # The socket's readiness is looked at before the loop runs what is ready: the
        # readiness reported in the turn in which the relay read the socket dry and began
        # to wait is from before that read. Only the next turn's may wake it.
        if self._waiter is waiter:
            self._armed = True

    def _ready(self) -> None:
        if self._armed and self._waiter is not None:
            _wake(self._waiter)

    def _expired(self) -> None:
        self._timer = None
        if self._waiter is not None:
            _wake(self._waiter)

    def pause(self) -> None:
        """Stop watching the socket while the relay waits for something else (a slow
        client): a socket left ready would call _ready at every turn of the loop."""
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def close(self) -> None:
        """Before the relay lets go of the upstream's connection (it may serve another
        request next, in a worker)."""
        self.pause()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class ClientStream:
    """One streamed reply on its way to its client, from its pipe and from its upstream's
    socket (a relay begun: ChunkPipe.begin_relay). The response's head goes out with
    what there is to write first: the first event, which the worker puts with it
    (ChunkPipe.put_head), or a relay's first write; one send, not two. Alone only when
    nothing comes with it (stream_headers_after). A stream the shutdown cuts between
    events ends with the dialect's error and a proper end; one cut in an event, or when
    its client left, gets no end; a whole one (its final event out) gets its end
    whatever ended the request."""

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter,
                 pipe: ChunkPipe, dialect: ClientDialect, ex: Exchange, chunked: bool,
                 limits: Dict[str, Any], head: bytes):
        self._loop, self._writer, self._pipe = loop, writer, pipe
        self._dialect, self._ex, self._chunked = dialect, ex, chunked
        self._frame: Callable[[bytes], bytes] = encode_chunk if chunked else bytes
        self._send_timeout = limits["send_timeout"]
        self._interval = limits["keepalive_interval"] if dialect.keepalive else None
        self._head = head            # until it goes out with what comes first
        self._between_events = True  # where what was written ends (a keep-alive may follow)
        self._last_sent = loop.time()
        # All of the reply but its end written, and then handed to the socket (the
        # transport holding none of it): a client that leaves, or resets the connection,
        # after this had a whole answer.
        self._final_written = False
        self.delivered = False

    async def run(self, items: List[Any], keep_alive: bool) -> bool:
        """Write `items` (what came with the head) and all that follows, to the stream's
        end; whether the connection may serve another request."""
        pipe = self._pipe
        while True:
            ended = None in items
            relay = items.pop() if items and isinstance(items[-1], UpstreamRelay) else None
            data = b"".join(self._frame(item) for item in items if item is not None)
            self._note_end(data)
            if ended or pipe.gone:
                shutdown = pipe.why_gone == "shutdown"
                # A stream cut gets a proper end only after the error event that says
                # so, which cannot follow half an event; one cut when its client left
                # gets none: a client that half-closed and still reads must see a cut,
                # not a whole answer (an SSE reader drops an unfinished event). A whole
                # one (ChunkPipe.whole) is ended, whatever ended the request.
                given_up_well = shutdown and pipe.cut and self._between_events
                if given_up_well:
                    data += self._frame(self._dialect.stream_error(ProxyError(
                        "the proxy is shutting down", status=503), self._ex.options))
                if given_up_well or not pipe.cut:
                    self._send(data, LAST_CHUNK if self._chunked else b"",
                               final=not given_up_well)
                    if pipe.why_gone != "client":   # one that left may have reset it
                        try:
                            await self._drain()
                        except ConnectionError:
                            if not self.delivered:
                                raise
                            keep_alive = False   # it had all of the reply
                if pipe.gone and not pipe.cut:
                    # Whole, given up: its upstream call was stopped, so its worker's end
                    # is near. The access line and the ledger then have all it adds (an
                    # estimate of the usage).
                    await pipe.finished_within(WORKER_END_WAIT)
                return ended and keep_alive and not pipe.gone
            if data or (self._head and relay is None):
                self._send(data, final=pipe.whole_taken)
                await self._drain()
            # Nothing comes after a relay until its request resumes. Not begun, the
            # request was abandoned (a shutdown's end still needs the head: next time round).
            if relay is not None and pipe.begin_relay(relay):
                await self._pull(relay)
            items = await pipe.take(self._interval)
            if items or pipe.gone:
                continue
            if self._keepalive_due():
                self._keepalive()
                await self._drain()

    async def _pull(self, relay: UpstreamRelay) -> None:
        """Pull the rest of a streamed reply here on the loop and write it, the head
        first if it has not gone out, before anything is waited for; waiting for the
        upstream's socket where the relay's output says IDLE (its timeouts kept,
        keep-alives in its silences); settle the relay however it ends."""
        loop, pipe, response, output = self._loop, self._pipe, relay.response, relay.output
        outcome: Optional[BaseException] = ClientGone()
        watch = UpstreamWatch(loop, response, pipe)
        pending: List[bytes] = []
        pending_size = 0

        async def drain() -> None:
            if await self._drain_while_wanted(watch.pause):
                # Not read while the client was slow: the upstream's silence is timed
                # from now, or a client's pause would end its stream as the upstream's.
                response.listening_again()

        def flush() -> None:
            nonlocal pending_size
            data = b"".join(pending)
            pending.clear()
            pending_size = 0
            self._note_end(data)
            final = not self._final_written and relay.past_final_event()
            if final:   # with the write that holds it: no client can have read it and left
                pipe.mark_whole()
            self._send(data, final=final)
        try:
            while not pipe.gone:
                piece = next(output, None)     # None: the end
                if piece is not None and piece is not IDLE:
                    if piece:
                        pending.append(self._frame(piece))
                        pending_size += len(pending[-1])
                    if pending_size < RELAY_WRITE_BYTES:
                        continue
                    flush()
                    await drain()
                    # An upstream that never pauses: the total timeout still holds, and
                    # the other connections get their turn.
                    if response.silence_left() <= 0:
                        relay.after_silence(self._ex.rid)   # raises, unless the reply is whole
                        outcome = None
                        break
                    await asyncio.sleep(0)
                    continue
                if pending or self._head:
                    flush()
                    await drain()
                if piece is None:
                    outcome = None
                    break
                wait = response.silence_left()
                if wait <= 0:
                    relay.after_silence(self._ex.rid)   # raises, unless the reply is whole
                    outcome = None
                    break
                if self._keepalive_due():
                    since = loop.time() - self._last_sent
                    if since >= self._interval:
                        self._keepalive()
                        await drain()
                        continue
                    wait = min(wait, self._interval - since)
                if not await watch.wait(wait):   # abandoned: the worker hears ClientGone
                    break
        except (ConnectionError, SendTimeout):
            raise       # the client's trouble: the caller abandons the request
        except Exception as exc:
            # The upstream's failure, or a bug in a conversion: the worker reports it,
            # after what came before it.
            outcome = exc
            if (pending or self._head) and not pipe.gone:
                flush()
        finally:
            try:
                watch.close()
            finally:
                if outcome is None and relay.after is None:
                    pipe.mark_whole()   # nothing comes after the relay's output
                    self._final_written = True
                    self._check_delivered()
                elif isinstance(outcome, ClientGone) and pipe.whole:
                    outcome = None      # the client left after the final event: a whole reply
                relay.settle(outcome)

    def _note_end(self, data: bytes) -> None:
        if data:
            self._between_events = ends_between_events(data, self._chunked)

    def _send(self, data: bytes, end: bytes = b"", final: bool = False) -> None:
        """Write framed `data` (and the stream's `end`), after the head if it has not
        gone out; `final`: all of the reply has been written with it."""
        self._writer.write(self._head + data + end)
        self._head = b""
        self._ex.response_bytes += len(data)
        self._last_sent = self._loop.time()
        self._final_written = self._final_written or final
        self._check_delivered()

    def _check_delivered(self) -> None:
        # (A transport that lost its connection holds nothing either: not delivered.)
        transport = self._writer.transport
        if self._final_written and not self.delivered and \
                not transport.get_write_buffer_size() and not transport.is_closing():
            self.delivered = True

    def _keepalive_due(self) -> bool:
        """Whether a silence gets keep-alives: where they are sent at all, between two
        events, and not after the final one (only the stream's end may follow it: a
        request that resumes late, on a busy machine, must not add a comment after
        [DONE])."""
        return bool(self._interval) and self._between_events and not self._final_written

    def _keepalive(self) -> None:
        self._writer.write(self._frame(self._dialect.keepalive))
        self._last_sent = self._loop.time()

    async def _drain(self) -> None:
        await drain_within(self._writer, self._send_timeout)
        self._check_delivered()

    async def _drain_while_wanted(self, before_waiting: Callable[[], None]) -> bool:
        """_drain, given up when the request is abandoned meanwhile (a client that sent
        its EOF and reads nothing): the relay is settled and its request ended at once,
        not after send_timeout. before_waiting() is called when it does wait; True if
        it did (or the request is abandoned)."""
        transport = self._writer.transport
        if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
            return False         # not paused: nothing to wait for
        before_waiting()
        abandoned_waiter = self._loop.create_future()
        if not self._pipe.watch(abandoned_waiter):
            return True
        drained = asyncio.ensure_future(self._drain())
        await asyncio.wait([drained, abandoned_waiter], return_when=asyncio.FIRST_COMPLETED)
        if drained.done():
            drained.result()     # SendTimeout, ConnectionError: the caller's to handle
            return True
        drained.cancel()
        await asyncio.gather(drained, return_exceptions=True)
        return True


# ---- 28. Server ------------------------------------------------------------------------------
#
# The event loop: reads requests, answers the proxy's own endpoints, hands the rest to a
# worker thread (section 26) and writes what comes back through its pipe; a stream's
# rest is section 27's. Everything the head decides (the endpoint, the client key) is
# decided before a body is read. The status line is written once an upstream has
# answered 2xx and its first event has arrived, or (a stream whose upstream is slow to
# start) after stream_headers_after.

# The largest body of a refused request (401, 404, 405) that is read and dropped to keep
# its connection open; a larger one closes the connection unread.
REFUSED_BODY_READ = 64 * 1024

# File descriptors kept free for what is not a client connection: upstream connections
# (one per request in flight), log files, the event loop's own.
FD_RESERVE = 64


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (thousands of
    streams need thousands of sockets); the limit now, or 0 where there is none to read."""
    if resource is None:
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):   # macOS refuses more than its own OPEN_MAX
            pass
    return 0 if soft == resource.RLIM_INFINITY else soft


class _ClientConnection:
    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.busy = False


LOCAL_ACTIONS = ("health", "status", "stats", "metrics", "dashboard", "list_models",
                 "get_model")
# The proxy's own pages: not requests the ledger and metrics count (a dashboard's refresh
# and a load balancer's probes would drown what people use the proxy for).
OPERATOR_ACTIONS = frozenset(endpoint.action for endpoint in SERVICE_ENDPOINTS)
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# CORS: what a browser client's script may read of a reply, and the request headers
# allowed when a preflight names none in a form this accepts (a list of header names).
CORS_EXPOSED_HEADERS = "x-request-id, retry-after, content-type"
CORS_ALLOWED_HEADERS = "authorization, content-type, x-api-key, x-goog-api-key, " \
    "anthropic-version, anthropic-beta, openai-organization, openai-project"
_HEADER_NAME = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
CORS_HEADER_LIST = re.compile(r"%s(\s*,\s*%s)*\Z" % (_HEADER_NAME, _HEADER_NAME))


class ProxyServer:
    """asyncio HTTP/1.1 server: keep-alive, Content-Length and chunked bodies, Expect:
    100-continue, limits and timeouts, chunked streaming with backpressure, graceful
    shutdown. Construct, `await start()`, then `await serve_until_stopped()`."""

    def __init__(self, config: Config, environ: Optional[Dict[str, str]] = None,
                 listen_socket: Optional[socket.socket] = None, reuse_port: bool = False,
                 shared_url: str = ""):
        self.config = config
        self.proxy = Proxy(config, environ, shared_url)
        self.port = 0
        # A worker process (section 32) listens on a socket its supervisor made, or on
        # the same port as its siblings (SO_REUSEPORT).
        self._listen_socket = listen_socket
        self._reuse_port = reuse_port
        self._limits = config.server
        self.max_connections = config.server["max_connections"]
        self._server: Optional[asyncio.AbstractServer] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._connections: set = set()
        self._pipes: set = set()          # requests whose worker may still be running
        self._draining = False
        self._stop_requests = 0
        self._last_resource_warning = 0.0
        self._housekeeping: Optional["asyncio.Future[None]"] = None
        self._waker: Optional[LoopWaker] = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._waker = LoopWaker(self._loop)     # every request's pipe wakes the loop through it
        self._stop = asyncio.Event()
        self._loop.set_exception_handler(self._loop_exception)
        limit = raise_open_file_limit()
        room = max(1, (limit - FD_RESERVE) // 2) if limit else 10000
        if self.max_connections > room:
            log.warning("server.max_connections lowered to %d: the open-file limit is %d and "
                        "each connection may need an upstream one too (raise ulimit -n)",
                        room, limit)
        self.max_connections = min(self.max_connections or room, room)
        self.proxy.open_ledger()   # before listening: no client waits while it is read
        if self._listen_socket is not None:
            self._server = await asyncio.start_server(
                self._serve_connection, sock=self._listen_socket, backlog=2048)
        else:
            self._server = await asyncio.start_server(
                self._serve_connection, self.config.server["host"],
                self.config.server["port"], reuse_address=True,
                reuse_port=self._reuse_port or None, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]
        self.proxy.listen_on(self.config.server["host"], self.port)
        self._housekeeping = asyncio.ensure_future(self._housekeep())

    async def _housekeep(self) -> None:
        """Once an hour: detailed logs past logging.keep_days go (in a worker thread)."""
        assert self._loop is not None
        while True:
            settings = self.config.logging
            if settings["keep_days"]:
                await self._loop.run_in_executor(
                    None, prune_detailed_logs, settings["log_dir"] or "logs",
                    settings["keep_days"], time.time())
            await asyncio.sleep(3600)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
        """Running out of file descriptors makes every accept fail: say so once in a
        while, not once per attempt; anything else as asyncio would."""
        exc = context.get("exception")
        if self._draining and isinstance(exc, (OSError, ValueError)):
            # asyncio retries an accept that ran out of descriptors a second later; once
            # the listening socket is closed, each of those retries fails: not news.
            log.debug("while stopping: %s", context.get("message"))
            return
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE,
                                                      errno.ENOBUFS, errno.ENOMEM):
            now = time.monotonic()
            if now - self._last_resource_warning >= 10:
                self._last_resource_warning = now
                log.error("out of %s (%s): new connections wait until some close; raise "
                          "the open-file limit (ulimit -n) or lower server.max_connections",
                          "file descriptors" if exc.errno in (errno.EMFILE, errno.ENFILE)
                          else "memory", exc.strerror)
            return
        loop.default_exception_handler(context)

    @property
    def requests_in_flight(self) -> int:
        """Requests not yet finished: answered, logged and counted (tests wait for 0)."""
        return len(self._pipes)

    @property
    def connections_open(self) -> int:
        return len(self._connections)

    def reload(self, config: Config) -> None:
        """A new configuration for the requests that start from now on (SIGHUP)."""
        self.proxy.reload(config)
        self.config = config

    def request_stop(self) -> bool:
        """Begin a graceful shutdown; safe to call from any thread or a signal handler.
        False when one was already asked for (a second signal means: now)."""
        self._stop_requests += 1
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:   # the loop has closed: stopped already
                pass
        return self._stop_requests == 1

    async def serve_until_stopped(self) -> None:
        assert self._server is not None and self._stop is not None
        await self._stop.wait()
        # (a request whose client has left may still be ending in its worker)
        busy = max(sum(c.busy for c in self._connections), self.proxy.active)
        log.info("stopping: %d requests in flight get up to %gs to finish (a second signal "
                 "exits at once)", busy, self._limits["shutdown_grace"])
        self._draining = True
        self._server.close()
        for connection in list(self._connections):
            if not connection.busy:
                connection.writer.close()
        await self._wait_until_idle(self._limits["shutdown_grace"])
        for pipe in list(self._pipes):   # past the grace period: stop upstream calls too,
            pipe.abort("shutdown")       # each client told so in its own dialect
        await self._wait_until_idle(2.0)
        # Those left have clients that take nothing more, not even the error: what they
        # did not take is dropped, and their handlers end here, rather than cancelled
        # when the loop ends (which Python 3.11.7 logs as an error, traceback and all).
        for connection in list(self._connections):
            connection.writer.transport.abort()
        deadline = time.monotonic() + 1.0
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        await asyncio.sleep(0)
        self.proxy.close()

    async def _wait_until_idle(self, seconds: float) -> None:
        # Idle once no connection is busy and every request has ended in its worker
        # (Proxy.active): a client has its answer before its request's end counts what it
        # spent against its limits, and a process that exited in between would lose that.
        deadline = time.monotonic() + seconds
        while (any(c.busy for c in self._connections) or self.proxy.active) and \
                time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # -- one connection -------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            await self._turn_away(writer)
            return
        connection = _ClientConnection(writer)
        self._connections.add(connection)
        buf = bytearray()
        try:
            while not self._draining:
                try:
                    head = await self._read_head(reader, buf)
                except ClientError as err:
                    await self._send_error(writer, guess_dialect(None), err, None,
                                           keep_alive=False)
                    return
                if head is None:
                    return
                connection.busy = True
                keep_alive = await self._handle_request(reader, writer, buf, head)
                connection.busy = False
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                SendTimeout) as gone:
            forget_traceback(gone)   # a client that leaves, or stops reading, is no error
        except Exception as exc:   # a bug: drop this connection, keep serving the others
            log.exception("connection handler failed")
            forget_traceback(exc)
        finally:
            self._connections.discard(connection)
            writer.close()
            await let_go_of_lost_connection(reader, writer)

    async def _turn_away(self, writer: asyncio.StreamWriter) -> None:
        """A connection over server.max_connections: a 503 and goodbye, before reading
        anything (so in the dialect guess_dialect picks for a request it knows nothing of)."""
        status, headers, body = guess_dialect(None).encode_error(ProxyError(
            "too many connections to this proxy; retry shortly", status=503, retry_after=1))
        writer.write(response_head(status, headers + [
            ("connection", "close"), ("content-length", str(len(body)))]) + body)
        writer.close()

    async def _read_more(self, reader: asyncio.StreamReader, buf: bytearray,
                         timeout: float) -> bool:
        """Read what has arrived into buf; False at EOF. A timer cancels the read when
        the time is up (cheaper per request than asyncio.wait_for's extra task)."""
        assert self._loop is not None
        task = asyncio.current_task()
        expired: List[bool] = []
        timer = self._loop.call_later(timeout, _expire, task, expired)
        try:
            data = await reader.read(65536)
        except asyncio.CancelledError:
            if expired:
                raise asyncio.TimeoutError() from None
            raise
        finally:
            timer.cancel()
        buf.extend(data)
        return bool(data)

    async def _read_head(self, reader: asyncio.StreamReader,
                         buf: bytearray) -> Optional[RequestHead]:
        """The next request head, or None when the client is done (EOF or idle)."""
        limit = self._limits["max_head_bytes"]
        deadline = None
        while True:
            if buf[:2] == b"\r\n":        # blank lines between requests are allowed, but
                deadline = deadline or time.monotonic() + self._limits["head_timeout"]
                while buf[:2] == b"\r\n":  # they start the head clock like any byte
                    del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                if end > limit:
                    raise ClientError("request head over %d bytes" % limit, status=431)
                data = bytes(buf[:end])
                del buf[:end + 4]
                return parse_request_head(data, self._limits["max_header_count"])
            if len(buf) > limit:
                raise ClientError("request head over %d bytes" % limit, status=431)
            if not buf and deadline is None:
                timeout = self._limits["idle_timeout"]
            else:
                deadline = deadline or time.monotonic() + self._limits["head_timeout"]
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise ClientError("the request head took too long", status=408)
            try:
                more = await self._read_more(reader, buf, timeout)
            except asyncio.TimeoutError:
                if deadline is not None:
                    raise ClientError("the request head took too long", status=408) from None
                return None
            if not more:
                return None

    async def _read_body(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         buf: bytearray, head: RequestHead, length: int,
                         welcome: bool = True) -> bytes:
        """The body: no pause longer than body_timeout, all of it within
        body_total_timeout. A client that asked (Expect) is told to send it only when it
        is `welcome`."""
        if welcome and length and head.version == "HTTP/1.1" and \
                head.header("expect").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        deadline = time.monotonic() + self._limits["body_total_timeout"]

        async def more() -> bool:
            timeout = min(self._limits["body_timeout"], deadline - time.monotonic())
            if timeout <= 0:
                raise asyncio.TimeoutError()
            return await self._read_more(reader, buf, timeout)
        try:
            if length >= 0:
                while len(buf) < length:
                    if not await more():
                        raise ClientError("the request body ended early")
                body = bytes(buf[:length])
                del buf[:length]
                return body
            decoder = ChunkedDecoder(self._limits["max_body_bytes"])
            # Joined a read at a time: a bytes object a chunk would hold a body of tiny
            # chunks at some 20 times its size.
            body = bytearray(b"".join(decoder.feed(buf)))
            while not decoder.done:
                if not await more():
                    raise ClientError("the chunked request body ended early")
                body += b"".join(decoder.feed(buf))
            return bytes(body)
        except asyncio.TimeoutError:
            raise ClientError("the request body took too long", status=408) from None

    async def _handle_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              buf: bytearray, head: RequestHead) -> bool:
        """Answer one request; True when the connection may carry another."""
        dialect, endpoint, params, allowed = match_endpoint(head)
        error_dialect = dialect or guess_dialect(head)
        # The request id from random, not os.urandom: on the event loop a call that lets
        # go of the interpreter waits to get it back from busy workers (it need be unique,
        # not secret).
        ex = Exchange("%08x" % random.getrandbits(32), error_dialect.name,
                      endpoint.action if endpoint else "",
                      client_model=params.get("model", "").replace("models/", "", 1))
        keep_alive = head.keep_alive and not self._draining
        ex.reply_headers = self._cors_headers(head)
        try:
            length = request_body_length(head, self._limits["max_body_bytes"])
        except ClientError as err:   # the framing is unknown: answer and close
            return await self._refuse(reader, writer, buf, head, ex, error_dialect, err, 0, False)
        # What the head decides comes first: a body is read only for a request that
        # may be answered (and 100 Continue is sent only then).
        if endpoint is None and head.method == "OPTIONS" and allowed and \
                self.config.server["cors_origins"]:
            return await self._preflight(reader, writer, buf, head, ex, error_dialect, length,
                                         keep_alive)
        if endpoint is None:
            if allowed:
                error = ClientError("%s is not allowed on %s" % (head.method, head.path),
                                    status=405)
                return await self._refuse(reader, writer, buf, head, ex, error_dialect, error,
                                          length, keep_alive, [("allow", ", ".join(allowed))])
            error = ClientError("no endpoint %s %s" % (head.method, head.path), status=404)
            return await self._refuse(reader, writer, buf, head, ex, error_dialect, error, length,
                                      keep_alive)
        if endpoint.admin:
            if not self.proxy.admin_authorized(head):
                # A browser asks for the key (any user name, the key as the password).
                # A page's own fetches are not asked: a wrong key must show on the page,
                # not pop up a login box every refresh.
                error = ClientError("missing or wrong admin key for this proxy", status=401)
                ask = head.header("sec-fetch-mode") in ("", "navigate")
                return await self._refuse(reader, writer, buf, head, ex, error_dialect, error,
                                          length, keep_alive, [(
                                              "www-authenticate",
                                              'Basic realm="gemini-proxy", charset="UTF-8"')]
                                          if ask else [])
        elif not endpoint.open_to_all:
            ex.client = self.proxy.client_of(head)
            if ex.client is None:
                error = ClientError("missing or wrong API key for this proxy", status=401)
                return await self._refuse(reader, writer, buf, head, ex, error_dialect, error,
                                          length, keep_alive)
        try:
            body = await self._read_body(reader, writer, buf, head, length)
        except ClientError as err:   # the framing is lost: answer and close
            await self._send_error(writer, error_dialect, err, ex, keep_alive=False)
            ex.error = err.message
            self._access(head, ex, err.status)
            return False
        if endpoint.action in LOCAL_ACTIONS or (dialect is not None and
                                                endpoint.action in dialect.local_actions):
            try:
                status, headers, page = await self._local(endpoint.action, dialect, ex, head,
                                                          params)
            except ClientError as err:
                ex.error = err.message
                await self._send_error(writer, error_dialect, err, ex, keep_alive,
                                       head_only=head.method == "HEAD")
                self._access(head, ex, err.status)
                return keep_alive
            return await self._send_local(writer, status, headers, page, keep_alive, ex, head)
        assert dialect is not None
        proxying = self._proxy_request(reader, writer, buf, head, body, ex, keep_alive)
        del body   # its request holds it while it needs it (see Request.let_go_of_request)
        return await proxying

    async def _local(self, action: str, dialect: Optional[ClientDialect], ex: Exchange,
                     head: RequestHead, params: Dict[str, str]
                     ) -> Tuple[int, List[Tuple[str, str]], bytes]:
        """The endpoints the proxy answers itself, from what it knows: (status, headers,
        body)."""
        status, payload = 200, None
        if dialect is not None and action in dialect.local_actions:
            # A stored reply is what the proxy made of an upstream's: see generate.
            status, payload = dialect.local_actions[action](head, params)
            return status, [("content-type", "application/json")], \
                self.proxy.live.made_redactor.bytes(json_bytes(payload))
        elif action == "health":
            status, payload = self.proxy.health()
        elif action == "status":
            payload = dict(self.proxy.status(), connections={
                "open": len(self._connections), "max": self.max_connections})
        elif action == "stats":
            clients = self.proxy.config.clients
            # The shared store is asked in a thread: the loop never waits on a socket.
            usage = await self._loop.run_in_executor(
                None, self.proxy.limits.snapshots, clients) if self.proxy.shared else \
                self.proxy.limits.snapshots(clients)
            payload = self.proxy.stats(len(self._connections), usage)
        elif action == "metrics":
            return 200, [("content-type", PROMETHEUS_CONTENT_TYPE)], self.proxy.prometheus(
                len(self._connections), len(self._pipes)).encode("utf-8")
        elif action == "dashboard":
            return 200, DASHBOARD_HEADERS, DASHBOARD_PAGE
        elif action == "list_models":
            assert dialect is not None
            allowed = ex.client or ANONYMOUS
            payload = dialect.list_models([m for m in routable_models(self.proxy.config)
                                           if allowed.allows(m)])
        else:
            assert dialect is not None
            check_client_model(ex.client or ANONYMOUS, check_model_name(ex.client_model))
            payload = dialect.get_model(ex.client_model)
        return status, [("content-type", "application/json")], json_bytes(payload)

    def _cors_headers(self, head: RequestHead) -> List[Tuple[str, str]]:
        """What a reply to a browser's request carries when its origin is allowed."""
        origins = self.config.server["cors_origins"]
        if not origins:
            return []
        # With a list, the reply depends on the origin asked from: a cache must know.
        vary = [] if "*" in origins else [("vary", "origin")]
        origin = head.header("origin")
        if not origin or ("*" not in origins and origin not in origins):
            return vary
        return [("access-control-allow-origin", "*" if "*" in origins else origin),
                ("access-control-expose-headers", CORS_EXPOSED_HEADERS)] + vary

    async def _preflight(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         buf: bytearray, head: RequestHead, ex: Exchange,
                         dialect: ClientDialect, length: int, keep_alive: bool) -> bool:
        """A browser's CORS preflight (OPTIONS): which methods and headers the real
        request may use, asked without credentials, so answered without a key."""
        if not any(name == "access-control-allow-origin" for name, _ in ex.reply_headers):
            error = ClientError("origin %r may not call this proxy (server.cors_origins)"
                                % clip(head.header("origin"), 100), status=403)
            return await self._refuse(reader, writer, buf, head, ex, dialect, error, length,
                                      keep_alive)
        asked = head.header("access-control-request-headers")
        headers = [("access-control-allow-methods", "GET, POST, DELETE, OPTIONS"),
                   ("access-control-allow-headers",
                    asked if len(asked) <= 2000 and CORS_HEADER_LIST.match(asked)
                    else CORS_ALLOWED_HEADERS),
                   ("access-control-max-age", "600")]
        if length:
            await self._read_body(reader, writer, buf, head, length, welcome=False)
        await self._write(writer, 204, headers, b"", keep_alive, ex=ex)
        self._access(head, ex, 204)
        return keep_alive

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      buf: bytearray, head: RequestHead, ex: Exchange, dialect: ClientDialect,
                      error: ProxyError, length: int, keep_alive: bool,
                      extra_headers: Iterable[Tuple[str, str]] = ()) -> bool:
        """Answer a request decided by its head alone. A small body is read and dropped,
        so the connection can carry the next request; a larger or chunked one is never
        read: the answer says close, and what the client still sends is dropped for a
        moment so that it can read the answer."""
        ex.error = error.message
        waits_for_continue = head.header("expect").lower() == "100-continue"
        keep_alive = keep_alive and 0 <= length <= REFUSED_BODY_READ and not (
            length and waits_for_continue)
        if keep_alive and length:
            try:
                await self._read_body(reader, writer, buf, head, length, welcome=False)
            except ClientError:
                keep_alive = False
        await self._send_error(writer, dialect, error, ex, keep_alive, extra_headers,
                               head_only=head.method == "HEAD")
        self._access(head, ex, error.status)
        if not keep_alive:
            await self._linger(reader, writer)
        return keep_alive

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Closing a socket with unread data makes the kernel reset the connection, and
        the client may lose the answer it was sent: read and drop a little first."""
        assert self._loop is not None
        if writer.can_write_eof():
            try:
                writer.write_eof()
            except OSError:
                return
        deadline = self._loop.time() + 1.0
        dropped = 0
        while dropped < MiB and self._loop.time() < deadline:
            scratch = bytearray()
            try:
                if not await self._read_more(reader, scratch, deadline - self._loop.time()):
                    return
            except (asyncio.TimeoutError, ConnectionError):
                return
            dropped += len(scratch)

    async def _proxy_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             buf: bytearray, head: RequestHead, body: bytes, ex: Exchange,
                             keep_alive: bool) -> bool:
        """Hand the request to a worker thread and write what comes back through the pipe,
        watching the socket meanwhile: a client that leaves stops the upstream call."""
        assert self._loop is not None
        dialect = CLIENT_DIALECTS[ex.dialect]
        pipe = ChunkPipe(self._loop, self._limits["stream_queue_chunks"], self._waker,
                         loop_reads=loop_watches_sockets(self._loop),
                         loop_thread=threading.get_ident())
        self._pipes.add(pipe)
        watcher: List[asyncio.Future] = []
        start_watching: Optional[asyncio.TimerHandle] = None
        slot = ex.client if ex.client not in (None, ANONYMOUS) and \
            ex.action != "count_tokens" else None
        stream: Optional[ClientStream] = None
        try:
            if slot is not None:   # waited for here, holding no worker; the client watched
                if slot.max_concurrency:
                    watcher.append(asyncio.ensure_future(
                        self._watch_client(reader, buf, pipe)))
                try:
                    if not await self.proxy.slots.acquire(slot, watcher[0] if watcher
                                                          else None):
                        slot = None
                        pipe.abort()
                        ex.status, ex.error = abandoned(pipe)
                        return False
                except ClientError as err:
                    slot = None
                    ex.status, ex.error, ex.error_kind = err.status, err.message, err.reason
                    await self._send_error(writer, dialect, err, ex, keep_alive)
                    return keep_alive
            if self.proxy.runs_on_loop(pipe, body):
                self.proxy.handle(ex, head, body, pipe, on_loop=True)
            else:
                self.proxy.workers.submit(self.proxy.handle, ex, head, body, pipe)
            del body   # as in _handle_request
            if not watcher:   # most answers take no time; a slow one is watched after a moment
                start_watching = self._loop.call_later(
                    CLIENT_WATCH_DELAY, lambda: watcher.append(
                        asyncio.ensure_future(self._watch_client(reader, buf, pipe))))
            items = await self._first_items(pipe)
            if not items:   # abandoned before anything was sent
                ex.status, ex.error = abandoned(pipe)
                await self._broken_off_counted(pipe, ex)
                if pipe.why_gone == "shutdown":
                    await self._send_error(writer, dialect, ProxyError(ex.error, status=503),
                                           ex, keep_alive=False)
                return False
            first: ResponseHead = items[0]
            ex.first_byte = time.monotonic() - ex.started
            headers = first.headers + [("x-request-id", ex.rid)]
            if first.body is not None:
                await self._write(writer, first.status, headers, first.body, keep_alive,
                                  ex=ex)
                return keep_alive
            ex.status = first.status
            # HTTP/1.0 has no chunked encoding: its stream ends where the connection does.
            chunked = head.version == "HTTP/1.1"
            keep_alive = keep_alive and chunked
            # x-accel-buffering: nginx in front passes each event on at once, whatever
            # its proxy_buffering says.
            headers += ex.reply_headers + [("x-accel-buffering", "no")] + (
                [("transfer-encoding", "chunked")] if chunked else []) + \
                [("connection", "keep-alive" if keep_alive else "close")]
            stream = ClientStream(self._loop, writer, pipe, dialect, ex, chunked, self._limits,
                                  response_head(first.status, headers))
            keep_alive = await stream.run(items[1:], keep_alive)
            # The client left, or the proxy stopped, before the reply's end, or with some
            # of it still to hand to the socket.
            if pipe.cut or (pipe.gone and not stream.delivered):
                ex.status, ex.error = abandoned(pipe)
            await self._broken_off_counted(pipe, ex)
            return keep_alive
        except ConnectionError as gone:   # the client left while we wrote
            forget_traceback(gone)
            pipe.abort()
            if stream is not None and stream.delivered:   # but after all of the reply
                await pipe.finished_within(WORKER_END_WAIT)
            else:
                ex.status, ex.error = 499, ex.error or "the client closed the connection"
                await self._broken_off_counted(pipe, ex)
            return False
        except SendTimeout as slow:
            forget_traceback(slow)
            pipe.abort("send_timeout")
            ex.status = 499
            ex.error = "the client read nothing for %gs (send_timeout); dropped" \
                % self._limits["send_timeout"]
            writer.transport.abort()
            await self._broken_off_counted(pipe, ex)
            return False
        except BaseException:   # a bug here, or cancelled: the worker must not wait on
            pipe.abort()        # a loop that has stopped listening
            raise
        finally:
            if start_watching is not None:
                start_watching.cancel()
            for task in watcher:
                task.cancel()
                # Let it unwind before the connection reads again: a StreamReader takes
                # one reader at a time.
                await asyncio.gather(task, return_exceptions=True)
            if slot is not None:
                self.proxy.slots.release(slot)
            try:
                self._access(head, ex, ex.status)
            finally:   # after its log line and ledger row: no longer "in flight" means done
                self._pipes.discard(pipe)

    @staticmethod
    async def _broken_off_counted(pipe: ChunkPipe, ex: Exchange) -> None:
        """A stream broken off is counted as far as it came at its worker's end
        (Exchange.settle_usage), which is near (its upstream call has ended, or been
        stopped): waited for, so that the access line and the ledger have it."""
        if ex.usage_so_far is not None:
            await pipe.finished_within(WORKER_END_WAIT)

    async def _first_items(self, pipe: ChunkPipe) -> List[Any]:
        """The first things the worker sent, the response head first; a stream's head
        alone when its upstream has been silent for stream_headers_after seconds; []
        when the request was abandoned first."""
        wait = self._limits["stream_headers_after"] or None
        items = await pipe.take(wait)
        while not items and not pipe.gone:
            # Looked at again each `wait`: a worker that started late (all were busy)
            # says only then that its reply will be a stream.
            early = pipe.commit_early()
            if early is not None:
                return [early]
            items = await pipe.take(wait)
        # A worker ends without a head only when its request was abandoned.
        return items if items and items[0] is not None else []

    async def _watch_client(self, reader: asyncio.StreamReader, buf: bytearray,
                            pipe: ChunkPipe) -> None:
        """While a response is in flight: EOF from the client means it left. Bytes that
        arrive are the next pipelined request; keep them."""
        try:
            while len(buf) <= self._limits["max_head_bytes"] + self._limits["max_body_bytes"]:
                data = await reader.read(65536)
                if not data:
                    pipe.abort()
                    return
                buf.extend(data)
        except ConnectionError:
            pipe.abort()

    async def _write(self, writer: asyncio.StreamWriter, status: int,
                     headers: List[Tuple[str, str]], body: bytes, keep_alive: bool,
                     head_only: bool = False, ex: Optional[Exchange] = None) -> None:
        headers = headers + (ex.reply_headers if ex is not None else []) + [
            ("content-length", str(len(body))),
            ("connection", "keep-alive" if keep_alive else "close")]
        writer.write(response_head(status, headers) + (b"" if head_only else body))
        if ex is not None and not head_only:
            ex.response_bytes += len(body)
        await drain_within(writer, self._limits["send_timeout"])

    async def _send_local(self, writer: asyncio.StreamWriter, status: int,
                          headers: List[Tuple[str, str]], body: bytes, keep_alive: bool,
                          ex: Exchange, head: RequestHead) -> bool:
        await self._write(writer, status, headers + [("x-request-id", ex.rid)], body,
                          keep_alive, head.method == "HEAD", ex)
        self._access(head, ex, status)
        return keep_alive

    async def _send_error(self, writer: asyncio.StreamWriter, dialect: ClientDialect,
                          error: ProxyError, ex: Optional[Exchange], keep_alive: bool,
                          extra_headers: Iterable[Tuple[str, str]] = (),
                          head_only: bool = False) -> None:
        status, headers, body = dialect.encode_error(error)
        headers = headers + list(extra_headers)
        if ex is not None:
            headers = headers + [("x-request-id", ex.rid)]
        try:
            await self._write(writer, status, headers, body, keep_alive, head_only, ex)
        except (ConnectionError, SendTimeout):
            pass

    def _access(self, head: RequestHead, ex: Exchange, status: int) -> None:
        """The one point where every request is finished: its ledger row and metrics,
        and one log line: method, path, status, model -> upstream/model, stream,
        pass-through or converted, request id, client, duration, time to the response
        head, tokens (~: estimated), attempts, and why it failed."""
        duration = time.monotonic() - ex.started
        if ex.action not in OPERATOR_ACTIONS and head.method != "OPTIONS":
            if ex.client is None:   # whoever it was: the model it named is no label
                ex.client_model = ""
            self.proxy.record(ex, status, time.time(), duration)
        if not self.config.logging["access_log"]:
            return
        usage = ex.usage
        tokens = "" if usage is None else " tokens=%s%d+%d" % (
            "~" if usage.estimated else "", usage.input_tokens, usage.output_tokens)
        route = " %s -> %s/%s %s" % (ex.client_model, ex.upstream, ex.upstream_model,
                                     "pass" if ex.passthrough else "conv") \
            if ex.upstream else ""
        named = ex.client is not None and ex.client is not ANONYMOUS
        access_log.info("%s %s %d%s%s rid=%s%s %.3fs%s%s%s%s", head.method,
                        self.proxy.live.redactor.names(head.path), status, route,
                        " stream" if ex.stream else "", ex.rid,
                        " client=" + ex.client.name if named else "", duration,
                        " ttfb=%.3fs" % ex.first_byte if ex.first_byte else "", tokens,
                        " attempts=%d" % ex.attempts if ex.attempts > 1 else "",
                        " error=%r" % clip(ex.error, 200) if ex.error else "")


# ---- 29. Google login ------------------------------------------------------------------------
#
# `login` adds a Google account to a code-assist upstream: the browser flow with a loopback
# redirect (Gemini CLI's), or, on a box without a browser, the flow where the user pastes
# the code Google shows (PKCE). The account is written into the proxy's accounts directory
# and set up with Code Assist at once, so that a login that cannot work says so now.
# `accounts` lists the accounts: from a running proxy's /status when there is one (their
# live state), else from the files.

def code_assist_spec(config: Config, name: str) -> Tuple[str, Dict[str, Any]]:
    """(name, settings) of the code-assist upstream to log in to or list: the one named,
    else the first configured, else one with every default."""
    upstreams = {n: s for n, s in config.upstreams.items() if s["kind"] == "code-assist"}
    if name:
        if name not in upstreams:
            raise ConfigError("no code-assist upstream named %r%s" % (
                name, _did_you_mean(name, upstreams)))
        return name, upstreams[name]
    if upstreams:
        return next(iter(upstreams.items()))
    spec = dict(copy.deepcopy(UPSTREAM_DEFAULTS), kind="code-assist",
                base_url=DEFAULT_BASE_URLS["code-assist"])
    return "google", spec


def account_file_name(email: str, refresh_token: str) -> str:
    """One file per account, named by its email (what a person looks for), as a plain
    visible name in the accounts directory whatever the email holds."""
    name = re.sub(r"[^A-Za-z0-9@._+-]", "_", email).lstrip(".")[:100]
    return (name or fingerprint(refresh_token)[4:]) + ".json"


class _LoginCallback:
    """The loopback end of the browser flow, for http.server's request handler (the
    class is made by browser_login, which imports http.server): Google sends the browser
    here with ?code= (or ?error=) once the user has chosen; the first such request ends
    the wait."""

    timeout = 10    # a connection that says nothing (a browser's preconnect) is let go

    def do_GET(self) -> None:
        server = self.server
        path, _, query = self.path.partition("?")
        fields = dict(urllib.parse.parse_qsl(query))
        outcome = None
        if path != "/oauth2callback":
            self._page(404, "Not the login callback.")
        elif fields.get("error"):
            outcome = ("error", "Google said %s: %s" % (
                fields["error"], fields.get("error_description", "")))
            self._page(400, "Login failed: %s. You can close this tab." % fields["error"])
        elif not hmac.compare_digest(fields.get("state", "").encode("utf-8"),
                                     server.state.encode("ascii")):   # type: ignore
            outcome = ("error", "the answer to the login did not carry this login's state "
                       "(another login, or a forged request); try again")
            self._page(400, "State mismatch. Possible CSRF attack; the login stopped.")
        elif not fields.get("code"):
            self._page(400, "No code in the callback.")
        else:
            outcome = ("code", fields["code"])
            self._page(200, "Signed in. You can close this tab and go back to the terminal.")
        if outcome is not None and server.outcome is None:     # type: ignore
            server.outcome = outcome    # type: ignore  # after the page: the login ends now

    def _page(self, status: int, text: str) -> None:
        import html
        body = ("<!doctype html><meta charset=utf-8><title>gemini-proxy login</title>"
                "<p style='font:16px sans-serif;margin:3em'>%s</p>" % html.escape(text)
                ).encode("utf-8")
        self.send_response(status)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:   # the code is in the query: log nothing
        pass


def browser_login(endpoints: GoogleEndpoints, port: int, say: Callable[[str], None],
                  open_url: Callable[[str], bool]) -> Tuple[str, str, str]:
    """The browser flow: (code, redirect_uri, "") once Google has sent the browser back
    to a listener on 127.0.0.1 (Google requires the loopback literal for desktop apps).
    open_url opens the consent page in a browser (False: there is none here)."""
    import http.server

    class Handler(_LoginCallback, http.server.BaseHTTPRequestHandler):
        pass
    # A thread per connection: one that says nothing (a browser's preconnect) must not
    # keep Google's redirect waiting.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.timeout = 1.0
    server.state = secrets.token_hex(32)    # type: ignore[attr-defined]
    server.outcome = None                   # type: ignore[attr-defined]
    redirect = "http://127.0.0.1:%d/oauth2callback" % server.server_address[1]
    url = google_auth_url(endpoints.auth_url, endpoints.client_id, redirect, server.state)
    try:
        say("Open this address in a browser to sign in with Google:\n\n  %s\n" % url)
        if not open_url(url):
            say("(no browser could be started here: open the address on any machine "
                "whose port %d reaches this one, e.g. through `ssh -L %d:127.0.0.1:%d`, "
                "or log in with --no-browser)" % ((server.server_address[1],) * 3))
        say("Waiting for Google to send the browser back (%d minutes at most)..."
            % (LOGIN_TIMEOUT // 60))
        give_up = time.monotonic() + LOGIN_TIMEOUT
        while server.outcome is None and time.monotonic() < give_up:
            server.handle_request()
    finally:
        server.server_close()
    if server.outcome is None:
        raise ConfigError("no answer from the browser within %d minutes" %
                          (LOGIN_TIMEOUT // 60))
    kind, value = server.outcome
    if kind == "error":
        raise ConfigError("login failed: " + value)
    return value, redirect, ""


def paste_login(endpoints: GoogleEndpoints, say: Callable[[str], None],
                ask: Callable[[str], str]) -> Tuple[str, str, str]:
    """The flow for a box without a browser: Google shows the code on its own page and
    the user pastes it here; PKCE proves the code was asked for by this login."""
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(64)).decode("ascii").rstrip("=")
    url = google_auth_url(endpoints.auth_url, endpoints.client_id, GOOGLE_PASTE_REDIRECT,
                          secrets.token_hex(32), verifier)
    say("Open this address in a browser on any machine and sign in with Google:\n\n  %s\n"
        % url)
    for _ in range(2):
        code = ask("Enter the authorization code: ").strip()
        if code:
            return code, GOOGLE_PASTE_REDIRECT, verifier
    raise ConfigError("no authorization code was entered")


def login(config: Config, upstream: str, no_browser: bool, port: int,
          environ: Dict[str, str], say: Callable[[str], None] = print,
          ask: Callable[[str], str] = input,
          open_url: Optional[Callable[[str], bool]] = None) -> GoogleAccount:
    """The login command: a new account (or a new login for a known one) in the
    accounts directory, set up with Code Assist."""
    name, spec = code_assist_spec(config, upstream)
    endpoints = GoogleEndpoints.of(spec, environ)
    if no_browser:
        code, redirect, verifier = paste_login(endpoints, say, ask)
    else:
        if open_url is None:
            import webbrowser   # here: only a login needs it, and it costs start-up time
            open_url = webbrowser.open
        code, redirect, verifier = browser_login(endpoints, port, say, open_url)
    form = {"code": code, "client_id": endpoints.client_id,
            "client_secret": endpoints.client_secret, "redirect_uri": redirect,
            "grant_type": "authorization_code"}
    if verifier:
        form["code_verifier"] = verifier
    try:
        reply = token_call(endpoints, form)
    except (TokenRefused, UpstreamError) as exc:
        raise ConfigError("Google did not accept the login: %s" % exc) from None
    if not text_of(reply.get("refresh_token")):
        raise ConfigError("Google gave no refresh token, so the login could not outlive the "
                          "hour; remove the app's access at myaccount.google.com and log in "
                          "again")
    email = id_token_email(reply.get("id_token"))
    if not email:
        try:
            status, info = google_call(endpoints, endpoints.userinfo_url,
                                       token=reply["access_token"])
            email = text_of(fields_of(info).get("email")) if status == 200 else ""
        except UpstreamError as exc:
            say("(could not ask Google for the account's email: %s)" % exc.message)
    state_dir = state_directory(config.server["state_dir"], environ)
    path = os.path.join(accounts_directory(state_dir),
                        account_file_name(email, reply["refresh_token"]))
    credential = GoogleCredential(path, reply["refresh_token"], reply["access_token"],
                                  reply["expires_at"], email)
    account = GoogleAccount(credential, endpoints, ProjectBook.at(project_book_path(
        state_dir)), writes_back=True, project=spec["project"])
    try:
        account.save()
    except OSError as exc:
        raise ConfigError("signed in as %s, but cannot save the account to %s: %s" % (
            email or "(no email)", path, exc.strerror or exc)) from None
    say("Signed in as %s; saved to %s" % (email or "(an account with no email)", path))
    account.project = ""        # a new login is set up again, now, to say what it can do
    try:
        account.setup()
        say("Code Assist project: %s (%s)" % (account.project, account.tier or "tier unknown"))
    except UpstreamError as exc:
        say("The account is saved, but Code Assist cannot use it yet: %s" % exc.message)
    if spec["credentials"] and os.path.abspath(accounts_directory(state_dir)) not in \
            [os.path.abspath(os.path.expanduser(c)) for c in spec["credentials"]]:
        say("Note: upstream %r lists its own credentials, without %s; add that directory "
            "to them to use this account." % (name, accounts_directory(state_dir)))
    say("A running proxy takes the account at its next reload (kill -HUP) or restart.")
    return account


def account_rows(config: Config, upstream: str, environ: Dict[str, str]
                 ) -> List[Dict[str, Any]]:
    """The accounts command's rows: each account's email, project, tier, state and
    today's requests and tokens, live from a running proxy when one answers."""
    name, spec = code_assist_spec(config, upstream)
    state_dir = state_directory(config.server["state_dir"], environ)
    answered, live = running_status(config)
    keys = {k.get("key"): k for k in objects_of(fields_of(fields_of(live.get("upstreams")).get(
        name)).get("keys"))}
    rows = []
    for path, account in load_google_accounts(spec, state_dir, environ, {}).items():
        seen = keys.get(account.name)
        if seen is None:
            state = {"": "not checked (no proxy running)",
                     "refused": "not checked (the running proxy refused to show its "
                                "status: server.api_keys)"}.get(
                answered, "not in the running proxy yet (it takes new accounts at a "
                          "reload: kill -HUP)")
            seen = {}
        elif seen.get("state") == "refused":
            state = "out: " + "; ".join(map(str, fields_of(seen.get("refused")).values()))
        elif seen.get("state") == "cooling":
            state = "resting until " + ", ".join(
                "%s (%s)" % (until, scope) if scope != "*" else str(until)
                for scope, until in sorted(fields_of(seen.get("cooling_until")).items()))
        else:
            state = "ok"
        rows.append({"email": account.credential.email or account.name, "file": path,
                     "project": text_of(seen.get("project")) or account.project or
                     account.requested_project,
                     "tier": text_of(seen.get("tier")) or account.tier, "state": state,
                     "requests_today": tokens_of(seen.get("requests_today")),
                     "tokens_today": tokens_of(seen.get("tokens_today"))})
    return rows


def running_status(config: Config) -> Tuple[str, Dict[str, Any]]:
    """GET /status of the proxy this configuration runs: ("ok", the page); ("refused",
    {}) when it wants a key the configuration does not hold; ("", {}) when none answers."""
    host = config.server["host"]
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    headers = {"authorization": "Bearer " + config.server["api_keys"][0]} \
        if config.server["api_keys"] else {}
    import http.client
    connection = http.client.HTTPConnection(host, config.server["port"], timeout=5)
    try:
        connection.request("GET", "/status", headers=headers)
        response = connection.getresponse()
        if response.status in (401, 403):
            return "refused", {}
        payload = json.loads(response.read()) if response.status == 200 else {}
    except (OSError, ValueError, RecursionError, http.client.HTTPException):
        return "", {}
    finally:
        connection.close()
    return ("ok", payload) if isinstance(payload, dict) else ("", {})


def print_accounts(rows: List[Dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no Google accounts; add one with `python3 gemini_proxy.py login`")
        return
    for row in rows:
        print("%s\n  project %s (%s)\n  %s\n  today: %d requests, %d tokens\n  file %s" % (
            row["email"], row["project"] or "not known yet", row["tier"] or "tier unknown",
            row["state"], row["requests_today"], row["tokens_today"], row["file"]))


# ---- 30. Dashboard page ----------------------------------------------------------------------
#
# GET /dashboard: one page, nothing fetched from elsewhere (it works on an air-gapped box),
# that draws GET /stats every few seconds. The browser asks for the admin key (HTTP Basic:
# any user name, the key as the password) and sends it again with each /stats request.

DASHBOARD_HEADERS = [
    ("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store"),
    ("content-security-policy", "default-src 'none'; script-src 'unsafe-inline'; "
     "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer")]

DASHBOARD_PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>gemini-proxy dashboard</title>
<style>
:root { --bg: #f5f6f8; --fg: #1d2127; --muted: #69727d; --card: #fff; --line: #e2e5e9;
  --ok: #1a7f37; --ok-bg: #dcf3e3; --rest: #9a5b00; --rest-bg: #fdefd6; --out: #b42318;
  --out-bg: #fde4e1; --accent: #2f6fdb; --on-accent: #fff; --grid: #eceef1; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0f1216; --fg: #e4e7eb; --muted: #8e98a3; --card: #181c22; --line: #2a3038;
    --ok: #5fd382; --ok-bg: #16331f; --rest: #f2b45a; --rest-bg: #3a2a10; --out: #ff8a80;
    --out-bg: #3d1815; --accent: #6ea2ff; --on-accent: #0b1220; --grid: #232931; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 14px/1.4 system-ui, -apple-system,
  "Segoe UI", Roboto, sans-serif; font-variant-numeric: tabular-nums; }
header { display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: baseline; padding: 12px 16px; }
header h1 { font-size: 18px; margin: 0; }
.muted { color: var(--muted); }
main { padding: 0 16px 24px; max-width: 1400px; margin: 0 auto; }
#banner { margin: 0 16px 12px; padding: 10px 14px; border-radius: 8px; font-weight: 600;
  background: var(--out-bg); color: var(--out); border: 1px solid var(--out); }
#note { margin: 0 16px 12px; color: var(--rest); }
[hidden] { display: none !important; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(135px, 1fr)); gap: 10px; }
.tile, .card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
.tile { padding: 10px 12px; }
.tile .label { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.tile .value { font-size: 26px; font-weight: 650; margin-top: 2px; }
.tile .sub { font-size: 12px; color: var(--muted); }
.tile.bad .value { color: var(--out); }
.card { margin-top: 14px; padding: 12px; }
h2 { font-size: 15px; margin: 0 0 8px; }
.bar { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; justify-content: space-between; }
.seg { display: inline-flex; border: 1px solid var(--line); border-radius: 7px; overflow: hidden; }
.seg button { font: inherit; font-size: 13px; border: 0; padding: 4px 10px; cursor: pointer;
  background: transparent; color: var(--fg); }
.seg button.on { background: var(--accent); color: var(--on-accent); }
svg#chart { display: block; width: 100%; height: 240px; margin-top: 8px; }
svg text { fill: var(--muted); font-size: 11px; }
svg .empty { font-size: 14px; }
#legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; margin-top: 6px; }
#legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); white-space: nowrap;
  vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; }
td.wrap { white-space: normal; min-width: 14em; max-width: 30em; overflow-wrap: anywhere; }
td .note { white-space: normal; max-width: 16em; font-size: 12px; }
tr.first td { border-top: 2px solid var(--line); }
.scroll.tall { max-height: 460px; overflow-y: auto; }
.tall th { position: sticky; top: 0; background: var(--card); }
td.empty { color: var(--muted); text-align: center; padding: 14px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.badge.ok { color: var(--ok); background: var(--ok-bg); }
.badge.resting { color: var(--rest); background: var(--rest-bg); }
.badge.out { color: var(--out); background: var(--out-bg); }
.hot { color: var(--out); font-weight: 600; }
.meter { display: inline-block; width: 54px; height: 6px; border-radius: 3px; background: var(--grid);
  margin-left: 6px; vertical-align: middle; overflow: hidden; }
.meter b { display: block; height: 100%; background: var(--accent); }
.meter b.hot { background: var(--out); }
@media (max-width: 600px) { main { padding: 0 8px 16px; } header { padding: 10px 8px; }
  .tile .value { font-size: 21px; } .tiles { grid-template-columns: repeat(2, 1fr); } }
</style>
</head>
<body>
<header>
  <h1>gemini-proxy</h1>
  <span class="muted" id="meta"></span>
  <span class="muted">updated <span id="updated">never</span></span>
</header>
<div id="banner" role="alert" hidden></div>
<div id="note" hidden></div>
<main>
  <section class="tiles" aria-label="now">
    <div class="tile"><div class="label">Requests / min</div><div class="value" id="now-rpm">&ndash;</div></div>
    <div class="tile"><div class="label">Tokens / min</div><div class="value" id="now-tpm">&ndash;</div></div>
    <div class="tile" id="tile-errors"><div class="label">Error rate</div><div class="value" id="now-error-rate">&ndash;</div>
      <div class="sub">last minute</div></div>
    <div class="tile"><div class="label">Latency p50</div><div class="value" id="now-p50">&ndash;</div>
      <div class="sub">last 5 min</div></div>
    <div class="tile"><div class="label">Latency p95</div><div class="value" id="now-p95">&ndash;</div>
      <div class="sub">last 5 min</div></div>
    <div class="tile"><div class="label">In flight</div><div class="value" id="now-in-flight">&ndash;</div>
      <div class="sub" id="now-workers"></div></div>
    <div class="tile"><div class="label">Requests today</div><div class="value" id="today-requests">&ndash;</div>
      <div class="sub" id="today-errors"></div></div>
    <div class="tile"><div class="label">Tokens today</div><div class="value" id="today-tokens">&ndash;</div>
      <div class="sub" id="today-split"></div></div>
  </section>

  <section class="card">
    <div class="bar">
      <h2 id="chart-title">Traffic</h2>
      <div>
        <span class="seg" data-control="range"><button data-value="hour" class="on">1 hour</button><button data-value="week">7 days</button></span>
        <span class="seg" data-control="metric"><button data-value="requests" class="on">requests</button><button data-value="tokens">tokens</button><button data-value="errors">errors</button></span>
        <span class="seg" data-control="split"><button data-value="model" class="on">model</button><button data-value="client">client</button><button data-value="upstream">upstream</button></span>
      </div>
    </div>
    <svg id="chart" role="img" aria-label="traffic chart"></svg>
    <div id="legend"></div>
  </section>

  <section class="card"><h2>Upstream keys and accounts</h2><div class="scroll"><table id="keys">
    <thead><tr><th>Health</th><th>Upstream</th><th>Key / account</th><th>Resting until</th><th>Last error</th>
      <th class="num">Requests today</th><th class="num">Tokens today</th><th class="num">In flight</th></tr></thead>
    <tbody></tbody></table></div></section>

  <section class="card"><h2>Clients</h2><div class="scroll"><table id="clients">
    <thead><tr><th>Client</th><th class="num">Requests today</th><th class="num">Tokens today / limit</th>
      <th class="num">Last minute / limit</th><th class="num">In flight</th><th>Models</th></tr></thead>
    <tbody></tbody></table></div></section>

  <section class="card"><h2>Last errors</h2><div class="scroll tall"><table id="errors">
    <thead><tr><th>Time</th><th class="num">Status</th><th>Error</th><th>Client</th><th>Model</th><th>Upstream</th>
      <th>Request id</th></tr></thead>
    <tbody></tbody></table></div></section>
</main>
<script>
"use strict";
// Everything that comes from /stats goes into the page through textContent / attributes
// only: error texts come from upstreams and must never be parsed as HTML.
const REFRESH_MS = 5000;
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2"], OTHER = "#9aa0a6";
const SVG = "http://www.w3.org/2000/svg";
// Plain ASCII source (the proxy embeds this page in a Python bytes literal): no escapes either.
const NONE = String.fromCharCode(8211), DOT = " " + String.fromCharCode(183) + " ", DASH = String.fromCharCode(8212);
const view = {range: "hour", metric: "requests", split: "model"};
let last = null;        // the last /stats that answered 200: kept on screen when a refresh fails
let lastOkAt = null;

const $ = id => document.getElementById(id);
function el(tag, attrs, ...kids) {          // createElement + attributes + text/element children
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, v);
  for (const kid of kids) if (kid !== null && kid !== undefined)
    node.append(kid instanceof Node ? kid : String(kid));
  return node;
}
function compact(n) {                       // 48200 -> "48.2k": tiles and axes, exact value in title
  if (n === null || n === undefined) return NONE;
  const a = Math.abs(n);
  for (const [d, s] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]])
    if (a >= d) return String(+(n / d).toFixed(a >= 10 * d ? 0 : 1)) + s;   // + drops a ".0"
  return String(Math.round(n * 10) / 10);
}
const whole = n => (n === null || n === undefined) ? NONE : Math.round(n).toLocaleString("en-US");
const ms = v => v === null || v === undefined ? NONE : v < 1000 ? Math.round(v) + " ms" : (v / 1000).toFixed(v < 10000 ? 2 : 1) + " s";
const pad = n => String(n).padStart(2, "0");
function clock(t, withDate) {               // Unix seconds -> local "14:05:09" (or "Tue 3 14:05")
  const d = new Date(t * 1000);
  const hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
  return withDate ? d.toLocaleDateString("en-GB", {weekday: "short", day: "numeric"}) + " " + hm
                  : hm + ":" + pad(d.getSeconds());
}
function duration(s) {
  s = Math.max(0, Math.round(s));
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? d + "d " + h + "h" : h ? h + "h " + m + "m" : m ? m + "m " + (s % 60) + "s" : s + "s";
}
function setValue(id, text, raw, title) {   // data-value keeps the exact number for tests/tools
  const node = $(id);
  node.textContent = text;
  if (raw !== undefined) node.dataset.value = raw === null ? "" : raw;
  node.title = title || "";
}

function renderNow(s) {
  const n = s.now || {}, t = s.today || {};
  setValue("now-rpm", whole(n.requests_per_minute), n.requests_per_minute);
  setValue("now-tpm", compact(n.tokens_per_minute), n.tokens_per_minute, whole(n.tokens_per_minute));
  const rate = n.error_rate || 0;
  setValue("now-error-rate", (rate * 100).toFixed(rate && rate < 0.1 ? 1 : 0) + "%", rate);
  $("tile-errors").classList.toggle("bad", rate >= 0.05);
  setValue("now-p50", ms(n.p50_ms), n.p50_ms);
  setValue("now-p95", ms(n.p95_ms), n.p95_ms);
  setValue("now-in-flight", whole(n.in_flight), n.in_flight);
  $("now-workers").textContent = whole(n.workers_busy) + " / " + whole(n.workers) + " workers";
  $("now-workers").title = whole(n.connections_open) + " client connections open";
  setValue("today-requests", whole(t.requests), t.requests);
  $("today-errors").textContent = whole(t.errors) + " errors";
  const tokens = (t.input_tokens || 0) + (t.output_tokens || 0);
  setValue("today-tokens", compact(tokens), tokens, whole(tokens));
  $("today-split").textContent = compact(t.input_tokens || 0) + " in" + DOT + compact(t.output_tokens || 0) + " out";
  $("meta").textContent = "v" + (s.version || "?") + DOT + "up " + duration(s.uptime_seconds || 0);
  const ledger = s.ledger || {};
  const note = ledger.warning || (ledger.on === false ? "usage ledger off: today's numbers restart with the proxy" : "");
  $("note").textContent = note;
  $("note").hidden = !note;
}

function niceStep(x) {                      // 1, 2 or 5 x 10^k, at least x
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  return [1, 2, 5, 10].map(m => m * p).find(v => v >= x);
}
function renderChart(s) {
  const svg = $("chart"), legend = $("legend");
  const span = ((s.series || {})[view.range]) || {step_seconds: 60, start: 0, buckets: 0, by: {}};
  const groups = (span.by || {})[view.split] || {};
  const n = span.buckets || 0;
  // Top 6 series by total over the range; the rest summed as "other".
  let rows = Object.entries(groups).map(([name, g]) => {
    const v = (g[view.metric] || []).slice(0, n);
    return {name, values: v, total: v.reduce((a, b) => a + b, 0)};
  }).filter(r => r.total > 0).sort((a, b) => b.total - a.total || (a.name < b.name ? -1 : 1));
  if (rows.length > 7) {
    const rest = rows.slice(6), values = new Array(n).fill(0);
    rest.forEach(r => r.values.forEach((v, i) => { values[i] += v; }));
    rows = rows.slice(0, 6).concat([{name: "other (" + rest.length + ")", values, other: true,
      total: rest.reduce((a, r) => a + r.total, 0)}]);
  }
  rows.forEach((r, i) => { r.color = r.other ? OTHER : PALETTE[i]; });
  // Draw in real pixels (not a scaled viewBox) so labels stay readable on a phone.
  const W = Math.max(280, svg.clientWidth || 800), H = 240, L = 44, R = 8, T = 10, B = 22;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  const kids = [], legendKids = [];
  const totals = new Array(n).fill(0);
  rows.forEach(r => r.values.forEach((v, i) => { totals[i] += v; }));
  const peak = Math.max(1, ...totals), step = Math.max(1, niceStep(peak / 5)), ticks = Math.ceil(peak / step), top = step * ticks;
  const y = v => T + (H - T - B) * (1 - v / top), bw = (W - L - R) / Math.max(1, n);
  for (let k = 0; k <= ticks; k++) {
    kids.push(el("svg:line", {x1: L, x2: W - R, y1: y(k * step), y2: y(k * step), stroke: "var(--grid)"}));
    kids.push(el("svg:text", {x: L - 6, y: y(k * step) + 4, "text-anchor": "end"}, compact(k * step)));
  }
  // X labels at round local times, skipping any too close to the previous one.
  const week = span.step_seconds >= 3600;
  let lastX = -1e9;
  for (let i = 0; i < n; i++) {
    const d = new Date((span.start + i * span.step_seconds) * 1000);
    const round = week ? d.getHours() === 0 : d.getMinutes() % 10 === 0;
    const x = L + i * bw;
    if (!round || x - lastX < 56 || x > W - R - 20) continue;
    lastX = x;
    kids.push(el("svg:line", {x1: x, x2: x, y1: H - B, y2: H - B + 4, stroke: "var(--muted)"}));
    kids.push(el("svg:text", {x: x, y: H - 6, "text-anchor": "middle"},
      week ? d.toLocaleDateString("en-GB", {weekday: "short", day: "numeric"}) : pad(d.getHours()) + ":" + pad(d.getMinutes())));
  }
  kids.push(el("svg:line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "var(--line)"}));
  for (let i = 0; i < n; i++) {             // stacked bars, biggest series at the bottom
    let base = 0;
    const t0 = span.start + i * span.step_seconds;
    for (const r of rows) {
      const v = r.values[i] || 0;
      if (!v) continue;
      kids.push(el("svg:rect", {x: L + i * bw + (bw > 4 ? 0.5 : 0), width: Math.max(0.5, bw - (bw > 4 ? 1 : 0)),
        y: y(base + v), height: y(base) - y(base + v), fill: r.color},
        el("svg:title", {}, clock(t0, week) + DOT + r.name + ": " + whole(v) + " " + view.metric)));
      base += v;
    }
  }
  if (!rows.length) {
    const what = view.metric === "errors" ? "no errors" : "no requests yet";
    kids.push(el("svg:text", {x: L + (W - L - R) / 2, y: (H - B) / 2, "text-anchor": "middle", class: "empty"},
      what + (view.range === "hour" ? " in the last hour" : " in the last 7 days")));
  }
  for (const r of rows)
    legendKids.push(el("span", {"data-series": r.name}, el("i", {style: "background:" + r.color}), r.name + " ",
      el("span", {class: "muted"}, compact(r.total))));
  svg.replaceChildren(...kids);
  legend.replaceChildren(...legendKids);
  $("chart-title").textContent = view.metric[0].toUpperCase() + view.metric.slice(1) + " by " + view.split +
    DOT + (week ? "per hour" : "per minute");
}

function cell(text, cls, title) { return el("td", {class: cls || null, title: title || null}, text); }
function limit(used, max) {                 // "512k / 500k" plus a small meter, red when at the limit
  const td = cell(compact(used) + (max ? " / " + compact(max) : ""), "num", whole(used));
  td.dataset.value = used;
  if (max) {
    const f = Math.min(1, used / max);
    if (f >= 1) td.classList.add("hot");
    td.append(el("span", {class: "meter"}, el("b", {style: "width:" + (f * 100).toFixed(0) + "%", class: f >= 0.9 ? "hot" : null})));
  }
  return td;
}
function fill(tbodyId, rows, cols, emptyText) {
  $(tbodyId).querySelector("tbody").replaceChildren(...(rows.length ? rows :
    [el("tr", {}, el("td", {colspan: cols, class: "empty"}, emptyText))]));
}

function renderTables(s) {
  const now = s.generated_at || Date.now() / 1000;
  const keyRows = [];
  for (const u of s.upstreams || []) {
    const upCell = first => {             // the upstream's name and notes on its first row only
      const td = cell(first ? u.name : "", null, u.base_url);
      if (!first) return td;
      if (u.waiting) td.append(el("div", {class: "note muted"}, whole(u.waiting) + " waiting for a key"));
      if (u.unusable) td.append(el("div", {class: "note hot"}, u.unusable));
      return td;
    };
    if (!(u.keys || []).length)
      keyRows.push(el("tr", {"data-upstream": u.name, class: "first"}, cell(""), upCell(true), cell("no keys", "muted"), cell(""),
        cell(""), cell(""), cell(""), cell("")));
    (u.keys || []).forEach((k, i) => {
      const health = ["ok", "resting", "out"].includes(k.health) ? k.health : "out";
      let until = "";
      if (health === "resting" && k.resting_until) {
        const far = k.resting_until - now > 12 * 3600;
        until = clock(k.resting_until, far) + " (in " + duration(k.resting_until - now) + ")" + DOT +
          (k.resting_for && k.resting_for !== "*" ? k.resting_for : "all models");
      } else if (health === "out") until = k.out_reason || "out of use";
      keyRows.push(el("tr", {"data-key": u.name + "/" + k.key, "data-health": health, class: i ? null : "first"},
        el("td", {class: "health", title: k.out_reason || null}, el("span", {class: "badge " + health}, health)),
        upCell(!i), cell(k.key),
        cell(until, health === "out" ? "wrap hot" : null), cell(k.last_error || "", "wrap"),
        cell(whole(k.requests_today), "num"), cell(compact(k.tokens_today), "num", whole(k.tokens_today)),
        cell(whole(k.in_flight), "num")));
    });
  }
  fill("keys", keyRows, 8, "no upstreams configured");

  fill("clients", (s.clients || []).map(c => {
    const rpm = limit(c.requests_last_minute, c.requests_per_minute);
    rpm.firstChild.textContent = whole(c.requests_last_minute) + (c.requests_per_minute ? " / " + whole(c.requests_per_minute) : "");
    const req = cell(whole(c.requests_today), "num requests-today");
    req.dataset.value = c.requests_today;
    const tok = limit(c.tokens_today, c.tokens_per_day);
    tok.classList.add("tokens-today");
    rpm.classList.add("last-minute");
    return el("tr", {"data-client": c.name}, cell(c.name), req, tok, rpm,
      cell(whole(c.in_flight) + (c.max_concurrency ? " / " + c.max_concurrency : ""), "num in-flight"),
      cell((c.models || []).length ? c.models.join(", ") : "any", "muted"));
  }), 6, "no clients configured");

  fill("errors", (s.errors || []).slice(0, 50).map(e => el("tr", {"data-request-id": e.request_id},
    cell(clock(e.time, now - e.time > 12 * 3600), null, new Date(e.time * 1000).toString()),
    cell(e.status, "num" + (e.status >= 500 ? " hot" : "")), cell(e.error || "", "wrap"),
    cell(e.client || NONE), cell(e.model || NONE), cell(e.upstream || NONE), cell(e.request_id, "muted"))), 7, "no errors");
}

function render(s) {
  renderNow(s);
  renderChart(s);
  renderTables(s);
  $("updated").textContent = clock(s.generated_at || Date.now() / 1000);
  document.body.dataset.updated = s.generated_at;
  document.body.dataset.loaded = "1";       // tests wait for this
}

function showBanner(text) {
  const b = $("banner");
  b.textContent = text + (last ? " " + DASH + " showing data from " + clock(lastOkAt) + "." : ".") + " Retrying every " + REFRESH_MS / 1000 + " s.";
  b.hidden = false;
}
async function refresh() {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 15000);
  try {
    // location.origin, not a bare "/stats": opened as http://user:key@host/dashboard, the page URL
    // carries credentials and fetch() refuses any URL resolved against it (Fetch spec).
    const r = await fetch(location.origin + "/stats", {credentials: "same-origin", cache: "no-store", signal: abort.signal});
    if (r.status !== 200) {
      document.body.dataset.error = r.status;
      showBanner("GET /stats answered " + r.status + " " + r.statusText +
        (r.status === 401 || r.status === 403 ? " (admin key refused: reload the page to sign in again)" : ""));
    } else {
      const s = await r.json();
      last = s;
      lastOkAt = Date.now() / 1000;
      render(s);
      delete document.body.dataset.error;
      $("banner").hidden = true;
    }
  } catch (err) {
    document.body.dataset.error = "network";
    showBanner("Cannot reach the proxy (" + (err.name === "AbortError" ? "timed out" : err.message) + ")");
  } finally {
    clearTimeout(timer);
    setTimeout(refresh, REFRESH_MS);        // after each answer, so slow answers never pile up
  }
}

// The toggles re-draw the chart from the data already here: no need to wait for a refresh.
document.querySelectorAll(".seg").forEach(seg => seg.addEventListener("click", ev => {
  const b = ev.target.closest("button");
  if (!b) return;
  view[seg.dataset.control] = b.dataset.value;
  seg.querySelectorAll("button").forEach(x => x.classList.toggle("on", x === b));
  if (last) renderChart(last);
}));
let resizeTimer;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => last && renderChart(last), 150); });
refresh();
</script>
</body>
</html>
"""


# ---- 31. State server ------------------------------------------------------------------------
#
# What worker processes share when there is no Redis: a server of the few commands the
# shared_* operations of section 19 use, with Redis's replies (the tests compare the two),
# which the supervisor (section 32) runs on a Unix socket only its user can open. Besides
# those, PING, PTTL and DEL: what a person looking into it with redis-cli needs (and the
# tests). One event loop runs it: each command, and each MULTI ... EXEC, runs whole before
# the next, with no locks.

STATE_MAX_ENTRIES = 1_000_000       # StateServer's keys and set members in all
STATE_MAX_COMMAND = 1024 * 1024     # bytes of one request's arguments...
STATE_MAX_ARGS = 1024               # ... and how many (the proxy sends at most ten)
STATE_MAX_QUEUED = 1024             # commands one MULTI may queue
STATE_SWEEP_INTERVAL = 0.1          # seconds between looks for expired keys, each removing
STATE_SWEEP_BATCH = 1000            # at most this many before the loop serves others

NOT_INTEGER = "ERR value is not an integer or out of range"
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
STATE_FULL = "OOM command not allowed: the state server holds its maximum of %d entries"

# What StateServer runs: each command's arity as Redis counts it (the name included;
# negative: at least that many), and whether it is refused when the server is full.
STATE_COMMANDS: Dict[bytes, Tuple[int, bool]] = {
    b"ping": (-1, False), b"auth": (-2, False), b"select": (2, False),
    b"get": (2, False), b"set": (-3, True), b"del": (-2, False),
    b"incr": (2, True), b"incrby": (3, True), b"decr": (2, True),
    b"expire": (-3, False), b"pexpire": (-3, False), b"pttl": (2, False),
    b"zadd": (-4, True), b"zrem": (-3, False), b"zcard": (2, False), b"zrange": (-4, False),
    b"zremrangebyscore": (4, False),
    b"multi": (1, False), b"exec": (1, False),
}
RESP_INT_TEXT = re.compile(rb"(?:0|-?[1-9][0-9]{0,18})\Z")     # Redis's string2ll
RESP_FLOAT_TEXT = re.compile(
    rb"[+-]?(?:inf(?:inity)?|(?P<digits>[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)\Z", re.I)


def resp_int(text: bytes) -> int:
    if RESP_INT_TEXT.match(text) and -INT64_MAX - 1 <= int(text) <= INT64_MAX:
        return int(text)
    raise RespError(NOT_INTEGER)


def resp_float(text: bytes, message: str = "ERR value is not a valid float") -> float:
    """A score as Redis reads one: no NaN, and a finite number too large or too small to
    be a double (strtod's range errors) is refused, not rounded to inf or 0."""
    match = RESP_FLOAT_TEXT.match(text)
    if match:
        number = float(text) + 0.0      # -0 is 0, as Redis keeps it
        digits = match.group("digits")
        if not (digits is not None and math.isinf(number)) and \
                not (number == 0 and re.search(rb"[1-9]", digits or b"")):
            return number
    raise RespError(message)


def resp_ttl_ms(text: bytes, unit_ms: int, command: str) -> int:
    """An EX/PX/EXPIRE/PEXPIRE amount in milliseconds; refused where Redis refuses it
    (its expiry times are Unix milliseconds, which must not overflow)."""
    amount = resp_int(text)
    if abs(amount) > INT64_MAX // unit_ms or \
            amount * unit_ms > INT64_MAX - int(time.time() * 1000):
        raise RespError("ERR invalid expire time in '%s' command" % command)
    return amount * unit_ms


def now_ms() -> int:
    """StateServer's clock: monotonic, so that a clock step neither ends rests early nor
    keeps keys forever."""
    return int(time.monotonic() * 1000)


class SortedSet:
    """A Redis sorted set: member -> score, and (score, member) pairs in Redis's order
    (by score, then member bytes)."""

    __slots__ = ("scores", "order")

    def __init__(self) -> None:
        self.scores: Dict[bytes, float] = {}
        self.order: List[Tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self.scores)

    def put(self, member: bytes, score: float) -> None:
        self.discard(member)
        self.scores[member] = score
        bisect.insort(self.order, (score, member))

    def discard(self, member: bytes) -> bool:
        score = self.scores.pop(member, None)
        if score is None:
            return False
        del self.order[bisect.bisect_left(self.order, (score, member))]
        return True

    def rank(self, score: float, or_equal: bool) -> int:
        """How many members score below `score` (or at most `score`)."""
        low, high = 0, len(self.order)
        while low < high:
            middle = (low + high) // 2
            if self.order[middle][0] < score or (or_equal and self.order[middle][0] == score):
                low = middle + 1
            else:
                high = middle
        return low


@dataclasses.dataclass
class StateSession:
    """One connection's MULTI: the commands queued (None: not in one), and whether one
    was refused while queueing (EXEC then runs none)."""

    queue: Optional[List[List[bytes]]] = None
    aborted: bool = False


class StateServer:
    """The store that processes share when there is no Redis: the commands of
    STATE_COMMANDS, on an asyncio loop, with Redis's replies. Keys expire when touched,
    and by a sweep in the background. Bounded: max_entries keys and set members in all
    (then writes get -OOM, as a full Redis gives them); requests of at most max_args
    arguments of max_command bytes in all. A connection that sends what is not RESP gets
    an error and is closed."""

    def __init__(self, max_entries: int = STATE_MAX_ENTRIES,
                 max_command: int = STATE_MAX_COMMAND, max_args: int = STATE_MAX_ARGS):
        self.max_entries, self.max_command, self.max_args = max_entries, max_command, max_args
        self.entries = 0
        self._data: Dict[bytes, Any] = {}          # bytes | SortedSet
        self._expires: Dict[bytes, int] = {}       # key -> now_ms() it expires after
        self._heap: List[Tuple[int, bytes]] = []   # (when, key), some outdated
        self._server: Optional[asyncio.AbstractServer] = None
        self._connections: Dict[Any, asyncio.StreamWriter] = {}    # handler task -> writer
        self._sweeper: Optional[Any] = None
        self._socket_file: Optional[Tuple[str, int, int]] = None   # path, device, inode
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None

    # - serving -

    async def start(self, path: str = "", host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on a Unix socket at `path` (mode 0600), else on host:port (0: a free
        port); returns the URL a RespStore connects with."""
        if path:
            sock = bind_private_socket(path)
            info = os.stat(path)
            self._socket_file = (path, info.st_dev, info.st_ino)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock,
                                                           backlog=1024)
            url = "unix://" + urllib.parse.quote(path)
        else:
            self._server = await asyncio.start_server(self._serve, host, port, backlog=1024)
            bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
            url = "redis://%s:%d" % ("[%s]" % bound_host if ":" in bound_host else bound_host,
                                     bound_port)
        self._sweeper = asyncio.ensure_future(self._sweep_forever())
        return url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()        # no new connections
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        # Connections are closed, not their handlers cancelled (3.11's streams log a
        # cancelled handler as an error): each reads the end and returns.
        while self._connections:
            for writer in list(self._connections.values()):
                writer.close()
            await asyncio.gather(*list(self._connections), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()    # (3.12 waits for the connections too)
        if self._socket_file:
            path, device, inode = self._socket_file
            try:    # only our own socket: a server started since may have replaced it
                info = os.lstat(path)
                if (info.st_dev, info.st_ino) == (device, inode):
                    os.unlink(path)
            except OSError:
                pass

    def start_in_thread(self, path: str = "", host: str = "127.0.0.1", port: int = 0,
                        timeout: float = 10.0) -> str:
        """start() on an event loop of its own in a daemon thread (the supervisor's way,
        and the tests'); returns the URL."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="state-server",
                                        daemon=True)
        self._thread.start()
        try:
            return asyncio.run_coroutine_threadsafe(self.start(path, host, port),
                                                    self._loop).result(timeout)
        except BaseException:
            self.stop_thread(timeout)
            raise

    def stop_thread(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.close(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections[task] = writer
        parser = RespParser(requests=True, max_bulk=self.max_command, max_items=self.max_args)
        session = StateSession()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                try:
                    commands = parser.feed(data)
                except RespProtocolError as error:
                    writer.write(encode_resp_reply(RespError("ERR Protocol error: %s" % error)))
                    return
                writer.write(b"".join(encode_resp_reply(self.execute(command, session))
                                      for command in commands))
                await writer.drain()
        except OSError:
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(STATE_SWEEP_INTERVAL if self.sweep() else 0)

    def sweep(self) -> bool:
        """Remove up to STATE_SWEEP_BATCH expired keys; True when no more are due. The
        heap keeps an entry per expiry set (a rate window's PEXPIRE each request), so it
        is rebuilt from the live ones when mostly outdated."""
        now, heap = now_ms(), self._heap
        for _ in range(STATE_SWEEP_BATCH):
            if not heap or heap[0][0] >= now:
                break
            when, key = heapq.heappop(heap)
            if self._expires.get(key) == when:
                self._delete(key)
        else:
            return False
        if len(heap) > 2 * len(self._expires) + 1024:
            self._heap = [(when, key) for key, when in self._expires.items()]
            heapq.heapify(self._heap)
        return True

    # - commands -

    def execute(self, args: List[bytes], session: StateSession) -> Any:
        """One command's reply, as Redis gives it (an error as a RespError value)."""
        name = args[0].lower()
        refusal = self._refusal(name, args)
        if session.queue is not None and name not in (b"multi", b"exec"):
            if refusal is None and len(session.queue) >= STATE_MAX_QUEUED:
                refusal = RespError("ERR a MULTI queues at most %d commands" % STATE_MAX_QUEUED)
            if refusal is not None:
                session.aborted = True
                return refusal
            session.queue.append(args)
            return "QUEUED"
        return refusal if refusal is not None else self._run(name, args, session)

    def _refusal(self, name: bytes, args: List[bytes]) -> Optional[RespError]:
        """Why a command is refused before it runs, checked as Redis checks: unknown,
        the wrong number of arguments, a full server for a command that adds."""
        spec = STATE_COMMANDS.get(name)
        if spec is None:
            shown = ""
            for arg in args[1:]:
                if len(shown) >= 128:
                    break
                shown += "'%s' " % arg[:128 - len(shown)].decode("utf-8", "replace")
            return RespError("ERR unknown command '%s', with args beginning with: %s" % (
                args[0][:128].decode("utf-8", "replace"), shown))
        arity, adds = spec
        if len(args) < -arity if arity < 0 else len(args) != arity:
            return RespError("ERR wrong number of arguments for '%s' command" % name.decode())
        if adds and self.entries >= self.max_entries:
            return RespError(STATE_FULL % self.max_entries)
        return None

    def _run(self, name: bytes, args: List[bytes], session: StateSession) -> Any:
        if name == b"multi":
            if session.queue is not None:
                return RespError("ERR MULTI calls can not be nested")
            session.queue, session.aborted = [], False
            return "OK"
        if name == b"exec":
            queue, session.queue = session.queue, None
            if queue is None:
                return RespError("ERR EXEC without MULTI")
            if session.aborted:
                return RespError("EXECABORT Transaction discarded because of previous errors.")
            if self.entries >= self.max_entries and any(
                    STATE_COMMANDS[command[0].lower()][1] for command in queue):
                return RespError(STATE_FULL % self.max_entries)
            return [self._run(command[0].lower(), command, session) for command in queue]
        try:
            return getattr(self, "do_" + name.decode())(args)
        except RespError as error:
            return error
        except Exception:   # a bug here must not take the server, nor the connection
            log.exception("state server: %s failed", name.decode())
            return RespError("ERR internal error")

    def _live(self, key: bytes) -> Any:
        """The key's value; None when there is none, or it expired (and is gone now)."""
        when = self._expires.get(key)
        if when is not None and now_ms() > when:
            self._delete(key)
        return self._data.get(key)

    def _typed(self, key: bytes, kind: type, create: bool = False) -> Any:
        value = self._live(key)
        if value is None and create:
            value = self._data[key] = kind()
            self.entries += 1
        elif value is not None and not isinstance(value, kind):
            raise RespError(WRONGTYPE)
        return value

    def _delete(self, key: bytes) -> bool:
        value = self._data.pop(key, None)
        if value is None:
            return False
        self._expires.pop(key, None)
        self.entries -= 1 + (0 if isinstance(value, bytes) else len(value))
        return True

    def _shrunk(self, key: bytes, collection: Any, removed: int) -> int:
        """Count a set's removed members; an emptied set is no key (Redis's way)."""
        self.entries -= removed
        if not collection:
            self._delete(key)
        return removed

    def _put_string(self, key: bytes, value: bytes, keep_ttl: bool) -> None:
        old = self._live(key)
        self.entries += 1 if old is None else 0 if isinstance(old, bytes) else -len(old)
        self._data[key] = value
        if not keep_ttl:
            self._expires.pop(key, None)

    def _expire_at(self, key: bytes, when: int) -> None:
        self._expires[key] = when
        heapq.heappush(self._heap, (when, key))

    def do_ping(self, args: List[bytes]) -> Any:
        if len(args) > 2:
            raise RespError("ERR wrong number of arguments for 'ping' command")
        return args[1] if len(args) == 2 else "PONG"

    def do_auth(self, args: List[bytes]) -> Any:
        return "OK"     # the socket is the owner's alone (0600)

    def do_select(self, args: List[bytes]) -> Any:
        if not 0 <= resp_int(args[1]) < 16:     # accepted as Redis does; there is one
            raise RespError("ERR DB index is out of range")
        return "OK"

    def do_get(self, args: List[bytes]) -> Any:
        return self._typed(args[1], bytes)

    def do_del(self, args: List[bytes]) -> Any:
        return sum(1 for key in args[1:] if self._live(key) is not None and self._delete(key))

    def do_set(self, args: List[bytes]) -> Any:
        """SET key value [EX seconds | PX milliseconds] (not NX, XX, GET, KEEPTTL: not
        needed)."""
        if len(args) == 3:
            ttl = 0
        elif len(args) == 5 and args[3].upper() in (b"EX", b"PX"):
            ttl = resp_ttl_ms(args[4], 1000 if args[3].upper() == b"EX" else 1, "set")
            if ttl <= 0:
                raise RespError("ERR invalid expire time in 'set' command")
        else:
            raise RespError("ERR syntax error")
        self._put_string(args[1], args[2], keep_ttl=False)
        if ttl:
            self._expire_at(args[1], now_ms() + ttl)
        return "OK"

    def _increment(self, key: bytes, by: int) -> int:
        value = self._typed(key, bytes)
        number = (0 if value is None else resp_int(value)) + by
        if not -INT64_MAX - 1 <= number <= INT64_MAX:
            raise RespError("ERR increment or decrement would overflow")
        self._put_string(key, b"%d" % number, keep_ttl=True)
        return number

    def do_incr(self, args: List[bytes]) -> Any:
        return self._increment(args[1], 1)

    def do_incrby(self, args: List[bytes]) -> Any:
        return self._increment(args[1], resp_int(args[2]))

    def do_decr(self, args: List[bytes]) -> Any:
        return self._increment(args[1], -1)

    def do_expire(self, args: List[bytes], unit_ms: int = 1000) -> Any:
        ttl = resp_ttl_ms(args[2], unit_ms, "expire" if unit_ms == 1000 else "pexpire")
        if len(args) > 3:   # Redis 7's NX/XX/GT/LT: not needed here
            raise RespError("ERR Unsupported option %s" % args[3].decode("utf-8", "replace"))
        if self._live(args[1]) is None:
            return 0
        if ttl <= 0:
            self._delete(args[1])
        else:
            self._expire_at(args[1], now_ms() + ttl)
        return 1

    def do_pexpire(self, args: List[bytes]) -> Any:
        return self.do_expire(args, 1)

    def do_pttl(self, args: List[bytes]) -> Any:
        if self._live(args[1]) is None:
            return -2
        when = self._expires.get(args[1])
        return -1 if when is None else max(when - now_ms(), 0)

    def do_zadd(self, args: List[bytes]) -> Any:
        flags, at = set(), 2
        while at < len(args) and args[at].upper() in (b"NX", b"XX", b"GT", b"LT", b"CH"):
            flags.add(args[at].upper())
            at += 1
        pairs = args[at:]
        if not pairs or len(pairs) % 2:
            raise RespError("ERR syntax error")
        if {b"NX", b"XX"} <= flags:
            raise RespError("ERR XX and NX options at the same time are not compatible")
        if len(flags & {b"NX", b"GT", b"LT"}) > 1:
            raise RespError("ERR GT, LT, and/or NX options at the same time are not compatible")
        scores = [resp_float(score) for score in pairs[::2]]
        zset = self._typed(args[1], SortedSet)
        if zset is None:
            if b"XX" in flags:
                return 0
            zset = self._typed(args[1], SortedSet, create=True)
        added = changed = 0
        for score, member in zip(scores, pairs[1::2]):
            old = zset.scores.get(member)
            if old is None and b"XX" not in flags:
                zset.put(member, score)
                added += 1
            elif old is not None and old != score and b"NX" not in flags and not (
                    b"GT" in flags and score < old) and not (b"LT" in flags and score > old):
                zset.put(member, score)
                changed += 1
        self.entries += added
        return added + changed if b"CH" in flags else added

    def do_zrem(self, args: List[bytes]) -> Any:
        zset = self._typed(args[1], SortedSet)
        if zset is None:
            return 0
        return self._shrunk(args[1], zset, sum(1 for member in args[2:] if zset.discard(member)))

    def do_zcard(self, args: List[bytes]) -> Any:
        return len(self._typed(args[1], SortedSet) or ())

    def do_zrange(self, args: List[bytes]) -> Any:
        """By rank only (not Redis 7's BYSCORE, BYLEX, REV, LIMIT: not needed)."""
        start, stop = resp_int(args[2]), resp_int(args[3])
        if any(option.upper() != b"WITHSCORES" for option in args[4:]):
            raise RespError("ERR syntax error")
        zset = self._typed(args[1], SortedSet)
        size = len(zset or ())
        start, stop = max(start + size if start < 0 else start, 0), \
            min(stop + size if stop < 0 else stop, size - 1)
        if zset is None or start > stop:
            return []
        if len(args) == 4:
            return [member for _, member in zset.order[start:stop + 1]]
        # As Redis 7.0 writes a double ("%.17g"); 7.2 writes the shortest that reads back
        # the same: both read back as the same float.
        return [item for score, member in zset.order[start:stop + 1]
                for item in (member, b"%.17g" % score)]

    def do_zremrangebyscore(self, args: List[bytes]) -> Any:
        bounds = []
        for text in args[2:4]:
            exclusive = text.startswith(b"(")
            bounds.append((resp_float(text[1:] if exclusive else text,
                                      "ERR min or max is not a float"), exclusive))
        (low, low_open), (high, high_open) = bounds
        zset = self._typed(args[1], SortedSet)
        if zset is None:
            return 0
        start, end = zset.rank(low, low_open), zset.rank(high, not high_open)
        for _, member in zset.order[start:end]:
            del zset.scores[member]
        del zset.order[start:end]
        return self._shrunk(args[1], zset, max(end - start, 0))


def bind_private_socket(path: str) -> socket.socket:
    """A Unix socket at `path` only its owner may connect to: bound under a temporary name
    beside it, made 0600, then renamed into place, so the path never has wider modes (a
    umask is process-wide, and chmod after bind leaves a moment). A socket already there
    (left by a crash) is replaced; anything else there is an error."""
    if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise OSError(errno.EEXIST, "exists and is not a socket", path)
    temporary = os.path.join(os.path.dirname(path) or ".", ".%s" % secrets.token_hex(6))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(temporary)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        sock.close()
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise
    return sock


# ---- 32. Worker processes --------------------------------------------------------------------
#
# server.processes above 1: this process becomes the supervisor of that many worker
# processes, each this file run again (a whole proxy), all serving one port. On Linux each
# worker listens with SO_REUSEPORT and the kernel spreads connections over them;
# elsewhere they share one listening socket the supervisor made. The supervisor passes
# SIGHUP and SIGTERM on, starts a worker again when one dies, and writes the workers' log
# lines (so one process writes, and rotates, the log file). A worker that finds its
# supervisor gone stops as if sent SIGTERM. Unless state.redis_url names a Redis, the
# supervisor also serves the state the workers share (section 19): a StateServer
# (section 31) on a Unix socket only its user can open, seeded from the usage ledger.

WORKER_PROCESS_ENV = "GEMINI_PROXY_WORKER_PROCESS"   # the supervisor's word to its workers
RELAYED_LOG = "gemini_proxy.worker"                  # their lines, already formatted
# A worker loads this file as a module through MODULE_BOOT (section 0), so its syntax
# tree is freed once compiled. It runs the code its supervisor runs, handed on when the
# supervisor has it (HANDED_CODE_FD: a script run); otherwise it compiles the file itself,
# and the compiled file is kept in __pycache__ (where it can be written) for the next.

# A worker that exits this soon after it started, this many times in a row, will not do
# better the next time (a port taken, a file it cannot read): the supervisor gives up.
WORKER_QUICK_EXIT = 10.0
WORKER_QUICK_EXITS = 3
WORKER_READY_TIMEOUT = 60.0
# Seconds past shutdown_grace after which a worker that has not stopped is killed.
WORKER_STOP_MARGIN = 5.0
# A worker's log line that takes this long to write means the supervisor's own output is
# blocked (a paused terminal, a stuck collector): the workers block on theirs too, and
# their silence then is not a stall.
LOG_BLOCKED_AFTER = 1.0
# A slip of the keyboard (1000 for 10) would start a thousand interpreters of some 35 MB
# each; past a few a core, processes add memory, not speed. Checked when a supervisor
# starts, not in --check or on reload: the cores are those of the machine it runs on.
PROCESSES_PER_CORE = 4


def usable_cores() -> int:
    """The cores this process may run on: what "auto" and the per-core cap count."""
    if hasattr(os, "process_cpu_count"):   # 3.13: affinity, or -X cpu_count when given
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):   # a container's or taskset's, not the machine's
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def process_count(setting: Any) -> int:
    """server.processes as a number: "auto" is one per core."""
    return usable_cores() if setting == "auto" else int(setting)


def too_many_processes(setting: Any) -> str:
    """Why server.processes is more than this machine should run, or ""."""
    cores = usable_cores()
    if process_count(setting) <= PROCESSES_PER_CORE * cores:
        return ""
    return "server.processes: %s is more than %d a core (%d core%s here); \"auto\" is one " \
        "a core" % (setting, PROCESSES_PER_CORE, cores, "" if cores == 1 else "s")


def readable_among(items: List[Any], timeout: float) -> List[Any]:
    """Those of `items` (sockets or file descriptors) with something to read, or closed at
    the other end, within `timeout` seconds. poll(), not select(): a supervisor of many
    workers holds descriptors past 1023, which select cannot watch (POSIX only, as the
    supervisor is)."""
    poller, by_descriptor = select.poll(), {}
    for item in items:
        descriptor = item if isinstance(item, int) else item.fileno()
        by_descriptor[descriptor] = item
        poller.register(descriptor, select.POLLIN)
    return [by_descriptor[descriptor] for descriptor, _ in poller.poll(timeout * 1000)]


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:   # another user's: alive
        pass
    return True


def spreads_by_reuseport() -> bool:
    """Whether workers each listen with SO_REUSEPORT: on Linux the kernel then spreads
    connections over them. macOS and the BSDs take the option without the spreading;
    there they accept from one shared socket."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


class RelayedLineFormatter(logging.Formatter):
    """The supervisor's handlers: a worker's line as the worker formatted it, the
    supervisor's own as before."""

    def __init__(self, own: logging.Formatter):
        super().__init__()
        self._own = own

    def format(self, record: logging.LogRecord) -> str:
        if record.name == RELAYED_LOG:
            return record.getMessage()
        return self._own.format(record)


def seed_state_from_ledger(store: RespStore, history: "LedgerHistory") -> None:
    """What the ledger says clients used (the last minute's requests, today's requests
    and tokens), into a fresh StateServer: a restart does not forgive a client's limits."""
    day, namespace = utc_day(history.now), store.namespace
    commands: List[Tuple[Any, ...]] = []
    for name, times in history.recent_requests.items():
        window = state_key(namespace, "rpm", name)
        commands += [("ZADD", window, at, "%r:ledger:%d" % (at, number))
                     for number, at in enumerate(times)]
        commands.append(("PEXPIRE", window, int(RATE_WINDOW * 1000) + 1000))
    for name, (requests, tokens) in history.today_by_client.items():
        commands += [("SET", state_key(namespace, "rpd", name, day), requests, "EX",
                      STATE_DAY_TTL),
                     ("SET", state_key(namespace, "tpd", name, day), tokens, "EX",
                      STATE_DAY_TTL)]
    for start in range(0, len(commands), 500):
        for reply in store.pipeline(commands[start:start + 500]):
            if isinstance(reply, RespError):
                raise reply


@dataclasses.dataclass
class WorkerProcess:
    number: int
    process: "subprocess.Popen[bytes]"
    channel: socket.socket          # the supervisor's end: "ready", then heartbeats, come in
    started: float
    log_relay: threading.Thread     # ends at the end of the worker's stderr
    heard: float = 0.0              # when the worker last said anything (monotonic); 0: never
    silent_since: float = 0.0       # when its channel ended (it is exiting); 0: not yet
    killed_for_stall: bool = False

    def ended(self) -> None:
        """After the process has exited: its last log lines written, its channel and its
        log's pipe shut."""
        self.log_relay.join(5.0)
        self.channel.close()
        if self.process.stderr is not None and not self.log_relay.is_alive():
            self.process.stderr.close()


class Supervisor:
    """Starts server.processes workers, keeps them running, and stops them."""

    def __init__(self, config: Config, argv: List[str], args: argparse.Namespace):
        self.config = config
        self.argv = argv
        self.args = args            # to read the configuration again on SIGHUP
        self._snapshot = ""         # the config file as the workers run it (_load_config_copy)
        self._folder = ""           # the StateServer's socket and that copy (_runtime_folder)
        self.count = process_count(config.server["processes"])
        self.workers: List[WorkerProcess] = []
        self.port = 0
        self._listener: Optional[socket.socket] = None
        # Signals wake the supervisor through a pipe (signal.set_wakeup_fd): a handler
        # that took a lock (an Event's) could deadlock with the code it interrupted.
        self._wake_read, self._wake_write = -1, -1
        self._signals: "collections.deque[int]" = collections.deque()
        self._quick_exits = 0
        self._unstarted: List[int] = []     # workers to start again
        self._start_failed_at = 0.0
        # Names this supervisor's files: host and pid (containers may share a state_dir).
        self._tag = "%s-%d" % (re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40],
                               os.getpid())
        self._state_url = ""        # the StateServer's, when the workers share through it
        # Log output: when a worker's line began to be written, by the worker's pid, while
        # it is; and when a write last took LOG_BLOCKED_AFTER or longer (_relay_log).
        self._writing_since: Dict[int, float] = {}
        self._log_blocked_at = 0.0

    def run(self) -> int:
        if os.name != "posix":
            log.error("server.processes above 1 needs a POSIX system; run one process, or "
                      "one proxy per port behind a load balancer")
            return 2
        for handler in logging.getLogger().handlers:
            handler.setFormatter(RelayedLineFormatter(handler.formatter or
                                                      logging.Formatter()))
        try:
            self._listener = self._hold_port()
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", self.config.server["host"],
                      self.config.server["port"], exc.strerror or exc)
            return 1
        self.port = self._listener.getsockname()[1]
        raise_open_file_limit()     # up to 16 StateServer connections a worker process
        self._wake_read, self._wake_write = os.pipe()
        state_server, temporary = None, False
        try:
            for fd in (self._wake_read, self._wake_write):
                os.set_blocking(fd, False)
            signal.set_wakeup_fd(self._wake_write)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, self._on_signal)
            self._folder, temporary = self._runtime_folder()
            try:
                self.config = self._load_config_copy()
            except (ConfigError, OSError) as exc:
                log.error("configuration error: %s", exc)
                return 2
            if not self.config.state["redis_url"]:
                state_server = StateServer()
                self._state_url = state_server.start_in_thread(
                    os.path.join(self._folder, "state-%s.sock" % self._tag))
                self._seed_state()
            try:
                for number in range(1, self.count + 1):
                    self.workers.append(self._start(number))
            except OSError as exc:
                log.error("cannot start the worker processes: %s", exc)
                self._stop_all()
                return 1
            ready = self._wait_ready()
            if ready is not True:
                self._stop_all()
                return 0 if ready is None else 1
            host = self.config.server["host"]
            log.info("gemini-proxy %s listening on http://%s:%d (%d worker processes, %s)",
                     __version__, "[%s]" % host if ":" in host else host, self.port,
                     self.count, "client keys required" if self.config.server["api_keys"]
                     else "no client keys")
            log_where_requests_go(Proxy(self.config))
            return self._supervise()
        finally:
            self._listener.close()
            signal.set_wakeup_fd(-1)
            for fd in (self._wake_read, self._wake_write):
                os.close(fd)
            if state_server is not None:
                state_server.stop_thread()
            if self._snapshot and os.path.exists(self._snapshot):
                os.unlink(self._snapshot)
            if temporary:
                shutil.rmtree(self._folder, ignore_errors=True)

    def _runtime_folder(self) -> Tuple[str, bool]:
        """Where the StateServer's socket and the workers' copy of the configuration go,
        named by this supervisor's host and pid (two proxies, or two containers, may share
        a state_dir): state_dir, where the files a killed supervisor of this host left are
        deleted next time, or, when
        its path is too long for a Unix socket or it cannot be made, a temporary folder
        (True: to delete at the end)."""
        state_dir = os.path.abspath(state_directory(self.config.server["state_dir"],
                                                    dict(os.environ)))
        if len(os.path.join(state_dir, "state-%s.sock" % self._tag).encode()) < 100:
            try:
                os.makedirs(state_dir, mode=0o700, exist_ok=True)
                host = re.escape(self._tag.rsplit("-", 1)[0])
                for name in os.listdir(state_dir):
                    left = re.match(r"(?:state|config)-%s-(\d{1,9})\.(?:sock|json(?:\.new)?)\Z"
                                    % host, name)
                    if left and not process_alive(int(left.group(1))):
                        os.unlink(os.path.join(state_dir, name))
                return state_dir, False
            except OSError:
                pass
        return tempfile.mkdtemp(prefix="gemini-proxy-"), True     # 0700

    def _seed_state(self) -> None:
        path = ledger_path(self.config, dict(os.environ))
        if not path or not os.path.exists(path):
            return
        store = RespStore(self._state_url, namespace=self.config.state["namespace"])
        try:
            db = open_ledger_database(path, readonly=True)
            try:
                seed_state_from_ledger(store, read_ledger_history(db, time.time()))
            finally:
                db.close()
        except (OSError, StateError) + sqlite3_errors() as exc:
            log.warning("client limits start from zero: cannot read the usage ledger %s "
                        "(%s)", path, exc)
        finally:
            store.close()

    def _hold_port(self) -> socket.socket:
        """With SO_REUSEPORT: a socket bound to the port, not listening (it takes no
        connections), so that port 0 is one port for every worker and nothing else takes
        it while a worker restarts. Without: the listening socket the workers share."""
        host, port = self.config.server["host"], self.config.server["port"]
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        if spreads_by_reuseport():
            # First without SO_REUSEPORT: another proxy of this user that holds the port
            # with it would otherwise let this one in, and they would share the clients.
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
                address = (address[0], probe.getsockname()[1]) + tuple(address[2:])
        sock = socket.socket(family, kind, proto)
        try:
            if spreads_by_reuseport():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            if not spreads_by_reuseport():
                sock.listen(2048)
                sock.set_inheritable(True)
        except OSError:
            sock.close()
            raise
        return sock

    def _start(self, number: int) -> WorkerProcess:
        ours, theirs = socket.socketpair()
        passed = [theirs.fileno()]
        code = "-"
        if HANDED_CODE_FD is not None:   # the code this supervisor runs (section 0)
            code = str(HANDED_CODE_FD)
            passed.append(HANDED_CODE_FD)
        word = {"number": number, "port": self.port, "channel_fd": theirs.fileno(),
                "listen_fd": None, "state_url": self._state_url,
                "config": self._snapshot, "source": self.config.source}
        assert self._listener is not None
        if not spreads_by_reuseport():
            word["listen_fd"] = self._listener.fileno()
            passed.append(self._listener.fileno())
        environ = dict(os.environ, **{WORKER_PROCESS_ENV: json.dumps(word)})
        # Its own session: a terminal's Ctrl+C reaches the supervisor alone, which passes
        # one SIGTERM on (two would mean "now" to the worker). SIGHUP blocked until the
        # worker has its handler (serve unblocks it): a reload passed on while a worker
        # starts would otherwise end it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process = subprocess.Popen(
                [sys.executable] + interpreter_flags() +
                ["-c", MODULE_BOOT, code, os.path.abspath(__file__)] + self.argv,
                env=environ, pass_fds=passed, stderr=subprocess.PIPE, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
            theirs.close()
        relay = threading.Thread(target=self._relay_log, args=(process,), daemon=True,
                                 name="log-of-worker-%d" % number)
        try:
            relay.start()
        except RuntimeError as exc:   # no thread to read its log: the worker may not run
            process.kill()
            process.wait()
            ours.close()
            raise OSError("no thread for its log: %s" % exc) from None
        return WorkerProcess(number, process, ours, time.monotonic(), relay)

    def _relay_log(self, process: "subprocess.Popen[bytes]") -> None:
        relayed = logging.getLogger(RELAYED_LOG)
        assert process.stderr is not None
        for line in process.stderr:
            began = self._writing_since[process.pid] = time.monotonic()
            # handle(), not info(): the worker applied logging.level already.
            relayed.handle(logging.makeLogRecord({
                "name": RELAYED_LOG, "msg": "%s", "levelno": logging.INFO,
                "levelname": "INFO",
                "args": (line.decode("utf-8", "replace").rstrip("\r\n"),)}))
            ended = time.monotonic()
            del self._writing_since[process.pid]
            if ended - began >= LOG_BLOCKED_AFTER:
                self._log_blocked_at = ended

    def _wait_ready(self) -> Optional[bool]:
        """True when every worker said it listens; False when one exited first, or not
        all said so in WORKER_READY_TIMEOUT; None when SIGINT or SIGTERM came first."""
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        waiting = {w.channel: w for w in self.workers}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0 or any(w.process.poll() is not None for w in waiting.values()):
                log.error("worker processes did not start (see the lines above)")
                return False
            readable = readable_among(list(waiting) + [self._wake_read], min(left, 0.5))
            for channel in readable:
                if channel == self._wake_read:
                    self._drain_wakeups()
                    if any(s in (signal.SIGINT, signal.SIGTERM) for s in self._signals):
                        log.info("stopped while starting")
                        return None
                elif channel.recv(16):
                    waiting.pop(channel).heard = time.monotonic()
        return True

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)     # the wake-up pipe has the byte already

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _supervise(self) -> int:
        stopping, stop_by = 0, math.inf
        while True:
            # SIGCHLD and heartbeats wake this; the timeout is a safety net, not a clock
            # anyone waits on.
            channels = {w.channel: w for w in self.workers if not w.silent_since}
            readable = readable_among([self._wake_read] + list(channels), 1.0)
            self._drain_wakeups()
            for channel in readable:
                if channel in channels:
                    self._hear(channels[channel])
            if not stopping:
                self._kill_stalled()
            while self._signals:
                signum = self._signals.popleft()
                if signum == signal.SIGHUP and not stopping:
                    self._reload()
                elif signum in (signal.SIGINT, signal.SIGTERM):
                    stopping += 1
                    if stopping == 1:
                        log.info("stopping %d worker processes", len(self.workers))
                        stop_by = time.monotonic() + self.config.server["shutdown_grace"] + \
                            WORKER_STOP_MARGIN
                    self._signal_all(signal.SIGTERM)    # a second one: "now"
            if time.monotonic() > stop_by:   # a worker that ignores SIGTERM (stopped, hung)
                for worker in self.workers:
                    log.warning("worker process %d (pid %d) did not stop: killing it",
                                worker.number, worker.process.pid)
                    worker.process.kill()
                stop_by = math.inf
            for worker in list(self.workers):
                code = worker.process.poll()
                if code is None:
                    continue
                worker.ended()
                self.workers.remove(worker)
                if stopping:
                    continue
                # A worker killed for stalling after it said it was ready is not one that
                # cannot start: a request that hangs each new worker's loop must not stop
                # the proxy.
                quick = time.monotonic() - worker.started < WORKER_QUICK_EXIT and \
                    not (worker.killed_for_stall and worker.heard)
                self._quick_exits = self._quick_exits + 1 if quick else 0
                if self._quick_exits >= WORKER_QUICK_EXITS:
                    log.error("worker process %d exited (status %s) %d times in a row soon "
                              "after starting; stopping", worker.number, code,
                              self._quick_exits)
                    self._stop_all()
                    return 1
                log.warning("worker process %d (pid %d) exited (status %s); starting it "
                            "again", worker.number, worker.process.pid, code)
                self._unstarted.append(worker.number)
            self._start_unstarted(stopping)
            if stopping and not self.workers:
                log.info("stopped")
                return 0

    @staticmethod
    def _hear(worker: WorkerProcess) -> None:
        try:
            said = worker.channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            said = b""
        if said:
            worker.heard = time.monotonic()
        else:
            worker.silent_since = time.monotonic()    # exiting: poll() will tell

    def _kill_stalled(self) -> None:
        """A worker whose event loop has said nothing for worker_stall_timeout since its
        last word is stuck: a bug, a deadlock, a stopped process. The kernel still hands
        it its share of new connections, so it is killed, and started again like one
        that died. One started again that has not said it is ready is given at least
        WORKER_READY_TIMEOUT from its start (a first start gets as much); one whose
        channel has ended, shutdown_grace + WORKER_STOP_MARGIN to exit. While the log
        output is blocked the workers block on it too: their silence counts only from
        when it last was. Killed first, logged after: a log write can block, and a
        decision must not outlive the moment it was made in."""
        timeout = self.config.server["worker_stall_timeout"]
        if not timeout:
            return
        now = time.monotonic()
        if any(now - began >= LOG_BLOCKED_AFTER for began in
               list(self._writing_since.values())):
            self._log_blocked_at = now
        stalled = []
        for worker in self.workers:
            if worker.killed_for_stall:
                continue
            if worker.silent_since:
                since, limit, why = worker.silent_since, \
                    self.config.server["shutdown_grace"] + WORKER_STOP_MARGIN, \
                    "has not exited %.0f s after it said it was stopping"
            elif worker.heard:
                since, limit, why = worker.heard, timeout, "has said nothing for %.0f s"
            else:
                since, limit, why = worker.started, max(timeout, WORKER_READY_TIMEOUT), \
                    "has not said it is ready %.0f s after it was started"
            silence = now - max(since, self._log_blocked_at)
            if silence > limit:
                stalled.append((worker, why % silence))
        for worker, _ in stalled:
            worker.killed_for_stall = True
            worker.process.kill()
        for worker, why in stalled:
            log.error("worker process %d (pid %d) %s (worker_stall_timeout): killed it",
                      worker.number, worker.process.pid, why)

    def _start_unstarted(self, stopping: int) -> None:
        """Start the workers that are to run again; one the system will not start now
        (out of processes or memory) is tried again at the next look."""
        for number in list(self._unstarted):
            if stopping:
                self._unstarted.clear()
                return
            try:
                self.workers.append(self._start(number))
            except OSError as exc:
                now = time.monotonic()
                if now - self._start_failed_at > 60:
                    self._start_failed_at = now
                    log.error("cannot start worker process %d (%s); trying again each "
                              "second", number, exc)
                return
            self._unstarted.remove(number)

    def _reload(self) -> None:
        """SIGHUP: the configuration read again here first; a bad one stays here (the
        workers keep theirs, and a worker started later gets the last good one)."""
        try:
            config = self._load_config_copy()
        except (ConfigError, OSError) as exc:
            log.error("reload failed, the workers keep the previous configuration: %s", exc)
            return
        if process_count(config.server["processes"]) != self.count:
            log.warning("reload: server.processes changed; it takes effect after a restart")
        self.config = config
        log.info("passing SIGHUP on to the worker processes")
        self._signal_all(signal.SIGHUP)

    def _load_config_copy(self) -> Config:
        """The configuration, from a copy of its file that becomes the workers' (at
        start, on SIGHUP, for a worker started again) only once it has loaded: the bytes
        checked are the bytes they read, and a file edited or broken since reaches no
        worker. Raises ConfigError (the copy is then dropped)."""
        source = self.config.source
        if not source:      # flags and environment: the workers get the same
            return load_config(self.args)
        try:
            with open(source, "rb") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError("cannot read config file %s: %s" % (source, exc.strerror)) \
                from None
        target = os.path.join(self._folder, "config-%s.json" % self._tag)
        candidate = target + ".new"
        with open(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                  "wb") as f:
            f.write(text)
        try:
            config = load_config(argparse.Namespace(**dict(vars(self.args),
                                                            config=candidate)))
        except ConfigError as exc:   # told of the user's file, not of the copy
            os.unlink(candidate)
            raise ConfigError(str(exc).replace(candidate, source)) from None
        os.replace(candidate, target)
        self._snapshot, config.source = target, source
        return config

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            try:
                worker.process.send_signal(signum)
            except OSError:   # exited already: the next look finds it
                pass

    def _stop_all(self) -> None:
        self._signal_all(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.process.wait(self.config.server["shutdown_grace"] + WORKER_STOP_MARGIN)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.ended()
        self.workers.clear()


# ---- 33. Command line ----------------------------------------------------------------------

def build_arg_parser() -> argparse.ArgumentParser:
    """Flags for the settings that have one (SETTINGS, section 1), plus the actions."""
    parser = argparse.ArgumentParser(
        prog="gemini_proxy.py",
        description="Let Gemini, OpenAI and Anthropic API clients use OpenAI-compatible, "
                    "Gemini and Anthropic providers. Settings come from a config file, then "
                    "GEMINI_PROXY_* environment variables, then these flags.")
    parser.add_argument("-c", "--config", help="JSON config file (default: "
                        "$GEMINI_PROXY_CONFIG, else ./config.json when it exists)")
    for setting in SETTINGS:
        if not setting.flag:
            continue
        default = setting.default
        where = "%s.%s" % (setting.section, setting.key) if setting.section else setting.key
        if setting.section == "upstream":
            where = "the default upstream's " + setting.key
        text = "%s; sets %s, also $%s" % (setting.help, where, setting.env)
        if isinstance(default, bool):
            parser.add_argument(setting.flag, action="store_true", help=text)
        elif isinstance(default, list):
            parser.add_argument(setting.flag, action="append", default=[],
                                help=text + " (repeatable)")
        elif isinstance(default, int) and setting.choices:   # a number, or a word
            def number_or_word(text: str, words: Tuple[str, ...] = setting.choices) -> Any:
                return text if text in words else int(text)
            number_or_word.__name__ = "whole number or %s" % " or ".join(setting.choices)
            parser.add_argument(setting.flag, type=number_or_word,
                                help=text + " (default %s)" % default)
        else:
            parser.add_argument(setting.flag, type=type(default), choices=setting.choices
                                or None, help=text + (" (default %s)" % default
                                                      if default != "" else ""))
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration, print where requests go, and exit")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return parser


def reload_config(server: ProxyServer, args: argparse.Namespace,
                  worker: Optional[Dict[str, Any]] = None) -> None:
    """SIGHUP: read the configuration again, from the same file, environment and flags;
    a bad one is reported and the running one kept."""
    try:
        config = load_config(args)
    except ConfigError as exc:
        log.error("reload failed, still running the previous configuration: %s", exc)
        return
    if worker is not None:   # the port its supervisor holds (server.port may say 0)
        config.server["port"] = worker["port"]
        config.source = worker["source"]
    server.reload(config)
    logging.getLogger().setLevel(config.logging["level"].upper())
    log.info("configuration reloaded%s", " from %s" % config.source if config.source else "")
    log_where_requests_go(server.proxy)


def log_where_requests_go(proxy: "Proxy") -> None:
    """The start-up lines after the first: upstreams and routes, and warnings for what a
    user should know before the first request fails."""
    for line in proxy.describe():
        log.info("%s", line)
    config = proxy.config
    if config.disabled:
        log.warning("upstreams turned off until their keys are set: %s", "; ".join(
            "%s (%s)" % item for item in config.disabled.items()))
    if not config.source and [s["base_url"] for s in config.upstreams.values()] == \
            [OLLAMA_BASE_URL]:
        log.warning("no upstream is configured, so requests go to a local Ollama at %s; "
                    "for a provider set OPENAI_BASE_URL and OPENAI_API_KEY, or use "
                    "-c config.json (see config.example.json)", OLLAMA_BASE_URL)


# Python's cycle collector, set for a server that holds thousands of streams. At its
# defaults it ran a full collection each time the live objects grew by a quarter: with
# 3,000 streams opening, 11% of the CPU and pauses of a third of a second in which no
# stream moved. What start-up made lives as long as the process (frozen: never looked at
# again), and the youngest generation is collected every 10,000 new objects, not 700
# (2,000 from 3.13). Measured with gc.callbacks during bench/bench.py's slow streams; set
# only by a running server, never on import.
GC_YOUNG_THRESHOLD = 10000


def settle_garbage_collector() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def serve(config: Config, args: Optional[argparse.Namespace] = None,
                worker: Optional[Dict[str, Any]] = None) -> int:
    """Run the proxy until SIGINT or SIGTERM, then shut down gracefully; SIGHUP reloads
    the configuration. The number of upstream calls that could not be stopped (a worker
    still connecting, which no socket shutdown reaches) is returned. `worker`: what the
    supervisor of a worker process said (section 32)."""
    listen_socket = None
    if worker is not None:
        config.server["port"] = worker["port"]
        if worker["listen_fd"] is not None:
            listen_socket = socket.socket(fileno=worker["listen_fd"])
    server = ProxyServer(config, listen_socket=listen_socket,
                         reuse_port=worker is not None and listen_socket is None,
                         shared_url=worker["state_url"] if worker is not None else "")
    await server.start()
    settle_garbage_collector()
    return_free_memory()   # the syntax tree of an import (section 0), freed
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        if not server.request_stop():
            log.warning("second signal: exiting now, without waiting for requests in flight")
            logging.shutdown()
            os._exit(128 + signum)
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop, signum)
        except (NotImplementedError, RuntimeError):   # Windows: Ctrl+C still works
            pass
    if hasattr(signal, "SIGHUP") and args is not None:
        loop.add_signal_handler(signal.SIGHUP, reload_config, server, args, worker)
    if worker is not None:
        # Blocked by the supervisor until now (see Supervisor._start); one sent meanwhile
        # is a reload now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        channel = socket.socket(fileno=worker["channel_fd"])
        channel.setblocking(False)

        def supervisor_gone() -> None:
            try:
                if channel.recv(16):
                    return
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                pass
            loop.remove_reader(channel.fileno())
            log.warning("the supervisor is gone: stopping")
            server.request_stop()
        loop.add_reader(channel.fileno(), supervisor_gone)

        def beat() -> None:
            # Sent by the event loop: a stuck loop says nothing (Supervisor._kill_stalled).
            try:
                channel.send(b".")
            except (BlockingIOError, InterruptedError):
                pass   # the supervisor has not read the last ones: it lives, and knows
            except OSError:
                return   # gone: supervisor_gone stops the server
            heartbeat[0] = loop.call_later(WORKER_HEARTBEAT, beat)
        channel.send(b"ready")
        heartbeat = [loop.call_later(WORKER_HEARTBEAT, beat)]
        log.info("worker process %d (pid %d) serving port %d", worker["number"],
                 os.getpid(), server.port)
        await server.serve_until_stopped()
        heartbeat[0].cancel()
        loop.remove_reader(channel.fileno())
        channel.close()
        log.info("worker process %d stopped", worker["number"])
        return server.proxy.working
    host = config.server["host"]
    public = not is_loopback_host(host) and not config.server["api_keys"]
    log.log(logging.WARNING if public else logging.INFO,
            "gemini-proxy %s listening on http://%s:%d (%s)", __version__,
            "[%s]" % host if ":" in host else host, server.port,
            "client keys required" if config.server["api_keys"] else
            "NO CLIENT KEYS: anyone who can reach this address can use it" if public
            else "no client keys")
    log_where_requests_go(server.proxy)
    await server.serve_until_stopped()
    log.info("stopped")
    return server.proxy.working


def setup_logging(settings: Dict[str, Any]) -> None:
    """Log to standard error, and to logging.file (rotated by size) when set; as text or
    JSON lines (logging.format)."""
    formatter = JsonLogFormatter() if settings["format"] == "json" else \
        LogFormatter("%(asctime)s %(levelname)s %(message)s")
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if settings["file"]:
        # (Not "import logging.handlers": it would make logging a name local to here.)
        from logging.handlers import RotatingFileHandler
        handlers.append(RotatingFileHandler(
            settings["file"], maxBytes=settings["file_max_bytes"],
            backupCount=settings["file_count"], encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=settings["level"].upper(), handlers=handlers, force=True)
    # No line shows the thread, the process or where it was logged from, and looking them
    # up for every record was a third of a request's log line (the switches of the
    # logging HOWTO's "Optimization" section).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None   # type: ignore[attr-defined]


# `usage`: the ledger as a table, by day, model, client, upstream or key.
USAGE_GROUPS = {"day": "date(time, 'unixepoch')", "model": "model", "client": "client",
                "upstream": "upstream", "key": "key"}
USAGE_COLUMNS = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens",
                 "reasoning_tokens", "estimated", "avg_seconds")


def parse_since(text: str, now: float) -> float:
    """--since: "7d", "12h", "30m", or a date (YYYY-MM-DD, UTC) -> a Unix time."""
    match = re.match(r"(\d+)([dhm])\Z", text)
    if match:
        return now - int(match.group(1)) * {"d": 86400, "h": 3600, "m": 60}[match.group(2)]
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%d").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        raise ConfigError("--since: %r is not like 7d, 12h, 30m or 2026-12-01" % text) \
            from None


def usage_report(path: str, since: float, by: str) -> List[Dict[str, Any]]:
    """Rows of the ledger at `path` since `since`, grouped `by` (USAGE_GROUPS)."""
    if not os.path.exists(path):
        raise ConfigError("no usage ledger at %s yet (the proxy writes it as it serves)"
                          % path)
    try:
        db = open_ledger_database(path, readonly=True)
        try:
            rows = db.execute(
                "SELECT %s, COUNT(*), " % USAGE_GROUPS[by] + ", ".join(
                    "COALESCE(SUM(%s), 0)" % column for column in (
                        "error_kind != ''", "input_tokens", "output_tokens", "cached_tokens",
                        "reasoning_tokens", "estimated")) +
                ", AVG(duration) FROM requests WHERE time >= ? GROUP BY 1 ORDER BY 1",
                (since,)).fetchall()
        finally:
            db.close()
    except (OSError,) + sqlite3_errors() as exc:
        raise ConfigError("cannot read the usage ledger %s: %s" % (path, exc)) from None
    return [dict(zip((by,) + USAGE_COLUMNS, (str(row[0] or "-"),) + tuple(row[1:-1]) +
                     (round(row[-1] or 0.0, 3),))) for row in rows]


def print_usage(rows: List[Dict[str, Any]], by: str, form: str) -> None:
    columns = (by,) + USAGE_COLUMNS
    if form == "json":
        print(json.dumps(rows, indent=2))
        return
    # Model names are the clients' text: no escape sequence reaches the terminal.
    rows = [dict(row, **{by: log_safe(row[by])}) for row in rows]
    if form == "csv":
        import csv
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([row[c] for c in columns] for row in rows)
        return
    if not rows:
        print("no requests in that time")
        return
    totals = {c: sum(row[c] for row in rows) for c in USAGE_COLUMNS[:-1]}
    table = [[str(row[c]) for c in columns] for row in rows] + [
        ["total"] + [str(totals[c]) for c in USAGE_COLUMNS[:-1]] + [""]]
    widths = [max(len(c), *(len(line[i]) for line in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(columns, widths))))
    for line in table:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                        for i, (v, w) in enumerate(zip(line, widths))))


def usage_command(argv: List[str]) -> int:
    """`usage`: what the ledger holds, as a table (or JSON, or CSV)."""
    parser = argparse.ArgumentParser(prog="gemini_proxy.py usage", description=(
        "Requests and tokens from the usage ledger (usage.database), grouped."))
    parser.add_argument("-c", "--config", help="JSON config file (as for serving)")
    parser.add_argument("--since", default="7d", help="7d, 12h, 30m or a date "
                        "(YYYY-MM-DD, UTC); default 7d")
    parser.add_argument("--by", default="day", choices=tuple(USAGE_GROUPS))
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_const", dest="form", const="json")
    form.add_argument("--csv", action="store_const", dest="form", const="csv")
    args = parser.parse_args(argv[1:])
    environ = dict(os.environ)
    try:
        config = load_config(argparse.Namespace(config=args.config), environ)
        path = ledger_path(config, environ)
        if not path:
            raise ConfigError("the usage ledger is off (usage.database is empty)")
        rows = usage_report(path, parse_since(args.since, time.time()), args.by)
    except ConfigError as exc:
        print("gemini-proxy usage: %s" % exc, file=sys.stderr)
        return 2
    print_usage(rows, args.by, args.form or "table")
    return 0


def account_command(argv: List[str]) -> int:
    """`login` and `accounts`: the Google accounts of a code-assist upstream."""
    command = argv[0]
    parser = argparse.ArgumentParser(prog="gemini_proxy.py " + command, description={
        "login": "Sign in with Google and add the account to a code-assist upstream "
                 "(Gemini through Code Assist, under Google's terms for it).",
        "accounts": "List the Google accounts of a code-assist upstream: email, project, "
                    "tier, state, and today's requests and tokens."}[command])
    parser.add_argument("-c", "--config", help="JSON config file (as for serving)")
    parser.add_argument("--upstream", default="", help="the code-assist upstream (default: "
                        "the first configured)")
    if command == "login":
        parser.add_argument("--no-browser", action="store_true", help="print the address "
                            "and ask for the code Google shows (for a box with no browser)")
        parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 for "
                            "Google's redirect (default: any free one)")
    else:
        parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv[1:])
    environ = dict(os.environ)
    try:
        config = load_config(argparse.Namespace(config=args.config), environ)
        if command == "login":
            login(config, args.upstream, args.no_browser, args.port, environ)
        else:
            print_accounts(account_rows(config, args.upstream, environ), args.json)
    except ConfigError as exc:
        print("gemini-proxy %s: %s" % (command, exc), file=sys.stderr)
        return 2
    except UpstreamError as exc:
        print("gemini-proxy %s: %s" % (command, exc.message), file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("\ngemini-proxy %s: stopped" % command, file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("login", "accounts", "usage"):
        let_go_of_handed_code()
        return (usage_command if argv[0] == "usage" else account_command)(argv)
    args = build_arg_parser().parse_args(argv)
    worker = json.loads(os.environ.pop(WORKER_PROCESS_ENV, "null"))
    if worker is not None and worker["config"]:
        args.config = worker["config"]   # the supervisor's copy (Supervisor._load_config_copy)
    try:
        config = load_config(args)
    except ConfigError as exc:
        print("gemini-proxy: configuration error: %s" % exc, file=sys.stderr)
        return 2
    if worker is not None:
        config.source = worker["source"]
    try:
        # A worker's lines go to its supervisor, which alone writes logging.file.
        setup_logging(dict(config.logging, file="") if worker is not None else
                      config.logging)
    except OSError as exc:
        print("gemini-proxy: cannot write the log file %s: %s" % (
            config.logging["file"], exc.strerror or exc), file=sys.stderr)
        return 2
    if args.check:
        print("configuration OK%s" % (" (%s)" % config.source if config.source else ""))
        for line in Proxy(config).describe():
            print(line)
        return 0
    if worker is None and process_count(config.server["processes"]) > 1:
        refused = too_many_processes(config.server["processes"])
        if refused:
            print("gemini-proxy: configuration error: %s" % refused, file=sys.stderr)
            return 2
        return Supervisor(config, argv, args).run()
    let_go_of_handed_code()   # serving alone: no worker to hand it to
    try:
        unstoppable = asyncio.run(serve(config, args, worker))
        if unstoppable:
            # Python would wait for those worker threads (up to connect_timeout each):
            # the shutdown grace is what was promised, so leave now.
            log.warning("exiting with %d upstream calls still connecting", unstoppable)
            logging.shutdown()
            os._exit(0)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.server["host"], config.server["port"],
                  exc.strerror or exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
