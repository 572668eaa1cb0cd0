"""Replay consumers reused between reads (issue 22, item 5), against a real
broker and both clients: each read gets exactly its ranges, whatever the
consumer read before. (A partition paused at the end of one read was never
fetched again by a later one: librdkafka keeps a pause through an
unassign, and kafka-python stalled at the seek.)"""
import random

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from flask_signalr_kafka.recovery.replay import ConsumerPool, read_ranges
from flask_signalr_kafka.runtime.concurrency import Runtime
from flask_signalr_kafka.transport.clients.kafka_client import TopicPartition, client_named
from testkit.harness import unique

pytestmark = pytest.mark.timeout(120)

PARTITIONS, PER_PARTITION = 4, 300


@pytest.fixture
def topics(broker):
    names = [unique("replay"), unique("replay")]
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for name in names:
        for p in range(PARTITIONS):
            for i in range(PER_PARTITION):
                producer.send(name, value=f"{p}:{i}".encode(), partition=p)
    producer.flush(30)
    producer.close()
    return names


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_reused_consumer_reads_exactly_each_range(broker, topics, client):
    kafka = client_named(client)
    config = kafka.configs(broker.bootstrap, 10, unique("c"), {}, {}, {})[1]
    pool = ConsumerPool(lambda: kafka.consumer(config, Runtime.standalone(), False), keep=1)
    rng = random.Random(7)
    try:
        for _ in range(25):
            ranges = {}
            for name in rng.sample(topics, rng.randint(1, 2)):
                for p in rng.sample(range(PARTITIONS), rng.randint(1, PARTITIONS)):
                    start = rng.randrange(PER_PARTITION)
                    ranges[("b", TopicPartition(name, p))] = (
                        start, rng.randint(start + 1, PER_PARTITION))
            consumer = pool.get()
            found = read_ranges(consumer, ranges)
            pool.put(consumer)
            got = sorted((r.topic, r.partition, r.offset) for _, r in found)
            want = sorted((tp.topic, tp.partition, o) for (_, tp), (s, e) in ranges.items()
                          for o in range(s, e))
            assert got == want
    finally:
        pool.close()
