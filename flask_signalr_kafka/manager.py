"""The client manager: python-socketio's Manager, with Kafka between servers.

Every operation is applied on this server at once, as python-socketio's own
managers do, and published for the others; each server applies the records
of the others to its own clients only. Records are those of the .NET backplane
Ascentis.SignalR.Kafka (see :mod:`.records`), so .NET servers can share the
topics.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import gevent
import gevent.monkey
from bidict import ValueDuplicationError
from kafka import KafkaAdminClient
from kafka.errors import KafkaConnectionError, KafkaTimeoutError
from socketio import Manager

from . import hub_protocol, payload_limits, records, shutdown, socketio_hooks, topics
from .ack_waiter import AckWaiter
from .addressing import (
    SEND_ALL,
    SEND_CONN,
    SEND_GROUP,
    SEND_USER,
    USER_PREFIX,
    looks_like_sid,
    make_sid,
    route,
)
from .arguments import check_home, check_instance, check_protocols, positive
from .client_config import kafka_configs
from .consumer import TopicConsumer
from .env_config import settings_from_env
from .errors import AckTimeoutError, BrokerUnavailableError, MalformedRecord
from .home_partitions import HomePartitions, draw_server_name
from .metrics import Metrics
from .producer import Publisher
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
from .recovery import ConnectionStateRecovery, Recovery, options_from
from .recovery import metric_families as recovery_metric_families
from .topics import KafkaTopicConfig

logger = logging.getLogger("flask_signalr_kafka")


class KafkaManager(Manager):
    """A python-socketio client manager that uses Kafka as its backplane.

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
            KafkaTopicConfig,
            "topic_config",
        )
        self.await_produce = bool(await_produce)
        self.ack_timeout = positive(ack_timeout, "ack_timeout")
        self.connect_timeout = positive(connect_timeout, "connect_timeout")
        self.callback_timeout = positive(callback_timeout, "callback_timeout")
        self.write_only = bool(write_only)
        self.hub_protocols = check_protocols(hub_protocols)
        self.connection_state_recovery = options_from(connection_state_recovery)
        if self.connection_state_recovery and self.write_only:
            raise ValueError("connection_state_recovery needs a manager that serves clients: "
                             "turn it off for a write_only emitter")
        self.home_partitions = check_home(home_partitions)
        self._fetch_wait_given = "fetch_max_wait_ms" in (consumer_config or {})
        self.server_name = f"{socket.gethostname()}_{uuid.uuid4().hex}"
        self._server_key = self.server_name.encode()

        self.producer_config, self.consumer_config, self.admin_config = kafka_configs(
            bootstrap_servers, self.connect_timeout,
            self.topic_config.tenant_prefix + self.server_name,
            producer_config, consumer_config, admin_config,
        )

        self._acks = AckWaiter()
        self.metrics = Metrics(self)  # mgr.metrics.add(...) for more figures
        if self.connection_state_recovery is not None:
            for family in recovery_metric_families(lambda: self._recovery):
                self.metrics.add(family)
        self._publisher: Publisher | None = None
        self._consumers: list[TopicConsumer] = []
        self._consumers_by_base: dict[str, TopicConsumer] = {}
        self._recovery: Recovery | None = None
        self._home: HomePartitions | None = None
        self._payload_limit: payload_limits.PayloadLimit | None = None
        #: sid -> when this server claimed its send-conn partitions.
        self._claimed_at: dict[str, float] = {}
        self._start_lock = threading.Lock()
        self._closed = False
        self._closer: gevent.Greenlet | None = None
        #: (namespace, sid) -> its rooms (None: the namespace), in join order.
        self._rooms_of: dict[tuple[str, str], dict[str | None, None]] = {}

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **kwargs: Any
    ) -> KafkaManager:
        """A manager for the Kafka the environment describes, in the config
        vars of Apache Kafka on Heroku (``KAFKA_URL``, ``KAFKA_TRUSTED_CERT``,
        ``KAFKA_CLIENT_CERT``, ``KAFKA_CLIENT_CERT_KEY``, ``KAFKA_PREFIX``);
        the embedded broker's address when ``KAFKA_URL`` is unset.

        :param environ: the variables to read; ``os.environ`` by default.
        :param kwargs: other :class:`KafkaManager` arguments; config dicts
                       given here win over the SSL settings from the
                       environment.
        """
        settings = settings_from_env(environ)
        topic_config = kwargs.pop("topic_config", None)
        if topic_config is None:
            topic_config = KafkaTopicConfig()
        if settings["tenant_prefix"] and isinstance(topic_config, KafkaTopicConfig):
            topic_config = dataclasses.replace(
                topic_config, tenant_prefix=settings["tenant_prefix"]
            )
        for name in ("producer_config", "consumer_config", "admin_config"):
            kwargs[name] = {**settings["client_config"], **(kwargs.get(name) or {})}
        kwargs.setdefault("bootstrap_servers", settings["bootstrap_servers"])
        return cls(topic_config=topic_config, **kwargs)

    @property
    def host_id(self) -> str:
        """This server's id where python-socketio's pub/sub managers have
        one: the Socket.IO Admin UI reports each server under it (without
        it, every dyno of a host shows as one server)."""
        return self.server_name

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
        # Consume from now on, not from the first client: a server must see
        # group commands and sends for its clients as soon as it can have any.
        self._start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until this server consumes, from a fixed position, every
        partition that can hold a record for it (its home send-conn and ack
        partitions, every partition of the other topics), so that any record
        published afterwards is delivered. ``False`` if that takes longer
        than ``timeout`` seconds."""
        if self.write_only:
            raise RuntimeError("a write_only manager consumes nothing: nothing to wait for")
        deadline = None if timeout is None else time.monotonic() + timeout
        for consumer in self._consumers:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not consumer.ready.wait(remaining):
                return False
        if self._recovery is not None:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._recovery.ready.wait(remaining):
                return False
        return bool(self._consumers)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, stop consuming, and close every Kafka client.

        Safe in a signal handler. Under gevent a handler runs in whichever
        greenlet the signal interrupted (the event loop, or the Kafka
        client's own I/O, which a flush waits for): called from any greenlet
        but the main one, the work moves to a greenlet of its own and
        close() returns at once; the process exit waits for it.
        """
        closer = self._closer
        if closer is None and gevent.getcurrent().parent is not None:
            self._closer = gevent.spawn(self.close, timeout)
            return
        if closer is not None and closer is not gevent.getcurrent():
            closer.join(timeout + 5)
            return
        if self._closed:
            return
        self._closed = True
        try:
            self._close(timeout)
        finally:
            shutdown.forget(self)

    def _close(self, timeout: float) -> None:
        if self._publisher is not None:
            try:
                self._publisher.flush(timeout)
            except Exception:
                self._log().exception("could not flush the records queued for Kafka")
        if self._recovery is not None:
            # Positions must be final before the sessions are saved with them.
            self._recovery.await_readback(min(timeout, 3.0))
            self._recovery.stop()
        for consumer in self._consumers:
            consumer.request_stop()  # all at once: each may finish a poll
        for consumer in self._consumers:
            consumer.stop()
        if self._recovery is not None:
            self._recovery.save_all()
            self._recovery.close()
        if self._publisher is not None:
            self._publisher.close(timeout)

    def drain(self) -> None:
        """Hand every connection of this server to the rest of the fleet
        (connection state recovery): save each session and close its
        socket, so that its client reconnects elsewhere and is recovered.
        SIGTERM calls it under gunicorn; a no-op without recovery."""
        if self._recovery is None or self._closed or self.server is None:
            return
        self._recovery.drain()

    def _send_consumers(self) -> list[TopicConsumer]:
        return [c for base, c in self._consumers_by_base.items() if base.startswith("send-")]

    def _start(self) -> None:
        """Create missing topics, connect the producer, start the consumers."""
        with self._start_lock:
            if self._publisher is not None:
                return
            if self._closed:
                raise RuntimeError("this KafkaManager was closed")
            if not self.write_only and not gevent.monkey.is_module_patched("socket"):
                self._log().warning(
                    "gevent has not patched the standard library: call "
                    "gevent.monkey.patch_all() before importing flask or kafka"
                )
            self.create_topics()
            self._payload_limit = payload_limits.learn(self)
            if self.home_partitions is not False and not self.write_only:
                self._choose_home()
            self._publisher = self._connect(
                Publisher, self.producer_config, self.topic_config, self.await_produce
            )
            if self.connection_state_recovery is not None:
                self._recovery = Recovery(self, self.connection_state_recovery)
                if self.server is not None:
                    socketio_hooks.install(self.server, self._recovery)
            if not self.write_only:
                self._start_consumers()
            if self._recovery is not None:
                self._recovery.start()
            shutdown.watch(self)

    def _start_consumers(self) -> None:
        handlers: dict[str, Callable[[Any], None]] = {
            topics.ACK: self._handle_ack,
            topics.GROUP_MGMT: self._handle_group_mgmt,
            topics.SEND_ALL: partial(self._handle_invocation, SEND_ALL),
            topics.SEND_CONN: partial(self._handle_invocation, SEND_CONN),
            topics.SEND_GROUP: partial(self._handle_invocation, SEND_GROUP),
            topics.SEND_USER: partial(self._handle_invocation, SEND_USER),
        }
        wanted = {}
        if self._home is not None:
            wanted = {topics.ACK: self._home.ack_wanted, topics.SEND_CONN: self._home.conn_wanted}
        for base, handler in handlers.items():
            config = self.consumer_config
            claims = base == topics.SEND_CONN and self._home is not None
            if not claims and not self._fetch_wait_given:
                # Its partitions never change, so its fetches may wait long
                # for a record (they return as soon as one comes): an idle
                # dyno sends a few requests a second instead of a dozen.
                config = {**config, "fetch_max_wait_ms": STATIC_FETCH_WAIT_MS}
            consumer = TopicConsumer(
                self.topic_config.name(base),
                handler,
                config,
                on_missing_topic=self.create_topics,
                partitions=wanted.get(base),
            )
            if claims:
                consumer.poll_timeout_ms = 200  # a claim waits for the poll to return
            consumer.start()
            self._consumers.append(consumer)
            self._consumers_by_base[base] = consumer
        self._log().info(
            "kafka backplane %s consuming %s",
            self.server_name, ", ".join(self.topic_config.names.values()),
        )

    def _choose_home(self) -> None:
        """Learn the partition counts of ack and send-conn, draw a server
        name whose ack partition is the same under murmur2 and CRC-32, and
        derive the home send-conn partitions from it."""
        names = [self.topic_config.name(topics.ACK), self.topic_config.name(topics.SEND_CONN)]
        admin = self._connect(KafkaAdminClient, **self.admin_config)
        try:
            counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
        finally:
            admin.close()
        n_ack, n_conn = (counts.get(name) or 1 for name in names)
        old = self.server_name
        self.server_name = draw_server_name(old.rsplit("_", 1)[0], n_ack)
        self._server_key = self.server_name.encode()
        for config in (self.producer_config, self.consumer_config, self.admin_config):
            if config.get("client_id") == self.topic_config.tenant_prefix + old:
                config["client_id"] = self.topic_config.tenant_prefix + self.server_name
        count = None if self.home_partitions is True else self.home_partitions
        self._home = HomePartitions(self.server_name, n_conn, count, self._local_sids)
        self._log().info("%s reads send-conn partitions %s of %d and its ack partition",
                         self.server_name, sorted(self._home.home), n_conn)

    def _local_sids(self) -> set[str]:
        return {sid for ns in list(self.rooms.values()) for sid in list(ns.get(None, {}))}

    def create_topics(self) -> list[str]:
        """Create the backplane topics that are missing (what a release phase
        runs); return the names created.

        :raises BrokerUnavailableError: the cluster cannot be reached.
        :raises TopicCreationError: the cluster refused a topic.
        """
        admin = self._connect(KafkaAdminClient, **self.admin_config)
        try:
            return topics.ensure_topics(admin, self.topic_config, self._servers(),
                                        sessions=self.connection_state_recovery is not None)
        finally:
            admin.close()

    def _connect(self, factory: Callable, *args: Any, **kwargs: Any) -> Any:
        try:
            return factory(*args, **kwargs)
        except (KafkaTimeoutError, KafkaConnectionError) as exc:
            raise BrokerUnavailableError(
                f"could not reach Kafka at {self._servers()} within "
                f"{self.connect_timeout:g} s ({exc}): check bootstrap_servers, the "
                "security settings, and that the broker runs"
            ) from exc

    def _servers(self) -> str:
        servers = self.admin_config.get("bootstrap_servers")
        return servers if isinstance(servers, str) else ",".join(servers or ())

    # -- connections ---------------------------------------------------------

    def pre_connect(self, eio_sid, namespace):
        """As python-socketio's, but the sid has a shape that every server
        recognises as a connection id (see :mod:`.addressing`)."""
        restore = self._recovery and self._recovery.take_pending(eio_sid, namespace)
        if restore:
            sid = restore.session.sid
            if sid not in self._claimed_at:
                self._claim_connection(sid)  # normally done by Recovery.prepare
        elif self._home is not None:
            sid = self._home.allocate_sid()  # lands on a partition this server reads
        else:
            sid = make_sid(self.server.eio.generate_id())
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
        self._release_connection(sid)
        return result

    def _claim_connection(self, sid: str, timeout: float = 10.0) -> None:
        """Read the send-conn partitions of ``sid`` (murmur2's and CRC-32's),
        a connection this server takes over, from their log end; return
        once they are assigned and positioned, so that every record for it
        from then on is read here. Released by :meth:`_release_connection`
        (the manager calls it on disconnect).

        :raises TimeoutError: not positioned within ``timeout`` seconds.
        """
        home = self._home
        if home is None:
            return  # every partition is read
        now = time.monotonic()
        # A claim whose connection never arrived (its recovery failed after
        # the claim) is dropped after a while.
        for stale in [s for s, at in self._claimed_at.items()
                      if now - at > _CLAIM_GRACE and not self._is_local_anywhere(s)]:
            self._release_connection(stale)
        self._claimed_at[sid] = now
        if not home.claim(sid):
            return  # it hashes home
        consumer = self._consumers_by_base.get(topics.SEND_CONN)
        if consumer is None:
            return  # the consumer's first assignment will include it
        if not consumer.refresh().wait(timeout):
            raise TimeoutError(f"the send-conn partitions of {sid} were not read "
                               f"within {timeout:g} s")

    def _release_connection(self, sid: str) -> None:
        """Stop reading the partitions of ``sid`` when no local connection
        has that id any more."""
        if self._is_local_anywhere(sid):
            return
        self._claimed_at.pop(sid, None)
        if self._home is not None and self._home.release(sid):
            consumer = self._consumers_by_base.get(topics.SEND_CONN)
            if consumer is not None:
                consumer.refresh()

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
            raise RuntimeError(
                "a write_only manager cannot change the rooms of a connection: "
                "it does not consume the acks"
            )
        self._start()
        what = f"{'joining' if action == ADD else 'leaving'} room {room!r} for {sid}"

        def publish(ack_id: int) -> None:
            command = GroupCommandExt(ack_id, self.server_name, action, room, sid, namespace)
            # await_produce must not hold the caller past ack_timeout either.
            self._publisher.send(topics.GROUP_MGMT, room, records.encode(command),
                                 timeout=self.ack_timeout)

        try:
            self._acks.wait(publish, self.ack_timeout, what)
        except KafkaTimeoutError as exc:
            raise AckTimeoutError(
                f"{what} was not published within {self.ack_timeout:g} s: {exc}"
            ) from exc

    def _request_release(self, sid: str, namespace: str) -> None:
        """Ask the server that holds ``sid`` to let it go and save its session
        (its client came back here); the saved session is the answer."""
        command = GroupCommandExt(0, self.server_name, REMOVE, "", sid, namespace, OP_RELEASE)
        self._publisher.send(topics.GROUP_MGMT, sid, records.encode(command))

    # The rooms of each connection are kept here: python-socketio finds them
    # by scanning every room of the namespace, which made a connect storm
    # quadratic once recovery wrote each session.

    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        result = super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._rooms_of.setdefault((namespace, sid), {})[room] = None
        if self._recovery is not None:
            self._recovery.joined(sid, namespace, room)
        return result

    def basic_leave_room(self, sid, namespace, room):
        result = super().basic_leave_room(sid, namespace, room)
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.pop(room, None)
            if not rooms:
                del self._rooms_of[(namespace, sid)]
        if self._recovery is not None:
            self._recovery.touch(sid, namespace)
        return result

    def get_rooms(self, sid, namespace):
        """The rooms ``sid`` is in, as python-socketio's, without its scan."""
        return [room for room in self._rooms_of.get((namespace, sid), ()) if room is not None]

    def basic_disconnect(self, sid, namespace, **kwargs):
        socketio_hooks.basic_disconnect(self, sid, namespace,
                                        list(self._rooms_of.get((namespace, sid), ())))

    def _publish_command(self, op: int, group: str, sid: str, namespace: str) -> None:
        """Publish a close-room or disconnect command; .NET servers hold no
        connection with that id and ignore it."""
        self._start()
        command = GroupCommandExt(0, self.server_name, REMOVE, group, sid, namespace, op)
        self._publisher.send(topics.GROUP_MGMT, group, records.encode(command))

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
            raise ValueError(
                "callbacks need a Socket.IO server to receive the answer; a "
                "write_only manager cannot use them"
            )
        if self._publisher is None:
            self._start()
        if isinstance(target, (list, tuple)):
            targets = list(dict.fromkeys(target))
        else:
            targets = [target]
        skip_sid = _sid_list(skip_sid)
        recovery = self._recovery
        coords: list = []
        # Too large for Kafka: raise before anyone, local or remote, gets it.
        frames = payload_limits.check_emit(self, event, data, namespace, targets, skip_sid,
                                           callback)
        # Counted before the local delivery, whose step records it.
        emit_seq = recovery.next_emit() if recovery is not None else 0
        if self.server is not None:
            # This server's clients at once, each once however many of the
            # targets it is in, as python-socketio delivers a list. A local
            # sid is a room of its own: the .NET backplane's one shortcut.
            self._deliver(event, data, namespace, targets if len(targets) > 1 else target,
                          skip_sid, callback, coords)
        callback_id = 0
        for index, one in enumerate(targets):
            # With recovery on, a local connection's events are in Kafka too:
            # it may drop before they reach it, and they are replayed from there.
            if self.is_local(one, namespace) and (recovery is None or callback is not None):
                continue
            if frames is None:
                frames = self._frames(event, data)
            if callback is not None and not callback_id:
                callback_id = self._acks.register(
                    lambda args: callback(*args), self.callback_timeout
                )
            record = InvocationExt(
                skip_sid, frames, origin=self.server_name, namespace=namespace,
                callback_id=callback_id,
                earlier_targets=[t for t in targets[:index] if t is not None],
                emit_seq=emit_seq,
            )
            base, key = route(one)
            if recovery is not None and self.is_local(one, namespace):
                base, key = SEND_CONN, one  # a local sid, whatever its shape
            future = self._publisher.send(base, key, records.encode(record))
            if recovery is not None:
                recovery.track(future, coords, base, key)

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

    def _frames(self, event: str, data: Any) -> dict[str, bytes]:
        """The hub-protocol frames of an emit, encoded once for all targets."""
        if isinstance(data, tuple):
            arguments = list(data)
        elif data is None:
            arguments = []
        else:
            arguments = [data]
        protocols = self.hub_protocols
        if hub_protocol.MESSAGEPACK not in protocols and _has_binary(arguments):
            protocols = protocols + (hub_protocol.MESSAGEPACK,)
        return hub_protocol.encode_frames(event, arguments, protocols)

    # -- consuming -------------------------------------------------------------

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
        value = records.encode(AckExt(callback_id, list(args)))
        self._publisher.send(topics.ACK, origin, value)

    def _handle_ack(self, record) -> None:
        if record.key != self._server_key:
            return  # an ack for another server
        ack = records.decode(record.value, AckExt)
        self._acks.resolve(ack.id, ack.args)

    def _handle_group_mgmt(self, record) -> None:
        command = records.decode(record.value, GroupCommandExt)
        namespace = command.namespace
        if command.op == OP_CLOSE_ROOM:
            if command.server_name != self.server_name:
                self._handle_close_room(command.group, namespace)
            return
        sid = command.connection_id
        if not self.is_local(sid, namespace):
            return  # only the server that holds the connection acts
        if command.op == OP_DISCONNECT:
            self.server.disconnect(sid, namespace=namespace, ignore_queue=True)
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
        ack = records.encode(records.Ack(command.id))
        self._publisher.send(topics.ACK, command.server_name, ack)

    def _handle_close_room(self, room: str, namespace: str) -> None:
        try:
            self.basic_close_room(room, namespace)
        except ValueError as exc:
            self._log().warning("close_room(%r) refused: %s", room, exc)

    def _log(self) -> logging.Logger:
        return self.logger or logger


#: The fetch wait of a consumer whose partitions never change (all but
#: send-conn's under home partitions, which a claim must reach at once).
STATIC_FETCH_WAIT_MS = 5000

#: Seconds a claimed sid may wait for its connection before it is dropped.
_CLAIM_GRACE = 60.0




def _has_binary(data: Any) -> bool:
    """Whether ``data`` holds bytes anywhere (python-socketio's own check is
    several times slower on the small payloads of a chat)."""
    kind = type(data)
    if kind is bytes or kind is bytearray:
        return True
    if kind is list or kind is tuple:
        return any(map(_has_binary, data))
    if kind is dict:
        return any(map(_has_binary, data.values()))
    return isinstance(data, (bytes, bytearray))


def _sid_list(skip_sid: Any) -> list[str]:
    """``skip_sid`` as the list python-socketio's Manager and the record take."""
    if skip_sid is None:
        return []
    if isinstance(skip_sid, (list, tuple, set)):
        return list(skip_sid)
    return [skip_sid]


def _key(record) -> str:
    if record.key is None:
        raise MalformedRecord("record has no key")
    try:
        return record.key.decode()
    except UnicodeDecodeError:
        raise MalformedRecord("record key is not UTF-8") from None









