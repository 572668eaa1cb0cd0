"""The client manager for python-socketio's ``AsyncServer`` (ASGI servers
such as uvicorn, aiohttp): :class:`AsyncKafkaManager`.

The same backplane as :class:`.manager.KafkaManager`, with the same
arguments, records and topics (the two serve one fleet), over the same
Kafka core; the core runs on threads of its own and nothing here blocks the
event loop (docs/asyncio.md says why threads rather than an asyncio Kafka
client, with figures):

- consumed records are decoded in their consumer thread (a malformed one is
  logged there and skipped) and handed to the loop in order, one
  :class:`.loop_bridge.LoopInbox` per topic; Acks are resolved in the
  consumer thread and wake their waiter through its loop;
- publishing is kafka-python's ``send``, which only queues the record for
  the producer's own thread; a topic's first send (which may wait for its
  metadata), and every send with ``await_produce``, runs in a thread;
- the blocking calls (startup, ``wait_ready``, ``close``) run in threads
  the manager owns and awaits;
- connection state recovery (:mod:`.async_recovery`) decides and saves in
  threads of its own and writes to the sockets on the loop.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from functools import partial
from typing import Any

from kafka.errors import KafkaTimeoutError
from socketio import AsyncManager

from ..errors import AckTimeoutError
from ..runtime import shutdown
from ..runtime.concurrency import Runtime
from ..runtime.loop_bridge import Blocking, InFlight, LoopInbox, run_in_loop
from ..transport import topics
from ..wire import records
from ..wire.addressing import SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER, looks_like_sid
from ..wire.records import ADD, OP_CLOSE_ROOM, OP_DISCONNECT, OP_RELEASE, REMOVE, AckExt
from . import inbound, socketio_hooks
from .async_fleet import AsyncFleetCalls, LoopHost
from .async_recovery import LoopRecovery
from .manager_base import ACK, DISCONNECT, RELEASE, ManagerBase, documents_arguments
from .rooms import RoomIndex

_SENDS = (SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER)


@documents_arguments
class AsyncKafkaManager(AsyncFleetCalls, ManagerBase, RoomIndex, AsyncManager):
    """A python-socketio client manager for ``socketio.AsyncServer`` that
    uses Kafka as its backplane. Its arguments are those of
    :class:`.KafkaManager`, ``connection_state_recovery`` included.

    Its blocking methods are coroutines: ``await mgr.wait_ready(timeout)``,
    ``await mgr.close()``, ``await mgr.drain()``; a write-only emitter uses
    ``await mgr.emit(...)``.
    The core starts when the server is constructed (then, outside a running
    loop, a broker that cannot be reached raises at once) or, on a running
    loop, in a thread that the first coroutine to need it awaits. A start
    that failed there (the cluster down when the server starts) is logged,
    and raised to the coroutines that awaited it; the next one to need the
    core (a connect, an emit, ``wait_ready``) starts it again, so the
    server comes up once the cluster does.
    """

    name = "kafka-async"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runtime = Runtime.threads("asyncio")
        self._blocking = Blocking()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: Future | None = None
        self._connected = False  # the core's connect done: not again on a retry
        self._closed_future: Future = Future()  # done once a close is done
        #: Topics whose metadata the producer has: a send there never waits.
        self._warm: set[str] = set()
        #: Callback coroutines running (cancelled at close).
        self._tasks: set[asyncio.Task] = set()
        self._inboxes = {base: LoopInbox(partial(self._deliver_record, base), base)
                         for base in _SENDS}
        self._inboxes[topics.GROUP_MGMT] = LoopInbox(self._handle_command, topics.GROUP_MGMT)
        #: Recovery's split between threads and the loop (with recovery on).
        self._loop_recovery: LoopRecovery | None = None
        #: Records of the send topics read but not yet delivered on the loop.
        self._in_flight = InFlight()

    # -- lifecycle ---------------------------------------------------------

    def set_server(self, server: Any) -> None:
        super().set_server(server)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._start()  # no loop to block yet: fail here if Kafka is out of reach
        else:
            self._bind(loop)
            self._starting = self._submit_start()

    def initialize(self) -> None:
        """Called by the server on its loop before its first connection."""
        super().initialize()
        self._bind()

    def _bind(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Deliver consumed records on the running loop from now on (before
        it is known no client can be connected here: records are dropped)."""
        if self._loop is None:
            self._loop = loop or asyncio.get_running_loop()
            for inbox in self._inboxes.values():
                inbox.bind(self._loop)
            if self.connection_state_recovery is not None:
                # The web server's SIGTERM handler is in place by now.
                shutdown.drain_first(self._loop, self.drain)

    async def _ensure_started(self) -> None:
        if self._started:
            return
        if self._starting is None or self._starting.done():
            # Never started, or that start failed: try again (on the loop,
            # so concurrent callers share one attempt).
            self._starting = self._submit_start()
        await asyncio.wrap_future(self._starting)

    def _submit_start(self) -> Future:
        """Start the core in a thread; a failure is logged, and the next
        :meth:`_ensure_started` tries again."""
        starting = self._blocking.submit(self._start)

        def failed(future: Future) -> None:
            if not future.cancelled() and future.exception() is not None:
                self._log().error("the Kafka backplane could not start: %s; the next connect "
                                  "or emit tries again", future.exception())

        starting.add_done_callback(failed)
        return starting

    def _start(self) -> None:
        """Connect the core and consume (blocking: never on the loop)."""
        with self._start_lock:
            if self._started:
                return
            if self._closing:
                raise RuntimeError("this AsyncKafkaManager was closed")
            if not self._connected:
                self._connect_core()
                self._connected = True
            if self.connection_state_recovery is not None:
                self._loop_recovery = LoopRecovery(
                    self, self.connection_state_recovery, lambda: self._loop,
                    self._request_release,
                    lambda: self._in_flight.behind(self.core.positions(_SENDS)))
                self._recovery = self._loop_recovery.recovery
                if self.server is not None:
                    self._loop_recovery.install(self.server)
            if not self.write_only:
                self.core.consume({
                    topics.ACK: self._handle_ack,
                    topics.GROUP_MGMT: self._receive_command,
                    **{base: partial(self._receive_invocation, base) for base in _SENDS},
                })
                self.fleet.start()
            if self._recovery is not None:
                self._recovery.start()
            self._started = True

    def _fleet_host(self) -> LoopHost:
        self._fleet_loop_host = LoopHost(self, lambda: self._loop)
        return self._fleet_loop_host

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """``True`` once this server consumes, from a fixed position, every
        partition that can hold a record for it; ``False`` after
        ``timeout`` seconds. A coroutine."""
        if self.write_only:
            raise RuntimeError("a write_only manager consumes nothing: nothing to wait for")
        self._bind()
        started = time.monotonic()
        await self._ensure_started()
        remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return await self._blocking.call(self.core.wait_ready, remaining)

    async def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, hand the clients over (with recovery on:
        :meth:`drain`), stop consuming, close every Kafka client, and end
        every task and thread of this manager; return once that is done,
        also when another caller started it. A coroutine."""
        if self._closing:
            await asyncio.wrap_future(self._closed_future)
            return
        self._closing = True
        if self._starting is not None:
            try:
                await asyncio.wrap_future(self._starting)
            except Exception:
                pass  # nothing started: nothing to stop but what follows
        try:
            try:
                await self.drain(timeout)
            except Exception:
                self._log().exception("could not drain; the sessions are saved at close")
            await self._blocking.call(self._shut, timeout)
        finally:
            for inbox in self._inboxes.values():
                await inbox.stop()
            for task in list(self._tasks):
                task.cancel()
            self._blocking.shutdown()
            if self._loop_recovery is not None:
                self._loop_recovery.shutdown()
            self._closed_future.set_result(None)

    async def drain(self, timeout: float = 10.0) -> None:
        """Hand every connection of this server to the rest of the fleet
        (connection state recovery): save each session and close its
        socket, so that its client reconnects elsewhere and is recovered.
        SIGTERM calls it under uvicorn, before uvicorn cuts the sockets,
        and :meth:`close` does; a no-op without recovery. A coroutine."""
        if self._loop_recovery is None or self.core.closed or self.server is None:
            return
        await self._loop_recovery.drain(timeout)

    # -- connections ---------------------------------------------------------

    async def pre_connect(self, eio_sid, namespace):
        """As python-socketio's, but the sid has a shape that every server
        recognises as a connection id (see :mod:`.addressing`)."""
        self._bind()
        await self._ensure_started()
        recovery = self._recovery
        restore = recovery and recovery.take_pending(eio_sid, namespace)
        if restore:
            sid = restore.session.sid
            await self._loop_recovery.claim(sid)
        else:
            sid = self.core.new_sid(self.server.eio.generate_id)
        if not self._register_sid(sid, namespace, eio_sid):
            return None  # already connected
        if restore:
            # On the loop, with no await from here to the rooms: live events
            # for it are held back from now on (Recovery.replaying).
            recovery.begin(sid, namespace, restore.session)
            for room in restore.session.rooms:
                self.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self.pending_connect.setdefault(namespace, []).append(sid)
        return sid

    async def disconnect(self, sid, namespace, **kwargs):
        result = await super().disconnect(sid, namespace, **kwargs)
        # A newer recovery attempt of the same client may hold the claim.
        if not self._is_local_anywhere(sid) and \
                not (self._recovery is not None and self._recovery.claiming(sid)):
            self.core.release(sid)
        return result

    async def can_disconnect(self, sid, namespace):
        if self.is_local(sid, namespace):
            return await super().can_disconnect(sid, namespace)
        if looks_like_sid(sid):  # others are no connection a Python server holds
            await self._publish_command(OP_DISCONNECT, "", sid, namespace)
        return False

    # -- rooms ---------------------------------------------------------------

    async def enter_room(self, sid, namespace, room, eio_sid=None):
        if self.is_local(sid, namespace):
            return self.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        await self._change_remote_group(ADD, sid, namespace, room)

    async def leave_room(self, sid, namespace, room):
        if self.is_local(sid, namespace):
            return self.basic_leave_room(sid, namespace, room)
        await self._change_remote_group(REMOVE, sid, namespace, room)

    async def close_room(self, room, namespace):
        namespace = namespace or "/"
        if self.server is not None:
            self.basic_close_room(room, namespace)
        await self._publish_command(OP_CLOSE_ROOM, room, "", namespace)

    async def _change_remote_group(self, action: int, sid: str, namespace: str,
                                   room: str) -> None:
        """Publish a GroupCommand for a connection held elsewhere and wait,
        without blocking the loop, until its owner acks it."""
        what = self._check_remote_group(action, sid, room)
        self._bind()
        await self._ensure_started()

        async def publish(ack_id: int) -> None:
            await self._publish(topics.GROUP_MGMT, room,
                                self._group_command(ack_id, action, sid, namespace, room),
                                timeout=self.ack_timeout)

        try:
            await self.core.acks.wait_async(publish, self.ack_timeout, what)
        except KafkaTimeoutError as exc:
            raise AckTimeoutError(
                f"{what} was not published within {self.ack_timeout:g} s: {exc}") from exc

    def _request_release(self, sid: str, namespace: str) -> None:
        """Ask the server that holds ``sid`` to let it go and save its
        session (from recovery's threads: a publish may wait there)."""
        self.core.publish(topics.GROUP_MGMT, sid, self._command(OP_RELEASE, "", sid, namespace))

    async def _publish_command(self, op: int, group: str, sid: str, namespace: str) -> None:
        self._bind()
        await self._ensure_started()
        await self._publish(topics.GROUP_MGMT, group, self._command(op, group, sid, namespace))

    # -- emitting --------------------------------------------------------------

    async def emit(self, event, data, namespace=None, room=None, skip_sid=None,
                   callback=None, to=None, **kwargs):
        """Emit to one connection, a room, a user, a list of those, or all
        connections of the namespace, on every server. A coroutine.

        The parameters are those of :meth:`socketio.AsyncServer.emit`.
        """
        namespace = namespace or "/"
        target = to if to is not None else room
        if kwargs.get("ignore_queue"):
            return await AsyncManager.emit(self, event, data, namespace, room=target,
                                           skip_sid=skip_sid, callback=callback)
        if callback is not None and self.server is None:
            raise ValueError("callbacks need a Socket.IO server to receive the answer; a "
                             "write_only manager cannot use them")
        self._bind()
        if not self._started:
            await self._ensure_started()
        recovery = self._recovery
        plan = self._plan(event, data, namespace, target, skip_sid, callback is not None)
        coords: list = []
        try:
            if plan.deliver_here:
                # This server's clients at once, each once (see KafkaManager.emit).
                await self._deliver(event, data, namespace, plan.room, plan.excluded, callback,
                                    coords)
            callback_id = 0
            if callback is not None and plan.published:
                callback_id = self.core.acks.register(
                    lambda args: run_in_loop(self._loop, self._tasks, callback, *args),
                    self.callback_timeout)
            for base, key, value in plan.records(callback_id):
                future = await self._publish(base, key, value)
                if recovery is not None:
                    recovery.log.track(future, coords, base, key)
        finally:
            if recovery is not None:
                # A recovery replays the emits counted before it: it waits
                # for their records to reach the producer (a first send may
                # be in a thread).
                recovery.log.emit_done(plan.emit_seq)

    async def _publish(self, base: str, key: str | None, value: bytes,
                       timeout: float | None = None) -> Any:
        """Publish without blocking the loop: kafka-python's send only queues
        the record, once the producer knows the topic."""
        if self.core.await_produce or base not in self._warm:
            future = await self._blocking.call(
                partial(self.core.publish, base, key, value, timeout=timeout))
            self._warm.add(base)
            return future
        return self.core.publish(base, key, value, timeout=timeout)

    async def _answer_callback(self, origin: str, callback_id: int, *args: Any) -> None:
        """Send a client's answer back to the server that asked for it."""
        await self._publish(topics.ACK, origin, records.encode(AckExt(callback_id, list(args))))

    # -- consuming: decoded in the consumer thread, applied on the loop --------

    def _receive_invocation(self, base: str, record: Any) -> None:
        delivery = inbound.delivery_of(base, record, self.server_name)
        if delivery is not None:
            item, key = (record, delivery, delivery.payload()), (base, record.partition)
            self._in_flight.add(key, record.offset)
            if not self._inboxes[base].put(item):
                self._in_flight.undo(key)

    def _receive_command(self, record: Any) -> None:
        self._inboxes[topics.GROUP_MGMT].put((inbound.command_of(record), record.timestamp))

    async def _deliver_record(self, base: str, item: tuple) -> None:
        record, delivery, (event, args) = item
        try:
            if delivery.held_elsewhere(self.is_local):
                return  # another server's connection
            callback, coords = self._consumed(base, record, delivery)
            await self._deliver(event, args, delivery.namespace, delivery.room,
                                inbound.excluded(delivery, self.get_participants), callback,
                                coords)
            self.metrics.latency.observe(base, record.timestamp)
        finally:
            self._in_flight.done((base, record.partition))

    async def _deliver(self, event: str, data: Any, namespace: str, room: Any, skip_sid: list,
                       callback: Any, coords: list) -> None:
        """Send to this server's clients: python-socketio's own emit for a
        callback, else its copy that spawns no task per recipient (with
        recovery on: one delivery step, with offsets)."""
        if callback is not None:
            await AsyncManager.emit(self, event, data, namespace, room=room, skip_sid=skip_sid,
                                    callback=callback)
        elif self._recovery is None:
            await socketio_hooks.emit_async(self, event, data, namespace, room, skip_sid)
        else:
            await socketio_hooks.emit_steps_async(self, self._recovery, event, data, namespace,
                                                  room, skip_sid, coords)

    async def _handle_command(self, item: tuple) -> None:
        command, timestamp = item
        todo = self._apply_group_command(command)
        if todo == DISCONNECT:
            await self.server.disconnect(command.connection_id, namespace=command.namespace,
                                         ignore_queue=True)
        elif todo == RELEASE and self._loop_recovery is not None:
            await self._loop_recovery.release(command.connection_id, command.namespace)
        elif todo == ACK:
            await self._publish(topics.ACK, command.server_name, self._ack_of(command))
        if todo is not None:
            self.metrics.latency.observe(topics.GROUP_MGMT, timestamp)
