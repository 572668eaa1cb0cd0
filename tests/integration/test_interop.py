"""Sharing topics with .NET servers: records written here exactly as
Ascentis.SignalR.Kafka writes them (plain msgspec lists, not our codecs)
reach Python clients, and .NET group commands are applied and acked."""
import msgspec
import pytest
from kafka import KafkaProducer

from testkit.harness import unique

# The combinations besides the default one that run this module (make test).
pytestmark = [pytest.mark.tansu, pytest.mark.confluent]

SEND_HELLO_MSGPACK = bytes.fromhex("1196 0180 C0A4 5365 6E64 91A5 6865 6C6C 6F90".replace(" ", ""))


def json_frame(target, *args):
    return msgspec.json.encode({"arguments": list(args), "type": 1, "target": target}) + b"\x1e"


def dotnet_invocation(frames, excluded=()):
    return msgspec.msgpack.encode([list(excluded), frames])


def produce(fleet, base, value, key=None):
    producer = KafkaProducer(bootstrap_servers=fleet.broker.bootstrap)
    producer.send(fleet.topic(base), value=value, key=key and key.encode())
    producer.flush()
    producer.close()


def test_dotnet_send_all_json_frame(fleet, connect):
    a, b = connect(fleet.a), connect(fleet.b)
    word = unique("hello")
    produce(fleet, "send-all", dotnet_invocation({"json": json_frame("Send", word)}))
    a.wait_for("Send", (word,))
    b.wait_for("Send", (word,))


def test_dotnet_messagepack_only_frame(fleet, connect):
    a = connect(fleet.a)
    produce(fleet, "send-all", dotnet_invocation({"messagepack": SEND_HELLO_MSGPACK}))
    a.wait_for("Send", ("hello",))


def test_dotnet_record_with_both_frames_and_excluded_ids(fleet, connect):
    a, skipped = connect(fleet.a), connect(fleet.a)
    word = unique("both")
    frames = {"json": json_frame("Both", word), "messagepack": SEND_HELLO_MSGPACK}
    produce(fleet, "send-all", dotnet_invocation(frames, excluded=[skipped.sid]))
    # Both frames present: the messagepack one is used (it keeps binary intact).
    a.wait_for("Send", ("hello",))
    marker = unique("marker")
    produce(fleet, "send-all", dotnet_invocation({"json": json_frame("Marker", marker)}))
    skipped.wait_for("Marker", (marker,))
    assert skipped.got("Send") == [] and a.got("Both") == []


def test_dotnet_send_user_group_and_connection(fleet, connect):
    alice = unique("alice")
    room = unique("room")
    tab = connect(fleet.b, user=alice)
    member = connect(fleet.a)
    member.call("join", {"room": room})
    target = connect(fleet.b)
    produce(fleet, "send-user", dotnet_invocation({"json": json_frame("ToUser", 1)}), key=alice)
    produce(fleet, "send-group", dotnet_invocation({"json": json_frame("ToGroup", 2)}), key=room)
    produce(fleet, "send-conn", dotnet_invocation({"json": json_frame("ToConn", 3)}),
            key=target.sid)
    tab.wait_for("ToUser", (1,))
    member.wait_for("ToGroup", (2,))
    target.wait_for("ToConn", (3,))


def test_dotnet_group_command_is_applied_and_acked(fleet, connect, raw):
    acks = raw("ack")
    room = unique("room")
    b = connect(fleet.b)
    dotnet_server = f"dotnet-host_{unique('x').replace('-', '')}"
    produce(fleet, "group-mgmt", msgspec.msgpack.encode([7, dotnet_server, 1, room, b.sid]),
            key=room)
    ack = acks.read_until(lambda r: r.key == dotnet_server.encode(), what="ack to .NET")
    assert ack.value == bytes.fromhex("9107")
    assert room in b.call("rooms")
    produce(fleet, "group-mgmt", msgspec.msgpack.encode([8, dotnet_server, 2, room, b.sid]),
            key=room)
    acks.read_until(lambda r: r.key == dotnet_server.encode() and r.value == b"\x91\x08")
    assert room not in b.call("rooms")


def test_python_records_read_as_dotnet_reads_them(fleet, connect, raw):
    """Every send-* record we write is [string[], {str: bin}] with a "json"
    frame a SignalR JSON client accepts, extensions only after them."""
    readers = {base: raw(base) for base in ("send-all", "send-group", "send-user", "send-conn")}
    room, alice = unique("room"), unique("alice")
    a, b = connect(fleet.a), connect(fleet.b, user=alice)
    tag = unique("net")
    a.call("emit", {"event": "E", "args": [tag, 1, b"\x01"]})
    a.call("emit", {"event": "E", "data": tag, "to": room, "skip_sid": a.sid})
    a.call("emit", {"event": "E", "data": tag, "user": alice})
    a.call("emit", {"event": "E", "data": tag, "to": b.sid})
    for base, reader in readers.items():
        record = reader.read_until(lambda r: tag.encode() in r.value, what=f"record on {base}")
        value = msgspec.msgpack.decode(record.value)
        excluded, frames = value[0], value[1]
        assert isinstance(excluded, list) and all(isinstance(x, str) for x in excluded)
        assert isinstance(frames, dict) and all(isinstance(v, bytes) for v in frames.values())
        frame = frames["json"]
        assert frame.endswith(b"\x1e")
        message = msgspec.json.decode(frame[:-1])
        assert message["type"] == 1 and message["target"] == "E"
        assert "invocationId" not in message
        if base == "send-all":
            # Binary data: a messagepack frame too, json carries base64 as .NET does.
            assert message["arguments"] == [tag, 1, "AQ=="]
            assert "messagepack" in frames
