"""The one Kafka producer a process shares between all its greenlets."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import ProducerBufferFullError
from ..runtime.concurrency import Runtime
from ..runtime.stats import ProducerStats
from .clients.kafka_client import KafkaClient, Producer, client_named
from .topics import KafkaTopicConfig

logger = logging.getLogger(__name__)


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

    **Memory bound.** The records handed to the producer and not yet
    settled (acknowledged, or failed) are counted here, each as its key and
    value plus the client's measured cost of one queued record
    (``client.record_overhead``). A send that would take the count past
    ``client.buffer_memory(config)`` bytes is refused at once with
    :class:`.ProducerBufferFullError` (counted in ``stats.refused``): during
    a cluster outage a dyno's memory stops growing there, and nothing waits
    for room (an emitting handler, or an event loop, would stall with it).
    kafka-python 3 has no bound of its own; librdkafka's (a ``BufferError``)
    is refused the same way.
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
        #: The bound (bytes) of what is held unsettled.
        self.buffer_memory = self.client.buffer_memory(config)
        self._overhead = self.client.record_overhead
        # Senders (any thread) and settlements (the client's I/O thread, or a
        # sender when a record fails at once) both change the count.
        self._held = threading.Lock()
        self.buffered = 0  # bytes held, as counted here
        self.in_flight = 0  # records held
        self._waiting_since = 0.0  # monotonic: the oldest wait began (in_flight 0 -> 1)
        self._acked_at = 0.0  # monotonic: the last record the cluster took
        self._refused_logged = 0.0

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
        :raises ProducerBufferFullError: the producer holds ``buffer_memory``
            bytes the cluster has not acknowledged yet (nothing was sent).
        """
        topic = self.topics.names.get(base) or self.topics.name(base)
        self._sends += 1
        if self._sends % self.client.sends_per_yield == 0 and not self.await_produce:
            # A greenlet emitting in a tight loop lets nothing else run, the
            # client's I/O neither (see sends_per_yield). Refused sends
            # too: an app that emits in a loop and catches the refusals
            # must not hold the hub for the whole outage.
            self._pause(0)
        size = self._overhead + (len(value) if value else 0) + (len(key) if key else 0)
        self._hold(topic, size)
        producer = self.producer
        try:
            future = producer.send(
                topic, value=value, key=None if key is None else key.encode(),
                partition=partition)
        except BufferError:
            self._settle(size, acked=False)
            self._refuse(topic, size, "the client's own queue is full")
        except BaseException:
            self._settle(size, acked=False)
            raise
        # One callback for both outcomes: each costs a lock and a partial a record.
        future.add_both(self._done, producer, topic, key, size)
        self.stats.produced[topic] += 1
        if self.await_produce:
            try:
                future.get(timeout)
            except Exception as exc:
                self.stats.failed(topic, exc)
                raise
        return future

    def _hold(self, topic: str, size: int) -> None:
        """Count ``size`` bytes as held, or refuse the record."""
        with self._held:
            # One record always fits an empty buffer, whatever its size.
            full = self.in_flight and self.buffered + size > self.buffer_memory
            if not full:
                if not self.in_flight:
                    self._waiting_since = time.monotonic()
                self.buffered += size
                self.in_flight += 1
        if full:
            self._refuse(topic, size, f"it holds {self.buffered:,} bytes of "
                         f"{self.in_flight:,} records")

    def _refuse(self, topic: str, size: int, why: str) -> None:
        self.stats.refused[topic] += 1
        now = time.monotonic()
        message = (
            f"the Kafka producer refused a record of {size:,} bytes for {topic}: {why}, "
            f"none acknowledged for {self.stalled_for():.0f} s, and its memory bound is "
            f"{self.buffer_memory:,} bytes ({self.client.buffer_setting} in producer_config)")
        if now - self._refused_logged > 10:  # one line per 10 s of refusals
            self._refused_logged = now
            logger.error("%s; refusing emits until the cluster takes what it holds", message)
        raise ProducerBufferFullError(message)

    def _settle(self, size: int, acked: bool) -> None:
        with self._held:
            self.buffered -= size
            self.in_flight -= 1
        if acked:
            self._acked_at = time.monotonic()

    def _done(self, producer: Producer, topic: str, key: str | None, size: int,
              result: Any) -> None:
        """A record settled (on the producer's I/O thread, or at once)."""
        failed = isinstance(result, BaseException)
        self._settle(size, acked=not failed)
        if failed:
            self._check(producer, result)
            if not self.await_produce:
                self.stats.failed(topic, result)
                _log_failure(topic, key, result)

    def stalled_for(self) -> float:
        """Seconds records have waited with none acknowledged meanwhile (0
        when nothing waits): the cluster, seen from this producer, is
        unreachable or stuck while it grows."""
        if not self.in_flight:
            return 0.0
        return max(0.0, time.monotonic() - max(self._acked_at, self._waiting_since))

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
