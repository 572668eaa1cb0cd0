"""What a dyno does when its platform stops it (SIGTERM, then exit).

Every live manager is closed at exit, so what it already emitted is flushed.
With connection state recovery, SIGTERM first *drains* the dyno: every
connection's session is saved and its socket closed, so its client
reconnects to another dyno at once and is recovered exactly, instead of
waiting for the web server's graceful timeout to cut it (gunicorn waits 30 s
for websockets, then kills them). Under uvicorn, which cuts every socket as
soon as it stops, an asyncio manager's drain runs before uvicorn's handler
(:func:`drain_first`).
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .concurrency import Runtime

logger = logging.getLogger(__name__)


class Stoppable(Protocol):
    """A manager, as far as shutting down goes."""

    server_name: str

    def close(self, wait: bool | None = None) -> None: ...

    def drain(self) -> None: ...


#: Seconds the package's own SIGTERM handler waits, once every manager is
#: closed, before the process dies of SIGTERM: another handler of the same
#: signal (an app's) finishes what follows its own close() meanwhile.
OTHERS_GRACE = 1.0

_live_managers: weakref.WeakSet[Stoppable] = weakref.WeakSet()
_installed = False


def watch(manager: Stoppable, runtime: Runtime) -> None:
    """Close ``manager`` at exit and drain it at SIGTERM (signal handling
    as ``runtime`` needs it)."""
    global _installed
    if not _installed:
        _installed = True
        atexit.register(close_all)
        _install_sigterm(runtime)
    _live_managers.add(manager)


def forget(manager: Stoppable) -> None:
    _live_managers.discard(manager)


def close_all() -> None:
    """Close every live manager, here and now: at exit, or in a signal
    handler of ours, which runs where it may block."""
    for manager in list(_live_managers):
        manager.close(wait=True)


def drain_all() -> None:
    for manager in list(_live_managers):
        try:
            manager.drain()
        except Exception:
            logger.exception("draining %s failed", manager.server_name)


def _install_sigterm(runtime: Runtime) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        # Nobody else handles SIGTERM (socketio.run, a plain script): close
        # everything, then die of SIGTERM as the platform expects.
        def on_sigterm() -> None:
            cancel()
            close_all()
            if runtime.green:
                # An app's own gevent.signal_handler runs beside this one,
                # unseen by signal.getsignal: what it does after its close()
                # (which returned with ours) runs first.
                runtime.sleep(OTHERS_GRACE)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

        cancel = runtime.on_signal(signal.SIGTERM, on_sigterm)
        return
    if not callable(previous):
        return

    # A server that handles SIGTERM (gunicorn) stops accepting, waits for its
    # requests, then exits through atexit: drain first, then let it.
    def chained(signum: int, frame: Any) -> None:
        runtime.spawn(drain_all)
        previous(signum, frame)

    signal.signal(signal.SIGTERM, chained)


#: Seconds a SIGTERM waits for an asyncio manager's drain before the server
#: it runs in goes on stopping.
DRAIN_LIMIT = 30.0
_draining_tasks: set[asyncio.Task] = set()


def drain_first(loop: asyncio.AbstractEventLoop, drain: Callable[[], Awaitable[Any]]) -> None:
    """Under an asyncio server that handles SIGTERM itself (uvicorn stops
    accepting, then cuts every socket at once): at SIGTERM, ``await drain()``
    on ``loop`` first, then let the server's handler run. Called on the loop
    (the main thread), once the server's handler is in place; a process
    where nobody handles SIGTERM dies of it as before."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    async def drain_then_stop(signum: int, frame: Any) -> None:
        try:
            await asyncio.wait_for(drain(), DRAIN_LIMIT)
        except Exception:
            logger.exception("draining at SIGTERM failed")
        finally:
            previous(signum, frame)

    def start(signum: int, frame: Any) -> None:
        task = loop.create_task(drain_then_stop(signum, frame))
        _draining_tasks.add(task)
        task.add_done_callback(_draining_tasks.discard)

    def chained(signum: int, frame: Any) -> None:
        # A handler runs between two bytecodes of the loop's own thread: the
        # task is created from the loop's next iteration.
        loop.call_soon_threadsafe(start, signum, frame)

    signal.signal(signal.SIGTERM, chained)
