"""Connection state recovery on python-socketio's AsyncServer without a
broker: the async copies of the hooks (socketio_hooks.install_async,
emit_steps_async) against a real AsyncServer, with recovery's Kafka reads
stubbed. tests/integration/test_asgi_recovery.py runs the real thing."""
import asyncio
import json
import threading
import time
from types import SimpleNamespace

import socketio
from socketio import async_manager, manager

from flask_signalr_kafka.managers import socketio_hooks
from flask_signalr_kafka.recovery.recovery import Restore
from flask_signalr_kafka.recovery.sessions import SAVED, Session
from flask_signalr_kafka.runtime.loop_bridge import Blocking, InFlight
from flask_signalr_kafka.wire.offsets import parse
from tests.unit.managers.test_socketio_hooks import recording_async_manager
from tests.unit.recovery.test_recovery_state import recovery


def _joined(mgr):
    """s1 announced recovery, s2's missed events are being replayed, s3
    takes no part: all in "room"."""
    for sid, eio in (("s1", "e1"), ("s2", "e2"), ("s3", "e3")):
        mgr.basic_enter_room(sid, "/", None, eio_sid=eio)
        mgr.basic_enter_room(sid, "/", "room", eio_sid=eio)


def _recovery():
    r = recovery()
    r.log.tag = "tag"
    r.announced.add("s1")
    r.replaying["s2"] = []
    return r


def test_emit_steps_async_sends_what_the_sync_emit_sends():
    """The same packets to the same clients, offsets included, and the same
    events held back for a connection whose replay is under way."""
    def sync_run():
        sent = []
        server = socketio.Server()
        server._send_eio_packet = lambda eio_sid, pkt: sent.append((eio_sid, pkt.encode()))
        mgr = manager.Manager()
        mgr.set_server(server)
        _joined(mgr)
        r = _recovery()
        socketio_hooks.emit(mgr, r, "ev", ("a", b"\x00bin"), "/", "room", ["s3"],
                            [["send-group", "room", 0, 5]])
        socketio_hooks.emit(mgr, r, "ev", None, "/", None, None, [["send-all", None, 1, 7]])
        return sent, r.replaying["s2"]

    async def async_run():
        sent = []
        mgr = recording_async_manager(sent)
        r = _recovery()
        await socketio_hooks.emit_steps_async(mgr, r, "ev", ("a", b"\x00bin"), "/", "room",
                                              ["s3"], [["send-group", "room", 0, 5]])
        await socketio_hooks.emit_steps_async(mgr, r, "ev", None, "/", None, None,
                                              [["send-all", None, 1, 7]])
        return sent, r.replaying["s2"]

    ours, held = asyncio.run(async_run())
    theirs, sync_held = sync_run()
    assert ours == theirs and held == sync_held
    assert [eio for eio, _ in ours] == ["e1", "e1", "e1", "e3"]  # binary: two packets
    assert len(held) == 2
    # Only the client that announced recovery gets an offset.
    assert parse(json.loads(ours[2][1][2:])[-1]) is not None
    assert json.loads(ours[3][1][2:]) == ["ev"]


class PendingManager(async_manager.AsyncManager):
    """AsyncKafkaManager.pre_connect's recovery part, without Kafka."""

    def __init__(self, r):
        super().__init__()
        self.r = r

    async def pre_connect(self, eio_sid, namespace):
        restore = self.r.take_pending(eio_sid, namespace)
        if restore is None:
            return await super().pre_connect(eio_sid, namespace)
        sid = restore.session.sid
        self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        self.r.begin(sid, namespace, restore.session)
        for room in restore.session.rooms:
            self.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self.pending_connect.setdefault(namespace, []).append(sid)
        return sid


def test_async_handshake_replays_before_connect_and_waits_for_kafka_off_the_loop():
    """A returning client gets its missed events, then the live one that came
    during the replay, then CONNECT with its old sid and pid; the session
    lookup, the replay's read and the save at its drop run in threads, never
    on the loop; the app's connect handler sees its own auth only."""
    r = recovery()
    pool = Blocking()
    threads = {}
    sent = []
    seen_auth = []
    session = Session(SAVED, "old~sid", "/", ["room1"], "host_2", "cd", time.time())

    async def main():
        loop = asyncio.get_running_loop()
        mgr = PendingManager(r)
        server = socketio.AsyncServer(client_manager=mgr)
        r.host = mgr

        async def send_packet(eio_sid, pkt):
            sent.append(("packet", pkt.packet_type, pkt.data))

        async def send_eio_packet(eio_sid, pkt):
            sent.append(("event", json.loads(pkt.data[1:])))

        server._send_packet = send_packet
        server._send_eio_packet = send_eio_packet

        @server.on("connect")
        async def connect(sid, environ, auth):
            seen_auth.append(auth)

        def prepare(eio_sid, namespace, pid, offset):
            threads["prepare"] = threading.current_thread()
            restore = Restore(pid, session, offset)
            r.handshake._pending[(eio_sid, namespace)] = restore
            return restore

        def read_missed(restore):
            threads["read"] = threading.current_thread()
            # A live event for the connection while its replay reads Kafka.
            asyncio.run_coroutine_threadsafe(socketio_hooks.emit_steps_async(
                mgr, r, "live", [2], "/", "room1", None, [["send-group", "room1", 0, 9]]),
                loop).result(5)
            return [([["send-group", "room1", 0, 8]], "missed", [1])]

        saves = []
        put = r.store.put

        def watched_put(pid, s):
            saves.append((threading.current_thread(), s))
            put(pid, s)

        r.prepare, r.read_missed, r.store.put = prepare, read_missed, watched_put
        socketio_hooks.install_async(server, r, pool.call)
        server.environ["e1"] = {}
        server.eio.sockets["e1"] = SimpleNamespace(closed=False)  # still open after the replay
        await server._handle_connect("e1", "/", {"pid": "p-1", "offset": "cd.3", "token": "t"})
        assert mgr.is_connected("old~sid", "/") and r.is_recovered("old~sid", "/")
        assert "old~sid" not in r.replaying
        await server._handle_disconnect("e1", "/", "transport close")
        return saves

    saves = asyncio.run(main())
    pool.shutdown()
    assert threads["prepare"] is not threading.main_thread()
    assert threads["read"] is not threading.main_thread()
    kinds = [(s[0], s[1][0]) if s[0] == "event" else s[:2] for s in sent]
    assert kinds == [("event", "missed"), ("event", "live"), ("packet", socketio.packet.CONNECT)]
    assert sent[2][2] == {"sid": "old~sid", "pid": "p-1"}
    assert all(parse(s[1][-1]) is not None for s in sent[:2])  # each with its offset
    assert seen_auth == [{"token": "t"}]
    (thread, saved), = [(t, s) for t, s in saves if s.state == SAVED]
    assert thread is not threading.main_thread()
    assert saved.sid == "old~sid" and saved.rooms == ["room1"]


def test_delivery_stands_at_the_first_record_still_queued_for_the_loop():
    """A consumer's position counts a record once its thread read it; under
    asyncio the loop delivers it later: recovery's positions (a replay's
    end, a session's save, a reference point) must not count it before."""
    flight = InFlight()
    consumed = {("send-all", 0): 10, ("send-group", 2): 7}
    assert flight.behind(consumed) == consumed
    flight.add(("send-all", 0), 8)
    flight.add(("send-all", 0), 9)
    flight.add(("send-group", 3), 4)  # a partition no longer read: ignored
    assert flight.behind(consumed) == {("send-all", 0): 8, ("send-group", 2): 7}
    flight.done(("send-all", 0))
    assert flight.behind(consumed)[("send-all", 0)] == 9
    flight.add(("send-all", 0), 10)
    flight.undo(("send-all", 0))  # the loop was not there to take it
    flight.done(("send-all", 0))
    assert flight.behind(consumed) == consumed
