"""The consumer loop: one task (a greenlet or a thread) and one client
consumer per group of topics (:class:`ConsumerGroup`; the core groups the hot
topics and the cold ones, see :mod:`.core`), each topic's reading state in
its :class:`TopicConsumer`.

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

from ..errors import MalformedRecord
from ..runtime.concurrency import Runtime
from ..runtime.stats import ConsumerStats
from .clients.kafka_client import Consumer, KafkaClient, TopicPartition, client_named

logger = logging.getLogger(__name__)


class TopicConsumer:
    """Consumes one topic, alone or in a :class:`ConsumerGroup`, and hands
    each record to ``handler``.

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
        #: The group whose loop reads this topic (its own one by default).
        self._group: ConsumerGroup | None = None

    def start(self) -> None:
        """Start reading: in a task of its own, or in its group's."""
        if self._group is None:
            ConsumerGroup([self], self.config, self.runtime, self.client)
        assert self._group is not None
        self._group.start()

    def request_stop(self) -> None:
        """Stop after the batch being delivered (see :meth:`stop`)."""
        self._stopping = True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop consuming. The loop finishes the batch it is delivering, so
        that its positions say exactly what was delivered (connection state
        recovery saves them), and is killed if that takes over ``timeout``
        (a group's other topics are read on)."""
        self._stopping = True
        if self._group is not None:
            self._group.leave(self, timeout)

    def refresh(self) -> threading.Event:
        """Ask the loop to apply ``partitions`` again between two polls; the
        event is set once every partition it reads is assigned and has its
        position (a newly read one at its log end)."""
        done = threading.Event()
        self._refreshed.append(done)
        return done

    @property
    def running(self) -> bool:
        group = self._group
        return group is not None and group.running and self in group.members

    @property
    def partition_count(self) -> int:
        """How many partitions the topic has (read or not), 0 before the
        first assignment."""
        return len(self._known)

    def _deliver(self, tp: TopicPartition, records: list, log_end: int | None) -> None:
        for record in records:
            self._dispatch(record)
            self.positions[tp] = record.offset + 1
        self.stats.batch(tp, records, log_end)

    def _check_caught_up(self) -> None:
        if not self.caught_up.is_set() and all(
            self.positions.get(tp, 0) >= end for tp, end in self._startup_ends.items()
        ):
            self.caught_up.set()

    def _plan(self, consumer: Consumer) -> list[TopicPartition]:
        """The partitions to read (of ``partitions``), each with a fixed
        position in :attr:`positions`: where we stopped, else the log end at
        startup and the log start later; a partition we start reading while
        running (not one the topic just got) from its log end. The group
        assigns them and seeks."""
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
        return partitions

    def _lost_log(self, consumer: Consumer, partitions: list[TopicPartition]) -> bool:
        """Whether the topic changed under us: it vanished, it has other
        partitions, or a log ends behind our position (the broker lost its
        data). A log end is first seen as the high watermark of our last
        fetch, which is exact but may be old or lag; only a fresh lookup
        that agrees, at the next check, makes the log count as lost."""
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
            elif (end := self._log_end(consumer, tp)) is not None and end < self.positions[tp]:
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

    def _log_end(self, consumer: Consumer, tp: TopicPartition) -> int | None:
        """The log end the partition's leader reports now, or None when it
        cannot say. The watermark of our last fetch can be the lagging one of
        a leader elected while the cluster restarted, and stays so while no
        fetch gets through: 23 records were read twice that way. A leader
        whose watermark lags refuses this lookup (Kafka's OFFSET_NOT_AVAILABLE,
        retried until the client's timeout): the suspicion then stands."""
        try:
            return consumer.end_offsets([tp])[tp]
        except Exception as exc:  # the cluster is down or still electing
            logger.info("%s partition %d: log end unknown (%s); checking again later",
                        tp.topic, tp.partition, exc)
            return None

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


class ConsumerGroup:
    """One client consumer, in one task, reading several topics' partitions:
    one fetch per broker covers them all, so an idle dyno sends a few
    requests and wakes a few times a second whatever its topic count.

    Not a Kafka consumer group: its members (:class:`TopicConsumer`) choose
    and position their partitions, the group assigns their union and seeks.

    :param members: the topics read, each with its handler and settings.
    :param config: the consumer's settings, in ``client``'s dialect.
    :param runtime: what the loop runs on (greenlets or threads).
    :param client: the Kafka client library.
    """

    def __init__(self, members: Iterable[TopicConsumer], config: dict, runtime: Runtime,
                 client: KafkaClient) -> None:
        self.config = config
        self.runtime = runtime
        self.client = client
        #: Replaced, never changed in place: other tasks read it while the
        #: loop runs.
        self.members: list[TopicConsumer] = []
        self._joined = False
        self._task: Any = None
        self._stopped = True
        for member in members:
            self.add(member)

    @property
    def poll_timeout_ms(self) -> int:
        """The shortest of the members' (a claim waits for the poll to end)."""
        return min((m.poll_timeout_ms for m in self.members),
                   default=TopicConsumer.poll_timeout_ms)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._stopped

    @property
    def topics(self) -> str:
        return ", ".join(m.topic for m in self.members)

    def add(self, member: TopicConsumer) -> None:
        """Read ``member``'s topic too; a running loop takes it up on a new
        client consumer (a partition added to a consumer with a fetch in
        flight would wait for that fetch to return)."""
        member._group = self
        self.members = [*self.members, member]
        self._joined = True

    def start(self) -> None:
        if not self.running:
            self._stopped = False
            self._task = self.runtime.spawn(self._run)

    def leave(self, member: TopicConsumer, timeout: float) -> None:
        """Stop reading ``member`` (its ``_stopping`` set) once the loop has
        delivered the batch it holds; the task stops with its last member."""
        limit = min(timeout, self.poll_timeout_ms / 1000 + 1)
        if self._task is not None and all(m._stopping for m in self.members):
            self.runtime.stop(self._task, limit)
            self._task = None
        else:
            deadline = time.monotonic() + limit
            while self.running and member in self.members and time.monotonic() < deadline:
                self.runtime.sleep(0.005)
        # Left, or it took too long: what is still fetched for it is dropped.
        self.members = [m for m in self.members if m is not member]

    def _run(self) -> None:
        try:
            while self._keep_members():
                try:
                    self._consume()
                except Exception:
                    delay = min(m.restart_delay for m in self.members)
                    logger.exception("consumer of %s failed; restarting in %.1f s",
                                     self.topics, delay)
                    for member in self.members:
                        member.stats.restarts += 1
                    self.runtime.sleep(delay)
        finally:
            self._stopped = True

    def _keep_members(self) -> bool:
        """Drop the members that stop; whether any is left."""
        if any(m._stopping for m in self.members):
            self.members = [m for m in self.members if not m._stopping]
        return bool(self.members)

    def _consume(self) -> None:
        consumer = self.client.consumer(self.config, self.runtime)
        self._joined = False
        try:
            members, plans = self._assign(consumer)
            for member in members:
                member.ready.set()
            next_check = time.monotonic() + min(m.check_interval for m in members)
            while True:
                if not self._keep_members() or self._joined:
                    return  # a new member is read on a new consumer
                refreshed = [m._refreshed for m in self.members if m._refreshed]
                if refreshed or self.members != members:
                    # Between polls: the consumer is this task's alone.
                    done = [q.popleft() for q in refreshed for _ in range(len(q))]
                    members, plans = self._assign(consumer)
                    for event in done:
                        event.set()
                by_topic = {m.topic: m for m in members}
                batches = consumer.poll(timeout_ms=self.poll_timeout_ms)
                for tp, records in batches.items():
                    member = by_topic.get(tp.topic)
                    if member is not None:
                        member._deliver(tp, records, consumer.highwater(tp))
                for member in members:
                    member._check_caught_up()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + min(m.check_interval for m in members)
                    # Every member checked: each keeps its own suspicions.
                    if any([m._lost_log(consumer, plans[m]) for m in members]):
                        return  # reassign from scratch on a fresh consumer
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer
                ) -> tuple[list[TopicConsumer], dict[TopicConsumer, list[TopicPartition]]]:
        """Assign the union of the members' partitions and seek each to its
        member's position."""
        members = self.members
        plans = {m: m._plan(consumer) for m in members}
        consumer.assign([tp for partitions in plans.values() for tp in partitions])
        for member, partitions in plans.items():
            for tp in partitions:
                consumer.seek(tp, member.positions[tp])
        return members, plans
