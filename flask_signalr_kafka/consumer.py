"""The consumer loop: one task (a greenlet or a thread) per topic.

Each server must see every record, so there is no consumer group (nothing to
join, nothing left behind in the cluster when a dyno restarts): the loop
assigns itself all partitions and seeks each to its log end, which fixes the
starting position before it reports ready. It keeps its own positions, so a
loop that crashes is restarted where it stopped, and it checks the log ends
now and then: a log end behind our position means the broker lost the topic
(restarted, or the topic was recreated), and we start over at its beginning.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .concurrency import Runtime
from .errors import MalformedRecord
from .kafka_client import Consumer, KafkaClient, TopicPartition, client_named
from .stats import ConsumerStats

logger = logging.getLogger(__name__)


class TopicConsumer:
    """Consumes one topic in a task of its own and hands each record to
    ``handler``.

    :param topic: the topic name.
    :param handler: called with each ``ConsumerRecord``; raises
                    :class:`MalformedRecord` for a record to skip.
    :param config: the consumer's settings, in ``client``'s dialect.
    :param runtime: what the loop runs on (greenlets or threads).
    :param on_missing_topic: called when the topic has vanished from the
                             cluster; it should recreate it.
    :param check_interval: seconds between log-end checks.
    :param from_beginning: read each partition from its start (a compacted
                           topic whose every record matters) rather than
                           from its end at startup.
    :param partitions: which of the topic's partition ids to read (all when
                       ``None``); asked again at each assignment and after
                       :meth:`refresh`, so the set can grow and shrink.
    :param client: the Kafka client library (kafka-python by default).
    """

    poll_timeout_ms = 1000
    restart_delay = 1.0

    def __init__(
        self,
        topic: str,
        handler: Callable[[Any], None],
        config: dict,
        runtime: Runtime,
        on_missing_topic: Callable[[], None] | None = None,
        check_interval: float = 10.0,
        from_beginning: bool = False,
        partitions: Callable[[list[int]], Iterable[int]] | None = None,
        client: KafkaClient | None = None,
    ) -> None:
        self.topic = topic
        self.client = client or client_named("kafka-python")
        self.handler = handler
        self.config = config
        self.runtime = runtime
        self.on_missing_topic = on_missing_topic
        self.check_interval = check_interval
        self.from_beginning = from_beginning
        self.partitions = partitions
        self.ready = threading.Event()
        #: Set once every record that existed at startup was handled.
        self.caught_up = threading.Event()
        self._startup_ends: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}
        self._behind: set[TopicPartition] = set()
        #: The partition ids the topic had at the last assignment.
        self._known: set[int] = set()
        # A deque: refresh() appends from other threads (threading mode)
        # while the loop takes them, atomically one by one.
        self._refreshed: deque[threading.Event] = deque()
        self.stats = ConsumerStats()
        self._started = False
        self._stopping = False
        self._stopped = True
        self._task: Any = None

    def start(self) -> None:
        self._task = self.runtime.spawn(self._run)

    def request_stop(self) -> None:
        """Stop after the batch being delivered (see :meth:`stop`)."""
        self._stopping = True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop consuming. The loop finishes the batch it is delivering, so
        that its positions say exactly what was delivered (connection state
        recovery saves them), and is killed if that takes over ``timeout``."""
        self._stopping = True
        if self._task is not None:
            self.runtime.stop(self._task, min(timeout, self.poll_timeout_ms / 1000 + 1))
            self._task = None

    def refresh(self) -> threading.Event:
        """Ask the loop to apply ``partitions`` again between two polls; the
        event is set once every partition it reads is assigned and has its
        position (a newly read one at its log end)."""
        done = threading.Event()
        self._refreshed.append(done)
        return done

    @property
    def running(self) -> bool:
        return self._task is not None and not self._stopped

    @property
    def partition_count(self) -> int:
        """How many partitions the topic has (read or not), 0 before the
        first assignment."""
        return len(self._known)

    def _run(self) -> None:
        self._stopped = False
        try:
            while not self._stopping:
                try:
                    self._consume()
                except Exception:
                    logger.exception("consumer of %s failed; restarting in %.1f s",
                                     self.topic, self.restart_delay)
                    self.stats.restarts += 1
                    self.runtime.sleep(self.restart_delay)
        finally:
            self._stopped = True

    def _consume(self) -> None:
        consumer = self.client.consumer(self.config, self.runtime)
        try:
            partitions = self._assign(consumer)
            self.ready.set()
            next_check = time.monotonic() + self.check_interval
            while not self._stopping:
                if self._refreshed:
                    # Between polls: the consumer is this greenlet's alone.
                    done = [self._refreshed.popleft() for _ in range(len(self._refreshed))]
                    partitions = self._assign(consumer)
                    for event in done:
                        event.set()
                batches = consumer.poll(timeout_ms=self.poll_timeout_ms)
                for tp, records in batches.items():
                    for record in records:
                        self._dispatch(record)
                        self.positions[tp] = record.offset + 1
                    self.stats.batch(tp, records, consumer.highwater(tp))
                if not self.caught_up.is_set() and all(
                    self.positions.get(tp, 0) >= end for tp, end in self._startup_ends.items()
                ):
                    self.caught_up.set()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.check_interval
                    if self._lost_log(consumer, partitions):
                        return  # reassign from scratch on a fresh consumer
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> list[TopicPartition]:
        """Assign every partition (of ``partitions``) and seek each to a
        fixed position: where we stopped, else the log end at startup and
        the log start later; a partition we start reading while running
        (not one the topic just got) from its log end."""
        while not (ids := consumer.partitions_for_topic(self.topic)):
            logger.warning("topic %s does not exist; creating it", self.topic)
            if self.on_missing_topic is not None:
                self.on_missing_topic()
            self.runtime.sleep(self.restart_delay)
        wanted = ids if self.partitions is None else set(self.partitions(sorted(ids))) & ids
        partitions = [TopicPartition(self.topic, p) for p in sorted(wanted)]
        for tp in [tp for tp in self.positions if tp.partition not in wanted]:
            # No longer read: a stale position would claim deliveries.
            del self.positions[tp]
            self._behind.discard(tp)
        consumer.assign(partitions)
        new = [tp for tp in partitions if tp not in self.positions]
        taken_up = [tp for tp in new if tp.partition in self._known]
        if taken_up and self._started:
            # Existing records are not ours to deliver: the log end.
            self.positions.update(consumer.end_offsets(taken_up))
            new = [tp for tp in new if tp not in self.positions]
        self._known = set(ids)
        if new and self._started:
            # A partition (or a recreated topic) that appeared while we ran
            # holds only records we must deliver.
            self.positions.update(consumer.beginning_offsets(new))
        elif new and self.from_beginning:
            self.positions.update(consumer.beginning_offsets(new))
            self._startup_ends = consumer.end_offsets(new)
        elif new:
            # Some brokers answer "latest" with less than the true log end:
            # we may then see a few older records, never miss a newer one.
            self.positions.update(consumer.end_offsets(new))
        self._started = True
        for tp in partitions:
            consumer.seek(tp, self.positions[tp])
        return partitions

    def _lost_log(self, consumer: Consumer, partitions: list[TopicPartition]) -> bool:
        """Whether the topic changed under us: it vanished, it has other
        partitions, or a log ends behind our position at two checks in a row
        (the broker lost its data). The log end is the high watermark of our
        last fetch, which is exact, where a ListOffsets lookup may not be."""
        ids = consumer.partitions_for_topic(self.topic)
        if len(ids) != len(self._known):
            logger.warning("topic %s now has %d partitions; reassigning", self.topic, len(ids))
            if not ids:
                self.positions.clear()
                self._known = set()  # recreated: every partition is new
            return True
        lost = False
        for tp in partitions:
            end = consumer.highwater(tp)
            if end is None or end >= self.positions[tp]:
                self._behind.discard(tp)
            elif tp not in self._behind:
                # Seen once, it may be a leader that just restarted: its high
                # watermark lags (it is checkpointed every few seconds) until
                # the followers catch up. Only a log still behind at the next
                # check was lost; reading it again would deliver twice.
                self._behind.add(tp)
            else:
                self._behind.discard(tp)
                logger.warning(
                    "%s partition %d ends at offset %d, behind our position %d: the broker "
                    "lost this log (restarted, or the topic was recreated); reading it from "
                    "the start",
                    tp.topic, tp.partition, end, self.positions[tp],
                )
                self.positions[tp] = 0
                lost = True
        return lost

    def _dispatch(self, record: Any) -> None:
        try:
            self.handler(record)
        except MalformedRecord as exc:
            self.stats.malformed += 1
            logger.warning(
                "skipping malformed record at %s partition %d offset %d: %s",
                record.topic, record.partition, record.offset, exc,
            )
        except Exception:
            logger.exception(
                "error handling record at %s partition %d offset %d; skipped",
                record.topic, record.partition, record.offset,
            )
