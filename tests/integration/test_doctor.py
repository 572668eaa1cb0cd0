"""`flask-signalr-kafka doctor` against real brokers: healthy topics, missing
ones, an unreachable cluster, and deliberately bad topics on a three-node
Apache Kafka cluster."""
import json
import subprocess
import sys

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from flask_signalr_kafka.cli.broker import free_port, start_broker
from flask_signalr_kafka.transport.topics import KafkaTopicConfig
from testkit.harness import unique

# The combinations besides the default one that run this module (make test).
pytestmark = [pytest.mark.tansu, pytest.mark.confluent]


def doctor(bootstrap, prefix, *extra, timeout=90):
    result = subprocess.run(
        [sys.executable, "-m", "flask_signalr_kafka", "doctor", "--bootstrap-servers", bootstrap,
         "--prefix", prefix, *extra],
        capture_output=True, text=True, timeout=timeout,
    )
    return result


def doctor_json(bootstrap, prefix, *extra):
    result = doctor(bootstrap, prefix, "--json", *extra)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def all_names(prefix):
    """The six topics' names, the sessions and fleet topics', by base name."""
    config = KafkaTopicConfig(prefix=prefix)
    return {**config.names, "sessions": config.name("sessions"), "fleet": config.name("fleet")}


def findings(report, level=None):
    """{(check, topic or None)} of the report's findings at ``level``."""
    return {(f["check"], f["topic"]) for f in report["findings"]
            if level is None or f["level"] == level}


def test_healthy_topics_exit_0(broker):
    prefix = unique("doc")
    created = subprocess.run(
        [sys.executable, "-m", "flask_signalr_kafka", "create-topics", "--bootstrap-servers",
         broker.bootstrap, "--prefix", prefix], capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    code, report = doctor_json(broker.bootstrap, prefix)
    names = all_names(prefix)
    topics = {t["name"]: t for t in report["topics"]}
    assert set(topics) == set(names.values())
    created_names = [n for b, n in names.items() if b != "sessions"]
    for name in created_names:
        assert topics[name]["present"] and topics[name]["partitions"] == 10
        assert topics[name]["replication_factor"] == 1
    assert len(report["brokers"]) == 1 and report["brokers"][0]["version"]
    assert findings(report, "error") == set() and findings(report, "warning") == set()
    assert (code, report["status"]) == (0, "ok")
    if broker.engine == "kafka":
        assert topics[names["fleet"]]["configs"]["retention.ms"] == "3600000"
        for name in created_names:
            if name == names["fleet"]:
                continue
            assert topics[name]["configs"] == {
                "cleanup.policy": "delete", "min.insync.replicas": "1",
                "retention.bytes": "-1", "retention.ms": "604800000",
            }
        assert findings(report, "note") == {("missing", names["sessions"])}
    else:
        # Tansu workaround: its DescribeConfigs reports only configs set at
        # creation, so the doctor says what it could not check.
        assert ("configs", names["send-all"]) in findings(report, "note")


def test_text_output_lists_brokers_and_topics(broker):
    prefix = unique("doc")
    result = doctor(broker.bootstrap, prefix)
    assert result.returncode == 2, result.stderr
    assert f"{prefix}-send-conn" in result.stdout and "MISSING" in result.stdout
    assert "broker " in result.stdout and "protocol" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("ERROR: 7 error(s)")


def test_missing_topics_are_errors(broker):
    prefix = unique("doc")
    code, report = doctor_json(broker.bootstrap, prefix)
    config = KafkaTopicConfig(prefix=prefix)
    required = [*config.names.values(), config.name("fleet")]
    assert code == 2 and report["status"] == "error"
    assert findings(report, "error") == {("missing", name) for name in required}


def test_unreachable_cluster_is_exit_2():
    address = f"127.0.0.1:{free_port()}"
    code, report = doctor_json(address, "x", "--timeout", "1")
    assert code == 2
    assert findings(report, "error") == {("unreachable", None)}
    assert f"could not reach Kafka at {address}" in report["findings"][0]["message"]


@pytest.fixture(scope="module")
def cluster3(engine, artifacts):
    if engine != "kafka":
        pytest.skip("Tansu runs one node: the multi-broker checks need Apache Kafka")
    cluster = start_broker("kafka", nodes=3, log_dir=artifacts)
    yield cluster
    cluster.stop()


def test_bad_topics_on_three_nodes(cluster3):
    prefix = unique("bad")
    names = all_names(prefix)
    spec = {"num_partitions": 10, "replication_factor": 3}
    bad = {
        # RF 1 on three brokers: a rolling restart takes partitions offline.
        "ack": {"num_partitions": 10, "replication_factor": 1},
        "group-mgmt": spec,
        # A compacted send-all refuses every broadcast (records without a key).
        "send-all": {**spec, "configs": {"cleanup.policy": "compact"}},
        # Shorter than the recovery window.
        "send-conn": {**spec, "configs": {"retention.ms": "60000"}},
        # min.insync.replicas == RF: one broker down stops every emit.
        "send-group": {"num_partitions": 10, "replication_factor": 2,
                       "configs": {"min.insync.replicas": "2"}},
        # Fewer partitions than the others: safe, and the doctor says why.
        "send-user": {"num_partitions": 3, "replication_factor": 3},
        # One partition: every dyno reads every fleet answer.
        "fleet": {"num_partitions": 1, "replication_factor": 3},
    }
    with KafkaAdminClient(bootstrap_servers=cluster3.bootstrap) as admin:
        result = admin.create_topics({names[b]: s for b, s in bad.items()}, raise_errors=False)
        assert all(t["error_code"] == 0 for t in result["topics"]), result

    code, report = doctor_json(cluster3.bootstrap, prefix)
    assert code == 2 and report["status"] == "error"
    assert [b["id"] for b in report["brokers"]] == [1, 2, 3]
    assert all(b["version"].startswith("4.") for b in report["brokers"])
    assert findings(report, "error") == {("cleanup-policy", names["send-all"])}
    assert findings(report, "warning") == {
        ("replication", names["ack"]),
        ("min-isr", names["ack"]),  # the cluster's min.insync.replicas 2 > RF 1
        ("retention", names["send-conn"]),
        ("min-isr", names["send-group"]),
        ("partitions", names["fleet"]),
    }
    assert ("partitions", None) in findings(report, "note")
    assert ("partitions", names["send-user"]) not in findings(report, "note")  # 3 >= 3 brokers

    # What the doctor warns of is real: the compacted send-all refuses a broadcast.
    producer = KafkaProducer(bootstrap_servers=cluster3.bootstrap, retries=0)
    with pytest.raises(Exception, match="without key"):
        producer.send(names["send-all"], b"x").get(15)
    producer.close()

    # Retention is judged against the recovery window the operator gives.
    _, short = doctor_json(cluster3.bootstrap, prefix, "--recovery-window", "30")
    assert ("retention", names["send-conn"]) not in findings(short, "warning")


def test_only_warnings_exit_1(cluster3):
    prefix = unique("warn")
    names = all_names(prefix)
    topics = {n: {"num_partitions": 4, "replication_factor": 3} for b, n in names.items()
              if b != "sessions"}
    topics[names["send-group"]]["configs"] = {"retention.ms": "10000"}
    with KafkaAdminClient(bootstrap_servers=cluster3.bootstrap) as admin:
        admin.create_topics(topics)
    code, report = doctor_json(cluster3.bootstrap, prefix, "--recovery-window", "120")
    assert findings(report, "warning") == {("retention", names["send-group"])}
    assert findings(report, "error") == set()
    assert (code, report["status"]) == (1, "warning")
    text = doctor(cluster3.bootstrap, prefix).stdout
    assert f"WARNING [retention] {names['send-group']}: retention.ms 10000 (10s)" in text


def test_sessions_topic_not_compacted(cluster3):
    prefix = unique("ses")
    names = all_names(prefix)
    topics = {n: {"num_partitions": 4, "replication_factor": 3} for n in names.values()}
    topics[names["sessions"]]["configs"] = {"cleanup.policy": "delete"}
    with KafkaAdminClient(bootstrap_servers=cluster3.bootstrap) as admin:
        admin.create_topics(topics)
    code, report = doctor_json(cluster3.bootstrap, prefix)
    assert findings(report, "warning") == {("cleanup-policy", names["sessions"])}
    assert code == 1
