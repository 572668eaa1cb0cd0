"""The figures each component keeps on its hot path, and the description
of a figure (:class:`Family`) that ``mgr.stats()`` and Prometheus are built
from.

Each component bumps plain ints in its own stats object (:class:`ProducerStats`
in the publisher, :class:`ConsumerStats` in each topic consumer,
:class:`AckStats` in the ack waiter): no locks, no clock reads per record,
no call into :mod:`.metrics` per record. :mod:`.metrics` reads them only when
asked.
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
