"""The figures each component keeps on its hot path, and the description
of a figure (:class:`Family`) that ``mgr.stats()`` and Prometheus are built
from.

Each component bumps plain ints in its own stats object (:class:`ProducerStats`
in the publisher, :class:`ConsumerStats` in each topic consumer,
:class:`AckStats` in the ack waiter, :class:`DeliveryLatency` in the
manager): no locks, no call into :mod:`.metrics` per record, and one clock
read per record only where the figure is a time (:class:`DeliveryLatency`).
:mod:`.metrics` reads them only when asked.
"""
from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

#: Upper bounds (seconds) of the round-trip histogram of remote group changes.
ROUND_TRIP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Upper bounds (seconds) of the delivery-latency histogram: 1 ms (the
#: resolution of a record's timestamp) to 10 s (a consumer far behind).
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0)


class ProducerStats:
    """The publisher's figures, by topic name."""

    __slots__ = ("produced", "errors", "refused", "last_error", "last_error_at")

    def __init__(self) -> None:
        self.produced: defaultdict[str, int] = defaultdict(int)
        self.errors: defaultdict[str, int] = defaultdict(int)
        #: Records refused because the producer held its memory bound.
        self.refused: defaultdict[str, int] = defaultdict(int)
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # time.time()

    def failed(self, topic: str, error: BaseException) -> None:
        """A produce future's errback: the broker did not take a record."""
        self.errors[topic] += 1
        self.last_error = f"{type(error).__name__}: {error}"
        self.last_error_at = time.time()


class ConsumerStats:
    """One topic consumer's figures; its positions stay in the consumer."""

    __slots__ = ("consumed", "malformed", "restarts", "log_ends", "last_timestamps")

    def __init__(self) -> None:
        self.consumed = 0
        self.malformed = 0
        self.restarts = 0
        #: partition -> high watermark of the last fetch (kafka-python's
        #: ``consumer.highwater``): the log end, without a request of its own.
        self.log_ends: dict[Any, int] = {}
        #: partition -> CreateTime (ms) of the last record handled.
        self.last_timestamps: dict[Any, int] = {}

    def batch(self, tp: Any, records: list, log_end: int | None) -> None:
        """A fetched batch of ``tp`` was handled (once a batch, not a record)."""
        if records:
            self.consumed += len(records)
            self.last_timestamps[tp] = records[-1].timestamp
        if log_end is not None:
            self.log_ends[tp] = log_end


class AckStats:
    """Remote group changes (their round trips, ack timeouts) and callbacks
    for clients on other servers that expired unanswered."""

    __slots__ = ("round_trips", "round_trip_sum", "ack_timeouts", "callback_timeouts")

    def __init__(self) -> None:
        # One count a bucket of ROUND_TRIP_BUCKETS, and one above the last.
        self.round_trips = [0] * (len(ROUND_TRIP_BUCKETS) + 1)
        self.round_trip_sum = 0.0
        self.ack_timeouts = 0
        self.callback_timeouts = 0

    def acked(self, seconds: float) -> None:
        self.round_trips[bisect.bisect_left(ROUND_TRIP_BUCKETS, seconds)] += 1
        self.round_trip_sum += seconds


class DeliveryLatency:
    """Seconds from a record's timestamp to the moment this dyno applied it
    (for an invocation: its emit to the local sockets returned), one
    histogram per topic kind (``send-all``, ..., ``ack``, ``group-mgmt``).

    The timestamp is the producer's wall clock (CreateTime, in ms), so a
    producer whose clock runs ahead of ours gives a negative time: it counts
    as 0 (and in :attr:`clamped`). Each kind is observed by one task only
    (its consumer, or the asyncio loop) and has figures of its own, as
    :class:`ConsumerStats` does: no lock.

    :param kinds: the topic kinds, known up front so that every kind reads
                  (as zeros) before its first record.
    """

    __slots__ = ("counts", "sums", "clamped")

    def __init__(self, kinds: tuple[str, ...]) -> None:
        #: kind -> a count per bucket of DELIVERY_BUCKETS, and one above it.
        self.counts = {kind: [0] * (len(DELIVERY_BUCKETS) + 1) for kind in kinds}
        self.sums = dict.fromkeys(kinds, 0.0)
        #: kind -> records timestamped after we applied them (clock skew),
        #: counted as 0 s.
        self.clamped = dict.fromkeys(kinds, 0)

    def observe(self, kind: str, timestamp_ms: int | None) -> None:
        """A record of ``kind`` written ``timestamp_ms`` (Unix ms; ``None``
        or negative when the record has none: not counted) was applied now."""
        if timestamp_ms is None or timestamp_ms < 0:
            return
        seconds = time.time() - timestamp_ms / 1000
        if seconds < 0:
            self.clamped[kind] += 1
            seconds = 0.0
        self.counts[kind][bisect.bisect_left(DELIVERY_BUCKETS, seconds)] += 1
        self.sums[kind] += seconds

    def read(self) -> dict[tuple[str], dict[str, Any]]:
        """``{(kind,): histogram}`` in :class:`Family`'s histogram shape."""
        return {(kind,): cumulative(DELIVERY_BUCKETS, counts, self.sums[kind])
                for kind, counts in list(self.counts.items())}


def cumulative(bounds: tuple[float, ...], counts: list[int], total: float) -> dict[str, Any]:
    """A histogram in :class:`Family`'s shape from a count per bucket of
    ``bounds`` and one above the last, and the sum of what was observed."""
    buckets, count = {}, 0
    for bound, n in zip((*bounds, float("inf")), list(counts), strict=True):
        count += n
        buckets[bound] = count
    return {"buckets": buckets, "sum": total, "count": count}


@dataclass(frozen=True)
class Family:
    """One figure (a metric family) and how to read it.

    :param name: the key in ``stats()``; Prometheus names it
                 ``flask_signalr_kafka_<name>`` (``_total`` added to counters).
    :param kind: :data:`COUNTER`, :data:`GAUGE` or :data:`HISTOGRAM`.
    :param help: one line for Prometheus.
    :param labels: label names, e.g. ``("topic", "partition")``.
    :param read: called at each read. Without labels it returns a number;
                 with labels, ``{label values (a tuple): number}``. A
                 histogram returns ``{"buckets": {upper bound: cumulative
                 count, ..., inf: count}, "sum": s, "count": n}``.
    """

    name: str
    kind: str
    help: str
    labels: tuple[str, ...]
    read: Callable[[], Any]
