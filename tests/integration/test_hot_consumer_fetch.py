"""kafka-python under the hot consumer group (issue 23): a poll hands out
the whole fetched backlog of a busy partition, so that the next fetch
includes it. With kafka-python's own ``max_poll_records`` (500) the rest
stayed buffered, the partition was left out of the next fetch, and that
fetch waited its full ``fetch_max_wait_ms`` on the group's idle partitions:
a one-sid backlog was delivered at 2,200 deliveries/s instead of ~14,000."""
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from flask_signalr_kafka.runtime.concurrency import Runtime
from flask_signalr_kafka.transport.clients.kafka_client import TopicPartition, client_named
from testkit.harness import unique

pytestmark = pytest.mark.timeout(120)

BACKLOG = 3000


def test_one_poll_takes_the_whole_fetched_backlog(broker):
    busy, idle = unique("busy"), unique("idle")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(busy, 1, 1), NewTopic(idle, 4, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(BACKLOG):
        producer.send(busy, value=b"%05d" % i + b"x" * 60, partition=0)
    producer.flush(30)
    producer.close()

    kafka = client_named("kafka-python")
    config = kafka.configs(broker.bootstrap, 10, unique("c"), {}, {}, {})[1]
    consumer = kafka.consumer(config, Runtime.standalone())
    try:
        parts = [TopicPartition(busy, 0)] + [TopicPartition(idle, p) for p in range(4)]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, 0)
        batch: dict = {}
        for _ in range(50):
            batch = consumer.poll(timeout_ms=1000)
            if batch:
                break
        # One fetch (under max_partition_fetch_bytes) holds the backlog.
        assert sum(len(records) for records in batch.values()) == BACKLOG
    finally:
        consumer.close()
