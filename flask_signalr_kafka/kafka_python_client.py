"""kafka-python under the core (``client="kafka-python"``, the default): its
own ``KafkaProducer`` and ``KafkaConsumer``, whose methods are the ones
:mod:`.kafka_client` names. Under gevent its sockets are gevent's (the
process is monkey-patched), so its waits never block the hub."""
from __future__ import annotations

import functools
import random
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

try:  # kafka-python 3's network client (private API; pinned versions are tested)
    from kafka.net.compat import KafkaNetClient
except ImportError:  # pragma: no cover - another kafka-python: its own order
    KafkaNetClient = None

#: The fetch wait of the cold consumer group (group-mgmt and fleet, see
#: ``core.CONSUMER_GROUPS``): it spaces an idle dyno's requests (Python's
#: CPU), and delays a failover by as much. Not for the hot group: a
#: partition whose records are still being handed out is left out of the
#: next fetch and waits for it to return (3 s there halved a dyno's
#: broadcast deliveries, issue 23).
STATIC_FETCH_WAIT_MS = 3000


def least_loaded_node(manager: Any) -> Any:
    """The node for a request that can go to any (metadata above all), in
    the Java client's order: a connected node with nothing in flight, else
    the connected node with the fewest requests in flight, and only then a
    node that is not connected (and not backing off).

    kafka-python prefers a node that is not connected to a connected busy
    one. After a request to a hung broker timed out, that is the hung
    broker itself, whose kernel still accepts connections: its metadata
    request hung for one more request timeout, and so did every partition
    it led (a 20 s freeze was a 21 s silence at a 10 s timeout, 30 s at
    15 s: docs/kafka-clients.md, "Request timeouts").
    """
    nodes = [broker.node_id for broker in manager.cluster.brokers()]
    random.shuffle(nodes)
    busy, busy_load = None, float("inf")
    other, other_load = None, float("inf")
    for node_id in nodes:
        conn = manager._conns.get(node_id)
        load = len(conn.in_flight_requests) if conn is not None else 0
        if conn is not None and conn.connected and not conn.paused:
            if load == 0:
                return node_id
            if load < busy_load:
                busy, busy_load = node_id, load
        elif (not (conn is not None and conn.paused) and manager.connection_delay(node_id) <= 0
              and load < other_load):
            other, other_load = node_id, load
    return busy if busy is not None else other


if KafkaNetClient is not None:
    class NetClient(KafkaNetClient):
        """kafka-python's network client, choosing nodes as
        :func:`least_loaded_node` does."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            manager = self._manager
            if hasattr(manager, "_conns") and hasattr(manager, "connection_delay"):
                manager.least_loaded_node = functools.partial(least_loaded_node, manager)
else:  # pragma: no cover
    NetClient = None


def _with_net_client(config: dict[str, Any]) -> dict[str, Any]:
    if NetClient is None or "kafka_client" in config:
        return config  # the app's own network client wins
    return {**config, "kafka_client": NetClient}


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
    # Its socket_connection_setup_timeout_ms is 10 s already.
    setup_timeouts = ()

    def configs(self, bootstrap_servers: Any, connect_timeout: float, client_id: str,
                producer_config: Any, consumer_config: Any, admin_config: Any,
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        return kafka_configs(bootstrap_servers, connect_timeout, client_id,
                             producer_config, consumer_config, admin_config)

    def producer(self, config: dict[str, Any], runtime: Runtime) -> KafkaProducer:
        # buffer_memory is the publisher's (kafka-python 3 has no such bound).
        return KafkaProducer(**_with_net_client(
            {k: v for k, v in config.items() if k != "buffer_memory"}))

    def buffer_memory(self, config: dict[str, Any]) -> int:
        return int(config.get("buffer_memory", BUFFER_MEMORY))

    def consumer(self, config: dict[str, Any], runtime: Runtime,
                 earliest: bool = False) -> KafkaConsumer:
        config = {k: v for k, v in config.items()
                  if k not in ("group_id", "enable_auto_commit", "auto_offset_reset")}
        return KafkaConsumer(group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest" if earliest else "latest",
                             **_with_net_client(config))

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
