"""Which servers of the fleet are alive, from their heartbeats.

As a Node.js Socket.IO cluster adapter does (socket.io-adapter's
``ClusterAdapterWithHeartbeat``): a server publishes a heartbeat every
:data:`HEARTBEAT_INTERVAL` seconds, any record of a server shows it alive, a
server unheard of for :data:`HEARTBEAT_TIMEOUT` seconds is dropped (checked
every second), and a stopping server says so, so it is dropped at once. The
records themselves are :mod:`.fleet`'s business: this class keeps the clock.

Unlike Node's, the heartbeats are aligned on the wall clock: every server
beats at the same instants (multiples of the interval since the epoch; dyno
clocks agree within milliseconds), so a reader's fetch returns many
heartbeats at once instead of waking once per server. What a dyno pays for
reading heartbeats then grows with the fleet by the record, not by the
fetch (measured in docs/fleet.md).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..runtime.concurrency import Runtime
from ..runtime.failure_log import FailureLog

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of an idle server.
HEARTBEAT_INTERVAL = 5.0
#: Seconds without a record from a server before it no longer counts.
HEARTBEAT_TIMEOUT = 10.0
#: Seconds between two checks for silent servers.
_TICK = 1.0


class Liveness:
    """The other live servers, and this one's heartbeat.

    :param beat: publishes a heartbeat of this server.
    :param on_gone: called with the name of a server that stopped counting.
    :param interval: :data:`HEARTBEAT_INTERVAL`.
    :param timeout: :data:`HEARTBEAT_TIMEOUT`.
    :param clock: monotonic seconds.
    """

    def __init__(self, beat: Callable[[], Any], on_gone: Callable[[str], Any],
                 interval: float = HEARTBEAT_INTERVAL, timeout: float = HEARTBEAT_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._beat = beat
        self._on_gone = on_gone
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()  # the consumer, the loop and callers
        self._last_heard: dict[str, float] = {}
        self._slot = self.slot_now()  # the slot of the last beat
        self._stopping = False
        self._task: Any = None
        self._runtime: Runtime | None = None

    # -- what others say ----------------------------------------------------------

    def heard(self, server: str) -> bool:
        """``server`` published something; whether it was unknown."""
        with self._lock:
            new = server not in self._last_heard
            self._last_heard[server] = self._clock()
        if new:
            logger.info("fleet: server %s joined", server)
        return new

    def gone(self, server: str) -> None:
        """``server`` said it stops: no longer counted."""
        with self._lock:
            known = self._last_heard.pop(server, None) is not None
        if known:
            logger.info("fleet: server %s left", server)
            self._on_gone(server)

    def others(self) -> frozenset[str]:
        """The other servers heard from within the timeout."""
        with self._lock:
            return frozenset(self._last_heard)

    def count(self) -> int:
        """How many servers are alive, this one included."""
        with self._lock:
            return 1 + len(self._last_heard)

    # -- this server's heartbeat ------------------------------------------------------

    def slot_now(self) -> int:
        """The heartbeat slot of now: every server beats as one starts."""
        return int(self._wall() // self.interval)

    def start(self, runtime: Runtime) -> None:
        """Start the loop that beats and drops the silent (this server just
        published its first heartbeat: the next one is at the next slot)."""
        self._runtime = runtime
        self._slot = self.slot_now()
        self._task = runtime.spawn(self._run)

    def stop(self) -> None:
        self._stopping = True
        if self._task is not None and self._runtime is not None:
            self._runtime.stop(self._task, _TICK + 1)
            self._task = None

    def _run(self) -> None:
        failures = FailureLog(logger, "fleet heartbeat")
        runtime = self._runtime
        assert runtime is not None  # set by start(), which spawned this
        while not self._stopping:
            wall = self._wall()
            # Wake at the next slot's first instant, as every server does.
            runtime.sleep(min(_TICK, (self.slot_now() + 1) * self.interval - wall))
            if not self._stopping:
                try:
                    self.tick()
                except Exception:  # a failed heartbeat must not end the loop
                    failures.failed()
                else:
                    failures.succeeded()

    def tick(self) -> None:
        """Drop the servers silent for too long; beat in a new slot."""
        now = self._clock()
        with self._lock:
            silent = [s for s, at in self._last_heard.items() if now - at > self.timeout]
            for server in silent:
                del self._last_heard[server]
        for server in silent:
            logger.warning("fleet: server %s silent for %g s; no longer counted",
                           server, self.timeout)
            self._on_gone(server)
        slot = self.slot_now()
        if slot != self._slot:
            self._slot = slot
            self._beat()
