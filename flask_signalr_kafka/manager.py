"""The client manager: python-socketio's Manager, with Kafka between servers.

An adapter over the Kafka core (:mod:`.core`): every operation is applied on
this server at once, as python-socketio's own managers do, and published
for the others; each server applies the records of the others to its own
clients only (one ``_handle_*`` per record kind). Records are those of the
.NET backplane Ascentis.SignalR.Kafka (:mod:`.records`, docs/wire-format.md),
so .NET servers can share the topics.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from bidict import ValueDuplicationError
from kafka.errors import KafkaTimeoutError
from socketio import Manager

from . import hub_protocol, payload_limits, records, shutdown, socketio_hooks, topics
from .addressing import SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER, USER_PREFIX, looks_like_sid
from .addressing import route as route_of
from .arguments import check_home, check_instance, check_protocols, positive, sid_list
from .client_config import kafka_configs
from .concurrency import Runtime
from .core import KafkaCore, new_server_name
from .env_config import manager_kwargs_from_env
from .errors import AckTimeoutError, MalformedRecord
from .fleet import Fleet
from .fleet_calls import FleetCalls
from .metrics import Metrics
from .records import (
    ADD,
    OP_CLOSE_ROOM,
    OP_DISCONNECT,
    OP_RELEASE,
    REMOVE,
    AckExt,
    GroupCommandExt,
    InvocationExt,
)
from .recovery import Recovery
from .recovery import metric_families as recovery_metric_families
from .recovery_options import ConnectionStateRecovery, options_from
from .rooms import RoomIndex
from .topics import KafkaTopicConfig

logger = logging.getLogger("flask_signalr_kafka")


class KafkaManager(FleetCalls, RoomIndex, Manager):
    """A python-socketio client manager that uses Kafka as its backplane, in
    gevent or threading mode (the server's).

    :param bootstrap_servers: ``"host:port"`` or a list of them; fills
                              ``bootstrap_servers`` of the three configs.
    :param producer_config: keyword arguments for ``kafka.KafkaProducer``.
    :param consumer_config: keyword arguments for ``kafka.KafkaConsumer``.
    :param admin_config: keyword arguments for ``kafka.KafkaAdminClient``.
                         The three configs win over the shorthand and over
                         our defaults (security, SASL, SSL, linger, ...).
    :param topic_config: the topic names and creation specs.
    :param await_produce: ``True`` makes an emit wait for the broker and raise
                          its error; ``False`` (default) returns at once and
                          logs delivery errors.
    :param ack_timeout: seconds a remote join or leave waits for its ack.
    :param write_only: ``True`` for a process that serves no clients: it only
                       publishes (``mgr.emit(...)`` then ``mgr.close()``).
    :param hub_protocols: SignalR frames written in every record. ``"json"``
                          is always written; add ``"messagepack"`` when .NET
                          clients use MessagePack. Emits with binary data
                          always carry a messagepack frame too.
    :param connect_timeout: seconds to wait for the cluster at startup before
                            raising :class:`BrokerUnavailableError`.
    :param callback_timeout: seconds a callback for a client on another
                             server stays registered waiting for its answer.
    :param connection_state_recovery: ``True`` or a
        :class:`ConnectionStateRecovery` to recover Socket.IO 4.6+ clients
        that drop and come back, on any server (see :mod:`.recovery`).
    :param home_partitions: ``True`` (default): read only the send-conn
        partitions this server's connection ids hash to and the ack
        partition of its name (see :mod:`.home_partitions`); an int: that
        many home send-conn partitions. ``False``: read every partition, for
        .NET peers whose producers use a partitioner other than librdkafka's
        default (CRC-32) or murmur2.
    """

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str | list[str] | None = None,
        *,
        producer_config: dict[str, Any] | None = None,
        consumer_config: dict[str, Any] | None = None,
        admin_config: dict[str, Any] | None = None,
        topic_config: KafkaTopicConfig | None = None,
        await_produce: bool = False,
        ack_timeout: float = 30.0,
        write_only: bool = False,
        hub_protocols: Iterable[str] = (hub_protocol.JSON,),
        connect_timeout: float = 10.0,
        callback_timeout: float = 120.0,
        connection_state_recovery: bool | ConnectionStateRecovery = False,
        home_partitions: bool | int = True,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__()
        self.logger = logger
        self.topic_config = check_instance(
            KafkaTopicConfig() if topic_config is None else topic_config,
            KafkaTopicConfig, "topic_config",
        )
        self.ack_timeout = positive(ack_timeout, "ack_timeout")
        self.callback_timeout = positive(callback_timeout, "callback_timeout")
        self.write_only = bool(write_only)
        self.hub_protocols = check_protocols(hub_protocols)
        self.connection_state_recovery = options_from(connection_state_recovery)
        if self.connection_state_recovery and self.write_only:
            raise ValueError("connection_state_recovery needs a manager that serves clients: "
                             "turn it off for a write_only emitter")
        connect_timeout = positive(connect_timeout, "connect_timeout")
        server_name = new_server_name()
        producer, consumer, admin = kafka_configs(
            bootstrap_servers, connect_timeout, self.topic_config.tenant_prefix + server_name,
            producer_config, consumer_config, admin_config)
        self.core = KafkaCore(
            server_name=server_name, producer_config=producer, consumer_config=consumer,
            admin_config=admin, topic_config=self.topic_config,
            await_produce=bool(await_produce), connect_timeout=connect_timeout,
            home_partitions=check_home(home_partitions), write_only=self.write_only,
            sessions=self.connection_state_recovery is not None,
            fetch_wait_given="fetch_max_wait_ms" in (consumer_config
                                                     if isinstance(consumer_config, dict) else {}),
        )
        self.metrics = Metrics(self.core)  # mgr.metrics.add(...) for more figures
        if self.connection_state_recovery is not None:
            for family in recovery_metric_families(lambda: self._recovery):
                self.metrics.add(family)
        #: The fleet as a whole: queries, actions, server events (:mod:`.fleet`).
        self.fleet = Fleet(self.core, self)
        self._recovery: Recovery | None = None
        self._payload_limit: payload_limits.PayloadLimit | None = None
        self._runtime = Runtime.standalone()
        self._start_lock = threading.Lock()
        self._started = False
        self._closer: Any = None
        self._closing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> KafkaManager:
        """A manager for the Kafka the environment describes, in the config
        vars of Apache Kafka on Heroku (``KAFKA_URL``, ``KAFKA_TRUSTED_CERT``,
        ``KAFKA_CLIENT_CERT``, ``KAFKA_CLIENT_CERT_KEY``, ``KAFKA_PREFIX``);
        the embedded broker's address when ``KAFKA_URL`` is unset.

        :param environ: the variables to read; ``os.environ`` by default.
        :param kwargs: other :class:`KafkaManager` arguments; config dicts
                       given here win over the SSL settings from the
                       environment.
        """
        return cls(**manager_kwargs_from_env(environ, kwargs))

    server_name = property(lambda self: self.core.server_name,
                           doc="Unique per process: ``<hostname>_<32 lowercase hex>``.")
    producer_config = property(lambda self: self.core.producer_config)
    consumer_config = property(lambda self: self.core.consumer_config)
    admin_config = property(lambda self: self.core.admin_config)

    @property
    def host_id(self) -> str:
        """This server's id where python-socketio's pub/sub managers have
        one: the Socket.IO Admin UI reports each server under it."""
        return self.core.server_name

    def stats(self) -> dict[str, Any]:
        """This dyno's counters and gauges, a plain dict (see :mod:`.metrics`)."""
        return self.metrics.stats()

    def health(self) -> dict[str, Any]:
        """Whether this dyno can deliver (``ok``), and why not (see
        :meth:`.metrics.Metrics.health`)."""
        return self.metrics.health()

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

    def create_topics(self) -> list[str]:
        """Create the backplane topics that are missing (what a release phase
        runs); return the names created."""
        return self.core.create_topics()

    def close(self, timeout: float = 10.0, wait: bool | None = None) -> None:
        """Send what is queued, stop consuming, and close every Kafka client.

        Safe in a signal handler: under gevent a handler runs in whichever
        greenlet the signal interrupted (the event loop, or the Kafka
        client's own I/O, which a flush waits for), so called from any
        greenlet but the main one the work moves to a greenlet of its own and
        close() returns at once; the process exit waits for it.

        :param wait: ``True``: close here and now (the caller knows it may
                     block); ``None``: as above.
        """
        interrupted = not wait and self._runtime.in_interrupted_task()
        if self._closer is None and interrupted:
            self._closer = self._runtime.spawn(self._close, timeout)
        elif self._closer is not None:
            if not interrupted:
                self._closer.join(timeout + 5)
        else:
            self._close(timeout)

    def _close(self, timeout: float) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            self._shut(timeout)
        finally:
            shutdown.forget(self)

    def _shut(self, timeout: float) -> None:
        self.fleet.close()  # the others stop counting this server at once
        try:
            self.core.flush(timeout)
        except Exception:
            self._log().exception("could not flush the records queued for Kafka")
        if self._recovery is not None and self.server is not None:
            # Every client is handed to the rest of the fleet, exactly.
            self._recovery.drain(timeout)
        self.core.stop_consuming()
        if self._recovery is not None:
            self._recovery.close()
        self.core.close(timeout)

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
            self.core.connect(self._runtime, self._is_local_anywhere, self._local_sids)
            self._payload_limit = payload_limits.learn(self.core)
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

    def _local_sids(self) -> set[str]:
        return {sid for ns in list(self.rooms.values()) for sid in list(ns.get(None, {}))}

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
        try:
            self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        except ValueDuplicationError:
            return None  # already connected
        self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        if restore:
            self._recovery.begin(sid, namespace, restore.session)
            for room in restore.session.rooms:
                self.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self.pending_connect.setdefault(namespace, []).append(sid)
        return sid

    def disconnect(self, sid, namespace, **kwargs):
        result = super().disconnect(sid, namespace, **kwargs)
        if not self._is_local_anywhere(sid):
            self.core.release(sid)
        return result

    def _is_local_anywhere(self, sid: str) -> bool:
        return any(self.is_local(sid, ns) for ns in list(self.rooms))

    def is_recovered(self, sid: str, namespace: str = "/") -> bool:
        """Whether connection ``sid`` was recovered (connection state
        recovery): true in its connect handler and afterwards."""
        return self._recovery is not None and self._recovery.is_recovered(sid, namespace)

    def is_local(self, sid: str, namespace: str) -> bool:
        """Whether ``sid`` is a connection of this server, including one that
        is still connecting or already disconnecting."""
        return self.server is not None and self.is_sid_room(namespace, sid)

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
        if self.write_only:
            raise RuntimeError("a write_only manager cannot change the rooms of a connection: "
                               "it does not consume the acks")
        self._start()
        what = f"{'joining' if action == ADD else 'leaving'} room {room!r} for {sid}"

        def publish(ack_id: int) -> None:
            command = GroupCommandExt(ack_id, self.server_name, action, room, sid, namespace)
            # await_produce must not hold the caller past ack_timeout either.
            self.core.publish(topics.GROUP_MGMT, room, records.encode(command),
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

    def _publish_command(self, op: int, group: str, sid: str, namespace: str,
                         key: str | None = None) -> None:
        """Publish a close-room, disconnect or release command; .NET servers
        hold no connection with that id and ignore it."""
        self._start()
        command = GroupCommandExt(0, self.server_name, REMOVE, group, sid, namespace, op)
        self.core.publish(topics.GROUP_MGMT, group if key is None else key,
                          records.encode(command))

    def _room_changed(self, sid: str, namespace: str, room: str | None, joined: bool) -> None:
        if self._recovery is not None:
            if joined:
                self._recovery.joined(sid, namespace, room)
            else:
                self._recovery.touch(sid, namespace)

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
        targets = list(dict.fromkeys(target)) if isinstance(target, (list, tuple)) else [target]
        skip_sid = sid_list(skip_sid)
        recovery = self._recovery
        # A local connection's events go to Kafka too with recovery on (it may
        # drop before they reach it: they are replayed from there), unless a
        # callback waits for its answer here.
        published = [i for i, one in enumerate(targets) if not (
            self.is_local(one, namespace) and (recovery is None or callback is not None))]
        frames = hub_protocol.frames_of(event, data, self.hub_protocols) if published else {}
        # Too large for Kafka: raise before anyone, local or remote, gets it.
        payload_limits.check_emit(self._payload_limit, frames, self.server_name, event,
                                  namespace, targets, published, skip_sid)
        # Counted before the local delivery, whose step records it.
        emit_seq = recovery.log.next_emit() if recovery is not None else 0
        coords: list = []
        if self.server is not None:
            # This server's clients at once, each once however many of the
            # targets it is in, as python-socketio delivers a list. A local
            # sid is a room of its own: the .NET backplane's one shortcut.
            self._deliver(event, data, namespace, targets if len(targets) > 1 else target,
                          skip_sid, callback, coords)
        callback_id = 0
        if callback is not None and published:
            callback_id = self.core.acks.register(lambda args: callback(*args),
                                                  self.callback_timeout)
        for index in published:
            one = targets[index]
            record = InvocationExt(
                skip_sid, frames, origin=self.server_name, namespace=namespace,
                callback_id=callback_id,
                earlier_targets=[t for t in targets[:index] if t is not None],
                emit_seq=emit_seq,
            )
            base, key = route_of(one)
            if recovery is not None and self.is_local(one, namespace):
                base, key = SEND_CONN, one  # a local sid, whatever its shape
            future = self.core.publish(base, key, records.encode(record))
            if recovery is not None:
                recovery.log.track(future, coords, base, key)

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
        invocation = records.decode(record.value, InvocationExt)
        if invocation.origin == self.server_name:
            return  # delivered locally when it was emitted
        namespace = invocation.namespace
        if base == SEND_ALL:
            room = None
        else:
            room = _key(record)
            if base == SEND_USER:
                room = USER_PREFIX + room
            elif base == SEND_CONN and not self.is_local(room, namespace):
                return
        event, arguments = hub_protocol.decode_frames(invocation.frames)
        callback = None
        if invocation.callback_id and invocation.origin:
            callback = partial(self._answer_callback, invocation.origin, invocation.callback_id)
        excluded = invocation.excluded
        if invocation.earlier_targets:
            excluded = excluded + [
                sid for earlier in invocation.earlier_targets
                for sid, _ in self.get_participants(namespace, earlier)
            ]
        coords = [[base, None if base == SEND_ALL else _key(record), record.partition,
                   record.offset]] if self._recovery is not None else []
        self.metrics.delivered[record.topic] += 1
        self._deliver(event, tuple(arguments), namespace, room, excluded, callback, coords)

    def _answer_callback(self, origin: str, callback_id: int, *args: Any) -> None:
        """Send a client's answer back to the server that asked for it."""
        self.core.publish(topics.ACK, origin, records.encode(AckExt(callback_id, list(args))))

    def _handle_ack(self, record) -> None:
        if record.key != self.core.ack_key:
            return  # an ack for another server
        ack = records.decode(record.value, AckExt)
        self.core.acks.resolve(ack.id, ack.args)

    def _handle_group_mgmt(self, record) -> None:
        command = records.decode(record.value, GroupCommandExt)
        namespace = command.namespace
        if command.op == OP_CLOSE_ROOM:
            if command.server_name != self.server_name:
                try:
                    self.basic_close_room(command.group, namespace)
                except ValueError as exc:
                    self._log().warning("close_room(%r) refused: %s", command.group, exc)
            return
        sid = command.connection_id
        if not self.is_local(sid, namespace):
            return  # only the server that holds the connection acts
        if command.op == OP_DISCONNECT:
            self.disconnect_local(sid, namespace)
            return
        if command.op == OP_RELEASE:
            if self._recovery is not None:
                self._recovery.release(sid, namespace)
            return
        try:
            if command.action == ADD:
                self.basic_enter_room(sid, namespace, command.group)
            else:
                self.basic_leave_room(sid, namespace, command.group)
        except ValueError as exc:
            self._log().warning("group command for %s in %s refused: %s", sid, command.group, exc)
        # Always ack, even when nothing changed: the sender only waits.
        self.core.publish(topics.ACK, command.server_name, records.encode(records.Ack(command.id)))

    def disconnect_local(self, sid: str, namespace: str) -> None:
        """Disconnect a connection of this server, telling no other."""
        self.server.disconnect(sid, namespace=namespace, ignore_queue=True)

    def _log(self) -> logging.Logger:
        return self.logger or logger


def _key(record) -> str:
    if record.key is None:
        raise MalformedRecord("record has no key")
    try:
        return record.key.decode()
    except UnicodeDecodeError:
        raise MalformedRecord("record key is not UTF-8") from None
