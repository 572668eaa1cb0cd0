"""A confluent consumer's poll thread under gevent (:class:`PollThread`): a
real thread that waits in librdkafka's poll and hands each batch to the
consumer's greenlet, waking the hub once per batch, and makes the
greenlet's calls on librdkafka's consumer between two polls.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka import TopicPartition as _TP

from ...runtime.concurrency import gevent_patched
from .kafka_client import TopicPartition
from .librdkafka import BATCH, fetch

logger = logging.getLogger(__name__)

#: Batches a consumer's poll thread may queue before it waits for them to
#: be taken.
QUEUED_BATCHES = 4
#: Seconds a poll thread waits in librdkafka before it looks for a stop.
THREAD_WAIT = 0.5
#: Seconds between a poll thread's reads of every partition's log end.
HIGHWATER_EVERY = 1.0


def _raw_lock() -> Any:
    """A lock of the OS (gevent's patched one is for greenlets): held for
    moments by a poll thread and the hub."""
    if gevent_patched():
        from gevent import monkey

        return monkey.get_original("_thread", "allocate_lock")()
    return threading.Lock()


class PollThread:
    """A consumer's poll thread under gevent: a real thread that waits in
    librdkafka's poll and queues each batch it reads for the consumer's
    greenlet, waking the hub through one long-lived watcher when the queue
    goes from empty to non-empty: one hand-off per batch, none per poll.

    confluent-kafka makes any call on a consumer wait for a poll under way
    in another thread (an assign waited for ever behind back-to-back
    polls), so the greenlet's calls (assign, pause, resume) are queued and
    made here between two polls, each poll waiting at most as long as the
    greenlet's (200 ms for a claim's consumers); the log ends a fetch saw
    are read here too. The thread holds at most :data:`QUEUED_BATCHES`
    batches and then waits for the greenlet to take them (librdkafka's own
    queue then fills, and it stops fetching). It closes the consumer when
    stopped.

    :param owner: the :class:`.ConfluentConsumer` it reads for: its
        librdkafka consumer, active partitions and ``_records``. Typed
        ``Any``: that module makes this one, and importing it back would be
        a cycle.
    """

    def __init__(self, owner: Any) -> None:
        from gevent import get_hub
        from gevent.event import Event
        from gevent.threadpool import ThreadPool

        self._owner = owner
        self._batches: collections.deque = collections.deque()
        self._calls: collections.deque = collections.deque()
        #: The log end of each partition at its last fetch.
        self.highwater: dict[TopicPartition, int] = {}
        self._wait = THREAD_WAIT
        self._scheduled = False  # a wake-up is on its way
        self._ready = Event()
        self._watcher = get_hub().loop.async_()
        self._watcher.start(self._ready.set)
        self._space = _raw_lock()
        self._space.acquire()  # held: released by the greenlet for a waiting thread
        self._waiting = False
        self._stopping = False
        self._pool = ThreadPool(1)
        self._done = self._pool.spawn(self._run)

    def call(self, seq: int, fn: Any, *args: Any) -> None:
        """Make ``fn(*args)`` before the next poll; its records carry ``seq``."""
        self._calls.append((seq, fn, args))
        self._unblock()

    def _unblock(self) -> None:
        if self._waiting and self._space.locked():
            self._space.release()

    def _run(self) -> None:
        owner, consumer = self._owner, self._owner._consumer
        batches, calls = self._batches, self._calls
        applied = 0
        next_ends = 0.0
        try:
            while not self._stopping:
                if not applied and not calls:  # nothing assigned yet
                    self._waiting = True
                    if not calls:
                        self._space.acquire(timeout=THREAD_WAIT)
                    self._waiting = False
                    continue
                while calls:
                    applied, fn, args = calls.popleft()
                    try:
                        fn(*args)
                    except Exception:
                        logger.exception("a consumer call failed")
                if len(batches) >= QUEUED_BATCHES:
                    self._waiting = True
                    if len(batches) >= QUEUED_BATCHES and not calls:
                        self._space.acquire(timeout=THREAD_WAIT)
                    self._waiting = False
                    continue
                try:
                    messages = fetch(consumer, self._wait)
                except Exception:
                    logger.exception("polling a consumer failed")
                    self._space.acquire(timeout=THREAD_WAIT)  # a pause, not a spin
                    continue
                records = owner._records(messages) if messages else None
                now = time.monotonic()
                if now >= next_ends:  # every partition's: a log may shrink while idle
                    next_ends = now + HIGHWATER_EVERY
                    self._read_ends(list(owner._active))
                elif records:
                    self._read_ends(records)
                if not records:
                    continue
                # Appended before the flag is read; the greenlet resets the
                # flag before it takes: no batch waits for a later one.
                batches.append((applied, records, len(messages)))
                if not self._scheduled:
                    self._scheduled = True
                    self._watcher.send()
        finally:
            consumer.close()

    def _read_ends(self, tps: Any) -> None:
        consumer, highwater = self._owner._consumer, self.highwater
        for tp in tps:
            try:
                high = consumer.get_watermark_offsets(_TP(tp.topic, tp.partition),
                                                      cached=True)[1]
            except KafkaException:
                high = -1
            if high >= 0:
                highwater[tp] = high
            else:  # not known now (as the consumer's own answer would say)
                highwater.pop(tp, None)

    def take(self, timeout: float) -> list:
        """Queued batches of up to :data:`BATCH` records in all (as one poll
        of librdkafka would give: the greenlet delivers them in one go),
        waiting up to ``timeout`` s for one (in the consumer's greenlet)."""
        self._wait = min(max(timeout, 0.01), THREAD_WAIT)
        self._ready.clear()
        self._scheduled = False
        batches = self._batches
        if not batches:
            self._ready.wait(timeout)
            self._ready.clear()
            self._scheduled = False
        out, count = [], 0
        while batches and count < BATCH:
            applied, records, size = batches.popleft()
            out.append((applied, records))
            count += size
        self._unblock()
        return out

    def close(self) -> None:
        """Stop polling and close the consumer (waits for its poll to end)."""
        self._stopping = True
        if self._space.locked():
            self._space.release()
        try:
            self._done.get()
        finally:
            self._watcher.close()
            self._pool.kill()
