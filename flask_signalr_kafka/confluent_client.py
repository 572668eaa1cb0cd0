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

The producer's delivery reports are served by a task of its own: it waits
in ``poll`` (in the worker) until reports come, and settles their futures
back in the runtime (a greenlet under gevent), so callbacks and waiters
never run in librdkafka's or the worker's thread.

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

from .client_config import BUFFER_MEMORY, CONFLUENT_REQUEST_TIMEOUT_MS, librdkafka_configs
from .concurrency import Runtime, gevent_patched
from .kafka_client import TopicPartition

logger = logging.getLogger(__name__)

#: Seconds a delivery-report wait lasts when nothing comes (an idle dyno
#: wakes twice a second for it).
REPORT_WAIT = 0.5
#: Seconds between refreshes of the partition counts of unkeyed sends.
COUNTS_MAX_AGE = 60.0
#: Records taken from librdkafka's queue per poll.
BATCH = 500
#: Batches a consumer's poll thread may queue before it waits for them to
#: be taken.
QUEUED_BATCHES = 4
#: Seconds a poll thread waits in librdkafka before it looks for a stop.
THREAD_WAIT = 0.5
_METADATA_TIMEOUT = 10.0


class Delivery:
    """The future of one produced record (kafka-python's ``FutureRecordMetadata``
    in the part the core uses: ``add_callback``, ``add_errback``, ``get``; it
    is its own record metadata: ``topic``, ``partition``, ``offset``)."""

    __slots__ = ("_queue", "done", "error", "_callbacks", "_event", "topic", "offset",
                 "partition")

    def __init__(self, queue: collections.deque, topic: str = "") -> None:
        self._queue = queue
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
            self._event = threading.Event()
            if not self.done and not self._event.wait(timeout):
                raise KafkaTimeoutError(f"no delivery report within {timeout} s")
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
        delivery = Delivery(self._reports, topic)
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
        """Serve delivery reports until closed: wait in ``poll`` until some
        come, settle them here."""
        while not self._closed:
            try:
                self._worker.call(self._producer.poll, REPORT_WAIT)
            except Exception:
                logger.exception("serving the producer's delivery reports failed")
                self._runtime.sleep(REPORT_WAIT)
            self._settle()
            if self._counts and time.monotonic() - self._counts_at > COUNTS_MAX_AGE:
                self._counts_at = time.monotonic()
                for topic in list(self._counts):
                    self._refresh_counts(topic)

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
        # new one's: librdkafka's (re)assignments are numbered, and a batch
        # carries the number current when its poll began.
        self._lock = _raw_lock()
        self._seq = 0
        self._dropped_at: dict[TopicPartition, int] = {}
        self._assigned_at: dict[TopicPartition, int] = {}

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
            self._consumer.pause(active)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)
        active = [_TP(tp.topic, tp.partition) for tp in partitions if tp in self._active]
        if active:
            self._consumer.resume(active)

    def _sync(self) -> None:
        """Make librdkafka's assignment ours: drop what is no longer read,
        add (at its position) what is new or was sought elsewhere."""
        wanted = set(self._assigned)
        drop = [tp for tp in self._active if tp not in wanted or (
            tp in self._seeks and self._seeks[tp] != self._active[tp])]
        add = [tp for tp in self._assigned if tp not in self._active or tp in drop]
        with self._lock:  # not while the poll thread re-reads a partition
            if drop:
                self._consumer.incremental_unassign([_TP(tp.topic, tp.partition) for tp in drop])
                for tp in drop:
                    del self._active[tp]
                    self._assigned_at.pop(tp, None)
            if add:
                default = confluent_kafka.OFFSET_END
                self._consumer.incremental_assign([
                    _TP(tp.topic, tp.partition, self._positions.get(tp, default)) for tp in add])
                for tp in add:
                    self._active[tp] = self._positions.get(tp)
                    self._assigned_at[tp] = self._positions.get(tp, default)
                paused = [_TP(tp.topic, tp.partition) for tp in add if tp in self._paused]
                if paused:
                    self._consumer.pause(paused)
            # Numbered once librdkafka has it: a poll that began before this
            # line may hold records of the old assignment.
            self._seq += 1
            for tp in drop:
                self._dropped_at[tp] = self._seq
        self._seeks.clear()

    def _overlapped(self, began: int, tps: Any) -> None:
        """In the poll thread, after a poll that began at ``began`` returned
        records of ``tps``: a partition reassigned meanwhile may have given
        records of both assignments, which cannot be told apart. Those are
        all dropped (:meth:`_deliver`) and the partition is assigned again
        where it was, now that no poll is under way."""
        with self._lock:
            again = [tp for tp in tps if self._dropped_at.get(tp, -1) > began
                     and tp in self._assigned_at]
            if not again:
                return
            self._consumer.incremental_unassign([_TP(tp.topic, tp.partition) for tp in again])
            self._consumer.incremental_assign([
                _TP(tp.topic, tp.partition, self._assigned_at[tp]) for tp in again])
            paused = [_TP(tp.topic, tp.partition) for tp in again if tp in self._paused]
            if paused:
                self._consumer.pause(paused)
            self._seq += 1
            for tp in again:
                self._dropped_at[tp] = self._seq

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
        began = self._seq
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
        """``(began, records by partition)`` batches as one poll's answer,
        without what an assignment since ``began`` has made stale."""
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
    It holds at most :data:`QUEUED_BATCHES` batches and then waits for the
    greenlet to take them (librdkafka's own queue then fills, and it stops
    fetching). It closes the librdkafka consumer when stopped: no poll
    overlaps the close.

    :param owner: the consumer it reads for.
    """

    def __init__(self, owner: ConfluentConsumer) -> None:
        from gevent import get_hub
        from gevent.event import Event
        from gevent.threadpool import ThreadPool

        self._owner = owner
        self._batches: collections.deque = collections.deque()
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

    def _run(self) -> None:
        owner, consumer, batches = self._owner, self._owner._consumer, self._batches
        try:
            while not self._stopping:
                if len(batches) >= QUEUED_BATCHES:
                    self._waiting = True
                    if len(batches) >= QUEUED_BATCHES:
                        self._space.acquire(timeout=THREAD_WAIT)
                    self._waiting = False
                    continue
                began = owner._seq
                try:
                    messages = _fetch(consumer, THREAD_WAIT)
                except Exception:
                    logger.exception("polling a consumer failed")
                    self._space.acquire(timeout=THREAD_WAIT)  # a pause, not a spin
                    continue
                records = owner._records(messages) if messages else None
                if not records:
                    continue
                owner._overlapped(began, records)
                # Appended before the flag is read; the greenlet resets the
                # flag before it takes: no batch waits for a later one.
                batches.append((began, records))
                if not self._scheduled:
                    self._scheduled = True
                    self._watcher.send()
        finally:
            consumer.close()

    def take(self, timeout: float) -> list:
        """The queued batches, waiting up to ``timeout`` s for one (in the
        consumer's greenlet)."""
        self._ready.clear()
        self._scheduled = False
        batches = self._batches
        if not batches:
            self._ready.wait(timeout)
            self._ready.clear()
            self._scheduled = False
        out = []
        while batches:
            out.append(batches.popleft())
        if self._waiting and self._space.locked():
            self._space.release()
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
