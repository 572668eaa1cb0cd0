"""The confluent consumer's poll thread under gevent (not monkey-patched
here: ``time.sleep`` blocks the real thread it runs in): batches handed to
the consumer's greenlet with one wake-up each, a bounded queue, and no
record of an old assignment after a seek; without a broker."""
import threading
import time

import gevent
import pytest

from flask_signalr_kafka.runtime.concurrency import Runtime, Worker
from flask_signalr_kafka.transport.clients import confluent_poll_thread, librdkafka
from flask_signalr_kafka.transport.clients.confluent_consumer import ConfluentConsumer
from flask_signalr_kafka.transport.clients.confluent_poll_thread import PollThread
from flask_signalr_kafka.transport.clients.kafka_client import TopicPartition
from tests.unit.transport.clients.test_kafka_clients import FakeMessage

T0, T1 = TopicPartition("t", 0), TopicPartition("u", 1)


class ThreadedFake:
    """librdkafka's consumer as a poll thread sees it: ``poll`` blocks
    (really) until a record is queued or the timeout passes."""

    def __init__(self):
        self.calls = []
        self.queue = []
        self.lock = threading.Condition()
        self.polls = 0
        self.polling = False
        #: Calls made while a poll was under way (the binding would block them).
        self.overlapped = []
        self.closed = False
        #: When set, a poll that finds records waits for it before returning.
        self.hold: threading.Event | None = None
        self.holding = threading.Event()

    def put(self, *messages):
        with self.lock:
            self.queue.extend(messages)
            self.lock.notify_all()

    def incremental_assign(self, tps):
        self.check()
        self.calls.append(("assign", [(tp.topic, tp.partition, tp.offset) for tp in tps]))

    def incremental_unassign(self, tps):
        self.check()
        self.calls.append(("unassign", [(tp.topic, tp.partition) for tp in tps]))

    def pause(self, tps):
        self.check()
        self.calls.append(("pause", [tp.partition for tp in tps]))

    def check(self):
        if self.polling:
            self.overlapped.append(threading.current_thread().name)

    def poll(self, timeout):
        self.polls += 1
        self.polling = True
        try:
            with self.lock:
                self.lock.wait_for(lambda: self.queue, timeout)
                first = self.queue.pop(0) if self.queue else None
            if first is not None and self.hold is not None:
                self.holding.set()
                self.hold.wait(5)
            return first
        finally:
            self.polling = False

    def get_watermark_offsets(self, tp, cached=False):
        return (0, 1000)

    def consume(self, n, timeout):
        with self.lock:
            out, self.queue = self.queue[:n], self.queue[n:]
        return out

    def close(self):
        self.closed = True


def threaded_consumer(fake):
    consumer = ConfluentConsumer.__new__(ConfluentConsumer)
    consumer._runtime = Runtime("gevent", gevent.spawn, gevent.sleep)
    consumer._consumer = fake
    consumer._setup()
    consumer._closed = False
    consumer._queries = type("Q", (), {"release": lambda self: None})()
    consumer._thread = PollThread(consumer)
    return consumer


def poll_until(consumer, count, timeout=5.0):
    got = {}
    deadline = time.monotonic() + timeout
    while sum(map(len, got.values())) < count and time.monotonic() < deadline:
        for tp, batch in consumer.poll(200).items():
            got.setdefault(tp, []).extend(r.offset for r in batch)
    return got


def test_records_reach_the_greenlet_in_batches_without_a_thread_call_per_poll(monkeypatch):
    """Each poll was a thread-pool round trip (hub -> thread -> hub, a new
    watcher each); now a thread polls on its own and the greenlet only
    takes what it queued, woken once per batch, never per record."""
    calls = []
    monkeypatch.setattr(Worker, "call", lambda self, fn, *a: calls.append(fn) or fn(*a))
    fake = ThreadedFake()
    consumer = threaded_consumer(fake)
    wakes = []
    thread = consumer._thread
    thread._watcher.stop()
    thread._watcher.start(lambda: (wakes.append(1), thread._ready.set()))
    consumer.assign([T0, T1])
    consumer.seek(T0, 0)
    consumer.seek(T1, 10)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(1000)])
    try:
        assert consumer.poll(300) == {}  # nothing yet: the greenlet waited, the hub went on
        assert len(ticks) >= 10
        fake.put(*[FakeMessage("t", 0, o) for o in range(50)],
                 *[FakeMessage("u", 1, o) for o in range(10, 20)])
        got = poll_until(consumer, 60)
    finally:
        ticker.kill()
        consumer.close()
    assert got == {T0: list(range(50)), T1: list(range(10, 20))}
    assert consumer._positions == {T0: 50, T1: 20}
    assert calls == [], "no poll went through a worker"
    assert len(wakes) <= 2, f"{len(wakes)} wake-ups for 60 records in one batch"
    assert fake.closed and fake.calls == [("assign", [("t", 0, 0), ("u", 1, 10)])]
    assert fake.overlapped == []
    assert consumer.highwater(T0) == 1000


def test_the_poll_thread_stops_when_its_queue_is_full(monkeypatch):
    monkeypatch.setattr(librdkafka, "BATCH", 2)  # what a fetch reads
    monkeypatch.setattr(confluent_poll_thread, "BATCH", 2)  # what a take hands over
    fake = ThreadedFake()
    fake.put(*[FakeMessage("t", 0, o) for o in range(40)])
    consumer = threaded_consumer(fake)
    consumer.assign([T0])
    consumer.seek(T0, 0)
    consumer._sync()
    gevent.sleep(0.3)
    try:
        assert len(consumer._thread._batches) == confluent_poll_thread.QUEUED_BATCHES
        assert len(fake.queue) == 40 - 2 * confluent_poll_thread.QUEUED_BATCHES
        got = poll_until(consumer, 40)
    finally:
        consumer.close()
    assert got == {T0: list(range(40))}


@pytest.mark.parametrize("target", [3, 500])
def test_no_record_of_an_old_assignment_after_a_seek(target):
    """A seek is made by the poll thread after the poll under way (the
    binding makes an assign wait for it: from the hub it waited for ever
    behind back-to-back polls); what that poll and earlier ones read of the
    partition is dropped, and reading goes on from the sought offset."""
    fake = ThreadedFake()
    consumer = threaded_consumer(fake)
    consumer.assign([T0, T1])
    consumer.seek(T0, 100)
    consumer.seek(T1, 0)
    fake.put(FakeMessage("t", 0, 100), FakeMessage("u", 1, 0))
    try:
        assert poll_until(consumer, 2) == {T0: [100], T1: [0]}
        fake.put(FakeMessage("t", 0, 101))  # queued, not taken before the seek
        deadline = time.monotonic() + 5
        while not consumer._thread._batches and time.monotonic() < deadline:
            gevent.sleep(0.01)
        fake.hold = threading.Event()
        fake.put(FakeMessage("t", 0, 102), FakeMessage("u", 1, 1))
        assert fake.holding.wait(5)  # the thread's poll is under way
        consumer.seek(T0, target)
        started = time.monotonic()
        consumer.poll(0)  # the seek is queued, the hub goes on
        assert time.monotonic() - started < 0.1
        fake.hold.set()
        fake.hold = None
        deadline = time.monotonic() + 2
        while len(fake.calls) < 3 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        fake.put(FakeMessage("t", 0, target), FakeMessage("t", 0, target + 1))
        got = poll_until(consumer, 3, timeout=2)
    finally:
        consumer.close()
    assert got == {T0: [target, target + 1], T1: [1]}
    assert fake.calls[1:] == [("unassign", [("t", 0)]), ("assign", [("t", 0, target)])]
    assert fake.overlapped == []
    assert consumer.position(T0) == target + 2
