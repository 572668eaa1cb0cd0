"""Where a returning client's session resumes when its dyno cannot say:
whether that dyno is alive (its checkpoints), the session as of the dyno's
last checkpoint (it died), and the session as of the client's full offset
and the dyno's reference point it names (exactly what the client had).
:class:`.handshake.Handshake` asks; docs/recovery.md has the design.
"""
from __future__ import annotations

import logging
import time

import msgspec

from ..wire import offsets
from .replay import slots_of_session
from .sessions import SAVED, SHARED_READ, Checkpoint, Session
from .state import RecoveryState
from .steps import latest_each

logger = logging.getLogger(__name__)

#: Seconds two dynos' wall clocks may differ (a checkpoint's age is read
#: from its writer's clock only the first time it is seen).
CLOCK_SKEW = 0.5


class Resume:
    """A returning client's session, from its dyno's checkpoints and
    reference points.

    :param state: what the recovery parts share.
    """

    def __init__(self, state: RecoveryState) -> None:
        self.state = state
        #: owner -> (its checkpoint last seen, when it was seen to change).
        self._checkpoints_seen: dict[str, tuple[tuple[float, int], float]] = {}

    def alive(self, owner: str) -> bool:
        """Whether ``owner`` still writes checkpoints. Timed on this dyno's
        own clock, from when its checkpoint was last seen to change: the
        owner's clock may differ from ours, and a live owner's round may be
        slow (acks, a connect storm). Its wall-clock age counts only for a
        checkpoint seen for the first time, less :data:`CLOCK_SKEW`."""
        checkpoint = self.state.store.checkpoint(owner, since=time.monotonic() - SHARED_READ)
        if checkpoint is None:
            return False
        now = time.monotonic()
        seen = self._checkpoints_seen
        last = seen.get(owner)
        if last is None or last[0] != (checkpoint.at, checkpoint.step):
            if len(seen) > 10_000:
                seen.clear()  # owners of long ago
            age = 0.0 if last is not None else max(0.0, time.time() - checkpoint.at - CLOCK_SKEW)
            last = seen[owner] = ((checkpoint.at, checkpoint.step), now - age)
        return now - last[1] < self.state.liveness()

    def from_checkpoint(self, session: Session, checkpoint: Checkpoint,
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
            slots = slots_of_session(self.state.core.partition_count, session)
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

    def exactly(self, session: Session, offset: str | None) -> Session:
        """The session as of the client's full offset, when it has one from
        the session's last holder and that dyno's reference point is still in
        the topic: exactly what the client had, whatever befell the dyno."""
        parsed = offsets.parse(offset)
        if parsed is None or parsed.ref is None or parsed.tag != session.tag:
            return session
        ref = self.state.store.ref(session.owner, parsed.ref)
        if ref is None or ref.tag != parsed.tag:
            return session
        positions = {(b, p): off for b, p, off in ref.positions}
        for slot, n in parsed.slots.items():
            positions[slot] = positions.get(slot, 0) + n
        if any(positions.get((b, p), 0) < off for b, p, off in session.joined):
            # Older than the connection's join (any of the dyno's last
            # reference points can be named): it would replay events sent
            # to its rooms before it was in them. What the session says holds.
            self.state.stats["offsets-before-join"] += 1
            logger.info("the offset of %s reaches back before it joined; not taken",
                        session.sid)
            return session
        return msgspec.structs.replace(
            session, positions=[(b, p, off) for (b, p), off in sorted(positions.items())],
            emit_seq=ref.emit_seq + parsed.emits, window=[], exact=True,
        )
