"""The session store of connection state recovery: the compacted
``<prefix>-sessions`` topic, written by each dyno for its own connections
and read only where a client comes back.

Two kinds of record share the topic (ours alone; .NET never reads it):

- ``s:<pid>`` -> :class:`Session`: a connection's rooms and, once it dropped,
  the position from which its missed events are replayed. Written LIVE when
  a connection connects or changes rooms (what a crash leaves behind), SAVED
  when its holder noticed the drop or shut down, and deleted (a tombstone)
  when the client or the server disconnected on purpose.
- ``d:<server name>`` -> :class:`Checkpoint`: how far a dyno has delivered,
  written a few times a second: a killed dyno's sessions resume from its
  last one. Its age also tells whether that dyno is alive.
- ``r:<server name>:<n mod 256>`` -> :class:`RefPoint`: the reference
  points of full offsets (:mod:`.offsets`), written at most once a second.

**Placement.** Each dyno has a *home* partition, drawn from its server
name, and writes there the sessions of the connections it holds, its
checkpoints and its reference points. Other dynos never read it, until one
of its clients reconnects to one of them: that dyno reads the home of the
client's last holder (:class:`SessionReader`, each partition from where it
last stopped). The client says where that is: its offset starts with its
last holder's tag, which names the holder's home; and its pid names the
home of the dyno that first accepted it (``"<partition>.<random>"``), where
a later holder leaves a pointer (a :data:`MOVED` record) to its own home.
A holder that takes a session over deletes the previous holder's copy.
Nothing a dyno spends or keeps grows with the other dynos' connections.
"""
from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..errors import MalformedRecord
from ..transport.clients.kafka_client import Consumer, TopicPartition

logger = logging.getLogger(__name__)

LIVE = 1
SAVED = 2
#: A pointer: the session is in the home partition of ``owner``.
MOVED = 3

SESSION_PREFIX = b"s:"
CHECKPOINT_PREFIX = b"d:"
REF_PREFIX = b"r:"
#: How many reference points of a dyno the topic keeps.
REF_SLOTS = 256
#: Seconds within which one read of a partition serves every waiter.
SHARED_READ = 0.1

#: A Kafka position: (topic base name, partition, next offset to deliver).
Position = tuple[str, int, int]
#: A record that may have been sent after the client's last offset:
#: (step, topic base name, partition, offset).
WindowEntry = tuple[int, str, int, int]
#: A record sent to one connection alone (a replayed or held-back event):
#: (step, sid, topic base name, partition, offset).
PrivateEntry = tuple[int, str, str, int, int]


class Session(msgspec.Struct, array_like=True):
    """One connection's recoverable state.

    :param state: :data:`LIVE` (connected to ``owner``), :data:`SAVED`, or
                  :data:`MOVED` (only ``owner`` is set: look in its home).
    :param positions: SAVED: every record before these was delivered.
    :param emit_seq: the owner's emit counter at the save: its own records up
                     to it were delivered when they were emitted.
    :param window: SAVED after a drop: the records sent in the last seconds,
                   which the client may not have received; the client's
                   offset says which it did.
    :param exact: ``False`` when the owner no longer knew the whole window.
    :param joined: the owner's positions where the connection came and
                   joined its rooms (the newest join of each slot): a
                   client's offset that reaches back before them is not
                   taken, or it would be replayed events sent to a room
                   before it was in it.
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
    joined: list[Position] = msgspec.field(default_factory=list)


class Checkpoint(msgspec.Struct, array_like=True):
    """How far ``owner`` has delivered, at ``at`` (epoch seconds), and what
    it sent in its last seconds, so that a client's offset can be cut
    exactly after the dyno died.

    :param positions: every record before these was delivered by ``step``.
    :param emit_seq: the owner's own emits up to it were delivered by ``step``.
    :param step: the owner's last delivery step.
    :param tail: the records of steps ``tail_from`` to ``step``, as a
                 session's window (any connection's: filtered on use).
    :param emit_steps: ``(step, emit_seq)`` where the emit counter moved in
                       the tail; before the tail it was ``tail_emit_seq``.
    :param private: the tail's steps that went to one connection alone.
    :param tail_whole: the tail spans the drop window (it was not cut short
                       by its length limit), so a client that cannot say
                       which step it had is given all of it.
    :param private_cut: ``(sid, step)``: that connection's private steps up
                        to ``step`` were left out of ``private`` (its own
                        limit); one that may have missed them is not exact.
    """

    owner: str
    tag: str
    at: float
    positions: list[Position]
    emit_seq: int
    step: int = 0
    tail_from: int = 1
    tail_emit_seq: int = 0
    tail: list[WindowEntry] = msgspec.field(default_factory=list)
    emit_steps: list[tuple[int, int]] = msgspec.field(default_factory=list)
    private: list[PrivateEntry] = msgspec.field(default_factory=list)
    tail_whole: bool = True
    private_cut: list[tuple[str, int]] = msgspec.field(default_factory=list)


class RefPoint(msgspec.Struct, array_like=True):
    """``owner``'s positions and emit counter at its reference point ``n``."""

    owner: str
    tag: str
    n: int
    at: float
    positions: list[Position]
    emit_seq: int


_encoder = msgspec.msgpack.Encoder()
_session_decoder = msgspec.msgpack.Decoder(Session)
_checkpoint_decoder = msgspec.msgpack.Decoder(Checkpoint)
_ref_decoder = msgspec.msgpack.Decoder(RefPoint)


def encode(record: Session | Checkpoint | RefPoint) -> bytes:
    return _encoder.encode(record)


def decode_session(value: bytes) -> Session:
    return _decode(_session_decoder, value)


def decode_checkpoint(value: bytes) -> Checkpoint:
    return _decode(_checkpoint_decoder, value)


def home_partition(server_name: str, count: int) -> int:
    """The sessions partition where ``server_name`` places new sessions."""
    return zlib.crc32(server_name.encode()) % count


def new_pid(partition: int) -> str:
    """A private id (the client's proof of its session) placed in ``partition``."""
    return f"{partition}.{secrets.token_urlsafe(16)}"


def partition_of(pid: str, count: int) -> int | None:
    """The partition a pid names, ``None`` for one we did not make."""
    head, dot, _ = pid.partition(".")
    if not dot or not head.isdigit() or int(head) >= count:
        return None
    return int(head)


@dataclass
class _Partition:
    """What this dyno has read of one sessions partition: raw values, decoded
    on demand (a lookup wants one session of many)."""

    position: int = -1
    sessions: dict[bytes, bytes] = field(default_factory=dict)
    checkpoints: dict[bytes, bytes] = field(default_factory=dict)
    refs: dict[bytes, bytes] = field(default_factory=dict)
    #: monotonic time the last complete read began: it saw every record
    #: acknowledged before then.
    read_from: float = float("-inf")
    used_at: float = 0.0


class SessionReader:
    """Reads sessions partitions on demand, each from where it last stopped,
    and forgets the ones not asked for in a while.

    :param new_consumer: ``new_consumer(earliest=True)``: a consumer without a
                         group (the core's ``new_consumer``)
    :param topic: the sessions topic's name.
    :param keep: seconds a partition read is kept after its last lookup.
    :param read_timeout: seconds a read may take before it fails.
    """

    def __init__(self, new_consumer: Callable[..., Consumer], topic: str, keep: float = 60.0,
                 read_timeout: float = 10.0) -> None:
        self._new_consumer = new_consumer
        self.topic = topic
        self.keep = keep
        self.read_timeout = read_timeout
        self._consumer: Consumer | None = None
        self._partitions: dict[int, _Partition] = {}
        # One read at a time: a read that began after a caller asked serves it too.
        self._lock = threading.Lock()
        self.records_read = 0

    def partition_count(self) -> int:
        with self._lock:
            return len(self._client().partitions_for_topic(self.topic) or ())

    def read(self, partition: int, since: float) -> _Partition:
        """Partition ``partition`` with every record acknowledged before
        ``since`` (a ``time.monotonic()``) applied.

        :raises TimeoutError: the read took longer than ``read_timeout``.
        """
        with self._lock:
            now = time.monotonic()
            self._forget_unused(now)
            part = self._partitions.setdefault(partition, _Partition())
            part.used_at = now
            if part.position >= 0 and part.read_from >= since:
                return part
            consumer = self._client()
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            if part.position < 0:
                part.position = consumer.beginning_offsets([tp])[tp]
            end = consumer.end_offsets([tp])[tp]
            consumer.seek(tp, part.position)
            deadline = now + self.read_timeout
            while part.position < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.topic} partition {partition} was not read to "
                                       f"offset {end} within {self.read_timeout:g} s")
                for batch in consumer.poll(timeout_ms=200).values():
                    for record in batch:
                        _apply(part, record)
                    self.records_read += len(batch)
                    if batch:
                        part.position = batch[-1].offset + 1
                # Compaction may leave the last offsets empty: the position says.
                part.position = max(part.position, consumer.position(tp))
            part.read_from = now
            return part

    def cached(self, partition: int) -> _Partition | None:
        return self._partitions.get(partition)

    def held(self) -> int:
        """Sessions kept from the partitions read."""
        return sum(len(p.sessions) for p in list(self._partitions.values()))

    def held_bytes(self) -> int:
        """The size of what is kept from the partitions read."""
        return sum(len(v) for p in list(self._partitions.values())
                   for table in (p.sessions, p.checkpoints, p.refs) for v in table.values())

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            self._partitions.clear()

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = self._new_consumer(earliest=True)
        return self._consumer

    def _forget_unused(self, now: float) -> None:
        for p in [p for p, part in self._partitions.items() if now - part.used_at > self.keep]:
            del self._partitions[p]


def _apply(part: _Partition, record: Any) -> None:
    key = record.key or b""
    if key.startswith(SESSION_PREFIX):
        table = part.sessions
    elif key.startswith(CHECKPOINT_PREFIX):
        table = part.checkpoints
    elif key.startswith(REF_PREFIX):
        table = part.refs
    else:
        logger.warning("skipping sessions record at partition %d offset %d with an unknown "
                       "key %r", record.partition, record.offset, key[:40])
        return
    if record.value is None:
        table.pop(key, None)
    else:
        table[key] = record.value


class SessionStore:
    """The sessions of this dyno's connections, written to the topic, and
    anyone's read from it when its client comes back here.

    :param publish: ``publish(key, value_or_None, partition)`` writes a record.
    :param reader: reads partitions on demand.
    :param owner: this dyno's server name (its home partition's).
    :param max_age: seconds after which a saved session or a checkpoint is
                    of no use (the recovery time limit).
    """

    def __init__(self, publish: Callable[[str, bytes | None, int], Any], reader: SessionReader,
                 owner: str, max_age: float) -> None:
        self._publish = publish
        self.reader = reader
        self.owner = owner
        self.max_age = max_age
        #: pids of this dyno's sessions with a pointer in their pid's partition.
        self._pointed: set[str] = set()

    @functools.cached_property
    def partition_count(self) -> int:
        """The sessions topic's partitions (asked once: pids name them)."""
        return self.reader.partition_count() or 1

    @property
    def home(self) -> int:
        """This dyno's home partition: its new pids and its checkpoints."""
        return home_partition(self.owner, self.partition_count)

    def new_pid(self) -> str:
        return new_pid(self.home)

    def partition(self, pid: str) -> int | None:
        return partition_of(pid, self.partition_count)

    # -- reading ------------------------------------------------------------

    def find(self, pid: str, hint: int | None = None) -> tuple[Session | None, int | None]:
        """The latest session of ``pid`` and the partition it is in, or
        ``(None, None)``; ``hint``: where its last holder lives, if known.

        :raises MalformedRecord: its record is not a session.
        :raises TimeoutError: a partition could not be read.
        """
        origin = self.partition(pid)
        for partition in dict.fromkeys((hint, origin)):
            if partition is None or not 0 <= partition < self.partition_count:
                continue
            session = self.session_in(partition, pid)
            if session is not None and session.state == MOVED:
                partition = home_partition(session.owner, self.partition_count)
                session = self.session_in(partition, pid)
                if session is not None and session.state == MOVED:
                    session = None
            if session is not None:
                return session, partition
        return None, None

    def session_in(self, partition: int, pid: str, since: float | None = None) -> Session | None:
        """The latest record of ``pid`` in ``partition`` written before
        ``since`` (now by default)."""
        part = self.reader.read(partition, time.monotonic() if since is None else since)
        value = part.sessions.get(SESSION_PREFIX + pid.encode())
        return None if value is None else decode_session(value)

    def checkpoint(self, owner: str, since: float | None = None) -> Checkpoint | None:
        """``owner``'s last checkpoint written before ``since`` (now by
        default), from its home partition."""
        part = self._home_of(owner, since)
        value = part.checkpoints.get(CHECKPOINT_PREFIX + owner.encode())
        return decode_checkpoint(value) if value else None

    def ref(self, owner: str, n: int) -> RefPoint | None:
        """``owner``'s reference point ``n``, if the topic still has it."""
        part = self._home_of(owner, None)
        value = part.refs.get(_ref_key(owner, n).encode())
        ref = decode_ref(value) if value else None
        return ref if ref is not None and ref.n == n else None

    def _home_of(self, owner: str, since: float | None) -> _Partition:
        return self.reader.read(home_partition(owner, self.partition_count),
                                time.monotonic() if since is None else since)

    def wait_for(self, pid: str, partition: int, predicate: Callable[[Session | None], bool],
                 timeout: float) -> Session | None:
        """Read ``pid``'s session in ``partition`` again until ``predicate``
        holds for it or ``timeout`` seconds pass; return the last one read."""
        deadline = time.monotonic() + timeout
        while True:
            # A read begun in the last moment serves: many clients of a dyno
            # that went away wait at once, and share reads.
            session = self.session_in(partition, pid, since=time.monotonic() - SHARED_READ)
            if predicate(session) or time.monotonic() > deadline:
                return session
            time.sleep(SHARED_READ)

    # -- writing ------------------------------------------------------------

    def put(self, pid: str, session: Session) -> Any:
        """Write the session of one of this dyno's connections at home, and
        once a pointer there in its pid's partition; return the session
        record's future."""
        key = _session_key(pid)
        future = self._publish(key, encode(session), self.home)
        origin = self.partition(pid)
        if origin is not None and origin != self.home and pid not in self._pointed:
            self._pointed.add(pid)
            pointer = Session(MOVED, "", "", [], self.owner, "", time.time())
            self._publish(key, encode(pointer), origin)
        return future

    def delete(self, pid: str) -> None:
        """The connection is gone on purpose: nothing of it stays."""
        self._publish(_session_key(pid), None, self.home)
        if pid in self._pointed:
            self._pointed.discard(pid)
            origin = self.partition(pid)
            if origin is not None:
                self._publish(_session_key(pid), None, origin)

    def let_go(self, pid: str) -> None:
        """This dyno no longer holds ``pid``'s connection (its session is
        saved, or another dyno took it)."""
        self._pointed.discard(pid)

    def taken_from(self, pid: str, owner: str) -> None:
        """This dyno took ``pid``'s session over from ``owner``: delete the
        copy in ``owner``'s home, so that no lookup finds it there."""
        partition = home_partition(owner, self.partition_count)
        if owner != self.owner and partition != self.home:
            self._publish(_session_key(pid), None, partition)

    def put_checkpoint(self, checkpoint: Checkpoint) -> None:
        key = (CHECKPOINT_PREFIX + checkpoint.owner.encode()).decode()
        self._publish(key, encode(checkpoint), self.home)

    def put_ref(self, ref: RefPoint) -> Any:
        """Write ``ref``; return the record's future (a reference point is
        used once it is acked)."""
        return self._publish(_ref_key(ref.owner, ref.n), encode(ref), self.home)

    def prune(self, partition: int, liveness: float) -> int:
        """Delete from the topic what can no longer be restored in a partition
        this dyno read: saved sessions past the time limit, live ones of
        dynos silent for longer than that, and those dynos' checkpoints and
        reference points (what SIGKILLed dynos leave behind); return how
        many."""
        part = self.reader.cached(partition)
        if part is None:
            return 0
        now = time.time()
        silent: dict[str, bool] = {}

        def gone(owner: str) -> bool:
            if owner not in silent:
                checkpoint = self.checkpoint(owner, since=float("-inf"))
                silent[owner] = checkpoint is None or now - checkpoint.at > self.max_age + liveness
            return silent[owner]

        stale = []
        for key, value in list(part.sessions.items()):
            try:
                session = decode_session(value)
            except MalformedRecord:
                stale.append((part.sessions, key))
                continue
            if now - session.saved_at > self.max_age and (
                    session.state == SAVED or gone(session.owner)):  # LIVE or MOVED
                stale.append((part.sessions, key))
        for key, value in list(part.checkpoints.items()):
            try:
                if now - decode_checkpoint(value).at > self.max_age * 2:
                    stale.append((part.checkpoints, key))
            except MalformedRecord:
                stale.append((part.checkpoints, key))
        dead = {k[len(CHECKPOINT_PREFIX):] for table, k in stale if table is part.checkpoints}
        stale += [(part.refs, k) for k in part.refs
                  if k[len(REF_PREFIX):].rpartition(b":")[0] in dead]
        for table, key in stale:
            table.pop(key, None)
            self._publish(key.decode(), None, partition)
        return len(stale)


def decode_ref(value: bytes) -> RefPoint:
    return _decode(_ref_decoder, value)


def _session_key(pid: str) -> str:
    return f"{SESSION_PREFIX.decode()}{pid}"


def home_of_tag(tag: str, count: int) -> int | None:
    """The home partition a dyno's tag (``"<home>h<random>"``) names."""
    head, h, _ = tag.partition("h")
    return int(head) if h and head.isdigit() and int(head) < count else None


def _ref_key(owner: str, n: int) -> str:
    return f"{REF_PREFIX.decode()}{owner}:{n % REF_SLOTS}"


def _decode(decoder: msgspec.msgpack.Decoder, value: bytes) -> Any:
    try:
        return decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedRecord(f"not a sessions record: {exc}") from None
