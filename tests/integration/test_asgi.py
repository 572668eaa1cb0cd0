"""AsyncKafkaManager under uvicorn, in one fleet with Flask-SocketIO dynos:
two ASGI servers (tests/asgi_server_app.py), a gevent one and a threading one
(tests/server_app.py) on the same topics, with real Socket.IO clients
(python-socketio's Client and the official JS client)."""
import time

import pytest
import requests
from kafka import KafkaProducer

from testkit.harness import Fleet, unique, wait_until
from testkit.node_clients import NodeClients


@pytest.fixture(scope="module")
def fleet(broker, artifacts):
    """This module's fleet (conftest's ``connect`` connects to it)."""
    f = Fleet(broker, artifacts)
    f.x = f.server("X", RUNNER="uvicorn", ACK_TIMEOUT=3)
    f.y = f.server("Y", RUNNER="uvicorn", ACK_TIMEOUT=3)
    f.g = f.server("G", ACK_TIMEOUT=3)
    f.t = f.server("T", ASYNC_MODE="threading", ACK_TIMEOUT=3)
    yield f
    f.close()


def test_async_server_is_ready_before_any_client(fleet):
    assert fleet.x.ready() and fleet.y.ready()
    assert requests.get(fleet.x.url + "/ready", timeout=5).text == '"ready"'


def test_every_kind_of_server_reaches_every_other(fleet, connect):
    servers = [fleet.x, fleet.y, fleet.g, fleet.t]
    clients = [connect(s) for s in servers]
    for sender in clients:
        data = unique(f"all-{sender.server.label}")
        assert sender.call("emit", {"event": "news", "data": data}) == "ok"
        for receiver in clients:
            receiver.wait_for("news", (data,))


def test_sid_user_and_room_across_the_mixed_fleet(fleet, connect):
    x, g, t, y = connect(fleet.x), connect(fleet.g, user=unique("u")), connect(fleet.t), \
        connect(fleet.y)
    # One connection, on a gevent dyno, from an async one, and back.
    data = unique("dm")
    x.call("emit", {"event": "dm", "data": data, "to": g.sid})
    g.wait_for("dm", (data,))
    back = unique("dm")
    t.call("emit", {"event": "dm", "data": back, "to": x.sid})
    x.wait_for("dm", (back,))
    # A user's room, joined in the gevent dyno's connect handler.
    name = unique("user")
    u1, u2 = connect(fleet.x, user=name), connect(fleet.t, user=name)
    data = unique("user")
    y.call("emit", {"event": "hi", "data": data, "user": name})
    u1.wait_for("hi", (data,))
    u2.wait_for("hi", (data,))
    # A room with members on each kind of server; skip_sid too.
    room = unique("room")
    for c in (x, g, t, y):
        assert c.call("join", {"room": room}) == "ok"
    data = unique("room")
    g.call("emit", {"event": "r", "data": data, "to": room, "skip_sid": t.sid})
    for c in (x, g, y):
        c.wait_for("r", (data,))
    several = unique("args")
    x.call("emit", {"event": "many", "args": [several, 2, {"k": [1]}], "to": room})
    for c in (g, t, y):
        c.wait_for("many", (several, 2, {"k": [1]}))
    time.sleep(0.5)
    assert t.got("r") == [] and x.got("dm") == [(back,)]


def test_namespaces_stay_apart(fleet, connect):
    plain = connect(fleet.g)
    chat = connect(fleet.x, namespaces=("/", "/chat"))
    data = unique("chat")
    plain.call("emit", {"event": "c", "data": data, "namespace": "/chat"})
    chat.wait_for("c", (data,), namespace="/chat")
    time.sleep(0.3)
    assert chat.got("c") == [] and plain.got("c") == []


def test_remote_join_and_leave_wait_for_the_owners_ack(fleet, connect):
    x, g, t = connect(fleet.x), connect(fleet.g), connect(fleet.t)
    room = unique("remote")
    # The async server joins a gevent dyno's connection, then the other way.
    assert x.call("join", {"room": room, "sid": g.sid}) == "ok"
    assert g.call("join", {"room": room, "sid": x.sid}) == "ok"
    assert sorted(g.call("rooms")) == [room] and sorted(x.call("rooms")) == [room]
    data = unique("after-join")
    t.call("emit", {"event": "j", "data": data, "to": room})
    x.wait_for("j", (data,))
    g.wait_for("j", (data,))
    assert t.call("leave", {"room": room, "sid": x.sid}) == "ok"
    assert x.call("rooms") == []


def test_remote_join_of_a_gone_connection_times_out(fleet, connect):
    x, g = connect(fleet.x), connect(fleet.g)
    gone = g.sid
    g.close()
    started = time.monotonic()
    assert x.call("join", {"room": unique("r"), "sid": gone}) == "timeout"
    assert 2.5 < time.monotonic() - started < 10
    # The loop went on serving while it waited: the next call answers at once.
    assert x.call("whoami")["server"] == "X"


def test_callbacks_run_on_the_emitting_server(fleet, connect):
    x = connect(fleet.x, answers={"ask": lambda q: f"x-says-{q}"})
    g = connect(fleet.g, answers={"ask": lambda q: f"g-says-{q}"})
    assert x.call("call", {"event": "ask", "data": "1", "to": g.sid}) == {"answer": "g-says-1"}
    assert g.call("call", {"event": "ask", "data": "2", "to": x.sid}) == {"answer": "x-says-2"}
    y = connect(fleet.y, answers={"ask": lambda q: f"y-says-{q}"})
    assert x.call("call", {"event": "ask", "data": "3", "to": y.sid}) == {"answer": "y-says-3"}


def test_disconnect_and_close_room_act_on_every_server(fleet, connect):
    x, g, t = connect(fleet.x), connect(fleet.g), connect(fleet.t)
    assert g.call("kick", {"sid": x.sid}) == "ok"
    assert x.disconnected.wait(10)
    assert connect(fleet.y).call("kick", {"sid": t.sid}) == "ok"
    assert t.disconnected.wait(10)
    room = unique("closing")
    a, b = connect(fleet.x), connect(fleet.g)
    for c in (a, b):
        assert c.call("join", {"room": room}) == "ok"
    assert b.call("close", {"room": room}) == "ok"
    wait_until(lambda: a.call("rooms") == [], 10, what="room closed on the async server")
    assert b.call("rooms") == []


def test_fleet_queries_span_every_kind_of_server(fleet, connect):
    """fetch_sockets, server_count, sockets_join and server_side_emit from an
    async server reach the gevent and threading dynos, and back."""
    x, g, t = connect(fleet.x), connect(fleet.g), connect(fleet.t)
    room = unique("who")
    for c in (x, g, t):
        assert c.call("join", {"room": room}) == "ok"
    for asker in (x, g):
        found = asker.call("fleet", {"op": "fetch_sockets", "room": room})
        assert sorted(s["sid"] for s in found["sockets"]) == sorted([x.sid, g.sid, t.sid])
        assert all(room in s["rooms"] for s in found["sockets"])
        assert asker.call("fleet", {"op": "server_count"}) == {"count": 4}
    other = unique("joined")
    assert g.call("fleet", {"op": "sockets_join", "room": room, "rooms": [other]}) == "ok"
    wait_until(lambda: other in x.call("rooms") and other in t.call("rooms"), 10, 0.2,
               "the async and threading servers' connections in the new room")
    answers = x.call("fleet", {"op": "server_side_emit", "event": "whoareyou", "args": [1]})
    assert sorted(a["label"] for a in answers["responses"]) == ["G", "T", "Y"]
    answers = g.call("fleet", {"op": "server_side_emit", "event": "whoareyou", "args": [2],
                               "callback": True})
    assert sorted(a["label"] for a in answers["responses"]) == ["T", "X", "Y"]
    assert all(a["args"] == [2] for a in answers["responses"])


def test_malformed_record_is_logged_and_skipped(fleet, connect):
    x = connect(fleet.x)
    producer = KafkaProducer(bootstrap_servers=fleet.broker.bootstrap)
    producer.send(fleet.topic("send-all"), b"\xc1garbage-asgi")
    producer.send(fleet.topic("group-mgmt"), b"\x93\x01", key=b"k")
    producer.flush()
    producer.close()
    data = unique("after-garbage")
    connect(fleet.g).call("emit", {"event": "ok", "data": data})
    x.wait_for("ok", (data,))
    wait_until(lambda: fleet.x.log().count("skipping malformed record") >= 2, 10,
               what="the malformed records logged")
    assert "WARNING" in fleet.x.log()


def test_official_js_client_on_the_async_server(fleet, connect, artifacts):
    driver = NodeClients(max_seconds=60, log_path=artifacts / "asgi-js.log")
    try:
        room = unique("js")
        name = unique("jsuser")
        driver.add([{"id": "js", "urls": [fleet.x.url], "auth": {"user": name},
                     "rooms": [room], "policy": "stay"}])
        sid = driver.wait_ready(["js"], 30)["js"]
        g = connect(fleet.g)
        sent = {kind: unique(kind) for kind in ("all", "room", "user", "sid")}
        g.call("emit", {"event": "s", "data": sent["all"]})
        g.call("emit", {"event": "s", "data": sent["room"], "to": room})
        g.call("emit", {"event": "s", "data": sent["user"], "user": name})
        g.call("emit", {"event": "s", "data": sent["sid"], "to": sid})

        def got():
            log = driver.report("full")[0]["eventLog"]
            return {kind for kind, data in sent.items()
                    if any(e[1] == "s" and e[2] == [data] for e in log)}

        wait_until(lambda: got() == set(sent), 15, 0.3, "the JS client's four events")
        # The JS client's own emit reaches a Python client on the gevent dyno.
        data = unique("from-js")
        answer = driver.emit("js", "emit", {"event": "js", "data": data, "to": g.sid})
        assert answer["answer"] == "ok"
        g.wait_for("js", (data,))
    finally:
        driver.close()


def test_close_leaves_no_thread_or_task(broker, artifacts):
    f = Fleet(broker, artifacts)
    try:
        server = f.server("closing", RUNNER="uvicorn")
        client = f.client(server)
        assert client.call("whoami")["server"] == "closing"
        left = requests.post(server.url + "/close", timeout=30).json()
        assert left == {"threads": [], "tasks": []}
    finally:
        f.close()


def test_write_only_async_emitter_reaches_every_kind_of_server(fleet, connect):
    """A worker's ``await mgr.emit(...)`` then ``await mgr.close()``."""
    import asyncio

    from flask_signalr_kafka import AsyncKafkaManager, KafkaTopicConfig, user

    name = unique("worker-user")
    x, g = connect(fleet.x, user=name), connect(fleet.g, user=name)
    room = unique("worker-room")
    for c in (x, g):
        assert c.call("join", {"room": room}) == "ok"

    async def work():
        mgr = AsyncKafkaManager(fleet.broker.bootstrap, write_only=True,
                                topic_config=KafkaTopicConfig(prefix=fleet.prefix))
        await mgr.emit("job", "to-room", room=room)
        await mgr.emit("job", "to-user", to=user(name))
        await mgr.emit("job", "to-sid", to=x.sid)
        await mgr.close()

    asyncio.run(asyncio.wait_for(work(), 60))
    for c in (x, g):
        c.wait_for("job", ("to-room",))
        c.wait_for("job", ("to-user",))
    x.wait_for("job", ("to-sid",))
