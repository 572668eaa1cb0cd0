"""KafkaManager.close() returns only once its work is done, wherever it is
called from; only a caller that cannot wait (the gevent hub, a task of the
manager's own, a Kafka client's I/O thread) hands the work to a task and
returns at once, and then the process exit waits for it.

The gevent cases run in a monkey-patched child process, as an app's are
(locks and events are gevent's there); the manager's blocking work
(``_shut``) is a stand-in that takes a while, so nothing needs a broker.
"""
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from flask_signalr_kafka.runtime.concurrency import Runtime

GEVENT_CASES = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import json, os, signal, sys, threading
    import gevent
    from flask_signalr_kafka import KafkaManager
    from flask_signalr_kafka.runtime.concurrency import Runtime

    rt = Runtime("gevent", gevent.spawn, gevent.sleep)
    out = {}

    def in_hub(fn):
        got = []
        gevent.get_hub().loop.run_callback(lambda: got.append(fn()))
        gevent.sleep(0.05)
        return got[0]

    def kafka_io(fn):
        # kafka-python 3 starts its I/O loop as
        # threading.Thread(target=self.run_forever): a greenlet here.
        got = []
        def run_forever():
            got.append(fn())
        run_forever.__module__ = "kafka.net.selector"
        t = threading.Thread(target=run_forever, daemon=True)
        t.start()
        t.join()
        return got[0]

    out["main"] = rt.cannot_wait()
    out["spawned"] = gevent.spawn(rt.cannot_wait).get()
    out["own task"] = rt.spawn(rt.cannot_wait).get()
    out["hub"] = in_hub(rt.cannot_wait)
    out["kafka io"] = kafka_io(rt.cannot_wait)
    def other_thread(fn):
        got = []
        t = threading.Thread(target=lambda: got.append(fn()), daemon=True)
        t.start()
        t.join()
        return got[0]

    out["other thread"] = other_thread(rt.cannot_wait)

    # A signal.signal handler runs inside whatever the signal interrupted:
    # it may wait in the main greenlet only.
    def in_handler(run):
        got = []
        previous = signal.signal(signal.SIGUSR1, lambda *_: got.append(
            (rt.cannot_wait(), gevent.getcurrent() is main)))
        run(lambda: os.kill(os.getpid(), signal.SIGUSR1))
        signal.signal(signal.SIGUSR1, previous)
        return got

    main = gevent.getcurrent()
    out["handler in main"] = in_handler(lambda fire: fire())
    out["handler in a greenlet"] = in_handler(lambda fire: gevent.spawn(fire).join())

    def manager():
        mgr = KafkaManager(bootstrap_servers="127.0.0.1:9", connect_timeout=1)
        mgr._runtime = rt
        done = []
        def shut(timeout):
            gevent.sleep(0.3)
            done.append(1)
        mgr._shut = shut
        return mgr, done

    # gevent's SIGTERM pattern: close() in a spawned greenlet, then exit.
    mgr, done = manager()
    out["spawned close done on return"] = gevent.spawn(lambda: mgr.close() or len(done)).get()
    # A second caller returns when the first one's close is done.
    mgr, done = manager()
    gevent.spawn(mgr.close)
    gevent.sleep(0.05)
    out["second close done on return"] = gevent.spawn(lambda: mgr.close() or len(done)).get()
    # The hub cannot wait: the work goes on in a task; the exit's close waits.
    mgr, done = manager()
    out["hub close done on return"] = in_hub(lambda: mgr.close() or len(done))
    mgr.close(wait=True)  # what atexit does
    out["exit close done on return"] = len(done)
    # A task of the manager's own cannot wait either (close stops and joins it).
    mgr, done = manager()
    out["own task close done on return"] = rt.spawn(lambda: mgr.close() or len(done)).get()
    mgr.close(wait=True)

    # The documented handler, end to end: the exit comes after the work.
    mgr, done = manager()
    def shutdown():
        mgr.close()
        print(json.dumps({**out, "shut before exit": len(done)}), flush=True)
        os._exit(0)
    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(shutdown))
    os.kill(os.getpid(), signal.SIGTERM)
    gevent.sleep(10)
    print(json.dumps(out), flush=True)
""")


def test_where_close_waits_under_gevent():
    proc = subprocess.run([sys.executable, "-c", GEVENT_CASES], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {
        "main": False, "spawned": False, "own task": True, "hub": True, "kafka io": True,
        "other thread": False,
        "handler in main": [[False, True]], "handler in a greenlet": [[True, False]],
        "spawned close done on return": 1,
        "second close done on return": 1,
        "hub close done on return": 0,
        "exit close done on return": 1,
        "own task close done on return": 0,
        "shut before exit": 1,
    }, proc.stderr[-3000:]


def test_where_close_waits_on_threads():
    """Threading mode: a handler runs in the main thread, which may wait; a
    task of the runtime's own may not (close joins it)."""
    rt = Runtime.threads("threading")
    assert rt.cannot_wait() is False
    got = []
    rt.spawn(lambda: got.append(rt.cannot_wait())).join(5)
    plain = threading.Thread(target=lambda: got.append(rt.cannot_wait()))
    plain.start()
    plain.join(5)
    assert got == [True, False]


def test_threading_close_from_a_thread_waits_for_a_close_under_way():
    from flask_signalr_kafka import KafkaManager

    mgr = KafkaManager(bootstrap_servers="127.0.0.1:9", connect_timeout=1)
    mgr._runtime = Runtime.threads("threading")
    done = []

    def shut(timeout):
        time.sleep(0.3)
        done.append(1)

    mgr._shut = shut
    first = threading.Thread(target=mgr.close)
    first.start()
    time.sleep(0.05)
    mgr.close()
    assert done == [1]
    first.join(5)


SWALLOWED_EXIT = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import atexit, os, signal, sys, threading
    import gevent
    from flask_signalr_kafka import KafkaManager
    from flask_signalr_kafka.runtime.concurrency import Runtime

    mgr = KafkaManager(bootstrap_servers="127.0.0.1:9", connect_timeout=1)
    mgr._runtime = Runtime("gevent", gevent.spawn, gevent.sleep)
    mgr.STOP_SIGNAL_EXIT_GRACE = 0.5
    def shut(timeout):
        gevent.sleep(0.3)
        if os.environ.get("SHUT_FAILS"):
            raise TimeoutError("the flush timed out")
    mgr._shut = shut
    atexit.register(lambda: print("closed at exit:", mgr._closed.is_set(), flush=True))

    # An app's handler, as users write it.
    def on_sigterm(signum, frame):
        mgr.close()
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_sigterm)

    # The signal lands in code that catches every exception, as kafka-python's
    # socket writes do (seen in make test: the dyno served on until SIGKILL).
    def io_loop():
        fired = False
        while True:
            try:
                if not fired:
                    fired = True
                    os.kill(os.getpid(), signal.SIGTERM)
                gevent.sleep(0.01)
            except BaseException as exc:
                print("swallowed", type(exc).__name__, flush=True)
    threading.Thread(target=io_loop, daemon=True).start()
    gevent.sleep(15)  # serve_forever
    print("still serving", flush=True)
    sys.exit(3)
""")


@pytest.mark.parametrize("shut_fails", [False, True])
def test_close_in_a_sigterm_handler_whose_exit_is_swallowed_still_exits(shut_fails):
    """close() in an app's SIGTERM handler that interrupted another
    greenlet: the handler's sys.exit is raised there and may be swallowed;
    the process exits anyway once closed (or once its close failed: a flush
    may time out there), through its atexit handlers."""
    started = time.monotonic()
    env = dict(os.environ, **({"SHUT_FAILS": "1"} if shut_fails else {}))
    proc = subprocess.run([sys.executable, "-c", SWALLOWED_EXIT], capture_output=True, text=True,
                          timeout=60, env=env)
    assert "swallowed SystemExit" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "still serving" not in proc.stdout, proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "closed at exit: True" in proc.stdout, proc.stdout
    assert "no exit followed" in proc.stderr, proc.stderr[-2000:]
    assert time.monotonic() - started < 10
