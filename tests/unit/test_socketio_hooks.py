"""socketio_hooks.py copies python-socketio 5.18.1 private methods: these
tests fail loudly when python-socketio changes them, so the copies are read
again before anyone relies on them."""
import hashlib
import inspect

import socketio
from socketio import base_manager, manager

from flask_signalr_kafka import socketio_hooks

# sha256 of the source of each method our hooks copy or call, in 5.18.1.
FOLLOWED = {
    socketio.Server._handle_connect: "1b0ba130a57d9320",
    socketio.Server._handle_disconnect: "fb93d61de8cb8c31",
    manager.Manager.emit: "566510ea2de39d65",
    socketio.Server._send_eio_packet: "5fa452fb118c3565",
    base_manager.BaseManager.basic_disconnect: "2933b50bc4b2ea7b",
    base_manager.BaseManager.get_rooms: "56a1017f85af9f91",
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
        "flask_signalr_kafka/socketio_hooks.py, then update FOLLOWED"
    )


def test_the_private_attributes_used_exist():
    server = socketio.Server()
    for name in ("_handle_connect", "_handle_disconnect", "_send_eio_packet", "_send_packet",
                 "_trigger_event", "packet_class", "always_connect", "environ", "handlers",
                 "namespace_handlers", "namespaces"):
        assert hasattr(server, name), name
    assert hasattr(server.eio, "ping_interval") and hasattr(server.eio, "ping_timeout")
