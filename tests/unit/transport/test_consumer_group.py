"""ConsumerGroup: several topics read by one client consumer, and the
core's hot and cold groups, against fake consumers in gevent greenlets (as
in test_consumer; the process is not monkey-patched)."""
from types import SimpleNamespace

import gevent
import pytest
from kafka import TopicPartition

from flask_signalr_kafka.transport import topics
from flask_signalr_kafka.transport.clients.kafka_python_client import STATIC_FETCH_WAIT_MS
from flask_signalr_kafka.transport.consumer import ConsumerGroup, TopicConsumer
from flask_signalr_kafka.transport.core import KafkaCore
from flask_signalr_kafka.transport.topics import KafkaTopicConfig
from tests.unit.transport.test_consumer import GREENLETS, wait_until


def rec(topic, partition, offset):
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=None,
                           value=b"v", timestamp=0)


class Cluster:
    """Topics of two partitions each, every log ending at 5; ``script``
    items are poll results, taken in order."""

    def __init__(self, names):
        self.names = set(names)
        self.script = []
        self.consumers = []


class FakeConsumer:
    def __init__(self, cluster, config):
        self.cluster, self.config = cluster, config
        self.assigned, self.seeks, self.closed = [], [], False
        cluster.consumers.append(self)

    def partitions_for_topic(self, topic):
        return {0, 1} if topic in self.cluster.names else set()

    def assign(self, partitions):
        self.assigned = list(partitions)

    def end_offsets(self, partitions):
        return {tp: 5 for tp in partitions}

    beginning_offsets = end_offsets

    def seek(self, tp, offset):
        assert tp in self.assigned
        self.seeks.append((tp.topic, tp.partition, offset))

    def poll(self, timeout_ms=0):
        assert not self.closed
        gevent.sleep(0.001)
        return self.cluster.script.pop(0) if self.cluster.script else {}

    def highwater(self, tp):
        return None

    def close(self):
        self.closed = True


def fake_client(cluster, **attrs):
    return SimpleNamespace(consumer=lambda config, runtime: FakeConsumer(cluster, config),
                           **attrs)


@pytest.fixture
def cluster():
    return Cluster(["t-a", "t-b", "t-c"])


@pytest.fixture
def group(cluster):
    made = []

    def _group(*names, seen):
        client = fake_client(cluster)
        members = [TopicConsumer(n, lambda r: seen.append((r.topic, r.offset)), {}, GREENLETS,
                                 client=client) for n in names]
        g = ConsumerGroup(members, {"setting": 1}, GREENLETS, client)
        for member in members:
            member.restart_delay = 0.01
            member.start()  # starts the group once
        made.append(g)
        return g

    yield _group
    for g in made:
        for member in list(g.members):
            member.stop()
        assert not g.running


def test_one_consumer_reads_every_member_topic(cluster, group):
    seen = []
    g = group("t-a", "t-b", seen=seen)
    a, b = g.members
    wait_until(lambda: a.ready.is_set() and b.ready.is_set())
    assert len(cluster.consumers) == 1
    consumer = cluster.consumers[0]
    assert consumer.config == {"setting": 1}
    assert consumer.assigned == [TopicPartition("t-a", 0), TopicPartition("t-a", 1),
                                 TopicPartition("t-b", 0), TopicPartition("t-b", 1)]
    cluster.script = [{TopicPartition("t-b", 1): [rec("t-b", 1, 5), rec("t-b", 1, 6)],
                       TopicPartition("t-a", 0): [rec("t-a", 0, 5)]}]
    wait_until(lambda: len(seen) == 3)
    assert a.positions == {TopicPartition("t-a", 0): 6, TopicPartition("t-a", 1): 5}
    assert b.positions == {TopicPartition("t-b", 0): 5, TopicPartition("t-b", 1): 7}
    assert a.stats.consumed == 1 and b.stats.consumed == 2


def test_a_stopped_member_leaves_and_the_others_read_on(cluster, group):
    seen = []
    g = group("t-a", "t-b", seen=seen)
    a, b = g.members
    wait_until(lambda: a.ready.is_set() and b.ready.is_set())
    a.stop()
    assert not a.running and b.running
    consumer = cluster.consumers[0]
    wait_until(lambda: consumer.assigned == [TopicPartition("t-b", 0), TopicPartition("t-b", 1)])
    cluster.script = [{TopicPartition("t-a", 0): [rec("t-a", 0, 5)],  # fetched before it left
                       TopicPartition("t-b", 0): [rec("t-b", 0, 5)]}]
    wait_until(lambda: seen == [("t-b", 5)])
    assert a.positions == {TopicPartition("t-a", 0): 5, TopicPartition("t-a", 1): 5}
    assert len(cluster.consumers) == 1 and not consumer.closed
    b.stop()
    assert not g.running and consumer.closed


def test_a_member_added_later_is_read_on_a_new_consumer_from_the_same_positions(
        cluster, group):
    seen = []
    g = group("t-a", seen=seen)
    (a,) = g.members
    wait_until(a.ready.is_set)
    cluster.script = [{TopicPartition("t-a", 1): [rec("t-a", 1, 5)]}]
    wait_until(lambda: seen == [("t-a", 5)])
    c = TopicConsumer("t-c", lambda r: seen.append((r.topic, r.offset)), {}, GREENLETS,
                      client=g.client)
    g.add(c)
    c.start()
    wait_until(c.ready.is_set)
    first, second = cluster.consumers
    assert first.closed and not second.closed
    assert second.seeks == [("t-a", 0, 5), ("t-a", 1, 6), ("t-c", 0, 5), ("t-c", 1, 5)]
    assert a.stats.restarts == 0


def test_a_failing_poll_restarts_every_member_at_its_positions(cluster, group):
    seen = []
    g = group("t-a", "t-b", seen=seen)
    a, b = g.members
    cluster.script = [{TopicPartition("t-a", 0): [rec("t-a", 0, 5)]}, RuntimeError("gone")]

    def poll(self, timeout_ms=0):
        gevent.sleep(0.001)
        item = cluster.script.pop(0) if cluster.script else {}
        if isinstance(item, BaseException):
            raise item
        return item

    FakeConsumer_poll = FakeConsumer.poll
    FakeConsumer.poll = poll
    try:
        wait_until(lambda: len(cluster.consumers) == 2 and cluster.consumers[1].seeks)
    finally:
        FakeConsumer.poll = FakeConsumer_poll
    assert cluster.consumers[1].seeks[:2] == [("t-a", 0, 6), ("t-a", 1, 5)]
    assert a.stats.restarts == b.stats.restarts == 1


# -- the core's layout ---------------------------------------------------------

ALL = (topics.ACK, topics.GROUP_MGMT, topics.SEND_ALL, topics.SEND_CONN, topics.SEND_GROUP,
       topics.SEND_USER)


def core_on(cluster, consumer_config=None, fetch_wait_given=False):
    client = fake_client(cluster, fetch_wait="fetch_max_wait_ms",
                         static_fetch_wait_ms=STATIC_FETCH_WAIT_MS)
    core = KafkaCore(server_name="host_" + "ab" * 16, producer_config={},
                     consumer_config=consumer_config or {"fetch_max_wait_ms": 500},
                     admin_config={}, topic_config=KafkaTopicConfig(), await_produce=False,
                     connect_timeout=1, home_partitions=False, write_only=False,
                     sessions=False, fetch_wait_given=fetch_wait_given, client=client)
    core.runtime = GREENLETS
    return core


def wait_ready(core):
    # Not core.wait_ready: its threading.Event.wait would block the hub here.
    wait_until(lambda: all(c.ready.is_set() for c in core.consumers))


def test_a_dyno_reads_its_topics_with_two_consumers_and_waits_long_only_on_the_cold():
    """Issue 23: a consumer per topic, each of the static ones with a 3 s
    fetch wait, halved kafka-python's broadcast throughput; the idle saving
    comes from fewer consumers instead."""
    config = KafkaTopicConfig()
    cluster = Cluster([config.name(b) for b in (*ALL, topics.FLEET)])
    core = core_on(cluster)
    try:
        core.consume({base: lambda r: None for base in ALL})
        core.consume({topics.FLEET: lambda r: None})  # as the fleet does, later
        wait_ready(core)
        wait_until(lambda: sum(not c.closed for c in cluster.consumers) == 2)
        live = [c for c in cluster.consumers if not c.closed]
        read = {c.config.get("fetch_max_wait_ms"): {tp.topic for tp in c.assigned}
                for c in live}
        hot = {config.name(b) for b in ALL if b != topics.GROUP_MGMT}
        assert read == {500: hot, STATIC_FETCH_WAIT_MS: {config.name(topics.GROUP_MGMT),
                                                         config.name(topics.FLEET)}}
        assert all(c.running for c in core.consumers)
    finally:
        core.stop_consuming()
    assert not any(c.running for c in core.consumers)
    assert all(c.closed for c in cluster.consumers)


def test_the_apps_fetch_wait_is_every_groups():
    config = KafkaTopicConfig()
    cluster = Cluster([config.name(b) for b in ALL])
    core = core_on(cluster, {"fetch_max_wait_ms": 20}, fetch_wait_given=True)
    try:
        core.consume({base: lambda r: None for base in ALL})
        wait_ready(core)
        assert [c.config["fetch_max_wait_ms"] for c in cluster.consumers] == [20, 20]
    finally:
        core.stop_consuming()


def test_recovery_stops_the_send_consumers_and_acks_are_read_on():
    config = KafkaTopicConfig()
    cluster = Cluster([config.name(b) for b in ALL])
    core = core_on(cluster)
    try:
        core.consume({base: lambda r: None for base in ALL})
        wait_ready(core)
        sends = [topics.SEND_ALL, topics.SEND_CONN, topics.SEND_GROUP, topics.SEND_USER]
        core.stop_consuming(sends)
        assert [b for b in ALL if core.consumer(b).running] == [topics.ACK, topics.GROUP_MGMT]
        hot = next(c for c in cluster.consumers if config.name(topics.ACK)
                   in {tp.topic for tp in c.assigned})
        wait_until(lambda: {tp.topic for tp in hot.assigned} == {config.name(topics.ACK)})
        assert not hot.closed
    finally:
        core.stop_consuming()
