"""What a consumed record asks of this server, decided from the record alone.

Both client managers (:mod:`.manager` for gevent and threading servers,
:mod:`.async_manager` for asyncio ones) read the same records; these pure
functions decode one and say which local room, excluded connections and
callback it means. Applying that to the server's clients is each manager's.
A record that cannot be read raises :class:`MalformedRecord` (the consumer
logs it with its topic, partition and offset, and skips it).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import MalformedRecord
from ..wire import hub_protocol, records
from ..wire.addressing import SEND_ALL, SEND_CONN, SEND_USER, USER_PREFIX
from ..wire.records import AckExt, GroupCommandExt, InvocationExt


@dataclass
class Delivery:
    """An invocation for this server's clients.

    :ivar room: the local room it goes to (``None``: the whole namespace; a
                sid for a send-conn record).
    :ivar to_conn: a send-conn record: only the server that holds ``room``
                   (a sid) delivers it.
    :ivar callback: ``(origin, callback id)`` when the emitter waits for the
                    client's answer.
    :ivar earlier_targets: targets of the same emit published before this
                           one: their members got it already.
    :ivar key: the record's key (``None`` for send-all).
    """

    namespace: str
    room: str | None
    to_conn: bool
    frames: dict
    excluded: list
    earlier_targets: list
    callback: tuple[str, int] | None
    key: str | None

    def held_elsewhere(self, is_local: Callable[[str, str], bool]) -> bool:
        """A send-conn record for a connection this server does not hold
        (``is_local(sid, namespace)``): another server delivers it."""
        return self.to_conn and (self.room is None or not is_local(self.room, self.namespace))

    def payload(self) -> tuple[str, tuple]:
        """The event and its arguments (decoded only by the server that
        delivers it)."""
        event, arguments = hub_protocol.decode_frames(self.frames)
        return event, tuple(arguments)


def delivery_of(base: str, record: Any, server_name: str) -> Delivery | None:
    """The delivery an Invocation record of topic ``base`` asks for, or
    ``None`` when this server emitted it (delivered locally already)."""
    invocation = records.decode(record.value, InvocationExt)
    if invocation.origin == server_name:
        return None
    key = None if base == SEND_ALL else record_key(record)
    room = key
    if base == SEND_USER:
        room = USER_PREFIX + key
    callback = None
    if invocation.callback_id and invocation.origin:
        callback = (invocation.origin, invocation.callback_id)
    return Delivery(invocation.namespace, room, base == SEND_CONN, invocation.frames,
                    invocation.excluded, invocation.earlier_targets, callback, key)


def excluded(delivery: Delivery,
             participants: Callable[[str, str], Iterable[tuple[str, Any]]]) -> list:
    """The connections a delivery skips: its excluded sids, and the local
    members of the targets published before it (they had it already).

    :param participants: the manager's ``get_participants``.
    """
    if not delivery.earlier_targets:
        return delivery.excluded
    return delivery.excluded + [
        sid for earlier in delivery.earlier_targets
        for sid, _ in participants(delivery.namespace, earlier)
    ]


def ack_of(record: Any, ack_key: bytes) -> AckExt | None:
    """The Ack a record of the ack topic holds for this server (keyed by
    ``ack_key``), or ``None`` when it is another server's."""
    if record.key != ack_key:
        return None
    return records.decode(record.value, AckExt)


def command_of(record: Any) -> GroupCommandExt:
    """The GroupCommand of a group-mgmt record."""
    return records.decode(record.value, GroupCommandExt)


def record_key(record: Any) -> str:
    """A record's key as text.

    :raises MalformedRecord: it has none, or it is not UTF-8.
    """
    if record.key is None:
        raise MalformedRecord("record has no key")
    try:
        return record.key.decode()
    except UnicodeDecodeError:
        raise MalformedRecord("record key is not UTF-8") from None
