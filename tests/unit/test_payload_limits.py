"""The size check's estimate: never below the size kafka-python checks
against max_request_size, and only a few dozen bytes above it."""
import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from flask_signalr_kafka import PayloadTooLargeError, hub_protocol, records
from flask_signalr_kafka.addressing import make_sid, route, user
from flask_signalr_kafka.payload_limits import PayloadLimit, check_emit, producer_limit


class FakeManager:
    server_name = "host_" + "0" * 32
    _recovery = None

    def __init__(self, limit):
        self._payload_limit = PayloadLimit(limit, limit + 12, "send-group")

    def is_local(self, sid, namespace):
        return False

    def _frames(self, event, data):
        args = list(data) if isinstance(data, tuple) else [data]
        protocols = ("json", "messagepack") if isinstance(data, bytes) else ("json",)
        return hub_protocol.encode_frames(event, args, protocols)


def kafka_python_size(manager, event, data, namespace, targets, skip, index):
    """The size kafka-python's producer checks for target ``index``."""
    record = records.InvocationExt(
        skip, manager._frames(event, data), origin=manager.server_name, namespace=namespace,
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
    actual = max(kafka_python_size(FakeManager(0), "ev", data, "/chat", targets, skip, i)
                 for i in range(len(targets)))
    # Accepted at the exact size kafka-python computes...
    assert check_emit(FakeManager(actual + 64), "ev", data, "/chat", targets, skip, None)
    # ...and refused just below it.
    with pytest.raises(PayloadTooLargeError) as refused:
        check_emit(FakeManager(actual - 1), "ev", data, "/chat", targets, skip, None)
    assert actual <= refused.value.size <= actual + 64
    assert refused.value.limit == actual - 1


def test_only_local_targets_are_not_checked():
    manager = FakeManager(10)
    manager.is_local = lambda sid, namespace: True
    assert check_emit(manager, "ev", "x" * 100, "/", ["sid"], [], None) is None


def test_the_producer_limit_is_the_smaller_of_request_and_buffer():
    assert producer_limit({}) == 1_048_576
    assert producer_limit({"max_request_size": 5_000_000, "buffer_memory": 4_000_000}) == 4_000_000
