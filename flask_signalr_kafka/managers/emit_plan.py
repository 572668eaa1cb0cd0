"""What an emit sends: :class:`EmitPlan`, decided once, before anyone gets
the emit, and followed by both managers (:class:`.manager.KafkaManager`
blocks where :class:`.async_manager.AsyncKafkaManager` awaits).

An emit goes to this server's clients at once (python-socketio's own
delivery) and, for every target that may have clients elsewhere, to Kafka
as one record (:class:`.records.InvocationExt`) on the topic and key its
target maps to (:mod:`.addressing`). The plan says which targets those are,
with the frames every record carries, checked against the payload limit
(:mod:`.payload_limits`) so that a too-large emit reaches nobody.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ..transport import payload_limits
from ..wire import hub_protocol, records
from ..wire.addressing import SEND_CONN, route
from ..wire.records import InvocationExt


def _skipped(skip_sid: Any) -> tuple[str, ...]:
    """python-socketio's ``skip_sid``: ``None``, one sid, or a collection."""
    if skip_sid is None:
        return ()
    if isinstance(skip_sid, (list, tuple, set)):
        return tuple(skip_sid)
    return (skip_sid,)


#: A record to publish: ``(topic base name, key, value)``.
Record = tuple[str, str | None, bytes]


class EmitPlan(msgspec.Struct, frozen=True):
    """What one emit sends (build it with :meth:`of`); immutable. A msgspec
    Struct because every emit builds one: 0.08 us, against 0.8 us for a
    frozen dataclass.

    :param origin: the emitting server's name (each record carries it).
    :param namespace: the emit's namespace.
    :param targets: its targets, each once, in the order given; ``None``
                    is every connection of the namespace.
    :param skip_sid: the connection ids it skips.
    :param published: the targets that get a record, in order: all but the
                      connections of this server, which get it here only
                      (with connection state recovery, also those, unless a
                      callback waits for the answer here).
    :param to_conn: the published targets that are connections of this
                    server: their records go to send-conn, whatever their
                    shape (recovery replays them from there).
    :param deliver_here: whether a target may have clients on this server;
                         the local delivery is skipped when none can
                         (python-socketio would encode the packet for
                         nobody).
    :param frames: the hub-protocol frames of every record, checked
                   against the payload limit; empty when nothing is
                   published.
    :param emit_seq: the emit's number in recovery's count of emits (0
                     without recovery); whoever builds the plan ends it
                     with ``emit_done`` once its records are published.
    """

    origin: str
    namespace: str
    targets: tuple[str | None, ...]
    skip_sid: tuple[str, ...]
    published: tuple[str | None, ...]
    to_conn: frozenset[str]
    deliver_here: bool
    frames: dict[str, bytes]
    emit_seq: int

    @classmethod
    def of(cls, event: str, data: Any, namespace: str, target: Any, skip_sid: Any, *,
           callback: bool, origin: str, here: Mapping[Any, Any] | None,
           protocols: tuple[str, ...], limit: payload_limits.PayloadLimit | None,
           count_emit: Callable[[], int] | None) -> EmitPlan:
        """Plan an emit of python-socketio's arguments.

        :param event: the event name.
        :param data: its data: one value, a tuple of several arguments, or
                     ``None``.
        :param target: ``to=``/``room=``: a room, a connection id, a user's
                       room, ``None`` (everyone), or a list or tuple of those.
        :param skip_sid: a connection id, a list of them, or ``None``.
        :param callback: whether a callback waits for the answer.
        :param origin: this server's name.
        :param here: this server's rooms of ``namespace`` (python-socketio's
                     ``rooms[namespace]``; a connection id is a room of its
                     own and every connection is in room ``None``), or
                     ``None`` for a manager without a Socket.IO server.
        :param protocols: the hub protocols every record carries.
        :param limit: the payload limit (``None``: not learnt, no check).
        :param count_emit: recovery's counter of emits (``EmitLog.next_emit``);
                           ``None`` when connection state recovery is off.
        :raises PayloadTooLargeError: a record would exceed the limit; then
                                      nothing was counted.
        """
        targets = tuple(dict.fromkeys(target)) if isinstance(target, (list, tuple)) \
            else (target,)
        skipped = _skipped(skip_sid)
        # A connection of this server gets the emit here; with recovery on
        # its record goes to Kafka too (it may drop before the emit reaches
        # it: replayed from there), unless a callback waits for it here.
        local = here.get(None, {}) if here is not None else {}
        keep_local = count_emit is not None and not callback
        published = tuple(one for one in targets if keep_local or one not in local)
        to_conn = frozenset(one for one in published if one is not None and one in local)
        deliver_here = here is not None and any(one is None or one in here for one in targets)
        frames = hub_protocol.frames_of(event, data, protocols) if published else {}
        payload_limits.check_emit(limit, frames, origin, event, namespace, targets, published,
                                  skipped)
        # Counted after the check (a refused emit is no emit) and before the
        # local delivery, whose step records it.
        emit_seq = count_emit() if count_emit is not None else 0
        return cls(origin, namespace, targets, skipped, published, to_conn, deliver_here,
                   frames, emit_seq)

    @property
    def room(self) -> Any:
        """The targets as python-socketio's emit takes them: one, or a list
        (each local connection gets the emit once, however many of them it
        is in)."""
        return list(self.targets) if len(self.targets) > 1 else self.targets[0]

    @property
    def excluded(self) -> list[str]:
        """The skipped connection ids as the list python-socketio takes."""
        return list(self.skip_sid)

    def records(self, callback_id: int = 0) -> list[Record]:
        """The ``(base, key, value)`` of each published target's record.

        :param callback_id: the id the client's answer comes back with
                            (:class:`.records.AckExt`); 0 when nobody waits.
        """
        out: list[Record] = []
        published, excluded = set(self.published), self.excluded
        earlier: list[str] = []  # each record names the targets before its own
        for one in self.targets:
            if one in published:
                record = InvocationExt(
                    excluded, self.frames, origin=self.origin,
                    namespace=self.namespace, callback_id=callback_id,
                    earlier_targets=list(earlier), emit_seq=self.emit_seq,
                )
                base, key = (SEND_CONN, one) if one in self.to_conn else route(one)
                out.append((base, key, records.encode(record)))
            if one is not None:
                earlier.append(one)
        return out
