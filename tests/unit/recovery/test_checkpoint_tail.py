"""A checkpoint's tail under a recovery storm (found by the restart test,
issue 22): the replays of recovered clients (steps to one connection
alone) filled the tail's 5,000 steps, cut it short, and every plain client
of a dyno killed seconds later was refused ("window-lost"). Steps to every
client and steps to one connection now have limits of their own, and a
connection whose private steps were left out is the only one refused."""
import time

from flask_signalr_kafka.recovery.sessions import LIVE, Session
from flask_signalr_kafka.recovery.steps import DROP_WINDOW, DeliveryLog
from tests.unit.recovery.test_recovery_state import recovery


def storm_log():
    log = DeliveryLog(window_steps=1000)
    log.tag = "0h1"
    offset = iter(range(10**6))
    for _ in range(5):
        log.step([["send-all", None, 0, next(offset)]])
    for _ in range(30):  # a replay to one recovered connection
        log.step([["send-group", "r", 1, next(offset)]], only="sid~replayed")
    for _ in range(3):
        log.step([["send-all", None, 0, next(offset)]])
    return log


def test_replays_do_not_cut_the_other_clients_tail(monkeypatch):
    monkeypatch.setattr("flask_signalr_kafka.recovery.steps.TAIL_STEPS", 10)
    monkeypatch.setattr("flask_signalr_kafka.recovery.steps.PRIVATE_STEPS", 10, raising=False)
    checkpoint = storm_log().checkpoint("host_2", [], time.sleep, DROP_WINDOW)
    assert checkpoint.tail_whole and checkpoint.tail_from == 1
    assert len(checkpoint.tail) == 8 and len(checkpoint.private) == 10
    assert checkpoint.private_cut == [("sid~replayed", 25)]  # steps 6-25 left out
    r = recovery()

    def resumed(sid):
        session = Session(LIVE, sid, "/", ["r"], "host_2", "", time.time())
        return r.handshake.resume.from_checkpoint(session, checkpoint, None)

    plain = resumed("sid~other")
    assert plain.exact and len(plain.window) == 8
    assert not resumed("sid~replayed").exact  # it may have missed steps 6-25


def test_a_tail_with_too_many_steps_to_every_client_is_cut(monkeypatch):
    monkeypatch.setattr("flask_signalr_kafka.recovery.steps.TAIL_STEPS", 4)
    checkpoint = storm_log().checkpoint("host_2", [], time.sleep, DROP_WINDOW)
    assert not checkpoint.tail_whole
    # The tail begins after the 5th step to every client from the end.
    assert checkpoint.tail_from == 5
