"""What a dyno counts, and how the counts are read: ``mgr.stats()``,
``mgr.health()`` and the Prometheus collector (:mod:`.prometheus`).

The components keep their figures in the stats objects of :mod:`.stats`;
:class:`Metrics` reads them only when asked, as a list of
:class:`~.stats.Family` (name, kind, labels, reader). Another component adds
its own figures with :meth:`Metrics.add` (recoveries, sessions held, ...).
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from ..runtime.stats import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    ROUND_TRIP_BUCKETS,
    AckStats,
    DeliveryLatency,
    Family,
    ProducerStats,
    cumulative,
)
from ..transport.core import KafkaCore
from ..transport.topics import ACK, GROUP_MGMT, SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER

#: Seconds records may wait with none acknowledged before health says the
#: cluster is unreachable: acks take milliseconds, and a leader that moves
#: stalls only its own partitions (the others' acks go on).
UNREACHABLE_AFTER = 5.0


class Metrics:
    """The figures of one server.

    :param core: the Kafka core whose publisher, consumers and ack waiter
                 are read (at read time: they may not exist yet).
    """

    def __init__(self, core: KafkaCore) -> None:
        self._core = core
        #: topic name -> records this dyno delivered to its own clients.
        self.delivered: defaultdict[str, int] = defaultdict(int)
        #: Record timestamp -> applied here, by topic kind (the manager observes).
        self.latency = DeliveryLatency(
            (SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER, ACK, GROUP_MGMT))
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
        core = self._core
        consumers = {c.topic: c.running for c in core.consumers}
        ready = self._ready()
        worst = max(self._lags().items(), key=lambda kv: kv[1], default=None)
        stats = core.publisher.stats if core.publisher is not None else None
        last = None
        if stats is not None and stats.last_error_at is not None:
            last = {"error": stats.last_error, "at": stats.last_error_at,
                    "seconds_ago": round(time.time() - stats.last_error_at, 3)}
        alive = all(consumers.values())
        return {
            "ok": ready and alive and not core.closed,
            "ready": ready,
            "closed": core.closed,
            "consumers_alive": alive,
            "consumers": consumers,
            "worst_lag": None if worst is None else {
                "topic": worst[0][0], "partition": worst[0][1], "records": worst[1]},
            "last_produce_error": last,
            "kafka": self._kafka(),
        }

    def _kafka(self) -> dict[str, Any]:
        """The cluster as this dyno's producer sees it."""
        publisher = self._core.publisher
        if publisher is None:
            return {"reachable": None, "unacknowledged_seconds": 0.0, "buffered_bytes": 0,
                    "buffered_records": 0, "buffer_limit_bytes": None, "refused": 0}
        stalled = publisher.stalled_for()
        return {
            "reachable": stalled < UNREACHABLE_AFTER,
            "unacknowledged_seconds": round(stalled, 3),
            "buffered_bytes": publisher.buffered,
            "buffered_records": publisher.in_flight,
            "buffer_limit_bytes": publisher.buffer_memory,
            "refused": sum(dict(publisher.stats.refused).values()),
        }

    # -- the built-in figures ---------------------------------------------

    def _ready(self) -> bool:
        """Consuming every topic from a fixed position; for a write-only
        manager, connected to the cluster."""
        core = self._core
        if core.write_only:
            return core.publisher is not None
        return core.wait_ready(0)

    def _consumers(self) -> list:
        return self._core.consumers

    def _producer(self) -> ProducerStats:
        publisher = self._core.publisher
        return publisher.stats if publisher is not None else ProducerStats()

    def _publisher_figure(self, name: str, default: Any) -> Any:
        publisher = self._core.publisher
        if publisher is None:
            return default
        value = getattr(publisher, name)
        return value() if callable(value) else value

    def _acks(self) -> AckStats:
        return self._core.acks.stats

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
        return cumulative(ROUND_TRIP_BUCKETS, acks.round_trips, acks.round_trip_sum)

    def _builtin(self) -> list[Family]:
        topic = ("topic",)
        partition = ("topic", "partition")
        return [
            Family("records_produced", COUNTER, "Records handed to the Kafka producer.", topic,
                   lambda: {(t,): n for t, n in dict(self._producer().produced).items()}),
            Family("produce_errors", COUNTER, "Records the brokers did not take.", topic,
                   lambda: {(t,): n for t, n in dict(self._producer().errors).items()}),
            Family("records_refused", COUNTER,
                   "Records refused because the producer held its memory bound of "
                   "unacknowledged records (the cluster unreachable or slow).", topic,
                   lambda: {(t,): n for t, n in dict(self._producer().refused).items()}),
            Family("producer_buffered_bytes", GAUGE,
                   "What the producer holds that the cluster has not acknowledged, as counted "
                   "against its memory bound.", (),
                   lambda: self._publisher_figure("buffered", 0)),
            Family("producer_buffer_limit_bytes", GAUGE,
                   "The producer's memory bound (buffer_memory / queue.buffering.max.kbytes).",
                   (), lambda: self._publisher_figure("buffer_memory", 0)),
            Family("producer_unacknowledged_seconds", GAUGE,
                   "Seconds records have waited with none acknowledged (0: flowing or idle).",
                   (), lambda: round(self._publisher_figure("stalled_for", 0.0), 3)),
            Family("kafka_reachable", GAUGE,
                   "1 while the cluster acknowledges this dyno's records (0 once records have "
                   "waited 5 s with none acknowledged).", (),
                   lambda: int(self._publisher_figure("stalled_for", 0.0) < UNREACHABLE_AFTER)),
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
            Family("consumer_up", GAUGE, "1 while the topic's consumer runs.", topic,
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
            Family("delivery_latency_seconds", HISTOGRAM,
                   "From a record's timestamp (its producer's clock) to this dyno's write to "
                   "its sockets (ack, group-mgmt: to applying it), by topic kind.", ("kind",),
                   self.latency.read),
            Family("delivery_latency_clamped", COUNTER,
                   "Records timestamped later than this dyno applied them (producer clock "
                   "ahead of ours), counted as 0 s in delivery_latency_seconds.", ("kind",),
                   lambda: {(k,): n for k, n in dict(self.latency.clamped).items()}),
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
