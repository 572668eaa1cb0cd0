"""confluent-kafka's ``Producer`` under the core (``client="confluent"``):
:class:`ConfluentProducer`, with kafka-python's ``send``/``flush``/``close``,
and :class:`Delivery`, the future of one record.

The producer's delivery reports are settled in the runtime (a greenlet
under gevent), so callbacks and waiters never run in librdkafka's or a
worker's thread. Under gevent no thread wakes the hub for them: a slow
timer while records are in flight serves them on the hub (``poll(0)``),
and a worker waits in ``poll`` only while someone waits for a report
(``Delivery.get``). Elsewhere a thread of the
producer's waits in ``poll``.

Partitioning is kafka-python's: keys by murmur2 (librdkafka's
``murmur2_random``, the Java client's), and the records without a key
(broadcasts) of one process on one partition, chosen once, so that they
reach every other server in the order they were sent. When the cluster
says that partition no longer exists (the topic was recreated with fewer
partitions), the count is read again and the record sent once more, as
kafka-python's partitioner, which reads the counts at every send, does.
"""
from __future__ import annotations

import collections
import logging
import random
import threading
import time
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException
from kafka.errors import KafkaTimeoutError

from ...runtime.concurrency import Runtime, gevent_patched
from .librdkafka import METADATA_TIMEOUT, made

logger = logging.getLogger(__name__)

#: Seconds a delivery-report wait in a thread lasts when nothing comes.
#: Under 200 ms: from confluent-kafka 2.13 a longer ``Producer.poll`` polls
#: in chunks and returns when its time is up, not at the first report.
REPORT_WAIT = 0.19
#: Seconds between the hub's looks for delivery reports while records are
#: in flight and nobody waits for one (gevent).
REPORT_TICK = 0.02
#: Seconds between refreshes of the partition counts of unkeyed sends.
COUNTS_MAX_AGE = 60.0


class Delivery:
    """The future of one produced record (kafka-python's ``FutureRecordMetadata``
    in the part the core uses: ``add_callback``, ``add_errback``, ``get``; it
    is its own record metadata: ``topic``, ``partition``, ``offset``)."""

    __slots__ = ("_queue", "done", "error", "_callbacks", "_event", "topic", "offset",
                 "partition", "_producer", "resend")

    def __init__(self, queue: collections.deque, topic: str = "",
                 producer: ConfluentProducer | None = None) -> None:
        self._queue = queue
        self._producer = producer  # told while someone waits in get()
        self.done = False
        self.error: BaseException | None = None
        #: ``(on_error, fn, args)`` in the order they were added.
        self._callbacks: list | None = None
        self._event: Any = None
        self.topic = topic
        self.offset = -1
        self.partition = -1
        #: Its partition was the producer's choice, not yet made again.
        self.resend = False

    def __call__(self, error: KafkaError | None, message: Any) -> None:
        """librdkafka's delivery callback, in whichever thread polled: only
        queued, settled by the producer's report task."""
        self._queue.append((self, error, message))

    def settle(self, error: KafkaError | None, message: Any) -> None:
        if error is not None:
            self.error = KafkaException(error)
        elif message is not None:
            self.offset, self.partition = message.offset(), message.partition()
        self.done = True
        event = self._event
        if event is not None:
            event.set()
        if self._callbacks:
            for on_error, fn, args in self._callbacks:
                self._run(on_error, fn, args)

    def _run(self, on_error: bool, fn: Any, args: tuple) -> None:
        failed = self.error is not None
        if on_error != failed:
            return
        try:
            fn(*args, self.error if failed else self)
        except Exception:
            logger.exception("a produce callback failed")

    def add_callback(self, fn: Any, *args: Any) -> Delivery:
        """``fn(*args, self)`` once the broker took the record."""
        return self._add(False, fn, args)

    def add_errback(self, fn: Any, *args: Any) -> Delivery:
        """``fn(*args, error)`` if the broker did not take the record."""
        return self._add(True, fn, args)

    def add_both(self, fn: Any, *args: Any) -> Delivery:
        """``fn(*args, self or error)`` either way."""
        self._add(False, fn, args)
        return self._add(True, fn, args)

    def _add(self, on_error: bool, fn: Any, args: tuple) -> Delivery:
        if self.done:
            self._run(on_error, fn, args)
        else:
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append((on_error, fn, args))
        return self

    def get(self, timeout: float | None = None) -> Delivery:
        """Wait for the broker's answer; raise its error.

        :raises KafkaTimeoutError: no answer within ``timeout`` seconds.
        """
        if not self.done:
            producer = self._producer
            self._event = threading.Event() if producer is None else producer.event()
            if producer is not None:
                producer.waiting(1)
            try:
                if not self.done and not self._event.wait(timeout):
                    raise KafkaTimeoutError(f"no delivery report within {timeout} s")
            finally:
                if producer is not None:
                    producer.waiting(-1)
        if self.error is not None:
            raise self.error
        return self


class ConfluentProducer:
    """confluent-kafka's ``Producer`` behind kafka-python's ``send``/``flush``
    /``close``.

    :param config: librdkafka producer properties.
    :param runtime: where the report task runs.
    """

    def __init__(self, config: dict[str, Any], runtime: Runtime) -> None:
        self._producer = made(confluent_kafka.Producer, config, "producer_config")
        self._runtime = runtime
        self._worker = runtime.worker(serial=False)
        self._reports: collections.deque = collections.deque()
        # Under gevent, reports are served on the hub (see _serve_on_hub).
        self._on_hub = runtime.green and gevent_patched()
        self._waiters = 0
        self._idle = False
        self._wake = self.event()
        self._slot = random.randrange(1 << 30)
        self._counts: dict[str, int] = {}
        self._counts_at = 0.0
        self._closed = False
        # Every topic's partition count now, so that a first broadcast does
        # not wait for a metadata request behind a report wait.
        self._refresh_counts()
        self._task = runtime.spawn(self._serve)

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             partition: int | None = None) -> Delivery:
        delivery = Delivery(self._reports, topic, self if self._on_hub else None)
        if partition is None and key is None:
            delivery.resend = True
            partition = self._slot % self._count(topic)
        error = self._produce(delivery, value, key, partition)
        if error is not None and self._resent(delivery, error, value, partition):
            error = None
        if error is not None:
            delivery.settle(error, None)
            return delivery
        # Under gevent the report greenlet's timer serves the reports: a
        # poll(0) here releases and re-takes the GIL at every send, and with
        # poll threads about an emit loop ran 7 times slower (5,000 emits to
        # one sid in 1.35 s against 0.19 s).
        if self._on_hub and self._idle:
            self._idle = False
            self._wake.set()
        return delivery

    def event(self) -> Any:
        """An event of the runtime: gevent's where reports are served on the hub."""
        if self._on_hub:
            from gevent.event import Event

            return Event()
        return threading.Event()

    def waiting(self, change: int) -> None:
        """One more (``1``) or one fewer (``-1``) caller waiting in
        :meth:`Delivery.get`: while there are any, reports are waited for in
        a worker, which wakes the hub at the first."""
        self._waiters += change
        if change > 0:
            self._wake.set()

    def _produce(self, delivery: Delivery, value: bytes | None, key: bytes | None,
                 partition: int | None) -> KafkaError | None:
        """Hand a record to librdkafka; its error if it refused it at once."""
        # A BufferError (librdkafka's queue is full) goes to the caller: the
        # publisher refuses the record. Retrying here never ended during an
        # outage, and under asyncio each retry's sleep blocked the loop.
        try:
            if partition is None:
                self._producer.produce(delivery.topic, value, key, on_delivery=delivery)
            else:
                self._producer.produce(delivery.topic, value, key, partition,
                                       on_delivery=delivery)
        except KafkaException as exc:
            return exc.args[0]
        return None

    def _resent(self, delivery: Delivery, error: KafkaError, value: bytes | None,
                partition: int | None) -> bool:
        """After ``_UNKNOWN_PARTITION``, count the topic's partitions again; send
        an unkeyed record once more to a partition that exists.

        The topic was recreated with fewer partitions (a broker that lost its
        topics): librdkafka refuses a partition past the new count at
        ``produce()`` and fails the records queued for one in their reports.
        With the old count kept for a minute, every broadcast was lost.
        """
        if error.code() != KafkaError._UNKNOWN_PARTITION:
            return False
        topic = delivery.topic
        # Once per stale count, not once per record refused for it.
        if partition is None or self._counts.get(topic, 0) > partition:
            if self._counts.pop(topic, None) is not None:
                logger.info("%s has no partition %s now: counting its partitions again",
                            topic, partition)
        if not delivery.resend or self._closed:  # closed: its report would never come
            return False
        delivery.resend = False
        return self._produce(delivery, value, None, self._slot % self._count(topic)) is None

    def _count(self, topic: str) -> int:
        count = self._counts.get(topic)
        if count is None:
            self._refresh_counts(topic)
            count = self._counts.get(topic) or 1
        return count

    def _refresh_counts(self, topic: str | None = None) -> None:
        try:
            metadata = self._worker.call(self._producer.list_topics, topic, METADATA_TIMEOUT)
            self._counts_at = time.monotonic()
        except KafkaException as exc:
            logger.warning("could not read the partition counts of %s: %s", topic or "topics", exc)
            return
        for name, meta in metadata.topics.items():
            if meta.error is None and meta.partitions:
                self._counts[name] = len(meta.partitions)

    def _serve(self) -> None:
        """Serve delivery reports until closed, settle them here."""
        while not self._closed:
            try:
                if self._on_hub:
                    self._serve_on_hub()
                else:  # this task's own thread
                    self._producer.poll(REPORT_WAIT)
            except Exception:
                logger.exception("serving the producer's delivery reports failed")
                self._runtime.sleep(REPORT_WAIT)
            self._settle()
            if self._counts and time.monotonic() - self._counts_at > COUNTS_MAX_AGE:
                self._counts_at = time.monotonic()
                for topic in list(self._counts):
                    self._refresh_counts(topic)

    def _serve_on_hub(self) -> None:
        """One step of the report task under gevent: a worker's ``poll`` while
        someone waits for a report; a look every :data:`REPORT_TICK` s
        while records are in flight; else sleep until a send."""
        if self._waiters:
            self._worker.call(self._producer.poll, REPORT_WAIT)
            return
        # No switch to another greenlet before the wait: no wake-up is lost.
        self._wake.clear()
        if len(self._producer):
            self._wake.wait(REPORT_TICK)  # cut short by a waiter
            self._producer.poll(0)
        else:
            self._idle = True  # a send wakes it
            self._wake.wait(COUNTS_MAX_AGE)
            self._idle = False

    def _settle(self) -> None:
        reports = self._reports
        while reports:
            delivery, error, message = reports.popleft()
            if error is not None and message is not None and self._resent(
                    delivery, error, message.value(), message.partition()):
                continue  # its report comes again
            delivery.settle(error, message)

    def flush(self, timeout: float | None = None) -> None:
        args = () if timeout is None else (timeout,)
        self._worker.call(self._producer.flush, *args)
        self._settle()

    def close(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            self._wake.set()
            self._runtime.stop(self._task, REPORT_WAIT + 1)
            self._settle()
            self._worker.close()

    def fatal(self, error: BaseException) -> bool:
        return (isinstance(error, KafkaException) and isinstance(error.args[0], KafkaError)
                and error.args[0].fatal())
