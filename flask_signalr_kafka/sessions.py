"""The session store of connection state recovery: the compacted
``<prefix>-sessions`` topic, and every dyno's copy of it in memory.

Two kinds of record share the topic (ours alone; .NET never reads it):

- ``s:<pid>`` -> :class:`Session`: a connection's rooms and, once it dropped,
  the position from which its missed events are replayed. Written LIVE when
  a connection connects or changes rooms (what a crash leaves behind), SAVED
  when its holder noticed the drop or shut down, and deleted (a tombstone)
  when the client or the server disconnected on purpose.
- ``d:<server name>`` -> :class:`Checkpoint`: how far a dyno has delivered,
  written every second or so: a killed dyno's sessions resume from its last
  one. Its age also tells the others whether that dyno is alive.

Every dyno reads the whole topic from its start (compaction keeps it to one
record per key), so any dyno can restore any client.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent.event
import msgspec

from .errors import MalformedRecord

LIVE = 1
SAVED = 2

SESSION_PREFIX = b"s:"
CHECKPOINT_PREFIX = b"d:"

#: A Kafka position: (topic base name, partition, next offset to deliver).
Position = tuple[str, int, int]
#: A record that may have been sent after the client's last offset:
#: (step, topic base name, partition, offset).
WindowEntry = tuple[int, str, int, int]


class Session(msgspec.Struct, array_like=True):
    """One connection's recoverable state.

    :param state: :data:`LIVE` (connected to ``owner``) or :data:`SAVED`.
    :param positions: SAVED: every record before these was delivered.
    :param emit_seq: the owner's emit counter at the save: its own records up
                     to it were delivered when they were emitted.
    :param window: SAVED after a drop: the records sent in the last seconds,
                   which the client may not have received; the client's
                   offset says which it did.
    :param exact: ``False`` when the owner no longer knew the whole window.
    """

    state: int
    sid: str
    namespace: str
    rooms: list[str]
    owner: str
    tag: str
    saved_at: float
    positions: list[Position] = msgspec.field(default_factory=list)
    emit_seq: int = 0
    window: list[WindowEntry] = msgspec.field(default_factory=list)
    exact: bool = True


class Checkpoint(msgspec.Struct, array_like=True):
    """How far ``owner`` has delivered, at ``at`` (epoch seconds)."""

    owner: str
    tag: str
    at: float
    positions: list[Position]
    emit_seq: int


_encoder = msgspec.msgpack.Encoder()
_session_decoder = msgspec.msgpack.Decoder(Session)
_checkpoint_decoder = msgspec.msgpack.Decoder(Checkpoint)


def session_key(pid: str) -> str:
    return (SESSION_PREFIX + pid.encode()).decode()


def checkpoint_key(server_name: str) -> str:
    return (CHECKPOINT_PREFIX + server_name.encode()).decode()


def encode(record: Session | Checkpoint) -> bytes:
    return _encoder.encode(record)


class SessionStore:
    """This dyno's copy of the sessions topic, fed by its consumer.

    :param publish: ``publish(key, value_or_None)`` writes a record.
    :param max_age: seconds after which a saved session or a checkpoint is
                    of no use (the recovery time limit).
    """

    def __init__(self, publish: Callable[[str, bytes | None], Any], max_age: float) -> None:
        self._publish = publish
        self.max_age = max_age
        self.sessions: dict[str, Session] = {}
        self.checkpoints: dict[str, Checkpoint] = {}
        self._changed = gevent.event.Event()

    # -- reading ------------------------------------------------------------

    def handle(self, record: Any) -> None:
        """Apply one record of the sessions topic (the consumer's handler)."""
        key = record.key or b""
        if key.startswith(SESSION_PREFIX):
            pid = key[len(SESSION_PREFIX):].decode(errors="replace")
            if record.value is None:
                self.sessions.pop(pid, None)
            else:
                self.sessions[pid] = _decode(_session_decoder, record.value)
        elif key.startswith(CHECKPOINT_PREFIX):
            owner = key[len(CHECKPOINT_PREFIX):].decode(errors="replace")
            if record.value is None:
                self.checkpoints.pop(owner, None)
            else:
                self.checkpoints[owner] = _decode(_checkpoint_decoder, record.value)
        else:
            raise MalformedRecord(f"sessions record with an unknown key {key[:40]!r}")
        self._changed.set()
        self._changed.clear()

    def wait_for(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """Block this greenlet until ``predicate()`` is truthy (re-checked at
        each record) or ``timeout`` seconds pass; return its last value."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return value
            self._changed.wait(min(remaining, 0.1))
        return value

    def alive(self, owner: str, within: float) -> bool:
        """Whether ``owner`` wrote a checkpoint in the last ``within`` s."""
        checkpoint = self.checkpoints.get(owner)
        return checkpoint is not None and time.time() - checkpoint.at < within

    # -- writing ------------------------------------------------------------

    def put(self, pid: str, session: Session) -> None:
        """Write ``session`` and apply it here at once (this dyno must not
        wait for its own record to read it back)."""
        self.sessions[pid] = session
        self._publish(session_key(pid), encode(session))

    def delete(self, pid: str) -> None:
        if self.sessions.pop(pid, None) is not None:
            self._publish(session_key(pid), None)

    def put_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.checkpoints[checkpoint.owner] = checkpoint
        self._publish(checkpoint_key(checkpoint.owner), encode(checkpoint))

    def prune(self, live_owners_within: float) -> int:
        """Forget what can no longer be restored: saved sessions past the
        time limit, live ones of dynos silent for longer than that; return
        how many. Memory is thus bounded by the fleet's connections plus
        the clients that dropped within the limit."""
        now = time.time()
        dead = [
            pid for pid, s in self.sessions.items()
            if (s.state == SAVED and now - s.saved_at > self.max_age)
            or (s.state == LIVE and not self.alive(s.owner, self.max_age + live_owners_within))
        ]
        for pid in dead:
            del self.sessions[pid]
        stale = [o for o, c in self.checkpoints.items() if now - c.at > self.max_age * 2]
        for owner in stale:
            del self.checkpoints[owner]
        return len(dead)


def _decode(decoder: msgspec.msgpack.Decoder, value: bytes) -> Any:
    try:
        return decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedRecord(f"not a sessions record: {exc}") from None
