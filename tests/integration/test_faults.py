"""The faults a production cluster has, on a three-node Apache Kafka cluster
(replication factor 3, min.insync.replicas 2, broker.session.timeout.ms 5 s):
two dynos stream every kind of emit and remote joins to each other while a
leader dies, a broker freezes, the whole cluster restarts, a dyno dies
mid-join, or the cluster is down when a dyno starts. Each test prints its
figures and appends them to test-artifacts/faults.jsonl (docs/kafka-faults.md).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from faults import Figures, Stream, active_controller, fenced_after
from kafka import KafkaAdminClient
from kafka.partitioner.default import murmur2

from flask_signalr_kafka.cli.broker import start_broker
from testkit.harness import SERVER_APP, Fleet, ServerProcess, unique

# serial: its tests time a failover, never two at once; a group of its own
# (on its own cluster), which may run beside one test of the main group.
# The timeout guards against a hang: a test here restarts or starves a
# three-node cluster, which took up to 50 s beside make test's workers.
pytestmark = [pytest.mark.serial("faults"), pytest.mark.timeout(300)]

SESSION_TIMEOUT_S = 5.0  # broker.session.timeout.ms of the local cluster
ACK_TIMEOUT = 5.0
#: A killed or hung leader: delivery of every kind is back this soon after
#: the fault (issue 22's target). The cluster fences the node after the
#: session timeout (4.4-5.6 s measured) and elects new leaders; the clients
#: have the rest (docs/kafka-faults.md, "a" and "b").
DELIVERY_BACK_S = 10.0
#: ...and, whenever the cluster fenced it, this soon after the fence.
AFTER_FENCE_S = DELIVERY_BACK_S - SESSION_TIMEOUT_S


def confluent_idempotent(producer: dict) -> bool:
    """The servers run confluent with its (idempotent) producer."""
    return (os.environ.get("KAFKA_CLIENT") == "confluent"
            and producer.get("enable_idempotence", True))


def assert_back_in_time(fig: Figures, controller: bool) -> None:
    """Delivery resumed within DELIVERY_BACK_S of the fault, and within
    AFTER_FENCE_S of the fence. A leader that was also the active KRaft
    controller is fenced only after a controller election and a whole new
    session timeout (10.2 s after a SIGSTOP here): no client can be back
    before that, so only the second bound holds for it."""
    fenced = fig.extra["fenced_after_s"]
    assert fenced is not None, fig.line()
    assert fig.back_s is not None and fig.back_s <= fenced + AFTER_FENCE_S, fig.line()
    if not controller:
        assert fig.back_s <= DELIVERY_BACK_S, fig.line()


@pytest.fixture(scope="module")
def cluster3(artifacts):
    cluster = start_broker("kafka", nodes=3, log_dir=artifacts)
    yield cluster
    cluster.stop()


@pytest.fixture
def fleet3(cluster3, artifacts):
    """A fleet of its own on a whole cluster (a previous test may have left a
    node down)."""
    for node in cluster3.nodes:
        if not node.running():
            cluster3.start_node(node.node_id)
    cluster3.wait_ready(120)
    fleet = Fleet(cluster3, artifacts, prefix=unique("f"))
    yield fleet
    fleet.close()


def dyno(fleet: Fleet, label: str, **env) -> ServerProcess:
    env = {"REPLICATION_FACTOR": 3, "TRACK_PRODUCE": 1, "ACK_TIMEOUT": ACK_TIMEOUT, **env}
    return fleet.server(label, **env)


def busiest_leader(cluster, fleet: Fleet, stream: Stream) -> tuple[int, int]:
    """The node leading the most partitions the stream's keys land on, and
    how many it leads; not the active KRaft controller when another node
    leads any (see assert_back_in_time)."""
    keys = [("send-group", rx.room) for rx in stream.rx.values()]
    keys += [("send-user", rx.user) for rx in stream.rx.values()]
    keys += [("send-conn", rx.sid) for rx in stream.rx.values()]
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        described = {t["name"]: t["partitions"]
                     for t in admin.describe_topics([fleet.topic(b) for b, _ in keys])}
    finally:
        admin.close()
    leaders: Counter = Counter()
    for base, key in keys:
        partitions = sorted(described[fleet.topic(base)], key=lambda p: p["partition_index"])
        index = (murmur2(key.encode()) & 0x7FFFFFFF) % len(partitions)
        leaders[partitions[index]["leader_id"]] += 1
    controller = active_controller(cluster)
    others = [(node, led) for node, led in leaders.most_common() if node != controller]
    return others[0] if others else leaders.most_common(1)[0]


def assert_every_acknowledged_delivered(fig: Figures, stream: Stream) -> None:
    assert fig.emitted > 0 and fig.delivered > 0
    assert fig.lost == 0, fig.line()
    # A dyno delivers a record once per copy the broker holds, never more
    # (its consumer never rereads); a retry may write a record 3 times.
    assert fig.redelivered == 0, fig.line()
    assert stream.joined_rooms_missing() == [], "a join that returned ok was not applied"
    # A remote join returns or raises within ack_timeout (+ scheduling slack).
    assert fig.join_max_s <= ACK_TIMEOUT + 3, fig.line()


LEADER_KILL_CASES = {
    # The client's shipped producer: not idempotent with kafka-python (the
    # measured default, client_config.py), idempotent with confluent.
    "shipped": ({}, False),
    # Idempotence on, the other side of that measurement; then awaiting
    # each produce.
    "idempotent": ({"enable_idempotence": True}, False),
    "await_produce": ({}, True),
}


#: The first test of the module also starts the three-node cluster (25-60 s
#: on a loaded machine): pyproject's 120 s stopped the kill test mid-run.
FAULT_TEST_TIMEOUT_S = 300


@pytest.mark.timeout(FAULT_TEST_TIMEOUT_S)
@pytest.mark.parametrize("case", [
    pytest.param(case, marks=pytest.mark.confluent) if case == "shipped" else case
    for case in LEADER_KILL_CASES])
def test_leader_killed(fleet3, cluster3, artifacts, case):
    producer, await_produce = LEADER_KILL_CASES[case]
    env = {"PRODUCER_JSON": json.dumps(producer), "AWAIT_PRODUCE": int(await_produce)}
    a, b = dyno(fleet3, "A", **env), dyno(fleet3, "B", **env)
    stream = Stream(fleet3, a, b)
    try:
        stream.start()
        stream.wait_flowing()
        time.sleep(2)
        victim, led = busiest_leader(cluster3, fleet3, stream)
        controller = victim == active_controller(cluster3)
        killed_at, killed_wall = time.monotonic(), time.time()
        cluster3.node(victim).signal(signal.SIGKILL)
        # Long enough to see delivery resume within the bound, and then some.
        time.sleep(DELIVERY_BACK_S + 8)
        stream.stop()
        cluster3.start_node(victim)
        must = "returned" if await_produce else "acked"
        stream.settle(must=must)
        fig = stream.figures(f"a.leader-killed[{case}]", must=must, node=victim,
                             partitions_led=led,
                             killed_after_s=round(killed_at - stream.started, 1),
                             fault_at=killed_at, controller=controller,
                             fenced_after_s=fenced_after(cluster3, victim, killed_wall))
        fig.record(artifacts)
        assert_every_acknowledged_delivered(fig, stream)
        assert_back_in_time(fig, controller)
        if producer.get("enable_idempotence") or confluent_idempotent(producer):
            assert fig.held_twice == fig.duplicated == 0, fig.line()
        if await_produce:
            for report in stream.reports.values():
                # Every record whose produce failed made its emit raise.
                assert set(report["failed"]) <= set(report["raised"]), report["raised"]
    finally:
        stream.close()


@pytest.mark.timeout(FAULT_TEST_TIMEOUT_S)
@pytest.mark.confluent
def test_broker_frozen(fleet3, cluster3, artifacts):
    a, b = dyno(fleet3, "A"), dyno(fleet3, "B")
    stream = Stream(fleet3, a, b)
    local = fleet3.client(a)
    try:
        stream.start()
        stream.wait_flowing()
        time.sleep(2)
        victim, led = busiest_leader(cluster3, fleet3, stream)
        frozen = cluster3.node(victim)
        controller = victim == active_controller(cluster3)
        frozen_at, frozen_wall = time.monotonic(), time.time()
        frozen.signal(signal.SIGSTOP)
        # The dyno serves its own clients throughout the freeze.
        worst = 0.0
        end = time.monotonic() + 20
        try:
            while time.monotonic() < end:
                started = time.monotonic()
                assert local.call("whoami", timeout=10)["server"] == "A"
                word = unique("local")
                local.call("emit", {"event": "mine", "data": word, "to": local.sid}, timeout=10)
                local.wait_for("mine", (word,), timeout=10)
                worst = max(worst, time.monotonic() - started)
                time.sleep(0.5)
        finally:
            frozen.signal(signal.SIGCONT)
        time.sleep(8)
        stream.stop()
        stream.settle()
        fig = stream.figures("b.broker-frozen-20s", node=victim, partitions_led=led,
                             local_worst_s=round(worst, 2), fault_at=frozen_at,
                             controller=controller,
                             fenced_after_s=fenced_after(cluster3, victim, frozen_wall))
        fig.record(artifacts)
        assert_every_acknowledged_delivered(fig, stream)
        assert_back_in_time(fig, controller)
        if confluent_idempotent({}):
            assert fig.held_twice == fig.duplicated == 0, fig.line()
        assert worst < 2.0, f"a local call took {worst:.1f} s during the freeze"
    finally:
        stream.close()


def test_cluster_restarted(fleet3, cluster3, artifacts):
    # Idempotent: with the shipped producer (not idempotent) the broker held
    # 8 records twice in each of two runs (retried batches it had written
    # before going down); the consumers never re-read (asserted below too).
    env = {"PRODUCER_JSON": json.dumps({"enable_idempotence": True})}
    a, b = dyno(fleet3, "A", **env), dyno(fleet3, "B", **env)
    stream = Stream(fleet3, a, b)
    try:
        stream.start()
        stream.wait_flowing()
        time.sleep(2)
        started = time.monotonic()
        cluster3.restart()
        down = time.monotonic() - started
        # Each dyno resumes: records emitted from now on reach the other.
        stream.wait_flowing_after(time.monotonic(), timeout=60)
        stream.stop()
        stream.settle()
        fig = stream.figures("c.cluster-restarted", restart_s=round(down, 1))
        fig.record(artifacts)
        assert_every_acknowledged_delivered(fig, stream)
        assert fig.duplicated == 0, fig.line()
    finally:
        stream.close()


def test_dyno_killed_mid_join(fleet3, artifacts):
    a, b, c = dyno(fleet3, "A"), dyno(fleet3, "B"), dyno(fleet3, "C")
    stream = Stream(fleet3, a, c)
    doomed = fleet3.client(b)
    caller = fleet3.client(a)
    try:
        stream.start()
        stream.wait_flowing()
        # Frozen first so that it cannot answer before it dies: the join is
        # published and waiting when B is killed.
        b.process.send_signal(signal.SIGSTOP)
        outcome = {}

        def join():
            started = time.monotonic()
            outcome["result"] = caller.call("join", {"room": unique("r"), "sid": doomed.sid},
                                            timeout=ACK_TIMEOUT + 30)
            outcome["seconds"] = time.monotonic() - started

        joining = threading.Thread(target=join)
        joining.start()
        time.sleep(0.5)
        b.stop(signal.SIGKILL)
        joining.join(ACK_TIMEOUT + 30)
        assert outcome.get("result") == "timeout", outcome
        assert ACK_TIMEOUT - 0.5 <= outcome["seconds"] <= ACK_TIMEOUT + 3, outcome
        time.sleep(2)
        stream.stop()
        stream.settle()
        fig = stream.figures("d.dyno-killed-mid-join", join_s=round(outcome["seconds"], 2))
        fig.record(artifacts)
        # A and C, and their remote joins, were not affected.
        assert_every_acknowledged_delivered(fig, stream)
        assert fig.joins_timeout == fig.joins_error == 0, fig.line()
        assert fig.duplicated == 0, fig.line()
    finally:
        stream.close()


def test_cluster_down_at_dyno_start(fleet3, cluster3, artifacts):
    """The dyno fails within connect_timeout with BrokerUnavailableError (the
    platform restarts it); once the cluster is up, the restarted dyno serves."""
    for node in cluster3.nodes:
        node.stop()
    connect_timeout = 5
    server = ServerProcess(cluster3.bootstrap, fleet3.prefix, "E", artifacts,
                           REPLICATION_FACTOR=3, CONNECT_TIMEOUT=connect_timeout)
    started = time.monotonic()
    with open(server.log_path, "ab") as out:
        process = subprocess.Popen([sys.executable, str(SERVER_APP)], env=server.env,
                                   stdout=out, stderr=subprocess.STDOUT)
        try:
            code = process.wait(connect_timeout + 30)
        finally:
            process.kill()
    failed_after = time.monotonic() - started
    log = server.log()
    Figures("e.cluster-down-at-start", extra={"exit": code, "failed_after_s": round(
        failed_after, 1), "connect_timeout_s": connect_timeout}).record(artifacts)
    assert code != 0
    assert "BrokerUnavailableError" in log and cluster3.nodes[0].address in log, log[-2000:]
    # Python startup and imports come on top of connect_timeout: 2-5 s
    # alone, 15 s measured beside make test's other workers. A dyno that
    # did not give up by itself would still run at connect_timeout + 30.
    assert failed_after < connect_timeout + 20, failed_after
    cluster3.restart()
    a, b = dyno(fleet3, "A"), dyno(fleet3, "B")
    sender, receiver = fleet3.client(a), fleet3.client(b)
    word = unique("up")
    sender.call("emit", {"event": "e", "data": word})
    receiver.wait_for("e", (word,), timeout=10)

