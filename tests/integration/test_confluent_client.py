"""The confluent adapter (librdkafka) against a real broker, below the
core: what its consumers ask of the cluster does not queue behind their
long-poll fetches."""
import threading
import time

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from flask_signalr_kafka.runtime.concurrency import Runtime
from flask_signalr_kafka.transport.clients.confluent_client import CLIENT
from flask_signalr_kafka.transport.clients.confluent_queries import Queries
from flask_signalr_kafka.transport.clients.kafka_client import TopicPartition
from testkit.harness import unique, wait_until

#: It measures time: under xdist, no other test marked serial runs beside it.
pytestmark = pytest.mark.serial

#: Longer than any wait of this test: a request behind a fetch waits it out.
FETCH_WAIT_S = 20


def test_offsets_and_metadata_do_not_wait_behind_a_long_poll(broker):
    """A broker answers one request of a connection at a time: asked on the
    consumer's own connection, an offsets request (a claim, a replay) waited
    out the fetch in flight there, up to ``fetch.wait.max.ms`` (3 s for
    most consumers of a dyno). The consumers of a process ask through one
    idle consumer of their settings, closed with the last of them."""
    topic = unique("t")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        admin.close()
    runtime = Runtime("threading", None, time.sleep)
    _, config, _ = CLIENT.configs(broker.bootstrap, 10, unique("c"), {},
                                  {"fetch.wait.max.ms": FETCH_WAIT_S * 1000}, {})
    opened = len(Queries.shared)
    reader, other = CLIENT.consumer(config, runtime), CLIENT.consumer(config, runtime)
    assert len(Queries.shared) == opened + 1, "one idle consumer for both"
    tps = [TopicPartition(topic, p) for p in range(4)]
    wait_until(lambda: reader.partitions_for_topic(topic) == {0, 1, 2, 3}, 10,
               what="the new topic's partitions")
    reader.assign(tps[:2])
    reader.seek_to_end()
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            reader.poll(500)

    polling = threading.Thread(target=poll)
    polling.start()
    try:
        time.sleep(1)  # its first fetch is now waiting on the idle topic
        started = time.monotonic()
        for _ in range(3):
            assert reader.partitions_for_topic(topic) == {0, 1, 2, 3}
            assert reader.end_offsets(tps) == dict.fromkeys(tps, 0)
            assert other.beginning_offsets(tps[2:]) == dict.fromkeys(tps[2:], 0)
        took = time.monotonic() - started
    finally:
        stop.set()
        polling.join(10)
    # Behind the fetch, the first request alone would have taken ~19 s.
    assert took < FETCH_WAIT_S / 2, f"9 requests took {took:.1f} s"
    reader.close()
    assert len(Queries.shared) == opened + 1, "still used by the other"
    other.close()
    assert len(Queries.shared) == opened
