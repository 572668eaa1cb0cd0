"""Ack ids, callbacks and blocking waits."""

import threading
import time
import types

import pytest

from flask_signalr_kafka import AckTimeoutError
from flask_signalr_kafka.transport import ack_waiter
from flask_signalr_kafka.transport.ack_waiter import AckWaiter

INT32_MAX = 2**31 - 1


def noop(args):
    pass


def test_ids_start_at_1_and_increase():
    waiter = AckWaiter()
    ids = [waiter.register(noop, 30) for _ in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    assert len(waiter) == 5


def test_ids_wrap_inside_int32():
    waiter = AckWaiter()
    waiter._last_id = INT32_MAX - 2
    ids = [waiter.register(noop, 30) for _ in range(4)]
    assert ids == [INT32_MAX - 1, INT32_MAX, 1, 2]
    assert all(1 <= i <= INT32_MAX for i in ids)


def test_resolve_runs_the_callback_once_with_the_args():
    waiter = AckWaiter()
    calls = []
    ack_id = waiter.register(calls.append, 30)
    assert waiter.resolve(ack_id, ["answer", 2]) is True
    assert calls == [["answer", 2]]
    assert waiter.resolve(ack_id, ["again"]) is False
    assert calls == [["answer", 2]]
    assert len(waiter) == 0


def test_resolve_without_args_passes_an_empty_list():
    waiter = AckWaiter()
    calls = []
    ack_id = waiter.register(calls.append, 30)
    assert waiter.resolve(ack_id, None) is True
    assert calls == [[]]


def test_resolve_picks_the_right_entry():
    waiter = AckWaiter()
    calls = []
    first = waiter.register(lambda args: calls.append(("first", args)), 30)
    second = waiter.register(lambda args: calls.append(("second", args)), 30)
    assert waiter.resolve(second, [2]) is True
    assert calls == [("second", [2])]
    assert len(waiter) == 1
    assert waiter.resolve(first, [1]) is True
    assert calls == [("second", [2]), ("first", [1])]


def test_resolve_unknown_id_returns_false():
    waiter = AckWaiter()
    waiter.register(noop, 30)
    assert waiter.resolve(999, []) is False
    assert waiter.resolve(0, None) is False
    assert len(waiter) == 1


def test_discard():
    waiter = AckWaiter()
    calls = []
    ack_id = waiter.register(calls.append, 30)
    waiter.discard(ack_id)
    waiter.discard(ack_id)  # twice is fine
    assert waiter.resolve(ack_id, []) is False
    assert calls == []


def test_wait_times_out():
    waiter = AckWaiter()
    published = []
    start = time.monotonic()
    with pytest.raises(AckTimeoutError, match="joining room 'r'") as info:
        waiter.wait(published.append, 0.05, "joining room 'r'")
    elapsed = time.monotonic() - start
    assert isinstance(info.value, TimeoutError)
    assert 0.04 <= elapsed < 2
    assert published == [1]
    assert len(waiter) == 0
    # a late ack for the abandoned id is not taken for anything
    assert waiter.resolve(1, []) is False


def test_ack_timeout_error_is_a_timeout_error():
    assert issubclass(AckTimeoutError, TimeoutError)


def test_wait_returns_when_another_thread_resolves():
    waiter = AckWaiter()
    published = []
    resolved = []

    def publish(ack_id):
        published.append(ack_id)
        thread = threading.Thread(target=lambda: resolved.append(waiter.resolve(ack_id, [])))
        thread.start()

    start = time.monotonic()
    waiter.wait(publish, 5.0, "something")
    assert time.monotonic() - start < 2
    assert published == [1]
    assert len(waiter) == 0
    deadline = time.monotonic() + 2
    while not resolved and time.monotonic() < deadline:
        time.sleep(0.001)
    assert resolved == [True]


def test_wait_does_not_return_on_an_ack_for_another_id():
    waiter = AckWaiter()
    other = waiter.register(noop, 30)

    def publish(ack_id):
        assert ack_id != other
        threading.Thread(target=waiter.resolve, args=(other, [])).start()

    with pytest.raises(AckTimeoutError):
        waiter.wait(publish, 0.1, "something")


def test_wait_discards_its_id_when_publish_fails():
    waiter = AckWaiter()

    def publish(ack_id):
        raise RuntimeError("broker down")

    with pytest.raises(RuntimeError, match="broker down"):
        waiter.wait(publish, 5.0, "something")
    assert len(waiter) == 0


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(ack_waiter, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_expired_entries_are_swept(clock):
    waiter = AckWaiter()
    calls = []
    short = waiter.register(calls.append, 1)
    long = waiter.register(calls.append, 60)
    clock.now += ack_waiter._SWEEP_EVERY + 1
    new = waiter.register(calls.append, 1)
    assert len(waiter) == 2
    assert waiter.resolve(short, []) is False
    assert waiter.resolve(long, ["kept"]) is True
    assert waiter.resolve(new, ["new"]) is True
    assert calls == [["kept"], ["new"]]


def test_no_sweep_before_the_interval(clock):
    waiter = AckWaiter()
    waiter.register(noop, 1)
    clock.now += 2  # expired, but the next sweep is not due
    waiter.register(noop, 1)
    assert len(waiter) == 2
    clock.now += ack_waiter._SWEEP_EVERY
    waiter.register(noop, 1)
    assert len(waiter) == 1
