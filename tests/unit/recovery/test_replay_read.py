"""A plain client's replay read under a recovery storm (issue 22, item 5):
its deadline counts from its last progress, not from its start, and its
consumers are reused between reads instead of one connected per attempt."""
from types import SimpleNamespace

import pytest

from flask_signalr_kafka.recovery import replay
from flask_signalr_kafka.recovery.sessions import Session
from flask_signalr_kafka.transport.clients.kafka_client import TopicPartition
from tests.unit.recovery.test_replay_once import LogConsumer

TP = TopicPartition("t-send-all", 0)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


class SlowConsumer(LogConsumer):
    """A consumer on a busy broker: each poll takes ``step`` seconds of the
    test's clock and returns ``per_poll`` records (none once stuck)."""

    def __init__(self, clock, records, step=5.0, per_poll=1, stuck_at=None):
        super().__init__({})
        self.clock, self.step, self.per_poll, self.stuck_at = clock, step, per_poll, stuck_at
        self.records = records
        self.closed = False

    def pause(self, *tps):
        pass

    def poll(self, timeout_ms=0):
        self.clock.now += self.step
        out = {}
        for tp in self.assigned:
            start = self.at[tp]
            if self.stuck_at is not None and start >= self.stuck_at:
                continue
            batch = [r for r in self.records if start <= r.offset < start + self.per_poll]
            if batch:
                out[tp] = batch
                self.at[tp] = batch[-1].offset + 1
        return out

    def close(self):
        self.closed = True


def records(n):
    return [SimpleNamespace(offset=i, timestamp=i, partition=0, key=None, value=b"")
            for i in range(n)]


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(replay, "time", SimpleNamespace(monotonic=clock.monotonic,
                                                        sleep=lambda s: None))
    return clock


def test_a_slow_read_that_progresses_is_not_cut_off(clock):
    """20 records, 5 s apart: 100 s in all, three times the idle timeout.
    Before, a fixed 30 s deadline failed it and threw its work away."""
    consumer = SlowConsumer(clock, records(20))
    found = replay.read_ranges(consumer, {("send-all", TP): (0, 20)}, lambda s: None)
    assert [r.offset for _, r in found] == list(range(20))
    assert clock.now - 1000.0 > 3 * replay.IDLE_TIMEOUT


def test_a_read_that_stops_progressing_fails_after_the_idle_timeout(clock):
    consumer = SlowConsumer(clock, records(20), step=1.0, stuck_at=5)
    with pytest.raises(TimeoutError, match="nothing read for 30 s"):
        replay.read_ranges(consumer, {("send-all", TP): (0, 20)}, lambda s: None)
    # It ran the idle timeout after its last record, not from its start.
    assert replay.IDLE_TIMEOUT < clock.now - 1000.0 < replay.IDLE_TIMEOUT + 10


def test_replay_consumers_are_reused_and_a_failed_one_is_closed():
    made = []

    def new_consumer():
        made.append(SlowConsumer(Clock(), records(3), step=0, per_poll=3))
        return made[-1]

    pool = replay.ConsumerPool(new_consumer, keep=2)
    session = Session(2, "sid~a", "/", [], "host_1", "ab", 0.0)
    for _ in range(3):
        replay.read_missed(pool.get, lambda base: f"t-{base}", session, [],
                           {("send-all", 0): (0, 3)}, pause=lambda s: None, release=pool.put)
    assert len(made) == 1 and not made[0].closed

    def broken(tps):
        raise RuntimeError("the broker went away")

    made[0].assign = broken
    with pytest.raises(RuntimeError):
        replay.read_missed(pool.get, lambda base: f"t-{base}", session, [],
                           {("send-all", 0): (0, 3)}, pause=lambda s: None, release=pool.put)
    assert made[0].closed  # not given back: its state is unknown
    pool.close()
