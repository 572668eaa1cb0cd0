"""Connection state recovery across the fleet, from the Kafka log.

A Socket.IO 4.6+ client that drops and reconnects, to this dyno or any
other, keeps its sid and rooms and gets every event it missed, once, in
order (the README's "Connection state recovery"). docs/recovery.md has the
design: sessions are positions, offsets say what a client had, sessions
live in their holder's home partition. This module decides (a recovery's
session, its replay ranges), counts the delivery steps and offsets, saves
sessions at drops and shutdowns, and writes the checkpoints and reference
points; :mod:`.sessions` stores, :mod:`.replay` reads, :mod:`.offsets`
spells the offsets.
"""
from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from ..errors import MalformedRecord
from ..runtime.failure_log import FailureLog
from ..transport.core import KafkaCore
from ..transport.topics import SESSIONS
from ..wire import offsets
from ..wire.addressing import SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER
from .recovery_options import ConnectionStateRecovery
from .replay import (
    ConsumerPool,
    read_missed,
    slots_of_connection,
    slots_of_room,
    slots_of_session,
    step_of,
)
from .sessions import (
    LIVE,
    SAVED,
    SHARED_READ,
    Checkpoint,
    Position,
    Session,
    SessionReader,
    SessionStore,
    home_of_tag,
    partition_of,
)
from .steps import DROP_WINDOW, DeliveryLog, latest_each


class ConnectionHost(Protocol):
    """What recovery needs of the Socket.IO side (the manager)."""

    server: Any

    def is_local(self, sid: str, namespace: str) -> bool: ...

    def get_rooms(self, sid: str, namespace: str) -> list: ...

    def eio_sid_from_sid(self, sid: str, namespace: str) -> str | None: ...

    def request_release(self, sid: str, namespace: str) -> None: ...

    def close_socket(self, eio_sid: str) -> None:
        """Close an Engine.IO socket here; return once closed (may block)."""

logger = logging.getLogger(__name__)

SEND_BASES = (SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER)
#: engine.io's reasons for a drop the client did not ask for.
RECOVERABLE = frozenset({"ping timeout", "transport close", "transport error"})
#: Seconds between a busy dyno's reference points: full offsets name the
#: slots delivered past the last one, so this bounds their length.
_REF_EVERY = 1.0
#: Seconds a live dyno's checkpoint round may take beyond its interval: the
#: wait for its own records' acks (up to 1 s). More would delay every
#: takeover of a killed dyno's clients, and so lengthen their replays.
SLOW_ROUND = 1.0
#: Seconds two dynos' wall clocks may differ (a checkpoint's age is read
#: from its writer's clock only the first time it is seen).
CLOCK_SKEW = 0.5
#: Seconds between two prunings of the sessions partitions read here.
_PRUNE_EVERY = 30.0
#: Auth keys of the recovery handshake, removed before the app sees auth.
AUTH_KEYS = ("pid", "offset", "csr")
#: The reason recovery is given for a disconnect the server made on purpose
#: (``Server.disconnect``: a kick, the fleet's ``disconnect_sockets``).
SERVER_DISCONNECT = "server disconnect"
#: Seconds a recovery's decision may take: every client that comes back
#: gets an answer within 10 s, whatever Kafka does (a hung broker included).
PREPARE_BUDGET = 7.0
#: Seconds a newer attempt waits for an older one of the same client to let
#: the connection go.
SUPERSEDE_WAIT = 3.0
#: Seconds a drop's save is kept after it began, for a client that comes
#: back here before the record can be read back (:meth:`Recovery._take_over`).
KEEP_SAVES = 30.0
#: Seconds a save waits for the acks of this dyno's own records in its
#: window (a checkpoint waits 1 s; a save has a client waiting for it).
ACK_WAIT = 2.0
#: What a pid we made looks like (:func:`.sessions.new_pid`).
_PID_SHAPE = re.compile(r"[0-9]{1,6}\.[A-Za-z0-9_-]{22}")


class RecoveryFailed(Exception):
    """A recovery that cannot be done; the client gets a new connection."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Restore:
    """A recovery decided before the connection is registered."""

    pid: str
    session: Session
    offset: str | None
    eio_sid: str = ""


class _Attempt:
    """One recovery being decided, and whether its caller still waits."""

    def __init__(self, eio_sid: str, namespace: str, pid: str, offset: str | None) -> None:
        self.eio_sid, self.namespace, self.pid, self.offset = eio_sid, namespace, pid, offset
        self.done = threading.Event()
        self.abandoned = False
        self.restore: Restore | None = None
        self.failure: RecoveryFailed | None = None


class _Saving:
    """The save of a dropped connection's session, under way here."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.session: Session | None = None
        self.at = time.monotonic()


class Recovery:
    """Connection state recovery for one server (one dyno).

    :param core: the server's Kafka core (positions, publishing, claims).
    :param host: the Socket.IO side: its connections and server.
    :param options: the settings.
    :param delivered: where delivery stands on each send partition, if it
                      lags the core's positions (the default).
    """

    def __init__(self, core: KafkaCore, host: ConnectionHost, options: ConnectionStateRecovery,
                 delivered: Callable[[], dict[tuple[str, int], int]] | None = None) -> None:
        self.core = core
        #: Where delivery stands, when it lags the core's positions (asyncio:
        #: records read but still queued for the loop are not delivered yet).
        self._delivered = delivered
        self.host = host
        self.options = options
        self.owner = core.server_name
        self.log = DeliveryLog(options.window_steps)
        self.log.tag = secrets.token_hex(4)
        reader = SessionReader(core.new_consumer, core.topic_config.name(SESSIONS),
                               keep=min(60.0, options.max_disconnection_duration))
        self.store = SessionStore(self._publish_session, reader, self.owner,
                                  options.max_disconnection_duration)
        core.add_readiness(self.log.ready)
        self.announced: set[str] = set()
        #: sid -> live events held back while its missed ones are replayed.
        self.replaying: dict[str, list] = {}
        self._replay_ends: dict[str, dict[tuple[str, int], int]] = {}
        self.stats: Counter[str] = Counter()
        self._pids: dict[tuple[str, str], str] = {}
        self._recovered: set[tuple[str, str]] = set()
        self._released: set[tuple[str, str]] = set()
        self._dirty: set[tuple[str, str]] = set()
        self._pending: dict[tuple[str, str], Restore] = {}
        #: pid -> the Engine.IO sid of its latest recovery attempt here: an
        #: older attempt of the same client gives way to it.
        self._attempt_of: dict[str, str] = {}
        #: Recoveries whose caller stopped waiting, and when each began: while
        #: one has waited for Kafka twice the budget (a hang, not a busy
        #: moment), new ones fail at once instead of queueing behind it.
        self._overdue: dict[int, float] = {}
        self._attempts_lock = threading.RLock()
        #: sid -> recovery attempts here that hold a claim of its partitions
        #: (two attempts of one client share one claim).
        self._claims: Counter[str] = Counter()
        #: sid -> held while its attempts claim: the core's claim returns at
        #: once to a second caller while the first still waits for the
        #: partitions to be positioned, and a replay must start after that.
        self._claim_locks: dict[str, threading.Lock] = {}
        #: pids whose connection the server ended on purpose (monotonic time):
        #: refused even before their session's deletion can be read back.
        self._ended: dict[str, float] = {}
        #: pid -> the save of its connection's drop here (under way, or
        #: written in the last KEEP_SAVES seconds), oldest first.
        self._saving: dict[str, _Saving] = {}
        #: recovered connections -> the dyno that held them before.
        self._taken: dict[tuple[str, str], str] = {}
        #: connection -> where it came and joined its rooms (slot -> position).
        self._joins: dict[tuple[str, str], dict[tuple[str, int], int]] = {}
        self._checkpointer: Any = None
        self._stopping = False
        #: Set by :meth:`drain`: new connections are turned away.
        self.draining = False

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        # Its offsets name its home: a client's next dyno looks there.
        self.log.tag = f"{self.store.home}h{secrets.token_hex(3)}"
        self._stopping = False
        self._checkpointer = self.core.runtime.spawn(self._run_checkpoints)

    def stop(self) -> None:
        self._stopping = True
        if self._checkpointer is not None:
            self.core.runtime.stop(self._checkpointer, self.options.checkpoint_interval + 2)
            self._checkpointer = None

    def close(self) -> None:
        self.stop()
        self.store.reader.close()
        self._replay_pool().close()

    def _publish_session(self, key: str, value: bytes | None, partition: int) -> Any:
        return self.core.publish(SESSIONS, key, value, partition=partition)

    # -- delivery: steps, offsets and own records ------------------------------

    def joined(self, sid: str, namespace: str, room: str | None) -> None:
        """A connection joined ``room`` (its own sid's: it came): its session
        changes, and a full offset from now on must not reach back before
        the join (a record for the room read here before it joined was not
        for it). Where it joined goes in its session: an offset naming an
        older reference point is not taken (:meth:`_exactly`)."""
        self.touch(sid, namespace)
        if room is None:
            return
        count = self.core.partition_count
        # A connection is in the broadcasts, and its own stream starts, when
        # it came. Its send-conn partition may be read here only since its
        # claim (a recovery), so in no older reference point: an offset
        # without it would replay that stream from the log's start.
        slots = slots_of_connection(count, sid) if room == sid else slots_of_room(count, room)
        positions = self.positions()
        at = {s: positions[s] for s in slots if s in positions}
        joins = self._joins.setdefault((sid, namespace), {})
        for slot, position in at.items():
            if position > joins.get(slot, -1):
                joins[slot] = position
        self.log.mark(at)

    def positions(self) -> dict[tuple[str, int], int]:
        """This dyno's delivery position on every partition of the send topics."""
        return self._delivered() if self._delivered else self.core.positions(SEND_BASES)

    def await_readback(self, timeout: float) -> bool:
        """Flush this dyno's records and wait until its consumers have read
        them back, so that its positions cover everything it delivered."""
        deadline = time.monotonic() + timeout
        try:
            self.core.flush(timeout)
        except Exception:
            logger.warning("could not flush before saving sessions", exc_info=True)
        # Where its records landed, known here (own_acked) once answered.
        self.log.wait_acks(max(0.0, deadline - time.monotonic()), self.core.runtime.sleep)
        while True:
            positions = self.positions()
            # A partition not read here (another dyno's home) has nothing to wait for.
            behind = [s for s, off in self.log.own_acked.items()
                      if positions.get(s, off + 1) <= off]
            if not behind:
                return True
            if time.monotonic() > deadline:
                logger.warning("own records not read back in %.1f s on %s", timeout, behind)
                return False
            self.core.runtime.sleep(0.005)

    # -- the connect handshake -------------------------------------------------

    @staticmethod
    def split_auth(data: Any) -> tuple[str | None, str | None, bool, Any]:
        """``(pid, offset, announced, the app's own auth)`` of a CONNECT."""
        if not isinstance(data, dict) or not any(k in data for k in AUTH_KEYS):
            return None, None, False, data
        pid, offset = data.get("pid"), data.get("offset")
        pid = pid if isinstance(pid, str) and pid else None
        offset = offset if isinstance(offset, str) else None
        announced = pid is not None or data.get("csr") is True
        rest = {k: v for k, v in data.items() if k not in AUTH_KEYS}
        return pid, offset, announced, rest or None

    def prepare(self, eio_sid: str, namespace: str, pid: str, offset: str | None) -> Restore | None:
        """Decide whether ``pid`` can be recovered; the restored sid is then
        taken by :meth:`take_pending` in the manager's ``pre_connect``.

        Returns within :data:`PREPARE_BUDGET` seconds whatever Kafka does,
        ``None`` (a new connection) on any failure: the decision runs in a
        task of its own, and one that outlives its caller undoes its work
        when it ends (while one has waited twice the budget, the next fail
        at once)."""
        self.stats["attempted"] += 1
        attempt = _Attempt(eio_sid, namespace, pid, offset)
        with self._attempts_lock:
            now = time.monotonic()
            hung = any(now - began > 2 * PREPARE_BUDGET for began in self._overdue.values())
            if not hung:
                self._attempt_of[pid] = eio_sid
        if hung:
            return self._failed(pid, RecoveryFailed(
                "not-ready", "an earlier recovery still waits for Kafka"))
        self.core.runtime.spawn(self._decide, attempt)
        finished = attempt.done.wait(PREPARE_BUDGET)
        with self._attempts_lock:
            if not finished and not attempt.done.is_set():
                attempt.abandoned = True
                self._overdue[id(attempt)] = now
        if attempt.abandoned:
            return self._failed(pid, RecoveryFailed(
                "not-ready", f"no decision within {PREPARE_BUDGET:g} s"))
        if attempt.failure is not None:
            return self._failed(pid, attempt.failure)
        restore = attempt.restore
        logger.info("recovering %s: session of %s, %d rooms, %d in its window",
                    restore.session.sid, restore.session.owner, len(restore.session.rooms),
                    len(restore.session.window))
        return restore

    def _failed(self, pid: str, exc: RecoveryFailed) -> None:
        self.stats[f"failed:{exc.reason}"] += 1
        logger.info("no recovery for pid %s…: %s", pid[:6], exc)
        return None

    def _decide(self, attempt: _Attempt) -> None:
        """:meth:`prepare`'s work, in a task of its own."""
        key = (attempt.eio_sid, attempt.namespace)
        restore = failure = None
        try:
            session = self._restorable(attempt.pid, attempt.namespace, attempt.offset)
            restore = Restore(attempt.pid, session, attempt.offset, attempt.eio_sid)
        except RecoveryFailed as exc:
            failure = exc
        except Exception as exc:  # Kafka's errors, a bad record: never silence
            logger.warning("recovery of pid %s… failed", attempt.pid[:6], exc_info=True)
            failure = RecoveryFailed("error", f"{type(exc).__name__}: {exc}")
        with self._attempts_lock:
            if restore is not None and self._attempt_of.get(attempt.pid) != attempt.eio_sid:
                failure, restore = RecoveryFailed("superseded", "a newer attempt came"), None
                self._unclaim(attempt.pid, session.sid, attempt.namespace)
            if restore is None or attempt.abandoned:
                self._attempt_done(attempt.pid, attempt.eio_sid)
            if attempt.abandoned:
                self._overdue.pop(id(attempt), None)
                if restore is not None:
                    self._unclaim(attempt.pid, restore.session.sid, attempt.namespace)
                    restore = None
                return
            if restore is not None:
                self._pending[key] = restore
            attempt.restore, attempt.failure = restore, failure
            attempt.done.set()

    def _unclaim(self, pid: str, sid: str, namespace: str, release: bool = True) -> None:
        """An attempt's claim of ``sid``'s partitions is over; ``release``:
        its recovery will not happen, so the claim goes too, unless the
        connection is here or another attempt holds it."""
        with self._attempts_lock:
            self._claims[sid] -= 1
            if self._claims[sid] <= 0:
                del self._claims[sid]
                self._claim_locks.pop(sid, None)
            if release and sid not in self._claims and not self.host.is_local(sid, namespace):
                self.core.release(sid)

    def claiming(self, sid: str) -> bool:
        """Whether a recovery attempt here holds a claim of ``sid``'s
        partitions (a connection of the same sid that goes must leave it)."""
        return sid in self._claims

    def _attempt_done(self, pid: str, eio_sid: str) -> None:
        """``pid``'s attempt over ``eio_sid`` is over (unless a newer one came)."""
        if self._attempt_of.get(pid) == eio_sid:
            del self._attempt_of[pid]

    def take_pending(self, eio_sid: str, namespace: str) -> Restore | None:
        """The recovery decided for ``eio_sid``: its claim passes to the
        connection the manager registers."""
        restore = self._pending.pop((eio_sid, namespace), None)
        if restore is not None:
            self._unclaim(restore.pid, restore.session.sid, namespace, release=False)
        return restore

    def abandon(self, eio_sid: str, namespace: str) -> None:
        """The client left while its recovery was decided: nothing of the
        attempt stays (its session is unchanged in the store)."""
        restore = self._pending.pop((eio_sid, namespace), None)
        if restore is not None:
            self.stats["abandoned"] += 1
            logger.info("pid %s… left while its recovery was decided", restore.pid[:6])
            with self._attempts_lock:
                self._attempt_done(restore.pid, eio_sid)
            self._unclaim(restore.pid, restore.session.sid, namespace)

    def abandoned(self, sid: str, namespace: str, restore: Restore | None) -> None:
        """A recovered connection whose client left before it was accepted:
        forget it here and keep its session for the next attempt (unless a
        newer attempt of the same client has taken over). Call it before
        the manager forgets the connection: a newer attempt waits for that."""
        key = (sid, namespace)
        self.replaying.pop(sid, None)
        self._replay_ends.pop(sid, None)
        self._recovered.discard(key)
        self._taken.pop(key, None)
        self._joins.pop(key, None)
        if restore is not None:
            self.stats["abandoned"] += 1
            with self._attempts_lock:
                latest = self._attempt_of.get(restore.pid) == restore.eio_sid
                self._attempt_done(restore.pid, restore.eio_sid)
            if latest:
                self.store.put(restore.pid, restore.session)

    def _restorable(self, pid: str, namespace: str, offset: str | None) -> Session:
        self._check_shape(pid, offset)
        if pid in self._ended:
            raise RecoveryFailed("ended", "the server disconnected it on purpose")
        parsed = offsets.parse(offset)
        hint = parsed and home_of_tag(parsed.tag, self.store.partition_count)
        try:
            session, where = self.store.find(pid, hint)
        except TimeoutError as exc:
            raise RecoveryFailed("not-ready", str(exc)) from exc
        except MalformedRecord as exc:
            raise RecoveryFailed("unknown", str(exc)) from exc
        if session is None:
            raise RecoveryFailed("unknown", "no session with this pid")
        if session.namespace != namespace:
            raise RecoveryFailed("unknown", "the session is of another namespace")
        if session.state == LIVE:
            session = self._take_over(pid, session, where, offset)
        session = self._exactly(session, offset)
        if time.time() - session.saved_at > self.options.max_disconnection_duration:
            raise RecoveryFailed("expired", "away longer than max_disconnection_duration")
        if not session.exact:
            raise RecoveryFailed("window-lost", "its dyno no longer knew what it last sent")
        if self.host.is_local(session.sid, namespace):
            session = self._supersede(session, namespace)
        # This dyno's own records must land before a claimed partition is
        # positioned at its log end: one landing after it would be read live,
        # skipped as delivered at emit time, and never replayed.
        self.await_readback(2.0)
        try:  # its send-conn partitions, read from now on (home partitions)
            with self._attempts_lock:
                self._claims[session.sid] += 1
                claiming = self._claim_locks.setdefault(session.sid, threading.Lock())
            with claiming:
                self.core.claim(session.sid)
        except TimeoutError as exc:
            self._unclaim(pid, session.sid, namespace)
            raise RecoveryFailed("not-ready", str(exc)) from exc
        try:
            self._catch_up(session)
            self._check_backlog(session)
        except BaseException:
            self._unclaim(pid, session.sid, namespace)
            raise
        return session

    def _check_shape(self, pid: str, offset: str | None) -> None:
        """Refuse, before any read, a pid we cannot have made or an offset
        naming a home partition that does not exist (an unauthenticated
        client chooses neither which partitions are read)."""
        count = self.store.partition_count
        if not _PID_SHAPE.fullmatch(pid) or partition_of(pid, count) is None:
            raise RecoveryFailed("unknown", "not a pid of ours")
        parsed = offsets.parse(offset)
        if offset is not None and (parsed is None or home_of_tag(parsed.tag, count) is None):
            raise RecoveryFailed("unknown", "not an offset of ours")

    def _supersede(self, session: Session, namespace: str) -> Session:
        """The client's connection is still here: this newer attempt takes
        over from it. A connection that was accepted is released (its
        session saved, its socket closed); one still connecting (an earlier
        attempt the client gave up on) has its socket closed, and lets the
        sid go when it sees that."""
        key = (session.sid, namespace)
        if key in self._pids:
            saved = self.release(*key)
            if saved is not None:
                session = saved
        else:
            eio_sid = self.host.eio_sid_from_sid(*key)
            if eio_sid is not None:
                logger.info("a newer attempt takes %s over from one still connecting",
                            session.sid)
                self.host.close_socket(eio_sid)
        deadline = time.monotonic() + SUPERSEDE_WAIT
        while self.host.is_local(*key):
            if time.monotonic() > deadline:
                raise RecoveryFailed("duplicate", "that connection is connected here")
            self.core.runtime.sleep(0.02)
        self.stats["superseded"] += 1
        return session

    def _take_over(self, pid: str, session: Session, where: int, offset: str | None) -> Session:
        """The session is still live on its dyno: the client came back before
        that dyno noticed the drop, or the dyno died. Have it let go (it
        saves the session), or resume from its last checkpoint."""
        key = (session.sid, session.namespace)
        if session.owner == self.owner:
            saving = self._saving.get(pid)
            if saving is not None:
                # Its drop is saved here (a ping timeout noticed as the client
                # came back; the record not yet read back): that save is the
                # session, not the last checkpoint, whose tail misses what was
                # sent meanwhile.
                saving.done.wait(self.options.release_timeout)
                if saving.session is not None:
                    return saving.session
            saved = self.release(*key) if self.host.is_local(*key) else None
            if saved is not None:
                return saved
        elif self._alive(session.owner):
            self.stats["releases-requested"] += 1
            logger.info("asking %s to release %s", session.owner, session.sid)
            self.host.request_release(session.sid, session.namespace)
            # What counts is the saved session, not an ack: a busy dyno may
            # take a while to save it, a dead one never will (its checkpoints
            # stop).
            saved = self.store.wait_for(
                pid, where, lambda s: s is None or s.state == SAVED or not self._alive(s.owner),
                self.options.release_timeout)
            if saved is None:  # deleted: disconnected on purpose meanwhile
                raise RecoveryFailed("ended", "the session ended while it was released")
            if saved.state == SAVED:
                return saved
        checkpoint = self.store.checkpoint(session.owner)
        if checkpoint is None:
            raise RecoveryFailed("no-checkpoint", "its dyno is gone and left no checkpoint")
        self.stats["from-checkpoint"] += 1
        logger.info("%s resumes from the last checkpoint of %s", session.sid, session.owner)
        return self._from_checkpoint(session, checkpoint, step_of(offset, checkpoint.tag))

    def _alive(self, owner: str) -> bool:
        """Whether ``owner`` still writes checkpoints. Timed on this dyno's
        own clock, from when its checkpoint was last seen to change: the
        owner's clock may differ from ours, and a live owner's round may be
        slow (acks, a connect storm). Its wall-clock age counts only for a
        checkpoint seen for the first time, less :data:`CLOCK_SKEW`."""
        checkpoint = self.store.checkpoint(owner, since=time.monotonic() - SHARED_READ)
        if checkpoint is None:
            return False
        now = time.monotonic()
        seen = self.__dict__.setdefault("_checkpoints_seen", {})
        last = seen.get(owner)
        if last is None or last[0] != (checkpoint.at, checkpoint.step):
            if len(seen) > 10_000:
                seen.clear()  # owners of long ago
            age = 0.0 if last is not None else max(0.0, time.time() - checkpoint.at - CLOCK_SKEW)
            last = seen[owner] = ((checkpoint.at, checkpoint.step), now - age)
        return now - last[1] < self._liveness()

    def _from_checkpoint(self, session: Session, checkpoint: Checkpoint,
                         last: int | None) -> Session:
        """The session of a connection whose dyno died, as of the client's
        last step ``last`` (``None``: unknown, so the whole tail is sent
        again): the checkpoint's positions, and its tail's records of later
        steps as the window."""
        whole = checkpoint.tail_whole
        if last is None:
            last = checkpoint.tail_from - 1
        else:
            whole = True  # the client said where it stood
        emit_seq = checkpoint.tail_emit_seq
        for step, seq in checkpoint.emit_steps:
            if step > last:
                break
            emit_seq = seq
        if last >= checkpoint.step:
            # Steps after the checkpoint may have reached the client too:
            # they are sent again (never lost).
            emit_seq, window, exact = checkpoint.emit_seq, [], True
        else:
            slots = self._relevant(session)
            window = [e for e in latest_each(
                [e for e in checkpoint.tail if (e[1], e[2]) in slots]
                + [(st, b, p, o) for st, sid, b, p, o in checkpoint.private
                   if sid == session.sid]) if e[0] > last]
            # Steps between the client's and the tail's may have been for it,
            # and so may its private steps left out of the tail.
            cut = dict(checkpoint.private_cut).get(session.sid, -1)
            exact = whole and last >= checkpoint.tail_from - 1 and last >= cut
        return msgspec.structs.replace(
            session, state=SAVED, saved_at=checkpoint.at, positions=checkpoint.positions,
            emit_seq=emit_seq, window=window, tag=checkpoint.tag, exact=exact,
        )

    def _exactly(self, session: Session, offset: str | None) -> Session:
        """The session as of the client's full offset, when it has one from
        the session's last holder and that dyno's reference point is still in
        the topic: exactly what the client had, whatever befell the dyno."""
        parsed = offsets.parse(offset)
        if parsed is None or parsed.ref is None or parsed.tag != session.tag:
            return session
        ref = self.store.ref(session.owner, parsed.ref)
        if ref is None or ref.tag != parsed.tag:
            return session
        positions = {(b, p): off for b, p, off in ref.positions}
        for slot, n in parsed.slots.items():
            positions[slot] = positions.get(slot, 0) + n
        if any(positions.get((b, p), 0) < off for b, p, off in session.joined):
            # Older than the connection's join (any of the dyno's last
            # reference points can be named): it would replay events sent
            # to its rooms before it was in them. What the session says holds.
            self.stats["offsets-before-join"] += 1
            logger.info("the offset of %s reaches back before it joined; not taken",
                        session.sid)
            return session
        return msgspec.structs.replace(
            session, positions=[(b, p, off) for (b, p), off in sorted(positions.items())],
            emit_seq=ref.emit_seq + parsed.emits, window=[], exact=True,
        )

    def _liveness(self) -> float:
        """Seconds without a new checkpoint after which a dyno counts as
        dead: three of its intervals, a second, and a slow round's
        (:data:`SLOW_ROUND`)."""
        return 3 * self.options.checkpoint_interval + 1 + SLOW_ROUND

    def _catch_up(self, session: Session) -> None:
        """Before the connection joins its rooms here: this dyno's positions
        must cover its own records and the session's positions, or its live
        consumers would deliver again what the session already had."""
        self.await_readback(2.0)
        start = {(b, p): off for b, p, off in session.positions}
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            now = self.positions()
            if all(now.get(s, off) >= off for s, off in start.items()):  # read here only
                return
            self.core.runtime.sleep(0.01)

    def begin(self, sid: str, namespace: str, session: Session) -> None:
        """A recovered connection takes its sid and rooms: from now on live
        events reach it (held back until :meth:`replay` has sent what it
        missed), so the replay ends exactly where this dyno stands now."""
        self._taken[(sid, namespace)] = session.owner
        self.replaying[sid] = []
        self._replay_ends[sid] = (self.positions(), self.log.emit_seq)
        self._recovered.add((sid, namespace))

    def registered(self, sid: str, namespace: str, pid: str, announced: bool) -> None:
        """A connection was accepted (new or recovered): its live session is
        written with the next checkpoint (one batch for a connect storm)."""
        key = (sid, namespace)
        self._pids[key] = pid
        self._saving.pop(pid, None)  # a newer connection: its drop's save is old
        with self._attempts_lock:
            self._attempt_of.pop(pid, None)
        if announced:
            self.announced.add(sid)
        previous = self._taken.pop(key, None)
        if previous is not None:  # where it was is deleted: it must be here at once
            self.store.taken_from(pid, previous)
        # At once, not with the next checkpoint: the client holds its pid now.
        self._write_live(key)

    def is_recovered(self, sid: str, namespace: str) -> bool:
        return (sid, namespace) in self._recovered

    @property
    def live_sessions(self) -> int:
        """How many connections of this dyno have a session."""
        return len(self._pids)

    def new_pid(self) -> str:
        return self.store.new_pid()

    # -- drops and saves ---------------------------------------------------

    def touch(self, sid: str, namespace: str) -> None:
        """The rooms of a connection changed: rewrite its live session soon."""
        if (sid, namespace) in self._pids:
            self._dirty.add((sid, namespace))

    def on_disconnect(self, sid: str, namespace: str, reason: str | None) -> None:
        """Before python-socketio forgets the connection: save its session
        if the client may come back, else delete it."""
        left = self.forget(sid, namespace, reason)
        if left is None:
            return
        if self._inside_send():
            # Noticed inside an emit: engine.io closes a socket whose client
            # missed its ping when something is sent to it. The save waits
            # for that very emit to be published: elsewhere, or it waited
            # its whole second and the session was refused as window-lost
            # (soak seed 873330). Inside a delivery, emits counted meanwhile
            # wait for it to end: the same.
            self.core.runtime.spawn(left)
        else:
            left()

    def _inside_send(self) -> bool:
        """Whether the caller is inside an emit or a delivery step: a save
        run here would wait for emits that wait for it."""
        return self.log.emitting_here() or self.log.delivering_here()

    def forget(self, sid: str, namespace: str,
               reason: str | None) -> Callable[[], None] | None:
        """:meth:`on_disconnect` in two halves: the connection is forgotten
        now (never blocking); what is left (saving or deleting its session:
        it waits for Kafka) is returned, to call where blocking is allowed."""
        key = (sid, namespace)
        pid = self._pids.pop(key, None)
        self._taken.pop(key, None)
        joins = self._joins.pop(key, {})
        self.announced.discard(sid)
        self.replaying.pop(sid, None)
        self._replay_ends.pop(sid, None)
        self._recovered.discard(key)
        self._dirty.discard(key)
        if pid is None:
            return None
        if key in self._released:
            self._released.discard(key)
            return None
        if reason not in RECOVERABLE:
            self._end(pid)
            return lambda: self.store.delete(pid)
        eio = self.host.server.eio
        window = (DROP_WINDOW if reason != "ping timeout"
                  else eio.ping_interval + eio.ping_timeout + 2)
        saving = _Saving()
        self._keep_saving(pid, saving)
        # Its rooms now: the save may run once python-socketio forgot them.
        rooms, at = self._rooms(sid, namespace), time.monotonic()
        # Inside an emit the save runs apart, after python-socketio forgot
        # the connection: where it stood is cut now (a record read later for
        # a room with no other member here makes no step, so no window holds
        # it, and later positions would skip it).
        cut = (self.log.emit_seq, self._position_list()) if self._inside_send() else None

        def save() -> None:
            try:
                saving.session = self._save(pid, sid, namespace, window, joins, rooms, at, cut)
                self.store.let_go(pid)
            finally:
                saving.done.set()

        return save

    def _keep_saving(self, pid: str, saving: _Saving) -> None:
        """Keep the save of ``pid``'s drop a while after it is written: a
        lookup may read the partition before that record (and so the live
        session) for a moment; saves older than :data:`KEEP_SAVES` go."""
        now = time.monotonic()
        self._saving.pop(pid, None)  # the newest last (the oldest first)
        self._saving[pid] = saving
        for old, kept in list(self._saving.items()):
            if now - kept.at <= KEEP_SAVES:
                break
            del self._saving[old]

    def _end(self, pid: str) -> None:
        """``pid``'s connection ended on purpose: no recovery of it here,
        even before the deletion of its session is read back."""
        now = time.monotonic()
        with self._attempts_lock:
            self._ended[pid] = now
            self._attempt_of.pop(pid, None)
            for old, at in list(self._ended.items()):  # oldest first
                if now - at <= self.options.max_disconnection_duration:
                    break
                del self._ended[old]

    def release(self, sid: str, namespace: str) -> Session | None:
        """Let a connection go because its client is back elsewhere: save its
        session, then close the old socket; return the saved session."""
        key = (sid, namespace)
        pid = self._pids.get(key)
        if pid is None:
            return None
        eio = self.host.server.eio
        saved = self._save(pid, sid, namespace, eio.ping_interval + eio.ping_timeout + 2)
        self.store.let_go(pid)
        self._released.add(key)
        logger.info("released %s: its client is back on another connection", sid)
        eio_sid = self.host.eio_sid_from_sid(sid, namespace)
        if eio_sid is not None:
            self.host.close_socket(eio_sid)
        return saved

    def _save(self, pid: str, sid: str, namespace: str, window_seconds: float,
              joins: dict[tuple[str, int], int] | None = None,
              rooms: list[str] | None = None, at: float | None = None,
              cut: tuple[int, list[Position]] | None = None) -> Session:
        """Save a dropped connection's session: its window holds what was
        sent to it in the ``window_seconds`` before ``at`` (monotonic; now
        by default) and since: the waits below must not shorten it.

        :param cut: the emit counter and positions where the connection
            stood, taken when it was forgotten (the save runs later)."""
        if at is None:
            at = time.monotonic()
        if rooms is None:
            rooms = self._rooms(sid, namespace)
        if joins is None:
            joins = self._joins.get((sid, namespace), {})
        # The emit counter first, and every emit it counts delivered and
        # handed to the producer before the window is cut: a replay skips
        # this dyno's own records up to it as delivered at emit time, so one
        # counted but stepped after the cut (its socket still registered, a
        # ping timeout or a release under way) was in neither and was lost.
        emit_seq = self.log.emit_seq if cut is None else cut[0]
        settled = self.log.wait_emits(emit_seq, 1.0, self.core.runtime.sleep)
        if cut is None:
            self.await_readback(1.0)
            positions = self._position_list()
        else:
            positions = cut[1]
        # Each of this dyno's own records in the window must be acked to be
        # replayed: a flush may return (its timeout, or confluent handing a
        # report to its report task) before the ack is known here, and the
        # client was then refused as window-lost (soak seed 873330).
        seconds = window_seconds + time.monotonic() - at
        window, exact = self.log.windows({sid: rooms}, seconds, ACK_WAIT,
                                         self.core.runtime.sleep)[sid]
        if not (exact and settled):
            # Its next recovery is refused as window-lost: say why here.
            self.stats["saved-inexact"] += 1
            logger.info("the saved window of %s is not exact: %s", sid,
                        "an emit it counts was not published within 1 s" if not settled
                        else self.log.inexact_why({sid: rooms}, seconds))
        session = Session(SAVED, sid, namespace, rooms, self.owner, self.log.tag, time.time(),
                          positions, emit_seq, window, exact and settled, _listed(joins))
        self.store.put(pid, session)
        self.stats["saved"] += 1
        return session

    def drain(self, timeout: float = 10.0) -> None:
        """At shutdown (the manager's close, or SIGTERM under gunicorn): stop
        delivering, save every connection's session, and close its socket
        cleanly, so that its client reconnects to another dyno at once and
        is recovered there exactly: a clean close sends what was written
        before it, so the sessions need no window. Once is enough."""
        held = self.hand_over()
        if held is not None:
            self._close_sockets(held, timeout)
            logger.info("drained: %d connections saved and closed", len(held))

    def hand_over(self) -> list[tuple[str, str]] | None:
        """:meth:`drain` but closing the sockets (blocking): stop delivering,
        save every session; the (sid, namespace) to close, ``None`` if done."""
        if self.draining:
            return None
        self.draining = True
        self.await_readback(3.0)
        self.stop()
        self.core.stop_consuming(SEND_BASES)
        deadline = time.monotonic() + 2.0  # what was read is delivered first
        while self.positions() != self.core.positions(SEND_BASES) and \
                time.monotonic() < deadline:
            self.core.runtime.sleep(0.005)
        held = list(self._pids)
        # As in _save: every emit the sessions count is delivered (to sockets
        # still open, closed cleanly below) before they are written.
        emit_seq = self.log.emit_seq
        self.log.wait_emits(emit_seq, 1.0, self.core.runtime.sleep)
        positions = self._position_list()
        now = time.time()
        for (sid, namespace), pid in list(self._pids.items()):
            # Forgotten here: its disconnect below changes nothing more.
            self.store.put(pid, Session(SAVED, sid, namespace, self._rooms(sid, namespace),
                                        self.owner, self.log.tag, now, positions, emit_seq,
                                        joined=_listed(self._joins.get((sid, namespace), {}))))
            self.stats["saved"] += 1
            self.store.let_go(pid)
        self._pids.clear()
        self._joins.clear()
        return held

    def _close_sockets(self, held: list[tuple[str, str]], timeout: float) -> None:
        """Close the sockets side by side, 64 at a time (threads, in threading
        mode): each close waits until what was queued for it is written."""
        eio_sids = [e for key in held if (e := self.host.eio_sid_from_sid(*key)) is not None]
        deadline = time.monotonic() + timeout
        for start in range(0, len(eio_sids), 64):
            tasks = [self.core.runtime.spawn(self.host.close_socket, e)
                     for e in eio_sids[start:start + 64]]
            for task in tasks:
                task.join(max(0.0, deadline - time.monotonic()))

    def _rooms(self, sid: str, namespace: str) -> list[str]:
        return [r for r in self.host.get_rooms(sid, namespace) if r != sid]

    def _position_list(self) -> list[Position]:
        return [(base, p, off) for (base, p), off in sorted(self.positions().items())]

    def _write_live(self, key: tuple[str, str]) -> bool:
        """Write the live session of a connection here. A write Kafka did not
        take (a leader not yet acting as one on a new topic or after an
        election, a full buffer) is written again with the next checkpoint,
        until one is: without it a crash of this dyno loses the session."""
        pid = self._pids.get(key)
        if pid is None:
            return True
        sid, namespace = key
        try:
            future = self.store.put(pid, Session(
                LIVE, sid, namespace, self._rooms(sid, namespace), self.owner, self.log.tag,
                time.time(), joined=_listed(self._joins.get(key, {}))))
        except Exception:
            logger.warning("could not write the session of %s; retrying with the next "
                           "checkpoint", sid, exc_info=True)
            self._rewrite(key)
            return False
        if future is not None:
            future.add_errback(lambda _error: self._rewrite(key))
        return True

    def _rewrite(self, key: tuple[str, str]) -> None:
        if key in self._pids:
            self.stats["session-rewrites"] += 1
            self._dirty.add(key)

    def _write_dirty(self) -> None:
        """Write the live sessions whose rooms changed (one batch for a
        connect storm). Taken one at a time: handlers and the producer's
        callbacks add to the set meanwhile, and a failed write keeps the
        rest."""
        for _ in range(len(self._dirty)):
            try:
                key = self._dirty.pop()
            except KeyError:
                return
            if not self._write_live(key):
                return  # the producer refuses now: the next round tries again

    def _run_checkpoints(self) -> None:
        next_prune = time.monotonic() + _PRUNE_EVERY
        pruning = threading.Event()  # set while a pruning runs
        # An idle dyno writes only often enough to count as alive (a third of
        # the time without slow rounds: a slow round makes up the rest).
        heartbeat = (self._liveness() - SLOW_ROUND) / 3
        last_step = last_emit = -1
        last_at = last_ref = 0.0
        failures = FailureLog(logger, "connection state recovery checkpoint")
        while not self._stopping:
            self.core.runtime.sleep(self.options.checkpoint_interval)
            try:
                self._write_dirty()
                log = self.log
                moved = (log.last_step, log.emit_seq) != (last_step, last_emit)
                if moved or time.monotonic() - last_at >= heartbeat:
                    last_step, last_emit = log.last_step, log.emit_seq
                    self.store.put_checkpoint(log.checkpoint(
                        self.owner, self._position_list(), self.core.runtime.sleep))
                    last_at = time.monotonic()
                if (moved or not log.has_ref) and time.monotonic() - last_ref >= _REF_EVERY:
                    log.write_ref(self.owner, self._position_list(), self.store.put_ref)
                    last_ref = time.monotonic()
                if time.monotonic() > next_prune and not pruning.is_set():
                    # Apart: pruning reads partitions (seconds at worst), and
                    # checkpoints late by that long would count this dyno dead.
                    next_prune = time.monotonic() + _PRUNE_EVERY
                    pruning.set()
                    self.core.runtime.spawn(self._prune, pruning)
            except Exception:
                failures.failed()
            else:
                failures.succeeded()

    def _prune(self, running: threading.Event) -> None:
        """Delete what can no longer be restored from the sessions partitions
        read here; clears ``running`` when done."""
        try:
            for partition in range(self.store.partition_count):
                if self._stopping:
                    return
                self.store.prune(partition, self._liveness())
        except Exception:
            logger.exception("connection state recovery pruning failed")
        finally:
            running.clear()

    # -- replay ------------------------------------------------------------

    def _relevant(self, session: Session) -> set:
        """The (base, partition) slots that can hold a record for the session."""
        return slots_of_session(self.core.partition_count, session)

    def _check_backlog(self, session: Session) -> None:
        start = {(b, p): off for b, p, off in session.positions}
        ends = self.positions()
        slots = self._relevant(session)
        backlog = sum(max(0, ends.get(s, 0) - start.get(s, 0)) for s in slots)
        if backlog + len(session.window) > self.options.max_replay_records:
            raise RecoveryFailed("backlog", f"{backlog} records to read, more than "
                                            f"max_replay_records={self.options.max_replay_records}")

    def replay(self, restore: Restore, sid: str, eio_sid: str,
               send: Callable[[str, str, str, list, str], None]) -> None:
        """Send a recovered connection what it missed, then what arrived
        meanwhile, then make it live here; ``send(eio_sid, namespace, event,
        args, offset)`` writes one event."""
        try:
            missed = self.read_missed(restore)
        except Exception:
            self.replaying.pop(sid, None)
            raise
        for event, args, offset in self.replay_steps(restore, sid, missed):
            send(eio_sid, restore.session.namespace, event, args, offset)

    def read_missed(self, restore: Restore) -> list:
        """The reading half of :meth:`replay` (blocking: it reads Kafka):
        the events the connection missed, for :meth:`replay_steps`."""
        try:
            return self._read_missed(restore.session, restore.offset)
        except Exception:
            self.stats["failed:replay"] += 1
            raise

    def replay_steps(self, restore: Restore, sid: str,
                     missed: list) -> Iterator[tuple[str, list, str]]:
        """The sending half of :meth:`replay` (never blocking): each ``(event,
        args, offset)`` to write, the missed events then those held back
        meanwhile; after the last the connection is live. Run it where live
        deliveries run (the loop under asyncio): none slips in between."""
        logger.debug("replaying %d events to %s", len(missed), sid)
        for coords, event, args in missed:
            yield event, args, self.log.step(coords, only=sid)
        buffered = self.replaying.get(sid, [])
        while True:
            # The last look and the end under the delivery lock: a step held
            # back by another thread between them was never sent.
            with self.log.delivering():
                if not buffered:
                    self.replaying.pop(sid, None)
                    break
                event, args, coords = buffered.pop(0)
                offset = self.log.step(coords, only=sid)
            yield event, args, offset
        self.stats["succeeded"] += 1
        self.stats["replayed"] += len(missed)

    def _read_missed(self, session: Session, offset: str | None) -> list:
        """The events addressed to the session after its positions, and those
        of its window the client's offset says it did not get, in order; the
        ranges end where begin() found this dyno's positions."""
        last = step_of(offset, session.tag)
        window = [(b, p, o) for step, b, p, o in session.window if last is None or step > last]
        start = {(b, p): off for b, p, off in session.positions}
        ends, own_seq = self._replay_ends.pop(session.sid)
        relevant = self._relevant(session)
        ranges = {s: (start.get(s, 0), ends[s]) for s in relevant
                  if ends.get(s, 0) > start.get(s, 0)}
        # This dyno's own records emitted before begin() were not for the
        # connection then, and live reading skips them as delivered: those
        # not read back by then are read here, once each such emit has
        # reached the producer (one may still wait for its topic's metadata).
        if not self.log.wait_emits(own_seq, 5.0, self.core.runtime.sleep):
            logger.warning("emits begun before the recovery of %s were not published "
                           "within 5 s; the replay may miss them", session.sid)
        try:
            self.core.flush(5.0)
        except Exception:
            logger.warning("could not flush before a replay", exc_info=True)
        # An ack known only after the flush returned would end the own range
        # before its record: neither replayed nor read live (skipped as own).
        if not self.log.wait_acks(5.0, self.core.runtime.sleep):
            logger.warning("own records of %s's replay not acked within 5 s; the replay "
                           "may miss them", session.sid)
        own = {s: (ends[s], self.log.own_acked[s] + 1) for s in relevant
               if s in ends and self.log.own_acked.get(s, -1) + 1 > ends[s]}
        logger.debug("replay of %s reads %d window records, ranges %s and own %s",
                     session.sid, len(window), ranges, own)
        if not ranges and not window and not own:
            return []
        pool = self._replay_pool()
        return read_missed(pool.get, self.core.topic_config.name,
                           session, window, ranges, (self.owner, own_seq, own),
                           self.core.runtime.sleep, release=pool.put)

    def _replay_pool(self) -> ConsumerPool:
        """The replay consumers, made on the first replay (most dynos of a
        fleet rarely replay)."""
        # setdefault: two first replays at once share one pool.
        return self.__dict__.setdefault("_replay_consumers",
                                        ConsumerPool(self.core.new_consumer))


def _listed(joins: dict[tuple[str, int], int]) -> list[Position]:
    """A connection's join positions as a session holds them."""
    return [(base, p, off) for (base, p), off in sorted(joins.items())]
