"""From the Kafka core's threads to an asyncio event loop.

Under an asyncio server the core runs on threads of its own
(:meth:`.concurrency.Runtime.threads`), so the loop never waits for Kafka.
What a consumer thread reads reaches the loop through a :class:`LoopInbox`
(one per topic, drained in order by one task), and what runs on an Ack
through :func:`run_in_loop`; a thread that needs the loop to do something
and waits for it uses :func:`call_on_loop`. Blocking calls go the other way, through
:class:`Blocking`: a small thread pool of the manager's own, shut at close.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)


class LoopInbox:
    """Items handed by one thread to an event loop, handled there in the
    order they came, one at a time.

    A thread appends to a deque and wakes the loop only when the draining
    task is idle: a burst of records costs one wake-up, not one per record.

    :param handle: ``await handle(item)`` on the loop (a coroutine function).
    :param name: what the log calls it (the topic).
    """

    def __init__(self, handle: Callable[[Any], Awaitable[Any]], name: str) -> None:
        self._handle = handle
        self.name = name
        self._items: deque = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._scheduled = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start draining on ``loop`` (called on it)."""
        self._wake = asyncio.Event()
        self._loop = loop
        self._task = loop.create_task(self._drain(), name=f"kafka inbox {self.name}")

    def put(self, item: Any) -> bool:
        """Hand ``item`` to the loop (from any thread); ``False`` when no loop
        is bound yet: then nothing on this server can be addressed."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        self._items.append(item)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon_threadsafe(self._wake.set)
        return True

    async def _drain(self) -> None:
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            # Reset before popping: an item appended from now on wakes us again.
            self._scheduled = False
            items = self._items
            while items:
                item = items.popleft()
                try:
                    await self._handle(item)
                except Exception:
                    logger.exception("error handling a record of %s; skipped", self.name)

    async def stop(self) -> None:
        """Stop draining (what is queued is dropped)."""
        task, self._task, self._loop = self._task, None, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


class InFlight:
    """Records a consumer thread handed to the loop that the loop has not
    finished delivering, by partition. A consumer's position counts a record
    as soon as its thread has read it; where delivery stands is the first
    record still in flight, if any (connection state recovery's positions).
    """

    def __init__(self) -> None:
        self._offsets: dict[Any, deque[int]] = {}

    def add(self, key: Any, offset: int) -> None:
        """The consumer thread of ``key`` (base, partition) hands ``offset`` over."""
        offsets = self._offsets.get(key)
        if offsets is None:
            offsets = self._offsets.setdefault(key, deque())
        offsets.append(offset)

    def undo(self, key: Any) -> None:
        """The last offset added was not handed over after all."""
        self._offsets[key].pop()

    def done(self, key: Any) -> None:
        """The loop delivered the oldest offset of ``key``."""
        self._offsets[key].popleft()

    def behind(self, positions: dict) -> dict:
        """``positions`` (the consumers'), each lowered to its partition's
        first offset still in flight."""
        out = dict(positions)
        for key, offsets in list(self._offsets.items()):
            try:
                first = offsets[0]
            except IndexError:
                continue
            if first < out.get(key, first):
                out[key] = first
        return out


def run_in_loop(loop: asyncio.AbstractEventLoop, tasks: set, fn: Callable[..., Any],
                *args: Any) -> None:
    """Run ``fn(*args)`` on ``loop`` (from any thread); a coroutine it returns
    runs as a task kept in ``tasks`` until it ends."""

    def call() -> None:
        try:
            result = fn(*args)
        except Exception:
            logger.exception("callback %r failed", fn)
            return
        if inspect.iscoroutine(result):
            task = loop.create_task(result)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    if not loop.is_closed():
        loop.call_soon_threadsafe(call)


def call_on_loop(loop: asyncio.AbstractEventLoop | None, fn: Callable[..., Any], *args: Any,
                 timeout: float) -> Any:
    """``fn(*args)`` (awaited if it returns an awaitable) on ``loop``, from a
    thread that is not the loop's: its result.

    :raises RuntimeError: no loop yet.
    :raises TimeoutError: not done within ``timeout`` seconds (it goes on).
    """
    if loop is None:
        raise RuntimeError("the manager's event loop is not running yet")

    async def settle() -> Any:
        result = fn(*args)
        return await result if inspect.isawaitable(result) else result

    return asyncio.run_coroutine_threadsafe(settle(), loop).result(timeout)


class Blocking:
    """Where an asyncio manager runs the core's blocking calls (flush, acks
    of ``await_produce``, ``wait_ready``, close): threads of its own, so
    that closing it leaves none behind.

    :param workers: at most this many calls at once.
    """

    def __init__(self, workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kafka-blocking")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Start ``fn(*args)``; its concurrent future."""
        return self._pool.submit(fn, *args)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``'s result, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        """Let the threads go once their calls return."""
        self._pool.shutdown(wait=False)
