"""The fleet as a whole, with real server processes and real Socket.IO
clients: every call of the fleet API across servers, a server that stops,
dies, freezes or starts mid-run, a write-only emitter, and malformed fleet
records (docs/fleet.md)."""
import re
import signal
import threading
import time
import zlib

import msgspec
import pytest
import requests
from kafka import KafkaProducer

from flask_signalr_kafka import KafkaManager, KafkaTopicConfig
from testkit.harness import unique, wait_until

#: It measures time: under xdist, no other test marked serial runs beside it.
pytestmark = pytest.mark.serial


@pytest.fixture(scope="module")
def trio(broker, artifacts):
    """Three servers for the module (tests use unique rooms and data)."""
    from testkit.harness import Fleet

    f = Fleet(broker, artifacts)
    f.a, f.b, f.c = f.start_servers("A", "B", "C")
    yield f
    f.close()


def name_of(server):
    return requests.get(server.url + "/partitions", timeout=5).json()["server_name"]


def fleet_call(client, op, **msg):
    return client.call("fleet", {"op": op, **msg})


def rooms_of(client, namespace="/"):
    return set(client.call("rooms", namespace=namespace))


def server_events(server):
    return requests.get(server.url + "/server-events", timeout=5).json()


def count_from(client):
    return fleet_call(client, "server_count")["count"]


@pytest.mark.threading
def test_fetch_sockets_gives_every_connection_of_every_server(trio):
    r1, r2, who = unique("r1"), unique("r2"), unique("u")
    a = trio.client(trio.a)
    b = trio.client(trio.b)
    c = trio.client(trio.c, user=who, namespaces=("/", "/chat"))
    for client, room in ((a, r1), (b, r1), (b, r2), (c, r2)):
        assert client.call("join", {"room": room}) == "ok"
    names = {s.label: name_of(s) for s in (trio.a, trio.b, trio.c)}

    found = fleet_call(a, "fetch_sockets", room=r1)["sockets"]
    assert {s["sid"]: s["server_name"] for s in found} == {
        a.sid: names["A"], b.sid: names["B"]}
    rooms = {s["sid"]: set(s["rooms"]) for s in found}
    assert rooms == {a.sid: {a.sid, r1}, b.sid: {b.sid, r1, r2}}
    assert {s["namespace"] for s in found} == {"/"}

    union = fleet_call(c, "fetch_sockets", room=[r1, r2])["sockets"]
    assert sorted(s["sid"] for s in union) == sorted([a.sid, b.sid, c.sid])
    by_user = fleet_call(b, "fetch_sockets", user=who)["sockets"]
    assert [s["sid"] for s in by_user] == [c.sid]
    assert set(by_user[0]["rooms"]) == {c.sid, r2, f"user:{who}"}

    everyone = {s["sid"] for s in fleet_call(b, "fetch_sockets")["sockets"]}
    assert {a.sid, b.sid, c.sid} <= everyone
    chat = fleet_call(a, "fetch_sockets", namespace="/chat")["sockets"]
    assert [(s["sid"], s["namespace"]) for s in chat] == [(c.sid_in("/chat"), "/chat")]
    assert fleet_call(a, "fetch_sockets", room=unique("nobody"))["sockets"] == []


def test_sockets_join_and_leave_reach_every_server(trio):
    room, outside = unique("r"), trio.client(trio.a)
    members = [trio.client(s) for s in (trio.a, trio.b, trio.c)]
    for client in members:
        assert client.call("join", {"room": room}) == "ok"
    x, y = unique("x"), unique("y")
    assert fleet_call(members[1], "sockets_join", rooms=[x, y], room=room) == "ok"
    for client in members:
        wait_until(lambda c=client: {x, y} <= rooms_of(c), 5, what=f"{client.sid} in {x}, {y}")
    assert fleet_call(members[2], "sockets_leave", rooms=x, room=room) == "ok"
    for client in members:
        wait_until(lambda c=client: rooms_of(c) == {room, y}, 5, what=f"{client.sid} left {x}")
    assert rooms_of(outside) == set()
    # A room joined that way is a room like any other: emits to it arrive.
    members[0].call("emit", {"event": "hi", "data": "all of y", "to": y})
    for client in members:
        client.wait_for("hi", ("all of y",))


def test_disconnect_sockets_disconnects_every_matching_connection(trio):
    room = unique("r")
    members = [trio.client(s) for s in (trio.a, trio.b, trio.c)]
    others = [trio.client(trio.b), trio.client(trio.c)]
    for client in members:
        assert client.call("join", {"room": room}) == "ok"
    assert fleet_call(others[0], "disconnect_sockets", room=room) == "ok"
    for client in members:
        assert client.disconnected.wait(5), f"{client.server.label} client still connected"
    assert fleet_call(others[1], "fetch_sockets", room=room)["sockets"] == []
    assert not any(client.disconnected.is_set() for client in others)


@pytest.mark.threading
def test_server_side_emit_reaches_the_other_servers_handlers(trio):
    a, b = trio.client(trio.a), trio.client(trio.b)
    word = unique("note")
    assert fleet_call(a, "server_side_emit", event="note", args=[word, 1]) == "ok"
    assert fleet_call(a, "server_side_emit", event="note", args=[word],
                      namespace="/chat") == "ok"
    for server in (trio.b, trio.c):
        wait_until(lambda s=server: [word, 1] in server_events(s) and ["/chat", word]
                   in server_events(s), 5, what=f"the notes on {server.label}")
    assert not any(word in event for event in server_events(trio.a))

    answer = fleet_call(b, "server_side_emit", event="whoareyou", args=[word], callback=True)
    assert sorted(r["label"] for r in answer["responses"]) == ["A", "C"]
    assert all(r["args"] == [word] for r in answer["responses"])


def test_server_count_counts_every_server(trio):
    for server in (trio.a, trio.b, trio.c):
        assert count_from(trio.client(server)) == 3


def test_a_slow_server_makes_the_query_time_out_with_what_came(trio):
    a = trio.client(trio.a)
    answer = fleet_call(a, "server_side_emit", event="slow", args=[{"C": 4}], callback=True,
                        timeout=1.0)
    assert answer["error"] == "FleetTimeoutError"
    assert answer["responses"] == ["B"]
    assert answer["missing"] == [name_of(trio.c)]
    assert 1.0 <= answer["elapsed"] < 2.0


def test_a_write_only_emitter_is_no_server(trio):
    emitter = KafkaManager(trio.broker.bootstrap,
                           topic_config=KafkaTopicConfig(prefix=trio.prefix), write_only=True)
    word = unique("from-emitter")
    try:
        emitter.server_side_emit("note", word)
        emitter.sockets_join(unique("nothing"), room=unique("empty"))
    finally:
        emitter.close()
    for server in (trio.a, trio.b, trio.c):
        wait_until(lambda s=server: [word] in server_events(s), 5,
                   what=f"the emitter's note on {server.label}")
    assert count_from(trio.client(trio.a)) == 3


def test_malformed_fleet_records_are_logged_and_skipped(trio):
    a = trio.client(trio.a)
    topic = trio.topic("fleet")
    producer = KafkaProducer(bootstrap_servers=trio.broker.bootstrap)
    partitions = sorted(producer.partitions_for(topic))
    mine = 1 + zlib.crc32(name_of(trio.a).encode()) % (len(partitions) - 1)
    bad = [(0, b"\xc1garbage"), (0, b""), (0, msgspec.msgpack.encode([9, "x"])),
           (0, msgspec.msgpack.encode([3, "x", "not an id", 1, "/", None])),
           (0, msgspec.msgpack.encode([4, "x", "/", None, 7, []])),
           (mine, msgspec.msgpack.encode([6, "x", name_of(trio.a), 1, [["sid"]]])),
           (mine, msgspec.msgpack.encode([1, "x"]))]
    sent = []
    for partition, value in bad:
        meta = producer.send(topic, value=value, partition=partition).get(10)
        sent.append((meta.partition, meta.offset))
    producer.close()

    def logged(partition, offset):
        return re.search(rf"WARNING .*{re.escape(topic)} partition {partition} offset {offset}\b",
                         trio.a.log())

    wait_until(lambda: all(logged(*s) for s in sent), 5, what="every bad fleet record logged")
    assert count_from(a) == 3  # "x" never counted: its records were bad
    assert a.sid in {s["sid"] for s in fleet_call(a, "fetch_sockets")["sockets"]}


def test_a_server_killed_mid_query_then_dropped_within_15_s(new_fleet):
    a, _, c = (new_fleet.server(label) for label in "ABC")
    client = new_fleet.client(a)
    assert count_from(client) == 3
    c_name = name_of(c)
    answer = {}

    def ask():
        answer.update(fleet_call(client, "server_side_emit", event="slow", args=[{"C": 30}],
                                 callback=True, timeout=3.0))

    asking = threading.Thread(target=ask)
    asking.start()
    time.sleep(1.0)
    c.process.kill()
    killed = time.monotonic()
    asking.join(10)
    assert answer["error"] == "FleetTimeoutError"
    assert answer["responses"] == ["B"] and answer["missing"] == [c_name]
    # The fleet's sockets without C: a query that waits for C no more.
    wait_until(lambda: count_from(client) == 2, 15, 0.2, what="C no longer counted")
    assert time.monotonic() - killed <= 15
    assert "error" not in fleet_call(client, "fetch_sockets", timeout=2.0)


def test_a_frozen_server_fails_fetch_sockets_with_the_others_sockets(new_fleet):
    a, b, c = (new_fleet.server(label) for label in "ABC")
    clients = [new_fleet.client(s) for s in (a, b, c)]
    room = unique("r")
    for client in clients:
        assert client.call("join", {"room": room}) == "ok"
    c.process.send_signal(signal.SIGSTOP)
    try:
        answer = fleet_call(clients[0], "fetch_sockets", room=room, timeout=1.5)
    finally:
        c.process.send_signal(signal.SIGCONT)
    assert answer["error"] == "FleetTimeoutError"
    assert sorted(s["sid"] for s in answer["responses"]) == sorted(
        [clients[0].sid, clients[1].sid])
    assert answer["missing"] == [name_of(c)]


@pytest.mark.threading
def test_a_started_server_counts_once_ready_and_a_stopped_one_leaves_at_once(new_fleet):
    a, b = new_fleet.server("A"), new_fleet.server("B")
    ca = new_fleet.client(a)
    assert count_from(ca) == 2
    c = new_fleet.server("C")  # returns once C's wait_ready() is true
    cc = new_fleet.client(c)
    assert count_from(ca) == 3
    assert count_from(cc) == 3
    # C answers at once, and its connections are found from A.
    assert cc.sid in {s["sid"] for s in fleet_call(ca, "fetch_sockets")["sockets"]}
    b.stop()  # SIGTERM: B says it stops
    stopped = time.monotonic()
    wait_until(lambda: count_from(ca) == 2 and count_from(cc) == 2, 2, 0.05,
               what="B no longer counted")
    assert time.monotonic() - stopped < 2
    started = time.monotonic()
    assert "error" not in fleet_call(ca, "fetch_sockets", timeout=3.0)
    assert time.monotonic() - started < 1  # no wait for B
