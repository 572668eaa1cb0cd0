"""The recovery handshake: which session a returning client gets.

A client that reconnects with a pid (and an offset) is answered by
:meth:`Handshake.prepare` within :data:`PREPARE_BUDGET` seconds: its session
is found in the store, taken over from a dyno that still holds it (asked to
let go, or resumed from its last checkpoint: :mod:`.resume`), narrowed to
the client's full offset, and its send-conn partitions are claimed here,
before the manager registers the connection. The attempts of one client
and their claims are kept here; the saves it asks for (a release, a drop
saved here) are :mod:`.saves`' (docs/recovery.md).
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import MalformedRecord
from ..wire import offsets
from .replay import slots_of_session, step_of
from .resume import Resume
from .sessions import LIVE, SAVED, Session, home_of_tag, partition_of
from .state import RecoveryState

logger = logging.getLogger(__name__)

#: Auth keys of the recovery handshake, removed before the app sees auth.
AUTH_KEYS = ("pid", "offset", "csr")
#: Seconds a recovery's decision may take: every client that comes back
#: gets an answer within 10 s, whatever Kafka does (a hung broker included).
PREPARE_BUDGET = 7.0
#: Seconds a newer attempt waits for an older one of the same client to let
#: the connection go.
SUPERSEDE_WAIT = 3.0
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


class Handshake:
    """The recovery attempts of one dyno, their decisions and claims.

    :param state: what the recovery parts share.
    :param release: let a connection here go, its session saved
                    (:meth:`.saves.Saves.release`).
    :param drop_saved: the session of a pid's drop saved here, once its
                       save ends (:meth:`.saves.Saves.drop_saved`).
    """

    def __init__(self, state: RecoveryState,
                 release: Callable[[str, str], Session | None],
                 drop_saved: Callable[[str, float], Session | None]) -> None:
        self.state = state
        self._release = release
        self._drop_saved = drop_saved
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
        #: where a session resumes when its dyno cannot say.
        self.resume = Resume(state)

    def prepare(self, eio_sid: str, namespace: str, pid: str, offset: str | None) -> Restore | None:
        """Decide whether ``pid`` can be recovered; the restored sid is then
        taken by :meth:`take_pending` in the manager's ``pre_connect``.

        Returns within :data:`PREPARE_BUDGET` seconds whatever Kafka does,
        ``None`` (a new connection) on any failure: the decision runs in a
        task of its own, and one that outlives its caller undoes its work
        when it ends (while one has waited twice the budget, the next fail
        at once)."""
        self.state.stats["attempted"] += 1
        attempt = _Attempt(eio_sid, namespace, pid, offset)
        with self._attempts_lock:
            now = time.monotonic()
            hung = any(now - began > 2 * PREPARE_BUDGET for began in self._overdue.values())
            if not hung:
                self._attempt_of[pid] = eio_sid
        if hung:
            self._failed(pid, RecoveryFailed("not-ready",
                                             "an earlier recovery still waits for Kafka"))
            return None
        self.state.core.runtime.spawn(self._decide, attempt)
        finished = attempt.done.wait(PREPARE_BUDGET)
        with self._attempts_lock:
            if not finished and not attempt.done.is_set():
                attempt.abandoned = True
                self._overdue[id(attempt)] = now
        if attempt.abandoned:
            self._failed(pid, RecoveryFailed("not-ready",
                                             f"no decision within {PREPARE_BUDGET:g} s"))
            return None
        if attempt.failure is not None or attempt.restore is None:
            self._failed(pid, attempt.failure or RecoveryFailed("unknown", "no decision"))
            return None
        restore = attempt.restore
        logger.info("recovering %s: session of %s, %d rooms, %d in its window",
                    restore.session.sid, restore.session.owner, len(restore.session.rooms),
                    len(restore.session.window))
        return restore

    def _failed(self, pid: str, exc: RecoveryFailed) -> None:
        self.state.stats[f"failed:{exc.reason}"] += 1
        logger.info("no recovery for pid %s…: %s", pid[:6], exc)

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
            if release and sid not in self._claims and not self.state.host.is_local(sid, namespace):
                self.state.core.release(sid)

    def claiming(self, sid: str) -> bool:
        """Whether a recovery attempt here holds a claim of ``sid``'s
        partitions (a connection of the same sid that goes must leave it)."""
        return sid in self._claims

    def _attempt_done(self, pid: str, eio_sid: str) -> None:
        """``pid``'s attempt over ``eio_sid`` is over (unless a newer one came)."""
        if self._attempt_of.get(pid) == eio_sid:
            del self._attempt_of[pid]

    def connected(self, pid: str) -> None:
        """``pid``'s connection was accepted: no attempt of it is under way."""
        with self._attempts_lock:
            self._attempt_of.pop(pid, None)

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
            self.state.stats["abandoned"] += 1
            logger.info("pid %s… left while its recovery was decided", restore.pid[:6])
            with self._attempts_lock:
                self._attempt_done(restore.pid, eio_sid)
            self._unclaim(restore.pid, restore.session.sid, namespace)

    def abandoned(self, sid: str, namespace: str, restore: Restore | None) -> None:
        """A recovered connection whose client left before it was accepted:
        forget it here and keep its session for the next attempt (unless a
        newer attempt of the same client has taken over). Call it before
        the manager forgets the connection: a newer attempt waits for that."""
        key, state = (sid, namespace), self.state
        state.replaying.pop(sid, None)
        state.replay_ends.pop(sid, None)
        state.recovered.discard(key)
        state.taken.pop(key, None)
        state.joins.pop(key, None)
        if restore is not None:
            state.stats["abandoned"] += 1
            with self._attempts_lock:
                latest = self._attempt_of.get(restore.pid) == restore.eio_sid
                self._attempt_done(restore.pid, restore.eio_sid)
            if latest:
                state.store.put(restore.pid, restore.session)

    def end(self, pid: str) -> None:
        """``pid``'s connection ended on purpose: no recovery of it here,
        even before the deletion of its session is read back."""
        now = time.monotonic()
        with self._attempts_lock:
            self._ended[pid] = now
            self._attempt_of.pop(pid, None)
            for old, at in list(self._ended.items()):  # oldest first
                if now - at <= self.state.options.max_disconnection_duration:
                    break
                del self._ended[old]

    def _restorable(self, pid: str, namespace: str, offset: str | None) -> Session:
        state = self.state
        self._check_shape(pid, offset)
        if pid in self._ended:
            raise RecoveryFailed("ended", "the server disconnected it on purpose")
        parsed = offsets.parse(offset)
        hint = parsed and home_of_tag(parsed.tag, state.store.partition_count)
        try:
            session, where = state.store.find(pid, hint)
        except TimeoutError as exc:
            raise RecoveryFailed("not-ready", str(exc)) from exc
        except MalformedRecord as exc:
            raise RecoveryFailed("unknown", str(exc)) from exc
        if session is None or where is None:
            raise RecoveryFailed("unknown", "no session with this pid")
        if session.namespace != namespace:
            raise RecoveryFailed("unknown", "the session is of another namespace")
        if session.state == LIVE:
            session = self._take_over(pid, session, where, offset)
        session = self.resume.exactly(session, offset)
        if time.time() - session.saved_at > state.options.max_disconnection_duration:
            raise RecoveryFailed("expired", "away longer than max_disconnection_duration")
        if not session.exact:
            raise RecoveryFailed("window-lost", "its dyno no longer knew what it last sent")
        if state.host.is_local(session.sid, namespace):
            session = self._supersede(session, namespace)
        # This dyno's own records must land before a claimed partition is
        # positioned at its log end: one landing after it would be read live,
        # skipped as delivered at emit time, and never replayed.
        state.await_readback(2.0)
        try:  # its send-conn partitions, read from now on (home partitions)
            with self._attempts_lock:
                self._claims[session.sid] += 1
                claiming = self._claim_locks.setdefault(session.sid, threading.Lock())
            with claiming:
                state.core.claim(session.sid)
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
        count = self.state.store.partition_count
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
        host = self.state.host
        key = (session.sid, namespace)
        if key in self.state.pids:
            saved = self._release(*key)
            if saved is not None:
                session = saved
        else:
            eio_sid = host.eio_sid_from_sid(*key)
            if eio_sid is not None:
                logger.info("a newer attempt takes %s over from one still connecting",
                            session.sid)
                host.close_socket(eio_sid)
        deadline = time.monotonic() + SUPERSEDE_WAIT
        while host.is_local(*key):
            if time.monotonic() > deadline:
                raise RecoveryFailed("duplicate", "that connection is connected here")
            self.state.core.runtime.sleep(0.02)
        self.state.stats["superseded"] += 1
        return session

    def _take_over(self, pid: str, session: Session, where: int, offset: str | None) -> Session:
        """The session is still live on its dyno: the client came back before
        that dyno noticed the drop, or the dyno died. Have it let go (it
        saves the session), or resume from its last checkpoint."""
        state, resume = self.state, self.resume
        key = (session.sid, session.namespace)
        if session.owner == state.owner:
            # Its drop is saved here (a ping timeout noticed as the client
            # came back; the record not yet read back): that save is the
            # session, not the last checkpoint, whose tail misses what was
            # sent meanwhile.
            dropped = self._drop_saved(pid, state.options.release_timeout)
            if dropped is not None:
                return dropped
            saved = self._release(*key) if state.host.is_local(*key) else None
            if saved is not None:
                return saved
        elif resume.alive(session.owner):
            state.stats["releases-requested"] += 1
            logger.info("asking %s to release %s", session.owner, session.sid)
            state.host.request_release(session.sid, session.namespace)
            # What counts is the saved session, not an ack: a busy dyno may
            # take a while to save it, a dead one never will (its checkpoints
            # stop).
            saved = state.store.wait_for(
                pid, where, lambda s: s is None or s.state == SAVED or not resume.alive(s.owner),
                state.options.release_timeout)
            if saved is None:  # deleted: disconnected on purpose meanwhile
                raise RecoveryFailed("ended", "the session ended while it was released")
            if saved.state == SAVED:
                return saved
        checkpoint = state.store.checkpoint(session.owner)
        if checkpoint is None:
            raise RecoveryFailed("no-checkpoint", "its dyno is gone and left no checkpoint")
        state.stats["from-checkpoint"] += 1
        logger.info("%s resumes from the last checkpoint of %s", session.sid, session.owner)
        return resume.from_checkpoint(session, checkpoint, step_of(offset, checkpoint.tag))

    def _catch_up(self, session: Session) -> None:
        """Before the connection joins its rooms here: this dyno's positions
        must cover its own records and the session's positions, or its live
        consumers would deliver again what the session already had."""
        self.state.await_readback(2.0)
        start = {(b, p): off for b, p, off in session.positions}
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            now = self.state.positions()
            if all(now.get(s, off) >= off for s, off in start.items()):  # read here only
                return
            self.state.core.runtime.sleep(0.01)

    def _check_backlog(self, session: Session) -> None:
        start = {(b, p): off for b, p, off in session.positions}
        ends = self.state.positions()
        slots = slots_of_session(self.state.core.partition_count, session)
        backlog = sum(max(0, ends.get(s, 0) - start.get(s, 0)) for s in slots)
        limit = self.state.options.max_replay_records
        if backlog + len(session.window) > limit:
            raise RecoveryFailed("backlog", f"{backlog} records to read, more than "
                                            f"max_replay_records={limit}")
