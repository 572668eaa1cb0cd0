"""What a dyno does when its platform stops it (SIGTERM, then exit).

Every live manager is closed at exit, so what it already emitted is flushed.
With connection state recovery, SIGTERM first *drains* the dyno: every
connection's session is saved and its socket closed, so its client
reconnects to another dyno at once and is recovered exactly, instead of
waiting for the web server's graceful timeout to cut it (gunicorn waits 30 s
for websockets, then kills them).
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref
from typing import Any, Protocol

from .concurrency import Runtime

logger = logging.getLogger(__name__)


class Stoppable(Protocol):
    """A manager, as far as shutting down goes."""

    server_name: str

    def close(self, wait: bool | None = None) -> None: ...

    def drain(self) -> None: ...


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
