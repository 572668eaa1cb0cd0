"""kafka-python under the core (``client="kafka-python"``, the default): its
own ``KafkaProducer`` and ``KafkaConsumer``, whose methods are the ones
:mod:`.kafka_client` names. Under gevent its sockets are gevent's (the
process is monkey-patched), so its waits never block the hub."""
from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import (
    InvalidProducerEpochError,
    KafkaConnectionError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumberError,
    UnknownProducerIdError,
)

from .client_config import BUFFER_MEMORY, kafka_configs
from .concurrency import Runtime

#: The fetch wait of a consumer whose partitions never change (all but
#: send-conn's under home partitions, which a claim must reach at once): it
#: spaces an idle dyno's requests (Python's CPU), and delays a failover by
#: as much.
STATIC_FETCH_WAIT_MS = 3000


class KafkaPythonClient:
    name = "kafka-python"
    fetch_wait = "fetch_max_wait_ms"
    static_fetch_wait_ms = STATIC_FETCH_WAIT_MS
    timeout_errors = (KafkaTimeoutError,)
    connection_errors = (KafkaConnectionError,)
    buffer_setting = "buffer_memory"
    # Measured: 1,496 bytes of RSS a queued 100-byte record (60,000 records
    # held by a frozen broker, each with two errbacks).
    record_overhead = 1400
    request_timeout = "request_timeout_ms"
    #: When the cluster does not say its session timeout: kafka-python's 30 s.
    fallback_request_timeout_ms = None

    def configs(self, bootstrap_servers: Any, connect_timeout: float, client_id: str,
                producer_config: Any, consumer_config: Any, admin_config: Any,
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        return kafka_configs(bootstrap_servers, connect_timeout, client_id,
                             producer_config, consumer_config, admin_config)

    def producer(self, config: dict[str, Any], runtime: Runtime) -> KafkaProducer:
        # buffer_memory is the publisher's (kafka-python 3 has no such bound).
        return KafkaProducer(**{k: v for k, v in config.items() if k != "buffer_memory"})

    def buffer_memory(self, config: dict[str, Any]) -> int:
        return int(config.get("buffer_memory", BUFFER_MEMORY))

    def consumer(self, config: dict[str, Any], runtime: Runtime,
                 earliest: bool = False) -> KafkaConsumer:
        config = {k: v for k, v in config.items()
                  if k not in ("group_id", "enable_auto_commit", "auto_offset_reset")}
        return KafkaConsumer(group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest" if earliest else "latest", **config)

    def unusable(self, producer: Any, error: BaseException) -> bool:
        """Its idempotence state is fatal, or it lost its producer id and is
        not getting a new epoch (then kafka-python fails each batch with the
        InitProducerId error, forever: measured on Tansu). That state lives
        in kafka-python 3.0's private transaction manager; without it, a
        producer-state error counts."""
        manager = getattr(producer, "_transaction_manager", None)
        try:
            return bool(manager.has_fatal_error() or (
                not manager.has_producer_id() and not manager.is_bumping_epoch()))
        except AttributeError:  # not idempotent, or another kafka-python
            return isinstance(error, _PRODUCER_STATE_ERRORS)


_PRODUCER_STATE_ERRORS = (
    UnknownProducerIdError, OutOfOrderSequenceNumberError, InvalidProducerEpochError
)

CLIENT = KafkaPythonClient()
