"""What a dyno delivered, step by step: the ring of delivery steps, the
offsets it gives clients, its reference points, the windows of dropped
connections and the tails of its checkpoints (docs/recovery.md, "Steps and
offsets").

Every delivery to local clients is a step. Clients that take part in
recovery get each step's offset; a step keeps the records it came from, so
that what a client missed after its last offset can be named: by its
dyno's saved window when it dropped, by the dyno's last checkpoint's tail
when the dyno died, or exactly, by a full offset.
"""
from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..wire import offsets
from ..wire.addressing import SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER, user_id_of
from ..wire.offsets import Slot
from .sessions import Checkpoint, Position, PrivateEntry, RefPoint, WindowEntry

#: Seconds of sent records a session keeps when its socket may have died
#: with some of them unread.
DROP_WINDOW = 5.0
#: The most steps to every client (not one connection alone) a checkpoint's
#: tail keeps (a client lagging further behind its dying dyno is not
#: recovered rather than lose events).
TAIL_STEPS = 5000
#: The most steps to one connection alone (replays) a checkpoint's tail
#: keeps, apart: a recovery storm's replays must not push the other
#: clients' steps out of the tail.
PRIVATE_STEPS = 5000
#: A record's offset in a step's coords while the broker has not answered
#: (the record is on its way, or its report not yet handed over), and once
#: the broker refused it.
PENDING, REFUSED = -1, -2
#: Seconds after which a record still without the broker's answer is taken
#: as one that will never get it (beyond the producers' delivery timeouts).
UNANSWERED_MAX_AGE = 330.0
#: Why a window is not exact (the log says).
PENDING_WHY = "own records not yet acked"
REFUSED_WHY = "own records the broker refused"
RING_WHY = "the ring forgot part of it"


class DeliveryLog:
    """One dyno's delivery steps. Steps come from every consumer (threads in
    threading mode): one lock keeps their numbers and positions straight.

    :param window_steps: how many steps the ring keeps.
    """

    def __init__(self, window_steps: int) -> None:
        #: Names this dyno in its offsets (its home partition, once known).
        self.tag = ""
        self._lock = threading.Lock()
        #: Held from a step's number to its last write (:meth:`delivering`),
        #: and who holds it.
        self._sending = threading.RLock()
        self._sender: int | None = None
        self._step = 0
        self._emit_seq = 0
        #: (step, monotonic time, coords, emit counter, the one connection it
        #: went to or None) of each delivery step.
        self._ring: deque[tuple[int, float, list, int, str | None]] = deque(
            maxlen=window_steps)
        #: Full offsets: the newest acked reference point (n, positions,
        #: emit counter), the slots delivered past it and by how much.
        self._ref: tuple[int, dict[Slot, int], int] | None = None
        self._ref_n = 0
        self._delivered: dict[Slot, int] = {}
        self._past_ref: dict[Slot, int] = {}
        #: (base, partition) -> the offset of this dyno's last acked record.
        self.own_acked: dict[tuple[str, int], int] = {}
        #: Emits counted but not yet handed to the producer, and the thread
        #: (greenlet) of each.
        self._open_emits: dict[int, int] = {}
        #: Records of this dyno tracked so far, and those still without the
        #: broker's answer (their numbers, oldest first).
        self._tracked = 0
        self._unanswered: dict[int, float] = {}
        #: Set once the first reference point is acked: the dyno's home
        #: partition takes writes (a topic created a second ago may not yet).
        self.ready = threading.Event()

    @property
    def emit_seq(self) -> int:
        """This dyno's emit counter."""
        return self._emit_seq

    @property
    def last_step(self) -> int:
        return self._step

    @property
    def has_ref(self) -> bool:
        return self._ref is not None

    def next_emit(self) -> int:
        """Count an emit; :meth:`emit_done` once its records are published."""
        with self._lock:
            self._emit_seq += 1
            self._open_emits[self._emit_seq] = threading.get_ident()
            return self._emit_seq

    def emit_done(self, seq: int) -> None:
        with self._lock:
            self._open_emits.pop(seq, None)

    def emitting_here(self) -> bool:
        """Whether the calling thread (greenlet) is inside an emit: a wait
        for that emit here would wait for itself."""
        here = threading.get_ident()
        return here in list(self._open_emits.values())

    @contextmanager
    def delivering(self) -> Iterator[None]:
        """Around a delivery step, from its :meth:`step` to its last write:
        a client gets steps in their order. In threading mode the consumer's
        thread and the handlers' (a dyno's own emits are delivered at emit
        time) deliver side by side; a step written after a later one made
        the client's last offset name the older, and its next recovery sent
        the later one's event again (soak seed 873700)."""
        with self._sending:
            outer, self._sender = self._sender, threading.get_ident()
            try:
                yield
            finally:
                self._sender = outer

    def delivering_here(self) -> bool:
        """Whether the calling thread (greenlet) is inside :meth:`delivering`:
        a wait here for another delivery would wait for itself."""
        return self._sender == threading.get_ident()

    def wait_emits(self, upto: int, timeout: float, sleep: Callable[[float], None]) -> bool:
        """Wait until every emit numbered ``upto`` or less has handed its
        records to the producer (a first publish to a topic may wait for its
        metadata); ``False`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while any(seq <= upto for seq in list(self._open_emits)):
            if time.monotonic() > deadline:
                return False
            sleep(0.005)
        return True

    def wait_acks(self, timeout: float, sleep: Callable[[float], None]) -> bool:
        """Wait until the broker answered for every record tracked so far, so
        that :attr:`own_acked` and the steps' coords know where each landed
        (a flush can return first: its timeout, or confluent's report task
        settling a report a moment later); ``False`` after ``timeout``."""
        upto = self._tracked
        deadline = time.monotonic() + timeout
        while True:
            oldest = next(iter(self._unanswered.items()), None)
            if oldest is None or oldest[0] > upto:
                return True
            now = time.monotonic()
            if now - oldest[1] > UNANSWERED_MAX_AGE:
                # A future its producer dropped (a replaced one): no answer
                # will come, and it must not hold every later wait.
                self._unanswered.pop(oldest[0], None)
                continue
            if now > deadline:
                return False
            sleep(0.005)

    def step(self, coords: list, only: str | None = None) -> str:
        """Register one delivery step (the records it came from, filled in as
        they are acked) and return its offset string: a full one for a live
        step; for a step that went to ``only`` alone (a replayed or held-back
        event, which comes after newer records went to others) a short one,
        and the step counts for that connection's window alone."""
        with self._lock:
            self._step += 1
            self._ring.append((self._step, time.monotonic(), coords, self._emit_seq, only))
            ref = self._ref
            if only is not None or ref is None:
                return offsets.short(self.tag, self._step)
            for base, _, partition, offset in coords:
                if offset >= 0:  # a record read here (its own ones land later)
                    self._advance((base, partition), offset + 1, ref[1])
            return offsets.full(self.tag, self._step, ref[0], self._emit_seq - ref[2],
                                self._past_ref)

    def _advance(self, slot: Slot, position: int, at_ref: dict[Slot, int]) -> None:
        if position > self._delivered.get(slot, 0):
            self._delivered[slot] = position
            if position > at_ref.get(slot, 0):
                self._past_ref[slot] = position - at_ref.get(slot, 0)

    def mark(self, positions: dict[Slot, int]) -> None:
        """A connection joined a room: its slots' positions now, so that a
        full offset does not reach back before the join (before the first
        reference point too: :meth:`use_ref` counts from what is marked)."""
        with self._lock:
            at_ref = self._ref[1] if self._ref is not None else {}
            for slot, position in positions.items():
                self._advance(slot, position, at_ref)

    def use_ref(self, n: int, positions: dict[Slot, int], emit_seq: int) -> None:
        """Reference point ``n`` is durable: full offsets count from it."""
        with self._lock:
            if self._ref is not None and self._ref[0] >= n:
                return
            self._ref = (n, positions, emit_seq)
            self._past_ref = {slot: at - positions.get(slot, 0) for slot, at in
                              self._delivered.items() if at > positions.get(slot, 0)}
        self.ready.set()

    def write_ref(self, owner: str, position_list: list[Position],
                  put: Callable[[RefPoint], Any]) -> None:
        """Write a new reference point with ``put`` (it returns the record's
        future); full offsets count from it once it is acked."""
        self._ref_n += 1
        n, emit_seq = self._ref_n, self._emit_seq
        positions = {(b, p): off for b, p, off in position_list}
        future = put(RefPoint(owner, self.tag, n, time.time(), position_list, emit_seq))
        future.add_callback(lambda _: self.use_ref(n, positions, emit_seq))

    def track(self, future: Any, coords: list, base: str, key: str | None) -> None:
        """Note where one of this dyno's records lands, once the broker says."""
        coord = [base, key, -1, PENDING]
        coords.append(coord)
        with self._lock:
            self._tracked += 1
            number = self._tracked
            self._unanswered[number] = time.monotonic()

        def landed(metadata: Any) -> None:
            coord[2], coord[3] = metadata.partition, metadata.offset
            slot = (base, metadata.partition)
            if metadata.offset > self.own_acked.get(slot, -1):
                self.own_acked[slot] = metadata.offset
            self._unanswered.pop(number, None)

        def refused(_error: Any) -> None:
            coord[3] = REFUSED  # never in Kafka: no wait for it
            self._unanswered.pop(number, None)

        future.add_callback(landed)
        future.add_errback(refused)

    def _recent(self, cutoff: float) -> list:
        """The ring's steps at or after ``cutoff``, oldest first; the caller
        holds the lock."""
        recent = []
        for entry in reversed(self._ring):
            if entry[1] < cutoff:
                break
            recent.append(entry)
        recent.reverse()
        return recent

    def windows(self, rooms_of: dict[str, list[str]], seconds: float, wait: float = 0.0,
                pause: Callable[[float], Any] | None = None,
                ) -> dict[str, tuple[list[WindowEntry], bool]]:
        """For each connection of ``rooms_of`` (sid -> rooms): the records
        sent in the last ``seconds`` addressed to it, in the order they were
        sent, and whether that is all of them. One pass over the ring for
        every connection (a shutdown saves them all).

        :param wait: seconds to wait (with ``pause``) for the broker's
            answers about this dyno's own records in the windows: one not
            yet answered is not in a window, and makes it inexact.
        """
        deadline = time.monotonic() + wait
        recent, whole = self._window_steps(seconds)
        while True:
            cut, why = self._cut(recent, rooms_of, whole)
            waiting = any(PENDING_WHY in reasons for reasons in why.values())
            if not waiting or pause is None or time.monotonic() >= deadline:
                return cut
            pause(0.005)

    def inexact_why(self, rooms_of: dict[str, list[str]], seconds: float) -> str:
        """Why :meth:`windows` finds the window of ``rooms_of``'s connections
        inexact now (for the log)."""
        recent, whole = self._window_steps(seconds)
        reasons = set().union(*self._cut(recent, rooms_of, whole)[1].values())
        return ", ".join(sorted(reasons)) or "nothing now"

    def _window_steps(self, seconds: float) -> tuple[list, bool]:
        """The steps of the last ``seconds``, and whether the ring still
        holds all of them."""
        cutoff = time.monotonic() - seconds
        # Taken under the lock: consumers (threads) and the loop append as
        # this runs, and a deque changed during its iteration raises (out of
        # the disconnect hook: a ghost).
        with self._lock:
            ring = self._ring
            whole = len(ring) < (ring.maxlen or 0) or (bool(ring) and ring[0][1] <= cutoff)
            return self._recent(cutoff), whole

    @staticmethod
    def _cut(recent: list, rooms_of: dict[str, list[str]], whole: bool,
             ) -> tuple[dict[str, tuple[list[WindowEntry], bool]], dict[str, set[str]]]:
        """:meth:`windows` of ``recent`` steps, and why each inexact one is."""
        members: dict[tuple[str, str], list[str]] = {}
        for sid, rooms in rooms_of.items():
            members.setdefault((SEND_CONN, sid), []).append(sid)
            for room in rooms:
                uid = user_id_of(room)
                target = (SEND_USER, uid) if uid is not None else (SEND_GROUP, room)
                members.setdefault(target, []).append(sid)
        everyone: list[WindowEntry] = []
        own: dict[str, list[WindowEntry]] = {sid: [] for sid in rooms_of}
        why: dict[str, set[str]] = {sid: set() if whole else {RING_WHY} for sid in rooms_of}
        for step, _, coords, _, only in recent:
            for base, key, partition, offset in list(coords):  # acks fill them in meanwhile
                if only is not None:
                    sids = [only] if only in own else []
                elif base == SEND_ALL:
                    sids = list(rooms_of)
                else:
                    sids = members.get((base, key), [])
                if offset < 0:  # not in Kafka (yet): nothing to replay
                    for sid in sids:
                        why[sid].add(PENDING_WHY if offset == PENDING else REFUSED_WHY)
                    continue
                entry = (step, base, partition, offset)
                if base == SEND_ALL and only is None:
                    everyone.append(entry)
                else:
                    for sid in sids:
                        own[sid].append(entry)
        return {sid: (latest_each(heapq.merge(everyone, own[sid])), not why[sid])
                for sid in rooms_of}, why

    def checkpoint(self, owner: str, positions: list[Position],
                   pause: Callable[[float], Any], seconds: float) -> Checkpoint:
        """How far this dyno delivered now (``positions``: its consumers'),
        with the tail of what it sent in the last ``seconds``; ``pause``
        waits for the broker's acks of its own records."""
        cutoff = time.monotonic() - seconds
        with self._lock:  # a consistent cut, and no deque changed while read
            emit_seq, step = self._emit_seq, self._step
            recent, before, shared, cut = self._tail(cutoff)
        # Its own records' places come with the broker's acks.
        deadline = time.monotonic() + 1.0
        while any(c[3] == PENDING for _, _, coords, _, _ in recent for c in coords):
            if time.monotonic() > deadline:
                break
            pause(0.005)
        tail_from = recent[0][0] if recent else step + 1
        # A whole tail spans the drop window: a client that cannot say which
        # step it had is replayed all of it, and nothing older can be missing.
        whole = bool(recent) and (shared < TAIL_STEPS or recent[0][1] <= cutoff)
        # The emit counter just before the tail, then wherever it moved in it.
        tail_emit_seq = (before[3] if before is not None
                         else recent[0][3] if recent else emit_seq)
        tail: list[WindowEntry] = []
        private: list[PrivateEntry] = []
        emit_steps: list[tuple[int, int]] = []
        seq = tail_emit_seq
        for entry_step, _, coords, entry_seq, only in recent:
            if entry_seq != seq:
                emit_steps.append((entry_step, entry_seq))
                seq = entry_seq
            # A record still not acked is this dyno's own, not yet read back
            # (at or past its position): the replay's ranges hold it.
            acked = [c for c in coords if c[3] >= 0]
            if only is None:
                tail.extend((entry_step, base, partition, offset)
                            for base, _, partition, offset in acked)
            elif only not in cut or entry_step > cut[only]:
                private.extend((entry_step, only, base, partition, offset)
                               for base, _, partition, offset in acked)
        return Checkpoint(owner, self.tag, time.time(), positions, emit_seq, step,
                          tail_from, tail_emit_seq, tail, emit_steps, private, whole or not recent,
                          sorted(cut.items()))

    def _tail(self, cutoff: float) -> tuple[list, Any, int, dict[str, int]]:
        """A checkpoint's steps (the caller holds the lock): those of the drop
        window, oldest first, up to :data:`TAIL_STEPS` to every client and
        :data:`PRIVATE_STEPS` to one connection alone; the step just before
        them (or ``None``); how many of them went to every client; and, per
        connection whose private steps were left out, the newest left out."""
        recent: list = []
        shared = private = 0
        cut: dict[str, int] = {}
        before = None
        for entry in reversed(self._ring):
            if entry[1] < cutoff or (entry[4] is None and shared >= TAIL_STEPS):
                before = entry
                break
            if entry[4] is None:
                shared += 1
            elif private < PRIVATE_STEPS:
                private += 1
            elif entry[4] not in cut:
                cut[entry[4]] = entry[0]  # the newest, as the walk goes back
            recent.append(entry)
        recent.reverse()
        return recent, before, shared, cut


def latest_each(entries: Iterable[WindowEntry]) -> list[WindowEntry]:
    """Each record once, at the last step that sent it, in step order: a
    record held back for a replaying connection is sent to it at a later
    step than to the others, and only that step says whether it got it."""
    latest: dict[tuple[str, int, int], int] = {}
    for step, base, partition, offset in entries:
        key = (base, partition, offset)
        latest[key] = max(step, latest.get(key, step))
    return sorted((step, *key) for key, step in latest.items())
