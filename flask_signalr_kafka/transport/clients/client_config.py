"""The three Kafka clients' settings: our defaults, and the checks of what
the user passes. Every default says why it is what it is; the figures are in
docs/kafka-faults.md and the README ("Kafka client defaults")."""
from __future__ import annotations

import logging
import random
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.partitioner import DefaultPartitioner

#: The publisher's memory bound by default, bytes (the Java client's
#: ``buffer.memory``); ``buffer_memory`` (kafka-python) or
#: ``queue.buffering.max.kbytes`` (confluent) in ``producer_config``.
BUFFER_MEMORY = 32 * 1024 * 1024
#: Producer settings of ours in kafka-python's dialect (kafka-python 2.x had
#: ``buffer_memory``; 3.x dropped it, and the publisher enforces it).
OUR_PRODUCER_SETTINGS = {"buffer_memory"}
#: A request timeout is the cluster's ``broker.session.timeout.ms`` plus
#: this much (docs/kafka-clients.md, "Request timeouts").
REQUEST_TIMEOUT_MARGIN_MS = 5000


def request_timeout_ms(session_timeout_ms: int | None, fallback: int | None) -> int | None:
    """The request timeout for a cluster whose brokers are fenced after
    ``session_timeout_ms``: a request to a hung leader waits until it times
    out, so the timeout is the silence a hung leader costs; and a produce
    with ``acks=all`` to a live leader waits until the cluster fences a hung
    follower, so a shorter timeout (session + 2 s) retried written records
    and wrote them twice. ``fallback`` when the cluster does not say.
    """
    if session_timeout_ms is None:
        return fallback
    return session_timeout_ms + REQUEST_TIMEOUT_MARGIN_MS

logger = logging.getLogger("flask_signalr_kafka")


#: librdkafka's request timeout when the cluster does not say its session
#: timeout: librdkafka's 60 s made a 20 s freeze a 22 s silence, 15 s a
#: 16.5 s one; 15 s is Kafka's default session timeout (9 s) + 6 s.
CONFLUENT_REQUEST_TIMEOUT_MS = 15_000
#: librdkafka's metadata refresh interval (``topic.metadata.refresh.interval.ms``).
LIBRDKAFKA_METADATA_REFRESH_MS = 1000
#: The confluent consumers' request timeout (``socket.timeout.ms``), not
#: derived from the session timeout: a live broker answers their requests
#: (reads) within ``fetch.wait.max.ms`` (500), so a timeout costs a retry,
#: never a duplicate. With the derived 10 s, a fetch and a metadata request
#: sent to a hung leader kept its partitions silent 10.9 s after a freeze,
#: although the cluster had moved them after 4.9 s (librdkafka did not drop
#: the broker: its own metadata request was waiting there).
CONFLUENT_CONSUMER_REQUEST_TIMEOUT_MS = 6000


def kafka_configs(
    bootstrap_servers: Any,
    connect_timeout: float,
    client_id: str,
    producer_config: Any,
    consumer_config: Any,
    admin_config: Any,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The KafkaProducer, KafkaConsumer and KafkaAdminClient keyword arguments:
    our defaults, each with its measured reason, under the user's dicts
    (which win, ``bootstrap_servers`` included).

    :raises ValueError: no broker given, or a setting the client does not know.
    :raises TypeError: a config that is not a dict.
    """
    producer_config = check_config(producer_config, KafkaProducer, "producer_config")
    consumer_config = check_config(consumer_config, KafkaConsumer, "consumer_config")
    admin_config = check_config(admin_config, KafkaAdminClient, "admin_config")
    servers = _servers(bootstrap_servers, "bootstrap_servers",
                       (producer_config, consumer_config, admin_config))
    common = {
        "bootstrap_servers": servers,
        "bootstrap_timeout_ms": int(connect_timeout * 1000),
    }
    # kafka-python's client metrics cost ~5% of a busy dyno's CPU and
    # nothing here reads them; pass metrics_enabled=True to have them.
    no_metrics = {"metrics_enabled": False}
    producer = {
        **common,
        **no_metrics,
        "client_id": client_id,
        "linger_ms": 1,
        # acks=all: on a three-node Apache Kafka (RF 3, min.insync.replicas
        # 2) a SIGKILLed leader lost no acknowledged record (figures in
        # docs/kafka-faults.md). Retries stay kafka-python's (unbounded
        # within delivery_timeout_ms 120 s: a record outlives a whole
        # cluster restart, 18-50 s here), 5 in flight; request_timeout_ms
        # is set at start from the cluster (KafkaCore.connect,
        # request_timeout_ms above).
        # Idempotence off, measured: without it the broker held 8 of
        # 6,552 records twice after a cluster restart and 1 of 528 after a
        # leader kill (await_produce); with it, none. But once a cluster
        # forgets its producer id (Tansu restarted), kafka-python 3.0.12
        # either enters a fatal state (the Publisher replaces the
        # producer) or resets its sequence and retries UnknownProducerId
        # until delivery_timeout_ms, for every batch: a mute dyno. A
        # backplane prefers a rare duplicate; enable_idempotence=True is
        # safe on Apache Kafka, where none of that was seen.
        "enable_idempotence": False,
        "acks": "all",
        # Reconnect within 1 s of a broker coming back (the Java client's
        # default; kafka-python backs off up to 30 s, which stretched the
        # silence after a cluster restart well past the restart itself).
        "reconnect_backoff_max_ms": 1000,
        "partitioner": StickyPartitioner(),
        # The publisher's memory bound (kafka-python 3 has none of its own:
        # during an outage a dyno grew by its emit rate x 120 s). Records
        # beyond it are refused with ProducerBufferFullError.
        "buffer_memory": BUFFER_MEMORY,
        **producer_config,
    }
    consumer = {
        **common,
        **no_metrics,
        "client_id": client_id,
        # No consumer group: every server reads every partition.
        "group_id": None,
        "enable_auto_commit": False,
        # Kafka's own default, for the hot consumer group (send-*, ack); the
        # cold one waits 3 s (kafka_python_client.STATIC_FETCH_WAIT_MS).
        # Apache Kafka answers a fetch as soon as data arrives, so this sets
        # how often idle consumers ask (six at 100 ms cost an idle dyno ~9%
        # of a core, at 500 ms ~3%), and how long a partition whose leader
        # moved to a node with a fetch in flight waits (5 s made a killed
        # leader's failover 17 s under load). Brokers that hold a fetch to
        # its deadline (Tansu) want less: 20, for all.
        "fetch_max_wait_ms": 500,
        # A poll hands out all that was fetched (kafka-python's 500 cut a
        # 1 MB fetch into polls): kafka-python leaves a partition with
        # records still buffered out of the next fetch, which then waits its
        # full time on the group's idle partitions (issue 23: a one-sid
        # backlog went at 2,200 deliveries/s).
        "max_poll_records": 100_000,
        # As the producer's: back within 1 s of a broker's return.
        "reconnect_backoff_max_ms": 1000,
        **consumer_config,
    }
    admin = {**common, "client_id": client_id, **admin_config}
    return producer, consumer, admin


def check_servers(servers: Any) -> str | list[str] | None:
    if servers is None:
        return None
    items = [servers] if isinstance(servers, str) else servers
    if not isinstance(items, (list, tuple)) or not items or not all(
        isinstance(s, str) and s.strip() for s in items
    ):
        raise ValueError(
            f"bootstrap_servers must be 'host:port' or a list of them, not {servers!r}"
        )
    return servers if isinstance(servers, str) else list(servers)


def check_config(config: Any, client: type, name: str) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise TypeError(f"{name} must be a dict of {client.__name__} keyword arguments")
    known = set(client.DEFAULT_CONFIG) | (OUR_PRODUCER_SETTINGS if client is KafkaProducer
                                          else set())
    unknown = sorted(set(config) - known)
    foreign = [k for k in unknown if k in KAFKA_PYTHON_NAMES]
    if foreign:
        hints = ", ".join(f"{k!r} -> {KAFKA_PYTHON_NAMES[k]!r}" for k in foreign)
        raise ValueError(
            f"{name} has librdkafka properties, but client='kafka-python' takes kafka-python "
            f"keyword arguments: {hints} (or pass client='confluent')")
    if unknown:
        raise ValueError(
            f"{name} has settings {client.__name__} does not know: {', '.join(unknown)} "
            "(see the kafka-python documentation for its keyword arguments)"
        )
    if name == "producer_config" and config.get("acks") == 0:
        logger.warning("producer_config acks=0: delivery errors go unseen and records can be lost")
    return dict(config)


# -- librdkafka (client="confluent") ---------------------------------------------

#: kafka-python keyword argument -> librdkafka property of the same meaning:
#: the message of a setting given in the other client's dialect, the
#: translation of the Heroku config vars, and the admin client's settings
#: (kafka-python's KafkaAdminClient serves both clients).
LIBRDKAFKA_NAMES = {
    "bootstrap_servers": "bootstrap.servers",
    "client_id": "client.id",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "ssl_ciphers": "ssl.cipher.suites",
    "ssl_check_hostname": "ssl.endpoint.identification.algorithm",
    "request_timeout_ms": "request.timeout.ms",
    "connections_max_idle_ms": "connections.max.idle.ms",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "metadata_max_age_ms": "metadata.max.age.ms",
    "retry_backoff_ms": "retry.backoff.ms",
    "receive_buffer_bytes": "socket.receive.buffer.bytes",
    "send_buffer_bytes": "socket.send.buffer.bytes",
    "acks": "acks",
    "linger_ms": "linger.ms",
    "batch_size": "batch.size",
    "compression_type": "compression.type",
    "max_request_size": "message.max.bytes",
    "enable_idempotence": "enable.idempotence",
    "retries": "retries",
    "max_in_flight_requests_per_connection": "max.in.flight.requests.per.connection",
    "delivery_timeout_ms": "delivery.timeout.ms",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "fetch_min_bytes": "fetch.min.bytes",
    "fetch_max_bytes": "fetch.max.bytes",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes",
    "group_id": "group.id",
    "enable_auto_commit": "enable.auto.commit",
    "auto_offset_reset": "auto.offset.reset",
    "check_crcs": "check.crcs",
    "isolation_level": "isolation.level",
}
#: The reverse, with librdkafka's aliases.
KAFKA_PYTHON_NAMES = {
    **{v: k for k, v in LIBRDKAFKA_NAMES.items()},
    "metadata.broker.list": "bootstrap_servers",
    "sasl.mechanisms": "sasl_mechanism",
    "message.timeout.ms": "delivery_timeout_ms",
    "queue.buffering.max.ms": "linger_ms",
    "compression.codec": "compression_type",
}
_KAFKA_PYTHON_SETTINGS = (set(KafkaProducer.DEFAULT_CONFIG) | set(KafkaConsumer.DEFAULT_CONFIG)
                          | set(KafkaAdminClient.DEFAULT_CONFIG))


def to_librdkafka(config: dict[str, Any]) -> dict[str, Any]:
    """kafka-python keyword arguments as librdkafka properties (those of the
    table; ``ssl_check_hostname=False`` is ``ssl.endpoint.identification.
    algorithm="none"``)."""
    out = {}
    for name, value in config.items():
        if name == "ssl_check_hostname":
            out[LIBRDKAFKA_NAMES[name]] = "https" if value else "none"
        elif name == "bootstrap_servers" and not isinstance(value, str):
            out["bootstrap.servers"] = ",".join(value)
        else:
            out[LIBRDKAFKA_NAMES.get(name, name)] = value
    return out


def to_kafka_python(config: dict[str, Any], name: str = "admin_config") -> dict[str, Any]:
    """librdkafka properties as kafka-python keyword arguments: the settings
    of the admin client, which is kafka-python's with either client.

    :raises ValueError: a property kafka-python has no counterpart for.
    """
    out: dict[str, Any] = {}
    for prop, value in config.items():
        setting = KAFKA_PYTHON_NAMES.get(prop)
        if setting is None:
            raise ValueError(
                f"{name} property {prop!r} has no kafka-python counterpart: the admin client "
                "(topic creation, doctor, top) is kafka-python's with either client, and "
                "takes only connection and security properties (bootstrap, SASL, SSL, "
                "timeouts and backoffs: the table KAFKA_PYTHON_NAMES in "
                "flask_signalr_kafka/transport/clients/client_config.py)")
        if setting == "ssl_check_hostname":
            value = str(value).lower() not in ("", "none")
        elif setting == "bootstrap_servers" and isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        out[setting] = value
    return out


def check_librdkafka(config: Any, name: str) -> dict[str, Any]:
    """A dict of librdkafka properties; a kafka-python name in it is an
    error that names the property to use instead (librdkafka itself refuses
    the names it does not know, when the client is made)."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise TypeError(f"{name} must be a dict of librdkafka properties "
                        "(client='confluent'), e.g. {'sasl.mechanism': 'PLAIN'}")
    foreign = sorted(k for k in config if k in _KAFKA_PYTHON_SETTINGS)
    if foreign:
        hints = ", ".join(f"{k!r} -> {LIBRDKAFKA_NAMES[k]!r}" if k in LIBRDKAFKA_NAMES
                          else f"{k!r} (no librdkafka counterpart here)" for k in foreign)
        raise ValueError(
            f"{name} has kafka-python settings, but client='confluent' takes librdkafka "
            f"properties: {hints} (see librdkafka's CONFIGURATION.md)")
    if name == "producer_config" and str(config.get("acks")) == "0":
        logger.warning("producer_config acks=0: delivery errors go unseen and records can be lost")
    return dict(config)


def librdkafka_configs(
    bootstrap_servers: Any,
    connect_timeout: float,
    client_id: str,
    producer_config: Any,
    consumer_config: Any,
    admin_config: Any,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The confluent-kafka Producer and Consumer properties (our defaults,
    each with its reason, under the user's) and the admin client's
    kafka-python keyword arguments (translated from ``admin_config``'s
    librdkafka properties).

    :raises ValueError: no broker given, or a kafka-python setting.
    :raises TypeError: a config that is not a dict.
    """
    producer_config = check_librdkafka(producer_config, "producer_config")
    consumer_config = check_librdkafka(consumer_config, "consumer_config")
    admin_config = check_librdkafka(admin_config, "admin_config")
    servers = _servers(bootstrap_servers, "'bootstrap.servers'",
                       (producer_config, consumer_config, admin_config))
    common: dict[str, Any] = {"client.id": client_id}
    if servers is not None:
        common["bootstrap.servers"] = servers if isinstance(servers, str) else ",".join(servers)
    # As kafka-python's (client_config above): back within 1 s of a broker's
    # return, where librdkafka's default backs off up to 10 s.
    common["reconnect.backoff.max.ms"] = 1000
    # Ask for metadata every second (librdkafka's default: 5 min): once
    # the cluster has fenced a hung or dead leader and moved its partitions,
    # librdkafka (2.10+) drops a broker its metadata no longer lists, fails
    # what waits there and sends it to the new leaders; otherwise a hung
    # leader's requests wait out socket.timeout.ms (docs/kafka-faults.md,
    # "a" and "b"). One small request a second per client; not the admin's
    # (kafka-python's).
    clients = {**common, "topic.metadata.refresh.interval.ms": LIBRDKAFKA_METADATA_REFRESH_MS}
    # socket.timeout.ms (the request timeout) is set at start from the
    # cluster's broker.session.timeout.ms (KafkaCore.connect,
    # request_timeout_ms above), CONFLUENT_REQUEST_TIMEOUT_MS when it does
    # not say; a value given here wins.
    # A paced record goes out at once, not after the ACK of the last one:
    # librdkafka's default only from 2.10 (setup.cfg allows older ones).
    fast = {"socket.nagle.disable": True}
    producer = {
        **clients,
        **fast,
        # librdkafka's low-latency setting: at a paced rate each record is
        # alone in its batch and would wait out the whole linger. Against 1
        # (loadtests/results/bench-20261203-192733.md): p50 a third, paced
        # CPU and saturation no worse (docs/guide/benchmarks.md).
        "linger.ms": 0,
        "acks": "all",
        # librdkafka's idempotent producer: no duplicate from a retry after a
        # leader fails over, and it handles a forgotten producer id itself
        # (a fatal error, if ever, makes the Publisher replace the producer).
        "enable.idempotence": True,
        # kafka-python's delivery_timeout_ms: a record outlives a cluster restart.
        "message.timeout.ms": 120_000,
        # Keys land where kafka-python and the Java clients put them.
        "partitioner": "murmur2_random",
        # kafka-python's max_request_size: the same payload limit either way.
        "message.max.bytes": 1_048_576,
        # The publisher's memory bound (librdkafka's default is 1 GB); beyond
        # it emits are refused with ProducerBufferFullError.
        "queue.buffering.max.kbytes": BUFFER_MEMORY // 1024,
        **producer_config,
    }
    consumer = {
        **clients,
        **fast,
        # librdkafka wants a group id; no group is joined (partitions are
        # assigned) and no offset is committed.
        "group.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # As kafka-python's fetch_max_wait_ms (client_config above).
        "fetch.wait.max.ms": 500,
        "socket.timeout.ms": CONFLUENT_CONSUMER_REQUEST_TIMEOUT_MS,
        # The prefetch queue of librdkafka (64 MB by default) is bounded
        # lower: a dyno's consumers keep up or are restarted.
        "queued.max.messages.kbytes": 16_384,
        **consumer_config,
    }
    admin = to_kafka_python({**common, **admin_config})
    admin["bootstrap_timeout_ms"] = int(connect_timeout * 1000)
    return producer, consumer, admin


def _servers(bootstrap_servers: Any, name: str, configs: tuple[dict[str, Any], ...]) -> Any:
    """The checked shorthand; an error when neither it nor every config
    (under ``name``, the client's spelling) names a broker."""
    servers = check_servers(bootstrap_servers)
    if servers is None and not all(name.strip("'") in c for c in configs):
        raise ValueError(
            "KafkaManager needs a broker: pass bootstrap_servers='host:9092' "
            f"(or {name} in each of producer_config, consumer_config and admin_config)"
        )
    return servers


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
