"""The size check's estimate: never below the size kafka-python checks
against max_request_size, and only a few dozen bytes above it."""
import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from flask_signalr_kafka import PayloadTooLargeError
from flask_signalr_kafka.transport.payload_limits import PayloadLimit, check_emit, producer_limit
from flask_signalr_kafka.wire import hub_protocol, records
from flask_signalr_kafka.wire.addressing import make_sid, route, user

SERVER = "host_" + "0" * 32


def frames(event, data):
    return hub_protocol.frames_of(event, data, ("json",))


def limit(size):
    return PayloadLimit(size, size + 12, "send-group")


def kafka_python_size(event, data, namespace, targets, skip, index):
    """The size kafka-python's producer checks for target ``index``."""
    record = records.InvocationExt(
        skip, frames(event, data), origin=SERVER, namespace=namespace,
        callback_id=2**31 - 1, earlier_targets=[t for t in targets[:index] if t is not None],
        emit_seq=2**62)
    key = route(targets[index])[1]
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(
        None if key is None else key.encode(), records.encode(record), [])


@pytest.mark.parametrize("data", ["hi", "é" * 5000, b"\x00" * 70_000, ({"a": 1}, [2, 3])])
@pytest.mark.parametrize("targets", [[None], ["room"], [user("ann")],
                                     ["room", make_sid("abc"), None, user("bo")]])
def test_estimate_is_an_upper_bound_within_a_few_dozen_bytes(data, targets):
    skip = [make_sid("x1"), make_sid("x2")]
    actual = max(kafka_python_size("ev", data, "/chat", targets, skip, i)
                 for i in range(len(targets)))
    every = list(targets)
    # Accepted at the exact size kafka-python computes...
    check_emit(limit(actual + 64), frames("ev", data), SERVER, "ev", "/chat", targets, every,
               skip)
    # ...and refused just below it.
    with pytest.raises(PayloadTooLargeError) as refused:
        check_emit(limit(actual - 1), frames("ev", data), SERVER, "ev", "/chat", targets,
                   every, skip)
    assert actual <= refused.value.size <= actual + 64
    assert refused.value.limit == actual - 1


def test_targets_that_get_no_record_are_not_checked():
    check_emit(limit(10), frames("ev", "x" * 100), SERVER, "ev", "/", ["sid"], [], [])
    with pytest.raises(PayloadTooLargeError):
        check_emit(limit(10), frames("ev", "x" * 100), SERVER, "ev", "/", ["sid"], ["sid"], [])


def test_the_producer_limit_is_the_smaller_of_request_and_buffer():
    assert producer_limit({}) == 1_048_576
    assert producer_limit({"max_request_size": 5_000_000, "buffer_memory": 4_000_000}) == 4_000_000



def test_the_quick_bound_is_never_below_the_exact_size():
    """Multi-byte characters everywhere: the bound that lets an emit through
    unencoded is at least the exact size of its largest record."""
    import random

    from flask_signalr_kafka.transport.payload_limits import exact_size, upper_bound

    rnd = random.Random(7)
    alphabet = "a\u00e9\u4e16\U0001f600"
    text = lambda n: "".join(rnd.choice(alphabet) for _ in range(n))  # noqa: E731
    for _ in range(500):
        frames = {"json": b"x" * rnd.randrange(500), text(3): b"y" * rnd.randrange(50)}
        targets = [rnd.choice([None, text(rnd.randrange(1, 30)), "user:" + text(5),
                               "sid~" + "a" * 20]) for _ in range(rnd.randrange(1, 5))]
        skip = [text(rnd.randrange(20)) for _ in range(rnd.randrange(3))]
        args = (frames, text(40), text(rnd.randrange(1, 9)), targets)
        assert upper_bound(*args, skip) >= exact_size(*args, targets, skip)
