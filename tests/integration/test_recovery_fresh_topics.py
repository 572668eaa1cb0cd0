"""Connection state recovery from the first second of a fleet: topics just
created, a client connected at once, its dyno killed two seconds later
(issue 22, item 2). Kafka may name a partition's leader before that broker
acts as one, so the first writes to a new sessions partition can be
refused (``NotLeaderForPartitionError``) for a while; the same window opens
after every leader election. A connection's first session must be durable
before the dyno counts it, or a dyno dying in that window takes its
clients' sessions along ("no session with this pid")."""
import signal
import time

import pytest
import requests

from testkit.harness import ServerProcess, unique, wait_until
from testkit.node_clients import NodeClients

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def js(artifacts):
    driver = NodeClients(max_seconds=150, log_path=artifacts / "csr-driver.log")
    yield driver
    driver.close()


def serving(server):
    """Start ``server`` and return once it answers HTTP, ready or not: a new
    user's app takes connections as soon as it listens."""
    def answers():
        if server.process.poll() is not None:
            raise AssertionError(f"server {server.label} exited: {server.log()[-2000:]}")
        try:
            return requests.get(server.url + "/ready", timeout=1).status_code in (200, 503)
        except requests.RequestException:
            return False

    server.ready = answers
    return server.start()


def report(js, cid):
    (client,) = [c for c in js.report("full") if c["id"] == cid]
    return client


@pytest.mark.parametrize("after", [0.0, 2.0])
def test_killed_seconds_after_its_topics_were_created(new_fleet, js, after):
    """Killed ``after`` seconds after its client connected, a second or two
    after it created the topics: the client is recovered on the other dyno."""
    if new_fleet.broker.engine != "kafka":
        pytest.skip("the leader window is Apache Kafka's")
    env = {"CONNECTION_STATE_RECOVERY": 1, "LOG_LEVEL": "INFO"}
    a, b = (ServerProcess(new_fleet.broker.bootstrap, new_fleet.prefix, label,
                          new_fleet.artifacts, **env) for label in ("A", "B"))
    new_fleet.servers += [a, b]
    serving(a)  # it created the topics at its start
    serving(b)
    cid = unique("c")
    js.add([{"id": cid, "urls": [a.url, b.url], "auth": {"user": f"u-{cid}", "csr": True},
             "rooms": [f"r-{cid}"], "policy": "rotate"}],
           reconnectionDelay=100, reconnectionDelayMax=300)
    sid = js.wait_ready([cid], 30)[cid]
    time.sleep(after)
    a.stop(signal.SIGKILL)
    wait_until(lambda: len(report(js, cid)["connectLog"]) >= 2, 40, 0.2, "the client back")
    connects = report(js, cid)["connectLog"]
    assert str(b.port) in str(connects[1]["upstream"]), connects
    assert connects[1]["recovered"] is True, (connects, b.log()[-3000:])
    assert connects[1]["sid"] == sid
