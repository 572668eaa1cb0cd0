"""The wire records of the SignalR Kafka backplane (docs/wire-format.md).

Each record is a MessagePack array. The base classes are the exact .NET
layouts; the ``*Ext`` subclasses append our Socket.IO extension items at the
end, where .NET readers (which check only a minimum length) never look. We
decode every record with the ``*Ext`` class, so a .NET record simply gets the
extension defaults.
"""
from __future__ import annotations

from typing import Annotated, Any

import msgspec

from ..errors import MalformedRecord

Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]

#: GroupCommand actions, as in .NET's ``GroupAction``.
ADD = 1
REMOVE = 2

#: GroupCommandExt operations. A .NET server sees ``REMOVE`` of a connection
#: it does not hold, and ignores the command.
OP_GROUP = 0
OP_CLOSE_ROOM = 1
OP_DISCONNECT = 2
#: Connection state recovery: the holder of a connection whose client came
#: back elsewhere lets it go and saves its session.
OP_RELEASE = 3


class Invocation(msgspec.Struct, array_like=True):
    """send-* value: ``[excluded connection ids, {protocol: frame}]``."""

    excluded: list[str]
    frames: dict[str, bytes]


class InvocationExt(Invocation):
    """An Invocation carrying the Socket.IO extension items.

    :param origin: server name of the writer (its readers skip their own
                   records: the writer already delivered locally).
    :param namespace: Socket.IO namespace; ``"/"`` for .NET records.
    :param callback_id: non-zero when the writer waits for the client's
                        answer, which comes back as an :class:`AckExt`.
    :param earlier_targets: for an emit to a list, the targets before this
                            record's: their members got it from an earlier
                            record, so each connection gets it once.
    :param emit_seq: the writer's emit counter (connection state recovery:
                     a replay skips what the writer already delivered
                     itself); 0 when recovery is off.
    """

    origin: str = ""
    namespace: str = "/"
    callback_id: Int32 = 0
    earlier_targets: list[str] = msgspec.field(default_factory=list)
    emit_seq: int = 0


class GroupCommand(msgspec.Struct, array_like=True):
    """group-mgmt value: ``[id, server name, action, group, connection id]``."""

    id: Int32
    server_name: str
    action: int
    group: str
    connection_id: str


class GroupCommandExt(GroupCommand):
    """A GroupCommand with the Socket.IO namespace and operation."""

    namespace: str = "/"
    op: int = OP_GROUP


class Ack(msgspec.Struct, array_like=True):
    """ack value: ``[id]``, keyed by the name of the server that waits."""

    id: Int32


class AckExt(Ack):
    """An Ack that answers a Socket.IO callback with the client's arguments."""

    args: list[Any] | None = None


_encoder = msgspec.msgpack.Encoder()
_decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {
    cls: msgspec.msgpack.Decoder(cls) for cls in (InvocationExt, GroupCommandExt, AckExt)
}


def encode(record: msgspec.Struct) -> bytes:
    """Encode a record to its MessagePack value."""
    return _encoder.encode(record)


def decode(value: bytes | None, cls: type) -> Any:
    """Decode a record value with one of the ``*Ext`` classes.

    :raises MalformedRecord: the value is not a valid record of that type.
    """
    if not value:
        raise MalformedRecord(f"empty value for a {cls.__name__}")
    try:
        record = _decoders[cls].decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedRecord(f"not a {cls.__name__}: {exc}") from None
    if cls is GroupCommandExt:
        _check_group_command(record)
    return record


def _check_group_command(cmd: GroupCommandExt) -> None:
    if cmd.action not in (ADD, REMOVE):
        raise MalformedRecord(f"unknown GroupCommand action {cmd.action}")
    if cmd.op not in (OP_GROUP, OP_CLOSE_ROOM, OP_DISCONNECT, OP_RELEASE):
        raise MalformedRecord(f"unknown GroupCommand operation {cmd.op}")
