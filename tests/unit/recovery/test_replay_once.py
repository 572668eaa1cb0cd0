"""A dropped connection's saved session against what its dyno delivered
meanwhile (issue 22, the soak of seed 132069): every event it missed is
replayed, and once.

- A session's positions are read before its window is cut: a record
  delivered in between is in both, and a plain client got it twice, at the
  same instant.
- A session's emit counter was read after its window was cut: an emit
  counted before but stepped after (its socket still registered while the
  session was saved) was in neither the window nor the replay, which skips
  the dyno's own records up to the counter as delivered at emit time.
"""
import threading
import time
from types import SimpleNamespace

from flask_signalr_kafka import ConnectionStateRecovery
from flask_signalr_kafka.recovery import replay
from flask_signalr_kafka.recovery.recovery import Recovery
from flask_signalr_kafka.recovery.sessions import LIVE, SAVED, Session
from flask_signalr_kafka.wire import records
from flask_signalr_kafka.wire.hub_protocol import encode_frames
from tests.unit.recovery.test_recovery_state import FakeCore

SESSION = Session(SAVED, "sid~a", "/", ["r1"], "host_1", "t", 0.0, emit_seq=0)


class LogConsumer:
    """A consumer over a fixed log of one partition per topic, read at once."""

    def __init__(self, logs):
        self.logs, self.at, self.assigned = logs, {}, []

    def assign(self, tps):
        self.assigned = list(tps)

    def resume(self, *tps):
        pass

    def seek(self, tp, offset):
        self.at[tp] = offset

    def position(self, tp):
        return self.at[tp]

    def poll(self, timeout_ms=0):
        out = {}
        for tp in self.assigned:
            batch = self.logs[tp.topic][self.at[tp]:]
            if batch:
                out[tp] = batch
                self.at[tp] = batch[-1].offset + 1
        return out

    def close(self):
        pass


def event(n):
    value = records.encode(records.InvocationExt(
        excluded=[], frames=encode_frames("ev", [n], ("json",)), origin="host_2",
        namespace="/"))
    return SimpleNamespace(offset=n, timestamp=n, partition=0, key=None, value=value)


def test_a_record_in_both_the_window_and_the_ranges_is_replayed_once():
    log = {"t-send-all": [event(n) for n in range(6)]}
    # Delivered at steps 1-4 (offsets 1-4), the position read as 3 before
    # the window was cut: offsets 3 and 4 are in both.
    window = [("send-all", 0, n) for n in (1, 2, 3, 4)]
    missed = replay.read_missed(lambda: LogConsumer(log), lambda base: f"t-{base}", SESSION,
                                window, {("send-all", 0): (3, 6)}, pause=lambda s: None)
    assert [args for _, _, args in missed] == [[1], [2], [3], [4], [5]]


def test_a_save_waits_for_the_emits_it_counts():
    """An emit to the connection, counted before the save and delivered to
    its (dead) socket just after the save began: the session must either
    keep it in its window or not count it as delivered."""
    r = Recovery(FakeCore(), SimpleNamespace(get_rooms=lambda sid, ns: [sid, "r1"]),
                 ConnectionStateRecovery())
    saved = []
    r.store.put = lambda pid, session: saved.append(session)
    seq = r.log.next_emit()  # the emit has begun (counted) ...

    def deliver_later():
        time.sleep(0.2)  # ... and steps once the save is under way
        coords: list = []
        r.log.step(coords)
        landed = SimpleNamespace(partition=3, offset=7)
        future = SimpleNamespace(add_callback=lambda fn: fn(landed), add_errback=lambda fn: None)
        r.log.track(future, coords, "send-conn", "sid~a")
        r.log.emit_done(seq)

    emitter = threading.Thread(target=deliver_later)
    emitter.start()
    session = r.saves._save("pid", "sid~a", "/", 5.0)
    emitter.join()
    assert saved == [session]
    in_window = any(entry[1:] == ("send-conn", 3, 7) for entry in session.window)
    replayed = session.emit_seq < seq  # the replay does not skip it as delivered
    assert in_window or replayed, session
    assert session.exact


def saving_recovery(local: bool):
    """A Recovery whose dropped connection ``sid~a`` is ``local`` here, its
    saves kept in a list, and no checkpoint of its holder to fall back on."""
    eio = SimpleNamespace(ping_interval=5, ping_timeout=5)
    host = SimpleNamespace(get_rooms=lambda sid, ns: [sid, "r1"],
                           is_local=lambda sid, ns: local,
                           server=SimpleNamespace(eio=eio))
    r = Recovery(FakeCore(), host, ConnectionStateRecovery())
    saved = []
    r.store.put = lambda pid, session: saved.append(session)
    r.store.checkpoint = lambda owner, since=None: None
    return r, saved


def test_a_client_back_while_its_drop_is_saved_here_gets_that_save():
    """c19 of the soak: its dyno noticed the ping timeout as the client came
    back to the same dyno. The live session still in the store sent the new
    attempt to the release path, which found the connection already
    forgotten and fell back on the last checkpoint (its tail misses what was
    sent since; here there is none: the recovery failed). It must take the
    save under way."""
    r, saved = saving_recovery(local=True)
    waits = r.state.await_readback

    def slow_readback(timeout):
        time.sleep(0.3)  # the save waits for Kafka
        return waits(timeout)

    r.state.await_readback = slow_readback
    r.state.pids[("sid~a", "/")] = "pid"
    save = r.forget("sid~a", "/", "ping timeout")
    saver = threading.Thread(target=save)
    saver.start()
    live = Session(LIVE, "sid~a", "/", ["r1"], "host_1", r.log.tag, time.time())
    session = r.handshake._take_over("pid", live, 0, None)
    saver.join()
    assert saved == [session] and session.state == SAVED


def test_a_drop_saved_here_a_moment_ago_is_taken_though_not_read_back():
    """The save is written, but the lookup read the partition before it:
    it found the live session. The save made here is the session."""
    r, saved = saving_recovery(local=False)
    r.state.pids[("sid~a", "/")] = "pid"
    r.forget("sid~a", "/", "ping timeout")()
    live = Session(LIVE, "sid~a", "/", ["r1"], "host_1", r.log.tag, time.time())
    assert r.handshake._take_over("pid", live, 0, None) is saved[0]
    # Once the client is connected again, that save is past.
    r.saves.write_live = lambda key: True
    r.registered("sid~a", "/", "pid", False)
    assert "pid" not in r.saves._saving
