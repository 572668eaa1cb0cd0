"""A Prometheus collector for a manager's figures (the ``metrics`` extra:
``pip install 'flask-signalr-kafka[metrics]'``).

Every :class:`~.metrics.Family` of ``mgr.metrics`` becomes a metric named
``flask_signalr_kafka_<name>`` (counters end in ``_total``; times are in
seconds; labels such as ``topic``, ``partition``, ``kind``; histograms with
their ``_bucket``, ``_sum`` and ``_count`` series), read at each scrape: nothing is
counted twice and nothing runs between scrapes.

One dyno is one process (gevent serves every client in it), so the default
registry of that process is the dyno's: prometheus-client's multiprocess
mode is not needed. Under gunicorn with several workers each worker is a
dyno of its own, with its own ``/metrics``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "flask_signalr_kafka.observability.prometheus needs prometheus-client: "
        "pip install 'flask-signalr-kafka[metrics]'"
    ) from exc

from ..runtime.stats import COUNTER, HISTOGRAM, Family

if TYPE_CHECKING:
    from .metrics import Metrics

PREFIX = "flask_signalr_kafka_"


class Monitored(Protocol):
    """What the collector and the routes read of a manager (either kind)."""

    @property
    def metrics(self) -> Metrics: ...

    def health(self) -> dict[str, Any]: ...


class KafkaManagerCollector(Collector):
    """Reads ``manager.metrics`` at each scrape.

    :param manager: the dyno's manager.
    """

    def __init__(self, manager: Monitored) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        for family in self.manager.metrics.families():
            yield _metric(family, family.read())

    def describe(self) -> list[Metric]:
        # Registering must not read the manager (it may not be started).
        return []


def register(
    manager: Monitored, registry: CollectorRegistry | None = None
) -> KafkaManagerCollector:
    """Register a collector for ``manager`` (in the default registry unless
    ``registry`` is given) and return it."""
    collector = KafkaManagerCollector(manager)
    (REGISTRY if registry is None else registry).register(collector)
    return collector


def _metric(family: Family, value: Any) -> Metric:
    name = PREFIX + family.name
    labels = list(family.labels)
    samples = [([str(v) for v in label_values], number)
               for label_values, number in (value.items() if labels else [((), value)])
               if number is not None]
    if family.kind == HISTOGRAM:
        histogram = HistogramMetricFamily(name, family.help, labels=labels)
        for label_texts, number in samples:
            histogram.add_metric(label_texts,
                                 [(_bound(b), n) for b, n in number["buckets"].items()],
                                 number["sum"])
        return histogram
    kind = CounterMetricFamily if family.kind == COUNTER else GaugeMetricFamily
    metric = kind(name, family.help, labels=labels)
    for label_texts, number in samples:
        metric.add_metric(label_texts, number)
    return metric


def _bound(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))
