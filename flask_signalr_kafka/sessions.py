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

**Placement.** A pid names its partition (``"<partition>.<random>"``): the
dyno that first accepts a connection gives it a pid of its own *home*
partition (drawn from its server name), and whichever dyno holds the
connection later writes the session there, with a copy of its checkpoint
beside it. So the sessions of a dyno's clients and its checkpoints sit in a
partition or two that other dynos never read, until one of its clients
reconnects to one of them: that dyno then reads the pid's partition alone
(:class:`SessionReader`), from where it last stopped. Nothing a dyno spends
or keeps grows with the other dynos' connections.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from kafka import KafkaConsumer, TopicPartition

from .errors import MalformedRecord

logger = logging.getLogger(__name__)

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


def encode(record: Session | Checkpoint) -> bytes:
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
    #: monotonic time the last complete read began: it saw every record
    #: acknowledged before then.
    read_from: float = float("-inf")
    used_at: float = 0.0


class SessionReader:
    """Reads sessions partitions on demand, each from where it last stopped,
    and forgets the ones not asked for in a while.

    :param consumer_config: keyword arguments for ``kafka.KafkaConsumer``.
    :param topic: the sessions topic's name.
    :param keep: seconds a partition read is kept after its last lookup.
    :param read_timeout: seconds a read may take before it fails.
    """

    def __init__(self, consumer_config: dict[str, Any], topic: str, keep: float = 60.0,
                 read_timeout: float = 10.0) -> None:
        self._config = {k: v for k, v in consumer_config.items()
                        if k not in ("group_id", "enable_auto_commit")}
        self.topic = topic
        self.keep = keep
        self.read_timeout = read_timeout
        self._consumer: KafkaConsumer | None = None
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
            if part.read_from >= since:
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

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            self._partitions.clear()

    def _client(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = KafkaConsumer(group_id=None, enable_auto_commit=False,
                                           auto_offset_reset="earliest", **self._config)
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
    :param partition_count: the sessions topic's partition count.
    :param home: this dyno's home partition (where its new pids go).
    :param max_age: seconds after which a saved session or a checkpoint is
                    of no use (the recovery time limit).
    """

    def __init__(self, publish: Callable[[str, bytes | None, int], Any], reader: SessionReader,
                 partition_count: int, home: int, max_age: float) -> None:
        self._publish = publish
        self.reader = reader
        self.partition_count = partition_count
        self.home = home
        self.max_age = max_age

    def new_pid(self) -> str:
        return new_pid(self.home)

    def partition(self, pid: str) -> int | None:
        return partition_of(pid, self.partition_count)

    # -- reading ------------------------------------------------------------

    def session(self, pid: str, since: float | None = None) -> Session | None:
        """The latest session of ``pid`` written before ``since`` (now by
        default), or ``None``.

        :raises MalformedRecord: its record is not a session.
        :raises TimeoutError: its partition could not be read.
        """
        partition = self.partition(pid)
        if partition is None:
            return None
        part = self.reader.read(partition, time.monotonic() if since is None else since)
        value = part.sessions.get(SESSION_PREFIX + pid.encode())
        return None if value is None else decode_session(value)

    def checkpoint(self, pid: str, owner: str) -> Checkpoint | None:
        """``owner``'s last checkpoint beside the session of ``pid`` (read by
        the :meth:`session` call that found it)."""
        partition = self.partition(pid)
        part = None if partition is None else self.reader.cached(partition)
        value = part and part.checkpoints.get(CHECKPOINT_PREFIX + owner.encode())
        return decode_checkpoint(value) if value else None

    def wait_for(self, pid: str, predicate: Callable[[Session | None], bool],
                 timeout: float) -> Session | None:
        """Read ``pid``'s session again until ``predicate`` holds for it or
        ``timeout`` seconds pass; return the last one read."""
        deadline = time.monotonic() + timeout
        while True:
            session = self.session(pid)
            if predicate(session) or time.monotonic() > deadline:
                return session
            time.sleep(0.05)

    # -- writing ------------------------------------------------------------

    def put(self, pid: str, session: Session) -> None:
        partition = self.partition(pid)
        if partition is not None:
            self._publish((SESSION_PREFIX + pid.encode()).decode(), encode(session), partition)

    def delete(self, pid: str) -> None:
        partition = self.partition(pid)
        if partition is not None:
            self._publish((SESSION_PREFIX + pid.encode()).decode(), None, partition)

    def put_checkpoint(self, checkpoint: Checkpoint, partitions: set[int]) -> None:
        """Write ``checkpoint`` beside every session its dyno holds."""
        key = (CHECKPOINT_PREFIX + checkpoint.owner.encode()).decode()
        value = encode(checkpoint)
        for partition in partitions:
            self._publish(key, value, partition)

    def prune(self, partition: int, liveness: float) -> int:
        """Delete from the topic what can no longer be restored in a partition
        this dyno read: saved sessions past the time limit, live ones of
        dynos silent for longer than that, and those dynos' checkpoints
        (what SIGKILLed dynos leave behind); return how many."""
        part = self.reader.cached(partition)
        if part is None:
            return 0
        now = time.time()
        ages = {}
        for key, value in list(part.checkpoints.items()):
            try:
                ages[key[len(CHECKPOINT_PREFIX):].decode()] = now - decode_checkpoint(value).at
            except MalformedRecord:
                ages[key[len(CHECKPOINT_PREFIX):].decode()] = float("inf")
        stale = []
        for key, value in list(part.sessions.items()):
            try:
                s = decode_session(value)
            except MalformedRecord:
                stale.append(key)
                continue
            if now - s.saved_at <= self.max_age:
                continue
            if s.state == SAVED or ages.get(s.owner, float("inf")) > self.max_age + liveness:
                stale.append(key)
        for key in stale:
            del part.sessions[key]
            self._publish(key.decode(), None, partition)
        gone = [o for o, age in ages.items() if age > self.max_age * 2]
        for owner in gone:
            key = CHECKPOINT_PREFIX + owner.encode()
            del part.checkpoints[key]
            self._publish(key.decode(), None, partition)
        return len(stale) + len(gone)


def _decode(decoder: msgspec.msgpack.Decoder, value: bytes) -> Any:
    try:
        return decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedRecord(f"not a sessions record: {exc}") from None
