"""Where connection state recovery reaches into python-socketio's private API.

python-socketio has no connection state recovery and no hooks for it
(docs/recovery.md): the CONNECT reply must carry a private id, the missed events must
be written before it, the rooms of a dropped connection must be read before
they are dropped, and events to clients that announced recovery carry an
offset. This module is the only place that touches ``Server._handle_connect``,
``Server._handle_disconnect``, ``Server._send_eio_packet`` (and
``AsyncServer``'s) and ``Server.packet_class``, copies a ``BaseManager``
or ``AsyncManager`` method, or relies on the order of calls in
``Server.disconnect`` (:func:`server_disconnect`), or closes an Engine.IO
socket past ``Socket.close``'s wait (:func:`close_socket`); it was written
against the versions below, and tests/unit/managers/test_socketio_hooks.py fails when
python-socketio changes the code these copies follow.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from engineio import packet as eio_packet
from socketio import exceptions, packet

if TYPE_CHECKING:
    from ..recovery.recovery import Recovery

logger = logging.getLogger(__name__)

#: Checked against these; other versions log a warning at startup.
CHECKED_VERSIONS = {"python-socketio": "5.18.", "python-engineio": "4.15."}


def check_versions() -> list[str]:
    """The installed versions this module was not checked against."""
    return [
        f"{name} {version(name)}" for name, prefix in CHECKED_VERSIONS.items()
        if not version(name).startswith(prefix)
    ]


def _warn_unchecked() -> None:
    unchecked = check_versions()
    if unchecked:
        logger.warning("connection state recovery was checked with python-socketio 5.18; "
                       "running with %s", ", ".join(unchecked))


def install(server: Any, recovery: Recovery) -> None:
    """Route ``server``'s connect and disconnect handling through recovery."""
    _warn_unchecked()
    original_disconnect = server._handle_disconnect

    def handle_connect(eio_sid: str, namespace: str | None, data: Any) -> None:
        _handle_connect(server, recovery, eio_sid, namespace or "/", data)

    def handle_disconnect(eio_sid: str, namespace: str | None, reason: str | None = None):
        namespace = namespace or "/"
        sid = server.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and server.manager.is_connected(sid, namespace):
            recovery.on_disconnect(sid, namespace, reason)
        return original_disconnect(eio_sid, namespace, reason)

    server._handle_connect = handle_connect
    server._handle_disconnect = handle_disconnect


def server_disconnect(recovery: Recovery, sid: str, namespace: str) -> None:
    """The manager's ``pre_disconnect``: python-socketio 5.18.1's
    ``Server.disconnect`` and ``AsyncServer.disconnect`` (a disconnect the
    server makes on purpose) call it first, before the DISCONNECT packet,
    and never ``_handle_disconnect``: the session ends here (deleted, its
    pid refused). A connection whose client left was forgotten already by
    the ``_handle_disconnect`` hook, and is untouched."""
    from ..recovery.recovery import SERVER_DISCONNECT

    recovery.on_disconnect(sid, namespace, SERVER_DISCONNECT)


def _eio_packets(server: Any, namespace: str, data: list) -> list:
    encoded = server.packet_class(packet.EVENT, namespace=namespace, data=data).encode()
    if not isinstance(encoded, list):
        encoded = [encoded]
    return [eio_packet.Packet(eio_packet.MESSAGE, p) for p in encoded]


def send_event(server: Any, eio_sid: str, namespace: str, event: str, args: list,
               offset: str) -> None:
    """Write one EVENT, with its offset, to one client."""
    for p in _eio_packets(server, namespace, [event, *args, offset]):
        server._send_eio_packet(eio_sid, p)


def emit(manager: Any, recovery: Recovery, event: str, data: Any, namespace: str, room: Any,
         skip_sid: Any, coords: list) -> None:
    """python-socketio's ``Manager.emit`` without a callback, as one
    delivery step: clients that announced recovery get its offset, those
    whose missed events are being replayed get it afterwards."""
    server = manager.server
    with recovery.log.delivering():  # threads deliver side by side: steps in order
        for eio_sid, pkts in _step_sends(manager, recovery, event, data, namespace, room,
                                         skip_sid, coords):
            for p in pkts:
                server._send_eio_packet(eio_sid, p)


def _step_sends(manager: Any, recovery: Recovery, event: str, data: Any, namespace: str,
                room: Any, skip_sid: Any, coords: list) -> Iterator[tuple[str, list]]:
    """The ``(eio_sid, packets)`` of one delivery step (:func:`emit`); a
    recipient whose replay is under way gets it held back instead."""
    if namespace not in manager.rooms:
        return
    data, skip_sid = _args(data), _sid_list(skip_sid)
    recipients = [(sid, eio_sid) for sid, eio_sid in manager.get_participants(namespace, room)
                  if sid not in skip_sid]
    if not recipients:
        return
    server = manager.server
    offset = recovery.log.step(coords)
    plain = with_offset = None
    for sid, eio_sid in recipients:
        held = recovery.replaying.get(sid)
        if held is not None:
            held.append((event, data, coords))
            continue
        if sid in recovery.announced:
            if with_offset is None:
                with_offset = _eio_packets(server, namespace, [event, *data, offset])
            pkts = with_offset
        else:
            if plain is None:
                plain = _eio_packets(server, namespace, [event, *data])
            pkts = plain
        yield eio_sid, pkts


def _args(data: Any) -> list:
    """An emit's arguments as python-socketio sends them: a tuple is several."""
    if isinstance(data, tuple):
        return list(data)
    return [] if data is None else [data]


def _sid_list(skip_sid: Any) -> list:
    return skip_sid if isinstance(skip_sid, list) else [skip_sid]


async def emit_async(manager: Any, event: str, data: Any, namespace: str, room: Any,
                     skip_sid: Any) -> None:
    """python-socketio 5.18.1's ``AsyncManager.emit`` without a callback,
    each recipient's send awaited in turn instead of run as a task of its
    own: a send only queues the packet for the client's writer task, so a
    task per recipient (and the wait for them all) costs loop iterations
    and buys nothing. Order per client is the same."""
    if namespace not in manager.rooms:
        return
    data, skip_sid = _args(data), _sid_list(skip_sid)
    server = manager.server
    packets = None
    for sid, eio_sid in manager.get_participants(namespace, room):
        if sid not in skip_sid:
            if packets is None:
                packets = _eio_packets(server, namespace, [event, *data])
            for p in packets:
                await server._send_eio_packet(eio_sid, p)


def basic_disconnect(manager: Any, sid: str, namespace: str, rooms: list) -> None:
    """python-socketio 5.18.1's ``BaseManager.basic_disconnect`` given the
    connection's ``rooms``: the original finds them by scanning every room
    of the namespace, a cost per disconnect that grows with the server's
    connections."""
    if namespace not in manager.rooms:
        return
    for room in rooms:
        manager.basic_leave_room(sid, namespace, room)
    manager.callbacks.pop(sid, None)
    for pending in (manager.pending_connect, manager.pending_disconnect):
        if namespace in pending and sid in pending[namespace]:
            pending[namespace].remove(sid)
            if not pending[namespace]:
                del pending[namespace]


def in_browser(environ: Any) -> bool:
    """Whether a connection's client runs in a web browser, where the
    official Socket.IO client is the one that runs: it reads offsets from
    its first connection on, so it need not announce recovery to get them
    (``ConnectionStateRecovery.browser_offsets`` turns this off)."""
    agent = environ.get("HTTP_USER_AGENT", "") if isinstance(environ, dict) else ""
    return agent.startswith("Mozilla/")


#: Seconds after which a socket's close is logged as slow.
SLOW_CLOSE = 2.0


def close_socket(server: Any, eio_sid: str, limit: float, sleep: Callable[[float], Any]) -> None:
    """Close an Engine.IO socket as ``eio.disconnect`` does (the client gets
    what was queued for it, then CLOSE), waiting up to ``limit`` s for that.

    python-engineio 4.15's ``Socket.close`` waits with ``queue.join()``,
    and a long-polling socket's ``poll`` puts the end-of-queue ``None`` back
    after taking it: the join then waits for a poll after the CLOSE, which a
    client that read the CLOSE never makes. In threading mode a drain with
    one polling client waited its whole limit (10 s, at every deploy;
    gevent's server was not seen to). A polling socket is
    closed without that wait, and waited for until its queue holds only the
    ``None``: its client has polled the CLOSE.

    A close that takes longer than :data:`SLOW_CLOSE` s is logged with what
    it waited for: a threading dyno's drain was once held 10 s by one socket
    (soak seed 767198) and nothing said which kind. A websocket's close that
    never returns shows only in the drain's own warning."""
    socket = server.eio.sockets.get(eio_sid)
    started = time.monotonic()
    if socket is None or socket.upgraded:
        server.eio.disconnect(eio_sid)  # a websocket's writer ends the join
        if time.monotonic() - started > SLOW_CLOSE:
            logger.warning("closing the websocket %s took %.1f s (its writer took that long "
                           "to send what was queued and the CLOSE)", eio_sid,
                           time.monotonic() - started)
        return
    socket.close(wait=False, reason=server.eio.reason.SERVER_DISCONNECT)
    deadline = started + limit
    while socket.queue.qsize() > 1 and time.monotonic() < deadline:
        sleep(0.01)
    if socket.queue.qsize() > 1:
        logger.warning("the long-polling socket %s: its client did not poll the CLOSE within "
                       "%g s (gone without a word?); closed without it", eio_sid, limit)
    elif time.monotonic() - started > SLOW_CLOSE:
        logger.warning("the long-polling socket %s: its client polled the CLOSE after %.1f s",
                       eio_sid, time.monotonic() - started)
    server.eio.sockets.pop(eio_sid, None)


def _socket_open(server: Any, eio_sid: str) -> bool:
    socket = server.eio.sockets.get(eio_sid)
    return socket is not None and not socket.closed


def _handle_connect(server: Any, recovery: Recovery, eio_sid: str, namespace: str,
                    data: Any) -> None:
    """python-socketio 5.18.1's ``Server._handle_connect``, with recovery:
    the CONNECT carries a pid, a returning client gets its sid, rooms and
    missed events (before the CONNECT reply, as a Node server writes them)."""
    if recovery.draining:
        # This dyno is stopping: the client's retry finds another one.
        server.eio.disconnect(eio_sid)
        return
    pid, offset, announced, data = recovery.split_auth(data)
    announced = announced or (recovery.options.browser_offsets
                              and in_browser(server.environ.get(eio_sid)))
    logger.debug("CONNECT %s of %s: pid %s, offset %s", namespace, eio_sid, pid, offset)
    restore = None
    sid = None
    if namespace in server.handlers or namespace in server.namespace_handlers \
            or server.namespaces == "*" or namespace in server.namespaces:
        if pid is not None:
            restore = recovery.prepare(eio_sid, namespace, pid, offset)
            if not _socket_open(server, eio_sid):
                # The client left while its recovery was decided (seconds).
                recovery.abandon(eio_sid, namespace)
                return
        sid = server.manager.pre_connect(eio_sid, namespace)
    if sid is None:
        recovery.abandon(eio_sid, namespace)
        server._send_packet(eio_sid, server.packet_class(
            packet.CONNECT_ERROR, data="Unable to connect", namespace=namespace))
        return
    if restore is not None and sid != restore.session.sid:
        restore = None  # pre_connect could not take the old sid
    if restore is None:
        pid = recovery.new_pid()
    reply = {"sid": sid, "pid": pid}

    def left() -> None:
        # python-socketio ignores the disconnect of a connection still
        # connecting: forget it here (a newer attempt of the same client
        # waits for that), and keep its session for the next try.
        logger.info("%s left while it connected", sid)
        recovery.abandoned(sid, namespace, restore)
        server.manager.disconnect(sid, namespace, ignore_queue=True)

    def accept() -> bool:
        if restore is not None:
            try:
                recovery.replay(restore, sid, eio_sid,
                                lambda *a: send_event(server, *a))
            except Exception:
                logger.exception("replay for %s failed; the client will retry", sid)
                left()
                server.eio.disconnect(eio_sid)
                return False
        if not _socket_open(server, eio_sid):
            left()
            return False
        server._send_packet(eio_sid, server.packet_class(packet.CONNECT, reply,
                                                         namespace=namespace))
        server.manager.connect(sid, namespace)
        recovery.registered(sid, namespace, pid, announced or restore is not None)
        if not _socket_open(server, eio_sid):
            # Gone between the check and the registration: its disconnect
            # was ignored; it is made now (the session is saved).
            server._handle_disconnect(eio_sid, namespace, server.reason.TRANSPORT_CLOSE)
            return False
        return True

    if server.always_connect and accept() is False:
        return
    environ = server.environ.get(eio_sid)
    if environ is None:  # the client left during pre_connect
        left()
        return
    fail_reason = exceptions.ConnectionRefusedError().error_args
    try:
        if restore is not None and recovery.options.skip_connect_handler:
            success = True
        elif data:
            success = server._trigger_event(
                "connect", namespace, sid, environ, data)
        else:
            try:
                success = server._trigger_event(
                    "connect", namespace, sid, environ, None)
            except TypeError as exc:
                try:
                    success = server._trigger_event(
                        "connect", namespace, sid, environ)
                except TypeError:
                    raise exc from None
    except exceptions.ConnectionRefusedError as exc:
        fail_reason = exc.error_args
        success = False
    except ConnectionRefusedError:
        fail_reason = {"message": "Connection refused by server"}
        success = False

    if success is False:
        recovery.replaying.pop(sid, None)
        recovery.on_disconnect(sid, namespace, "connection refused")
        if server.always_connect:
            server.manager.pre_disconnect(sid, namespace)
            server._send_packet(eio_sid, server.packet_class(
                packet.DISCONNECT, data=fail_reason, namespace=namespace))
        else:
            server._send_packet(eio_sid, server.packet_class(
                packet.CONNECT_ERROR, data=fail_reason, namespace=namespace))
        server.manager.disconnect(sid, namespace, ignore_queue=True)
        if restore is not None:
            recovery.store.delete(restore.pid)
    elif not server.always_connect:
        accept()


# -- AsyncServer: the same hooks, awaited ---------------------------------------
# What blocks (reading a session, the missed events; saving one) runs through
# ``call`` (``await call(fn, *args)``: in a thread); writes, the rooms and
# Recovery.replaying are only ever touched on the event loop.

def install_async(server: Any, recovery: Recovery,
                  call: Callable[..., Awaitable[Any]]) -> None:
    """:func:`install` for an ``AsyncServer``.

    :param call: ``await call(fn, *args)`` runs a blocking ``fn`` off the loop.
    """
    _warn_unchecked()
    original_disconnect = server._handle_disconnect

    async def handle_connect(eio_sid: str, namespace: str | None, data: Any) -> None:
        await _handle_connect_async(server, recovery, call, eio_sid, namespace or "/", data)

    async def handle_disconnect(eio_sid: str, namespace: str | None, reason: str | None = None):
        namespace = namespace or "/"
        sid = server.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and server.manager.is_connected(sid, namespace):
            await _forget(recovery, call, sid, namespace, reason)
        return await original_disconnect(eio_sid, namespace, reason)

    server._handle_connect = handle_connect
    server._handle_disconnect = handle_disconnect


async def _forget(recovery: Recovery, call: Callable[..., Awaitable[Any]], sid: str,
                  namespace: str, reason: str | None) -> None:
    """Recovery's on_disconnect: forgotten on the loop, the session saved (or
    deleted) in a thread, before python-socketio forgets the rooms."""
    left = recovery.forget(sid, namespace, reason)
    if left is None:
        return
    if recovery.log.emitting_here():
        # Noticed inside an emit (Recovery.on_disconnect): awaited, the save
        # would wait for that emit, which waits for this.
        task = asyncio.ensure_future(_left(call, left, sid))
        _LATER.add(task)
        task.add_done_callback(_LATER.discard)
        return
    await _left(call, left, sid)


#: Saves under way apart from the disconnect that asked for them.
_LATER: set[asyncio.Future] = set()


async def _left(call: Callable[..., Awaitable[Any]], left: Callable[[], None], sid: str) -> None:
    try:
        await call(left)
    except Exception:
        logger.exception("could not save or delete the session of %s", sid)


async def send_event_async(server: Any, eio_sid: str, namespace: str, event: str, args: list,
                           offset: str) -> None:
    """:func:`send_event` on an ``AsyncServer``."""
    for p in _eio_packets(server, namespace, [event, *args, offset]):
        await server._send_eio_packet(eio_sid, p)


async def emit_steps_async(manager: Any, recovery: Recovery, event: str, data: Any,
                           namespace: str, room: Any, skip_sid: Any, coords: list) -> None:
    """:func:`emit` on an ``AsyncServer``: one delivery step, each send
    awaited in turn (a send only queues the packet, see :func:`emit_async`)."""
    server = manager.server
    for eio_sid, pkts in _step_sends(manager, recovery, event, data, namespace, room, skip_sid,
                                     coords):
        for p in pkts:
            await server._send_eio_packet(eio_sid, p)


async def _handle_connect_async(server: Any, recovery: Recovery,
                                call: Callable[..., Awaitable[Any]], eio_sid: str,
                                namespace: str, data: Any) -> None:
    """python-socketio 5.18.1's ``AsyncServer._handle_connect``, with
    recovery as :func:`_handle_connect` does it."""
    if recovery.draining:
        await server.eio.disconnect(eio_sid)
        return
    pid, offset, announced, data = recovery.split_auth(data)
    announced = announced or (recovery.options.browser_offsets
                              and in_browser(server.environ.get(eio_sid)))
    logger.debug("CONNECT %s of %s: pid %s, offset %s", namespace, eio_sid, pid, offset)
    restore = None
    sid = None
    if namespace in server.handlers or namespace in server.namespace_handlers \
            or server.namespaces == "*" or namespace in server.namespaces:
        if pid is not None:
            restore = await call(recovery.prepare, eio_sid, namespace, pid, offset)
            if not _socket_open(server, eio_sid):
                recovery.abandon(eio_sid, namespace)
                return
        sid = await server.manager.pre_connect(eio_sid, namespace)
    if sid is None:
        recovery.abandon(eio_sid, namespace)
        await server._send_packet(eio_sid, server.packet_class(
            packet.CONNECT_ERROR, data="Unable to connect", namespace=namespace))
        return
    if restore is not None and sid != restore.session.sid:
        restore = None
    if restore is None:
        pid = recovery.new_pid()
    reply = {"sid": sid, "pid": pid}

    async def left() -> None:
        # As in _handle_connect. The sessions topic is written every
        # checkpoint: a put there only queues the record, so it is made on
        # the loop.
        logger.info("%s left while it connected", sid)
        recovery.abandoned(sid, namespace, restore)
        await server.manager.disconnect(sid, namespace, ignore_queue=True)

    async def accept() -> bool:
        if restore is not None:
            try:
                missed = await call(recovery.read_missed, restore)
                for event, args, at in recovery.replay_steps(restore, sid, missed):
                    await send_event_async(server, eio_sid, namespace, event, args, at)
            except Exception:
                logger.exception("replay for %s failed; the client will retry", sid)
                await left()
                await server.eio.disconnect(eio_sid)
                return False
        if not _socket_open(server, eio_sid):
            await left()
            return False
        await server._send_packet(eio_sid, server.packet_class(packet.CONNECT, reply,
                                                               namespace=namespace))
        await server.manager.connect(sid, namespace)
        recovery.registered(sid, namespace, pid, announced or restore is not None)
        if not _socket_open(server, eio_sid):
            await server._handle_disconnect(eio_sid, namespace, server.reason.TRANSPORT_CLOSE)
            return False
        return True

    if server.always_connect and await accept() is False:
        return
    environ = server.environ.get(eio_sid)
    if environ is None:
        await left()
        return
    fail_reason = exceptions.ConnectionRefusedError().error_args
    try:
        if restore is not None and recovery.options.skip_connect_handler:
            success = True
        elif data:
            success = await server._trigger_event(
                "connect", namespace, sid, environ, data)
        else:
            try:
                success = await server._trigger_event(
                    "connect", namespace, sid, environ, None)
            except TypeError as exc:
                try:
                    success = await server._trigger_event(
                        "connect", namespace, sid, environ)
                except TypeError:
                    raise exc from None
    except exceptions.ConnectionRefusedError as exc:
        fail_reason = exc.error_args
        success = False
    except ConnectionRefusedError:
        fail_reason = {"message": "Connection refused by server"}
        success = False

    if success is False:
        recovery.replaying.pop(sid, None)
        await _forget(recovery, call, sid, namespace, "connection refused")
        if server.always_connect:
            server.manager.pre_disconnect(sid, namespace)
            await server._send_packet(eio_sid, server.packet_class(
                packet.DISCONNECT, data=fail_reason, namespace=namespace))
        else:
            await server._send_packet(eio_sid, server.packet_class(
                packet.CONNECT_ERROR, data=fail_reason, namespace=namespace))
        await server.manager.disconnect(sid, namespace, ignore_queue=True)
        if restore is not None:
            recovery.store.delete(restore.pid)
    elif not server.always_connect:
        await accept()
