"""The delivery-latency histogram of real dynos after known traffic: one
Flask-SocketIO dyno (A) emits; another (B) and an asyncio one under uvicorn
(X) deliver to their Socket.IO clients. Read from ``/metrics`` (the
Prometheus collector) and ``/stats`` (``mgr.stats()``)."""
import pytest
import requests
from test_metrics import P, scrape, value

from testkit.harness import unique, wait_until

# The combinations besides the default one that run this module (make test).
pytestmark = [pytest.mark.threading, pytest.mark.confluent]

SENDS = {"send-user": 5, "send-all": 3, "send-conn": 4, "send-group": 2}


def histogram(samples, kind):
    """{le: cumulative count}, count and sum of one kind's histogram."""
    name = P + "delivery_latency_seconds"
    buckets = {dict(labels)["le"]: n for (sample, labels), n in samples.items()
               if sample == name + "_bucket" and dict(labels)["kind"] == kind}
    return (buckets, value(samples, "delivery_latency_seconds_count", kind=kind),
            value(samples, "delivery_latency_seconds_sum", kind=kind))


def stats_of(server):
    return requests.get(server.url + "/stats", timeout=5).json()


@pytest.fixture
def trio(new_fleet):
    new_fleet.a = new_fleet.server("A", ACK_TIMEOUT=3)
    new_fleet.b = new_fleet.server("B", ACK_TIMEOUT=3)
    new_fleet.x = new_fleet.server("X", RUNNER="uvicorn", ACK_TIMEOUT=3)
    return new_fleet


def test_each_delivered_record_is_in_its_kinds_histogram(trio):
    fleet = trio
    alice, room = unique("alice"), unique("room")
    sender = fleet.client(fleet.a)
    tab = fleet.client(fleet.b, user=alice)
    async_tab = fleet.client(fleet.x, user=alice)
    # Remote joins: a group-mgmt record applied by B and by X, an ack for A each.
    assert sender.call("join", {"room": room, "sid": tab.sid}) == "ok"
    assert sender.call("join", {"room": room, "sid": async_tab.sid}) == "ok"
    for i in range(SENDS["send-user"]):
        sender.call("emit", {"event": "u", "data": i, "user": alice})
    for i in range(SENDS["send-all"]):
        sender.call("emit", {"event": "all", "data": i})
    for i in range(SENDS["send-conn"]):
        sender.call("emit", {"event": "c", "data": i, "to": tab.sid})
        sender.call("emit", {"event": "c", "data": i, "to": async_tab.sid})
    for i in range(SENDS["send-group"]):
        sender.call("emit", {"event": "r", "data": i, "to": room})
    for client in (tab, async_tab):
        for event, last in (("u", 4), ("all", 2), ("c", 3), ("r", 1)):
            client.wait_for(event, (last,))

    b = wait_until(lambda: (s := scrape(fleet.b)) and all(
        histogram(s, kind)[1] == n for kind, n in SENDS.items()) and s,
        10, what="B's histogram counts every record it delivered")
    for kind, n in SENDS.items():
        buckets, count, total = histogram(b, kind)
        assert count == n == value(b, "records_delivered_total", topic=fleet.topic(kind))
        # Cumulative buckets from 1 ms to 10 s and +Inf; one machine: none over 10 s.
        assert list(buckets) == ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
                                 "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf"]
        assert list(buckets.values()) == sorted(buckets.values())
        assert buckets["10.0"] == buckets["+Inf"] == n
        assert 0 <= total < 10 * n
    assert histogram(b, "group-mgmt")[1] == 1 and histogram(b, "ack")[1] == 0
    # One clock for every dyno here: no record from the future.
    for kind in SENDS:
        assert value(b, "delivery_latency_clamped_total", kind=kind) == 0

    a = scrape(fleet.a)
    # A delivered none of its own records from Kafka; it got two acks.
    for kind in SENDS:
        assert histogram(a, kind)[1] == 0
    assert histogram(a, "ack")[1] == 2 and histogram(a, "group-mgmt")[1] == 0

    # mgr.stats() says the same, as a plain dict; the asyncio dyno too.
    for server in (fleet.b, fleet.x):
        latency = wait_until(
            lambda server=server: (s := stats_of(server)["delivery_latency_seconds"]) and all(
                s[kind]["count"] == n for kind, n in SENDS.items()) and s,
            10, what=f"{server.label}'s stats count every record it delivered")
        for kind, n in SENDS.items():
            assert max(latency[kind]["buckets"].values()) == n
            assert 0 <= latency[kind]["sum"] < 10 * n
        assert latency["group-mgmt"]["count"] == 1 and latency["ack"]["count"] == 0
