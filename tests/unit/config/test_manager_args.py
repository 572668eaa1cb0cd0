"""KafkaManager construction: argument checks and the merged client configs.

Construction must not touch the network, so none of this needs a broker.
"""

import logging
import re
import socket

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from flask_signalr_kafka import KafkaManager, KafkaTopicConfig, TopicSpec
from flask_signalr_kafka.transport import core
from flask_signalr_kafka.transport.clients.client_config import (
    OUR_PRODUCER_SETTINGS,
    StickyPartitioner,
)

BROKER = "127.0.0.1:9092"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any attempt to connect or to build a Kafka client."""

    def refuse(*args, **kwargs):
        raise AssertionError("KafkaManager construction attempted network I/O")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(core, "Publisher", refuse)
    monkeypatch.setattr(core, "KafkaAdminClient", _Refusing(core.KafkaAdminClient))
    monkeypatch.setattr(core, "TopicConsumer", refuse)


class _Refusing:
    """Stands in for a Kafka client class: its DEFAULT_CONFIG, no instances."""

    def __init__(self, cls):
        self.DEFAULT_CONFIG = cls.DEFAULT_CONFIG
        self.__name__ = cls.__name__

    def __call__(self, *args, **kwargs):
        raise AssertionError("KafkaManager construction created a Kafka client")


def test_construction_does_no_io():
    mgr = KafkaManager(BROKER, topic_config=KafkaTopicConfig(prefix="t"))
    assert mgr.producer_config["bootstrap_servers"] == BROKER
    assert mgr.core.publisher is None
    assert mgr.core.consumers == []


def test_the_network_guard_works():
    mgr = KafkaManager(BROKER)
    with pytest.raises(AssertionError, match="Kafka client"):
        mgr.create_topics()
    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("127.0.0.1", 9))


# -- a broker is required -----------------------------------------------------------


def test_no_broker_at_all():
    with pytest.raises(ValueError, match="bootstrap_servers") as info:
        KafkaManager()
    assert "broker" in str(info.value)


def test_broker_in_only_some_configs_is_not_enough():
    with pytest.raises(ValueError, match="bootstrap_servers"):
        KafkaManager(
            producer_config={"bootstrap_servers": BROKER},
            consumer_config={"bootstrap_servers": BROKER},
        )


def test_broker_in_every_config_without_shorthand():
    mgr = KafkaManager(
        producer_config={"bootstrap_servers": "p:1"},
        consumer_config={"bootstrap_servers": "c:1"},
        admin_config={"bootstrap_servers": ["a:1", "a:2"]},
    )
    assert mgr.producer_config["bootstrap_servers"] == "p:1"
    assert mgr.consumer_config["bootstrap_servers"] == "c:1"
    assert mgr.admin_config["bootstrap_servers"] == ["a:1", "a:2"]


@pytest.mark.parametrize(
    "bad", [5, b"127.0.0.1:9092", [], "", "   ", [""], ["h:1", 3], {"h:1"}, ["h:1", None]]
)
def test_bad_bootstrap_servers(bad):
    with pytest.raises(ValueError, match="bootstrap_servers"):
        KafkaManager(bad)


@pytest.mark.parametrize("servers", ["h1:9092", ["h1:9092", "h2:9092"], ("h1:9092",)])
def test_good_bootstrap_servers_fill_every_config(servers):
    mgr = KafkaManager(servers)
    expected = servers if isinstance(servers, str) else list(servers)
    for config in (mgr.producer_config, mgr.consumer_config, mgr.admin_config):
        assert config["bootstrap_servers"] == expected


# -- client configs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "bad_key"),
    [
        ("producer_config", "no_such_setting"),
        ("producer_config", "group_id"),  # a consumer setting
        ("consumer_config", "linger_ms"),  # a producer setting
        ("consumer_config", "bootstrap.servers"),  # librdkafka spelling
        ("admin_config", "acks"),
    ],
)
def test_unknown_config_keys(name, bad_key):
    with pytest.raises(ValueError, match=re.escape(bad_key)) as info:
        KafkaManager(BROKER, **{name: {bad_key: 1}})
    assert name in str(info.value)


@pytest.mark.parametrize("name", ["producer_config", "consumer_config", "admin_config"])
@pytest.mark.parametrize("bad", [[("linger_ms", 5)], "linger_ms=5", 5])
def test_non_dict_config(name, bad):
    with pytest.raises(TypeError, match=name):
        KafkaManager(BROKER, **{name: bad})


def test_defaults():
    mgr = KafkaManager(BROKER)
    assert mgr.producer_config["client_id"] == mgr.server_name
    assert mgr.producer_config["linger_ms"] == 1
    assert isinstance(mgr.producer_config["partitioner"], StickyPartitioner)
    assert mgr.consumer_config["group_id"] is None
    assert mgr.consumer_config["enable_auto_commit"] is False
    assert mgr.consumer_config["client_id"] == mgr.server_name
    assert mgr.admin_config["client_id"] == mgr.server_name
    for config in (mgr.producer_config, mgr.consumer_config, mgr.admin_config):
        assert config["bootstrap_servers"] == BROKER
        assert config["bootstrap_timeout_ms"] == 10000
    assert mgr.ack_timeout == 30.0
    assert mgr.core.await_produce is False
    assert mgr.write_only is False
    assert mgr.topic_config == KafkaTopicConfig()


def test_every_merged_config_key_is_known_to_its_client():
    mgr = KafkaManager(BROKER)
    for config, cls in (
        (mgr.producer_config, KafkaProducer),
        (mgr.consumer_config, KafkaConsumer),
        (mgr.admin_config, KafkaAdminClient),
    ):
        # buffer_memory is the publisher's bound, dropped before KafkaProducer.
        ours = OUR_PRODUCER_SETTINGS if cls is KafkaProducer else set()
        assert set(config) <= set(cls.DEFAULT_CONFIG) | ours


def test_explicit_configs_win_over_shorthand_and_defaults():
    mgr = KafkaManager(
        BROKER,
        producer_config={
            "bootstrap_servers": "prod:1",
            "linger_ms": 50,
            "client_id": "me",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
        },
        consumer_config={
            "group_id": "mine",
            "enable_auto_commit": True,
            "fetch_max_wait_ms": 500,
            "bootstrap_timeout_ms": 1,
        },
        admin_config={"bootstrap_servers": ["adm:1"], "security_protocol": "SSL"},
        connect_timeout=3,
    )
    p, c, a = mgr.producer_config, mgr.consumer_config, mgr.admin_config
    assert p["bootstrap_servers"] == "prod:1"
    assert p["linger_ms"] == 50
    assert p["client_id"] == "me"
    assert (p["security_protocol"], p["sasl_mechanism"]) == ("SASL_SSL", "PLAIN")
    assert p["bootstrap_timeout_ms"] == 3000
    assert c["bootstrap_servers"] == BROKER
    assert (c["group_id"], c["enable_auto_commit"]) == ("mine", True)
    assert c["fetch_max_wait_ms"] == 500
    assert c["bootstrap_timeout_ms"] == 1
    assert a["bootstrap_servers"] == ["adm:1"]
    assert a["security_protocol"] == "SSL"
    assert "security_protocol" not in c


def test_caller_config_dicts_are_not_mutated():
    producer_config = {"linger_ms": 5}
    KafkaManager(BROKER, producer_config=producer_config)
    assert producer_config == {"linger_ms": 5}


# -- other arguments ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, -0.5, "5", None, True])
def test_ack_timeout_must_be_positive(bad):
    with pytest.raises(ValueError, match="ack_timeout"):
        KafkaManager(BROKER, ack_timeout=bad)


def test_ack_timeout_nan_is_rejected():
    with pytest.raises(ValueError, match="ack_timeout"):
        KafkaManager(BROKER, ack_timeout=float("nan"))


def test_ack_timeout_accepted():
    assert KafkaManager(BROKER, ack_timeout=0.5).ack_timeout == 0.5
    assert KafkaManager(BROKER, ack_timeout=2).ack_timeout == 2.0


@pytest.mark.parametrize("bad", [["xml"], "msgpack", ("json", "JSON"), ["json", "protobuf"]])
def test_bad_hub_protocols(bad):
    with pytest.raises(ValueError, match="hub_protocols"):
        KafkaManager(BROKER, hub_protocols=bad)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (("json",), ("json",)),
        (("messagepack",), ("json", "messagepack")),
        ("messagepack", ("json", "messagepack")),
        (["messagepack", "json"], ("messagepack", "json")),
        (("json", "json", "messagepack"), ("json", "messagepack")),
        ((), ("json",)),
    ],
)
def test_json_is_always_in_hub_protocols(given, expected):
    assert KafkaManager(BROKER, hub_protocols=given).hub_protocols == expected


def test_default_hub_protocols():
    assert KafkaManager(BROKER).hub_protocols == ("json",)


@pytest.mark.parametrize("bad", ["chat", TopicSpec(), object(), 5])
def test_topic_config_must_be_a_kafka_topic_config(bad):
    with pytest.raises(TypeError, match="topic_config"):
        KafkaManager(BROKER, topic_config=bad)


@pytest.mark.parametrize("bad", [{}, ""])
def test_falsy_topic_config_is_rejected(bad):
    with pytest.raises(TypeError, match="topic_config"):
        KafkaManager(BROKER, topic_config=bad)


def test_topic_config_kept():
    config = KafkaTopicConfig(prefix="chat", send_all=TopicSpec(num_partitions=2))
    assert KafkaManager(BROKER, topic_config=config).topic_config is config


# -- server name -----------------------------------------------------------------------


def test_server_name_shape():
    mgr = KafkaManager(BROKER)
    pattern = rf"^{re.escape(socket.gethostname())}_[0-9a-f]{{32}}$"
    assert re.match(pattern, mgr.server_name), mgr.server_name


def test_server_names_are_unique():
    names = {KafkaManager(BROKER).server_name for _ in range(5)}
    assert len(names) == 5


def test_acks_0_is_warned_about(caplog):
    caplog.set_level(logging.WARNING, logger="flask_signalr_kafka")
    KafkaManager(BROKER, producer_config={"acks": 0})
    assert any("acks=0" in r.getMessage() for r in caplog.records)
    caplog.clear()
    KafkaManager(BROKER, producer_config={"acks": "all"}, consumer_config={"client_id": "c"})
    assert not any("acks" in r.getMessage() for r in caplog.records)


def test_binary_detection_matches_python_socketio():
    from socketio.packet import Packet

    from flask_signalr_kafka.wire.hub_protocol import has_binary

    cases = [[], [1, "x"], [b"x"], [{"a": [1, {"b": bytearray(b"y")}]}], [{"a": "b"}],
             ["text", 2.5, None, True], [{"k": {"n": [1, 2, 3]}}]]
    for data in cases:
        assert has_binary(data) == Packet.data_is_binary(data), data
    # Tuples nest too in our records (python-socketio does not look in them).
    assert has_binary([(1, 2, (b"z",))])


def test_partitioner_remembers_keys_and_keeps_unkeyed_records_on_one_partition():
    from kafka.partitioner.default import murmur2

    from flask_signalr_kafka.transport.clients.client_config import StickyPartitioner

    class Cluster:
        def __init__(self, n):
            self.n = n

        def topics(self):
            return {"t"}

        def partitions_for_topic(self, topic):
            return set(range(self.n))

        def available_partitions_for_topic(self, topic):
            return set(range(self.n))

    partitioner = StickyPartitioner()
    for n in (10, 3):
        cluster = Cluster(n)
        for key in (b"room-1", b"sid~abc", b"alice"):
            expected = (murmur2(key) & 0x7FFFFFFF) % n
            assert partitioner.partition("t", key, key, b"", b"", cluster) == expected
            assert partitioner.partition("t", key, key, b"", b"", cluster) == expected
        unkeyed = {partitioner.partition("t", None, None, b"", b"", cluster) for _ in range(50)}
        assert len(unkeyed) == 1
