"""Reading what a recovered connection missed, from the Kafka log.

:mod:`.recovery` decides what to read (the session's window and the ranges
after its positions); this module reads it with a consumer of its own and
keeps the records addressed to the connection, in live-delivery order.
"""
from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import MalformedRecord
from ..transport.clients.kafka_client import Consumer, TopicPartition
from ..transport.home_partitions import partitions_of
from ..wire import hub_protocol, offsets, records
from ..wire.addressing import SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER, USER_PREFIX, user_id_of
from ..wire.offsets import Slot
from .sessions import Session

logger = logging.getLogger(__name__)

#: Seconds a replay read may go without reading a record (or its position
#: moving) before it fails: a slow read that progresses goes on (a recovery
#: storm shares the broker), a stuck one ends.
IDLE_TIMEOUT = 30.0


class ConsumerPool:
    """Replay consumers kept between reads: a recovery storm reuses a few
    instead of connecting a new consumer per attempt.

    :param new_consumer: makes a consumer without a group.
    :param keep: how many idle consumers are kept.
    """

    def __init__(self, new_consumer: Callable[[], Consumer], keep: int = 4) -> None:
        self._new_consumer = new_consumer
        self.keep = keep
        self._idle: list[Consumer] = []
        self._lock = threading.Lock()
        self._closed = False

    def get(self) -> Consumer:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new_consumer()

    def put(self, consumer: Consumer) -> None:
        """Give back a consumer whose read ended well (one that failed may be
        in any state: the caller closes it)."""
        with self._lock:
            if not self._closed and len(self._idle) < self.keep:
                self._idle.append(consumer)
                return
        consumer.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for consumer in idle:
            consumer.close()


def slots_of_session(partition_count: Callable[[str], int], session: Session) -> set[Slot]:
    """The (base, partition) slots that can hold a record for the session.

    :param partition_count: the partitions of a send topic (the core's).
    """
    slots = slots_of_connection(partition_count, session.sid)
    for room in session.rooms:
        slots.update(slots_of_room(partition_count, room))
    return slots


def slots_of_connection(partition_count: Callable[[str], int], sid: str) -> set[Slot]:
    """The slots of connection ``sid`` apart from its rooms: every broadcast
    partition and its own send-conn slot."""
    slots = {(SEND_ALL, p) for p in range(partition_count(SEND_ALL))}
    slots.update(_slots_of(partition_count, SEND_CONN, sid))
    return slots


def slots_of_room(partition_count: Callable[[str], int], room: str) -> set[Slot]:
    """The slots that can hold a record for ``room`` (a user's too)."""
    uid = user_id_of(room)
    slots = _slots_of(partition_count, SEND_GROUP, room)
    return slots if uid is None else slots | _slots_of(partition_count, SEND_USER, uid)


def _slots_of(partition_count: Callable[[str], int], base: str, key: str) -> set[Slot]:
    # murmur2 for Java and kafka-python producers, CRC-32 for
    # librdkafka's (so .NET's) default partitioner.
    n = partition_count(base)
    return {(base, p) for p in partitions_of(key, n)} if n else set()


def read_missed(
    new_consumer: Callable[[], Consumer],
    topic: Callable[[str], str],
    session: Session,
    window: list[tuple[str, int, int]],
    ranges: dict[tuple[str, int], tuple[int, int]],
    own: tuple[str, int, dict[tuple[str, int], tuple[int, int]]] | None = None,
    pause: Callable[[float], Any] = time.sleep,
    release: Callable[[Consumer], Any] | None = None,
) -> list:
    """``[(coords, event, args)]``: the window's records (in the order they
    were first sent), then every record of ``ranges`` (``{(base, partition):
    (start, end)}``) addressed to the session, then those of ``own``'s ranges
    that its server (``(server name, up to emit counter, ranges)``) emitted.

    :param new_consumer: a consumer without a group (the core's ``new_consumer``).
    :param topic: the topic name of a base name.
    :param pause: the runtime's sleep: a long catch-up lets the others run.
    :param release: takes the consumer back after a read that ended well
                    (:meth:`ConsumerPool.put`); closed otherwise.
    """
    consumer = new_consumer()
    done = False
    try:
        out = []
        # The window's records, read in one pass per partition, replayed
        # in the order they were first sent.
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for base, partition, at in window:
            low, high = spans.get((base, partition), (at, at + 1))
            spans[(base, partition)] = (min(low, at), max(high, at + 1))
        wanted = set(window)
        by_coord = {
            (base, record.partition, record.offset): record
            for base, record in read_ranges(consumer, {
                (base, TopicPartition(topic(base), p)): span
                for (base, p), span in spans.items()
            }, pause)
            if (base, record.partition, record.offset) in wanted
        }
        for base, partition, at in window:
            record = by_coord.get((base, partition, at))
            event = record and event_for(record, base, session, skip_own=False)
            if event is not None:
                out.append(([[base, record_key(record), partition, at]], *event))
        passes = [(None, ranges)] if own is None else [(None, ranges), (own[:2], own[2])]
        for only, spans in passes:
            found = read_ranges(consumer, {
                (base, TopicPartition(topic(base), p)): r for (base, p), r in spans.items()
            }, pause)
            for count, (base, record) in enumerate(found, 1):
                if count % 500 == 0:
                    pause(0)  # a long catch-up must not stall the dyno
                if (base, record.partition, record.offset) in wanted:
                    # Sent already with the window: a session's positions are
                    # read before its window is cut, so a record delivered in
                    # between is in both (a plain client got it twice).
                    continue
                event = event_for(record, base, session, skip_own=True, only=only)
                if event is not None:
                    out.append(([[base, record_key(record), record.partition, record.offset]],
                                *event))
        done = True
        return out
    finally:
        if done and release is not None:
            release(consumer)
        else:
            consumer.close()


def event_for(record: Any, base: str, session: Session, skip_own: bool,
              only: tuple[str, int] | None = None) -> tuple | None:
    """``(event, args)`` if ``record`` is for the session's connection (and
    emitted by ``only``'s server up to its emit counter, if given)."""
    try:
        inv = records.decode(record.value, records.InvocationExt)
        if inv.namespace != session.namespace or inv.callback_id:
            return None
        if only is not None and not (inv.origin == only[0] and 0 < inv.emit_seq <= only[1]):
            return None
        if skip_own and inv.origin == session.owner and 0 < inv.emit_seq <= session.emit_seq:
            return None  # its dyno delivered it when it was emitted
        key = record_key(record)
        rooms = set(session.rooms)
        if not addressed(base, key, session.sid, rooms):
            return None
        if session.sid in inv.excluded:
            return None
        if any(t == session.sid or t in rooms for t in inv.earlier_targets):
            return None  # it came with an earlier record of the same emit
        return hub_protocol.decode_frames(inv.frames)
    except MalformedRecord:
        return None


def addressed(base: str, key: str | None, sid: str, rooms: set[str]) -> bool:
    if base == SEND_ALL:
        return True
    if key is None:
        return False
    if base == SEND_GROUP:
        return key in rooms
    if base == SEND_USER:
        return USER_PREFIX + key in rooms
    return base == SEND_CONN and key == sid


def record_key(record: Any) -> str | None:
    return None if record.key is None else record.key.decode(errors="replace")


def step_of(offset: str | None, tag: str) -> int | None:
    """The step of a client's offset (short or full) if it is one of ``tag``'s."""
    parsed = offsets.parse(offset)
    return parsed.step if parsed is not None and parsed.tag == tag else None


def read_ranges(consumer: Consumer, ranges: dict,
                pause: Callable[[float], Any] = time.sleep) -> list:
    """Every record in ``{(base, tp): (start, end)}``, merged across
    partitions by timestamp (each partition stays in its own order).

    :raises TimeoutError: nothing was read for :data:`IDLE_TIMEOUT` seconds.
    """
    if not ranges:
        return []
    by_tp = {tp: (base, start, end) for (base, tp), (start, end) in ranges.items()}
    consumer.assign(list(by_tp))
    consumer.resume(*by_tp)
    for tp, (_, start, _) in by_tp.items():
        consumer.seek(tp, start)
    pending = set(by_tp)
    found: dict[TopicPartition, list] = {tp: [] for tp in by_tp}
    # The deadline counts from the last progress, not from the start: under
    # a recovery storm a long read that advances must not be thrown away.
    deadline = time.monotonic() + IDLE_TIMEOUT
    at: dict[TopicPartition, int] = {}
    while pending:
        logger.debug("replay read: waiting for %s", sorted(map(str, pending)))
        if time.monotonic() > deadline:
            raise TimeoutError(f"replay read did not reach the end of {sorted(map(str, pending))}"
                               f": nothing read for {IDLE_TIMEOUT:g} s")
        progressed = False
        for tp, batch in consumer.poll(timeout_ms=200).items():
            if tp not in by_tp:
                continue  # a reused consumer's earlier read, still buffered
            base, start, end = by_tp[tp]
            progressed = progressed or bool(batch)
            for record in batch:
                if start <= record.offset < end:
                    found[tp].append((base, record))
            # Not paused once done (its further records are dropped): a
            # pause outlives the read in both clients (librdkafka keeps it
            # through an unassign; kafka-python stalled a later seek), and a
            # reused consumer would never fetch that partition again.
            if batch and batch[-1].offset >= end - 1:
                pending.discard(tp)
        for tp in list(pending):
            position = consumer.position(tp)
            if position >= by_tp[tp][2]:
                pending.discard(tp)
            elif position is not None and position > at.get(tp, -1):
                # Compacted or aborted offsets move the position too.
                progressed = progressed or tp in at
                at[tp] = position
        if progressed:
            deadline = time.monotonic() + IDLE_TIMEOUT
        pause(0)
    # heapq.merge keeps each partition's own order even where producers'
    # clocks make its timestamps go backwards.
    return list(heapq.merge(*found.values(), key=lambda item: item[1].timestamp))
