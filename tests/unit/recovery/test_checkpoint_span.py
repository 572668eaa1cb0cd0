"""A checkpoint's tail spans as long as a dead connection may go unnoticed
(the server's ping interval + ping timeout + 2 s), not the 5 s of a drop
the server saw: make test's soak (seed 556713) blackholed a dyno's clients,
then killed the dyno 8.4 s later, before their ping timed out (5 s + 5 s);
recovered from the last checkpoint, five plain clients (no offset to say
what they had) lost 17-20 events each, sent into the dead sockets more
than 5 s before the kill."""
import time
from types import SimpleNamespace

from flask_signalr_kafka.recovery.saves import Saves
from flask_signalr_kafka.recovery.sessions import LIVE, Session
from flask_signalr_kafka.recovery.steps import DeliveryLog
from tests.unit.recovery.test_recovery_state import recovery


def test_a_plain_client_blackholed_before_its_dyno_died_is_replayed_all_it_may_have_missed(
        monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("flask_signalr_kafka.recovery.steps.time",
                        SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    log = DeliveryLog(window_steps=1000)
    log.tag = "0h1"
    for offset in range(9):  # one broadcast a second, from the blackhole on
        log.step([["send-all", None, 0, offset]])
        clock[0] += 1.0
    eio = SimpleNamespace(ping_interval=5, ping_timeout=5)
    state = SimpleNamespace(owner="host_2", log=log, positions=dict,
                            host=SimpleNamespace(server=SimpleNamespace(eio=eio)),
                            core=SimpleNamespace(runtime=SimpleNamespace(sleep=time.sleep)))
    checkpoint = Saves(state, ended=lambda pid: None).checkpoint()
    assert checkpoint.tail_whole and checkpoint.tail_from == 1
    assert [entry[3] for entry in checkpoint.tail] == list(range(9))

    session = Session(LIVE, "sid~plain", "/", ["r"], "host_2", "", time.time())
    plain = recovery().handshake.resume.from_checkpoint(session, checkpoint, None)
    assert plain.exact
    assert sorted(entry[3] for entry in plain.window) == list(range(9))
