"""What both client managers share: their arguments, the Kafka core they
build from them, their figures, and how a record of theirs is made and
applied to this server's rooms.

:class:`.manager.KafkaManager` (gevent and threading servers) and
:class:`.async_manager.AsyncKafkaManager` (asyncio servers) are this mixin
over python-socketio's ``Manager`` and ``AsyncManager``; what differs
between them is only whether a step may block or must be awaited.
"""
from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any, TypeVar

from bidict import ValueDuplicationError

from ..config.arguments import check_home, check_instance, check_protocols, positive
from ..config.env_config import manager_kwargs_from_env
from ..fleet.fleet import Fleet, FleetHost
from ..observability.metrics import Metrics
from ..recovery.recovery import Recovery
from ..recovery.recovery_metrics import metric_families as recovery_metric_families
from ..recovery.recovery_options import ConnectionStateRecovery, options_from
from ..runtime.concurrency import Runtime
from ..transport import payload_limits, topics
from ..transport.clients.kafka_client import client_named
from ..transport.core import KafkaCore, new_server_name
from ..transport.topics import KafkaTopicConfig
from ..wire import hub_protocol, records
from ..wire.records import (
    ADD,
    OP_CLOSE_ROOM,
    OP_DISCONNECT,
    OP_RELEASE,
    REMOVE,
    GroupCommandExt,
)
from . import inbound, socketio_hooks
from .emit_plan import EmitPlan

logger = logging.getLogger("flask_signalr_kafka")

#: What a group command leaves for the manager to do (see
#: :meth:`ManagerBase._apply_group_command`); :data:`CLOSED`: nothing, the
#: room is closed here already.
DISCONNECT, RELEASE, ACK, CLOSED = "disconnect", "release", "ack", "closed"

T = TypeVar("T")


#: The arguments of both managers, written once beside the ``__init__``
#: that takes them and documented on each manager (:func:`documents_arguments`
#: appends them to its docstring, which autodoc renders).
ARGUMENTS = """
    :param bootstrap_servers: ``"host:port"`` or a list of them; fills
                              ``bootstrap_servers`` of the three configs.
    :param producer_config: the producer's settings in ``client``'s dialect
                            (``kafka.KafkaProducer`` keyword arguments, or
                            librdkafka properties).
    :param consumer_config: the consumers' settings, likewise.
    :param admin_config: the admin client's settings, likewise.
                         The three configs win over the shorthand and over
                         our defaults (security, SASL, SSL, linger, ...).
    :param client: ``"kafka-python"`` (default) or ``"confluent"``
                   (confluent-kafka, librdkafka: the ``[confluent]`` extra):
                   the Kafka client library underneath (see
                   :mod:`.kafka_client`).
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
    :param logger: where the manager's own lines go (python-socketio's also
                   take it); the ``flask_signalr_kafka`` logger by default.
"""




class ManagerBase:
    """A mixin for a python-socketio manager: the arguments, the core, the
    figures, and the decisions both managers make the same way. Its
    ``__init__`` takes the managers' arguments (:data:`ARGUMENTS`).
    """

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
        client: str = "kafka-python",
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
        kafka_client = client_named(client)
        producer, consumer, admin = kafka_client.configs(
            bootstrap_servers, connect_timeout, self.topic_config.tenant_prefix + server_name,
            producer_config, consumer_config, admin_config)
        self.core = KafkaCore(
            server_name=server_name, producer_config=producer, consumer_config=consumer,
            admin_config=admin, topic_config=self.topic_config,
            await_produce=bool(await_produce), connect_timeout=connect_timeout,
            home_partitions=check_home(home_partitions), write_only=self.write_only,
            sessions=self.connection_state_recovery is not None,
            fetch_wait_given=kafka_client.fetch_wait in (
                consumer_config if isinstance(consumer_config, dict) else {}),
            client=kafka_client,
        )
        self.metrics = Metrics(self.core)  # mgr.metrics.add(...) for more figures
        if self.connection_state_recovery is not None:
            for family in recovery_metric_families(lambda: self._recovery):
                self.metrics.add(family)
        #: The fleet as a whole: queries, actions, server events (:mod:`.fleet`).
        self.fleet = Fleet(self.core, self._fleet_host())
        self._recovery: Recovery | None = None
        self._payload_limit: payload_limits.PayloadLimit | None = None
        self._runtime = Runtime.standalone()
        self._start_lock = threading.Lock()
        self._started = False
        self._closer: Any = None
        self._closing = False
        self._close_lock = threading.Lock()
        self._closed = threading.Event()  # set once a close is done

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
        """A manager for the Kafka the environment describes, in the config
        vars of Apache Kafka on Heroku (``KAFKA_URL``, ``KAFKA_TRUSTED_CERT``,
        ``KAFKA_CLIENT_CERT``, ``KAFKA_CLIENT_CERT_KEY``, ``KAFKA_PREFIX``);
        the embedded broker's address when ``KAFKA_URL`` is unset.

        :param environ: the variables to read; ``os.environ`` by default.
        :param kwargs: other manager arguments; config dicts given here win
                       over the SSL settings from the environment.
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

    def create_topics(self) -> list[str]:
        """Create the backplane topics that are missing (what a release phase
        runs); return the names created."""
        return self.core.create_topics()

    def _fleet_host(self) -> FleetHost:
        """What the fleet applies its requests to: the manager itself, whose
        rooms its consumer task may touch (not so under asyncio)."""
        return self

    def _connect_core(self) -> None:
        """Connect the core (blocking) and learn the payload limit."""
        self.core.connect(self._runtime, self._is_local_anywhere, self._local_sids)
        self._payload_limit = payload_limits.learn(self.core)

    def _shut(self, timeout: float) -> None:
        """Flush, hand the clients over (recovery), stop consuming, close
        the core: blocking."""
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

    # -- connections -----------------------------------------------------------

    def _local_sids(self) -> set[str]:
        return {sid for ns in list(self.rooms.values()) for sid in list(ns.get(None, {}))}

    def _plan(self, event: str, data: Any, namespace: str, target: Any, skip_sid: Any,
              callback: bool) -> EmitPlan:
        """This server's :class:`.emit_plan.EmitPlan` of an emit (it raises
        :class:`.PayloadTooLargeError` before anyone gets it)."""
        recovery = self._recovery
        return EmitPlan.of(
            event, data, namespace, target, skip_sid, callback=callback,
            origin=self.core.server_name,
            here=self.rooms.get(namespace, {}) if self.server is not None else None,
            protocols=self.hub_protocols, limit=self._payload_limit,
            count_emit=recovery.log.next_emit if recovery is not None else None)

    def pre_disconnect(self, sid, namespace):
        """As python-socketio's; with recovery, a disconnect the server makes
        on purpose (``Server.disconnect``: a kick, ``disconnect_sockets``, a
        remote disconnect command) ends the session first. That path never
        reaches the ``_handle_disconnect`` recovery hooks, and the client
        must not be recovered when it comes back (socketio_hooks). The same for
        both managers: python-socketio's ``pre_disconnect`` is synchronous in
        both."""
        if self._recovery is not None:
            socketio_hooks.server_disconnect(self._recovery, sid, namespace)
        return super().pre_disconnect(sid, namespace)

    def _register_sid(self, sid: str, namespace: str, eio_sid: Any) -> bool:
        """python-socketio's pre-connect bookkeeping for our ``sid``;
        ``False`` if that Engine.IO session is connected already."""
        try:
            self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        except ValueDuplicationError:
            return False
        self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        return True

    def _room_changed(self, sid: str, namespace: str, room: str | None, joined: bool) -> None:
        """A connection's rooms changed (:class:`.rooms.RoomIndex`): its
        session changes with them."""
        if self._recovery is not None:
            if joined:
                self._recovery.joined(sid, namespace, room)
            else:
                self._recovery.touch(sid, namespace)

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

    # -- records we write --------------------------------------------------------

    def _check_remote_group(self, action: int, sid: str, room: str) -> str:
        """What a remote join or leave is called in its errors.

        :raises RuntimeError: a write-only manager cannot wait for acks.
        """
        if self.write_only:
            raise RuntimeError("a write_only manager cannot change the rooms of a connection: "
                               "it does not consume the acks")
        return f"{'joining' if action == ADD else 'leaving'} room {room!r} for {sid}"

    def _group_command(self, ack_id: int, action: int, sid: str, namespace: str,
                       room: str) -> bytes:
        return records.encode(
            GroupCommandExt(ack_id, self.server_name, action, room, sid, namespace))

    def _command(self, op: int, group: str, sid: str, namespace: str) -> bytes:
        """A close-room, disconnect or release command; .NET servers hold no
        connection with that id and ignore it."""
        return records.encode(
            GroupCommandExt(0, self.server_name, REMOVE, group, sid, namespace, op))

    # -- records we read ---------------------------------------------------------

    def _consumed(self, base: str, record: Any, delivery: Any) -> tuple[Any, list]:
        """A consumed record about to be delivered here, counted: the callback
        that sends a client's answer back (``None``: nobody asked), and the
        record's coordinates for recovery's delivery step."""
        callback = None
        if delivery.callback is not None:
            callback = partial(self._answer_callback, *delivery.callback)
        coords = [[base, delivery.key, record.partition, record.offset]] \
            if self._recovery is not None else []
        self.metrics.delivered[record.topic] += 1
        return callback, coords

    def _handle_ack(self, record: Any) -> None:
        """An Ack for this server: run what waits for it (in the consumer's
        task; what waits hops to its own loop if it has one)."""
        ack = inbound.ack_of(record, self.core.ack_key)
        if ack is not None:
            self.core.acks.resolve(ack.id, ack.args)
            self.metrics.latency.observe(topics.ACK, record.timestamp)

    def _apply_group_command(self, command: GroupCommandExt) -> str | None:
        """Apply what a group command asks of this server's rooms; return
        what is left for the manager: :data:`DISCONNECT` the connection,
        :data:`RELEASE` it, :data:`ACK` the change, :data:`CLOSED` (a room
        closed here: nothing), or ``None`` (not this server's to apply)."""
        namespace = command.namespace
        if command.op == OP_CLOSE_ROOM:
            if command.server_name != self.server_name:
                try:
                    self.basic_close_room(command.group, namespace)
                except ValueError as exc:
                    self._log().warning("close_room(%r) refused: %s", command.group, exc)
                return CLOSED
            return None
        sid = command.connection_id
        if not self.is_local(sid, namespace):
            return None  # only the server that holds the connection acts
        if command.op == OP_DISCONNECT:
            return DISCONNECT
        if command.op == OP_RELEASE:
            return RELEASE
        try:
            if command.action == ADD:
                self.basic_enter_room(sid, namespace, command.group)
            else:
                self.basic_leave_room(sid, namespace, command.group)
        except ValueError as exc:
            self._log().warning("group command for %s in %s refused: %s", sid, command.group, exc)
        # Always ack, even when nothing changed: the sender only waits.
        return ACK

    def _ack_of(self, command: GroupCommandExt) -> bytes:
        return records.encode(records.Ack(command.id))

    def _log(self) -> logging.Logger:
        return self.logger or logger


def documents_arguments(cls: type[T]) -> type[T]:
    """Give a manager users create the arguments' documentation
    (:data:`ARGUMENTS`, appended to its docstring) and signature (that of
    :meth:`ManagerBase.__init__`, which autodoc and ``help()`` show
    instead of a subclass's ``*args, **kwargs``)."""
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + ARGUMENTS
    signature = inspect.signature(ManagerBase.__init__, eval_str=True)
    cls.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values())[1:])
    return cls
