"""The metrics registry without a broker: what a component adds appears in
``stats()`` and in Prometheus, under the conventional names."""
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flask_signalr_kafka import KafkaManager
from flask_signalr_kafka.observability.prometheus import register
from flask_signalr_kafka.runtime.stats import COUNTER, GAUGE, AckStats, Family, ProducerStats
from flask_signalr_kafka.transport.ack_waiter import AckWaiter


@pytest.fixture
def mgr():
    # Never started: nothing connects.
    return KafkaManager(bootstrap_servers="127.0.0.1:1")


def test_a_component_adds_its_figures(mgr):
    mgr.metrics.add(Family("recoveries", COUNTER, "Recoveries by outcome.", ("outcome",),
                           lambda: {("ok",): 3, ("expired",): 1}))
    mgr.metrics.add(Family("partitions_read", GAUGE, "Partitions read.", ("topic",),
                           lambda: {("chat-send-conn",): 2}))
    stats = mgr.stats()
    assert stats["recoveries"] == {"ok": 3, "expired": 1}
    assert stats["partitions_read"] == {"chat-send-conn": 2}
    with pytest.raises(ValueError, match="exists already"):
        mgr.metrics.add(Family("recoveries", COUNTER, "again", (), lambda: 0))
    with pytest.raises(ValueError, match="not counter, gauge or histogram"):
        mgr.metrics.add(Family("odd", "summary", "no", (), lambda: 0))

    registry = CollectorRegistry()
    register(mgr, registry)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(registry).decode())
               for s in f.samples}
    assert samples[("flask_signalr_kafka_recoveries_total", (("outcome", "ok"),))] == 3
    assert samples[("flask_signalr_kafka_partitions_read", (("topic", "chat-send-conn"),))] == 2
    # A manager that never started reads as not ready, with empty figures.
    assert samples[("flask_signalr_kafka_ready", ())] == 0
    assert samples[("flask_signalr_kafka_group_change_seconds_count", ())] == 0
    assert stats["records_produced"] == {} and stats["consumer_lag_records"] == {}


def test_health_of_a_manager_that_never_started(mgr):
    health = mgr.health()
    assert health["ok"] is False and health["ready"] is False
    assert health["consumers"] == {} and health["worst_lag"] is None


def test_round_trip_histogram_and_timeouts():
    stats = AckStats()
    for seconds in (0.004, 0.02, 0.02, 20.0, 99.0):
        stats.acked(seconds)
    # Counts per bucket (not cumulative), the last one above 30 s.
    assert stats.round_trips[0] == 1 and stats.round_trips[2] == 2
    assert stats.round_trips[-2] == 1 and stats.round_trips[-1] == 1
    assert stats.round_trip_sum == pytest.approx(119.044)

    waiter = AckWaiter()
    waiter.register(lambda args: None, ttl=-1)  # already expired
    waiter._sweep(now=float("inf"))
    assert waiter.stats.callback_timeouts == 1


def test_producer_errback_records_the_last_error():
    stats = ProducerStats()
    stats.failed("chat-send-all", TimeoutError("broker gone"))
    assert stats.errors == {"chat-send-all": 1}
    assert stats.last_error == "TimeoutError: broker gone" and stats.last_error_at > 0
