"""Connection state recovery for an asyncio manager (docs/asyncio.md).

:class:`.recovery.Recovery` is the one :class:`.manager.KafkaManager`
uses, unchanged in what it decides and writes. What differs under asyncio
is where each step runs: those that wait for Kafka (finding and claiming a
session, reading what a connection missed, saving a session, letting a
connection go, the drain's saves) run in threads of their own, and
everything that writes to a socket or touches the rooms runs on the event
loop. :class:`LoopRecovery` is that split, and the
:class:`.state.ConnectionHost` its threads see.

What the loop and the threads share: the rooms are read from the threads
(single reads, or a copy made in one call), never changed there;
``Recovery.replaying`` (the events held back during a replay) is created,
appended to and removed only on the loop (``begin`` in ``pre_connect``,
``replay_steps``, ``forget``); the rest of recovery's bookkeeping is dicts
and sets changed one key at a time, as in threading mode. Recovery's
positions are those of delivery on the loop, behind the consumers' by the
records still queued for it (:class:`.loop_bridge.InFlight`).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..recovery.recovery import Recovery
from ..recovery.recovery_options import ConnectionStateRecovery
from ..runtime.loop_bridge import Blocking, call_on_loop
from . import socketio_hooks

logger = logging.getLogger(__name__)

#: Seconds a thread waits for the loop to close a socket it lets go.
CLOSE_WAIT = 10.0
#: Sockets closed side by side at a drain.
CLOSE_BATCH = 64


class LoopRecovery:
    """Recovery for an asyncio manager: its blocking steps in threads, its
    sockets on the loop.

    :param manager: the manager (``core``, ``server``, ``is_local``,
                    ``get_rooms``, ``eio_sid_from_sid``).
    :param options: the settings.
    :param loop: a callable giving the manager's running loop.
    :param request_release: ``request_release(sid, namespace)`` publishes a
                            release command (from a thread).
    :param delivered: where delivery on the loop stands on each send
                      partition (the consumers' positions run ahead of it by
                      the records still queued for the loop).
    :param workers: threads for the blocking steps: recoveries of a connect
                    storm wait on Kafka side by side, apart from the
                    manager's other blocking calls.
    """

    def __init__(self, manager: Any, options: ConnectionStateRecovery,
                 loop: Callable[[], asyncio.AbstractEventLoop | None],
                 request_release: Callable[[str, str], None],
                 delivered: Callable[[], dict[tuple[str, int], int]], workers: int = 8) -> None:
        self._manager = manager
        self._loop = loop
        self.request_release = request_release
        self.threads = Blocking(workers)
        self.recovery = Recovery(manager.core, self, options, delivered)

    def install(self, server: Any) -> None:
        """Route ``server``'s connect and disconnect through recovery."""
        socketio_hooks.install_async(server, self.recovery, self.threads.call)

    # -- the ConnectionHost recovery's threads see --------------------------

    @property
    def server(self) -> Any:
        return self._manager.server

    def is_local(self, sid: str, namespace: str) -> bool:
        return self._manager.is_local(sid, namespace)

    def get_rooms(self, sid: str, namespace: str) -> list:
        return self._manager.get_rooms(sid, namespace)

    def eio_sid_from_sid(self, sid: str, namespace: str) -> str | None:
        return self._manager.eio_sid_from_sid(sid, namespace)

    def close_socket(self, eio_sid: str) -> None:
        """Close a socket on the loop and wait for it (from a thread: a
        release, which recovery's threads make)."""
        try:
            call_on_loop(self._loop(), self.server.eio.disconnect, eio_sid, timeout=CLOSE_WAIT)
        except TimeoutError:
            logger.warning("the socket %s was not closed within %g s", eio_sid, CLOSE_WAIT)

    # -- what the manager awaits --------------------------------------------

    async def release(self, sid: str, namespace: str) -> None:
        """Let a connection go: its client is back on another server."""
        await self.threads.call(self.recovery.release, sid, namespace)

    async def claim(self, sid: str) -> None:
        """Read the send-conn partitions of a recovered ``sid`` here (claimed
        already by the recovery's decision: this returns at once then)."""
        await self.threads.call(self._manager.core.claim, sid)

    async def drain(self, timeout: float) -> None:
        """:meth:`.recovery.Recovery.drain`: the sessions saved in a thread,
        then the sockets closed on the loop, :data:`CLOSE_BATCH` at a time
        (each close waits until what was queued for it is written)."""
        held = await self.threads.call(self.recovery.hand_over)
        if held is None:
            return
        eio = self.server.eio
        eio_sids = [e for key in held if (e := self.eio_sid_from_sid(*key)) is not None]
        deadline = asyncio.get_running_loop().time() + timeout
        for start in range(0, len(eio_sids), CLOSE_BATCH):
            closes = [asyncio.ensure_future(eio.disconnect(e))
                      for e in eio_sids[start:start + CLOSE_BATCH]]
            remaining = deadline - asyncio.get_running_loop().time()
            await asyncio.wait(closes, timeout=max(0.001, remaining))
        logger.info("drained: %d connections saved and closed", len(held))

    def shutdown(self) -> None:
        """Let the threads go once their calls return."""
        self.threads.shutdown()
