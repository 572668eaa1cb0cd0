"""Connection state recovery's pure parts: settings, the handshake, offsets,
the window of a dropped connection, and the session store."""
import time
from types import SimpleNamespace

import pytest

from flask_signalr_kafka import ConnectionStateRecovery
from flask_signalr_kafka.errors import MalformedRecord
from flask_signalr_kafka.recovery.handshake import RecoveryFailed
from flask_signalr_kafka.recovery.recovery import Recovery
from flask_signalr_kafka.recovery.recovery_options import options_from
from flask_signalr_kafka.recovery.replay import step_of
from flask_signalr_kafka.recovery.sessions import (
    LIVE,
    MOVED,
    SAVED,
    Checkpoint,
    RefPoint,
    Session,
    SessionStore,
    _Partition,
    decode_session,
    encode,
    home_partition,
    new_pid,
    partition_of,
)
from flask_signalr_kafka.recovery.steps import DROP_WINDOW
from flask_signalr_kafka.runtime.concurrency import Runtime
from flask_signalr_kafka.wire import offsets


def test_options():
    assert options_from(False) is None and options_from(None) is None
    assert options_from(True) == ConnectionStateRecovery()
    custom = ConnectionStateRecovery(max_disconnection_duration=5)
    assert options_from(custom) is custom
    with pytest.raises(TypeError, match="connection_state_recovery must be"):
        options_from("yes")
    with pytest.raises(ValueError, match="max_disconnection_duration"):
        ConnectionStateRecovery(max_disconnection_duration=0)
    with pytest.raises(ValueError, match="max_replay_records"):
        ConnectionStateRecovery(max_replay_records=1.5)


@pytest.mark.parametrize(("auth", "expected"), [
    (None, (None, None, False, None)),
    ({"token": "t"}, (None, None, False, {"token": "t"})),
    ({"pid": "p", "offset": "a.1", "token": "t"}, ("p", "a.1", True, {"token": "t"})),
    ({"pid": "p"}, ("p", None, True, None)),
    ({"csr": True, "user": "u"}, (None, None, True, {"user": "u"})),
    ({"pid": 3, "offset": 4}, (None, None, False, None)),
])
def test_split_auth(auth, expected):
    assert Recovery.split_auth(auth) == expected


def test_offsets_are_read_only_from_their_own_dyno():
    assert step_of("ab12.42", "ab12") == 42
    assert step_of("ab12.42.3.0.a1+2", "ab12") == 42
    assert step_of("ffff.42", "ab12") is None
    assert step_of("hello", "ab12") is None  # a string argument the JS client kept
    assert step_of("ab12.x", "ab12") is None
    assert step_of(None, "ab12") is None


def test_full_offsets_round_trip_and_untrusted_ones_are_refused():
    text = offsets.full("ab12", 42, 7, 3, {("send-all", 1): 2, ("send-group", 9): 15})
    assert text == "ab12.42.7.3.a1+2,g9+15"
    assert offsets.parse(text) == ("ab12", 42, 7, 3, {("send-all", 1): 2, ("send-group", 9): 15})
    assert offsets.parse("ab12.42.7.0.") == ("ab12", 42, 7, 0, {})
    assert offsets.parse(offsets.short("ab12", 5)) == ("ab12", 5, None, 0, {})
    for bad in ("ab12.42.7.3.x1+2", "ab12.42.7.3.a+2", "ab12.42.7.-1.", "a.b.c", 5, "x" * 5000):
        assert offsets.parse(bad) is None, bad


def test_pids_name_their_partition():
    pid = new_pid(7)
    assert partition_of(pid, 10) == 7
    assert partition_of(pid, 5) is None  # the topic shrank: not ours to read
    assert partition_of("hJ8s-random", 10) is None
    assert 0 <= home_partition("host_1", 10) < 10


class FakeReader:
    """What SessionReader would have read, without Kafka."""

    def __init__(self):
        self.parts = {}

    def partition_count(self):
        return 10

    def read(self, partition, since):
        return self.parts.setdefault(partition, _Partition(position=0))

    def cached(self, partition):
        return self.parts.get(partition)

    def held(self):
        return 0


class FakeCore:
    """The Kafka core's public face, as recovery uses it, without Kafka."""

    server_name = "host_1"
    topic_config = SimpleNamespace(name=str)
    runtime = Runtime("threading", None, time.sleep)

    def add_readiness(self, event):
        pass

    def new_consumer(self, earliest=False):
        raise AssertionError("no Kafka here")

    def partition_count(self, base):
        return 10

    def positions(self, bases):
        return {}


def checkpoint_of(r):
    return r.log.checkpoint(r.owner, [], time.sleep, DROP_WINDOW)


def recovery(**options):
    # The host: a server with python-engineio's default ping settings.
    host = SimpleNamespace(server=SimpleNamespace(eio=SimpleNamespace(ping_interval=25,
                                                                      ping_timeout=20)))
    r = Recovery(FakeCore(), host, ConnectionStateRecovery(**options))
    r.store.reader = FakeReader()
    r.store._publish = lambda key, value, partition: _put(r.store.reader, key, value, partition)
    return r


def _put(reader, key, value, partition):
    part = reader.read(partition, 0)
    table = {b"s": part.sessions, b"d": part.checkpoints, b"r": part.refs}[key.encode()[:1]]
    if value is None:
        table.pop(key.encode(), None)
    else:
        table[key.encode()] = value
    # A future that has landed: callbacks run at once, errbacks never.
    return SimpleNamespace(add_callback=lambda fn: fn(None), add_errback=lambda fn: None)


def test_windows_keep_what_was_addressed_to_each_connection_in_order():
    r = recovery()
    sid, rooms = "sid~a", ["r1", "user:alice"]
    r.log.step([["send-group", "r1", 3, 10]])
    r.log.step([["send-group", "other", 3, 11]])
    r.log.step([["send-all", None, 0, 5]])
    r.log.step([["send-user", "alice", 7, 2], ["send-user", "bob", 8, 1]])
    r.log.step([["send-conn", sid, 1, 9], ["send-conn", "sid~b", 1, 10]])
    windows = r.log.windows({sid: rooms, "sid~b": []}, 60)
    assert windows[sid] == ([(1, "send-group", 3, 10), (3, "send-all", 0, 5),
                             (4, "send-user", 7, 2), (5, "send-conn", 1, 9)], True)
    assert windows["sid~b"] == ([(3, "send-all", 0, 5), (5, "send-conn", 1, 10)], True)


def test_window_is_not_exact_when_a_record_was_never_acked():
    r = recovery()
    r.log.step([["send-all", None, -1, -1]])
    assert r.log.windows({"sid~a": []}, 60) == {"sid~a": ([], False)}


def test_window_is_not_exact_when_the_ring_forgot_part_of_it():
    r = recovery(window_steps=2)
    for offset in range(3):
        r.log.step([["send-all", None, 0, offset]])
    window, exact = r.log.windows({"sid~a": []}, 60)["sid~a"]
    assert [w[3] for w in window] == [1, 2] and not exact


def test_full_offsets_count_from_the_acked_reference_point():
    r = recovery()
    assert offsets.parse(r.log.step([["send-all", None, 0, 4]])).ref is None  # no reference yet
    r.log.write_ref(r.owner, [], r.store.put_ref)  # acked at once by the fake publisher
    r.log.step([["send-all", None, 0, 5]])
    r.log.next_emit()
    last = offsets.parse(r.log.step([["send-group", "r1", 3, 10]]))
    assert (last.ref, last.emits) == (1, 1)
    # The reference point had no position on these slots: counted from 0.
    assert last.slots == {("send-all", 0): 6, ("send-group", 3): 11}
    assert offsets.parse(r.log.step([["send-all", None, 0, 6]], only="sid~a")).ref is None


def test_a_full_offset_restores_exactly_what_the_client_had():
    r = recovery()
    positions = [("send-all", 0, 100), ("send-group", 3, 50)]
    # host_2 wrote it to its own home partition.
    _put(r.store.reader, "r:host_2:4", encode(RefPoint("host_2", "cd", 4, time.time(),
                                                       positions, 20)),
         home_partition("host_2", 10))
    session = Session(SAVED, "sid~a", "/", ["r1"], "host_2", "cd", time.time(),
                      [("send-all", 0, 120), ("send-group", 3, 60)], 30,
                      [(9, "send-all", 0, 119)])
    exact = r.handshake.resume.exactly(session, "cd.77.4.2.a0+3")
    assert exact.positions == [("send-all", 0, 103), ("send-group", 3, 50)]
    assert (exact.emit_seq, exact.window, exact.exact) == (22, [], True)
    # Another dyno's offset, a short one, or a reference point the topic lost.
    for offset in ("ab.77.4.2.a0+3", "cd.77", "cd.77.5.2.a0+3", None):
        assert r.handshake.resume.exactly(session, offset) is session


def test_a_dead_dynos_checkpoint_tail_is_cut_at_the_clients_step():
    r = recovery()
    now = time.time()
    checkpoint = Checkpoint("host_2", "cd", now, [("send-all", 0, 10)], emit_seq=5, step=12,
                            tail_from=10, tail_emit_seq=3,
                            tail=[(10, "send-all", 0, 7), (11, "send-group", 4, 1),
                                  (12, "send-all", 0, 9)],
                            emit_steps=[(11, 4), (12, 5)])
    live = Session(LIVE, "sid~a", "/", [], "host_2", "cd", now)
    cut = r.handshake.resume.from_checkpoint(live, checkpoint, 10)
    # Its rooms hold no send-group slot 4: only what could be for it.
    assert (cut.window, cut.emit_seq, cut.exact) == ([(12, "send-all", 0, 9)], 3, True)
    assert r.handshake.resume.from_checkpoint(live, checkpoint, None).window == [
        (10, "send-all", 0, 7), (12, "send-all", 0, 9)]
    assert r.handshake.resume.from_checkpoint(live, checkpoint, 12).emit_seq == 5
    assert not r.handshake.resume.from_checkpoint(live, checkpoint, 3).exact  # older than the tail


def test_checkpoint_tail_leaves_out_a_record_never_acked():
    """Its own record not acked yet is at or past the dyno's position: the
    replay's ranges read it, so the tail neither holds it nor stops at it."""
    r = recovery()
    r.log.step([["send-all", None, 0, 1]])
    r.log.next_emit()
    r.log.step([["send-all", None, -1, -1]])  # its own record, never acked
    r.log.step([["send-all", None, 0, 2]])
    checkpoint = checkpoint_of(r)
    assert (checkpoint.step, checkpoint.tail_from, checkpoint.tail_emit_seq) == (3, 1, 0)
    assert checkpoint.tail == [(1, "send-all", 0, 1), (3, "send-all", 0, 2)]
    assert checkpoint.emit_steps == [(2, 1)] and checkpoint.tail_whole


def test_a_client_without_an_offset_is_not_recovered_from_a_cut_tail():
    r = recovery()
    now = time.time()
    cut = Checkpoint("host_2", "cd", now, [], emit_seq=0, step=9, tail_from=5,
                     tail=[(5, "send-all", 0, 7)], tail_whole=False)
    live = Session(LIVE, "sid~a", "/", [], "host_2", "cd", now)
    assert not r.handshake.resume.from_checkpoint(live, cut, None).exact
    assert r.handshake.resume.from_checkpoint(live, cut, 6).exact  # its offset says where it stood


def test_an_unknown_or_foreign_pid_is_a_new_connection():
    r = recovery()
    for pid in ("not-ours", new_pid(3)):
        with pytest.raises(RecoveryFailed, match="unknown"):
            r.handshake._restorable(pid, "/", None)


def test_store_places_sessions_at_home_and_points_there_from_the_pid():
    reader = FakeReader()
    store = SessionStore(lambda k, v, p: _put(reader, k, v, p), reader, "host_1", max_age=10)
    origin = (store.home + 1) % 10  # the pid of a client first accepted elsewhere
    pid = new_pid(origin)
    store.put(pid, Session(LIVE, "sid~a", "/", ["r"], "host_1", "ab", time.time()))
    store.put(pid, Session(LIVE, "sid~a", "/", ["r", "s"], "host_1", "ab", time.time()))
    (pointer,) = reader.parts[origin].sessions.values()
    assert decode_session(pointer).state == MOVED
    found, where = store.find(pid)  # no hint: through the pointer
    assert (found.rooms, where) == (["r", "s"], store.home)
    assert store.find(pid, hint=store.home)[0].rooms == ["r", "s"]
    # Another dyno takes it over: the copy here goes, its pointer wins.
    other = SessionStore(lambda k, v, p: _put(reader, k, v, p), reader, "host_9", max_age=10)
    other.taken_from(pid, "host_1")
    other.put(pid, Session(LIVE, "sid~a", "/", ["r", "s"], "host_9", "cd", time.time()))
    assert store.find(pid, hint=store.home)[0].owner == "host_9"
    other.delete(pid)
    assert store.find(pid) == (None, None)


def test_store_prunes_what_can_no_longer_be_restored():
    reader = FakeReader()
    store = SessionStore(lambda k, v, p: _put(reader, k, v, p), reader, "host_1", max_age=10)
    now = time.time()
    pids = {name: new_pid(store.home) for name in ("old", "new", "orphan", "live")}
    store.put(pids["old"], Session(SAVED, "sid~a", "/", [], "host_1", "ab", now - 11))
    store.put(pids["new"], Session(SAVED, "sid~b", "/", [], "host_1", "ab", now))
    store.put(pids["orphan"], Session(LIVE, "sid~c", "/", [], "gone", "cd", now - 30))
    store.put(pids["live"], Session(LIVE, "sid~d", "/", [], "host_1", "ab", now - 30))
    store.put_checkpoint(Checkpoint("host_1", "ab", now, [], 0))
    assert store.prune(store.home, 2.5) == 2
    assert set(reader.parts[store.home].sessions) == {
        f"s:{pids['new']}".encode(), f"s:{pids['live']}".encode()}
    assert store.find(pids["live"])[0].owner == "host_1"
    reader.parts[store.home].sessions[b"s:" + pids["new"].encode()] = b"\xc1"
    with pytest.raises(MalformedRecord):
        store.find(pids["new"])


def test_a_step_that_went_to_one_connection_counts_for_its_window_alone():
    """Replayed and held-back events reach one connection: in another's
    window they would come again at its next drop."""
    r = recovery()
    r.log.step([["send-all", None, 0, 5]])  # live: everyone, but sid~b was replaying
    r.log.step([["send-all", None, 0, 4]], only="sid~b")  # a replayed broadcast
    r.log.step([["send-all", None, 0, 5]], only="sid~b")  # the held-back one
    windows = r.log.windows({"sid~a": [], "sid~b": []}, 60)
    assert windows["sid~a"] == ([(1, "send-all", 0, 5)], True)
    # Each record once, at the step that actually sent it to sid~b.
    assert windows["sid~b"] == ([(2, "send-all", 0, 4), (3, "send-all", 0, 5)], True)
    checkpoint = checkpoint_of(r)
    assert checkpoint.tail == [(1, "send-all", 0, 5)]
    assert checkpoint.private == [(2, "sid~b", "send-all", 0, 4), (3, "sid~b", "send-all", 0, 5)]
    for sid, expected in (("sid~a", [(1, "send-all", 0, 5)]),
                          ("sid~b", [(2, "send-all", 0, 4), (3, "send-all", 0, 5)])):
        live = Session(LIVE, sid, "/", [], "host_1", checkpoint.tag, time.time())
        assert r.handshake.resume.from_checkpoint(live, checkpoint, 0).window == expected


def test_a_replay_waits_for_the_emits_counted_before_it():
    """An emit counted before a recovery began may still wait for its
    topic's metadata: its record lands after the replay's ranges, and live
    reading skips it as this dyno's own. The replay waits for it."""
    log = recovery().log
    first, second, third = log.next_emit(), log.next_emit(), log.next_emit()
    slept = []
    assert log.wait_emits(second, 0.05, slept.append) is False
    assert slept, "it waited"
    log.emit_done(first)
    log.emit_done(second)
    # The third began after the recovery's count: not waited for.
    assert log.wait_emits(second, 0.05, slept.append) is True
    assert log.wait_emits(third, 0.0, slept.append) is False
    log.emit_done(third)
    assert log.wait_emits(third, 0.0, slept.append) is True
