"""A loop that keeps failing during an outage logs its traceback once, then
one line a minute, then once when it works again."""
import logging

from flask_signalr_kafka.runtime.failure_log import FailureLog


def fail(log: FailureLog) -> None:
    try:
        raise TimeoutError("no broker")
    except TimeoutError:
        log.failed()


def test_one_traceback_then_a_line_a_minute_then_back(caplog):
    now = [0.0]
    log = FailureLog(logging.getLogger("t"), "heartbeat", every=60, clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, "t"):
        for _ in range(12 * 5):  # five minutes of failures every 5 s
            fail(log)
            now[0] += 5
        log.succeeded()
        log.succeeded()
    lines = [r for r in caplog.records if r.name == "t"]
    assert lines[0].exc_info is not None and lines[0].getMessage() == "heartbeat failed"
    repeats = [r for r in lines if "still failing" in r.getMessage()]
    assert len(repeats) == 4 and all(r.exc_info is None for r in repeats)
    assert "TimeoutError: no broker" in repeats[0].getMessage()
    assert [r.getMessage() for r in lines[-1:]] == ["heartbeat works again after 300 s"]
    assert len(lines) == 6


def test_a_new_outage_gets_its_traceback_again(caplog):
    log = FailureLog(logging.getLogger("t"), "checkpoint")
    with caplog.at_level(logging.DEBUG, "t"):
        fail(log)
        log.succeeded()
        fail(log)
    assert sum(r.exc_info is not None for r in caplog.records) == 2
