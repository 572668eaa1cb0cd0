"""Connection state recovery's pure parts: settings, the handshake, offsets,
the window of a dropped connection, and the session store."""
import time
from types import SimpleNamespace

import pytest

from flask_signalr_kafka import ConnectionStateRecovery
from flask_signalr_kafka.errors import MalformedRecord
from flask_signalr_kafka.recovery import Recovery, options_from
from flask_signalr_kafka.replay import step_of
from flask_signalr_kafka.sessions import (
    LIVE,
    SAVED,
    Checkpoint,
    Session,
    SessionStore,
    checkpoint_key,
    encode,
    session_key,
)


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
    assert step_of("ffff.42", "ab12") is None
    assert step_of("hello", "ab12") is None  # a string argument the JS client kept
    assert step_of("ab12.x", "ab12") is None
    assert step_of(None, "ab12") is None


def fake_manager():
    return SimpleNamespace(server_name="host_1", _consumers_by_base={})


def test_window_keeps_what_was_addressed_to_the_connection_in_order():
    recovery = Recovery(fake_manager(), ConnectionStateRecovery())
    sid, rooms = "sid~a", ["r1", "user:alice"]
    recovery.step([["send-group", "r1", 3, 10]])
    recovery.step([["send-group", "other", 3, 11]])
    recovery.step([["send-all", None, 0, 5]])
    recovery.step([["send-user", "alice", 7, 2], ["send-user", "bob", 8, 1]])
    recovery.step([["send-conn", sid, 1, 9], ["send-conn", "sid~b", 1, 10]])
    window, exact = recovery._window(sid, rooms, 60)
    assert window == [(1, "send-group", 3, 10), (3, "send-all", 0, 5),
                      (4, "send-user", 7, 2), (5, "send-conn", 1, 9)]
    assert exact


def test_window_is_not_exact_when_a_record_was_never_acked():
    recovery = Recovery(fake_manager(), ConnectionStateRecovery())
    recovery.step([["send-all", None, -1, -1]])
    assert recovery._window("sid~a", [], 60) == ([], False)


def test_window_is_not_exact_when_the_ring_forgot_part_of_it():
    recovery = Recovery(fake_manager(), ConnectionStateRecovery(window_steps=2))
    for offset in range(3):
        recovery.step([["send-all", None, 0, offset]])
    window, exact = recovery._window("sid~a", [], 60)
    assert [w[3] for w in window] == [1, 2] and not exact


def record(key, value):
    return SimpleNamespace(key=key, value=value)


def test_store_applies_sessions_checkpoints_and_tombstones():
    written = []
    store = SessionStore(lambda k, v: written.append((k, v)), max_age=120)
    saved = Session(SAVED, "sid~a", "/", ["r"], "host_1", "ab", time.time())
    store.handle(record(session_key("pid1").encode(), encode(saved)))
    assert store.sessions["pid1"] == saved
    store.handle(record(session_key("pid1").encode(), None))
    assert "pid1" not in store.sessions
    checkpoint = Checkpoint("host_1", "ab", time.time(), [("send-all", 0, 3)], 7)
    store.handle(record(checkpoint_key("host_1").encode(), encode(checkpoint)))
    assert store.alive("host_1", 2) and not store.alive("host_2", 2)
    with pytest.raises(MalformedRecord):
        store.handle(record(b"x:1", b"\x90"))
    with pytest.raises(MalformedRecord):
        store.handle(record(session_key("p").encode(), b"\xc1"))


def test_store_prunes_what_can_no_longer_be_restored():
    store = SessionStore(lambda k, v: None, max_age=10)
    now = time.time()
    store.put("old", Session(SAVED, "sid~a", "/", [], "host_1", "ab", now - 11))
    store.put("new", Session(SAVED, "sid~b", "/", [], "host_1", "ab", now))
    store.put("orphan", Session(LIVE, "sid~c", "/", [], "gone", "cd", now - 30))
    store.put_checkpoint(Checkpoint("host_1", "ab", now, [], 0))
    store.put("live", Session(LIVE, "sid~d", "/", [], "host_1", "ab", now - 30))
    assert store.prune(2.5) == 2
    assert set(store.sessions) == {"new", "live"}
