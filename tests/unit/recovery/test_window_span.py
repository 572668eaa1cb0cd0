"""A save's window spans the seconds before the save began, however long
its waits take (issue 22, the confluent soak of seed 873330, replayed: two
plain clients blackholed on their dyno lost the events sent just before the
blackhole, once their dyno, asked to release them, had waited for Kafka
before cutting the window)."""
import time
from types import SimpleNamespace

from flask_signalr_kafka import ConnectionStateRecovery
from flask_signalr_kafka.recovery.recovery import Recovery
from tests.unit.recovery.test_recovery_state import FakeCore


def test_a_slow_save_keeps_what_was_sent_in_the_window_before_it_began():
    host = SimpleNamespace(get_rooms=lambda sid, ns: [sid, "r1"])
    r = Recovery(FakeCore(), host, ConnectionStateRecovery())
    saved = []
    r.store.put = lambda pid, session: saved.append(session)
    r.log.step([["send-group", "r1", 3, 41]])  # sent just before the client vanished
    waits = r.state.await_readback

    def slow_readback(timeout):
        time.sleep(0.6)  # Kafka slow to answer
        return waits(timeout)

    r.state.await_readback = slow_readback
    session = r.saves._save("pid", "sid~a", "/", 0.4)  # a window of 0.4 s
    assert session is saved[-1] and session.exact
    assert [entry[1:] for entry in session.window] == [("send-group", 3, 41)]
