"""What a dyno writes to the sessions topic: its connections' live
sessions, the save of a dropped or released connection's session, the
drain's hand-over at shutdown, and, in a loop of their own, its checkpoints
and reference points and the pruning of the partitions it reads
(docs/recovery.md). :mod:`.sessions` stores them.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..runtime.failure_log import FailureLog
from .sessions import LIVE, SAVED, Checkpoint, Position, Session
from .state import SEND_BASES, SLOW_ROUND, RecoveryState
from .steps import DROP_WINDOW

logger = logging.getLogger(__name__)

#: engine.io's reasons for a drop the client did not ask for.
RECOVERABLE = frozenset({"ping timeout", "transport close", "transport error"})
#: Seconds between a busy dyno's reference points: full offsets name the
#: slots delivered past the last one, so this bounds their length.
_REF_EVERY = 1.0
#: Seconds between two prunings of the sessions partitions read here.
_PRUNE_EVERY = 30.0
#: Seconds a drop's save is kept after it began, for a client that comes
#: back here before the record can be read back (:meth:`drop_saved`).
KEEP_SAVES = 30.0
#: Seconds a save waits for the acks of this dyno's own records in its
#: window (a checkpoint waits 1 s; a save has a client waiting for it).
ACK_WAIT = 2.0


class _Saving:
    """The save of a dropped connection's session, under way here."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.session: Session | None = None
        self.at = time.monotonic()


class Saves:
    """The sessions a dyno writes, and its checkpoint loop.

    :param state: what the recovery parts share.
    :param ended: called with the pid of a connection the server ended on
                  purpose (:meth:`.handshake.Handshake.end`).
    """

    def __init__(self, state: RecoveryState, ended: Callable[[str], None]) -> None:
        self.state = state
        self._ended = ended
        #: connections whose live session changed, to write with the next round.
        self._dirty: set[tuple[str, str]] = set()
        #: connections let go (:meth:`release`): their disconnect saves nothing.
        self._released: set[tuple[str, str]] = set()
        #: pid -> the save of its connection's drop here (under way, or
        #: written in the last KEEP_SAVES seconds), oldest first.
        self._saving: dict[str, _Saving] = {}
        self._checkpointer: Any = None
        self._stopping = False
        #: Set by :meth:`hand_over`: new connections are turned away.
        self.draining = False

    # -- the checkpoint loop ------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._checkpointer = self.state.core.runtime.spawn(self._run_checkpoints)

    def stop(self) -> None:
        self._stopping = True
        if self._checkpointer is not None:
            self.state.core.runtime.stop(self._checkpointer,
                                         self.state.options.checkpoint_interval + 2)
            self._checkpointer = None

    def _run_checkpoints(self) -> None:
        state = self.state
        next_prune = time.monotonic() + _PRUNE_EVERY
        pruning = threading.Event()  # set while a pruning runs
        # An idle dyno writes only often enough to count as alive (a third of
        # the time without slow rounds: a slow round makes up the rest).
        heartbeat = (state.liveness() - SLOW_ROUND) / 3
        last_step = last_emit = -1
        last_at = last_ref = 0.0
        failures = FailureLog(logger, "connection state recovery checkpoint")
        while not self._stopping:
            state.core.runtime.sleep(state.options.checkpoint_interval)
            try:
                self._write_dirty()
                log = state.log
                moved = (log.last_step, log.emit_seq) != (last_step, last_emit)
                if moved or time.monotonic() - last_at >= heartbeat:
                    last_step, last_emit = log.last_step, log.emit_seq
                    state.store.put_checkpoint(self.checkpoint())
                    last_at = time.monotonic()
                if (moved or not log.has_ref) and time.monotonic() - last_ref >= _REF_EVERY:
                    log.write_ref(state.owner, self._position_list(), state.store.put_ref)
                    last_ref = time.monotonic()
                if time.monotonic() > next_prune and not pruning.is_set():
                    # Apart: pruning reads partitions (seconds at worst), and
                    # checkpoints late by that long would count this dyno dead.
                    next_prune = time.monotonic() + _PRUNE_EVERY
                    pruning.set()
                    state.core.runtime.spawn(self._prune, pruning)
            except Exception:
                failures.failed()
            else:
                failures.succeeded()

    def _prune(self, running: threading.Event) -> None:
        """Delete what can no longer be restored from the sessions partitions
        read here; clears ``running`` when done."""
        store = self.state.store
        try:
            for partition in range(store.partition_count):
                if self._stopping:
                    return
                store.prune(partition, self.state.liveness())
        except Exception:
            logger.exception("connection state recovery pruning failed")
        finally:
            running.clear()

    # -- live sessions --------------------------------------------------------

    def touch(self, sid: str, namespace: str) -> None:
        """The rooms of a connection changed: rewrite its live session soon."""
        if (sid, namespace) in self.state.pids:
            self._dirty.add((sid, namespace))

    def connected(self, pid: str) -> None:
        """``pid`` has a connection again: the save of its drop is old."""
        self._saving.pop(pid, None)

    def write_live(self, key: tuple[str, str]) -> bool:
        """Write the live session of a connection here. A write Kafka did not
        take (a leader not yet acting as one on a new topic or after an
        election, a full buffer) is written again with the next checkpoint,
        until one is: without it a crash of this dyno loses the session."""
        state = self.state
        pid = state.pids.get(key)
        if pid is None:
            return True
        sid, namespace = key
        try:
            future = state.store.put(pid, Session(
                LIVE, sid, namespace, self._rooms(sid, namespace), state.owner, state.log.tag,
                time.time(), joined=_listed(state.joins.get(key, {}))))
        except Exception:
            logger.warning("could not write the session of %s; retrying with the next "
                           "checkpoint", sid, exc_info=True)
            self._rewrite(key)
            return False
        if future is not None:
            future.add_errback(lambda _error: self._rewrite(key))
        return True

    def _rewrite(self, key: tuple[str, str]) -> None:
        if key in self.state.pids:
            self.state.stats["session-rewrites"] += 1
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
            if not self.write_live(key):
                return  # the producer refuses now: the next round tries again

    # -- drops and saves ------------------------------------------------------

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
            self.state.core.runtime.spawn(left)
        else:
            left()

    def _inside_send(self) -> bool:
        """Whether the caller is inside an emit or a delivery step: a save
        run here would wait for emits that wait for it."""
        return self.state.log.emitting_here() or self.state.log.delivering_here()

    def forget(self, sid: str, namespace: str,
               reason: str | None) -> Callable[[], None] | None:
        """:meth:`on_disconnect` in two halves: the connection is forgotten
        now (never blocking); what is left (saving or deleting its session:
        it waits for Kafka) is returned, to call where blocking is allowed."""
        state = self.state
        key = (sid, namespace)
        pid = state.pids.pop(key, None)
        state.taken.pop(key, None)
        joins = state.joins.pop(key, {})
        state.announced.discard(sid)
        state.replaying.pop(sid, None)
        state.replay_ends.pop(sid, None)
        state.recovered.discard(key)
        self._dirty.discard(key)
        if pid is None:
            return None
        if key in self._released:
            self._released.discard(key)
            return None
        if reason not in RECOVERABLE:
            self._ended(pid)
            return lambda: state.store.delete(pid)
        window = DROP_WINDOW if reason != "ping timeout" else self._unnoticed_for()
        saving = _Saving()
        self._keep_saving(pid, saving)
        # Its rooms now: the save may run once python-socketio forgot them.
        rooms, at = self._rooms(sid, namespace), time.monotonic()
        # Inside an emit the save runs apart, after python-socketio forgot
        # the connection: where it stood is cut now (a record read later for
        # a room with no other member here makes no step, so no window holds
        # it, and later positions would skip it).
        cut = (state.log.emit_seq, self._position_list()) if self._inside_send() else None

        def save() -> None:
            try:
                saving.session = self._save(pid, sid, namespace, window, joins, rooms, at, cut)
                state.store.let_go(pid)
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

    def drop_saved(self, pid: str, timeout: float) -> Session | None:
        """The session the save of ``pid``'s drop here wrote, once it ends
        (waiting up to ``timeout`` seconds); ``None`` without such a save."""
        saving = self._saving.get(pid)
        if saving is None:
            return None
        saving.done.wait(timeout)
        return saving.session

    def release(self, sid: str, namespace: str) -> Session | None:
        """Let a connection go because its client is back elsewhere: save its
        session, then close the old socket; return the saved session."""
        state = self.state
        key = (sid, namespace)
        pid = state.pids.get(key)
        if pid is None:
            return None
        saved = self._save(pid, sid, namespace, self._unnoticed_for())
        state.store.let_go(pid)
        self._released.add(key)
        logger.info("released %s: its client is back on another connection", sid)
        eio_sid = state.host.eio_sid_from_sid(sid, namespace)
        if eio_sid is not None:
            state.host.close_socket(eio_sid)
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
        state, log = self.state, self.state.log
        if at is None:
            at = time.monotonic()
        if rooms is None:
            rooms = self._rooms(sid, namespace)
        if joins is None:
            joins = state.joins.get((sid, namespace), {})
        # The emit counter first, and every emit it counts delivered and
        # handed to the producer before the window is cut: a replay skips
        # this dyno's own records up to it as delivered at emit time, so one
        # counted but stepped after the cut (its socket still registered, a
        # ping timeout or a release under way) was in neither and was lost.
        emit_seq = log.emit_seq if cut is None else cut[0]
        settled = log.wait_emits(emit_seq, 1.0, state.core.runtime.sleep)
        if cut is None:
            state.await_readback(1.0)
            positions = self._position_list()
        else:
            positions = cut[1]
        # Each of this dyno's own records in the window must be acked to be
        # replayed: a flush may return (its timeout, or confluent handing a
        # report to its report task) before the ack is known here, and the
        # client was then refused as window-lost (soak seed 873330).
        seconds = window_seconds + time.monotonic() - at
        window, exact = log.windows({sid: rooms}, seconds, ACK_WAIT,
                                    state.core.runtime.sleep)[sid]
        if not (exact and settled):
            # Its next recovery is refused as window-lost: say why here.
            state.stats["saved-inexact"] += 1
            logger.info("the saved window of %s is not exact: %s", sid,
                        "an emit it counts was not published within 1 s" if not settled
                        else log.inexact_why({sid: rooms}, seconds))
        session = Session(SAVED, sid, namespace, rooms, state.owner, log.tag, time.time(),
                          positions, emit_seq, window, exact and settled, _listed(joins))
        state.store.put(pid, session)
        state.stats["saved"] += 1
        return session

    # -- the drain ------------------------------------------------------------

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
        state = self.state
        if self.draining:
            return None
        self.draining = True
        state.await_readback(3.0)
        self.stop()
        state.core.stop_consuming(SEND_BASES)
        deadline = time.monotonic() + 2.0  # what was read is delivered first
        while state.positions() != state.core.positions(SEND_BASES) and \
                time.monotonic() < deadline:
            state.core.runtime.sleep(0.005)
        held = list(state.pids)
        # As in _save: every emit the sessions count is delivered (to sockets
        # still open, closed cleanly below) before they are written.
        emit_seq = state.log.emit_seq
        state.log.wait_emits(emit_seq, 1.0, state.core.runtime.sleep)
        positions = self._position_list()
        now = time.time()
        for (sid, namespace), pid in list(state.pids.items()):
            # Forgotten here: its disconnect below changes nothing more.
            state.store.put(pid, Session(SAVED, sid, namespace, self._rooms(sid, namespace),
                                         state.owner, state.log.tag, now, positions, emit_seq,
                                         joined=_listed(state.joins.get((sid, namespace), {}))))
            state.stats["saved"] += 1
            state.store.let_go(pid)
        state.pids.clear()
        state.joins.clear()
        return held

    def _close_sockets(self, held: list[tuple[str, str]], timeout: float) -> None:
        """Close the sockets side by side, 64 at a time (threads, in threading
        mode): each close waits until what was queued for it is written.
        Closes still waiting at ``timeout`` are logged: one such socket
        holds the whole stop that long."""
        host, runtime = self.state.host, self.state.core.runtime
        eio_sids = [e for key in held if (e := host.eio_sid_from_sid(*key)) is not None]
        closing = set(eio_sids)

        def close(eio_sid: str) -> None:
            host.close_socket(eio_sid)
            closing.discard(eio_sid)

        deadline = time.monotonic() + timeout
        for start in range(0, len(eio_sids), 64):
            tasks = [runtime.spawn(close, e) for e in eio_sids[start:start + 64]]
            for task in tasks:
                task.join(max(0.0, deadline - time.monotonic()))
        if closing:
            logger.warning("drain: %d of %d sockets still closing after %g s (their clients "
                           "may miss what was queued for them): %s", len(closing),
                           len(eio_sids), timeout, ", ".join(sorted(closing)[:5]))

    def checkpoint(self) -> Checkpoint:
        """This dyno's checkpoint now: its positions, and the tail of what it
        sent as far back as a dead connection may go unnoticed, as a ping
        timeout's save keeps: a client blackholed, then its dyno killed, is
        replayed all of it (a 5 s tail lost plain clients 8 s of events:
        make test's soak at 39bed16, seed 556713)."""
        state = self.state
        return state.log.checkpoint(state.owner, self._position_list(),
                                    state.core.runtime.sleep, self._unnoticed_for())

    def _unnoticed_for(self) -> float:
        """Seconds a dead connection may go unnoticed here: until a ping
        times out (and 2 more for that timer's lateness)."""
        eio = self.state.host.server.eio
        return float(eio.ping_interval + eio.ping_timeout + 2)

    def _rooms(self, sid: str, namespace: str) -> list[str]:
        return [r for r in self.state.host.get_rooms(sid, namespace) if r != sid]

    def _position_list(self) -> list[Position]:
        return [(base, p, off) for (base, p), off in sorted(self.state.positions().items())]


def _listed(joins: dict[tuple[str, int], int]) -> list[Position]:
    """A connection's join positions as a session holds them."""
    return [(base, p, off) for (base, p), off in sorted(joins.items())]
