"""The confluent producer's unkeyed records (broadcasts) after their topic was
recreated with fewer partitions (a broker that lost its topics): the count is
read again at the first refusal, not a minute later, and the refused record is
sent once more; without a broker (librdkafka faked as it answers)."""
import threading
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from flask_signalr_kafka.runtime.concurrency import Runtime
from flask_signalr_kafka.transport.clients import confluent_producer


class Message:
    def __init__(self, value, partition):
        self._value, self._partition = value, partition

    def value(self):
        return self._value

    def partition(self):
        return self._partition

    def offset(self):
        return 1


class FakeProducer:
    """librdkafka's producer with a topic of ``count`` partitions: a record
    for a partition past it is refused at ``produce()`` (``_UNKNOWN_PARTITION``,
    librdkafka's ``rd_kafka_msg_partitioner``); ``shrink`` fails the queued
    records of the partitions that went away in their reports, as
    librdkafka's ``rd_kafka_topic_assign_uas`` does."""

    def __init__(self, config):
        self.count = 10
        self.queued = []  # (callback, value, partition)
        self.reports = []
        self.produced = []  # (value, partition) librdkafka took
        self.lock = threading.Lock()
        self.lookups = 0

    def list_topics(self, topic=None, timeout=None):
        self.lookups += 1
        meta = type("T", (), {"error": None, "partitions": dict.fromkeys(range(self.count))})()
        return type("M", (), {"topics": {"t": meta}})()

    def produce(self, topic, value, key, partition=None, on_delivery=None):
        if partition is not None and partition >= self.count:
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))
        with self.lock:
            self.produced.append((value, partition))
            self.queued.append((on_delivery, value, partition))

    def shrink(self, count):
        with self.lock:
            self.count = count
            gone = [q for q in self.queued if q[2] >= count]
            self.queued = [q for q in self.queued if q[2] < count]
            self.reports += [(cb, KafkaError(KafkaError._UNKNOWN_PARTITION), Message(v, p))
                             for cb, v, p in gone]

    def poll(self, timeout):
        with self.lock:
            reports, self.reports = self.reports, []
        for callback, error, message in reports:
            callback(error, message)
        if not reports and timeout:
            time.sleep(min(timeout, 0.01))
        return len(reports)

    def __len__(self):
        return len(self.queued) + len(self.reports)

    def flush(self, timeout=None):
        with self.lock:
            queued, self.queued = self.queued, []
        for callback, value, partition in queued:
            callback(None, Message(value, partition))


@pytest.fixture
def producer(monkeypatch):
    monkeypatch.setattr(confluent_producer.confluent_kafka, "Producer", FakeProducer)
    producer = confluent_producer.ConfluentProducer({}, Runtime.threads("threading"))
    producer._slot = 7  # a partition the smaller topic lacks
    yield producer
    producer.close(1)


def test_an_unkeyed_send_refused_at_produce_goes_to_a_partition_that_exists(producer):
    fake = producer._producer
    fake.count = 4  # recreated; the producer's count (10) is up to a minute old
    first = producer.send("t", b"first")
    second = producer.send("t", b"second")
    producer.flush(1)
    assert first.error is None and second.error is None
    assert (first.partition, second.partition) == (3, 3)
    assert fake.produced == [(b"first", 3), (b"second", 3)]


def test_unkeyed_records_failed_in_their_reports_are_sent_once_more(producer):
    fake = producer._producer
    queued = [producer.send("t", b"q1"), producer.send("t", b"q2")]
    fake.shrink(4)  # librdkafka learnt the new count while they waited
    started = time.monotonic()
    while (fake.reports or len(fake.produced) < 4) and time.monotonic() - started < 2:
        time.sleep(0.01)
    after = producer.send("t", b"after")
    producer.flush(1)
    assert [(d.error, d.partition) for d in queued] == [(None, 3), (None, 3)]
    assert after.error is None and after.partition == 3
    assert fake.produced == [(b"q1", 7), (b"q2", 7), (b"q1", 3), (b"q2", 3), (b"after", 3)]
    assert fake.lookups == 2, "counted at the start and once again, not per record"


def test_a_record_whose_partition_was_the_callers_is_not_moved(producer):
    fake = producer._producer
    fake.count = 4
    keyed = producer.send("t", b"x", partition=7)
    assert isinstance(keyed.error, KafkaException)
    assert keyed.error.args[0].code() == KafkaError._UNKNOWN_PARTITION
    assert fake.produced == []
    assert producer._counts.get("t") is None, "the stale count is forgotten"
    unkeyed = producer.send("t", b"y")
    assert producer._counts["t"] == 4
    producer.flush(1)
    assert unkeyed.error is None and unkeyed.partition == 3
