"""Home partitions: the send-conn and ack partitions a dyno reads.

A send to one connection (send-conn, keyed by its sid) and an answer to one
server (ack, keyed by its name) matter to one dyno only. Rather than have
every dyno read and drop them, each dyno reads a few *home* partitions and
allocates the keys it is addressed by so that they land there:

- **Both partitioners.** A key must land home whoever produces it: murmur2
  (Java clients, kafka-python: ``(murmur2(key) & 0x7fffffff) % n``) and
  CRC-32 (librdkafka's default, so a .NET Ascentis producer:
  ``crc32(key) % n``). An id is drawn at random until both hashes fall in
  the home set; the id keeps its documented shape.
- **Bounded cost.** A random id lands home under both hashes with
  probability ``(h/n)**2`` (``h`` home partitions of ``n``), so the home set
  is at least a tenth of the partitions by default: ~100 draws of a C CRC-32,
  and murmur2 (pure Python, ~6 µs) only for the ~10 whose CRC-32 matched.
- **No registry.** The home set follows from the server name: ``h``
  partitions ``n // h`` apart, starting at a slot drawn from its random hex.
  Dynos spread over the ``n // h`` slots as random draws do; dynos on one
  slot read each other's records (and drop them), as every dyno does when
  home partitions are off.
- **Takeover.** A dyno that takes over a connection whose sid hashes
  elsewhere (a recovered session) *claims* the sid: its partitions are read
  too until it is released.
- **Partition count changes.** The home set is recomputed for the new
  count, and the partitions of every local sid are claimed: a connection
  allocated for the old count keeps receiving.
"""
from __future__ import annotations

import base64
import math
import os
import threading
import zlib
from collections.abc import Callable, Iterable

from kafka.partitioner.default import murmur2

from ..wire.addressing import SID_PREFIX

#: By default a dyno's home set is at least 1/HOME_SHARE of the partitions,
#: which bounds the expected draws of an id at about HOME_SHARE**2.
HOME_SHARE = 10
_SID_BYTES = 15  # 15 random bytes are 20 URL-safe base64 characters
_BATCH = 64  # ids drawn per os.urandom call
_PREFIX = SID_PREFIX.encode()
_PREFIX_CRC = zlib.crc32(_PREFIX)


def murmur2_partition(key: bytes, n: int) -> int:
    """The partition kafka-python and the Java clients pick for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % n


def crc32_partition(key: bytes, n: int) -> int:
    """The partition librdkafka's default partitioner (so .NET) picks."""
    return zlib.crc32(key) % n


def partitions_of(key: str, n: int) -> frozenset[int]:
    """Every partition of ``n`` a record keyed by ``key`` may land on."""
    raw = key.encode()
    return frozenset((murmur2_partition(raw, n), crc32_partition(raw, n)))


def home_count(n: int, count: int | None = None) -> int:
    """How many home partitions of ``n``: ``count`` if given, else
    ``ceil(n / HOME_SHARE)``."""
    if count is None:
        count = math.ceil(n / HOME_SHARE)
    return max(1, min(n, count))


def home_set(slot_seed: int, n: int, count: int | None = None) -> frozenset[int]:
    """``h`` partitions of ``n``, ``n // h`` apart, at the slot ``slot_seed``
    picks: dynos on different slots share no partition."""
    h = home_count(n, count)
    stride = n // h
    start = slot_seed % stride
    return frozenset(start + i * stride for i in range(h))


def draw_sid(n: int, home: frozenset[int],
             rand: Callable[[int], bytes] = os.urandom) -> tuple[str, int]:
    """A random sid (``sid~`` + 20 URL-safe base64 characters) whose murmur2
    and CRC-32 partitions of ``n`` are both in ``home``; and the number of
    ids drawn for it."""
    if not home or not all(0 <= p < n for p in home):
        raise ValueError(f"home partitions {sorted(home)} are not partitions of {n}")
    drawn = 0
    width = _SID_BYTES * 4 // 3
    while True:
        block = base64.urlsafe_b64encode(rand(_SID_BYTES * _BATCH))
        for i in range(0, len(block), width):
            body = block[i:i + width]
            # The cheap C hash first; pure-Python murmur2 only on a match.
            if zlib.crc32(body, _PREFIX_CRC) % n in home:
                key = _PREFIX + body
                if murmur2_partition(key, n) in home:
                    return key.decode(), drawn + i // width + 1
        drawn += _BATCH


def draw_server_name(hostname: str, n: int,
                     rand: Callable[[int], bytes] = os.urandom) -> str:
    """``<hostname>_<32 lowercase hex>`` whose murmur2 and CRC-32 partitions
    of ``n`` (the ack topic) are the same one: its home ack partition."""
    while True:
        name = f"{hostname}_{rand(16).hex()}"
        raw = name.encode()
        if murmur2_partition(raw, n) == crc32_partition(raw, n):
            return name


class HomePartitions:
    """Which partitions of send-conn and ack this dyno reads, and the ids
    that land there.

    :param server_name: this dyno's name (``<hostname>_<32 hex>``); the ack
                        partition is where it hashes, the send-conn home
                        slot is drawn from its hex.
    :param conn_partitions: the partition count of send-conn.
    :param count: home send-conn partitions; ``None``: a tenth of them.
    :param local_sids: this dyno's connection ids, claimed again when the
                       partition count of send-conn changes.
    """

    def __init__(self, server_name: str, conn_partitions: int, count: int | None = None,
                 local_sids: Callable[[], Iterable[str]] = tuple) -> None:
        self.server_name = server_name
        self.count = count
        self._slot_seed = int(server_name.rsplit("_", 1)[-1], 16)
        self._local_sids = local_sids
        self.n = 0
        self.home: frozenset[int] = frozenset()
        #: sid -> the partitions it needs beyond the home set. Handlers claim
        #: and release while the consumer reads it: changed and read under
        #: the lock (an iteration it changes raises).
        self.claims: dict[str, frozenset[int]] = {}
        self._lock = threading.Lock()
        self._resize(conn_partitions)

    def _resize(self, n: int) -> None:
        if n == self.n:
            return
        local = set(self._local_sids())  # the manager's: not under our lock
        with self._lock:
            self.n = n
            self.home = home_set(self._slot_seed, n, self.count)
            sids = set(self.claims) | local
            self.claims = {}
            for sid in sids:
                self._claim(sid)

    def allocate_sid(self) -> str:
        """A new connection id that lands home under both partitioners."""
        return draw_sid(self.n, self.home)[0]

    def claim(self, sid: str) -> frozenset[int]:
        """Read ``sid``'s partitions too; return those outside the home set."""
        with self._lock:
            return self._claim(sid)

    def _claim(self, sid: str) -> frozenset[int]:
        extra = partitions_of(sid, self.n) - self.home
        if extra:
            self.claims[sid] = extra
        return extra

    def release(self, sid: str) -> bool:
        """Stop reading for ``sid``; whether that may drop a partition."""
        with self._lock:
            return self.claims.pop(sid, None) is not None

    def conn_wanted(self, ids: Iterable[int]) -> set[int]:
        """The send-conn partitions to read, of the topic's ``ids`` (a
        :class:`~.consumer.TopicConsumer` filter)."""
        ids = set(ids)
        self._resize(len(ids))
        with self._lock:
            wanted = set(self.home)
            for extra in self.claims.values():
                wanted |= extra
        return wanted & ids

    def ack_wanted(self, ids: Iterable[int]) -> set[int]:
        """The ack partitions to read: where this dyno's name hashes (one
        partition for the count its name was drawn for; two at most)."""
        ids = set(ids)
        return set(partitions_of(self.server_name, len(ids))) & ids
