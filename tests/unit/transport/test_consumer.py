"""TopicConsumer against a fake KafkaConsumer, in gevent greenlets.

The test process is not monkey-patched; the fake yields with gevent.sleep,
and the tests wait with gevent.sleep too, so the consumer greenlet runs.
"""

import logging
import time
from types import SimpleNamespace

import gevent
import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from flask_signalr_kafka.errors import MalformedRecord
from flask_signalr_kafka.runtime.concurrency import Runtime
from flask_signalr_kafka.transport.consumer import TopicConsumer

#: gevent's own primitives: this process is not monkey-patched.
GREENLETS = Runtime("gevent", gevent.spawn, gevent.sleep)

TOPIC = "t-send-all"
LOGGER = "flask_signalr_kafka"


def tp(partition):
    return TopicPartition(TOPIC, partition)


def rec(partition, offset, value=b"ok", key=None):
    return SimpleNamespace(topic=TOPIC, partition=partition, offset=offset, key=key, value=value,
                           timestamp=0)


class FakeCluster:
    """The state the fake consumers see. ``script`` items are consumed by
    poll in order: a dict is returned as a batch, an exception is raised, a
    callable is called (then poll returns no records)."""

    def __init__(self, partitions=(0,), end=None, begin=None):
        self.partitions = set(partitions)
        self.end = dict(end or {})
        self.begin = dict(begin or {})
        self.high = {}
        self.script = []
        self.consumers = []
        self.offset_lookups = []
        self.failed_at = None
        self.observed = None  # the TopicConsumer, to look at ready from the fake

    def next_poll(self):
        if not self.script:
            return {}
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            self.failed_at = time.monotonic()
            raise item
        if callable(item):
            item()
            return {}
        return item


class FakeKafkaConsumer:
    cluster: FakeCluster = None

    def __init__(self, **config):
        self.cluster = type(self).cluster
        self.config = config
        self.assigned = None
        self.seeks = []
        self.ready_at_seek = []
        self.closed = False
        self.created_at = time.monotonic()
        self.cluster.consumers.append(self)

    def partitions_for_topic(self, topic):
        assert topic == TOPIC
        return set(self.cluster.partitions)

    def assign(self, partitions):
        self.assigned = list(partitions)

    def end_offsets(self, partitions):
        self.cluster.offset_lookups.append(("end", len(self.cluster.consumers) - 1))
        return {p: self.cluster.end.get(p.partition, 0) for p in partitions}

    def beginning_offsets(self, partitions):
        self.cluster.offset_lookups.append(("begin", len(self.cluster.consumers) - 1))
        return {p: self.cluster.begin.get(p.partition, 0) for p in partitions}

    def seek(self, partition, offset):
        assert partition in self.assigned
        self.seeks.append((partition.partition, offset))
        self.ready_at_seek.append(self.cluster.observed.ready.is_set())

    def poll(self, timeout_ms=0, max_records=None, update_offsets=True):
        assert not self.closed
        gevent.sleep(0.001)
        return self.cluster.next_poll()

    def highwater(self, partition):
        return self.cluster.high.get(partition.partition)

    def close(self, *args, **kwargs):
        self.closed = True


#: A client whose consumers are fakes (the core asks its client for them).
FAKE_CLIENT = SimpleNamespace(consumer=lambda config, runtime: FakeKafkaConsumer(**config))


def wait_until(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        gevent.sleep(0.002)


@pytest.fixture
def make(monkeypatch, caplog):
    """make(cluster, handler, **kwargs) -> a started TopicConsumer."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    started = []

    def _make(cluster, handler, config=None, restart_delay=0.01, **kwargs):
        monkeypatch.setattr(FakeKafkaConsumer, "cluster", cluster)
        tc = TopicConsumer(TOPIC, handler, config or {"bootstrap_servers": "fake:1"},
                           GREENLETS, client=FAKE_CLIENT, **kwargs)
        tc.restart_delay = restart_delay
        cluster.observed = tc
        started.append(tc)
        tc.start()
        return tc

    yield _make
    for tc in started:
        tc.stop()
        assert not tc.running


def logged(caplog, level):
    return [r for r in caplog.records if r.levelno == level and r.name.startswith(LOGGER)]


def test_records_are_handled_from_the_end_offsets(make):
    cluster = FakeCluster(partitions=(1, 0), end={0: 4, 1: 9})
    cluster.script = [{tp(0): [rec(0, 4, b"a"), rec(0, 5, b"b")]}, {tp(1): [rec(1, 9, b"c")]}]
    seen = []
    tc = make(
        cluster,
        lambda r: seen.append(r.value),
        config={"bootstrap_servers": "x:1", "group_id": None},
    )
    wait_until(lambda: len(seen) == 3)
    assert seen == [b"a", b"b", b"c"]
    first = cluster.consumers[0]
    assert first.config == {"bootstrap_servers": "x:1", "group_id": None}
    assert first.assigned == [tp(0), tp(1)]
    assert first.seeks == [(0, 4), (1, 9)]
    assert tc.positions == {tp(0): 6, tp(1): 10}
    assert len(cluster.consumers) == 1


def test_malformed_record_is_logged_once_and_skipped(make, caplog):
    cluster = FakeCluster(partitions=(0, 3), end={0: 0, 3: 5})
    cluster.script = [
        {tp(3): [rec(3, 5, b"ok1"), rec(3, 6, b"bad"), rec(3, 7, b"ok2")]},
        {tp(0): [rec(0, 0, b"ok3")]},
    ]
    seen = []

    def handler(record):
        if record.value == b"bad":
            raise MalformedRecord("garbled value")
        seen.append((record.partition, record.offset))

    tc = make(cluster, handler)
    wait_until(lambda: len(seen) == 3)
    assert seen == [(3, 5), (3, 7), (0, 0)]
    warnings = logged(caplog, logging.WARNING)
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert TOPIC in message
    assert "partition 3" in message
    assert "offset 6" in message
    assert "garbled value" in message
    assert logged(caplog, logging.ERROR) == []
    assert tc.positions == {tp(0): 1, tp(3): 8}
    assert len(cluster.consumers) == 1


def test_handler_error_is_logged_and_skipped(make, caplog):
    cluster = FakeCluster(partitions=(0,), end={0: 20})
    cluster.script = [{tp(0): [rec(0, 20, b"boom"), rec(0, 21, b"fine")]}]
    seen = []

    def handler(record):
        if record.value == b"boom":
            raise KeyError("no such sid")
        seen.append(record.offset)

    tc = make(cluster, handler)
    wait_until(lambda: seen == [21])
    errors = logged(caplog, logging.ERROR)
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert TOPIC in message and "partition 0" in message and "offset 20" in message
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is KeyError
    assert tc.positions == {tp(0): 22}
    assert len(cluster.consumers) == 1  # not restarted


def test_failing_poll_restarts_at_the_saved_positions(make, caplog):
    cluster = FakeCluster(partitions=(0, 1), end={0: 10, 1: 20})
    cluster.script = [
        {tp(0): [rec(0, 10), rec(0, 11)]},
        RuntimeError("connection lost"),
        {tp(1): [rec(1, 20, b"after")]},
    ]
    seen = []
    tc = make(cluster, lambda r: seen.append((r.partition, r.offset)), restart_delay=0.03)
    wait_until(lambda: len(seen) == 3)
    assert seen == [(0, 10), (0, 11), (1, 20)]
    assert len(cluster.consumers) == 2
    first, second = cluster.consumers
    assert first.closed
    assert first.seeks == [(0, 10), (1, 20)]
    assert second.seeks == [(0, 12), (1, 20)]
    assert second.config == first.config
    assert second.created_at - cluster.failed_at >= 0.025  # after restart_delay
    # positions came from the log end once, at startup only
    assert cluster.offset_lookups == [("end", 0)]
    errors = logged(caplog, logging.ERROR)
    assert len(errors) == 1
    assert TOPIC in errors[0].getMessage()
    assert "connection lost" in str(errors[0].exc_info[1])
    assert tc.positions == {tp(0): 12, tp(1): 21}
    assert tc.running


def test_ready_is_set_after_the_seek(make):
    cluster = FakeCluster(partitions=(0, 1, 2), end={0: 1, 1: 2, 2: 3})
    tc = make(cluster, lambda r: None)
    assert not tc.ready.is_set()  # the greenlet has not run yet
    wait_until(tc.ready.is_set)
    first = cluster.consumers[0]
    assert first.seeks == [(0, 1), (1, 2), (2, 3)]
    assert first.ready_at_seek == [False, False, False]


def test_not_ready_while_the_topic_is_missing(make, caplog):
    cluster = FakeCluster(partitions=(), end={0: 7})
    created = []

    def on_missing_topic():
        created.append(cluster.observed.ready.is_set())
        if len(created) == 2:
            cluster.partitions = {0}

    tc = make(cluster, lambda r: None, on_missing_topic=on_missing_topic, restart_delay=0.005)
    wait_until(tc.ready.is_set)
    assert created == [False, False]
    assert cluster.consumers[0].seeks == [(0, 7)]
    assert any(TOPIC in r.getMessage() for r in logged(caplog, logging.WARNING))


def test_highwater_behind_position_resets_to_zero(make, caplog):
    cluster = FakeCluster(partitions=(0, 1), end={0: 50, 1: 7})
    cluster.high = {0: 3, 1: 7}  # partition 0 lost its log; partition 1 is fine

    def lose_the_log():
        cluster.end[0] = 3  # a fresh lookup agrees

    cluster.script = [lose_the_log]
    tc = make(cluster, lambda r: None, check_interval=0)
    wait_until(lambda: len(cluster.consumers) >= 2 and len(cluster.consumers[1].seeks) == 2)
    first, second = cluster.consumers[:2]
    assert first.seeks == [(0, 50), (1, 7)]
    assert first.closed
    assert second.seeks == [(0, 0), (1, 7)]
    assert tc.positions == {tp(0): 0, tp(1): 7}
    warnings = [r.getMessage() for r in logged(caplog, logging.WARNING)]
    assert any("partition 0" in m and "offset 3" in m for m in warnings)
    assert not any("partition 1" in m for m in warnings)
    assert logged(caplog, logging.ERROR) == []  # a reassignment, not a crash
    # The startup lookup, then the one that confirmed the loss.
    assert cluster.offset_lookups == [("end", 0), ("end", 0)]


@pytest.mark.parametrize("lookup", ["holds our position", "fails"])
def test_a_stale_highwater_behind_position_is_not_taken_for_a_lost_log(make, lookup):
    """A cluster restart: the last fetch got the lagging watermark of a new
    leader, then no fetch got through for many checks. Only a fresh lookup
    that agrees may reread the partition (23 records were delivered twice)."""
    cluster = FakeCluster(partitions=(0,), end={0: 23})
    cluster.high = {0: 22}

    def lookup_fails(partitions):
        cluster.offset_lookups.append(("failed", 0))
        raise KafkaTimeoutError("Failed to get offsets by timestamps in 30000 ms")

    checks = []
    tc = make(cluster, lambda r: None, check_interval=0)
    wait_until(lambda: tc.ready.is_set())
    if lookup == "fails":
        cluster.consumers[0].end_offsets = lookup_fails
    cluster.script = [lambda: checks.append(1)] * 20
    wait_until(lambda: not cluster.script and len(cluster.offset_lookups) >= 3)
    assert len(cluster.consumers) == 1  # never reassigned
    assert tc.positions == {tp(0): 23}


def test_no_reset_when_highwater_is_at_or_past_position(make):
    cluster = FakeCluster(partitions=(0,), end={0: 5})
    cluster.high = {0: 6}  # the log holds record 5: after it, position == highwater
    cluster.script = [{tp(0): [rec(0, 5)]}, lambda: None, lambda: None]
    seen = []
    tc = make(cluster, lambda r: seen.append(r.offset), check_interval=0)
    wait_until(lambda: seen == [5] and not cluster.script)
    gevent.sleep(0.01)  # a few more poll/check rounds
    assert len(cluster.consumers) == 1
    assert tc.positions == {tp(0): 6}


def test_vanished_topic_is_read_from_its_beginning_when_recreated(make):
    cluster = FakeCluster(partitions=(0, 1), end={0: 30, 1: 40}, begin={0: 0, 1: 0})
    recreated = []

    def on_missing_topic():
        recreated.append(True)
        cluster.partitions = {0, 1}

    cluster.script = [lambda: cluster.partitions.clear()]
    make(
        cluster,
        lambda r: None,
        check_interval=0,
        on_missing_topic=on_missing_topic,
        restart_delay=0.005,
    )
    wait_until(lambda: len(cluster.consumers) >= 2 and len(cluster.consumers[1].seeks) == 2)
    assert recreated
    assert cluster.consumers[0].seeks == [(0, 30), (1, 40)]
    assert cluster.consumers[1].seeks == [(0, 0), (1, 0)]
    assert cluster.offset_lookups == [("end", 0), ("begin", 1)]


def test_stop_closes_the_consumer(make):
    cluster = FakeCluster(partitions=(0,), end={0: 0})
    tc = make(cluster, lambda r: None)
    wait_until(tc.ready.is_set)
    assert tc.running
    tc.stop()
    assert not tc.running
    assert cluster.consumers[0].closed
