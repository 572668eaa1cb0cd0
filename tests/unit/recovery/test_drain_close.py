"""The drain's socket closes (``Saves._close_sockets``): side by side, bounded
by the drain's limit, and a close still waiting at that limit is logged (a
confluent soak saw one dyno's stop held 10 s by one socket, with no word)."""
import logging
import threading
import time
from types import SimpleNamespace

from flask_signalr_kafka.recovery.saves import Saves
from flask_signalr_kafka.runtime.concurrency import Runtime


def saves_with(close_socket):
    host = SimpleNamespace(eio_sid_from_sid=lambda sid, namespace: f"e-{sid}",
                           close_socket=close_socket)
    state = SimpleNamespace(host=host, core=SimpleNamespace(runtime=Runtime.threads("threading")))
    return Saves(state, ended=lambda pid: None)


def test_a_close_still_waiting_at_the_limit_is_logged(caplog):
    release = threading.Event()
    closed = []

    def close_socket(eio_sid):
        if eio_sid == "e-stuck":
            release.wait(10)
        closed.append(eio_sid)

    saves = saves_with(close_socket)
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flask_signalr_kafka.recovery.saves"):
        saves._close_sockets([("a", "/"), ("stuck", "/"), ("b", "/")], 0.3)
    waited = time.monotonic() - began
    release.set()
    assert 0.3 <= waited < 2
    assert sorted(closed) == ["e-a", "e-b"]
    (record,) = [r for r in caplog.records if "still closing" in r.getMessage()]
    assert "1 of 3 sockets still closing after 0.3 s" in record.getMessage()
    assert "e-stuck" in record.getMessage()


def test_closes_that_finish_log_nothing(caplog):
    saves = saves_with(lambda eio_sid: time.sleep(0.01))
    with caplog.at_level(logging.WARNING, logger="flask_signalr_kafka.recovery.saves"):
        saves._close_sockets([(f"s{i}", "/") for i in range(70)], 5)
    assert not [r for r in caplog.records if "still closing" in r.getMessage()]
