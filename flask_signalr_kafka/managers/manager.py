"""The client manager: python-socketio's Manager, with Kafka between servers.

An adapter over the Kafka core (:mod:`.core`): every operation is applied on
this server at once, as python-socketio's own managers do, and published
for the others; each server applies the records of the others to its own
clients only (one ``_handle_*`` per record kind). Records are those of the
.NET backplane Ascentis.SignalR.Kafka (:mod:`.records`, docs/wire-format.md),
so .NET servers can share the topics.
"""
from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from kafka.errors import KafkaTimeoutError
from socketio import Manager

from ..errors import AckTimeoutError
from ..recovery.recovery import Recovery
from ..runtime import shutdown
from ..runtime.concurrency import Runtime
from ..transport import topics
from ..wire import records
from ..wire.addressing import SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER, looks_like_sid
from ..wire.records import ADD, OP_CLOSE_ROOM, OP_DISCONNECT, OP_RELEASE, REMOVE, AckExt
from . import inbound, socketio_hooks
from .fleet_calls import FleetCalls
from .manager_base import ACK, DISCONNECT, RELEASE, ManagerBase, documents_arguments
from .rooms import RoomIndex

logger = logging.getLogger("flask_signalr_kafka")


@documents_arguments
class KafkaManager(FleetCalls, ManagerBase, RoomIndex, Manager):
    """A python-socketio client manager that uses Kafka as its backplane, in
    gevent or threading mode (the server's).
    """

    name = "kafka"

    # -- lifecycle ---------------------------------------------------------

    def set_server(self, server) -> None:
        super().set_server(server)
        self._runtime = Runtime.of_server(server)
        self._runtime.check()
        # Consume from now on, not from the first client: a server must see
        # group commands and sends for its clients as soon as it can have any.
        self._start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until this server consumes, from a fixed position, every
        partition that can hold a record for it, so that any record
        published afterwards is delivered. ``False`` after ``timeout`` s."""
        if self.write_only:
            raise RuntimeError("a write_only manager consumes nothing: nothing to wait for")
        return self.core.wait_ready(timeout)

    def close(self, timeout: float = 10.0, wait: bool | None = None) -> None:
        """Send what is queued, hand the clients over (with connection state
        recovery: :meth:`drain`), stop consuming, and close every Kafka
        client; return once that is done, also when another caller started
        it.

        Call it from anywhere that may wait, a greenlet spawned by a SIGTERM
        handler included, then exit. Where nothing may wait (under gevent
        the hub, where a ``signal.signal`` handler usually runs; a task of
        this manager's own; a Kafka client's I/O thread: see
        :meth:`.concurrency.Runtime.cannot_wait`) the work moves to a task
        of its own and close() returns at once; the process exit then waits
        for it (``sys.exit``, not ``os._exit``).

        :param timeout: seconds for each step (flush, drain, closing the
                        clients).
        :param wait: ``True``: close here and now (the caller knows it may
                     wait); ``False``: in a task of its own, returning at
                     once; ``None``: here, unless the caller cannot wait.
        """
        if wait is False or (wait is None and self._runtime.cannot_wait()):
            close = (self._close_at_stop_signal if self._runtime.interrupted_by_stop_signal()
                     else self._close)
            with self._close_lock:
                if self._closer is None and not self._closing:
                    self._closer = self._runtime.spawn(close, timeout)
            return
        self._close(timeout)

    #: Seconds after a close begun in a SIGTERM or SIGINT handler within
    #: which the process must have begun its exit (its atexit handlers).
    STOP_SIGNAL_EXIT_GRACE = 3.0
    #: The most each step of such a close waits: a platform's stop allows
    #: about 30 s in all (Heroku), and a Kafka client whose I/O took the
    #: swallowed exit may never finish a flush.
    STOP_SIGNAL_STEP_LIMIT = 5.0

    def _close_at_stop_signal(self, timeout: float) -> None:
        """Close, then make sure the process exits: close() ran in a SIGTERM
        or SIGINT handler that interrupted another greenlet, and the
        handler's ``sys.exit`` that follows it is raised in that greenlet,
        where the code it interrupted may swallow it (kafka-python's socket
        writes catch every exception): the dyno would serve on, closed,
        until the platform kills it."""
        exiting = threading.Event()
        atexit.register(exiting.set)  # registered last, so run first at exit
        try:
            self._close(min(timeout, self.STOP_SIGNAL_STEP_LIMIT))
        except Exception:
            # Still exit: a Kafka client whose I/O greenlet took the exit
            # may fail its flush (seen in make test).
            self._log().exception("closing at SIGTERM/SIGINT failed")
        self._runtime.sleep(self.STOP_SIGNAL_EXIT_GRACE)
        if not exiting.is_set():
            self._log().warning(
                "closed in a SIGTERM/SIGINT handler, and no exit followed within %.0f s "
                "(the code the signal interrupted swallowed it): exiting",
                self.STOP_SIGNAL_EXIT_GRACE)
            self._runtime.exit_main()

    def _close(self, timeout: float) -> None:
        with self._close_lock:
            closing, self._closing = self._closing, True
        if closing:
            # Another caller closes: this one returns when it is done.
            limit = 3 * timeout + 15
            if not self._closed.wait(limit):
                self._log().warning("close() still not done after %.0f s; going on", limit)
            return
        try:
            self._shut(timeout)
        finally:
            shutdown.forget(self)
            self._closed.set()

    def drain(self) -> None:
        """Hand every connection of this server to the rest of the fleet
        (connection state recovery): save each session and close its
        socket, so that its client reconnects elsewhere and is recovered.
        SIGTERM calls it under gunicorn; a no-op without recovery."""
        if self._recovery is None or self.core.closed or self.server is None:
            return
        self._recovery.drain()

    def _start(self) -> None:
        """Connect the core, start recovery, consume."""
        with self._start_lock:
            if self._started:
                return
            self._connect_core()
            if self.connection_state_recovery is not None:
                self._recovery = Recovery(self.core, self, self.connection_state_recovery)
                if self.server is not None:
                    socketio_hooks.install(self.server, self._recovery)
            if not self.write_only:
                self.core.consume({
                    topics.ACK: self._handle_ack,
                    topics.GROUP_MGMT: self._handle_group_mgmt,
                    **{base: partial(self._handle_invocation, base)
                       for base in (SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER)},
                })
                self.fleet.start()
            if self._recovery is not None:
                self._recovery.start()
            shutdown.watch(self, self._runtime)
            self._started = True

    # -- connections ---------------------------------------------------------

    def pre_connect(self, eio_sid, namespace):
        """As python-socketio's, but the sid has a shape that every server
        recognises as a connection id (see :mod:`.addressing`)."""
        restore = self._recovery and self._recovery.take_pending(eio_sid, namespace)
        if restore:
            sid = restore.session.sid
            self.core.claim(sid)  # done already by Recovery.prepare
        else:
            sid = self.core.new_sid(self.server.eio.generate_id)
        if not self._register_sid(sid, namespace, eio_sid):
            return None  # already connected
        if restore:
            self._recovery.begin(sid, namespace, restore.session)
            for room in restore.session.rooms:
                self.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self.pending_connect.setdefault(namespace, []).append(sid)
        return sid

    def disconnect(self, sid, namespace, **kwargs):
        result = super().disconnect(sid, namespace, **kwargs)
        # A newer recovery attempt of the same client may hold the claim.
        if not self._is_local_anywhere(sid) and \
                not (self._recovery is not None and self._recovery.claiming(sid)):
            self.core.release(sid)
        return result

    def can_disconnect(self, sid, namespace):
        if self.is_local(sid, namespace):
            return super().can_disconnect(sid, namespace)
        if looks_like_sid(sid):  # others are no connection a Python server holds
            self._publish_command(OP_DISCONNECT, "", sid, namespace)
        return False

    # -- rooms ---------------------------------------------------------------

    def enter_room(self, sid, namespace, room, eio_sid=None):
        if self.is_local(sid, namespace):
            return super().enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._change_remote_group(ADD, sid, namespace, room)

    def leave_room(self, sid, namespace, room):
        if self.is_local(sid, namespace):
            return super().leave_room(sid, namespace, room)
        self._change_remote_group(REMOVE, sid, namespace, room)

    def close_room(self, room, namespace):
        namespace = namespace or "/"
        if self.server is not None:
            super().close_room(room, namespace)
        self._publish_command(OP_CLOSE_ROOM, room, "", namespace)

    def _change_remote_group(self, action: int, sid: str, namespace: str, room: str) -> None:
        """Publish a GroupCommand for a connection held elsewhere and block
        until its owner acks it."""
        what = self._check_remote_group(action, sid, room)
        self._start()

        def publish(ack_id: int) -> None:
            # await_produce must not hold the caller past ack_timeout either.
            self.core.publish(topics.GROUP_MGMT, room,
                              self._group_command(ack_id, action, sid, namespace, room),
                              timeout=self.ack_timeout)

        try:
            self.core.acks.wait(publish, self.ack_timeout, what)
        except KafkaTimeoutError as exc:
            raise AckTimeoutError(
                f"{what} was not published within {self.ack_timeout:g} s: {exc}") from exc

    def request_release(self, sid: str, namespace: str) -> None:
        """Ask the server that holds ``sid`` to let it go and save its session
        (its client came back here); the saved session is the answer."""
        self._publish_command(OP_RELEASE, "", sid, namespace, key=sid)

    #: Seconds a socket's close waits for its client to get the CLOSE.
    CLOSE_WAIT = 10.0

    def close_socket(self, eio_sid: str) -> None:
        """Close an Engine.IO socket of this server (recovery let it go),
        once its client got what was queued for it."""
        socketio_hooks.close_socket(self.server, eio_sid, self.CLOSE_WAIT, self._runtime.sleep)

    def _publish_command(self, op: int, group: str, sid: str, namespace: str,
                         key: str | None = None) -> None:
        """Publish a close-room, disconnect or release command."""
        self._start()
        self.core.publish(topics.GROUP_MGMT, group if key is None else key,
                          self._command(op, group, sid, namespace))

    # -- emitting --------------------------------------------------------------

    def emit(self, event, data, namespace=None, room=None, skip_sid=None,
             callback=None, to=None, **kwargs):
        """Emit to one connection, a room, a user, a list of those, or all
        connections of the namespace, on every server.

        The parameters are those of :meth:`socketio.Server.emit`.
        """
        namespace = namespace or "/"
        target = to if to is not None else room
        if kwargs.get("ignore_queue"):
            return super().emit(event, data, namespace, room=target,
                                skip_sid=skip_sid, callback=callback)
        if callback is not None and self.server is None:
            raise ValueError("callbacks need a Socket.IO server to receive the answer; a "
                             "write_only manager cannot use them")
        if not self._started:
            self._start()
        recovery = self._recovery
        plan = self._plan(event, data, namespace, target, skip_sid, callback is not None)
        coords: list = []
        try:
            if plan.deliver_here:
                # This server's clients at once, each once however many of the
                # targets it is in, as python-socketio delivers a list. A local
                # sid is a room of its own: the .NET backplane's one shortcut.
                self._deliver(event, data, namespace, plan.room, plan.excluded, callback,
                              coords)
            callback_id = 0
            if callback is not None and plan.published:
                callback_id = self.core.acks.register(lambda args: callback(*args),
                                                      self.callback_timeout)
            for base, key, value in plan.records(callback_id):
                future = self.core.publish(base, key, value)
                if recovery is not None:
                    recovery.log.track(future, coords, base, key)
        finally:
            if recovery is not None:
                # A recovery replays the emits counted before it: it waits
                # for their records to reach the producer.
                recovery.log.emit_done(plan.emit_seq)

    def _deliver(self, event: str, data: Any, namespace: str, room: Any, skip_sid: list,
                 callback: Callable | None, coords: list) -> None:
        """Send to this server's clients: python-socketio's own emit, or, with
        connection state recovery, one delivery step with offsets."""
        if self._recovery is None or callback is not None:
            Manager.emit(self, event, data, namespace, room=room, skip_sid=skip_sid,
                         callback=callback)
        else:
            socketio_hooks.emit(self, self._recovery, event, data, namespace, room, skip_sid,
                                coords)

    # -- consuming: one handler per record kind ---------------------------------

    def _handle_invocation(self, base: str, record) -> None:
        delivery = inbound.delivery_of(base, record, self.server_name)
        if delivery is None or delivery.held_elsewhere(self.is_local):
            return  # emitted here (delivered then), or for another server's connection
        callback, coords = self._consumed(base, record, delivery)
        event, args = delivery.payload()
        self._deliver(event, args, delivery.namespace, delivery.room,
                      inbound.excluded(delivery, self.get_participants), callback, coords)
        self.metrics.latency.observe(base, record.timestamp)

    def disconnect_local(self, sid: str, namespace: str) -> None:
        """Disconnect a connection of this server, telling no other."""
        self.server.disconnect(sid, namespace=namespace, ignore_queue=True)

    def _answer_callback(self, origin: str, callback_id: int, *args: Any) -> None:
        """Send a client's answer back to the server that asked for it."""
        self.core.publish(topics.ACK, origin, records.encode(AckExt(callback_id, list(args))))

    def _handle_group_mgmt(self, record) -> None:
        command = inbound.command_of(record)
        todo = self._apply_group_command(command)
        if todo == DISCONNECT:
            self.disconnect_local(command.connection_id, command.namespace)
        elif todo == RELEASE:
            if self._recovery is not None:
                self._recovery.release(command.connection_id, command.namespace)
        elif todo == ACK:
            self.core.publish(topics.ACK, command.server_name, self._ack_of(command))
        if todo is not None:
            self.metrics.latency.observe(topics.GROUP_MGMT, record.timestamp)
