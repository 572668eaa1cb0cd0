"""kafka-python under the core (``client="kafka-python"``, the default): its
own ``KafkaProducer`` and ``KafkaConsumer``, whose methods are the ones
:mod:`.kafka_client` names. Under gevent its sockets are gevent's (the
process is monkey-patched), so its waits never block the hub."""
from __future__ import annotations

import functools
import logging
import random
import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import (
    InvalidProducerEpochError,
    KafkaConnectionError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumberError,
    UnknownProducerIdError,
)

from ...runtime.concurrency import Runtime
from .client_config import BUFFER_MEMORY, kafka_configs

logger = logging.getLogger(__name__)

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


#: How often a client looks for a request that waits too long.
STALL_CHECK_S = 1.0
#: A request is stalled when it has waited this much longer than a fetch
#: may wait at its broker (``fetch_max_wait_ms``; a produce or a metadata
#: request is answered in milliseconds by a live broker).
STALL_MARGIN_S = 1.0
#: A producer's metadata request unanswered this long (at least) fails: at
#: a live leader it may wait behind a produce held until a hung follower
#: leaves the ISR.
METADATA_STALL_S = 4.0
#: What :func:`least_loaded_node` counts as stalled, whatever the client:
#: longer than any fetch of ours waits (STATIC_FETCH_WAIT_MS) + the margin.
STALL_S = STATIC_FETCH_WAIT_MS / 1000 + STALL_MARGIN_S


def _stalled(conn: Any, now: float, stall_s: float) -> bool:
    # in_flight_requests: (correlation id, future, sent at, timeout at, timer)
    return bool(conn.in_flight_requests) and now - conn.in_flight_requests[0][2] > stall_s


def least_loaded_node(manager: Any, stall_s: float = STALL_S) -> Any:
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
    busy: Any = None
    busy_load: tuple[int, float] = (0, 0.0)
    other, other_load = None, float("inf")
    stalled, stalled_since = None, 0.0
    now = time.monotonic()
    for node_id in nodes:
        conn = manager._conns.get(node_id)
        load = len(conn.in_flight_requests) if conn is not None else 0
        if conn is not None and conn.paused:
            continue  # max_in_flight: a request sent there fails at once
        if conn is not None and _stalled(conn, now, stall_s):
            # A hung broker (its kernel still takes requests): a metadata
            # request sent there waits out the request timeout, and every
            # refresh after it waits for that one. If all are, the one that
            # stalled last (live leaders hold produces until a hung
            # follower leaves their ISR, after the hung broker stopped).
            since = conn.in_flight_requests[0][2]
            if stalled is None or since > stalled_since:
                stalled, stalled_since = node_id, since
            continue
        if conn is not None and conn.connected and not conn.paused:
            if load == 0:
                manager._fsk_metadata_node = (node_id, now)
                return node_id
            # Fewest in flight, then the one that answered last (a hung
            # broker's oldest request only ages).
            key = (load, -conn.in_flight_requests[0][2])
            if busy is None or key < busy_load:
                busy, busy_load = node_id, key
        elif manager.connection_delay(node_id) <= 0 and load < other_load:
            other, other_load = node_id, load
    chosen = busy if busy is not None else other
    if chosen is None:
        chosen = stalled  # nothing else: better than no metadata request at all
    # For watch_stalls: where the metadata request (its main caller) went.
    manager._fsk_metadata_node = (chosen, now)
    return chosen


def drop_fenced(manager: Any, stall_s: float, cluster: Any = None) -> None:
    """After a metadata update: close the connection to each broker the
    cluster no longer lists while requests to it have stalled, so that they
    fail now (and are retried on the partitions' new leaders) rather than
    at the request timeout.

    A hung broker (SIGSTOP, a stalled disk or VM) keeps its TCP
    connections, and its in-flight requests wait out ``request_timeout_ms``
    (the session timeout + 5 s): a 20 s freeze was 12-18 s of silence
    (docs/kafka-faults.md, "b"). The cluster fences it after
    ``broker.session.timeout.ms`` and drops it from its metadata; this
    notices that within a second (with :func:`watch_stalls`).
    """
    live = {broker.node_id for broker in manager.cluster.brokers()}
    now = time.monotonic()
    for node_id, conn in list(manager._conns.items()):
        # Bootstrap connections have string ids and are not in metadata.
        if isinstance(node_id, int) and node_id not in live and _stalled(conn, now, stall_s):
            logger.warning("Kafka broker %s left the cluster's metadata (fenced) with %d "
                           "requests stalled on it; closing its connection to retry them "
                           "elsewhere", node_id, len(conn.in_flight_requests))
            conn.close(KafkaConnectionError(f"broker {node_id} was fenced"))


class LeaderWatch:
    """A consumer's metadata listener: when partitions it reads move to a
    broker where its fetch is waiting (up to ``fetch_max_wait_ms``), that
    fetch is cut short so that the next one takes them.

    kafka-python sends one fetch per broker at a time, and a partition that
    moved to a broker waits for the fetch in flight there to return; then
    its position is validated against the new leader's epoch (KIP-320), a
    request queued behind the next fetch on the same connection. With the
    3 s fetch of the static consumers that was up to 6 s after the cluster
    had moved the partitions (docs/kafka-faults.md, "a"). A reconnect costs
    milliseconds; the fetch that is cut short returns nothing the consumer
    had taken (its position moves only with the records it processes).
    """

    def __init__(self, manager: Any, stall_s: float) -> None:
        self.manager = manager
        self.stall_s = stall_s
        self.led: dict[Any, Any] = {}  # TopicPartition -> its leader, as last seen

    def __call__(self, cluster: Any) -> None:
        drop_fenced(self.manager, self.stall_s)
        led = {tp: node_id for broker in cluster.brokers()
               for node_id in (broker.node_id,)
               for tp in (cluster.partitions_for_broker(node_id) or ())}
        moved_to = {node_id for tp, node_id in led.items()
                    if self.led.get(tp, node_id) != node_id}
        self.led = led
        for node_id in moved_to:
            conn = self.manager._conns.get(node_id)
            if conn is not None and conn.connected and conn.in_flight_requests:
                logger.info("partitions moved to Kafka broker %s; cutting its fetch short",
                            node_id)
                conn.close(KafkaConnectionError(f"partitions moved to broker {node_id}"))


async def watch_stalls(manager: Any, net: Any, stall_s: float, fetches: bool = False) -> None:
    """On the client's I/O loop: while a request has stalled, ask for the
    cluster's metadata every :data:`STALL_CHECK_S` (kafka-python asks only
    after an error or every ``metadata_max_age_ms``, 5 min), so that
    :func:`drop_fenced` sees a fenced broker."""
    while not manager.closed:
        await net.sleep(STALL_CHECK_S)
        now = time.monotonic()
        node_id, sent_at = getattr(manager, "_fsk_metadata_node", (None, now))
        conn = manager._conns.get(node_id)
        # A consumer's broker that has not answered a fetch within its
        # wait + 1 s is hung: its metadata request waits no longer than
        # STALL_MARGIN_S. A producer's may be a live leader holding
        # produces until a hung follower leaves the ISR.
        waited = STALL_MARGIN_S if fetches else max(stall_s, METADATA_STALL_S)
        if (conn is not None and manager.cluster.metadata_refresh_in_progress
                and now - sent_at > waited and _stalled(conn, now, max(stall_s, waited))):
            # The metadata request went to a broker that has answered
            # nothing since: every later refresh waits for it, up to the
            # request timeout. Fail it (and what else waits there) now.
            logger.warning("Kafka broker %s has not answered a metadata request for %.1f s; "
                           "closing its connection", node_id, now - sent_at)
            conn.close(KafkaConnectionError(f"broker {node_id} stalled"))
        elif any(_stalled(conn, now, stall_s) for conn in list(manager._conns.values())):
            manager.cluster.request_update()


if KafkaNetClient is not None:
    class NetClient(KafkaNetClient):
        """kafka-python's network client, choosing nodes as
        :func:`least_loaded_node` does, and leaving a fenced broker's
        stalled requests as soon as the cluster's metadata says so
        (:func:`drop_fenced`)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            manager = self._manager
            # A consumer's fetch waits up to fetch_max_wait_ms at a live
            # broker; the producer's requests are answered at once.
            stall_s = kwargs.get("fetch_max_wait_ms", 0) / 1000 + STALL_MARGIN_S
            if hasattr(manager, "_conns") and hasattr(manager, "connection_delay"):
                manager.least_loaded_node = functools.partial(least_loaded_node, manager,
                                                              stall_s)
            cluster = getattr(manager, "cluster", None)
            if hasattr(cluster, "add_listener") and hasattr(self._net, "sleep"):
                cluster.add_listener(
                    LeaderWatch(manager, stall_s) if "fetch_max_wait_ms" in kwargs
                    else functools.partial(drop_fenced, manager, stall_s))
                self._net.call_soon_threadsafe(functools.partial(
                    watch_stalls, manager, self._net, stall_s, "fetch_max_wait_ms" in kwargs))
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
    # Its I/O is a greenlet of the same hub under gevent: an emit loop that
    # yielded every 64 sends had records reach the broker at ~2,000/s until
    # it ended, while the delivering dyno slept a fifth of the burst; a
    # yield at every send: +13-24% deliveries/s at saturation, paced CPU
    # and latency unchanged (loadtests/results/bench-20261204-022551.md).
    sends_per_yield = 1

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
