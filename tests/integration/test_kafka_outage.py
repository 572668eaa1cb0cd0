"""The whole cluster down for a minute mid-run (the one node of a cluster of
its own frozen with SIGSTOP; 25 s in the runs that repeat it elsewhere)
under two dynos with connection state recovery on, streaming every kind of
emit to each other (tests/integration/faults.py), while a burst emits far
more than the producer may hold.

What the contract ("When Kafka is unavailable") asks, and this asserts:
the dynos' memory stays bounded (the producer refuses what is beyond its
bound, with ProducerBufferFullError, counted in the metrics); no hub is
frozen (a local round trip stays fast); health and metrics show the outage
while it lasts; once the cluster is back, delivery resumes within 10 s and
every emit that was not refused (during the outage or after it) is
delivered. The figures (RSS of each dyno, refusals, the delays) are printed
and appended to test-artifacts/faults.jsonl (docs/kafka-faults.md, "f").
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import requests
from faults import Stream

from flask_signalr_kafka.cli.broker import start_broker
from testkit.harness import Fleet, unique, wait_until
from testkit.node_clients import NodeClients

ROOT = Path(__file__).resolve().parent.parent.parent
HAVE_NODE = bool(shutil.which("node")) and (ROOT / "node_modules" / "socket.io-client").is_dir()

#: It measures time: under xdist, no other test marked serial runs beside it.
#: It takes 85-110 s alone: pytest-timeout's default 120 s cut it under load.
pytestmark = [pytest.mark.serial, pytest.mark.timeout(300)]

#: The outage of the default pass's gevent dyno, the contract's minute.
OUTAGE_S = 60.0
#: The runs that repeat it with another server or client (uvicorn, the
#: threading and confluent passes of make test) freeze the cluster for less:
#: the burst (at 10 s) and the stream (after ~15 s) have filled the producer
#: by then, which is what those runs check.
SHORT_OUTAGE_S = 25.0
#: The producer's memory bound in this test (the default is 32 MB): the
#: stream alone fills it after ~15 s of outage, the burst at once.
BUFFER_BYTES = 1 << 20
#: The burst: without a bound a dyno would hold ~20,000 x 2.4 KB = 48 MB.
BURST, PAD = 20_000, 1000
#: RSS a dyno may gain during the outage: the bound, the interpreter's
#: fragmentation and what the dyno keeps of its own (recovery's logs, the
#: stream's own lists), far below the 48 MB of an unbounded producer.
RSS_GROWTH_MAX = 16 << 20
#: Delivery back after the cluster (the contract: within 10 s).
BACK_WITHIN_S = 10.0
#: Health reachable again after the cluster (its old records acknowledged).
HEALTH_BACK_WITHIN_S = 30.0
#: A recovering client's answer (connected, or a connect error), after its drop.
ANSWER_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def cluster(artifacts):
    """A one-node cluster of this module's own: it is frozen for a minute."""
    node = start_broker("kafka", log_dir=artifacts)
    yield node
    node.stop()


def rss(server) -> int:
    with open(f"/proc/{server.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def bound() -> dict:
    if os.environ.get("KAFKA_CLIENT") == "confluent":
        # server_app passes a name its table does not map as it is.
        return {"queue.buffering.max.kbytes": BUFFER_BYTES // 1024}
    return {"buffer_memory": BUFFER_BYTES}


def health(server) -> dict:
    return requests.get(server.url + "/healthz", timeout=5).json()


def stats(server) -> dict:
    return requests.get(server.url + "/stats", timeout=5).json()


def answer_after(js, cid: str, since_ms: float) -> float | None:
    """Seconds from ``since_ms`` (wall clock) to the JS client's first
    connect or connect error after it; ``None`` while there is none."""
    with js._cond:
        lines = list(js.lines)
    for line in lines:
        if (line.get("id") == cid and line.get("type") in ("connect", "connect_error")
                and line.get("t", 0) > since_ms):
            return (line["t"] - since_ms) / 1000
    return None


@pytest.mark.parametrize("runner", [
    # Flask-SocketIO (gevent, or threading with --async-mode threading), on
    # either client: also in the confluent and threading slices of make test.
    pytest.param("socketio.run", marks=[pytest.mark.confluent, pytest.mark.threading]),
    # AsyncKafkaManager under uvicorn (tests/asgi_server_app.py: kafka-python).
    "uvicorn",
])
def test_the_cluster_down_for_a_minute(cluster, artifacts, runner):
    if runner == "uvicorn" and os.environ.get("KAFKA_CLIENT") == "confluent":
        pytest.skip("tests/asgi_server_app.py runs on kafka-python")
    default_pass = (os.environ.get("KAFKA_CLIENT") != "confluent"
                    and os.environ.get("ASYNC_MODE") != "threading")
    outage_s = OUTAGE_S if runner == "socketio.run" and default_pass else SHORT_OUTAGE_S
    fleet = Fleet(cluster, artifacts, prefix=unique("o"))
    env = {"CONNECTION_STATE_RECOVERY": 1, "TRACK_PRODUCE": 1, "ACK_TIMEOUT": 5,
           "PRODUCER_JSON": json.dumps(bound()), "RUNNER": runner}
    a, b = fleet.start_servers("A", "B", **env)
    stream = Stream(fleet, a, b)
    local, burster = fleet.client(a), fleet.client(a)
    node = cluster.nodes[0]
    js = None
    if HAVE_NODE:
        # An official JS client (announcing recovery) that drops 5 s into the
        # outage and comes back to the other dyno.
        from test_recovery import add_client

        js = NodeClients(max_seconds=400, log_path=artifacts / "outage-js.log")
        cid, _ = add_client(js, [a, b], announce=True)
    cut_ms = answer_s = None
    try:
        stream.start()
        stream.wait_flowing()
        time.sleep(2)
        before = {s.label: rss(s) for s in (a, b)}
        peak = dict(before)
        worst_local = 0.0
        unreachable_after = None  # seconds into the outage health first said so
        burst = None
        node.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            while time.monotonic() < stopped + outage_s:
                # A local round trip: the hub serves its own clients, and a
                # local emit reaches them, even when the producer refuses
                # its record (the emit then raises in the handler: no ack).
                started = time.monotonic()
                assert local.call("whoami", timeout=10)["server"] == "A"
                word = unique("local")
                local.sio.emit("emit", {"event": "mine", "data": word, "to": local.sid})
                local.wait_for("mine", (word,), timeout=10)
                worst_local = max(worst_local, time.monotonic() - started)
                if unreachable_after is None and health(a)["kafka"]["reachable"] is False:
                    unreachable_after = time.monotonic() - stopped
                if js is not None and cut_ms is None and time.monotonic() > stopped + 5:
                    cut_ms = time.time() * 1000
                    js.drop("cut", ids=[cid])
                if cut_ms is not None and answer_s is None:
                    answer_s = answer_after(js, cid, cut_ms)
                if burst is None and time.monotonic() > stopped + 10:
                    burst = burster.call("burst", {"n": BURST, "pad": PAD, "tag": "b",
                                                   "room": unique("nobody")}, timeout=120)
                for server in (a, b):
                    peak[server.label] = max(peak[server.label], rss(server))
                time.sleep(1)
            during = {"A": health(a), "B": health(b)}
            refused = stats(a)["records_refused"]
        finally:
            node.signal(signal.SIGCONT)
        back = time.monotonic()
        stream.wait_flowing_after(back, timeout=60)
        back_s = time.monotonic() - back
        # Health says reachable again once the records sent before the
        # freeze are acknowledged: their retries may come after delivery of
        # new ones resumed (CI: B still unreachable, 677 records held, when
        # sampled right after the stream flowed; every record delivered).
        def kafka_health() -> dict:
            return {"A": health(a)["kafka"], "B": health(b)["kafka"]}

        def reachable_again() -> dict | None:
            kafka = kafka_health()
            return kafka if all(k["reachable"] for k in kafka.values()) else None

        try:
            after_health = wait_until(reachable_again, HEALTH_BACK_WITHIN_S, 0.5, "health")
        except AssertionError:
            after_health = kafka_health()

        def refusals() -> dict:
            return {s.label: stats(s)["records_refused"] for s in (a, b)}

        # A dyno whose buffer filled during the outage refuses until the
        # cluster has taken enough of its backlog: within BACK_WITHIN_S of
        # the return (a few seconds on a busy machine), then never again.
        refused_back = refusals()
        while time.monotonic() - back < BACK_WITHIN_S:
            time.sleep(1)
            if refusals() == refused_back:
                break
            refused_back = refusals()
        time.sleep(5)
        # Emits made once the cluster was back (and had taken the backlog)
        # were all accepted.
        assert refusals() == refused_back
        stream.stop(timeout=150)
        # Every emit that was not refused is delivered: those accepted during
        # the outage waited in the producer (delivery timeout 120 s).
        stream.settle(timeout=60, must="returned")
        if cut_ms is not None and answer_s is None:
            answer_s = answer_after(js, cid, cut_ms)
        fig = stream.figures(
            f"f.cluster-down-{outage_s:g}s", must="returned",
            rss_before_mb={k: round(v / 2**20, 1) for k, v in before.items()},
            rss_peak_mb={k: round(v / 2**20, 1) for k, v in peak.items()},
            refused=sum(refused.values()), burst=burst,
            unreachable_after_s=None if unreachable_after is None else round(
                unreachable_after, 1),
            back_s=round(back_s, 1), local_worst_s=round(worst_local, 2),
            recovering_answer_s=None if answer_s is None else round(answer_s, 1),
            client=os.environ.get("KAFKA_CLIENT"), runner=runner)
        fig.record(artifacts)
        assert fig.lost == 0, fig.line()
        # Each copy the broker holds may be delivered once (a retry of the
        # producer writes a record again), never more.
        assert fig.redelivered == 0, fig.line()
        # The bound held: the burst was refused beyond it, memory stayed put.
        assert isinstance(burst, dict) and burst["refused"] > BURST // 2, burst
        assert sum(refused.values()) >= burst["refused"], refused
        for label in ("A", "B"):
            assert peak[label] - before[label] < RSS_GROWTH_MAX, fig.line()
            kafka = during[label]["kafka"]
            assert kafka["reachable"] is False, during[label]
            assert kafka["unacknowledged_seconds"] > outage_s - 10, during[label]
            assert after_health[label]["reachable"] is True, after_health
        assert during["A"]["kafka"]["buffered_bytes"] <= BUFFER_BYTES
        assert unreachable_after is not None and unreachable_after < 10, unreachable_after
        assert worst_local < 2.0, f"a local round trip took {worst_local:.1f} s"
        assert back_s < BACK_WITHIN_S, fig.line()
        if js is not None:
            # Recovery's decision is bounded (recovery.handshake.PREPARE_BUDGET): an
            # answer, recovered or a new connection, never silence.
            assert answer_s is not None and answer_s <= ANSWER_WITHIN_S, (
                f"a recovering client got no answer within {ANSWER_WITHIN_S:g} s of its drop "
                f"during the outage ({answer_s})")
    finally:
        node.signal(signal.SIGCONT)
        stream.close()
        if js is not None:
            js.close()
        fleet.close()
