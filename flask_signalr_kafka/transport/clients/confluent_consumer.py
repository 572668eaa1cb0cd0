"""confluent-kafka's ``Consumer`` under the core (``client="confluent"``):
:class:`ConfluentConsumer`, with the kafka-python consumer methods the
core uses, and :class:`Record`, a consumed record.

Assignment is manual and positions are kept here. Under gevent a
:class:`.PollThread` (:mod:`.confluent_poll_thread`) polls librdkafka and
hands the records to the consumer's greenlet; elsewhere a poll waits in
the runtime's :class:`.Worker`. Metadata and offsets requests go through
:class:`.Queries` (:mod:`.confluent_queries`), not the consumer's own
connections, where they would wait behind its long-poll fetches.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as _TP
from kafka.errors import KafkaTimeoutError

from ...runtime.concurrency import Runtime, gevent_patched
from .confluent_poll_thread import PollThread
from .confluent_queries import Queries
from .kafka_client import TopicPartition
from .librdkafka import METADATA_TIMEOUT, fetch, made

logger = logging.getLogger(__name__)


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
        self._consumer = made(confluent_kafka.Consumer, config, "consumer_config")
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
            metadata = self._request("list_topics", topic, METADATA_TIMEOUT)
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
        deadline = time.monotonic() + METADATA_TIMEOUT
        while True:
            try:
                return self._request("get_watermark_offsets",
                                     _TP(tp.topic, tp.partition), METADATA_TIMEOUT, False)
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
        records = self._records(self._worker.call(fetch, self._consumer, timeout_ms / 1000))
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
