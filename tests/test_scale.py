"""Many requests at once (issue 11): the elastic worker pool, worker processes behind one
port, and the state they share."""

import contextlib
import functools
import gc
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from conftest import PATIENCE, gp, tls_certificate, wait_for
from fake_upstream import (Gate, chunk, completion, json_reply, pause_after, sse,
                           sse_texts_reply, text_stream, usage)

OPENAI = "/v1/chat/completions"
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
GEMINI_ASK = "/v1beta/models/fake-model:generateContent"
GEMINI_CHAT = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
# A request too large for the event loop to begin (LOOP_BODY_BYTES): a worker takes it.
LARGE_CHAT = {"model": "fake-model", "messages": [
    {"role": "user", "content": "x" * (gp.LOOP_BODY_BYTES + 1)}]}


# ---- the worker pool ---------------------------------------------------------------------

def occupy(pool, count, then=lambda: None):
    """`count` of the pool's threads busy, each until the Event returned is set (and then
    `then()`)."""
    go, started = threading.Event(), threading.Semaphore(0)

    def hold():
        started.release()
        go.wait(PATIENCE)
        then()
    for _ in range(count):
        pool.submit(hold)
    for _ in range(count):
        assert started.acquire(timeout=PATIENCE)
    return go


def test_the_pool_starts_threads_as_requests_need_them_and_queues_past_its_limit():
    pool = gp.WorkerPool(limit=3, name="test-pool")
    release = threading.Event()
    started, done = [], []
    lock = threading.Lock()

    def task(number):
        with lock:
            started.append(number)
        release.wait(PATIENCE)
        with lock:
            done.append(number)
    try:
        for number in range(5):
            pool.submit(task, number)
        wait_for(lambda: len(started) == 3, message=lambda: "started: %r" % started)
        assert pool.threads == 3      # the limit: the other two wait for a free thread
        release.set()
        wait_for(lambda: len(done) == 5, message=lambda: "done: %r" % done)
        assert sorted(started) == list(range(5)) and pool.threads == 3
    finally:
        release.set()
        pool.close()
    wait_for(lambda: pool.threads == 0, message="closing ends idle threads")


def test_an_idle_thread_is_reused_and_idle_threads_end(monkeypatch):
    pool = gp.WorkerPool(limit=100)
    names = []
    finished = threading.Semaphore(0)

    def task():
        names.append(threading.current_thread().name)
        finished.release()
    try:
        for _ in range(20):   # one at a time: one thread serves them all
            pool.submit(task)
            assert finished.acquire(timeout=PATIENCE)
        assert len(set(names)) == 1 and pool.threads == 1, names
    finally:
        pool.close()
    monkeypatch.setattr(gp, "WORKER_IDLE_EXIT", 0.05)
    pool = gp.WorkerPool(limit=100)
    try:
        pool.submit(task)
        assert finished.acquire(timeout=PATIENCE)
        wait_for(lambda: pool.threads == 0, message="an idle pool lets its threads go")
        pool.submit(task)                   # and starts one again when asked
        assert finished.acquire(timeout=PATIENCE)
    finally:
        pool.close()


def test_a_pool_that_shrinks_gives_memory_back_once(monkeypatch):
    # After a burst the C heap is mostly free but scattered: a pool whose threads end in
    # numbers trims it, once per halving, never a small pool, and never while it holds
    # its lock.
    trims = []
    monkeypatch.setattr(gp, "WORKER_IDLE_EXIT", 0.05)

    def trim():
        trims.append(pool.threads)
        pool.submit(lambda: None)   # takes the pool's lock: held here, it would never return
        trims.append("after")
        return True
    monkeypatch.setattr(gp, "return_free_memory", trim)
    for burst, expected in ((gp.WORKER_SHRINK_TRIM - 10, []),
                            (gp.WORKER_SHRINK_TRIM + 6, [6, "after"])):
        pool = gp.WorkerPool(limit=1000)
        trims.clear()
        go = threading.Event()
        try:
            go = occupy(pool, burst)
            assert pool.threads == burst
            go.set()
            wait_for(lambda: pool.threads == 0 and len(trims) == len(expected),
                     message="the pool shrank to nothing")
            assert trims == expected
        finally:
            go.set()
            pool.close()


def test_the_thread_idle_the_shortest_time_takes_the_next_task():
    # Woken in turn, every thread of a pool under a steady trickle would stay busy often
    # enough never to end for idleness: the latest idle one is taken, the others rest.
    pool = gp.WorkerPool(limit=10)
    go = threading.Event()
    names = []

    def note():
        names.append(threading.current_thread().name)
    try:
        go = occupy(pool, 3)
        go.set()
        for _ in range(10):   # one at a time, each once all three are idle again
            wait_for(lambda: len(pool._idle) == 3, message="the threads back to idle")
            pool.submit(note)
        wait_for(lambda: len(names) == 10, message="the tasks run")
        assert len(set(names)) == 1 and pool.threads == 3, names
    finally:
        go.set()
        pool.close()


def test_the_end_of_a_request_goes_first_and_past_the_limit():
    # A request's end lets go of keys that requests queued for a thread may be waiting
    # for: it must not queue behind them, nor wait for a thread held by one of them.
    pool = gp.WorkerPool(limit=1)
    go = threading.Event()
    order = []
    try:
        go = occupy(pool, 1, then=lambda: order.append("held"))
        pool.submit(order.append, "new request")        # queued: the only thread is busy
        ended = threading.Event()
        pool.submit(lambda: (order.append("end"), ended.set()), resuming=True)
        assert ended.wait(PATIENCE), "the end waited for the busy thread"
        # The thread started for it ends then: new requests keep to the limit.
        wait_for(lambda: pool.threads == 1, message="the extra thread ended")
        assert order == ["end"]
        go.set()
        wait_for(lambda: len(order) == 3, message="the rest run")
        assert order == ["end", "held", "new request"]
        pool.close()
        pool.submit(order.append, "after close", resuming=True)
        wait_for(lambda: order[-1] == "after close", message="an end taken after close()")
        with pytest.raises(RuntimeError):
            pool.submit(order.append, "new after close")
    finally:
        go.set()
        pool.close()


def test_the_ends_of_requests_go_in_the_order_they_came(monkeypatch):
    # Hundreds of parked streams waking at once each resume their request: the one that
    # woke first must not wait behind all that woke after it (the pool once took the
    # newest first). They still go before a new request.
    pool = gp.WorkerPool(limit=1)
    real_start = threading.Thread.start
    holding, starting, proceed = threading.Event(), threading.Event(), threading.Event()

    def start(thread):
        if holding.is_set() and not thread.name.endswith("-starter"):
            starting.set()            # the starter, held up starting a thread
            proceed.wait(PATIENCE)
        real_start(thread)
    monkeypatch.setattr(threading.Thread, "start", start)
    order, done = [], threading.Semaphore(0)

    def task(name):
        order.append(name)
        done.release()
    go = threading.Event()
    try:
        go = occupy(pool, 1, then=lambda: task("held"))
        holding.set()
        pool.submit(task, "new request")                 # queued: the only thread is busy
        for name in ("end 1", "end 2", "end 3"):
            pool.submit(task, name, resuming=True)
            assert starting.wait(PATIENCE)
        go.set()          # the busy thread takes the queue, its new threads held up
        for _ in range(5):
            assert done.acquire(timeout=PATIENCE)
        assert order == ["held", "end 1", "end 2", "end 3", "new request"]
    finally:
        go.set()
        proceed.set()
        pool.close()



def test_threads_busy_with_the_rests_of_requests_hold_no_new_request_back():
    # The limit bounds the new requests worked on at once: threads that took the rests
    # of requests past it (hundreds of streams waking, a whole reply each) must not count,
    # or a steady flow of them starves every new request (an adversary's: a fresh request
    # waited 10 s behind 20 streams with one worker).
    pool = gp.WorkerPool(limit=1)
    ran, held = threading.Event(), threading.Event()
    try:
        pool.submit(lambda: (held.set(), ran.wait(2 * PATIENCE)), resuming=True)
        assert held.wait(PATIENCE)
        pool.submit(ran.set)
        assert ran.wait(PATIENCE), "the new request waited for the rest of another"
    finally:
        ran.set()
        pool.close()


def test_a_limit_lowered_below_the_idle_threads_strands_no_task(monkeypatch):
    # A reload may lower server.workers below the threads there are: a task submitted
    # then must be taken at once (not left to an idle thread's time-out, made longer than
    # the test's patience), and the threads over the limit end as they finish.
    monkeypatch.setattr(gp, "WORKER_IDLE_EXIT", PATIENCE * 4)
    pool = gp.WorkerPool(limit=3)
    go = threading.Event()
    try:
        go = occupy(pool, 3)
        go.set()
        wait_for(lambda: len(pool._idle) == 3, message="the threads idle")
        pool.limit = 1
        ran = threading.Event()
        pool.submit(ran.set)
        assert ran.wait(PATIENCE), "the task was left queued with idle threads"
        wait_for(lambda: pool.threads == 2, message="the thread that ran it ended")
    finally:
        go.set()
        pool.close()


def test_a_task_queued_at_the_limit_never_strands_the_next(monkeypatch):
    """Limit 1: a task that waited for the only thread, then that thread ending for
    idleness, and a task after it: it must run (the pool once counted a thread as idle
    that had gone)."""
    monkeypatch.setattr(gp, "WORKER_IDLE_EXIT", 0.05)
    pool = gp.WorkerPool(limit=1)
    ran = []
    gate, done = threading.Event(), threading.Semaphore(0)

    def task(number, wait=False):
        if wait:
            gate.wait(PATIENCE)
        ran.append(number)
        done.release()
    try:
        pool.submit(task, 1, True)
        pool.submit(task, 2)          # queued: the one thread is busy
        gate.set()
        for _ in range(2):
            assert done.acquire(timeout=PATIENCE)
        wait_for(lambda: pool.threads == 0, message="the idle thread ends")
        pool.submit(task, 3)
        assert done.acquire(timeout=PATIENCE), "the task after an idle exit never ran"
        assert ran == [1, 2, 3]
    finally:
        gate.set()
        pool.close()


def test_a_thread_the_system_refuses_leaves_the_task_to_a_running_one(monkeypatch):
    pool = gp.WorkerPool(limit=10)
    gate, done = threading.Event(), threading.Semaphore(0)
    ran = []

    busy = threading.Event()

    def task(number, wait=False):
        if wait:
            busy.set()
            gate.wait(PATIENCE)
        ran.append(number)
        done.release()
    real_start = threading.Thread.start
    try:
        pool.submit(task, 1, True)    # one thread, busy
        assert busy.wait(PATIENCE)
        monkeypatch.setattr(threading.Thread, "start", lambda self: (_ for _ in ()).throw(
            RuntimeError("can't start new thread")))
        pool.submit(task, 2)          # no new thread: queued for the busy one
        wait_for(lambda: pool.threads == 1 and pool.starved, message="the start refused")
        gate.set()
        for _ in range(2):
            assert done.acquire(timeout=PATIENCE)
        assert ran == [1, 2]
        monkeypatch.setattr(threading.Thread, "start", real_start)
    finally:
        gate.set()
        pool.close()
    empty = gp.WorkerPool(limit=10)    # no thread at all: the caller hears so at once
    monkeypatch.setattr(threading.Thread, "start", lambda self: (_ for _ in ()).throw(
        RuntimeError("can't start new thread")))
    with pytest.raises(RuntimeError):
        empty.submit(task, 3)
    assert empty.threads == 0 and not empty.starved


def test_a_new_thread_is_started_by_the_pool_not_by_whoever_submits(monkeypatch):
    # Thread.start() waits for the new thread to run, a turn of the GIL: on the event
    # loop, with a burst of requests busy, that stopped every stream for milliseconds
    # a thread.
    pool = gp.WorkerPool(limit=10)
    real_start = threading.Thread.start
    starters = []

    def start(thread):
        starters.append((thread.name, threading.get_ident()))
        real_start(thread)
    monkeypatch.setattr(threading.Thread, "start", start)
    ran = threading.Semaphore(0)
    go = threading.Event()
    try:
        go = occupy(pool, 3)
        pool.submit(ran.release)
        assert ran.acquire(timeout=PATIENCE)
        workers = [ident for name, ident in starters if not name.endswith("-starter")]
        assert len(workers) == 4 and threading.get_ident() not in workers, starters
        assert pool.threads == 4
    finally:
        go.set()
        pool.close()


def test_a_thread_is_not_started_for_a_task_a_running_thread_took(monkeypatch):
    """A burst of short tasks (requests that let go of their thread while their upstream
    thinks) is taken by the threads there are as they finish: the starter starts a
    thread only for a task still waiting when it comes to it, not one per task."""
    pool = gp.WorkerPool(limit=10)
    real_start = threading.Thread.start
    started, holding = [], threading.Event()
    starting, proceed = threading.Event(), threading.Event()

    def start(thread):
        if not thread.name.endswith("-starter"):
            started.append(thread.name)
            if holding.is_set():      # the starter, busy starting a thread
                starting.set()
                proceed.wait(PATIENCE)
        real_start(thread)
    monkeypatch.setattr(threading.Thread, "start", start)
    ran = []
    done = threading.Semaphore(0)

    def task(name):
        ran.append(name)
        done.release()
    go = threading.Event()
    try:
        go = occupy(pool, 1, then=lambda: task("first"))
        holding.set()
        pool.submit(task, "second")   # a thread counted for it, its start held up
        assert starting.wait(PATIENCE)
        holding.clear()
        pool.submit(task, "third")    # counted too; the starter is still busy
        go.set()                      # the running thread takes both meanwhile
        for _ in range(3):
            assert done.acquire(timeout=PATIENCE)
        assert ran == ["first", "second", "third"]
        proceed.set()
        wait_for(lambda: not pool._to_start and pool._starter_wake is not None,
                 message="the starter done and idle")
        assert len(started) == 2 and pool.threads == 2, (started, pool.threads)
    finally:
        go.set()
        proceed.set()
        pool.close()


def refuse_worker_threads(monkeypatch, refusing=lambda: True):
    """The system refuses the pool's worker threads (not its starter) while refusing()."""
    real_start = threading.Thread.start

    def start(thread):
        if refusing() and not thread.name.endswith("-starter"):
            raise RuntimeError("can't start new thread")
        real_start(thread)
    monkeypatch.setattr(threading.Thread, "start", start)


def test_where_no_worker_thread_starts_the_starter_runs_the_task(monkeypatch):
    pool = gp.WorkerPool(limit=10)
    refuse_worker_threads(monkeypatch)
    ran = threading.Semaphore(0)
    try:
        pool.submit(ran.release)   # late rather than never
        pool.submit(ran.release)
        for _ in range(2):
            assert ran.acquire(timeout=PATIENCE)
        assert pool.threads == 0
    finally:
        pool.close()


def test_a_task_the_starter_runs_itself_holds_up_no_thread_start(monkeypatch):
    # A worker refused: the starter runs the task (a request, which may take minutes).
    # Threads may start again meanwhile, and a request's end must not wait for it.
    pool = gp.WorkerPool(limit=10)
    refuse = [True]
    refuse_worker_threads(monkeypatch, lambda: refuse[0])
    held, gate, ended = threading.Event(), threading.Event(), threading.Event()
    try:
        pool.submit(lambda: (held.set(), gate.wait(PATIENCE)))
        assert held.wait(PATIENCE)
        refuse[0] = False
        pool.submit(ended.set, resuming=True)
        assert ended.wait(PATIENCE), "the end waited for the starter's task"
        assert not gate.is_set()
    finally:
        gate.set()
        pool.close()


def test_a_starter_that_cannot_start_leaves_no_other_task_without_a_thread(monkeypatch):
    # Two submits at once, the first starting the starter, which the system refuses:
    # the second must not have counted on it.
    pool = gp.WorkerPool(limit=10)
    real_start = threading.Thread.start
    starting, go_on = threading.Event(), threading.Event()
    refused, errors = [], []

    def start(thread):
        if thread.name.endswith("-starter") and not refused:
            refused.append(thread.name)
            starting.set()
            go_on.wait(PATIENCE)
            raise RuntimeError("can't start new thread")
        real_start(thread)
    monkeypatch.setattr(threading.Thread, "start", start)

    def first():
        try:
            pool.submit(lambda: None)
        except RuntimeError as exc:
            errors.append(exc)
    ran = threading.Event()
    submitters = [threading.Thread(target=first),
                  threading.Thread(target=lambda: pool.submit(ran.set))]
    try:
        submitters[0].start()
        assert starting.wait(PATIENCE)
        submitters[1].start()
        submitters[1].join(0.2)   # a chance to count on the starter being started
        go_on.set()
        for submitter in submitters:
            submitter.join(PATIENCE)
        assert ran.wait(PATIENCE), "a task was left without a thread"
        assert len(errors) == 1 and pool.threads == 1
    finally:
        go_on.set()
        pool.close()


def test_worker_threads_hold_deep_recursion():
    pool = gp.WorkerPool(limit=1)
    seen = []
    finished = threading.Event()

    def deep(n):
        return 0 if n == 0 else deep(n - 1) + 1

    def task():
        seen.append(threading.stack_size())
        try:
            seen.append(deep(900))
            json.loads("[" * 100000 + "]" * 100000)
        except RecursionError:
            seen.append("recursion error, as in the main thread")
        finally:
            finished.set()
    try:
        pool.submit(task)
        assert finished.wait(PATIENCE)
    finally:
        pool.close()
    # the pool sets the stack size only while starting its own threads: the process's
    # default is left as it was (looked at while no pool, of any proxy in this process,
    # is starting a thread)
    with gp.THREAD_STACK_SIZE_LOCK:
        assert threading.stack_size() == 0
    assert seen[1:] == [900, "recursion error, as in the main thread"]


def test_a_running_server_settles_the_garbage_collector_and_importing_does_not(tmp_path):
    """The module leaves the collector alone (it is vendored into other programs); a
    server, started, freezes what start-up made and collects its youngest objects less
    often."""
    probe = ("import gc, sys; before = gc.get_threshold(); import gemini_proxy as gp; "
             "assert gc.get_threshold() == before and gc.get_freeze_count() == 0; "
             "gp.settle_garbage_collector(); "
             "print(gc.get_threshold()[0], gc.get_freeze_count() > 0)")
    here = os.path.dirname(os.path.abspath(gp.__file__))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=here, timeout=PATIENCE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(gp.GC_YOUNG_THRESHOLD), "True"]
    # serve() is what calls it: a server whose settling says so and exits (one process,
    # nothing from this environment or directory: no config.json, no GEMINI_PROXY_*)
    serving = ("import gc, os, sys; before = gc.get_threshold(); import gemini_proxy as gp\n"
               "def settled():\n"
               "    print('settled', gc.get_threshold() == before and "
               "gc.get_freeze_count() == 0, flush=True)\n"
               "    os._exit(0)\n"
               "gp.settle_garbage_collector = settled\n"
               "sys.exit(gp.main(['--host', '127.0.0.1', '--port', '0', '--processes', '1', "
               "'--upstream-url', 'http://127.0.0.1:9/v1']))\n")
    done = subprocess.run([sys.executable, "-c", serving], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=PATIENCE * 2, env={
                              "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                              "PYTHONPATH": here, "GEMINI_PROXY_STATE_DIR": str(tmp_path)})
    assert done.stdout.split() == ["settled", "True"], (done.stdout, done.stderr[-2000:])


def test_importing_the_module_leaves_what_only_rare_paths_need_unimported():
    """http.server and http.client bring the email package: some 2.5 MB of an idle proxy
    and 5 ms of each start, for the login and accounts commands (and a log file) alone."""
    probe = ("import sys, gemini_proxy; print(sorted(m for m in ('csv', 'difflib', 'email', "
             "'html', 'http.client', 'http.server', 'logging.handlers', 'mimetypes', "
             "'urllib.request') "
             "if m in sys.modules))")
    here = os.path.dirname(os.path.abspath(gp.__file__))
    done = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                          cwd=here, timeout=PATIENCE)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


# ---- many streams through one proxy ------------------------------------------------------

def all_at_the_upstream(askers, all_in, reached):
    """Run each asker (a function that asks the proxy) in a thread of its own, and
    assert that all their requests reach the upstream and wait there at once (the
    upstream sets `all_in` when they have; `reached[0]` counts them); then let them go
    on, and wait for the askers."""
    threads = [threading.Thread(target=asker, daemon=True) for asker in askers]
    for thread in threads:
        thread.start()
    try:
        assert all_in.wait(PATIENCE * 2), "only %d of %d requests reached the upstream" % (
            reached[0], len(askers))
    finally:
        all_in.set()
        for thread in threads:
            thread.join(PATIENCE * 3)


def test_more_streams_than_the_old_thread_limit_are_all_in_flight_at_once(proxy_factory, fake):
    """300 streams (the pool once stopped at 256): every one reaches the upstream and
    sends its first event before any is let finish (a stream past its first event holds
    no thread, so the pool may have started fewer)."""
    count = 300
    proxy = proxy_factory()
    all_open = threading.Event()
    lock = threading.Lock()
    opened = [0]

    def counted(reply):
        def wrapped(handler, request):
            with lock:
                opened[0] += 1
                if opened[0] == count:
                    all_open.set()
            reply(handler, request)
        return wrapped
    fake.queue(*[counted(pause_after(text_stream("hello there", pieces=2), writes=1,
                                     until=all_open, seconds=PATIENCE * 2))
                 for _ in range(count)])
    answers = [None] * count

    def ask(index):
        answers[index] = proxy.post(OPENAI, {"model": "fake-model", "stream": True,
                                             "messages": [{"role": "user", "content": "hi"}]},
                                    timeout=PATIENCE * 3)
    all_at_the_upstream([functools.partial(ask, i) for i in range(count)], all_open, opened)
    assert [answer[0] for answer in answers] == [200] * count
    assert {openai_stream_text(answer[1]) for answer in answers} == {"hello there"}


def hold(handler, held, all_in, count, until):
    """Count this reply in `held` ([0]), the last of `count` setting `all_in`, then
    wait until `until` (by default `all_in`) is set."""
    with handler.server.fake.lock:
        held[0] += 1
        if held[0] == count:
            all_in.set()
    handler.pause(PATIENCE * 2, until=until or all_in)


def held_after_head(reply, held, all_in, count, until=None):
    """`reply` (whole or streamed), held after its head (see hold)."""
    def wrapped(handler, request):
        end_headers = handler.end_headers

        def send_then_hold():
            end_headers()       # (sent at once: the fake's writes are unbuffered)
            hold(handler, held, all_in, count, until)
        handler.end_headers = send_then_hold
        reply(handler, request)
    return wrapped


def held_before_reply(reply, held, all_in, count, until=None):
    """`reply`, held before anything of it is sent (see hold)."""
    def wrapped(handler, request):
        hold(handler, held, all_in, count, until)
        reply(handler, request)
    return wrapped


def one_worker_proxy(proxy_factory, fake, base_url=None):
    return proxy_factory({"upstreams": {"fake": {
        "kind": "openai", "base_url": base_url or fake.base_url,
        "api_key": "sk-upstream-secret-1234"}},
        "default_model": "fake-model", "server": {"workers": 1}})


def by_name(fake):
    """The fake's base_url with a name for its host (localhost), not its address: the
    event loop connects to it only once a worker has looked the name up."""
    return fake.base_url.replace("127.0.0.1", "localhost")


@pytest.mark.parametrize("held", [held_before_reply, held_after_head])
def test_a_request_whose_upstream_thinks_holds_no_worker_thread(proxy_factory, fake, held):
    """While the upstream has the request and has sent nothing back, or only its head
    (a model thinking, seconds or minutes), no thread waits for it. With one worker,
    four requests (whole and streamed, passed through and converted) all reach the
    upstream and wait at once, and are answered."""
    proxy = one_worker_proxy(proxy_factory, fake)
    count, reached, all_in = 4, [0], threading.Event()

    def as_asked(handler, request):
        (text_stream("streamed", pieces=2) if request.get("stream")
         else json_reply(completion("whole")))(handler, request)
    fake.queue(*[held(as_asked, reached, all_in, count) for _ in range(count)])
    answers = {}
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    gemini = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    asks = [(OPENAI, chat), ("/v1beta/models/fake-model:generateContent", gemini),
            (OPENAI, dict(chat, stream=True)),
            ("/v1beta/models/fake-model:streamGenerateContent?alt=sse", gemini)]

    def ask(index):
        answers[index] = proxy.post(*asks[index], timeout=PATIENCE * 3)
    all_at_the_upstream([functools.partial(ask, i) for i in range(count)], all_in, reached)
    assert [answers[i][0] for i in range(count)] == [200] * count, answers
    assert [answers[0][1]["choices"][0]["message"]["content"],
            answers[1][1]["candidates"][0]["content"]["parts"][0]["text"],
            openai_stream_text(answers[2][1]), gemini_stream_text(answers[3][1])] == \
        ["whole", "whole", "streamed", "streamed"]
    proxy.wait_until_idle()


def held_after_first_write(reply, held, all_in, count, until=None):
    """`reply` (a stream), held after its first write (see hold)."""
    def wrapped(handler, request):
        write, written = handler.write_chunk, []

        def write_then_hold(data):
            sent = write(data)
            written.append(data)
            if sent and len(written) == 1:
                hold(handler, held, all_in, count, until)
            return sent
        handler.write_chunk = write_then_hold
        reply(handler, request)
    return wrapped


def test_a_stream_whose_upstream_thinks_after_a_first_write_holds_no_worker_thread(
        proxy_factory, fake):
    """Many upstreams write something that is no answer yet, then think: a role-only
    delta, a comment (OpenRouter), an empty prompt-filter event (Azure), half an event.
    No thread waits through that thinking: with one worker, streams passed through and
    converted (and a whole reply collected from a stream) all reach the upstream, write
    their first bytes and wait at once, and are answered."""
    proxy = proxy_factory({"upstreams": {"fake": {
        "kind": "openai", "base_url": fake.base_url, "api_key": "sk-upstream-secret-1234",
        "upstream_streaming": "always"}}, "default_model": "fake-model",
        "server": {"workers": 1}})
    events = [sse(chunk({"role": "assistant", "content": ""}))] + \
        [sse(chunk({"content": piece})) for piece in ("stre", "amed")] + \
        [sse(chunk(finish="stop")), sse(chunk(usage=usage(), choices=False)), sse("[DONE]")]
    azure_filter = sse({"id": "", "object": "", "created": 0, "model": "", "choices": [],
                        "prompt_filter_results": [{"prompt_index": 0}]})
    replies = [sse_texts_reply([": PROCESSING\n\n"] + events),       # passed through
               sse_texts_reply([azure_filter] + events),             # passed through
               sse_texts_reply(events),                              # Gemini client
               sse_texts_reply(events),                              # Anthropic client
               sse_texts_reply([events[0][:20], events[0][20:]] + events[1:]),   # Gemini
               sse_texts_reply(events)]                              # Gemini, whole
    count, reached, all_in = len(replies), [0], threading.Event()
    fake.queue(*[held_after_first_write(reply, reached, all_in, count) for reply in replies])
    chat = {"model": "fake-model", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    gemini = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    gemini_stream = "/v1beta/models/fake-model:streamGenerateContent?alt=sse"
    asks = [(OPENAI, chat), (OPENAI, chat), (gemini_stream, gemini),
            ("/v1/messages", {"model": "fake-model", "max_tokens": 100, "stream": True,
                              "messages": [{"role": "user", "content": "hi"}]}),
            (gemini_stream, gemini), ("/v1beta/models/fake-model:generateContent", gemini)]
    answers = {}

    def ask(index):
        answers[index] = proxy.post(*asks[index], timeout=PATIENCE * 3)
    all_at_the_upstream([functools.partial(ask, i) for i in range(count)], all_in, reached)
    assert [answers[i][0] for i in range(count)] == [200] * count, answers
    anthropic_text = "".join(
        json.loads(line[len(b"data: "):]).get("delta", {}).get("text", "")
        for line in answers[3][1].split(b"\n") if line.startswith(b"data: "))
    assert [openai_stream_text(answers[0][1]), openai_stream_text(answers[1][1]),
            gemini_stream_text(answers[2][1]), anthropic_text, gemini_stream_text(answers[4][1]),
            answers[5][1]["candidates"][0]["content"]["parts"][0]["text"]] == \
        ["streamed"] * count
    proxy.wait_until_idle()


def test_a_keep_alive_comment_lets_go_of_the_thread_at_once(proxy_factory, fake,
                                                            monkeypatch):
    """Comments that an upstream sends while its model thinks (OpenRouter's, every few
    seconds) are followed by no grace: with one worker, each comment held it for
    EVENT_GAP_GRACE, and /health said no worker was free a third of the time. Here the
    grace outlasts the test's patience: streams after a comment (passed through,
    converted for a Gemini and an Anthropic client) must still all reach the upstream
    and wait at once."""
    monkeypatch.setattr(gp, "EVENT_GAP_GRACE", PATIENCE * 4)
    proxy = one_worker_proxy(proxy_factory, fake)
    events = [sse(chunk({"role": "assistant", "content": "after a comment"})),
              sse(chunk(finish="stop")), sse("[DONE]")]
    count, reached, all_in = 3, [0], threading.Event()
    fake.queue(*[held_after_first_write(sse_texts_reply([": PROCESSING\n\n"] + events),
                                        reached, all_in, count) for _ in range(count)])
    asks = [(OPENAI, dict(CHAT, stream=True)),
            ("/v1beta/models/fake-model:streamGenerateContent?alt=sse", GEMINI_CHAT),
            ("/v1/messages", dict(CHAT, max_tokens=100, stream=True))]
    answers = {}

    def ask(index):
        answers[index] = proxy.post(*asks[index], timeout=PATIENCE * 3)
    all_at_the_upstream([functools.partial(ask, i) for i in range(count)], all_in, reached)
    assert [answers[i][0] for i in range(count)] == [200] * count, answers
    assert openai_stream_text(answers[0][1]) == gemini_stream_text(answers[1][1]) == \
        "after a comment"
    assert b"after a comment" in answers[2][1]
    proxy.wait_until_idle()


def test_a_request_waiting_out_a_backoff_holds_no_worker_thread(proxy_factory, fake):
    """A retry's backoff is no thread's wait: with one worker, a request answers while
    another waits out its backoff; the waiting one's client leaves, which ends the
    wait at once (its backoff is an hour), and nothing is tried again."""
    proxy = proxy_factory({"upstreams": {"fake": {
        "kind": "openai", "base_url": fake.base_url, "api_key": "sk-upstream-secret-1234",
        "retries": 1, "retry_wait": 3600, "retry_wait_max": 3600, "retry_budget": 7200}},
        "default_model": "fake-model", "server": {"workers": 1}})
    app = proxy.server.proxy
    fake.queue(json_reply({"error": {"message": "overloaded"}}, status=503),
               json_reply(completion("answered meanwhile")))
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    waiting = proxy.connection()
    try:
        waiting.request("POST", OPENAI, body=json.dumps(chat),
                        headers={"content-type": "application/json"})
        wait_for(lambda: len(fake.requests) == 1 and app.active == 1 and app.working == 0,
                 message="the first request waiting out its backoff, no thread held")
        status, body = proxy.post(OPENAI, chat)
        assert status == 200 and body["choices"][0]["message"]["content"] == \
            "answered meanwhile", body
    finally:
        waiting.close()
    proxy.wait_until_idle()
    assert len(fake.requests) == 2, "a request tried again after its client left"


def watch_go_on(app, monkeypatch, refuse_first=False):
    """(the threads the request's steps went on in, the threads a hand-over to a worker
    was refused in: the first, with `refuse_first`, as a system that starts no thread)."""
    ran_in, refused = [], []
    real_submit, real_go_on = app.workers.submit, app._go_on

    def submit(function, *args, **kwargs):
        if refuse_first and function == go_on and not refused:
            refused.append(threading.current_thread())
            raise RuntimeError("can't start new thread")
        return real_submit(function, *args, **kwargs)

    def go_on(*args):
        ran_in.append(threading.current_thread())
        real_go_on(*args)
    monkeypatch.setattr(app.workers, "submit", submit)
    monkeypatch.setattr(app, "_go_on", go_on)
    return ran_in, refused


def test_a_request_whose_bytes_come_when_no_thread_starts_goes_on_later_never_on_the_loop(
        proxy_factory, fake, monkeypatch):
    """The upstream answers a request that let go of its thread, and the system starts
    no thread for it (its thread limit): it asks again GO_ON_RETRY later, and runs in a
    worker, not on the event loop (its rest may block: every stream would stop)."""
    monkeypatch.setattr(gp, "GO_ON_RETRY", 0.05)
    proxy = one_worker_proxy(proxy_factory, fake)
    app = proxy.server.proxy
    monkeypatch.setattr(app, "runs_on_loop", lambda pipe, body: False)   # begun in a worker
    released = threading.Event()
    fake.queue(held_before_reply(json_reply(completion("later")), [0], threading.Event(), 1,
                                 until=released))
    ran_in, refused = watch_go_on(app, monkeypatch, refuse_first=True)
    answers = []
    asker = threading.Thread(target=lambda: answers.append(proxy.post(OPENAI, {
        "model": "fake-model", "messages": [{"role": "user", "content": "hi"}]})), daemon=True)
    asker.start()
    try:
        wait_for(lambda: app.active == 1 and app.working == 0 and fake.requests,
                 message="the request waiting for its upstream, no thread held")
    finally:
        released.set()
        asker.join(PATIENCE)
    assert answers and answers[0][0] == 200, answers
    assert answers[0][1]["choices"][0]["message"]["content"] == "later"
    # (once, or more where a busy machine made the reply's body late after its head)
    assert len(refused) == 1
    assert ran_in and proxy._thread not in ran_in, "the request went on in the loop's thread"


# ---- small requests the event loop answers itself ----------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_small_whole_request_is_answered_by_the_event_loop_with_no_thread(
        proxy_factory, fake, scheme, request, monkeypatch):
    """On an upstream's idle connection, plain or TLS, a small request with a whole
    reply takes no worker thread (two hand-overs between the loop and a worker were a
    third of its CPU): with the only worker busy, requests passed through and converted
    are answered."""
    if scheme == "https":
        fake, cert = request.getfixturevalue("tls_fake")
        monkeypatch.setenv("SSL_CERT_FILE", cert)
    proxy = one_worker_proxy(proxy_factory, fake)
    fake.queue(json_reply(completion("first")), json_reply(completion("passed through")),
               json_reply(completion("converted")))
    assert proxy.post(OPENAI, CHAT)[0] == 200     # (connects; then idle)
    proxy.wait_until_idle()
    app = proxy.server.proxy
    handed, real_in_a_thread = [], app._in_a_thread
    monkeypatch.setattr(app, "_in_a_thread", lambda rq, steps: (
        handed.append(rq), real_in_a_thread(rq, steps)))
    go, freed = threading.Event(), []
    try:
        go = occupy(app.workers, 1, then=lambda: freed.append(True))
        status, body = proxy.post(OPENAI, CHAT, timeout=PATIENCE * 2)
        assert status == 200 and body["choices"][0]["message"]["content"] == \
            "passed through", body
        status, body = proxy.post(GEMINI_ASK, GEMINI_CHAT, timeout=PATIENCE * 2)
        assert status == 200 and body["candidates"][0]["content"]["parts"][0]["text"] == \
            "converted", body
        assert not freed, "answered once the worker was free, not by the loop"
        assert not handed, "the loop handed the request to a worker (past the limit)"
    finally:
        go.set()
    assert fake.connections == 1


STREAM_CHAT = dict(CHAT, stream=True)
GEMINI_STREAM = "/v1beta/models/fake-model:streamGenerateContent?alt=sse"


def streamed_text(data, dialect="openai"):
    """The text of a stream's events (OpenAI's deltas, or Gemini's parts)."""
    texts = []
    for line in data.decode().split("\n"):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[len("data: "):])
        if dialect == "openai":
            texts += [c["delta"].get("content") or "" for c in event["choices"]]
        else:
            texts += [p.get("text", "") for c in event.get("candidates", [])
                      for p in c.get("content", {}).get("parts", [])]
    return "".join(texts)


def watch_hand_overs(app, monkeypatch):
    """The requests the loop handed to a worker (_in_a_thread) from now on."""
    handed, real_in_a_thread = [], app._in_a_thread
    monkeypatch.setattr(app, "_in_a_thread", lambda rq, steps: (
        handed.append(rq), real_in_a_thread(rq, steps)))
    return handed


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_small_stream_on_a_kept_connection_is_opened_by_the_event_loop_with_no_thread(
        proxy_factory, fake, scheme, request, monkeypatch):
    """A small streamed request on an upstream's idle connection, plain or TLS, is sent,
    its first events read and the rest relayed by the event loop, no worker thread
    taken (the only one is busy) and none handed the request, passed through and
    converted, each stream whole."""
    if scheme == "https":
        fake, cert = request.getfixturevalue("tls_fake")
        monkeypatch.setenv("SSL_CERT_FILE", cert)
    proxy = one_worker_proxy(proxy_factory, fake)
    fake.queue(json_reply(completion("first")),
               text_stream("passed through by the loop", pieces=4),
               text_stream("converted by the loop", pieces=4))
    assert proxy.post(OPENAI, CHAT)[0] == 200     # (connects; then idle)
    proxy.wait_until_idle()
    app = proxy.server.proxy
    handed = watch_hand_overs(app, monkeypatch)
    freed = []
    go = occupy(app.workers, 1, then=lambda: freed.append(True))
    try:
        status, _, data = proxy.request("POST", OPENAI, STREAM_CHAT, timeout=PATIENCE * 2)
        assert status == 200 and streamed_text(data) == "passed through by the loop", data
        assert data.rstrip().endswith(b"data: [DONE]")
        status, _, data = proxy.request("POST", GEMINI_STREAM, GEMINI_CHAT,
                                        timeout=PATIENCE * 2)
        assert status == 200 and streamed_text(data, "gemini") == "converted by the loop"
        assert not freed, "answered once the worker was free, not by the loop"
        assert not handed, "the loop handed the stream to a worker"
    finally:
        go.set()
    assert fake.connections == 1


@pytest.mark.parametrize("path, payload, dialect", [(OPENAI, STREAM_CHAT, "openai"),
                                                    (GEMINI_STREAM, GEMINI_CHAT, "gemini")])
def test_the_event_loop_waits_for_a_streams_first_answer_without_a_thread(
        proxy_factory, fake, monkeypatch, path, payload, dialect):
    """The loop's stream has its upstream's first bytes (a role-only delta) and then
    nothing for a while: the loop waits for the socket, answering others (/health) with
    the only worker free, and the stream is whole once the rest comes."""
    proxy = one_worker_proxy(proxy_factory, fake)
    released = threading.Event()
    fake.queue(json_reply(completion("first")),
               pause_after(text_stream("after a pause", pieces=2), writes=1,
                           seconds=2 * PATIENCE, until=released))
    assert proxy.post(OPENAI, CHAT)[0] == 200     # an idle connection for the next
    proxy.wait_until_idle()
    app = proxy.server.proxy
    handed = watch_hand_overs(app, monkeypatch)
    answers = []
    asker = threading.Thread(target=lambda: answers.append(
        proxy.request("POST", path, payload, timeout=PATIENCE * 3)), daemon=True)
    asker.start()
    try:
        wait_for(lambda: len(fake.requests) == 2 and app.active == 1 and app.working == 0,
                 message="the stream waiting for its first answer, no thread held")
        status, _, health = proxy.request("GET", "/health", timeout=PATIENCE)
        assert status == 200 and json.loads(health)["workers_free"] == 1, health
    finally:
        released.set()
        asker.join(PATIENCE * 3)
    assert answers and answers[0][0] == 200, answers
    assert streamed_text(answers[0][2], dialect) == "after a pause"
    assert not handed, "the loop handed the stream to a worker"


@pytest.mark.parametrize("path, payload", [(OPENAI, STREAM_CHAT), (GEMINI_STREAM, GEMINI_CHAT)])
def test_a_whole_json_answer_to_the_loops_stream_is_read_whole_in_a_worker(
        proxy_factory, fake, monkeypatch, path, payload):
    """A stream was asked for and the upstream answers with whole JSON, its body in two
    parts with a pause between: read whole (in a worker: a whole body's read waits), it
    is reported as what it is, not as JSON cut at the pause (passed through or
    converted)."""
    proxy, released = kept_then_held(proxy_factory, fake, "a whole reply", {"retries": 0},
                                     {"workers": 1})
    app = proxy.server.proxy
    handed = watch_hand_overs(app, monkeypatch)
    answers = []
    asker = threading.Thread(target=lambda: answers.append(proxy.post(
        path, payload, timeout=PATIENCE * 3)), daemon=True)
    asker.start()
    try:
        wait_for(lambda: handed, message="the whole body's read handed to a worker")
    finally:
        released.set()
        asker.join(PATIENCE * 3)
    assert answers and answers[0][0] == 502, answers
    message = answers[0][1]["error"]["message"]
    assert "answered a stream request with a whole JSON reply" in message, message


def test_a_whole_reply_made_of_a_stream_is_assembled_in_a_worker(proxy_factory, fake,
                                                                 monkeypatch):
    """upstream_streaming "always", a client asking for a whole reply: the loop opens the
    stream, and its events are assembled and converted in a worker (a large reply, made
    whole on the loop, would hold up every stream it relays)."""
    proxy = proxy_factory({"upstreams": {"fake": {
        "kind": "openai", "base_url": fake.base_url, "api_key": "sk-upstream-secret-1234",
        "upstream_streaming": "always"}}, "default_model": "fake-model"})
    fake.queue(text_stream("assembled whole", pieces=3))
    handed = watch_hand_overs(proxy.server.proxy, monkeypatch)
    status, body = proxy.post(GEMINI_ASK, GEMINI_CHAT)
    assert status == 200 and body["candidates"][0]["content"]["parts"][0]["text"] == \
        "assembled whole", body
    assert len(handed) == 1, "assembled on the loop"


def test_the_loops_stream_whose_first_bytes_never_come_times_out(proxy_factory, fake,
                                                                 monkeypatch):
    proxy = proxy_factory({"upstreams": {"fake": {
        "kind": "openai", "base_url": fake.base_url, "api_key": "sk-upstream-secret-1234",
        "first_byte_timeout": 0.5, "retries": 0}}, "default_model": "fake-model"})
    released = threading.Event()
    fake.queue(json_reply(completion("first")),
               write_then_hold(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                               b"transfer-encoding: chunked\r\n\r\n", b"0\r\n\r\n",
                               released))
    assert proxy.post(OPENAI, CHAT)[0] == 200     # an idle connection for the next
    proxy.wait_until_idle()
    found_in, real_timed_out = [], gp.UpstreamResponse._timed_out

    def timed_out(response, meaning):
        found_in.append(threading.current_thread())
        return real_timed_out(response, meaning)
    monkeypatch.setattr(gp.UpstreamResponse, "_timed_out", timed_out)
    try:
        status, answer = proxy.post(OPENAI, STREAM_CHAT, timeout=PATIENCE)
    finally:
        released.set()
    assert status == 504 and "sent nothing within 0.5s" in answer["error"]["message"], answer
    assert found_in == [proxy._thread], "the first bytes not waited for on the loop"


def test_the_loop_reads_a_reply_a_turn_at_a_time(fake, monkeypatch):
    """On the loop a reply is read LOOP_READ_TURN at a go: then a read says nothing has
    come though more has (the loop waits for the socket, readable at once, and its
    other work has a turn; an upstream flooding comments held it as long as it
    flooded), and the next read goes on."""
    monkeypatch.setattr(gp, "READ_BYTES", 1024)
    monkeypatch.setattr(gp, "LOOP_READ_TURN", 4096)
    written, released = threading.Event(), threading.Event()

    def comments_then_hold(handler, request):
        handler.start_stream()
        handler.wfile.write(b"".join(b"%x\r\n%s\r\n" % (len(c), c)
                                     for c in [b": " + b"x" * 998 + b"\n\n"] * 40))
        handler.wfile.flush()
        written.set()
        handler.pause(2 * PATIENCE, until=released)
        handler.end_stream(sse("[DONE]").encode())
    fake.queue(comments_then_hold)
    pool = gp.ConnectionPool()
    try:
        response = gp.run_through(gp.opening_upstream(
            pool, gp.upstream_target(fake.base_url, {}), "up", "POST", "/chat/completions",
            b"{}", [], gp.Timeouts(10, 30, 30), 8))
        assert written.wait(PATIENCE)
        wait_for(lambda: gp.readable_now(response._conn.sock), message="the bytes here")
        response.read_on_loop()
        sizes = []
        while True:
            data = response._read(first=False)
            if data is None:
                break
            sizes.append(len(data))
        assert 4096 <= sum(sizes) < 4096 + 2048, sizes     # a turn, and no more
        assert response._read(first=False), "the rest had not come?"
    finally:
        released.set()
        pool.close_all()


def test_the_loops_puts_never_wait_for_room_in_the_pipe(proxy_factory, fake, monkeypatch):
    """A stream the loop makes of a whole reply puts more than stream_queue_chunks (1)
    into its pipe: the loop, which empties the pipe, must not wait for room (it would
    wait for ever); nor a relayed stream's head, first event and relay."""
    proxy = proxy_factory({"upstreams": {
        "whole": {"kind": "openai", "base_url": fake.base_url, "api_key": "sk-upstream-1234",
                  "upstream_streaming": "never"},
        "fake": {"kind": "openai", "base_url": fake.base_url, "api_key": "sk-upstream-1234"}},
        "routes": [{"model": "whole-model", "upstream": "whole"},
                   {"model": "*", "upstream": "fake"}],
        "server": {"workers": 1, "stream_queue_chunks": 1}})
    fake.queue(json_reply(completion("first")), json_reply(completion("made a stream")),
               text_stream("relayed", pieces=3))
    assert proxy.post(OPENAI, dict(CHAT, model="whole-model"))[0] == 200
    proxy.wait_until_idle()
    handed = watch_hand_overs(proxy.server.proxy, monkeypatch)
    status, _, data = proxy.request("POST", OPENAI, dict(STREAM_CHAT, model="whole-model"))
    assert status == 200 and streamed_text(data) == "made a stream", data
    status, _, data = proxy.request("POST", OPENAI, STREAM_CHAT)
    assert status == 200 and streamed_text(data) == "relayed", data
    assert not handed, "the loop handed a stream to a worker"


def test_the_event_loop_connects_to_a_local_upstream_itself(proxy_factory, fake,
                                                             monkeypatch):
    """An upstream on this machine over plain HTTP, by its address: the loop makes new
    connections itself (connecting ends at once), so even a first request, and a stream
    whose connection is new, take no worker (the only one busy) and none is handed one."""
    proxy = one_worker_proxy(proxy_factory, fake)
    app = proxy.server.proxy
    fake.queue(json_reply(completion("first of all")), text_stream("on a new one", pieces=2))
    handed = watch_hand_overs(app, monkeypatch)
    freed = []
    go = occupy(app.workers, 1, then=lambda: freed.append(True))
    try:
        status, body = proxy.post(OPENAI, CHAT, timeout=PATIENCE * 2)
        assert status == 200 and body["choices"][0]["message"]["content"] == "first of all"
        app.pool.close_all()             # (no idle connection: the stream needs a new one)
        status, _, data = proxy.request("POST", OPENAI, STREAM_CHAT, timeout=PATIENCE * 2)
        assert status == 200 and streamed_text(data) == "on a new one", data
        assert not freed, "answered once the worker was free, not by the loop"
        assert not handed, "the loop handed a request to a worker"
    finally:
        go.set()
    assert fake.connections == 2 and app.pool.created == 2


@pytest.mark.parametrize("ttl, handed_over", [(60.0, [1, 1]), (0.0, [1, 2])])
def test_the_loop_connects_to_a_local_name_at_the_address_a_worker_found_for_a_while(
        proxy_factory, fake, monkeypatch, ttl, handed_over):
    """By name (localhost): the first connection is a worker's (a name to look up may
    block), the next the loop's, to the address the worker found, unless
    LOCAL_ADDRESS_TTL has passed since (then a worker's again)."""
    monkeypatch.setattr(gp, "LOCAL_ADDRESS_TTL", ttl)
    proxy = one_worker_proxy(proxy_factory, fake, by_name(fake))
    app = proxy.server.proxy
    fake.queue(*[json_reply(completion("answer %d" % n)) for n in range(2)])
    handed = watch_hand_overs(app, monkeypatch)
    counts = []
    for n in range(2):
        status, body = proxy.post(OPENAI, CHAT)
        assert status == 200 and body["choices"][0]["message"]["content"] == "answer %d" % n
        counts.append(len(handed))
        proxy.wait_until_idle()
        app.pool.close_all()             # (no idle connection: the next needs a new one)
    assert counts == handed_over and fake.connections == 2


def test_a_local_upstream_that_refuses_the_loops_connection_is_reported_by_a_worker(
        proxy_factory, monkeypatch):
    """Nothing listens at the local address: the loop's connect fails at once, and the
    request goes on in a worker, which connects again and says what failed (a 502)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]    # (closed: a port nothing listens on)
    proxy = proxy_factory({"upstreams": {"fake": {
        "kind": "openai", "base_url": "http://127.0.0.1:%d/v1" % port, "api_key": "k-1234",
        "retries": 0}}, "default_model": "fake-model"})
    handed = watch_hand_overs(proxy.server.proxy, monkeypatch)
    status, body = proxy.post(OPENAI, CHAT)
    assert status == 502 and "cannot reach upstream 'fake'" in body["error"]["message"], body
    assert len(handed) == 1
    assert proxy.server.proxy.pool.open == 0


@pytest.mark.parametrize("pause, resumed", [(60.0, [True, False]), (0.0, [True, True])])
def test_after_a_local_connect_that_failed_the_loop_leaves_connecting_to_workers(
        proxy_factory, monkeypatch, pause, resumed):
    """The loop's connect to a local upstream fails (nothing listens): found after the
    request took its key, it goes on in a worker past server.workers; for
    LOCAL_CONNECT_PAUSE the next go to workers before they take a key, as new requests,
    which server.workers bounds."""
    monkeypatch.setattr(gp, "LOCAL_CONNECT_PAUSE", pause)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]    # (closed: a port nothing listens on)
    proxy = proxy_factory({"upstreams": {"fake": {
        "kind": "openai", "base_url": "http://127.0.0.1:%d/v1" % port, "api_key": "k-1234",
        "retries": 0}}, "default_model": "fake-model", "server": {"workers": 1}})
    app = proxy.server.proxy
    handed, real_submit = [], app.workers.submit

    def submit(function, *args, resuming=False):
        if function == app._go_on:
            handed.append(resuming)
        real_submit(function, *args, resuming=resuming)
    monkeypatch.setattr(app.workers, "submit", submit)
    for _ in range(2):
        status, body = proxy.post(OPENAI, STREAM_CHAT)
        assert status == 502 and "cannot reach upstream" in body["error"]["message"], body
    assert handed == resumed


def write_then_hold(first, rest, released):
    """A reply written as `first` (bytes: part of its head, or of its body), then held
    until `released`, then `rest`."""
    def reply(handler, request):
        handler.wfile.write(first)
        handler.wfile.flush()
        handler.pause(2 * PATIENCE, until=released)
        handler.wfile.write(rest)
        handler.wfile.flush()
    return reply


def kept_then_held(proxy_factory, fake, text, upstream, server=None):
    """A proxy of the fake (`upstream`, `server`: more of their settings) with a kept
    connection to it, whose next reply, whole JSON of `text`, stops after ten bytes of
    its body until the Event returned is set."""
    proxy = proxy_factory({"upstreams": {"fake": dict(
        {"kind": "openai", "base_url": fake.base_url, "api_key": "sk-upstream-secret-1234"},
        **upstream)}, "default_model": "fake-model", "server": server or {}})
    body = json.dumps(completion(text)).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d" \
        b"\r\n\r\n" % len(body)
    released = threading.Event()
    fake.queue(json_reply(completion("first")),
               write_then_hold(head + body[:10], body[10:], released))
    assert proxy.post(OPENAI, CHAT)[0] == 200     # an idle connection for the next
    proxy.wait_until_idle()
    return proxy, released


@pytest.mark.parametrize("split", ["in its head", "in its body"])
def test_the_event_loop_never_waits_in_a_read_of_a_reply_that_trickles(
        proxy_factory, fake, split):
    """The loop reads a small request's reply as it comes and waits for the socket in
    between: an upstream that sends part of its head, or of its body, and then nothing
    holds up no other request (here /health, which the loop answers) and no worker
    (/health says one is free; a worker reading the reply held the only one), and the
    reply is whole once the rest comes."""
    proxy = one_worker_proxy(proxy_factory, fake)
    body = json.dumps(completion("trickled")).encode()
    whole = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d" \
        b"\r\n\r\n%s" % (len(body), body)
    cut = 20 if split == "in its head" else len(whole) - len(body) // 2
    released = threading.Event()
    fake.queue(json_reply(completion("first")),
               write_then_hold(whole[:cut], whole[cut:], released))
    assert proxy.post(OPENAI, CHAT)[0] == 200     # an idle connection for the next
    proxy.wait_until_idle()
    answers = []
    asker = threading.Thread(target=lambda: answers.append(
        proxy.post(OPENAI, CHAT, timeout=PATIENCE * 3)), daemon=True)
    asker.start()
    try:
        wait_for(lambda: len(fake.requests) == 2, message="the second request upstream")
        for _ in range(3):
            assert proxy.request("GET", "/health", timeout=PATIENCE)[0] == 200
    finally:
        released.set()
        asker.join(PATIENCE * 3)
    assert answers and answers[0][0] == 200, answers
    assert answers[0][1]["choices"][0]["message"]["content"] == "trickled"


def test_a_reply_that_stops_midway_on_the_event_loop_times_out(proxy_factory, fake,
                                                              monkeypatch):
    proxy, released = kept_then_held(proxy_factory, fake, "never whole",
                                     {"read_timeout": 0.5, "retries": 0})
    ran_in, _ = watch_go_on(proxy.server.proxy, monkeypatch)
    try:
        status, answer = proxy.post(OPENAI, CHAT, timeout=PATIENCE)
    finally:
        released.set()
    assert status == 504 and "went silent for 0.5s" in answer["error"]["message"], answer
    # (its waits resumed on the loop; the failure, a 504, is answered from a worker)
    assert ran_in and ran_in[0] is proxy._thread, "not waited for on the loop"


def test_a_request_the_loop_cannot_make_goes_to_a_worker_as_a_new_one(proxy_factory, fake,
                                                                     monkeypatch):
    """With no idle connection to an upstream whose name it has not looked up (or an
    HTTP proxy, a Google login...), the loop hands the request to a worker before it
    takes a key: as a new request, which server.workers bounds (one holding a key goes
    past the limit, for its key's sake)."""
    proxy = one_worker_proxy(proxy_factory, fake, by_name(fake))
    app = proxy.server.proxy
    fake.queue(json_reply(completion("connected")))
    handed, real_submit = [], app.workers.submit

    def submit(function, *args, resuming=False):
        handed.append(resuming)
        real_submit(function, *args, resuming=resuming)
    monkeypatch.setattr(app.workers, "submit", submit)
    status, body = proxy.post(OPENAI, CHAT, timeout=PATIENCE)
    assert status == 200 and body["choices"][0]["message"]["content"] == "connected"
    assert handed and handed[0] is False, handed


def test_what_the_loop_runs_itself(proxy_factory, fake):
    """Small requests where the loop can wait for sockets. (A Responses request that
    names stored items is handed to a worker once read: the test after this one.)"""
    app = one_worker_proxy(proxy_factory, fake).server.proxy
    pipe = type("Pipe", (), {"loop_reads": True})()
    small = json.dumps(CHAT).encode()
    assert app.runs_on_loop(pipe, small)
    assert not app.runs_on_loop(pipe, b"x" * (gp.LOOP_BODY_BYTES + 1))
    assert not app.runs_on_loop(type("Pipe", (), {"loop_reads": False})(), small)


def test_a_responses_request_naming_stored_items_goes_on_in_a_worker(
        proxy_factory, fake, monkeypatch):
    """Its history, expanded and converted, may be long: once its JSON is read, it goes
    on in a worker, however its keys are spelled (in JSON escapes, say)."""
    proxy = one_worker_proxy(proxy_factory, fake)
    app = proxy.server.proxy
    fake.queue(json_reply(completion("Hello Ada.")))
    status, first = proxy.post("/v1/responses", {"model": "m", "input": "my name is Ada"})
    assert status == 200, first
    handed, real_submit = [], app.workers.submit

    def submit(function, *args, resuming=False):
        handed.append(function)
        real_submit(function, *args, resuming=resuming)
    monkeypatch.setattr(app.workers, "submit", submit)
    escaped = ('{"model": "m", "input": "and mine?", "previous\\u005fresponse_id": "%s"}'
               % first["id"]).encode()
    referenced = json.dumps({"model": "m", "input": [
        {"type": "item_reference", "id": first["output"][0]["id"]},
        {"role": "user", "content": "and mine?"}]}).encode()
    alone = json.dumps({"model": "m", "input": "and mine?"}).encode()
    for body, names_stored in ((escaped, True), (referenced, True), (alone, False)):
        fake.queue(json_reply(completion("I do not know.")))
        del handed[:]
        status, _, data = proxy.request("POST", "/v1/responses", body)
        assert status == 200, data
        assert bool(handed) is names_stored, (body, handed)
        sent = json.dumps(fake.last["messages"])
        assert ("Hello Ada." in sent) is names_stored, sent


def test_a_large_reply_is_read_and_converted_in_a_worker_not_on_the_loop(
        proxy_factory, fake, monkeypatch):
    """The loop reads up to LOOP_REPLY_BYTES of a reply: decoding and converting a large
    one (an image) would hold up every stream. The rest goes on in a worker, whole."""
    proxy = one_worker_proxy(proxy_factory, fake)
    app = proxy.server.proxy
    large = "y" * (gp.LOOP_REPLY_BYTES + 50000)
    fake.queue(json_reply(completion("first")), json_reply(completion(large)))
    assert proxy.post(OPENAI, CHAT)[0] == 200     # an idle connection for the next
    proxy.wait_until_idle()
    ran_in, _ = watch_go_on(app, monkeypatch)
    status, body = proxy.post(GEMINI_ASK, GEMINI_CHAT, timeout=PATIENCE)
    assert status == 200 and body["candidates"][0]["content"]["parts"][0]["text"] == large
    assert ran_in and ran_in[-1] is not proxy._thread, "read and converted on the loop"


def test_the_event_loops_request_waits_for_a_thread_when_none_starts_never_runs_on(
        proxy_factory, fake, monkeypatch):
    """A request the loop began comes to what may block (here: connecting, a name to look
    up) and the system starts no thread for it: it asks again GO_ON_RETRY later, and goes
    on in a worker, never on the loop."""
    monkeypatch.setattr(gp, "GO_ON_RETRY", 0.05)
    proxy = one_worker_proxy(proxy_factory, fake, by_name(fake))
    app = proxy.server.proxy
    fake.queue(json_reply(completion("connected")))
    ran_in, refused = watch_go_on(app, monkeypatch, refuse_first=True)
    status, body = proxy.post(OPENAI, CHAT, timeout=PATIENCE)
    assert status == 200 and body["choices"][0]["message"]["content"] == "connected"
    assert refused == [proxy._thread]
    assert ran_in and proxy._thread not in ran_in, "the request went on in the loop's thread"


def test_workers_free_is_never_negative_when_resumed_requests_pass_the_limit(
        proxy_factory, fake):
    """Requests that go on after their upstream thought take threads past
    server.workers: /status and /health say none is free, not a negative number."""
    proxy = one_worker_proxy(proxy_factory, fake)
    app = proxy.server.proxy
    with app._active_lock:
        app.working += 3          # as three resumed requests past the limit of one
    try:
        status, _, data = proxy.request("GET", "/status")
        assert status == 200 and json.loads(data)["workers_free"] == 0
        status, _, data = proxy.request("GET", "/health")
        assert status == 503 and json.loads(data)["workers_free"] == 0
    finally:
        with app._active_lock:
            app.working -= 3


def test_a_client_that_leaves_while_its_stream_waits_for_a_first_event_ends_it(
        proxy_factory, fake):
    """The wait for a first event is the event loop's: a client that leaves meanwhile
    ends its request at once (key, connection and the one worker let go of), and the
    upstream's connection is dropped, not kept for the next request."""
    proxy = one_worker_proxy(proxy_factory, fake)
    heads, all_in, released = [0], threading.Event(), threading.Event()
    fake.queue(held_after_head(text_stream("never read", pieces=2), heads, all_in, 1,
                               until=released))
    conn = proxy.connection()
    try:
        conn.request("POST", OPENAI, body=json.dumps({
            "model": "fake-model", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}),
            headers={"content-type": "application/json"})
        assert all_in.wait(PATIENCE), "the stream never reached the upstream"
    finally:
        conn.close()
    try:
        proxy.wait_until_idle()
        assert proxy.server.proxy.pool.idle == 0, \
            "a connection mid-reply went back to the pool"
    finally:
        released.set()
    status, body = proxy.post(OPENAI, {"model": "fake-model",
                                       "messages": [{"role": "user", "content": "again"}]})
    assert status == 200, body


def test_a_client_leaving_a_request_the_loop_runs_opens_no_new_upstream_connection(
        proxy_factory, fake):
    """The client leaves while the loop waits for its request's reply on a reused
    connection: the stop shuts that socket, which is not a stale connection to retry on
    a new one (an adversary's: one new upstream connection an abandoned request)."""
    proxy = one_worker_proxy(proxy_factory, fake)
    gate = Gate()
    fake.queue(json_reply(completion("first")), gate)
    assert proxy.post(OPENAI, CHAT)[0] == 200     # an idle connection for the next
    proxy.wait_until_idle()
    conn = proxy.connection()
    try:
        conn.request("POST", OPENAI, body=json.dumps(CHAT),
                     headers={"content-type": "application/json"})
        assert gate.entered.wait(PATIENCE), "the request never reached the upstream"
    finally:
        conn.close()
    try:
        proxy.wait_until_idle()
    finally:
        gate.open()
    assert fake.connections == 1, "the abandoned request connected again"


def half_a_size_line_then(released, events):
    """A stream of `events` (SSE texts) whose first chunk's size line comes in two: its
    first digit, then, once `released` is set, the rest."""
    def reply(handler, request):
        handler.start_stream()
        first = b"%x\r\n%s\r\n" % (len(events[0]), events[0].encode())
        handler.wfile.write(first[:1])
        handler.wfile.flush()
        handler.pause(PATIENCE * 2, until=released)
        handler.wfile.write(first[1:])
        for event in events[1:-1]:
            handler.write_chunk(event.encode())
        handler.end_stream(events[-1].encode())
    return reply


def test_half_a_size_line_holds_no_worker_thread_while_the_rest_is_awaited(
        proxy_factory, fake):
    """A stream begun in a worker (too large a request for the event loop) whose first
    bytes are part of a chunk's size line and then nothing: a wait for more bytes took
    those as bytes, and the worker read them again and again, 0.1 s at a time, until the
    silence's time-out (read_timeout: minutes). Now it lets go of the one worker, which
    answers another request meanwhile; the stream is whole once the rest comes."""
    proxy = one_worker_proxy(proxy_factory, fake)
    released = threading.Event()
    events = [sse(chunk({"role": "assistant", "content": "after "})),
              sse(chunk({"content": "a pause"})), sse(chunk(finish="stop")), sse("[DONE]")]
    fake.queue(half_a_size_line_then(released, events), json_reply(completion("meanwhile")))
    answers = {}

    def stream():
        answers["stream"] = proxy.post(OPENAI, dict(LARGE_CHAT, stream=True),
                                       timeout=PATIENCE * 3)
    streaming = threading.Thread(target=stream)
    streaming.start()
    try:
        wait_for(lambda: fake.requests, message="the stream never reached the upstream")
        status, body = proxy.post(OPENAI, LARGE_CHAT)
        assert (status, body["choices"][0]["message"]["content"]) == (200, "meanwhile")
    finally:
        released.set()
        streaming.join(PATIENCE * 4)
    assert answers["stream"][0] == 200, answers
    assert openai_stream_text(answers["stream"][1]) == "after a pause"
    proxy.wait_until_idle()


def test_a_request_whose_client_left_while_it_waited_for_a_worker_calls_no_upstream(
        proxy_factory, fake, monkeypatch):
    """The one worker is busy; a request (too large for the event loop to begin) waits
    for it, and its client leaves meanwhile. When the worker takes it, nothing is sent
    upstream, nor connected to: the adversary's queued requests each made a connection
    (three seconds each to a slow upstream) for a client long gone."""
    proxy = one_worker_proxy(proxy_factory, fake)
    app = proxy.server.proxy
    abandoned, taken = threading.Event(), threading.Event()
    abort = gp.ChunkPipe.abort

    def noted_abort(pipe, *args, **kwargs):
        abort(pipe, *args, **kwargs)
        abandoned.set()
    monkeypatch.setattr(gp.ChunkPipe, "abort", noted_abort)
    handle = app.handle

    def noted_handle(*args, **kwargs):
        try:
            handle(*args, **kwargs)
        finally:
            taken.set()
    monkeypatch.setattr(app, "handle", noted_handle)
    connects = []     # (the fake may accept a connection shut at once only after the test)
    acquire = app.pool.acquire
    monkeypatch.setattr(app.pool, "acquire", lambda *args, **kwargs: connects.append(
        args[0].host) or acquire(*args, **kwargs))
    busy = occupy(app.workers, 1)
    conn = proxy.connection()
    try:
        conn.request("POST", OPENAI, body=json.dumps(LARGE_CHAT),
                     headers={"content-type": "application/json"})
    finally:
        conn.close()
    try:
        assert abandoned.wait(PATIENCE), "the proxy never heard the client leave"
        assert not taken.is_set(), "the request did not wait for the worker"
    finally:
        busy.set()
    assert taken.wait(PATIENCE), "the worker never took the request"
    proxy.wait_until_idle()
    assert connects == [] and not fake.requests, \
        "the upstream was called for a client that had left"
    fake.queue(json_reply(completion("after")))
    status, body = proxy.post(OPENAI, LARGE_CHAT)
    assert (status, body["choices"][0]["message"]["content"]) == (200, "after")
    assert connects == ["127.0.0.1"]


def test_a_client_gone_while_its_request_waited_for_a_worker_is_not_counted(
        proxy_factory, fake, monkeypatch):
    """A Responses request naming a stored response begins on the loop, which hands it
    to a worker once it has read it; the one worker is busy, and its client leaves
    meanwhile. When the worker takes it, its client's limits count nothing for it."""
    proxy = proxy_factory({
        "upstreams": {"fake": {"kind": "openai", "base_url": fake.base_url,
                               "api_key": "sk-upstream-secret-1234"}},
        "default_model": "fake-model",
        "server": {"workers": 1, "api_keys": [{"key": "k-alice", "name": "alice"}]}})
    app = proxy.server.proxy
    abandoned = threading.Event()
    abort = gp.ChunkPipe.abort

    def noted_abort(pipe, *args, **kwargs):
        abort(pipe, *args, **kwargs)
        abandoned.set()
    monkeypatch.setattr(gp.ChunkPipe, "abort", noted_abort)
    admitted, admit = [], app.limits.admit
    monkeypatch.setattr(app.limits, "admit",
                        lambda client: admitted.append(client.name) or admit(client))
    busy = occupy(app.workers, 1)
    conn = proxy.connection()
    try:
        conn.request("POST", "/v1/responses", body=json.dumps(
            {"model": "m", "previous_response_id": "resp_1", "input": "go on"}),
            headers={"content-type": "application/json", "authorization": "Bearer k-alice"})
    finally:
        conn.close()
    try:
        assert abandoned.wait(PATIENCE), "the proxy never heard the client leave"
    finally:
        busy.set()
    proxy.wait_until_idle()
    assert admitted == [] and not fake.requests
    fake.queue(json_reply(completion("counted")))
    status, body = proxy.post("/v1/responses", {"model": "m", "input": "go on"},
                              {"authorization": "Bearer k-alice"})
    assert status == 200 and admitted == ["alice"], body


def test_the_loop_sends_what_the_socket_takes_and_leaves_the_rest_to_a_worker():
    """On the event loop a request goes into the socket without waiting: an upstream
    that reads its requests slowly (or not at all) fills the buffers between, and a
    blocking send there stopped the loop for first_byte_timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    target = gp.upstream_target("http://127.0.0.1:%d/v1" % server.getsockname()[1], {})
    conn = gp.UpstreamConnection.connect(target, None, PATIENCE)
    peer, _ = server.accept()         # never reads
    body = b"x" * (64 << 20)          # more than socket buffers take (32 MB at most here)
    left = []
    sender = threading.Thread(target=lambda: left.append(conn.send(
        "POST", "/v1/chat/completions", target, {}, body, at_once=True)), daemon=True)
    try:
        sender.start()
        sender.join(PATIENCE)
        assert left, "the send waited for the upstream to read"
        assert 0 < len(left[0]) < len(body)
    finally:
        conn.close()
        peer.close()
        server.close()


@contextlib.contextmanager
def tls_connection(folder):
    """(target, the proxy's UpstreamConnection, the upstream's end of it): a TLS
    connection on loopback, closed afterwards."""
    cert, key = tls_certificate(folder)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    accepted = []
    acceptor = threading.Thread(target=lambda: accepted.append(server_context.wrap_socket(
        server.accept()[0], server_side=True)), daemon=True)
    acceptor.start()
    target = gp.upstream_target("https://127.0.0.1:%d/v1" % server.getsockname()[1], {})
    client_context = ssl.create_default_context(cafile=cert)
    conn = gp.UpstreamConnection.connect(target, lambda: client_context, PATIENCE)
    acceptor.join(PATIENCE)
    try:
        yield target, conn, accepted[0]
    finally:
        conn.close()
        accepted[0].close()
        server.close()


def test_a_tls_send_the_socket_cannot_take_is_sent_whole_from_a_worker(tmp_path):
    """On the loop a request is encrypted whole and the socket takes what it takes: a
    worker sends the records left, and the upstream reads the request once, intact."""
    body = bytes(range(256)) * (64 << 12)    # 64 MiB: more than socket buffers take
    received = bytearray()

    def read(peer):
        while True:
            end = received.find(b"\r\n\r\n")
            if end >= 0 and len(received) >= end + 4 + len(body):
                return
            data = peer.recv(1 << 20)
            if not data:
                return
            received.extend(data)
    with tls_connection(tmp_path) as (target, conn, peer):
        left = conn.send("POST", "/v1/chat/completions", target, {}, body, at_once=True)
        assert left, "the socket took all of it: nothing was left to try again"
        reader = threading.Thread(target=read, args=(peer,), daemon=True)
        reader.start()                       # the upstream reads now
        conn.sock.settimeout(PATIENCE)
        conn.sock.sendall(left)              # as opening_upstream's worker does
        reader.join(PATIENCE)
        assert not reader.is_alive(), "the upstream never read the request's end"
        head, _, sent = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"POST /v1/chat/completions ") and sent == body, \
            "the request came apart, or in part twice"


def test_a_tls_read_that_must_write_first_goes_on_in_a_worker():
    """A TLS read on the loop that wants the socket writable (records of its own to send
    first, a key update's answer, that the socket did not take): the loop waits only for
    sockets to read, so the reply's head is read in a worker, whose send blocks."""
    class WantsToWrite:
        buf = bytearray()
        wants_write = False
        sock = socket.socket()

        def receive_ready(self):
            self.wants_write = True
            return None
    conn = WantsToWrite()
    try:
        steps = gp.receiving_head(conn, float("inf"))
        assert next(steps) == (gp.IN_A_THREAD, 0.0)
        with pytest.raises(StopIteration) as end:
            next(steps)
        assert end.value.value is False     # (opening_upstream is in a worker from here)
    finally:
        conn.sock.close()


def test_a_tls_read_of_a_body_that_must_write_first_goes_on_in_a_worker():
    """The same for a reply's body: the loop hands over, and a worker reads the rest."""
    class WantsToWrite:
        wants_write = False
        sock = socket.socket()

        def read_body(self, body, deadline):
            self.wants_write = True
            return None
    conn = WantsToWrite()
    head = gp.parse_reply_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
    target = gp.upstream_target("https://127.0.0.1:1/v1", {})
    response = gp.UpstreamResponse(gp.ConnectionPool(), target, conn, head,
                                   gp.ReplyBody(head, "POST"), 1, "u",
                                   gp.Timeouts(1.0, 1.0, 1.0), gp.CallStopper(conn.sock))
    try:
        steps = response.receiving_body(gp.LOOP_REPLY_BYTES)
        assert next(steps) == (gp.IN_A_THREAD, 0.0)
        with pytest.raises(StopIteration) as end:
            next(steps)
        assert end.value.value is False      # not whole: the worker reads the rest
        assert not response.on_loop
    finally:
        conn.sock.close()


def test_stopping_a_tls_call_never_lets_its_socket_speak_plain_text(tmp_path):
    """A call stopped from another thread (its client left) while a worker may still be
    sending: the stop shuts the connection, and the request never goes out, in plain
    text or not (SSLSocket.shutdown let go of TLS first, and a send in between went out
    as plain text: a review's finding)."""
    with tls_connection(tmp_path) as (target, conn, peer):
        gp.CallStopper(conn.sock).stop()
        with pytest.raises(OSError):
            conn.send("POST", "/v1/chat/completions", target,
                      {"authorization": "Bearer sk-never-in-plain-text"}, b"{}")
        peer.settimeout(PATIENCE)
        assert peer.recv(65536) == b"", "the upstream got bytes after the stop"


def test_a_connection_whose_tls_the_server_ended_is_not_kept(tmp_path):
    """A server that says close_notify after its reply may keep TCP open until the
    client closes too: the connection looks alive (nothing to read), but a request on
    it would find it closed."""
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    with tls_connection(tmp_path) as (target, conn, peer):
        conn.send("GET", "/v1/models", target, {}, b"")
        peer.recv(65536)
        peer.sendall(reply)

        def close_notify():
            with contextlib.suppress(OSError):   # (it waits for ours, which never comes)
                peer.unwrap()
        threading.Thread(target=close_notify, daemon=True).start()
        head = conn.read_head(time.monotonic() + PATIENCE)
        body = gp.ReplyBody(head, "GET")
        assert conn.read_body(body, time.monotonic() + PATIENCE) == b"ok"
        assert not conn._receive(time.monotonic() + PATIENCE)    # the close_notify
        assert not gp._connection_alive(conn)


class CountingSocket(socket.socket):
    """A socket that notes what each recv asked for and took."""

    def recv(self, size, *flags):
        data = super().recv(size, *flags)
        self.asked.append(size)
        self.took.append(len(data))
        return data


@contextlib.contextmanager
def ticket_flood(folder, tickets):
    """(target, the proxy's UpstreamConnection, the reply): a TLS upstream that sends
    `tickets` session tickets (some 250 bytes each, no data in them) after its handshake,
    then the reply to a request."""
    cert, key = tls_certificate(folder)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server_context.num_tickets = tickets
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    def serve():
        with contextlib.suppress(OSError):   # (a test that gives up closes mid-way)
            with server_context.wrap_socket(server.accept()[0], server_side=True) as peer:
                peer.recv(65536)
                peer.sendall(reply)
    threading.Thread(target=serve, daemon=True).start()
    target = gp.upstream_target("https://127.0.0.1:%d/v1" % server.getsockname()[1], {})
    conn = gp.UpstreamConnection.connect(target, lambda: ssl.create_default_context(
        cafile=cert), PATIENCE)
    try:
        yield target, conn, reply
    finally:
        conn.close()
        server.close()


def test_one_tls_read_on_the_loop_decrypts_a_bounded_amount_of_records_with_no_data(
        tmp_path):
    """An upstream whose records hold no data (here thousands of session tickets; a
    hostile one, key updates without end) cannot keep one read on the event loop going:
    each read takes at most READ_BYTES from the socket (an SSLSocket's read went on
    through every such record already there, for seconds), and the data behind them
    still arrives whole; after a read with no data, the next takes a record's worth."""
    with ticket_flood(tmp_path, 700) as (target, conn, reply):   # some 180 KB of them
        conn.sock = CountingSocket(fileno=conn.sock.detach())
        conn.sock.took, conn.sock.asked = [], []
        conn.send("GET", "/v1/models", target, {}, b"")
        conn.sock.settimeout(0.0)
        empty = False   # (the last read held no data)
        while not conn.buf.endswith(b"ok"):
            assert gp.readable_now(conn.sock, PATIENCE), "the reply never came"
            took = len(conn.sock.took)
            received = conn.receive_ready()
            assert len(conn.sock.took) - took <= 1, "one read took from the socket twice"
            if len(conn.sock.took) > took:     # (not the shortcut after a short read)
                assert conn.sock.asked[-1] == (gp.TLS_RECORD_BYTES if empty else
                                               gp.READ_BYTES)
                empty = received is None     # (tickets only: the reply is one record)
        assert sum(conn.sock.took) > 8 * gp.TLS_RECORD_BYTES   # (the tickets came first)
        assert bytes(conn.buf) == reply


def test_too_many_tls_records_with_no_data_in_a_row_end_the_reply(tmp_path):
    """One bounded read at a time still adds up (some 76 ms of the loop for each 64 KiB
    of key updates): past TLS_EMPTY_RECORDS of such records (data between them or not)
    the reply is given up, a BadReply (a 502), on the loop and in a worker alike."""
    with ticket_flood(tmp_path, 2000) as (target, conn, _):     # some 500 KB of them
        conn.send("GET", "/v1/models", target, {}, b"")
        with pytest.raises(gp.BadReply, match="no data"):
            conn.read_head(time.monotonic() + PATIENCE)
    with ticket_flood(tmp_path, 2000) as (target, conn, _):
        conn.send("GET", "/v1/models", target, {}, b"")
        conn.sock.settimeout(0.0)
        with pytest.raises(gp.BadReply, match="no data"):
            for _ in range(1000):   # (each read takes 16 KiB at most: 32 read all of it)
                assert gp.readable_now(conn.sock, PATIENCE), "the tickets never came"
                assert conn.receive_ready() is None


def gemini_stream_text(data):
    events = [json.loads(line[len(b"data: "):]) for line in data.split(b"\n")
              if line.startswith(b"data: ")]
    return "".join(part.get("text", "") for event in events
                   for candidate in event.get("candidates", [])
                   for part in candidate.get("content", {}).get("parts", []))


def openai_stream_text(data):
    events = [line[len(b"data: "):] for line in data.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    return "".join(choice["delta"].get("content") or "" for event in events[:-1]
                   for choice in json.loads(event)["choices"])


def test_a_long_stream_holds_none_of_the_parts_it_has_passed_on():
    # The usage of a stream whose upstream reports none is counted as it goes: an hour's
    # stream must not keep every delta alive until its end. The estimate is the same as
    # counting a whole reply's parts.
    import weakref
    chat = gp.Chat(messages=[gp.Message("user", [gp.Part(gp.TEXT, text="count these")])])
    ex = gp.Exchange(rid="r-1", dialect="openai", action="stream")
    made, kept = [], []

    def parts():
        for index in range(200):
            part = gp.Part(gp.THINKING if index % 4 == 0 else gp.TEXT, text="word %d " % index)
            made.append(weakref.ref(part))
            kept.append(gp.Part(part.type, text=part.text))
            yield part
        yield gp.Finish(gp.STOP, None)
    for event in gp._track_usage(ex, lambda: gp.estimate_prompt_tokens(chat), parts()):
        del event
    gc.collect()
    assert sum(ref() is not None for ref in made) == 0
    assert ex.usage == gp.estimate_usage(chat, kept) and ex.usage.estimated
    assert ex.usage.reasoning_tokens > 0 and ex.usage.output_tokens > ex.usage.reasoning_tokens
