"""The figures of real dynos after known traffic: ``/metrics`` (the
Prometheus collector), ``/stats`` (``mgr.stats()``) and ``/healthz``
(``mgr.health()``), served by tests/server_app.py as the sample app does."""
import pytest
import requests
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from testkit.harness import unique, wait_until

# The combinations besides the default one that run this module (make test).
# serial: it measures time; under xdist, no other test so marked runs beside it.
pytestmark = [pytest.mark.threading, pytest.mark.confluent, pytest.mark.serial]

P = "flask_signalr_kafka_"


def scrape(server):
    """{(sample name, frozenset of labels): value} of a dyno's /metrics."""
    response = requests.get(server.url + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples, name, **labels):
    return samples.get((P + name, frozenset(labels.items())))


@pytest.fixture
def pair(new_fleet):
    # The other fixtures' 3 s: with 1 s, the first remote join of a pair
    # started a second before timed out once (confluent, loaded CI machine).
    new_fleet.a = new_fleet.server("A", ACK_TIMEOUT=3)
    new_fleet.b = new_fleet.server("B", ACK_TIMEOUT=3)
    return new_fleet


def test_counters_after_known_traffic(pair):
    fleet = pair
    t = fleet.topic
    alice = unique("alice")
    sender = fleet.client(fleet.a)
    tab = fleet.client(fleet.b, user=alice)
    room = unique("room")

    # One remote join (A -> B's connection), acked by B.
    assert sender.call("join", {"room": room, "sid": tab.sid}) == "ok"
    for i in range(5):
        sender.call("emit", {"event": "u", "data": i, "user": alice})
    for i in range(3):
        sender.call("emit", {"event": "all", "data": i})
    for i in range(4):
        sender.call("emit", {"event": "c", "data": i, "to": tab.sid})
    for i in range(2):
        sender.call("emit", {"event": "r", "data": i, "to": room})
    tab.wait_for("u", (4,))
    tab.wait_for("all", (2,))
    tab.wait_for("c", (3,))
    tab.wait_for("r", (1,))
    # One record no server can read.
    producer = KafkaProducer(bootstrap_servers=fleet.broker.bootstrap)
    producer.send(t("send-all"), b"\xc1 not msgpack").get(10)
    producer.close()
    # A remote join for a connection nobody holds any more: an ack timeout.
    gone = fleet.client(fleet.b)
    gone_sid = gone.sid
    gone.close()
    wait_until(lambda: gone.disconnected.is_set(), 5, what="disconnect")
    assert sender.call("join", {"room": room, "sid": gone_sid}) == "timeout"

    a = wait_until(lambda: (s := scrape(fleet.a)) and
                   value(s, "records_malformed_total", topic=t("send-all")) == 1 and s,
                   10, what="A read the malformed record")
    b = wait_until(lambda: (s := scrape(fleet.b)) and
                   value(s, "records_malformed_total", topic=t("send-all")) == 1 and s,
                   10, what="B read the malformed record")

    produced = {base: value(a, "records_produced_total", topic=t(base))
                for base in ("send-user", "send-all", "send-conn", "send-group", "group-mgmt")}
    assert produced == {"send-user": 5, "send-all": 3, "send-conn": 4, "send-group": 2,
                        "group-mgmt": 2}
    assert value(b, "records_produced_total", topic=t("ack")) == 1
    assert value(a, "produce_errors_total", topic=t("send-all")) is None
    assert value(a, "last_produce_error_timestamp_seconds") == 0

    # B delivered what A sent; A delivered none of its own records from Kafka.
    for base, n in (("send-user", 5), ("send-all", 3), ("send-conn", 4), ("send-group", 2)):
        assert value(b, "records_delivered_total", topic=t(base)) == n
        assert value(a, "records_delivered_total", topic=t(base)) is None
        assert value(b, "records_consumed_total", topic=t(base)) == n + (base == "send-all")
    assert value(a, "records_consumed_total", topic=t("send-all")) == 4

    assert value(a, "group_change_seconds_count") == 1
    assert 0 < value(a, "group_change_seconds_sum") < 1
    assert value(a, "group_change_seconds_bucket", le="+Inf") == 1
    assert value(a, "ack_timeouts_total") == 1
    assert value(b, "ack_timeouts_total") == 0
    assert value(a, "callback_timeouts_total") == 0

    for samples in (a, b):
        assert value(samples, "ready") == 1
        for base in ("ack", "group-mgmt", "send-all", "send-conn", "send-group", "send-user"):
            assert value(samples, "consumer_up", topic=t(base)) == 1
            assert value(samples, "consumer_restarts_total", topic=t(base)) == 0
    # Read to the end: lag 0 on every partition that got a record.
    lags = {k: v for k, v in b.items() if k[0] == P + "consumer_lag_records"}
    assert lags and set(lags.values()) == {0}
    assert {dict(k[1])["partition"] for k in lags} and all(
        dict(k[1])["topic"].startswith(fleet.prefix) for k in lags)
    ages = {k[1]: v for k, v in b.items() if k[0] == P + "consumer_lag_seconds"}
    assert set(ages) == {k[1] for k in lags} and set(ages.values()) == {0}

    # mgr.stats() says the same, as a plain dict.
    stats = requests.get(fleet.b.url + "/stats", timeout=5).json()
    assert stats["records_delivered"][t("send-user")] == 5
    assert stats["records_malformed"][t("send-all")] == 1
    assert stats["group_change_seconds"]["count"] == 0
    assert stats["ack_timeouts"] == 0


def test_health_goes_503_when_a_consumer_stops(pair):
    fleet = pair
    health = requests.get(fleet.b.url + "/healthz", timeout=5)
    assert health.status_code == 200
    body = health.json()
    assert body["ok"] and body["ready"] and body["consumers_alive"]
    assert body["last_produce_error"] is None
    assert len(body["consumers"]) == 7  # the six topics and the fleet topic

    assert requests.post(fleet.b.url + "/stop-consumer/send-all", timeout=5).ok
    health = requests.get(fleet.b.url + "/healthz", timeout=5)
    assert health.status_code == 503
    body = health.json()
    assert not body["ok"] and not body["consumers_alive"]
    assert body["consumers"][fleet.topic("send-all")] is False
    assert body["consumers"][fleet.topic("send-user")] is True
    assert value(scrape(fleet.b), "consumer_up", topic=fleet.topic("send-all")) == 0
    # The other dyno is unaffected.
    assert requests.get(fleet.a.url + "/healthz", timeout=5).status_code == 200
