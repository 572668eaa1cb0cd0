"""A dropped connection's window against the acks of its dyno's own records
(issue 22, the confluent soak of seed 873330: a plain client back on its
blackholed dyno was refused as "window-lost").

A window holds a record only once the broker said where it landed. The save
flushed the producer first, but a flush can return before the record's ack
is known to the window: its timeout passed, or (confluent) the report was
taken by the producer's report task, which settles it a moment later. The
save must wait for those acks; a record the broker refused is never waited
for.
"""
import threading
import time
from types import SimpleNamespace

from flask_signalr_kafka import ConnectionStateRecovery
from flask_signalr_kafka.recovery.recovery import Recovery
from tests.unit.recovery.test_recovery_state import FakeCore


class LateFuture:
    """A produce future settled from another thread, ``delay`` s from now."""

    def __init__(self, delay, partition=None, offset=None, error=None):
        self.callbacks, self.errbacks = [], []
        self.result = SimpleNamespace(partition=partition, offset=offset)
        self.error = error
        self.settler = threading.Timer(delay, self.settle)
        self.settler.start()

    def add_callback(self, fn):
        self.callbacks.append(fn)

    def add_errback(self, fn):
        self.errbacks.append(fn)

    def settle(self):
        for fn in self.errbacks if self.error else self.callbacks:
            fn(self.error or self.result)


def saving():
    eio = SimpleNamespace(ping_interval=5, ping_timeout=5)
    host = SimpleNamespace(get_rooms=lambda sid, ns: [sid, "r1"], server=SimpleNamespace(eio=eio))
    r = Recovery(FakeCore(), host, ConnectionStateRecovery())
    saved = []
    r.store.put = lambda pid, session: saved.append(session)
    return r, saved


def emit_to_room(r, future):
    """One emit of this dyno to room r1: delivered here at once (one step),
    its record then handed to the producer."""
    seq = r.log.next_emit()
    coords: list = []
    r.log.step(coords)
    r.log.track(future, coords, "send-group", "r1")
    r.log.emit_done(seq)


def test_a_save_waits_for_the_ack_of_an_own_record_in_its_window():
    r, saved = saving()
    late = LateFuture(0.3, partition=4, offset=17)
    emit_to_room(r, late)
    session = r.saves._save("pid", "sid~a", "/", 12.0)
    late.settler.join()
    assert saved == [session]
    assert session.exact, "refused as window-lost at its recovery"
    assert [entry[1:] for entry in session.window] == [("send-group", 4, 17)]


def test_a_record_the_broker_refused_makes_the_window_inexact_without_a_wait():
    r, _ = saving()
    emit_to_room(r, LateFuture(0.05, error=RuntimeError("refused")))
    time.sleep(0.2)  # refused by now
    began = time.monotonic()
    session = r.saves._save("pid", "sid~a", "/", 12.0)
    assert not session.exact and session.window == []
    assert r.log.inexact_why({"sid~a": ["r1"]}, 12.0) == "own records the broker refused"
    assert r.stats["saved-inexact"] == 1
    # The save's other waits are bounded by 1 s each (no Kafka here).
    assert time.monotonic() - began < 1.9


def test_an_ack_that_never_comes_is_waited_for_a_bounded_time():
    r, _ = saving()
    never = LateFuture(3600)
    never.settler.cancel()
    emit_to_room(r, never)
    began = time.monotonic()
    session = r.saves._save("pid", "sid~a", "/", 12.0)
    assert not session.exact
    assert time.monotonic() - began < 5.0
