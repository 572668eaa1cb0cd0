"""Every addressing form of docs/routing.md across two real server processes,
with the raw records checked where the topic or key matters."""
import os

import msgspec
import pytest

from flask_signalr_kafka.wire import hub_protocol
from testkit.harness import unique, wait_until

# The combinations besides the default one that run this module (make test).
pytestmark = [pytest.mark.tansu, pytest.mark.threading, pytest.mark.confluent]


def invocation(record):
    """Read a send-* value as a .NET reader does: [excluded, {protocol: frame}]."""
    value = msgspec.msgpack.decode(record.value)
    assert isinstance(value, list) and len(value) >= 2
    excluded, frames = value[0], value[1]
    return excluded, frames, hub_protocol.decode_json(frames["json"])


def test_manager_consumes_before_any_client(fleet):
    # /ready is mgr.wait_ready(0): true with no client ever connected.
    assert fleet.a.ready() and fleet.b.ready()


def test_broadcast_reaches_every_server_on_send_all(fleet, connect, raw):
    raw = raw("send-all")
    a, b = connect(fleet.a), connect(fleet.b)
    data = unique("all")
    assert a.call("emit", {"event": "news", "data": data}) == "ok"
    a.wait_for("news", (data,))
    b.wait_for("news", (data,))
    record = raw.read_until(lambda r: data.encode() in r.value, what="the broadcast")
    assert record.key is None
    excluded, frames, (target, args) = invocation(record)
    assert (excluded, target, args) == ([], "news", [data])


def test_emit_to_sid_on_other_server_uses_send_conn(fleet, connect, raw):
    raw = raw("send-conn")
    a, b, other = connect(fleet.a), connect(fleet.b), connect(fleet.b)
    data = unique("conn")
    a.call("emit", {"event": "dm", "data": data, "to": b.sid})
    b.wait_for("dm", (data,))
    record = raw.read_until(lambda r: data.encode() in r.value)
    assert record.key == b.sid.encode()
    # Only that connection got it.
    other_data = unique("check")
    a.call("emit", {"event": "dm", "data": other_data, "to": other.sid})
    other.wait_for("dm", (other_data,))
    assert b.got("dm") == [(data,)] and other.got("dm") == [(other_data,)]
    assert a.got("dm") == []


def test_emit_to_local_sid_is_delivered_directly(fleet, connect, raw):
    raw = raw("send-conn")
    a, a2 = connect(fleet.a), connect(fleet.a)
    data = unique("local")
    a.call("emit", {"event": "dm", "data": data, "to": a2.sid})
    a2.wait_for("dm", (data,))
    marker = unique("marker")
    b = connect(fleet.b)
    a.call("emit", {"event": "dm", "data": marker, "to": b.sid})
    if os.environ.get("TEST_RECOVERY") == "1":
        # With recovery on, a local connection's events are in Kafka too,
        # for the replay if it drops before they reach it (the two records
        # may sit on different partitions: wait for each).
        raw.read_until(lambda r: data.encode() in r.value)
        raw.read_until(lambda r: marker.encode() in r.value)
        assert sum(data.encode() in r.value for r in raw.drain()) == 1
    else:
        raw.read_until(lambda r: marker.encode() in r.value)
        assert not [r for r in raw.records if data.encode() in r.value]


def test_room_emit_uses_send_group_keyed_by_room(fleet, connect, raw):
    raw = raw("send-group")
    room = unique("room")
    a, b, outsider = connect(fleet.a), connect(fleet.b), connect(fleet.b)
    assert a.call("join", {"room": room}) == "ok"
    assert b.call("join", {"room": room}) == "ok"
    data = unique("group")
    b.call("emit", {"event": "chat", "data": data, "to": room})
    a.wait_for("chat", (data,))
    b.wait_for("chat", (data,))
    record = raw.read_until(lambda r: data.encode() in r.value)
    assert record.key == room.encode()
    assert outsider.got("chat") == []


def test_user_emit_reaches_every_tab_on_send_user(fleet, connect, raw):
    raw = raw("send-user")
    alice = unique("alice")
    tab1, tab2, tab3 = (connect(fleet.a, user=alice), connect(fleet.b, user=alice),
                        connect(fleet.b, user=alice))
    bob = connect(fleet.b, user=unique("bob"))
    data = unique("private")
    bob.call("emit", {"event": "pm", "data": data, "user": alice})
    for tab in (tab1, tab2, tab3):
        tab.wait_for("pm", (data,))
    record = raw.read_until(lambda r: data.encode() in r.value)
    assert record.key == alice.encode()
    assert bob.got("pm") == []


def test_list_of_targets_is_one_record_per_target_and_one_delivery_per_client(
        fleet, connect, raw):
    room, alice = unique("room"), unique("alice")
    a, local_member = connect(fleet.a), connect(fleet.a)
    b, c = connect(fleet.b), connect(fleet.b, user=alice)
    for client in (local_member, b, c):
        client.call("join", {"room": room})
    readers = {base: raw(base) for base in ("send-group", "send-conn", "send-user")}
    data = unique("multi")
    # c is in all three targets, local_member in the room and named by sid.
    a.call("emit", {"event": "multi", "data": data,
                    "to": [room, c.sid, "user:" + alice, local_member.sid]})
    for client in (b, c, local_member):
        client.wait_for("multi", (data,))
    group = readers["send-group"].read_until(lambda r: data.encode() in r.value)
    conn = readers["send-conn"].read_until(lambda r: data.encode() in r.value)
    to_user = readers["send-user"].read_until(lambda r: data.encode() in r.value)
    assert (group.key, conn.key, to_user.key) == (room.encode(), c.sid.encode(), alice.encode())
    # Each connection once, as python-socketio delivers a list: a later
    # message proves the duplicates were not merely slow.
    marker = unique("after")
    a.call("emit", {"event": "multi", "data": marker, "to": [room]})
    for client in (b, c, local_member):
        client.wait_for("multi", (marker,))
        assert client.got("multi") == [(data,), (marker,)]
    assert not [r for r in readers["send-conn"].records
                if local_member.sid.encode() in r.key]  # local: written directly


def test_skip_sid_is_the_excluded_list(fleet, connect, raw):
    raw = raw("send-group")
    room = unique("room")
    a, b1, b2 = connect(fleet.a), connect(fleet.b), connect(fleet.b)
    for c in (a, b1, b2):
        c.call("join", {"room": room})
    data = unique("skip")
    a.call("emit", {"event": "chat", "data": data, "to": room, "skip_sid": [a.sid, b1.sid]})
    b2.wait_for("chat", (data,))
    record = raw.read_until(lambda r: data.encode() in r.value)
    excluded, _, _ = invocation(record)
    assert sorted(excluded) == sorted([a.sid, b1.sid])
    # A later message to the room proves the skipped ones were not just slow.
    later = unique("later")
    b2.call("emit", {"event": "chat", "data": later, "to": room})
    b1.wait_for("chat", (later,))
    a.wait_for("chat", (later,))
    assert (data,) not in a.got("chat") and (data,) not in b1.got("chat")


def test_namespaces_stay_apart(fleet, connect, raw):
    a = connect(fleet.a, namespaces=("/", "/chat"))
    b = connect(fleet.b, namespaces=("/", "/chat"))
    data = unique("ns")
    a.call("emit", {"event": "ns", "data": data}, namespace="/chat")
    b.wait_for("ns", (data,), namespace="/chat")
    a.wait_for("ns", (data,), namespace="/chat")
    marker = unique("root")
    a.call("emit", {"event": "ns", "data": marker})
    b.wait_for("ns", (marker,))
    assert b.got("ns") == [(marker,)]


@pytest.mark.parametrize("payload", [
    {"data": {"n": 1, "f": 2.5, "t": True, "z": None, "l": [1, "x", {"y": []}], "u": "héllo ☃"}},
    {"args": ["one", 2, {"three": 3}]},
    {"data": b"\x00\x01binary\xff"},
    {"args": ["text", b"\x00bytes", {"nested": b"\xfe"}]},
])
def test_data_of_every_kind_arrives_unchanged(fleet, connect, payload):
    a, b = connect(fleet.a), connect(fleet.b)
    room = unique("room")
    b.call("join", {"room": room})
    a.call("emit", {"event": "data", "to": room, **payload})
    expected = tuple(payload["args"]) if "args" in payload else (payload["data"],)
    b.wait_for("data", expected)


def test_callback_and_call_across_servers(fleet, connect, raw):
    answerer = connect(fleet.b, answers={"question": lambda x: f"{x}!"})
    asker = connect(fleet.a)
    word = unique("q")
    assert asker.call("call", {"event": "question", "data": word, "to": answerer.sid}) == {
        "answer": f"{word}!"
    }
    # The answer came back as an Ack keyed by the asking server's name.
    raw = raw("ack")
    raw.read_until(lambda r: f"{word}!".encode() in r.value and r.key, what="callback ack")


def test_remote_join_and_leave_wait_for_the_ack(fleet, connect, raw):
    groups = raw("group-mgmt")
    acks = raw("ack")
    room = unique("room")
    a, b = connect(fleet.a), connect(fleet.b)
    assert a.call("join", {"room": room, "sid": b.sid}) == "ok"
    # Returned only after B applied it: B is in the room now.
    assert room in b.call("rooms")
    command = groups.read_until(lambda r: r.key == room.encode())
    cmd = msgspec.msgpack.decode(command.value)
    assert cmd[2:5] == [1, room, b.sid]
    server_a = cmd[1]
    ack = acks.read_until(lambda r: r.key == server_a.encode()
                          and msgspec.msgpack.decode(r.value)[0] == cmd[0], what="the ack")
    assert msgspec.msgpack.decode(ack.value) == [cmd[0]]
    data = unique("after-join")
    a.call("emit", {"event": "chat", "data": data, "to": room})
    b.wait_for("chat", (data,))
    assert a.call("leave", {"room": room, "sid": b.sid}) == "ok"
    assert room not in b.call("rooms")


def test_remote_join_of_unknown_sid_times_out(fleet, connect, raw):
    a = connect(fleet.a)
    # The fleet's ACK_TIMEOUT is 3 s; the server turns AckTimeoutError into "timeout".
    ghost = "sid~" + "A" * 20
    assert a.call("join", {"room": unique("room"), "sid": ghost}, timeout=20) == "timeout"


def test_disconnect_acts_on_every_server(fleet, connect, raw):
    a, b = connect(fleet.a), connect(fleet.b)
    a.call("kick", {"sid": b.sid})
    assert b.disconnected.wait(10)


def test_close_room_acts_on_every_server(fleet, connect, raw):
    room = unique("room")
    a, b = connect(fleet.a), connect(fleet.b)
    a.call("join", {"room": room})
    b.call("join", {"room": room})
    a.call("close", {"room": room})
    wait_until(lambda: room not in b.call("rooms"), 10, what="room closed on B")
    assert room not in a.call("rooms")
