"""Connection state recovery across the fleet, from the Kafka log.

A Socket.IO 4.6+ client that drops and reconnects, to this dyno or any
other, keeps its sid and rooms and gets every event it missed, once, in
order (the README's "Connection state recovery"). docs/recovery.md has the
design: sessions are positions, offsets say what a client had, sessions
live in their holder's home partition. :class:`Recovery` is what the
managers use: it makes the shared :class:`.state.RecoveryState`, hands it to
the handshake (:mod:`.handshake`: which session a returning client gets)
and the saves (:mod:`.saves`: the sessions, checkpoints and drain this dyno
writes), and replays a recovered connection (its replay ranges);
:mod:`.sessions` stores, :mod:`.replay` reads, :mod:`.offsets` spells the
offsets.
"""
from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator

from ..transport.core import KafkaCore
from .handshake import Handshake, Restore, split_auth
from .recovery_options import ConnectionStateRecovery
from .replay import (
    ConsumerPool,
    read_missed,
    slots_of_connection,
    slots_of_room,
    slots_of_session,
    step_of,
)
from .saves import Saves
from .sessions import Session
from .state import ConnectionHost, RecoveryState

logger = logging.getLogger(__name__)

#: The reason recovery is given for a disconnect the server made on purpose
#: (``Server.disconnect``: a kick, the fleet's ``disconnect_sockets``).
SERVER_DISCONNECT = "server disconnect"


class Recovery:
    """Connection state recovery for one server (one dyno).

    :param core: the server's Kafka core (positions, publishing, claims).
    :param host: the Socket.IO side: its connections and server.
    :param options: the settings.
    :param delivered: where delivery stands on each send partition, if it
                      lags the core's positions (the default).
    """

    #: ``(pid, offset, announced, the app's own auth)`` of a CONNECT.
    split_auth = staticmethod(split_auth)

    def __init__(self, core: KafkaCore, host: ConnectionHost, options: ConnectionStateRecovery,
                 delivered: Callable[[], dict[tuple[str, int], int]] | None = None) -> None:
        self.state = state = RecoveryState(core, host, options, delivered)
        self.saves = Saves(state, ended=self._ended)
        self.handshake = Handshake(state, release=self.saves.release,
                                   drop_saved=self.saves.drop_saved)
        # The shared state's parts the managers read (the same objects).
        self.core, self.options, self.owner = core, options, state.owner
        self.log, self.store, self.stats = state.log, state.store, state.stats
        self.announced, self.replaying = state.announced, state.replaying

    @property
    def host(self) -> ConnectionHost:
        """The Socket.IO side: its connections and server."""
        return self.state.host

    @host.setter
    def host(self, host: ConnectionHost) -> None:
        self.state.host = host

    @property
    def draining(self) -> bool:
        """Set by :meth:`drain`: new connections are turned away."""
        return self.saves.draining

    def _ended(self, pid: str) -> None:
        """The saves tell the handshake of a connection ended on purpose."""
        self.handshake.end(pid)

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        # Its offsets name its home: a client's next dyno looks there.
        self.log.tag = f"{self.store.home}h{secrets.token_hex(3)}"
        self.saves.start()

    def stop(self) -> None:
        self.saves.stop()

    def close(self) -> None:
        self.stop()
        self.store.reader.close()
        self._replay_pool().close()

    # -- delivery: steps and positions ----------------------------------------

    def joined(self, sid: str, namespace: str, room: str | None) -> None:
        """A connection joined ``room`` (its own sid's: it came): its session
        changes, and a full offset from now on must not reach back before
        the join (a record for the room read here before it joined was not
        for it). Where it joined goes in its session: an offset naming an
        older reference point is not taken (:meth:`.resume.Resume.exactly`)."""
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
        joins = self.state.joins.setdefault((sid, namespace), {})
        for slot, position in at.items():
            if position > joins.get(slot, -1):
                joins[slot] = position
        self.log.mark(at)

    def positions(self) -> dict[tuple[str, int], int]:
        """This dyno's delivery position on every partition of the send topics."""
        return self.state.positions()

    def await_readback(self, timeout: float) -> bool:
        """Flush this dyno's records and wait until its consumers have read
        them back, so that its positions cover everything it delivered."""
        return self.state.await_readback(timeout)

    # -- the connect handshake (:mod:`.handshake`) -----------------------------

    def prepare(self, eio_sid: str, namespace: str, pid: str, offset: str | None) -> Restore | None:
        """:meth:`.handshake.Handshake.prepare`: whether ``pid`` can be
        recovered, decided within its budget; ``None``: a new connection."""
        return self.handshake.prepare(eio_sid, namespace, pid, offset)

    def claiming(self, sid: str) -> bool:
        """Whether a recovery attempt here holds a claim of ``sid``'s
        partitions (a connection of the same sid that goes must leave it)."""
        return self.handshake.claiming(sid)

    def take_pending(self, eio_sid: str, namespace: str) -> Restore | None:
        """The recovery decided for ``eio_sid``: its claim passes to the
        connection the manager registers."""
        return self.handshake.take_pending(eio_sid, namespace)

    def abandon(self, eio_sid: str, namespace: str) -> None:
        """The client left while its recovery was decided: nothing of the
        attempt stays (its session is unchanged in the store)."""
        self.handshake.abandon(eio_sid, namespace)

    def abandoned(self, sid: str, namespace: str, restore: Restore | None) -> None:
        """:meth:`.handshake.Handshake.abandoned`: a recovered connection whose
        client left before it was accepted is forgotten, its session kept."""
        self.handshake.abandoned(sid, namespace, restore)

    def begin(self, sid: str, namespace: str, session: Session) -> None:
        """A recovered connection takes its sid and rooms: from now on live
        events reach it (held back until :meth:`replay` has sent what it
        missed), so the replay ends exactly where this dyno stands now."""
        self.state.taken[(sid, namespace)] = session.owner
        self.replaying[sid] = []
        self.state.replay_ends[sid] = (self.positions(), self.log.emit_seq)
        self.state.recovered.add((sid, namespace))

    def registered(self, sid: str, namespace: str, pid: str, announced: bool) -> None:
        """A connection was accepted (new or recovered): its live session is
        written with the next checkpoint (one batch for a connect storm)."""
        key = (sid, namespace)
        self.state.pids[key] = pid
        self.saves.connected(pid)  # a newer connection: its drop's save is old
        self.handshake.connected(pid)
        if announced:
            self.announced.add(sid)
        previous = self.state.taken.pop(key, None)
        if previous is not None:  # where it was is deleted: it must be here at once
            self.store.taken_from(pid, previous)
        # At once, not with the next checkpoint: the client holds its pid now.
        self.saves.write_live(key)

    def is_recovered(self, sid: str, namespace: str) -> bool:
        return (sid, namespace) in self.state.recovered

    @property
    def live_sessions(self) -> int:
        """How many connections of this dyno have a session."""
        return len(self.state.pids)

    def new_pid(self) -> str:
        return self.store.new_pid()

    # -- drops, saves and the drain (:mod:`.saves`) ---------------------------

    def touch(self, sid: str, namespace: str) -> None:
        """The rooms of a connection changed: rewrite its live session soon."""
        self.saves.touch(sid, namespace)

    def on_disconnect(self, sid: str, namespace: str, reason: str | None) -> None:
        """Before python-socketio forgets the connection: save its session
        if the client may come back, else delete it."""
        self.saves.on_disconnect(sid, namespace, reason)

    def forget(self, sid: str, namespace: str,
               reason: str | None) -> Callable[[], None] | None:
        """:meth:`.saves.Saves.forget`: :meth:`on_disconnect` in two halves,
        the connection forgotten now, what is left (it waits for Kafka)
        returned, to call where blocking is allowed."""
        return self.saves.forget(sid, namespace, reason)

    def release(self, sid: str, namespace: str) -> Session | None:
        """Let a connection go because its client is back elsewhere: save its
        session, then close the old socket; return the saved session."""
        return self.saves.release(sid, namespace)

    def drain(self, timeout: float = 10.0) -> None:
        """:meth:`.saves.Saves.drain`: at shutdown, save every connection's
        session and close its socket cleanly. Once is enough."""
        self.saves.drain(timeout)

    def hand_over(self) -> list[tuple[str, str]] | None:
        """:meth:`drain` but closing the sockets (blocking): stop delivering,
        save every session; the (sid, namespace) to close, ``None`` if done."""
        return self.saves.hand_over()

    # -- replay ------------------------------------------------------------

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
        ends, own_seq = self.state.replay_ends.pop(session.sid)
        relevant = slots_of_session(self.core.partition_count, session)
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

