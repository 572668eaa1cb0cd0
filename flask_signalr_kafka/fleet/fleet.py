"""The fleet as a whole: queries and actions over every connection of every
server, events between servers, and how many servers are alive
(docs/fleet.md).

Modelled on Node.js Socket.IO's cluster adapter (socket.io-adapter's
``ClusterAdapterWithHeartbeat``), over one topic of ours,
``<prefix>-fleet`` (:mod:`.fleet_records`), which .NET servers never read:

- **Partition 0** carries what every server reads: requests, actions,
  server events, heartbeats and farewells (:mod:`.liveness`).
- **The other partitions** carry answers. Each server reads one of them,
  where its name hashes, and names it in its requests; an answer goes there
  and names its asker, so a server reads only its own answers (and those of
  the few servers whose names hash alike, which it drops).
- **A query** (:mod:`.fleet_queries`) waits for one answer from every
  server alive when it asked, and returns once all have answered.
- **A server joins** once its consumer reads the topic: it publishes an
  initial heartbeat, every server answers with one of its own, and it is
  ready (``wait_ready()``) once it read its own back and the answers had
  :data:`SETTLE` seconds to come.

The feature knows the Socket.IO side only through :class:`FleetHost`, which
the manager meets, and Kafka only through the core's public methods.
"""
from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..errors import MalformedRecord
from ..transport.core import KafkaCore
from ..transport.topics import FLEET
from ..wire import fleet_records
from ..wire.fleet_records import (
    ANSWER_PART,
    DISCONNECT,
    JOIN,
    LEAVE,
    EventAnswer,
    Farewell,
    FetchSockets,
    Heartbeat,
    RemoteSocket,
    ServerEvent,
    SocketsAction,
    SocketsAnswer,
)
from .fleet_queries import FleetQueries
from .liveness import Liveness

logger = logging.getLogger(__name__)

#: The partition every server reads.
EVERYONE = 0
#: Seconds a joining server waits, after reading its initial heartbeat
#: back, for the heartbeats that answer it.
SETTLE = 0.5
#: Seconds the consumer pauses at the first heartbeat of a slot, so that
#: one fetch reads the others' (see :meth:`Fleet._gather`).
GATHER = 0.05
#: Seconds a joining server waits for its initial heartbeat to come back.
_JOIN_TIMEOUT = 30.0


class FleetHost(Protocol):
    """What the fleet needs of the Socket.IO side (the manager)."""

    def get_participants(self, namespace: str, room: Any) -> Iterable[tuple[str, Any]]: ...

    def get_rooms(self, sid: str, namespace: str) -> list: ...

    def basic_enter_room(self, sid: str, namespace: str, room: Any,
                         eio_sid: Any = None) -> Any: ...

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> Any: ...

    def disconnect_local(self, sid: str, namespace: str) -> None: ...


def answer_partition(server_name: str, partitions: int) -> int:
    """The partition of the fleet topic where ``server_name``'s answers go:
    one of 1..n-1 (partition 0 when the topic has only one)."""
    if partitions < 2:
        return EVERYONE
    return 1 + zlib.crc32(server_name.encode()) % (partitions - 1)


def _rooms_arg(room: Any) -> list | None:
    """``room`` as the records carry it: ``None`` (every connection), or a
    list of rooms (their union)."""
    if room is None:
        return None
    if isinstance(room, (list, tuple, set, frozenset)):
        return list(room)
    return [room]


def _wire_room(room: Any) -> str | int:
    return room if isinstance(room, (str, int)) else str(room)


class Fleet:
    """The fleet API of one server.

    :param core: the server's Kafka core.
    :param host: the Socket.IO side.
    """

    def __init__(self, core: KafkaCore, host: FleetHost) -> None:
        self.core = core
        self.host = host
        self.queries = FleetQueries()
        self.liveness = Liveness(self._heartbeat, self.queries.gone)
        #: (namespace, event) -> handler of server events.
        self.handlers: dict[tuple[str, str], Callable[..., Any]] = {}
        self.ready = threading.Event()
        self._back = threading.Event()  # our initial heartbeat came back
        self._answer_partition = EVERYONE
        self._gathered = -1  # the slot whose heartbeats were gathered
        self._started = False
        self._closed = False
        self._joiner: Any = None

    @property
    def name(self) -> str:
        """The origin of our records: a write-only emitter, no server,
        writes none (as Node's emitter), so that nobody counts it."""
        return "" if self.core.write_only else self.core.server_name

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Read the fleet topic and join the fleet (a server that consumes;
        a write-only emitter only publishes)."""
        if self._started:
            return
        self._started = True
        self.core.add_readiness(self.ready)
        self.core.consume({FLEET: self._handle}, partitions={FLEET: self._partitions})
        self._joiner = self.core.runtime.spawn(self._join)

    def _partitions(self, ids: list[int]) -> set[int]:
        self._answer_partition = answer_partition(self.name, len(ids))
        return {EVERYONE, self._answer_partition}

    def _join(self) -> None:
        consumer = self.core.consumer(FLEET)
        if consumer is not None:
            consumer.ready.wait()
        self._publish(Heartbeat(self.name, initial=True))
        if not self._back.wait(_JOIN_TIMEOUT):
            logger.warning("fleet: our initial heartbeat did not come back within %g s",
                           _JOIN_TIMEOUT)
        self.core.runtime.sleep(SETTLE)
        if self._closed:
            return  # closed while joining: no heartbeat loop
        self.liveness.start(self.core.runtime)
        self.ready.set()

    def close(self) -> None:
        """Say this server stops (the others stop counting it at once)."""
        if not self._started or self._closed:
            return
        self._closed = True
        self.liveness.stop()
        try:
            self._publish(Farewell(self.name))
        except Exception:
            logger.exception("fleet: could not publish our farewell")

    # -- the API -------------------------------------------------------------------

    def fetch_sockets(self, room: Any = None, namespace: str = "/",
                      timeout: float = 5.0) -> list[RemoteSocket]:
        """Every connection of ``namespace`` in ``room`` (``None``: all; a
        list: their union), on every server.

        :raises FleetTimeoutError: a live server did not answer in time.
        """
        rooms = _rooms_arg(room)
        waiting_for = self._before_query(timeout)
        local = self._local_sockets(namespace, rooms)

        def publish(request_id: int) -> None:
            self._publish(FetchSockets(self.name, request_id, self._answer_partition, namespace,
                                       None if rooms is None else [_wire_room(r) for r in rooms]))

        return self.queries.ask(publish, waiting_for, timeout,
                                f"fetch_sockets({room!r}, namespace={namespace!r})", local)

    def sockets_join(self, rooms: Any, room: Any = None, namespace: str = "/") -> None:
        """Every connection in ``room`` (as for :meth:`fetch_sockets`), on
        every server, joins ``rooms`` (a name or a list)."""
        self._act(JOIN, _rooms_arg(rooms), room, namespace)

    def sockets_leave(self, rooms: Any, room: Any = None, namespace: str = "/") -> None:
        """The same, leaving ``rooms``."""
        self._act(LEAVE, _rooms_arg(rooms), room, namespace)

    def disconnect_sockets(self, room: Any = None, namespace: str = "/") -> None:
        """Every connection in ``room``, on every server, is disconnected."""
        self._act(DISCONNECT, [], room, namespace)

    def server_count(self) -> int:
        """How many servers are alive, this one included."""
        self._check_consumes("server_count")
        return self.liveness.count()

    def server_side_emit(self, event: str, *args: Any, namespace: str = "/",
                         callback: Callable[[list], Any] | None = None,
                         timeout: float = 5.0) -> None:
        """``event`` with ``args`` to the handlers of the other servers; with
        ``callback``, wait for each server's answer and call
        ``callback(responses)``.

        :raises FleetTimeoutError: with ``callback``, a live server did not
            answer in time.
        """
        if not isinstance(event, str):
            raise TypeError(f"server_side_emit's event must be a str, not {event!r}")
        if callback is None:
            self._publish(ServerEvent(self.name, 0, EVERYONE, namespace, event, list(args)))
            return
        waiting_for = self._before_query(timeout)

        def publish(request_id: int) -> None:
            self._publish(ServerEvent(self.name, request_id, self._answer_partition, namespace,
                                      event, list(args)))

        callback(self.queries.ask(publish, waiting_for, timeout,
                                  f"server_side_emit({event!r})"))

    def on_server_event(self, event: str, handler: Callable[..., Any],
                        namespace: str = "/") -> None:
        """Call ``handler(*args)`` for each ``event`` another server emits
        with :meth:`server_side_emit`; its return value is that server's
        answer."""
        if not callable(handler):
            raise TypeError(f"on_server_event needs a callable handler, not {handler!r}")
        self.handlers[(namespace, event)] = handler

    # -- asking ----------------------------------------------------------------------

    def _check_consumes(self, what: str) -> None:
        if self.core.write_only:
            raise RuntimeError(f"{what} needs a server that reads the fleet topic; a write_only "
                               "manager only publishes")
        if not self._started:
            raise RuntimeError(f"{what} needs a started server: attach the manager to a "
                               "Socket.IO server first")

    def _before_query(self, timeout: float) -> frozenset[str]:
        """Wait (within ``timeout``) until this server joined the fleet;
        the servers to wait for."""
        self._check_consumes("a fleet query")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.ready.wait(timeout)
        return self.liveness.others()

    def _act(self, action: int, targets: list | None, room: Any, namespace: str) -> None:
        rooms = _rooms_arg(room)
        self._apply(action, targets or [], namespace, rooms)
        self._publish(SocketsAction(self.name, namespace,
                                    None if rooms is None else [_wire_room(r) for r in rooms],
                                    action, [_wire_room(t) for t in targets or []]))

    def _heartbeat(self) -> None:
        self._publish(Heartbeat(self.name))

    def _publish(self, record: Any, partition: int = EVERYONE) -> None:
        self.core.publish(FLEET, self.name, fleet_records.encode(record), partition=partition)

    # -- answering (the consumer's task) ----------------------------------------------

    def _handle(self, record: Any) -> None:
        message = fleet_records.decode(record.value)
        origin = message.origin
        if isinstance(message, Heartbeat) and not message.initial:
            self._gather()
        if origin == self.name:
            if isinstance(message, Heartbeat) and message.initial:
                self._back.set()
            return
        if isinstance(message, (SocketsAnswer, EventAnswer)):
            if message.asker == self.name:
                self.liveness.heard(origin)
                if isinstance(message, SocketsAnswer):
                    self.queries.answer(message.request_id, origin, message.sockets,
                                        last=not message.more)
                else:
                    self.queries.answer(message.request_id, origin, [message.value])
            return
        if record.partition != EVERYONE:
            raise MalformedRecord(f"a {type(message).__name__} outside partition {EVERYONE}")
        if isinstance(message, Farewell):
            self.liveness.gone(origin)
            return
        if origin:
            self.liveness.heard(origin)
        if isinstance(message, Heartbeat):
            if message.initial:
                self._heartbeat()  # the newcomer learns of us
        elif isinstance(message, FetchSockets):
            sockets = self._local_sockets(message.namespace, message.rooms)
            for start in range(0, max(1, len(sockets)), ANSWER_PART):
                part = sockets[start:start + ANSWER_PART]
                more = start + ANSWER_PART < len(sockets)
                self._publish(SocketsAnswer(self.name, origin, message.request_id, part, more),
                              message.answer_partition)
        elif isinstance(message, SocketsAction):
            self._apply(message.action, message.targets, message.namespace, message.rooms)
        elif isinstance(message, ServerEvent):
            # The app's handler may block (even on a fleet query, whose
            # answers this task reads): it runs in a task of its own.
            self.core.runtime.spawn(self._run_handler, message)

    def _gather(self) -> None:
        """At the first heartbeat of a slot, let the others' come: every
        server beats at the same instant, and a fetch that waits
        :data:`GATHER` seconds reads them all at once, where one that
        returns at once would wake this dyno once per server."""
        slot = self.liveness.slot_now()
        if slot != self._gathered:
            self._gathered = slot
            self.core.runtime.sleep(GATHER)

    def _local_sids(self, namespace: str, rooms: list | None) -> list[str]:
        """This server's connections of ``namespace`` in ``rooms``."""
        if rooms == []:
            return []
        return [sid for sid, _ in self.host.get_participants(namespace, rooms)]

    def _local_sockets(self, namespace: str, rooms: list | None) -> list[RemoteSocket]:
        return [RemoteSocket(sid, namespace,
                             {_wire_room(r) for r in self.host.get_rooms(sid, namespace)},
                             self.name)
                for sid in self._local_sids(namespace, rooms)]

    def _apply(self, action: int, targets: list, namespace: str, rooms: list | None) -> None:
        for sid in self._local_sids(namespace, rooms):
            try:
                if action == DISCONNECT:
                    self.host.disconnect_local(sid, namespace)
                for target in targets:
                    if action == JOIN:
                        self.host.basic_enter_room(sid, namespace, target)
                    elif action == LEAVE:
                        self.host.basic_leave_room(sid, namespace, target)
            except Exception:
                logger.exception("fleet: could not apply action %d to %s", action, sid)

    def _run_handler(self, message: ServerEvent) -> None:
        handler = self.handlers.get((message.namespace, message.event))
        value = None
        if handler is not None:
            try:
                value = handler(*message.args)
            except Exception:
                logger.exception("fleet: the handler of server event %r failed; no answer",
                                 message.event)
                return
        if message.request_id:
            try:
                self._publish(EventAnswer(self.name, message.origin, message.request_id, value),
                              message.answer_partition)
            except TypeError as exc:
                logger.error("fleet: the handler of server event %r returned what cannot be "
                             "sent (%s); no answer", message.event, exc)
