"""socketio_hooks.py copies python-socketio 5.18.1 private methods: these
tests fail loudly when python-socketio changes them, so the copies are read
again before anyone relies on them."""
import hashlib
import inspect

import engineio.socket
import socketio
from socketio import async_manager, base_manager, manager

from flask_signalr_kafka.managers import socketio_hooks

# sha256 of the source of each method our hooks copy or call, in 5.18.1.
FOLLOWED = {
    socketio.Server._handle_connect: "1b0ba130a57d9320",
    socketio.Server._handle_disconnect: "fb93d61de8cb8c31",
    manager.Manager.emit: "566510ea2de39d65",
    socketio.Server._send_eio_packet: "5fa452fb118c3565",
    base_manager.BaseManager.basic_disconnect: "2933b50bc4b2ea7b",
    base_manager.BaseManager.get_rooms: "56a1017f85af9f91",
    async_manager.AsyncManager.emit: "01ccd5b82b4f955e",
    socketio.AsyncServer._send_eio_packet: "64cf72a2ab7d75b1",
    socketio.AsyncServer._handle_connect: "c97c480cf777de36",
    socketio.AsyncServer._handle_disconnect: "c0b32ada5b371230",
    # server_disconnect: Server.disconnect calls the manager's pre_disconnect
    # first, and never _handle_disconnect.
    socketio.Server.disconnect: "a348aff17b8e892e",
    socketio.AsyncServer.disconnect: "7d2f76686c12cc23",
    base_manager.BaseManager.pre_disconnect: "18a8d01ed87a9682",
    # close_socket: python-engineio 4.15's close waits for a poll after the
    # CLOSE (poll puts the queue's None back).
    engineio.socket.Socket.poll: "d7d705066fd3b948",
    engineio.socket.Socket.close: "05fac55831999f25",
}


def test_the_versions_are_the_checked_ones():
    assert socketio_hooks.check_versions() == []


def test_the_copied_methods_are_unchanged():
    changed = [
        f.__qualname__ for f, digest in FOLLOWED.items()
        if hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16] != digest
    ]
    assert not changed, (
        f"python-socketio changed {changed}: compare them with the copies in "
        "flask_signalr_kafka/managers/socketio_hooks.py, then update FOLLOWED"
    )


def test_the_private_attributes_used_exist():
    for server in (socketio.Server(), socketio.AsyncServer()):
        for name in ("_handle_connect", "_handle_disconnect", "_send_eio_packet", "_send_packet",
                     "_trigger_event", "packet_class", "always_connect", "environ", "handlers",
                     "namespace_handlers", "namespaces"):
            assert hasattr(server, name), name
        assert hasattr(server.eio, "ping_interval") and hasattr(server.eio, "ping_timeout")
    # The async copies are awaited where python-socketio awaits the originals.
    for name in ("_handle_connect", "_handle_disconnect", "_send_eio_packet", "_send_packet",
                 "_trigger_event"):
        assert inspect.iscoroutinefunction(getattr(socketio.AsyncServer, name)), name


def recording_async_manager(sent):
    """An AsyncManager whose server appends what it writes to ``sent``;
    s1, s2 and s3 are connected, in "room"."""
    server = socketio.AsyncServer()

    async def send_eio_packet(eio_sid, pkt):
        sent.append((eio_sid, pkt.encode()))

    server._send_eio_packet = send_eio_packet
    mgr = async_manager.AsyncManager()
    mgr.set_server(server)
    for sid, eio in (("s1", "e1"), ("s2", "e2"), ("s3", "e3")):
        mgr.basic_enter_room(sid, "/", None, eio_sid=eio)
        mgr.basic_enter_room(sid, "/", "room", eio_sid=eio)
    return mgr


def test_emit_async_sends_what_async_manager_emit_sends():
    """The copy sends each recipient the packets python-socketio's own emit
    sends, skipping the same sids, in the same order."""
    import asyncio

    async def run(emit):
        sent = []
        mgr = recording_async_manager(sent)
        await emit(mgr, "ev", ("a", {"b": [1]}, b"\x00bin"), "/", "room", ["s2"])
        await emit(mgr, "ev", None, "/", None, None)
        return sent

    async def original(mgr, event, data, namespace, room, skip_sid):
        await async_manager.AsyncManager.emit(mgr, event, data, namespace, room=room,
                                              skip_sid=skip_sid)

    ours = asyncio.run(run(socketio_hooks.emit_async))
    theirs = asyncio.run(run(original))
    assert ours == theirs and len(ours) == 2 * 2 + 3  # binary: two packets each
