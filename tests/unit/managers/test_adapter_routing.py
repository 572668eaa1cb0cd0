"""The python-socketio adapter over a fake Kafka core: which record each
emit and room change publishes, decoded with the wire format's decoder."""
import pytest

from flask_signalr_kafka import AckTimeoutError, KafkaManager, user
from flask_signalr_kafka.transport.ack_waiter import AckWaiter
from flask_signalr_kafka.wire import records
from flask_signalr_kafka.wire.addressing import make_sid
from flask_signalr_kafka.wire.hub_protocol import decode_frames


class FakeCore:
    """The core's public face: records published, acks answered by the test."""

    server_name = "host_" + "a" * 32
    closed = False

    def __init__(self):
        self.published = []
        self.acks = AckWaiter()

    def publish(self, base, key, value, timeout=None, partition=None):
        self.published.append((base, key, value))


@pytest.fixture
def mgr():
    manager = KafkaManager("127.0.0.1:1")
    manager.core = FakeCore()
    manager._started = True  # nothing to connect: the core is fake
    return manager


def sent(mgr):
    return [(base, key, records.decode(value, records.InvocationExt))
            for base, key, value in mgr.core.published]


@pytest.mark.parametrize(("to", "base", "key"), [
    (None, "send-all", None),
    ("lobby", "send-group", "lobby"),
    (user("ann"), "send-user", "ann"),
    (make_sid("A" * 20), "send-conn", make_sid("A" * 20)),
])
def test_each_target_kind_has_its_topic_and_key(mgr, to, base, key):
    mgr.emit("msg", {"n": 1}, to=to, skip_sid="sid~x")
    ((got_base, got_key, record),) = sent(mgr)
    assert (got_base, got_key) == (base, key)
    assert record.excluded == ["sid~x"] and record.origin == mgr.server_name
    assert decode_frames(record.frames) == ("msg", [{"n": 1}])


def test_a_list_is_one_record_per_target_naming_the_earlier_ones(mgr):
    mgr.emit("msg", ("a", 2), to=["r1", user("bo"), "r1", None], namespace="/chat")
    got = sent(mgr)
    assert [(b, k) for b, k, _ in got] == [("send-group", "r1"), ("send-user", "bo"),
                                          ("send-all", None)]
    assert [r.earlier_targets for _, _, r in got] == [[], ["r1"], ["r1", user("bo")]]
    assert {r.namespace for _, _, r in got} == {"/chat"}
    assert decode_frames(got[0][2].frames) == ("msg", ["a", 2])


def test_binary_data_adds_a_messagepack_frame(mgr):
    mgr.emit("bin", b"\x00\x01")
    ((_, _, record),) = sent(mgr)
    assert set(record.frames) == {"json", "messagepack"}


def test_a_remote_join_publishes_a_group_command_and_waits_for_its_ack(mgr):
    sid = make_sid("B" * 20)
    mgr.ack_timeout = 0.2
    with pytest.raises(AckTimeoutError):
        mgr.enter_room(sid, "/", "lobby")
    ((base, key, value),) = mgr.core.published
    command = records.decode(value, records.GroupCommandExt)
    assert (base, key) == ("group-mgmt", "lobby")
    assert (command.connection_id, command.group, command.action) == (sid, "lobby", records.ADD)
    assert command.server_name == mgr.server_name
