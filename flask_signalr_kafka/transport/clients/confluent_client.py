"""confluent-kafka (librdkafka) under the core (``client="confluent"``):
a producer and a consumer with the methods :mod:`.kafka_client` names.

librdkafka does its network I/O in threads of its own; what waits in Python
(a consumer's poll, a flush, a metadata or offsets request) is a blocking C
call that releases the GIL. Each adapter makes those calls through its
runtime's :class:`.Worker`: under gevent a real thread of its own, so the
hub goes on while librdkafka waits; in threading mode the calling thread.
Nothing polls in a loop without a timeout. A consumer's metadata and
offsets requests go through :class:`Queries`, not its own connections,
where they would wait behind its long-poll fetches.

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
reach every other server in the order they were sent.
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
from confluent_kafka import TopicPartition as _TP
from kafka.errors import KafkaTimeoutError

from ...runtime.concurrency import Runtime, gevent_patched
from .client_config import BUFFER_MEMORY, CONFLUENT_REQUEST_TIMEOUT_MS, librdkafka_configs
from .kafka_client import TopicPartition

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
#: Records taken from librdkafka's queue per poll.
BATCH = 500
#: Batches a consumer's poll thread may queue before it waits for them to
#: be taken.
QUEUED_BATCHES = 4
#: Seconds a poll thread waits in librdkafka before it looks for a stop.
THREAD_WAIT = 0.5
#: Seconds between a poll thread's reads of every partition's log end.
HIGHWATER_EVERY = 1.0
_METADATA_TIMEOUT = 10.0


class Delivery:
    """The future of one produced record (kafka-python's ``FutureRecordMetadata``
    in the part the core uses: ``add_callback``, ``add_errback``, ``get``; it
    is its own record metadata: ``topic``, ``partition``, ``offset``)."""

    __slots__ = ("_queue", "done", "error", "_callbacks", "_event", "topic", "offset",
                 "partition", "_producer")

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
        self._producer = _made(confluent_kafka.Producer, config, "producer_config")
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
            partition = self._slot % self._count(topic)
        # A BufferError (librdkafka's queue is full) goes to the caller: the
        # publisher refuses the record. Retrying here never ended during an
        # outage, and under asyncio each retry's sleep blocked the loop.
        try:
            if partition is None:
                self._producer.produce(topic, value, key, on_delivery=delivery)
            else:
                self._producer.produce(topic, value, key, partition, on_delivery=delivery)
        except KafkaException as exc:
            delivery.settle(exc.args[0], None)
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

    def _count(self, topic: str) -> int:
        count = self._counts.get(topic)
        if count is None:
            self._refresh_counts(topic)
            count = self._counts.get(topic) or 1
        return count

    def _refresh_counts(self, topic: str | None = None) -> None:
        try:
            metadata = self._worker.call(self._producer.list_topics, topic, _METADATA_TIMEOUT)
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


class Record:
    """A consumed record, with kafka-python's ``ConsumerRecord`` attributes."""

    __slots__ = ("topic", "partition", "offset", "key", "value", "timestamp")

    def __init__(self, message: Any) -> None:
        self.topic = message.topic()
        self.partition = message.partition()
        self.offset = message.offset()
        self.key = message.key()
        self.value = message.value()
        self.timestamp = message.timestamp()[1]


class ConfluentConsumer:
    """confluent-kafka's ``Consumer`` behind the kafka-python consumer methods
    the core uses, with manual assignment and positions kept here: a seek
    before the next poll becomes the offset the partition is assigned at.

    Under gevent a :class:`PollThread` of its own polls librdkafka and hands
    the records over in batches; elsewhere :meth:`poll` polls in the
    caller's thread.

    :param config: librdkafka consumer properties.
    :param runtime: where blocking calls wait.
    :param earliest: an out-of-range position resets to the log start.
    """

    def __init__(self, config: dict[str, Any], runtime: Runtime, earliest: bool = False) -> None:
        config = {**config, "auto.offset.reset": "earliest" if earliest else "latest"}
        self._runtime = runtime
        self._consumer = _made(confluent_kafka.Consumer, config, "consumer_config")
        self._queries = Queries.acquire(config, runtime)
        self._setup()
        self._closed = False
        self._thread: PollThread | None = None
        if runtime.green and gevent_patched():
            self._thread = PollThread(self)
        else:
            self._worker = runtime.worker()  # polls and close, one at a time

    def _setup(self) -> None:
        self._assigned: list[TopicPartition] = []
        self._active: dict[TopicPartition, int | None] = {}  # assigned in librdkafka, at
        self._positions: dict[TopicPartition, int] = {}
        self._seeks: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._partition_ids: dict[str, set[int]] = {}  # the last metadata answer, by topic
        # What tells a poll thread's records of an old assignment from the
        # new one's: assignment changes are numbered, and a batch carries
        # the number of the last change applied when its poll began.
        self._seq = 0
        self._dropped_at: dict[TopicPartition, int] = {}

    # -- metadata and offsets (requests to the cluster) ---------------------------

    def _request(self, method: str, *args: Any) -> Any:
        if self._closed:
            raise KafkaTimeoutError("the consumer is closed")
        return self._queries.call(method, *args)

    def partitions_for_topic(self, topic: str) -> set[int]:
        """The topic's partition ids, asked of the cluster; the last answer
        when the cluster does not answer in time (as kafka-python's, which
        answers from its metadata cache): a metadata request that went to a
        hung broker restarted the consumer that asked (its periodic check),
        and the new one met the hung broker again (a 20 s freeze silenced
        send-conn for 21 s at a 10 s request timeout).

        :raises KafkaTimeoutError: no answer, and none before.
        """
        try:
            metadata = self._request("list_topics", topic, _METADATA_TIMEOUT)
        except KafkaException as exc:  # the interface's word for it is kafka-python's
            known = self._partition_ids.get(topic)
            if known is not None:
                logger.warning("no metadata of %s (%s); going on with its %d partitions",
                               topic, exc.args[0].str(), len(known))
                return set(known)
            raise KafkaTimeoutError(f"no metadata of {topic}: {exc.args[0].str()}") from exc
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            return set()
        self._partition_ids[topic] = set(meta.partitions)
        return set(meta.partitions)

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        """Its log start and end, asked of its leader; retried while the
        leader is not known yet (a topic just created, a failover), as
        kafka-python's ``end_offsets`` does."""
        deadline = time.monotonic() + _METADATA_TIMEOUT
        while True:
            try:
                return self._request("get_watermark_offsets",
                                     _TP(tp.topic, tp.partition), _METADATA_TIMEOUT, False)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise KafkaTimeoutError(
                        f"no offsets of {tp.topic} partition {tp.partition}: "
                        f"{exc.args[0].str()}") from exc
                logger.debug("offsets of %s partition %d: %s; retrying", tp.topic,
                             tp.partition, exc)
                self._runtime.sleep(0.1)

    def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._watermarks(tp)[0] for tp in partitions}

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._watermarks(tp)[1] for tp in partitions}

    def highwater(self, tp: TopicPartition) -> int | None:
        """The log end seen by the last fetch (no request)."""
        if self._thread is not None:
            return self._thread.highwater.get(tp)
        try:
            high = self._consumer.get_watermark_offsets(_TP(tp.topic, tp.partition),
                                                        cached=True)[1]
        except KafkaException:
            return None
        return high if high >= 0 else None

    # -- assignment and positions -------------------------------------------------

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._assigned = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        wanted = set(self._assigned)
        for tp in [tp for tp in self._positions if tp not in wanted]:
            del self._positions[tp]
        self._paused &= wanted

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._seeks[tp] = offset
        self._positions[tp] = offset

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp, offset in self.beginning_offsets(list(partitions or self._assigned)).items():
            self.seek(tp, offset)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp, offset in self.end_offsets(list(partitions or self._assigned)).items():
            self.seek(tp, offset)

    def position(self, tp: TopicPartition) -> int:
        if tp not in self._positions:
            self.seek_to_end(tp)
        return self._positions[tp]

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(partitions)
        active = [_TP(tp.topic, tp.partition) for tp in partitions if tp in self._active]
        if active:
            self._call(self._consumer.pause, active)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)
        active = [_TP(tp.topic, tp.partition) for tp in partitions if tp in self._active]
        if active:
            self._call(self._consumer.resume, active)

    def _call(self, fn: Any, *args: Any) -> None:
        """``fn(*args)`` on librdkafka's consumer: in the poll thread between
        two polls if there is one (the binding makes any other call wait for
        a poll under way), else now."""
        if self._thread is not None:
            self._thread.call(self._seq, fn, *args)
        else:
            fn(*args)

    def _sync(self) -> None:
        """Make librdkafka's assignment ours: drop what is no longer read,
        add (at its position) what is new or was sought elsewhere."""
        wanted = set(self._assigned)
        drop = [tp for tp in self._active if tp not in wanted or (
            tp in self._seeks and self._seeks[tp] != self._active[tp])]
        add = [tp for tp in self._assigned if tp not in self._active or tp in drop]
        # Numbered: records of a poll that began before the poll thread
        # applied this change are of the old assignment (see _deliver).
        self._seq += 1
        if drop:
            self._call(self._consumer.incremental_unassign,
                       [_TP(tp.topic, tp.partition) for tp in drop])
            for tp in drop:
                del self._active[tp]
                self._dropped_at[tp] = self._seq
        if add:
            default = confluent_kafka.OFFSET_END
            self._call(self._consumer.incremental_assign, [
                _TP(tp.topic, tp.partition, self._positions.get(tp, default)) for tp in add])
            for tp in add:
                self._active[tp] = self._positions.get(tp)
            paused = [_TP(tp.topic, tp.partition) for tp in add if tp in self._paused]
            if paused:
                self._call(self._consumer.pause, paused)
        self._seeks.clear()

    # -- records ------------------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Record]]:
        """The records that came within ``timeout_ms``, by partition: returns
        at the first record, with whatever else is already fetched."""
        if self._seeks or len(self._active) != len(self._assigned) or any(
                tp not in self._active for tp in self._assigned):
            self._sync()
        if not self._active:
            self._runtime.sleep(timeout_ms / 1000)  # nothing to read: wait as a poll would
            return {}
        if self._thread is not None:
            return self._deliver(self._thread.take(timeout_ms / 1000))
        began = self._seq  # every change is made: nothing to drop
        records = self._records(self._worker.call(_fetch, self._consumer, timeout_ms / 1000))
        return self._deliver([(began, records)] if records else [])

    @staticmethod
    def _records(messages: list) -> dict[TopicPartition, list[Record]]:
        out: dict[TopicPartition, list[Record]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    logger.warning("consumer error on %s partition %s: %s",
                                   message.topic(), message.partition(), error)
                continue
            record = Record(message)
            tp = TopicPartition(record.topic, record.partition)
            batch = out.get(tp)
            if batch is None:
                out[tp] = [record]
            else:
                batch.append(record)
        return out

    def _deliver(self, batches: list) -> dict[TopicPartition, list[Record]]:
        """``(applied, records by partition)`` batches as one poll's answer,
        without what a change after the ``applied``-th has made stale."""
        out: dict[TopicPartition, list[Record]] = {}
        for began, records in batches:
            for tp, batch in records.items():
                if tp not in self._active or self._dropped_at.get(tp, -1) > began:
                    continue  # fetched before it was unassigned or sought
                if tp in out:
                    out[tp].extend(batch)
                else:
                    out[tp] = batch
        for tp, batch in out.items():
            self._positions[tp] = self._active[tp] = batch[-1].offset + 1
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._thread is not None:
                self._thread.close()
            else:
                self._worker.call(self._consumer.close)
        finally:
            if self._thread is None:
                self._worker.close()
            self._queries.release()


def _fetch(consumer: Any, timeout: float) -> list:
    """Up to :data:`BATCH` messages: waits ``timeout`` s for the first only
    (``consume`` with a timeout waits for all of them)."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(BATCH - 1, 0)]


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

    :param owner: the consumer it reads for.
    """

    def __init__(self, owner: ConfluentConsumer) -> None:
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
                    messages = _fetch(consumer, self._wait)
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


class Queries:
    """An idle librdkafka consumer (nothing assigned, so nothing fetched)
    that makes the metadata and offsets requests of the consumers sharing
    its settings. A consumer's own connections carry its long-poll fetches,
    and a broker answers a connection's requests one at a time: there, a
    claim's offsets request waited behind a fetch for up to
    ``fetch.wait.max.ms`` (3 s when it was measured). Shared, and closed
    with its last user.

    :param key: its settings, as :meth:`acquire` keys them.
    :param config: librdkafka consumer properties.
    :param runtime: where its calls wait (several at once).
    """

    #: The open ones, by key.
    shared: dict[tuple, Queries] = {}
    _lock = threading.Lock()
    #: Properties that shape fetches only: consumers that differ in them share.
    FETCH_ONLY = ("fetch.", "auto.offset.reset", "queued.")

    def __init__(self, key: tuple, config: dict[str, Any], runtime: Runtime) -> None:
        self._key = key
        self._consumer = _made(confluent_kafka.Consumer, config, "consumer_config")
        self._worker = runtime.worker(serial=False)
        self._users = 0
        self._in_flight = 0
        self._idle = threading.Condition()

    @classmethod
    def acquire(cls, config: dict[str, Any], runtime: Runtime) -> Queries:
        key = (id(runtime), tuple(sorted((k, repr(v)) for k, v in config.items()
                                         if not k.startswith(cls.FETCH_ONLY))))
        with cls._lock:
            queries = cls.shared.get(key)
            if queries is None:
                queries = cls.shared[key] = cls(key, config, runtime)
            queries._users += 1
        return queries

    def call(self, method: str, *args: Any) -> Any:
        """The idle consumer's ``method(*args)``, waited for in the runtime."""
        with self._idle:
            self._in_flight += 1
        try:
            return self._worker.call(getattr(self._consumer, method), *args)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def release(self) -> None:
        """One user fewer; the last closes it once its requests return."""
        with self._lock:
            self._users -= 1
            if self._users:
                return
            del self.shared[self._key]
        with self._idle:
            self._idle.wait_for(lambda: not self._in_flight, _METADATA_TIMEOUT + 1)
        try:
            self._worker.call(self._consumer.close)
        finally:
            self._worker.close()


def _made(factory: Any, config: dict[str, Any], name: str) -> Any:
    """``factory(config)``; librdkafka's refusal of a property as a ValueError."""
    try:
        return factory(config)
    except KafkaException as exc:
        raise ValueError(f"librdkafka refused {name}: {exc.args[0].str()} (client='confluent' "
                         "takes librdkafka properties, see its CONFIGURATION.md)") from exc


class ConfluentClient:
    name = "confluent"
    fetch_wait = "fetch.wait.max.ms"
    # Not 3 s: librdkafka sends one fetch per broker at a time, and a
    # partition that joins while one waits (the rest of a topic created a
    # second ago, a leader that moved here) is read only after it returns:
    # a first remote join took 2.5 s. Idle, a dyno's seven consumers cost
    # 1.25-1.30% of a core at 500 ms against 1.12-1.17% at 3 s.
    static_fetch_wait_ms = None
    timeout_errors = (KafkaTimeoutError,)
    connection_errors = (KafkaException,)
    buffer_setting = "queue.buffering.max.kbytes"
    # Measured: 1,193 bytes of RSS a queued 100-byte record (60,000 records
    # held by a frozen broker, each with two errbacks).
    record_overhead = 1100
    request_timeout = "socket.timeout.ms"
    fallback_request_timeout_ms = CONFLUENT_REQUEST_TIMEOUT_MS
    # librdkafka's 30 s: a connection begun while the cluster was down (its
    # SYNs unanswered) came back up to 11 s after the cluster did.
    setup_timeouts = ("socket.connection.setup.timeout.ms",)

    def configs(self, bootstrap_servers: Any, connect_timeout: float, client_id: str,
                producer_config: Any, consumer_config: Any, admin_config: Any,
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        return librdkafka_configs(bootstrap_servers, connect_timeout, client_id,
                                  producer_config, consumer_config, admin_config)

    def producer(self, config: dict[str, Any], runtime: Runtime) -> ConfluentProducer:
        return ConfluentProducer(config, runtime)

    def buffer_memory(self, config: dict[str, Any]) -> int:
        return int(config.get("queue.buffering.max.kbytes", BUFFER_MEMORY // 1024)) * 1024

    def consumer(self, config: dict[str, Any], runtime: Runtime,
                 earliest: bool = False) -> ConfluentConsumer:
        return ConfluentConsumer(config, runtime, earliest)

    def unusable(self, producer: Any, error: BaseException) -> bool:
        """librdkafka's idempotent producer raised a fatal error: it fails
        every later record (librdkafka's own word: ``KafkaError.fatal()``)."""
        return producer.fatal(error)


CLIENT = ConfluentClient()
