"""The publisher's replacement of a producer that can no longer send, and
the replay's choice of records, without Kafka."""
import time
from types import SimpleNamespace

from kafka.errors import KafkaTimeoutError, UnknownProducerIdError

from flask_signalr_kafka.recovery.replay import event_for
from flask_signalr_kafka.recovery.sessions import SAVED, Session
from flask_signalr_kafka.transport import producer as producer_module
from flask_signalr_kafka.transport.clients import kafka_python_client
from flask_signalr_kafka.transport.topics import KafkaTopicConfig
from flask_signalr_kafka.wire import records
from flask_signalr_kafka.wire.hub_protocol import encode_frames


class FakeProducer:
    made = []

    def __init__(self, **config):
        self.closed = False
        FakeProducer.made.append(self)

    def close(self, timeout=None):
        self.closed = True


def test_a_producer_in_a_fatal_state_is_replaced_once():
    client = kafka_python_client.KafkaPythonClient()
    client.producer = lambda config, runtime: FakeProducer(**config)
    FakeProducer.made = []
    publisher = producer_module.Publisher({}, KafkaTopicConfig(), await_produce=False,
                                          client=client)
    broken = publisher.producer
    publisher._check(broken, KafkaTimeoutError())  # an ordinary failure: kept
    assert publisher.producer is broken
    for _ in range(3):  # several batches fail at once: one replacement
        publisher._check(broken, UnknownProducerIdError())
    deadline = time.monotonic() + 5
    while publisher.replaced == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert publisher.replaced == 1 and len(FakeProducer.made) == 2
    assert publisher.producer is FakeProducer.made[1] and broken.closed


def record(base, key, invocation):
    return SimpleNamespace(value=records.encode(invocation),
                           key=None if key is None else key.encode())


SESSION = Session(SAVED, "sid~a", "/", ["r1", "user:ann"], "host_1", "t", 0.0, emit_seq=5)


def inv(**fields):
    base = dict(excluded=[], frames=encode_frames("ev", [1], ("json",)), origin="host_2",
                namespace="/")
    return records.InvocationExt(**{**base, **fields})


def test_the_replay_keeps_what_was_for_the_connection():
    assert event_for(record("send-group", "r1", inv()), "send-group", SESSION, True) == (
        "ev", [1])
    assert event_for(record("send-user", "ann", inv()), "send-user", SESSION, True)
    assert event_for(record("send-conn", "sid~a", inv()), "send-conn", SESSION, True)
    assert event_for(record("send-all", None, inv()), "send-all", SESSION, True)


def test_the_replay_skips_what_was_not_for_it_or_already_delivered():
    skipped = [
        ("send-group", "r2", inv()),  # another room
        ("send-all", None, inv(namespace="/chat")),  # another namespace
        ("send-all", None, inv(excluded=["sid~a"])),  # skip_sid
        ("send-all", None, inv(callback_id=7)),  # a callback: not replayed
        ("send-user", "ann", inv(earlier_targets=["r1"])),  # came with the r1 record
        ("send-all", None, inv(origin="host_1", emit_seq=5)),  # its dyno delivered it
    ]
    for base, key, invocation in skipped:
        assert event_for(record(base, key, invocation), base, SESSION, True) is None, invocation
    assert event_for(record("send-all", None, inv(origin="host_1", emit_seq=6)), "send-all",
                     SESSION, True)
    garbage = SimpleNamespace(value=b"\xc1", key=None)
    assert event_for(garbage, "send-all", SESSION, True) is None
