"""The one Kafka producer a process shares between all its greenlets."""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka.partitioner import DefaultPartitioner

from .concurrency import Runtime
from .kafka_client import KafkaClient, Producer, client_named
from .stats import ProducerStats
from .topics import KafkaTopicConfig

logger = logging.getLogger(__name__)

# A greenlet emitting in a tight loop never lets the producer's IO greenlet
# run: records pile up unsent until it yields. Yield every so often.
_YIELD_EVERY = 64


class StickyPartitioner(DefaultPartitioner):
    """Keyed records hash as usual (murmur2, like every Kafka client); a
    process sends its unkeyed records (send-all) to one partition, so the
    broadcasts of one server reach every other server in order.

    kafka-python's murmur2 is pure Python, so the partition of each key is
    remembered (per partition count; the memo is dropped when it grows big).
    """

    _MEMO_SIZE = 50_000

    def __init__(self) -> None:
        self._slot = random.randrange(1 << 30)
        self._memo: dict[tuple[bytes, int], int] = {}

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        if serialized_key is None:
            return sorted(partitions)[self._slot % len(partitions)]
        memo_key = (serialized_key, len(partitions))
        partition = self._memo.get(memo_key)
        if partition is None:
            if len(self._memo) >= self._MEMO_SIZE:
                self._memo.clear()
            partition = super().partition(
                topic, key, serialized_key, value, serialized_value, cluster
            )
            self._memo[memo_key] = partition
        return partition


class Publisher:
    """Sends backplane records.

    :param config: the producer's settings, in ``client``'s dialect.
    :param topics: the topic names.
    :param await_produce: ``True`` to block each send until the broker has
                          it and raise its error; ``False`` to return at once
                          and log delivery errors.
    :param pause: the runtime's sleep: a burst of sends pauses now and then,
                  so that a greenlet emitting in a loop lets the others run.
    :param client: the Kafka client library (kafka-python by default).
    :param runtime: where the client's own waits run.

    An idempotent producer whose cluster forgot its producer id bumps its
    epoch and goes on (Apache Kafka 2.5+, KIP-360); where that bump fails too
    (Tansu) the producer enters a fatal state and fails every later record
    (the client says when: ``unusable``). The publisher then replaces it with a new producer (a new
    producer id), so a dyno loses the records of that moment, logged, and
    never goes mute.
    """

    def __init__(self, config: dict, topics: KafkaTopicConfig, await_produce: bool,
                 pause: Callable[[float], Any] = time.sleep, client: KafkaClient | None = None,
                 runtime: Runtime | None = None) -> None:
        self.topics = topics
        self.client = client or client_named("kafka-python")
        self._runtime = runtime or Runtime.standalone()
        self._pause = pause
        self.await_produce = await_produce
        self._config = config
        self._replacing = threading.Lock()
        self.producer = self.client.producer(config, self._runtime)
        self.replaced = 0  # producers replaced after a fatal producer-state error
        self._sends = 0
        self.stats = ProducerStats()

    def send(
        self, base: str, key: str | None, value: bytes | None, timeout: float | None = None,
        partition: int | None = None,
    ) -> Any:
        """Publish ``value`` on the topic of ``base``, keyed by ``key``;
        return the client's future of the record (``None`` is a tombstone).
        With ``await_produce``, wait at most ``timeout`` seconds (``None``:
        the producer's ``delivery_timeout_ms``) and raise its error.

        :param partition: this partition rather than the key's (the sessions
                          topic places records by their pid).
        """
        topic = self.topics.names.get(base) or self.topics.name(base)
        producer = self.producer
        future = producer.send(
            topic, value=value, key=None if key is None else key.encode(), partition=partition
        )
        future.add_errback(self._check, producer)
        self.stats.produced[topic] += 1
        if self.await_produce:
            try:
                future.get(timeout)
            except Exception as exc:
                self.stats.failed(topic, exc)
                raise
            return future
        # One errback logs and counts: each costs a lock and a partial a record.
        future.add_errback(self._lost, topic, key)
        self._sends += 1
        if self._sends % _YIELD_EVERY == 0:
            self._pause(0)
        return future

    def _lost(self, topic: str, key: str | None, error: Exception) -> None:
        self.stats.failed(topic, error)
        _log_failure(topic, key, error)

    def flush(self, timeout: float | None = None) -> None:
        self.producer.flush(timeout)

    def _check(self, producer: Producer, error: Exception) -> None:
        """A produce errback (on the producer's IO thread): replace a
        producer that can no longer send, from another thread."""
        if producer is self.producer and self.client.unusable(producer, error):
            threading.Thread(target=self._replace, args=(producer,), daemon=True).start()

    def _replace(self, broken: Producer) -> None:
        with self._replacing:
            if broken is not self.producer:
                return  # already replaced
            logger.error(
                "the Kafka producer is in a fatal state (the cluster forgot its producer "
                "id and refused a new epoch); replacing it"
            )
            self.producer = self.client.producer(self._config, self._runtime)
            self.replaced += 1
        try:
            broken.close(timeout=0)
        except Exception:
            logger.debug("closing the replaced producer failed", exc_info=True)

    def close(self, timeout: float | None = None) -> None:
        self.producer.close(timeout)


def _log_failure(topic: str, key: str | None, error: Exception) -> None:
    target = "everyone" if key is None else repr(key)
    logger.error("lost a record for %s on %s: %s", target, topic, error)
