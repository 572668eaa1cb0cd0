"""Ids for the records that expect an Ack, and what to do when one arrives.

A remote group change blocks its caller on :meth:`AckWaiter.wait`; a remote
callback registers a function that runs with the client's answer. Ids come
from one per-server counter starting at 1 and wrap inside a signed 32-bit int,
as the .NET reader needs.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import AckTimeoutError
from ..runtime.stats import AckStats

_MAX_ID = 2**31 - 1
_SWEEP_EVERY = 10.0


class AckWaiter:
    def __init__(self) -> None:
        # Emits and consumers may be threads (threading mode).
        self._lock = threading.Lock()
        self._last_id = 0
        self._pending: dict[int, tuple[float, Callable[[list], Any]]] = {}
        self._next_sweep = time.monotonic() + _SWEEP_EVERY
        self.stats = AckStats()

    def register(self, on_ack: Callable[[list], Any], ttl: float) -> int:
        """Reserve an id whose Ack calls ``on_ack(args)`` once, if it comes
        within ``ttl`` seconds."""
        now = time.monotonic()
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            self._last_id = self._last_id % _MAX_ID + 1
            self._pending[self._last_id] = (now + ttl, on_ack)
            return self._last_id

    def resolve(self, ack_id: int, args: list | None) -> bool:
        """Run what waits for ``ack_id``; ``False`` if nothing does."""
        entry = self._pending.pop(ack_id, None)
        if entry is None:
            return False
        entry[1](args if args is not None else [])
        return True

    def discard(self, ack_id: int) -> None:
        self._pending.pop(ack_id, None)

    def wait(self, publish: Callable[[int], Any], timeout: float, what: str) -> None:
        """Reserve an id, ``publish(id)`` the command, and block until its Ack.

        :raises AckTimeoutError: no Ack within ``timeout`` seconds.
        """
        done = threading.Event()
        ack_id = self.register(lambda args: done.set(), timeout)
        started = time.monotonic()  # publishing counts too
        try:
            publish(ack_id)
            self._outcome(done.wait(max(0.0, started + timeout - time.monotonic())),
                          started, timeout, what)
        finally:
            self.discard(ack_id)

    async def wait_async(self, publish: Callable[[int], Awaitable[Any]], timeout: float,
                         what: str) -> None:
        """:meth:`wait` for an asyncio caller: the Ack (resolved in a
        consumer thread) wakes it through its loop, which never blocks.

        :raises AckTimeoutError: no Ack within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        ack_id = self.register(lambda args: loop.call_soon_threadsafe(_settle, done), timeout)
        started = time.monotonic()
        try:
            await publish(ack_id)
            try:
                await asyncio.wait_for(done, max(0.0, started + timeout - time.monotonic()))
                acked = True
            except asyncio.TimeoutError:
                acked = False
            self._outcome(acked, started, timeout, what)
        finally:
            self.discard(ack_id)

    def _outcome(self, acked: bool, started: float, timeout: float, what: str) -> None:
        if acked:
            self.stats.acked(time.monotonic() - started)
            return
        self.stats.ack_timeouts += 1
        raise AckTimeoutError(
            f"no server acknowledged {what} within {timeout:g} s "
            "(is that connection still connected?)"
        )

    def __len__(self) -> int:
        return len(self._pending)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + _SWEEP_EVERY
        expired = [i for i, (deadline, _) in self._pending.items() if deadline < now]
        self.stats.callback_timeouts += len(expired)  # a wait() removes its own id
        for ack_id in expired:
            del self._pending[ack_id]


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
