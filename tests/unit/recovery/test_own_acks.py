"""Where this dyno's own records landed, known before recovery relies on it
(issue 22, the confluent soak of seed 873330): a flush can return before the
broker's answer is known here (its timeout, or confluent's report task
settling the report a moment later).

- A replay reads the dyno's own records emitted before the recovery began
  (live reading skips them as delivered at emit time) up to the last one
  acked: one acked but not yet known ended the range before it, and the
  recovered client never got it.
- A save's wait for its own records to be read back looked only at those
  known to be acked.
"""
import time
from types import SimpleNamespace

from flask_signalr_kafka import ConnectionStateRecovery
from flask_signalr_kafka.recovery import recovery
from flask_signalr_kafka.recovery.recovery import Recovery
from flask_signalr_kafka.recovery.sessions import SAVED, Session
from tests.unit.recovery.test_recovery_state import FakeCore
from tests.unit.recovery.test_window_acks import LateFuture

SLOT = ("send-group", 4)


class Core(FakeCore):
    """FakeCore whose consumers stand at ``at`` on SLOT, and a flush that
    returns at once (the producer's reports still to be settled)."""

    def __init__(self):
        self.at = 7

    def positions(self, bases):
        return {SLOT: self.at}

    def flush(self, timeout=None):
        pass


def own_record(r, delay, offset=7):
    """An emit of this dyno to room r1, acked ``delay`` s from now."""
    seq = r.log.next_emit()
    coords: list = []
    r.log.step(coords)
    late = LateFuture(delay, partition=SLOT[1], offset=offset)
    r.log.track(late, coords, "send-group", "r1")
    r.log.emit_done(seq)
    return late


def test_a_replay_reads_an_own_record_acked_after_the_flush(monkeypatch):
    r = Recovery(Core(), SimpleNamespace(), ConnectionStateRecovery())
    late = own_record(r, 0.3)
    session = Session(SAVED, "sid~a", "/", ["r1"], "host_1", r.log.tag, time.time(),
                      [(*SLOT, 7)], 0)
    monkeypatch.setattr(recovery, "slots_of_session", lambda count, s: {SLOT})
    r.state.replay_ends["sid~a"] = ({SLOT: 7}, r.log.emit_seq)  # begin(): not read back yet
    read = []
    monkeypatch.setattr(recovery, "read_missed",
                        lambda *args, **kwargs: read.append(args[5]) or [])
    r._replay_pool = lambda: SimpleNamespace(get=None, put=None)
    r._read_missed(session, None)
    late.settler.join()
    assert read, "nothing read: the record acked late was never replayed"
    assert read[0][2] == {SLOT: (7, 8)}


def test_a_save_waits_for_its_own_records_to_be_read_back_once_acked():
    core = Core()
    r = Recovery(core, SimpleNamespace(), ConnectionStateRecovery())
    late = own_record(r, 0.2, offset=7)
    core.at = 7  # not read back: the consumer stands before it
    reader = LateFuture(0.5)
    reader.add_callback(lambda _: setattr(core, "at", 8))  # read back at 0.5 s
    began = time.monotonic()
    assert r.await_readback(2.0)
    late.settler.join()
    assert core.at == 8, "returned before the record was read back"
    assert time.monotonic() - began >= 0.4


def test_a_wait_for_acks_is_bounded():
    r = Recovery(Core(), SimpleNamespace(), ConnectionStateRecovery())
    never = own_record(r, 3600)
    never.settler.cancel()
    began = time.monotonic()
    assert r.log.wait_acks(0.2, time.sleep) is False
    assert 0.2 <= time.monotonic() - began < 1.0
    own_record(r, 0.1, offset=9)
    never.settle()  # answered at last
    assert r.log.wait_acks(2.0, time.sleep) is True
    assert r.log.own_acked[SLOT] == 9
