"""What the Kafka core runs its loops on: greenlets or threads, as the
python-socketio server it serves does.

python-socketio already knows its async mode and gives what runs in it
(``start_background_task``, ``sleep``); a process without a server (a
write-only emitter) runs on threads, which gevent's monkey-patching turns
into greenlets when the process is patched. Locks and events are the
``threading`` module's for the same reason. What only gevent needs (signal
handlers that must not run inside its event loop) is imported from gevent
in gevent mode alone.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

#: The async modes whose loops are greenlets.
GREEN = frozenset({"gevent", "gevent_uwsgi", "eventlet"})


class Runtime:
    """Concurrency of one manager.

    :param mode: the async mode (``"threading"``, ``"gevent"``, ...).
    :param spawn: ``spawn(fn, *args)`` starts ``fn`` concurrently and returns
                  the task (``join(timeout)``; greenlets also ``kill()``).
    :param sleep: pauses the caller, letting the others run.
    """

    def __init__(self, mode: str, spawn: Callable[..., Any], sleep: Callable[[float], Any]):
        self.mode = mode
        self._spawn = spawn
        self.sleep = sleep
        #: The greenlets or threads of :meth:`spawn`'s tasks while they run:
        #: a close must not wait from inside one (it stops and joins them).
        self._running: set[Any] = set()

    @classmethod
    def of_server(cls, server: Any) -> Runtime:
        """The runtime of a python-socketio ``Server`` (its Engine.IO server's:
        the Socket.IO server has no async mode yet when it sets its manager)."""
        eio = server.eio
        return cls(eio.async_mode, eio.start_background_task, eio.sleep)

    @classmethod
    def standalone(cls) -> Runtime:
        """Threads (greenlets in a gevent-patched process)."""
        return cls.threads("gevent" if gevent_patched() else "threading")

    @classmethod
    def threads(cls, mode: str) -> Runtime:
        """Threads, named ``mode`` (``"asyncio"``: the core of an asyncio
        server runs on threads of its own, so its loop never waits for it).

        :param mode: the async mode reported.
        """

        def spawn(fn: Callable[..., Any], *args: Any) -> threading.Thread:
            task = threading.Thread(target=fn, args=args, daemon=True)
            task.start()
            return task

        return cls(mode, spawn, time.sleep)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Start ``fn(*args)`` concurrently; return the task (``join(timeout)``;
        greenlets also ``kill()``)."""
        def run(*args: Any) -> Any:
            # Noted by the task itself: a thread may run before spawn returns.
            me = self._current()
            self._running.add(me)
            try:
                return fn(*args)
            finally:
                self._running.discard(me)

        return self._spawn(run, *args)

    def _current(self) -> Any:
        """The running greenlet (green modes) or thread."""
        if self.green:
            import greenlet

            return greenlet.getcurrent()
        return threading.current_thread()

    @property
    def green(self) -> bool:
        return self.mode in GREEN

    def check(self) -> None:
        """Refuse gevent mode in a process gevent has not patched: kafka-python
        would block every greenlet on its sockets.

        :raises RuntimeError: what to do about it.
        """
        if self.mode.startswith("gevent") and not gevent_patched():
            raise RuntimeError(
                f"async_mode={self.mode!r} needs gevent's monkey-patching: call "
                "gevent.monkey.patch_all() first thing in the program, before importing "
                "flask or kafka (or use async_mode='threading')"
            )

    def worker(self, serial: bool = True) -> Worker:
        """A place for one client's blocking C calls (librdkafka's polls,
        flushes, metadata requests): under gevent a real OS thread of its
        own, so that the hub goes on while it waits (confluent-kafka
        releases the GIL); elsewhere the calling thread. Its calls run one
        at a time, in order, when ``serial`` (a consumer's polls and close:
        its close must not overlap a poll); otherwise they may overlap
        (librdkafka's other calls are thread-safe: a flush or a metadata
        request does not wait behind a poll)."""
        return Worker(self.green and gevent_patched(), serial)

    def stop(self, task: Any, timeout: float) -> None:
        """Wait up to ``timeout`` s for a task that was asked to stop; kill a
        greenlet that does not (a thread cannot be killed: it is a daemon)."""
        task.join(timeout)
        if hasattr(task, "kill"):
            task.kill(block=True, timeout=timeout)

    def cannot_wait(self) -> bool:
        """Whether the caller must not wait for a close (flush, drain, stop
        the consumers): it runs in what that work needs.

        - under gevent, the hub (its event loop, where a ``signal.signal``
          handler usually runs: any wait there raises
          ``BlockingSwitchOutError``), or a ``signal.signal`` handler that
          interrupted another greenlet than the main one (engine.io's
          writer of a socket the drain closes, say);
        - a task of :meth:`spawn`'s (a consumer, the checkpointer, a fleet
          handler), which the close stops and joins;
        - a Kafka client's own I/O thread (kafka-python's sender or I/O
          loop; a greenlet under gevent), which a flush waits for.

        Anything else may wait, a greenlet spawned by a SIGTERM handler
        (``gevent.signal_handler(SIGTERM, lambda: gevent.spawn(shutdown))``,
        gevent's documented pattern) included: the exit that follows the
        close must come after its work.
        """
        if self.green and gevent_patched():
            from gevent.hub import Hub

            current = self._current()
            if isinstance(current, Hub):
                return True
            if current.parent is not None and _in_signal_handler():
                return True
        return self._current() in self._running or _kafka_io(threading.current_thread())

    def interrupted_by_stop_signal(self) -> bool:
        """Whether the caller runs in a SIGTERM or SIGINT handler
        (``signal.signal``'s) that interrupted another greenlet than the
        main one: the handler's own exit (``sys.exit``) is then raised
        inside the interrupted code, which may swallow it (kafka-python's
        socket writes catch every exception)."""
        if not (self.green and gevent_patched()):
            return False  # a handler runs in the main thread, where its exit works
        import greenlet

        current = greenlet.getcurrent()
        return current.parent is not None and _in_signal_handler(
            (signal.SIGTERM, signal.SIGINT))

    def exit_main(self) -> None:
        """End the process as its own exit would (``SystemExit`` in the main
        greenlet: atexit handlers run). Under gevent only."""
        from gevent import get_hub

        get_hub().handle_system_error(SystemExit, SystemExit(0))

    def on_signal(self, signum: int, handler: Callable[[], Any]) -> Callable[[], None]:
        """Run ``handler()`` where it may block when ``signum`` arrives;
        return what cancels it."""
        if self.green and gevent_patched():
            import gevent

            watcher = gevent.signal_handler(signum, handler)
            return watcher.cancel
        previous = signal.signal(signum, lambda *_: handler())
        return lambda: signal.signal(signum, previous)


class Worker:
    """Runs blocking calls one after another in a real thread (under gevent),
    or in the caller's thread.

    :param threaded: run in a gevent thread pool (of one real thread when
        ``serial``).
    :param serial: one call at a time, in order (a lock outside the pool).
    """

    #: Real threads of a worker whose calls may overlap: a flush or a
    #: metadata request need not wait for a poll of up to a second.
    PARALLEL = 4

    def __init__(self, threaded: bool, serial: bool = True) -> None:
        self._pool: Any = None
        # In the callers' threads, one at a time too when ``serial``:
        # librdkafka must not close a consumer another thread is polling.
        self._lock = threading.Lock() if serial else contextlib.nullcontext()
        if threaded:
            from gevent.threadpool import ThreadPool

            self._pool = ThreadPool(1 if serial else self.PARALLEL)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``'s result (or its exception), the caller waiting
        without blocking the hub."""
        if self._pool is None:
            with self._lock:
                return fn(*args)
        # Raised here, not in the pool: gevent prints what a pool task raises.
        failed, value = self._pool.apply(_outcome, (fn, args))
        if failed:
            raise value
        return value

    def close(self) -> None:
        """Let the thread go once its last call returns."""
        if self._pool is not None:
            self._pool.kill()


def _outcome(fn: Callable[..., Any], args: tuple) -> tuple[bool, Any]:
    try:
        return False, fn(*args)
    except Exception as exc:
        return True, exc


def _in_signal_handler(signals: Iterable[int] | None = None) -> bool:
    """Whether a Python signal handler (``signal.signal``'s; of one of
    ``signals``, by default any) is on the caller's stack: it runs inside
    whatever code the signal interrupted."""
    codes = set()
    for signum in signal.valid_signals() if signals is None else signals:
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if code is not None:
            codes.add(code)
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _kafka_io(thread: threading.Thread) -> bool:
    """Whether ``thread`` is one kafka-python started for its own I/O (the
    producer's sender, a client's I/O loop): a ``Thread`` subclass of its
    own, or a plain one running a method of its."""
    target = getattr(thread, "_target", None)
    where = getattr(target, "__module__", None) or type(thread).__module__
    return where.split(".")[0] == "kafka"


def gevent_patched() -> bool:
    """Whether gevent has monkey-patched this process's sockets."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")
