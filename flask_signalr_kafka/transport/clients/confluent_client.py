"""confluent-kafka (librdkafka) under the core (``client="confluent"``):
:class:`ConfluentClient` makes the producer and the consumers, with the
methods :mod:`.kafka_client` names, and says how librdkafka's settings
are named.

librdkafka does its network I/O in threads of its own; what waits in Python
(a consumer's poll, a flush, a metadata or offsets request) is a blocking C
call that releases the GIL. Each adapter makes those calls through its
runtime's :class:`.Worker`: under gevent a real thread of its own, so the
hub goes on while librdkafka waits; in threading mode the calling thread.
Nothing polls in a loop without a timeout.

One module each: the producer and its delivery reports
(:mod:`.confluent_producer`); the consumer (:mod:`.confluent_consumer`),
its poll thread under gevent (:mod:`.confluent_poll_thread`) and the idle
consumer its metadata and offsets requests go through
(:mod:`.confluent_queries`); what they share of librdkafka
(:mod:`.librdkafka`).
"""
from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException
from kafka.errors import KafkaTimeoutError

from ...runtime.concurrency import Runtime
from .client_config import BUFFER_MEMORY, CONFLUENT_REQUEST_TIMEOUT_MS, librdkafka_configs
from .confluent_consumer import ConfluentConsumer
from .confluent_producer import ConfluentProducer


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
    # librdkafka sends from its own threads: a yield only lets the others run.
    sends_per_yield = 64

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
