"""The three Kafka clients' settings: our defaults, and the checks of what
the user passes. Every default says why it is what it is; the figures are in
docs/kafka-faults.md and the README ("Kafka client defaults")."""
from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from .producer import StickyPartitioner

logger = logging.getLogger("flask_signalr_kafka")


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
    servers = check_servers(bootstrap_servers)
    if servers is None and not all(
        "bootstrap_servers" in c for c in (producer_config, consumer_config, admin_config)
    ):
        raise ValueError(
            "KafkaManager needs a broker: pass bootstrap_servers='host:9092' "
            "(or bootstrap_servers in each of producer_config, consumer_config "
            "and admin_config)"
        )
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
        # cluster restart, 18-50 s here), 5 in flight, request_timeout_ms
        # 30 s.
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
        **producer_config,
    }
    consumer = {
        **common,
        **no_metrics,
        "client_id": client_id,
        # No consumer group: every server reads every partition.
        "group_id": None,
        "enable_auto_commit": False,
        # Kafka's own default, for send-conn's consumer, whose partitions
        # change with claims; the others wait 3 s (core.STATIC_FETCH_WAIT_MS).
        # Apache Kafka answers a fetch as soon as data arrives, so this sets
        # how often idle consumers ask (six at 100 ms cost an idle dyno ~9%
        # of a core, at 500 ms ~3%), and how long a partition whose leader
        # moved to a node with a fetch in flight waits (5 s made a killed
        # leader's failover 17 s under load). Brokers that hold a fetch to
        # its deadline (Tansu) want less: 20, for all.
        "fetch_max_wait_ms": 500,
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
    unknown = sorted(set(config) - set(client.DEFAULT_CONFIG))
    if unknown:
        raise ValueError(
            f"{name} has settings {client.__name__} does not know: {', '.join(unknown)} "
            "(see the kafka-python documentation for its keyword arguments)"
        )
    if name == "producer_config" and config.get("acks") == 0:
        logger.warning("producer_config acks=0: delivery errors go unseen and records can be lost")
    return dict(config)
