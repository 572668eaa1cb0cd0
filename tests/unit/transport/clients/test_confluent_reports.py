"""The confluent producer's delivery reports under gevent (not monkey-patched
here: the adapter is told it is): served on the hub without a thread per
report, and through a worker only while someone waits; without a broker."""
import threading
import time

import gevent

from flask_signalr_kafka.runtime import concurrency
from flask_signalr_kafka.runtime.concurrency import Runtime, Worker
from flask_signalr_kafka.transport.clients import confluent_producer


class FakeProducer:
    """librdkafka's producer: ``ack()`` makes the broker's answers ready;
    ``poll`` serves them (waiting really, in a worker's thread)."""

    def __init__(self, config):
        self.sent, self.ready = [], []
        self.cond = threading.Condition()
        self.polls = []

    def list_topics(self, topic=None, timeout=None):
        meta = type("T", (), {"error": None, "partitions": {0: None, 1: None}})()
        return type("M", (), {"topics": {"t": meta}})()

    def produce(self, topic, value, key, partition=None, on_delivery=None):
        self.sent.append(on_delivery)

    def ack(self):
        with self.cond:
            self.ready.extend(self.sent)
            self.sent.clear()
            self.cond.notify_all()

    def poll(self, timeout):
        self.polls.append(timeout)
        with self.cond:
            if timeout:
                self.cond.wait_for(lambda: self.ready, timeout)
            ready, self.ready = self.ready, []
        message = type("Msg", (), {"offset": lambda s: 7, "partition": lambda s: 1})()
        for callback in ready:
            callback(None, message)
        return len(ready)

    def __len__(self):
        return len(self.sent) + len(self.ready)

    def flush(self, timeout=None):
        self.ack()
        self.poll(0)


def hub_producer(monkeypatch):
    monkeypatch.setattr(confluent_producer.confluent_kafka, "Producer", FakeProducer)
    monkeypatch.setattr(confluent_producer, "gevent_patched", lambda: True)
    monkeypatch.setattr(concurrency, "gevent_patched", lambda: True)
    return confluent_producer.ConfluentProducer({}, Runtime("gevent", gevent.spawn, gevent.sleep))


def test_reports_are_served_on_the_hub_without_a_thread(monkeypatch):
    """Each report woke the hub from a thread (a worker's poll of up to
    0.5 s, then a hand-off back): now a timer while records are in flight
    serves them with ``poll(0)`` on the hub."""
    producer = hub_producer(monkeypatch)
    calls = []
    real = Worker.call
    monkeypatch.setattr(Worker, "call", lambda self, fn, *a: calls.append(fn) or real(self, fn, *a))
    fake = producer._producer
    settled = []
    try:
        first = producer.send("t", b"a", b"k")
        first.add_callback(lambda d: settled.append(d.offset))
        second = producer.send("t", b"b", b"k")
        fake.ack()
        started = time.monotonic()
        while not second.done and time.monotonic() - started < 2:
            gevent.sleep(0.005)
        assert second.done and time.monotonic() - started < confluent_producer.REPORT_TICK * 5
        assert first.done and settled == [7]
        assert calls == [], "no report went through a worker's thread"
        assert all(timeout == 0 for timeout in fake.polls)
    finally:
        producer.close(1)


def test_a_waiter_gets_its_report_through_a_worker_at_once(monkeypatch):
    producer = hub_producer(monkeypatch)
    fake = producer._producer
    monkeypatch.setattr(confluent_producer, "REPORT_TICK", 30)  # the timer would not do it
    try:
        delivery = producer.send("t", b"a", b"k")
        gevent.sleep(0.05)
        threading.Timer(0.1, fake.ack).start()  # the broker answers from its thread
        started = time.monotonic()
        delivery.get(5)
        took = time.monotonic() - started
        assert delivery.offset == 7 and took < 1, took
        assert confluent_producer.REPORT_WAIT in fake.polls
        assert producer._waiters == 0
    finally:
        producer.close(1)
