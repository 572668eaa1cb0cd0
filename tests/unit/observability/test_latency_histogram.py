"""The delivery-latency histogram without a broker: where a record's age
falls, clock skew, and how ``stats()`` and Prometheus show it."""
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flask_signalr_kafka import KafkaManager
from flask_signalr_kafka.observability.prometheus import register
from flask_signalr_kafka.runtime import stats
from flask_signalr_kafka.runtime.stats import DELIVERY_BUCKETS, DeliveryLatency

NOW = 1_800_000_000.0  # a fixed "now" (Unix seconds)


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setattr(stats.time, "time", lambda: NOW)


def sent(seconds_ago: float) -> int:
    """The CreateTime (ms) of a record produced ``seconds_ago`` before NOW."""
    return round((NOW - seconds_ago) * 1000)


def test_each_age_lands_in_its_bucket(frozen):
    latency = DeliveryLatency(("send-all", "send-conn"))
    for age in (0.0, 0.002, 0.003, 0.003, 0.25, 12.0):
        latency.observe("send-all", sent(age))
    histogram = latency.read()[("send-all",)]
    buckets = histogram["buckets"]
    assert buckets[0.001] == 1
    assert buckets[0.0025] == 2 and buckets[0.005] == 4
    # Cumulative, "less than or equal": 0.25 s itself is in the 0.25 s bucket.
    assert buckets[0.1] == 4 and buckets[0.25] == 5 and buckets[10.0] == 5
    assert buckets[float("inf")] == histogram["count"] == 6
    assert list(buckets) == [*DELIVERY_BUCKETS, float("inf")]
    assert histogram["sum"] == pytest.approx(0.002 + 0.006 + 0.25 + 12.0)
    # Another kind is its own histogram, read (as zeros) before its first record.
    assert latency.read()[("send-conn",)]["count"] == 0


def test_a_producer_clock_ahead_of_ours_counts_as_zero(frozen):
    latency = DeliveryLatency(("send-user",))
    latency.observe("send-user", sent(-0.5))  # stamped half a second in our future
    histogram = latency.read()[("send-user",)]
    assert histogram["buckets"][0.001] == 1 and histogram["sum"] == 0.0
    assert latency.clamped == {"send-user": 1}


def test_a_record_without_a_timestamp_is_not_counted(frozen):
    latency = DeliveryLatency(("send-all",))
    latency.observe("send-all", None)
    latency.observe("send-all", -1)  # librdkafka: TIMESTAMP_NOT_AVAILABLE
    assert latency.read()[("send-all",)]["count"] == 0 and latency.clamped == {"send-all": 0}


def test_stats_and_prometheus_show_one_histogram_per_kind(frozen):
    mgr = KafkaManager(bootstrap_servers="127.0.0.1:1")  # never started
    mgr.metrics.latency.observe("send-group", sent(0.02))
    mgr.metrics.latency.observe("send-group", sent(3.0))
    mgr.metrics.latency.observe("ack", sent(-1))

    figures = mgr.stats()
    group = figures["delivery_latency_seconds"]["send-group"]
    assert group["count"] == 2 and group["buckets"][0.025] == 1 and group["buckets"][5.0] == 2
    assert set(figures["delivery_latency_seconds"]) == {
        "send-all", "send-conn", "send-group", "send-user", "ack", "group-mgmt"}
    assert figures["delivery_latency_clamped"]["ack"] == 1
    assert figures["delivery_latency_clamped"]["send-group"] == 0

    registry = CollectorRegistry()
    register(mgr, registry)
    families = {f.name: f for f in text_string_to_metric_families(
        generate_latest(registry).decode())}
    family = families["flask_signalr_kafka_delivery_latency_seconds"]
    assert family.type == "histogram"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    name = "flask_signalr_kafka_delivery_latency_seconds"
    assert samples[(name + "_count", (("kind", "send-group"),))] == 2
    assert samples[(name + "_sum", (("kind", "send-group"),))] == pytest.approx(3.02)
    assert samples[(name + "_bucket", (("kind", "send-group"), ("le", "0.025")))] == 1
    assert samples[(name + "_bucket", (("kind", "send-group"), ("le", "0.01")))] == 0
    assert samples[(name + "_bucket", (("kind", "send-group"), ("le", "+Inf")))] == 2
    assert samples[(name + "_count", (("kind", "ack"),))] == 1
    assert samples[(name + "_count", (("kind", "send-all"),))] == 0
    clamped = {s.labels["kind"]: s.value
               for s in families["flask_signalr_kafka_delivery_latency_clamped"].samples}
    assert clamped["ack"] == 1 and clamped["send-group"] == 0
