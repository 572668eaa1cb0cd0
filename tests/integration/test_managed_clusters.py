"""Defaults that fit managed clusters, on Apache Kafka:

- ``TopicSpec(replication_factor=None)`` takes the cluster's
  ``default.replication.factor``: three replicas on a three-node cluster;
  ``replication_factor=1`` (the .NET backplane's default) still gives one.
- With ``KAFKA_PREFIX`` set, nothing tries to create topics: a broker whose
  StandardAuthorizer refuses CreateTopics to the tenant (the closest local
  equivalent of a Heroku multi-tenant plan: SASL/PLAIN user ``tenant`` with
  read, write, describe and describe-configs ACLs on its prefixed topics
  only) gets one log line with the ``heroku kafka:topics:create`` commands,
  and the manager works once an operator created them.
"""
import logging
import os
import subprocess
import sys

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    NewTopic,
    ResourcePattern,
    ResourceType,
)
from kafka.errors import TopicAuthorizationFailedError

from flask_signalr_kafka import KafkaManager, KafkaTopicConfig, TopicSpec
from flask_signalr_kafka.cli.broker import KafkaCluster, free_port, start_broker
from flask_signalr_kafka.transport import payload_limits, topics
from testkit.harness import unique, wait_until

TENANT = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
          "sasl_plain_username": "tenant", "sasl_plain_password": "tenant-secret"}
PREFIX = "tenant1."


def replicas(admin, names):
    """Replica counts of each topic's partitions, once every broker knows them."""
    def described():
        found = {t["name"]: {len(p["replica_nodes"]) for p in t["partitions"]}
                 for t in admin.describe_topics(names)}
        return found if all(found.get(name) for name in names) else None
    return wait_until(described, 20, 0.2, "the new topics' metadata")


def test_replication_factor_defaults_to_the_clusters(artifacts):
    cluster = start_broker("kafka", nodes=3, log_dir=artifacts)
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        default = KafkaTopicConfig(prefix=unique("rf"))
        topics.ensure_topics(admin, default, cluster.bootstrap, sessions=True)
        names = [*default.names.values(), default.name(topics.SESSIONS)]
        assert replicas(admin, names) == {name: {3} for name in names}
        one = KafkaTopicConfig(prefix=unique("rf1"), send_all=TopicSpec(replication_factor=1))
        topics.ensure_topics(admin, one, cluster.bootstrap)
        assert replicas(admin, [one.names["send-all"]]) == {one.names["send-all"]: {1}}
    finally:
        admin.close()
        cluster.stop()


@pytest.fixture(scope="module")
def acl_kafka(artifacts):
    """A one-node Kafka with a StandardAuthorizer: ANONYMOUS (the PLAINTEXT
    listener) is the operator; ``tenant`` (SASL_PLAINTEXT) may read, write
    and describe topics starting with its prefix, and create nothing."""
    cluster = KafkaCluster(nodes=1, log_dir=artifacts)
    node = cluster.nodes[0]
    sasl_port = free_port()
    controller = f"CONTROLLER://127.0.0.1:{node.controller_port}"
    cluster.overrides = {
        "listeners": f"PLAINTEXT://{node.address},{controller},"
                     f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
        "advertised.listeners": f"PLAINTEXT://{node.address},{controller},"
                                f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
                                          "SASL_PLAINTEXT:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config":
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            'user_tenant="tenant-secret";',
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:ANONYMOUS",
    }
    cluster.start()
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    prefixed = ResourcePattern(ResourceType.TOPIC, PREFIX, ACLResourcePatternType.PREFIXED)
    admin.create_acls([
        ACL("User:tenant", "*", operation, ACLPermissionType.ALLOW, prefixed)
        for operation in (ACLOperation.READ, ACLOperation.WRITE, ACLOperation.DESCRIBE,
                          ACLOperation.DESCRIBE_CONFIGS)
    ])
    admin.close()
    cluster.sasl_bootstrap = f"127.0.0.1:{sasl_port}"
    yield cluster
    cluster.stop()


def tenant_manager(cluster, prefix, **kwargs):
    return KafkaManager.from_env(
        {"KAFKA_URL": f"kafka://{cluster.sasl_bootstrap}", "KAFKA_PREFIX": PREFIX},
        topic_config=KafkaTopicConfig(prefix=prefix), producer_config=TENANT,
        consumer_config=TENANT, admin_config=TENANT, **kwargs)


def test_the_tenant_is_refused_topic_creation(acl_kafka):
    admin = KafkaAdminClient(bootstrap_servers=acl_kafka.sasl_bootstrap, **TENANT)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            admin.create_topics([NewTopic(PREFIX + unique("x"), 1, 1)])
    finally:
        admin.close()


def test_prefix_logs_the_commands_and_creates_nothing(acl_kafka, caplog, monkeypatch):
    calls = []
    monkeypatch.setattr(KafkaAdminClient, "create_topics",
                        lambda self, *a, **k: calls.append(a) or {})
    prefix = unique("chat")
    manager = tenant_manager(acl_kafka, prefix, write_only=True)
    with caplog.at_level(logging.DEBUG, logger="flask_signalr_kafka"):
        assert manager.create_topics() == []
        assert manager.create_topics() == []  # asked again: not logged again
    assert calls == []
    lines = [r.getMessage() for r in caplog.records
             if "heroku kafka:topics:create" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0]
    for base in topics.BASE_NAMES:
        assert (f"heroku kafka:topics:create {PREFIX}{prefix}-{base} --partitions 10"
                in lines[0])


def test_the_manager_works_on_topics_an_operator_created(acl_kafka, caplog):
    prefix = unique("chat")
    config = KafkaTopicConfig(prefix=prefix, tenant_prefix=PREFIX)
    operator = KafkaAdminClient(bootstrap_servers=acl_kafka.bootstrap)
    operator.create_topics([NewTopic(name, 10, 1) for name in
                            [*config.names.values(), config.name(topics.FLEET)]])
    operator.close()
    manager = tenant_manager(acl_kafka, prefix, write_only=True)
    with caplog.at_level(logging.INFO, logger="flask_signalr_kafka"):
        manager.emit("hello", "tenant", namespace="/")
        manager.close()
    assert not [r for r in caplog.records if "kafka:topics:create" in r.getMessage()]
    # DescribeConfigs was allowed: the limit is the topic's, not a guess.
    assert payload_limits.learn(manager.core).topic == 1_048_588
    assert not [r for r in caplog.records if "could not read max.message.bytes" in r.getMessage()]
    reader = KafkaConsumer(bootstrap_servers=acl_kafka.bootstrap)
    tps = [TopicPartition(config.names["send-all"], p) for p in range(10)]
    reader.assign(tps)
    reader.seek_to_beginning()
    got = [r for batch in reader.poll(timeout_ms=5000).values() for r in batch]
    reader.close()
    assert any(b"tenant" in r.value for r in got)


def test_cli_create_topics_prints_the_commands(acl_kafka):
    prefix = unique("cli")
    env = {**os.environ, "KAFKA_URL": f"kafka://{acl_kafka.bootstrap}", "KAFKA_PREFIX": PREFIX}
    result = subprocess.run(
        [sys.executable, "-m", "flask_signalr_kafka", "create-topics", "--prefix", prefix],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for base in topics.BASE_NAMES:
        assert f"heroku kafka:topics:create {PREFIX}{prefix}-{base} --partitions 10" in lines
    assert (f"heroku kafka:topics:create {PREFIX}{prefix}-sessions --partitions 10 "
            "--compaction") in lines
    # Even as the operator, who could have: nothing was created.
    admin = KafkaAdminClient(bootstrap_servers=acl_kafka.bootstrap)
    assert not [t for t in admin.list_topics() if prefix in t]
    admin.close()
