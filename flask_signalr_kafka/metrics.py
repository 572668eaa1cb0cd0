"""What a dyno counts, and how the counts are read: ``mgr.stats()``,
``mgr.health()`` and the Prometheus collector (:mod:`.prometheus`).

The boundary: each component keeps its own figures in a small stats object
from this module (:class:`ProducerStats` in the publisher,
:class:`ConsumerStats` in each topic consumer, :class:`AckStats` in the ack
waiter) and bumps plain ints on its hot path: no locks, no clock reads per
record, no call into this module per record. :class:`Metrics` reads them only
when asked, as a list of :class:`Family` (name, kind, labels, reader), the
one description both ``stats()`` and Prometheus are built from. Another
component adds its own figures with :meth:`Metrics.add` (recoveries,
sessions held, partitions read, ...).
"""
from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .manager import KafkaManager

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

#: Upper bounds (seconds) of the round-trip histogram of remote group changes.
ROUND_TRIP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ProducerStats:
    """The publisher's figures, by topic name."""

    __slots__ = ("produced", "errors", "last_error", "last_error_at")

    def __init__(self) -> None:
        self.produced: defaultdict[str, int] = defaultdict(int)
        self.errors: defaultdict[str, int] = defaultdict(int)
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


class Metrics:
    """The figures of one manager.

    :param manager: the manager whose publisher, consumers and ack waiter
                    are read (at read time: they may not exist yet).
    """

    def __init__(self, manager: KafkaManager) -> None:
        self._manager = manager
        #: topic name -> records this dyno delivered to its own clients.
        self.delivered: defaultdict[str, int] = defaultdict(int)
        self._families: dict[str, Family] = {}
        for family in self._builtin():
            self.add(family)

    def add(self, family: Family) -> None:
        """Add a figure: it appears in ``stats()`` and in Prometheus.

        :raises ValueError: the name is taken.
        """
        if family.name in self._families:
            raise ValueError(f"a metric named {family.name!r} exists already")
        if family.kind not in (COUNTER, GAUGE, HISTOGRAM):
            raise ValueError(f"metric kind {family.kind!r} is not counter, gauge or histogram")
        self._families[family.name] = family

    def families(self) -> list[Family]:
        return list(self._families.values())

    def stats(self) -> dict[str, Any]:
        """Every figure, read now: a plain dict (JSON-ready once its keys are
        strings: labelled figures nest by label value, e.g.
        ``stats()["consumer_lag"]["chat-send-all"][3]``)."""
        return {f.name: _nest(f.read()) if f.labels else f.read() for f in self.families()}

    def health(self) -> dict[str, Any]:
        """Whether this dyno can deliver: ``ok`` is ready and every consumer
        greenlet alive. Also the worst lag, and the last produce error and
        when (produce errors do not make it unhealthy: in a broker outage
        every dyno has them, and taking them all out of rotation helps no
        one)."""
        mgr = self._manager
        consumers = {c.topic: c.running for c in mgr._consumers}
        ready = self._ready()
        worst = max(self._lags().items(), key=lambda kv: kv[1], default=None)
        stats = mgr._publisher.stats if mgr._publisher is not None else None
        last = None
        if stats is not None and stats.last_error_at is not None:
            last = {"error": stats.last_error, "at": stats.last_error_at,
                    "seconds_ago": round(time.time() - stats.last_error_at, 3)}
        alive = all(consumers.values())
        return {
            "ok": ready and alive and not mgr._closed,
            "ready": ready,
            "closed": mgr._closed,
            "consumers_alive": alive,
            "consumers": consumers,
            "worst_lag": None if worst is None else {
                "topic": worst[0][0], "partition": worst[0][1], "records": worst[1]},
            "last_produce_error": last,
        }

    # -- the built-in figures ---------------------------------------------

    def _ready(self) -> bool:
        """Consuming every topic from a fixed position; for a write-only
        manager, connected to the cluster."""
        mgr = self._manager
        if mgr.write_only:
            return mgr._publisher is not None
        return bool(mgr._consumers) and mgr.wait_ready(0)

    def _consumers(self) -> list:
        return list(self._manager._consumers)

    def _producer(self) -> ProducerStats:
        publisher = self._manager._publisher
        return publisher.stats if publisher is not None else ProducerStats()

    def _acks(self) -> AckStats:
        return self._manager._acks.stats

    def _lags(self) -> dict[tuple[str, int], int]:
        lags = {}
        for c in self._consumers():
            for tp, end in dict(c.stats.log_ends).items():
                position = c.positions.get(tp)
                if position is not None:
                    lags[(tp.topic, tp.partition)] = max(0, end - position)
        return lags

    def _lag_seconds(self) -> dict[tuple[str, int], float]:
        """0 for a partition read to its end; else the age of the last record
        handled, an upper bound of the oldest unread one's (that was written
        after it). From CreateTime: the producers' clocks."""
        now_ms = time.time() * 1000
        ages = {}
        lags = self._lags()
        for c in self._consumers():
            for tp, stamp in dict(c.stats.last_timestamps).items():
                key = (tp.topic, tp.partition)
                if key in lags:
                    ages[key] = 0.0 if lags[key] == 0 else max(0.0, (now_ms - stamp) / 1000)
        return ages

    def _per_consumer(self, attr: str) -> dict[tuple[str], int]:
        return {(c.topic,): getattr(c.stats, attr) for c in self._consumers()}

    def _round_trips(self) -> dict[str, Any]:
        acks = self._acks()
        counts, total = list(acks.round_trips), 0
        buckets = {}
        for bound, count in zip((*ROUND_TRIP_BUCKETS, float("inf")), counts, strict=True):
            total += count
            buckets[bound] = total
        return {"buckets": buckets, "sum": acks.round_trip_sum, "count": total}

    def _builtin(self) -> list[Family]:
        topic = ("topic",)
        partition = ("topic", "partition")
        return [
            Family("records_produced", COUNTER, "Records handed to the Kafka producer.", topic,
                   lambda: {(t,): n for t, n in dict(self._producer().produced).items()}),
            Family("produce_errors", COUNTER, "Records the brokers did not take.", topic,
                   lambda: {(t,): n for t, n in dict(self._producer().errors).items()}),
            Family("last_produce_error_timestamp_seconds", GAUGE,
                   "Unix time of the last produce error (0: none).", (),
                   lambda: self._producer().last_error_at or 0.0),
            Family("records_consumed", COUNTER, "Records read from Kafka.", topic,
                   lambda: self._per_consumer("consumed")),
            Family("records_delivered", COUNTER,
                   "Records from other servers delivered to this dyno's clients.", topic,
                   lambda: {(t,): n for t, n in dict(self.delivered).items()}),
            Family("records_malformed", COUNTER, "Records skipped as malformed.", topic,
                   lambda: self._per_consumer("malformed")),
            Family("consumer_restarts", COUNTER, "Consumer loops restarted after an error.",
                   topic, lambda: self._per_consumer("restarts")),
            Family("consumer_up", GAUGE, "1 while the topic's consumer greenlet runs.", topic,
                   lambda: {(c.topic,): int(c.running) for c in self._consumers()}),
            Family("consumer_lag_records", GAUGE,
                   "Log end (at the last fetch) minus this dyno's position.", partition,
                   self._lags),
            Family("consumer_lag_seconds", GAUGE,
                   "0 when read to the end, else the age of the last record read: an "
                   "upper bound of the oldest unread record's age.", partition,
                   self._lag_seconds),
            Family("group_change_seconds", HISTOGRAM,
                   "Round trip of a join or leave for a connection on another server.", (),
                   self._round_trips),
            Family("ack_timeouts", COUNTER, "Remote joins and leaves that got no ack in time.",
                   (), lambda: self._acks().ack_timeouts),
            Family("callback_timeouts", COUNTER,
                   "Callbacks for clients on other servers that expired unanswered.", (),
                   lambda: self._acks().callback_timeouts),
            Family("ready", GAUGE, "1 once this dyno consumes every topic from a fixed position.",
                   (), lambda: int(self._ready())),
        ]


def _nest(values: dict[tuple, Any]) -> dict:
    """``{("a", 1): x}`` -> ``{"a": {1: x}}``; one label: ``{"a": x}``."""
    nested: dict = {}
    for labels, value in values.items():
        level = nested
        for label in labels[:-1]:
            level = level.setdefault(label, {})
        level[labels[-1]] = value
    return nested
