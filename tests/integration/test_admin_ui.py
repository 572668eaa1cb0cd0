"""The Socket.IO Admin UI (python-socketio's ``server.instrument()``) on a
fleet: two real server processes with the Admin UI on, a real
socketio.Client on the /admin namespace of one of them (what the Admin UI
web app is), and ordinary clients on both."""
import re
import socket
import threading

import pytest
import socketio

from testkit.harness import unique, wait_until


class Admin:
    """A socketio.Client on /admin that records every Admin UI event."""

    def __init__(self, server):
        self.events = []
        self._lock = threading.Lock()
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("*", self._record, namespace="/admin")
        self.sio.connect(server.url, transports=["websocket"], namespaces=["/admin"],
                         wait_timeout=10)

    def _record(self, event, *args):
        with self._lock:
            self.events.append((event, args))

    def got(self, event):
        with self._lock:
            return [args for ev, args in self.events if ev == event]

    def emit(self, event, *args):
        self.sio.emit(event, args, namespace="/admin")

    def close(self):
        self.sio.disconnect()


@pytest.fixture
def admin_fleet(new_fleet):
    new_fleet.a, new_fleet.b = new_fleet.start_servers("A", "B", ADMIN_UI=1)
    admin = Admin(new_fleet.a)
    yield new_fleet, admin
    admin.close()


def test_each_dyno_reports_its_own_stats(admin_fleet):
    fleet, admin = admin_fleet
    # python-socketio starts a server's stats at its first Engine.IO connection.
    fleet.client(fleet.b)
    stats = wait_until(
        lambda: len({s[0]["serverId"] for s in admin.got("server_stats")}) >= 2 and
        admin.got("server_stats"), 15, what="server_stats from both dynos")
    ids = {s[0]["serverId"] for s in stats}
    # Each dyno under its own id (its server name), not the shared hostname.
    assert len(ids) == 2
    assert all(re.fullmatch(re.escape(socket.gethostname()) + r"_[0-9a-f]{32}", i) for i in ids)
    config = wait_until(lambda: admin.got("config"), 5, what="config")
    assert "EMIT" in config[0][0]["supportedFeatures"]


def test_sockets_and_rooms_of_every_dyno_reach_the_admin(admin_fleet):
    fleet, admin = admin_fleet
    alice = unique("alice")
    on_b = fleet.client(fleet.b, user=alice)
    on_a = fleet.client(fleet.a)
    room = unique("room")
    assert on_b.call("join", {"room": room}) == "ok"

    def connected(sid):
        return [s for s, _ in admin.got("socket_connected") if s["id"] == sid]

    # B's socket, announced by B through the backplane, with its rooms.
    seen = wait_until(lambda: connected(on_b.sid), 10, what="B's socket_connected")
    assert seen[0]["nsp"] == "/" and on_b.sid in seen[0]["rooms"]
    wait_until(lambda: connected(on_a.sid), 10, what="A's socket_connected")
    joined = wait_until(
        lambda: [j for j in admin.got("room_joined") if j[2] == on_b.sid and j[1] == room],
        10, what="B's room_joined")
    assert joined[0][0] == "/"
    # The user room of B's socket was joined in its connect handler.
    assert any(j[2] == on_b.sid and alice in j[1] for j in admin.got("room_joined"))

    assert on_b.call("leave", {"room": room}) == "ok"
    wait_until(lambda: [x for x in admin.got("room_left") if x[1] == room and x[2] == on_b.sid],
               10, what="B's room_left")
    sid_b = on_b.sid
    on_b.close()
    gone = wait_until(lambda: [d for d in admin.got("socket_disconnected") if d[1] == sid_b],
                      10, what="B's socket_disconnected")
    assert gone[0][0] == "/"


def test_emit_from_the_admin_reaches_every_dyno(admin_fleet):
    fleet, admin = admin_fleet
    on_a = fleet.client(fleet.a)
    on_b = fleet.client(fleet.b)
    wait_until(lambda: admin.got("config"), 5, what="config")
    note = unique("note")
    # The Admin UI's emit: namespace, room filter (none: everyone), event, args.
    admin.emit("emit", "/", None, "from-admin", note, 2)
    on_a.wait_for("from-admin", (note, 2))
    on_b.wait_for("from-admin", (note, 2))
    # To one socket on the other dyno, by its id.
    only = unique("only")
    admin.emit("emit", "/", on_b.sid, "from-admin", only)
    on_b.wait_for("from-admin", (only,))
    assert (only,) not in on_a.got("from-admin")
