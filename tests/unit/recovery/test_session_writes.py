"""A connection's live session reaches Kafka: written at once when the
connection is accepted (its client holds its pid from then on, and a crash
of the dyno must not take the session along), and written again when Kafka
did not take it (issue 22, item 2: the first seconds of new topics, where a
partition's leader is named before it acts as one)."""
from types import SimpleNamespace

from kafka.errors import KafkaTimeoutError, NotLeaderForPartitionError

from flask_signalr_kafka.recovery.sessions import LIVE, decode_session
from tests.unit.recovery.test_recovery_state import _put, recovery


class Future:
    """A record's future whose fate the test decides."""

    def __init__(self):
        self.errbacks = []
        self.error = None

    def add_callback(self, fn, *args):
        pass

    def add_errback(self, fn, *args):
        if self.error is not None:  # as a client's future: called at once
            fn(*args, self.error)
        self.errbacks.append((fn, args))

    def fail(self, error):
        self.error = error
        for fn, args in self.errbacks:
            fn(*args, error)


def live_recovery():
    r = recovery()
    r.host = SimpleNamespace(get_rooms=lambda sid, namespace: [sid, "room"])
    r.store._publish = lambda key, value, partition: put(r, key, value, partition)
    return r


def put(r, key, value, partition):
    """The record is acked at once."""
    _put(r.store.reader, key, value, partition)
    return Future()


def stored(r, pid):
    value = r.store.reader.read(r.store.home, 0).sessions.get(f"s:{pid}".encode())
    return None if value is None else decode_session(value)


def test_a_new_connection_is_written_when_it_is_accepted():
    r = live_recovery()
    pid = r.new_pid()
    r.registered("sid~a", "/", pid, announced=True)
    session = stored(r, pid)  # no checkpoint round ran
    assert session is not None and session.state == LIVE and session.rooms == ["room"]


def test_a_write_kafka_refused_is_written_again():
    r = live_recovery()
    writes = []

    def publish(key, value, partition):
        writes.append(key)
        future = Future()
        if len(writes) == 1:  # the first one: a leader not yet acting as one
            future.fail(NotLeaderForPartitionError("not the leader yet"))
            return future
        return put(r, key, value, partition)

    r.store._publish = publish
    pid = r.new_pid()
    r.registered("sid~a", "/", pid, announced=True)
    assert stored(r, pid) is None
    r.saves._write_dirty()  # the next checkpoint round
    assert stored(r, pid).state == LIVE


def test_a_write_the_producer_raised_on_is_written_again():
    r = live_recovery()
    fail = [True]

    def publish(key, value, partition):
        if fail[0]:
            raise KafkaTimeoutError("no metadata")  # or await_produce's error
        return put(r, key, value, partition)

    r.store._publish = publish
    pids = [r.new_pid() for _ in range(3)]
    for n, pid in enumerate(pids):
        r.registered(f"sid~{n}", "/", pid, announced=False)  # never raises
    r.saves._write_dirty()
    fail[0] = False
    r.saves._write_dirty()
    assert all(stored(r, pid).state == LIVE for pid in pids)


def test_a_connection_that_left_is_not_written_again():
    r = live_recovery()
    futures = []

    def publish(key, value, partition):
        futures.append(Future())
        return futures[-1]

    r.store._publish = publish
    r.registered("sid~a", "/", r.new_pid(), announced=False)
    r.forget("sid~a", "/", "client namespace disconnect")
    futures[0].fail(NotLeaderForPartitionError("late"))
    assert not r.saves._dirty
