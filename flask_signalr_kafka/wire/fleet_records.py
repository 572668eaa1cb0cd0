"""The records of the fleet topic (``<prefix>-fleet``, docs/fleet.md).

Ours alone: .NET servers never read this topic. Each record is a MessagePack
array whose first item is its kind (a msgspec tag), then the name of the
server that wrote it (empty for a write-only emitter, which is no server).
Partition 0 carries what every server reads (requests, heartbeats, a
stopping server's farewell); the other partitions carry the answers, each
to the server that asked (see :mod:`.fleet`).
"""
from __future__ import annotations

from typing import Any

import msgspec

from ..errors import MalformedRecord

#: A room name on the wire: python-socketio rooms are strings (ints pass too).
Room = str | int

#: Sockets per :class:`SocketsAnswer` record: ~100 bytes each, so a part
#: is ~100 KB, well under Kafka's default 1 MB record limit.
ANSWER_PART = 1000

#: :class:`SocketsAction` actions.
JOIN = 1
LEAVE = 2
DISCONNECT = 3


class RemoteSocket(msgspec.Struct, array_like=True):
    """A connection of the fleet, as ``fetch_sockets`` returns it.

    :param sid: its connection id.
    :param namespace: its namespace.
    :param rooms: its rooms, as ``server.rooms(sid)`` gives them (its own
                  sid room included).
    :param server_name: the name of the server that holds it.
    """

    sid: str
    namespace: str
    rooms: set[Room]
    server_name: str


class _Record(msgspec.Struct, array_like=True, tag=True):
    origin: str


class Heartbeat(_Record, tag=1):
    """``[1, origin, initial]``: the writer is alive. ``initial``: it just
    joined, and every server answers with a heartbeat of its own."""

    initial: bool = False


class Farewell(_Record, tag=2):
    """``[2, origin]``: the writer is stopping; stop counting it."""


class FetchSockets(_Record, tag=3):
    """``[3, origin, request id, answer partition, namespace, rooms]``:
    every server answers with its connections in ``rooms`` (``None``: all
    of the namespace) as a :class:`SocketsAnswer`."""

    request_id: int
    answer_partition: int
    namespace: str
    rooms: list[Room] | None


class SocketsAction(_Record, tag=4):
    """``[4, origin, namespace, rooms, action, targets]``: every server
    applies ``action`` (:data:`JOIN` or :data:`LEAVE` ``targets``, or
    :data:`DISCONNECT`) to its connections in ``rooms``."""

    namespace: str
    rooms: list[Room] | None
    action: int
    targets: list[Room] = msgspec.field(default_factory=list)


class ServerEvent(_Record, tag=5):
    """``[5, origin, request id, answer partition, namespace, event, args]``:
    an event for the other servers' handlers; a non-zero ``request_id``
    asks each for an :class:`EventAnswer`."""

    request_id: int
    answer_partition: int
    namespace: str
    event: str
    args: list[Any]


class SocketsAnswer(_Record, tag=6):
    """``[6, origin, asker, request id, sockets, more]``: one server's
    answer to a :class:`FetchSockets`, in parts of at most
    :data:`ANSWER_PART` sockets (a record stays far below the topic's
    size limit); ``more``: another part follows."""

    asker: str
    request_id: int
    sockets: list[RemoteSocket]
    more: bool = False


class EventAnswer(_Record, tag=7):
    """``[7, origin, asker, request id, value]``: one server's handler's
    return value for a :class:`ServerEvent`."""

    asker: str
    request_id: int
    value: Any = None


FleetRecord = (Heartbeat | Farewell | FetchSockets | SocketsAction | ServerEvent
               | SocketsAnswer | EventAnswer)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(FleetRecord)


def encode(record: _Record) -> bytes:
    """The MessagePack value of a fleet record."""
    return _encoder.encode(record)


def decode(value: bytes | None) -> FleetRecord:
    """A fleet record from its value.

    :raises MalformedRecord: the value is not a fleet record.
    """
    if not value:
        raise MalformedRecord("empty value for a fleet record")
    try:
        record = _decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedRecord(f"not a fleet record: {exc}") from None
    if isinstance(record, SocketsAction) and record.action not in (JOIN, LEAVE, DISCONNECT):
        raise MalformedRecord(f"unknown fleet action {record.action}")
    return record
