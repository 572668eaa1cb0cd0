"""Connection state recovery on AsyncKafkaManager: real uvicorn servers
(tests/asgi_server_app.py), gevent Flask-SocketIO dynos beside them
(tests/server_app.py), and the official JS client (the driver and checks of
tests/integration/test_recovery.py).

Each test sends numbered streams (a broadcast, the client's room, its user,
its sid) from a python-socketio client on the server the JS client will
come back to, while the JS client's connection or server goes, then checks
the client was recovered with its first sid and got every stream exactly
once, in order.
"""
import signal
import threading
import time
from collections import Counter

import pytest
import requests
from test_recovery import (
    BLACKHOLE_PING_TIMEOUT_MS,
    Streams,
    add_client,
    assert_exact,
    assert_recovered,
    received,
    servers,
    settled,
)

from testkit.harness import wait_until
from testkit.node_clients import NodeClients

pytestmark = [pytest.mark.timeout(240), pytest.mark.spread]

UVICORN = {"RUNNER": "uvicorn"}
#: Events per burst (test_recovered_exactly_while_records_queue_for_the_loop).
BURST = 100
GEVENT: dict = {}


@pytest.fixture
def js(artifacts):
    driver = NodeClients(max_seconds=200, log_path=artifacts / "asgi-csr-driver.log")
    yield driver
    driver.close()


def _recovered_with_every_event(new_fleet, js, a, b, drop, client_options=None):
    """The JS client starts on ``a``, ``drop(cid)`` takes it away, and it
    comes back on ``b``: recovered, exactly."""
    cid, sid = add_client(js, [a, b], announce=True, **(client_options or {}))
    streams = Streams(new_fleet.client(b), cid, sid)
    streams.start()
    time.sleep(1)
    drop(cid)
    wait_until(lambda: len(received(js, cid)[0]["connectLog"]) >= 2, 40, 0.2, "a reconnect")
    time.sleep(3)  # a recovered connection stays connected, and gets the live events
    sent = streams.stop()
    client, got = settled(js, cid, sent)
    assert_recovered(client)
    assert str(b.port) in str(client["connectLog"][1]["upstream"])
    assert_exact(client, got, sent)
    assert sent > 20, sent
    return client


def _succeeded(server):
    return requests.get(server.url + "/stats", timeout=5).json()["recoveries_succeeded"]


def test_cut_off_client_is_recovered_on_another_uvicorn_server(new_fleet, js):
    """Both ends see the cut: the uvicorn server saves the session (in a
    thread), the other one replays what was missed, and then the held-back
    live events, before the CONNECT reply."""
    a, b = servers(new_fleet, "A", "B", **UVICORN)
    _recovered_with_every_event(new_fleet, js, a, b,
                                lambda cid: js.drop("cut", ids=[cid]))
    assert _succeeded(b) == 1 and _succeeded(a) == 0


@pytest.mark.parametrize("kinds", ["gevent-to-uvicorn", "uvicorn-to-gevent"])
def test_recovered_across_kinds_of_server(new_fleet, js, kinds):
    """A mixed fleet: the sessions, offsets and reference points of a
    gevent dyno serve a uvicorn one, and the other way round."""
    first, then = (GEVENT, UVICORN) if kinds == "gevent-to-uvicorn" else (UVICORN, GEVENT)
    (a,) = servers(new_fleet, "A", **first)
    (b,) = servers(new_fleet, "B", **then)
    _recovered_with_every_event(new_fleet, js, a, b,
                                lambda cid: js.drop("cut", ids=[cid]))
    assert _succeeded(b) == 1


def test_uvicorn_sigterm_drains_its_clients_to_another_server(new_fleet, js):
    """At SIGTERM the manager drains before uvicorn cuts the sockets: every
    session saved (no window needed), every socket closed cleanly, and the
    client recovered elsewhere."""
    (a,) = servers(new_fleet, "A", LOG_LEVEL="INFO", **UVICORN)
    (b,) = servers(new_fleet, "B", **UVICORN)
    _recovered_with_every_event(new_fleet, js, a, b, lambda cid: a.stop(signal.SIGTERM))
    assert a.process.returncode is not None
    assert "drained: 1 connections saved and closed" in a.log()


def test_blackholed_client_is_released_by_its_uvicorn_server(new_fleet, js):
    """The client notices the dead network long before its server: it comes
    back while its session is live on the uvicorn server, which is asked to
    let it go (a release: the save in a thread, the old socket closed on the
    loop) and does."""
    a, b = servers(new_fleet, "A", "B", PING_INTERVAL=1, PING_TIMEOUT=20, **UVICORN)
    _recovered_with_every_event(new_fleet, js, a, b,
                                lambda cid: js.drop("blackhole", ids=[cid]),
                                {"pingTimeoutMs": BLACKHOLE_PING_TIMEOUT_MS})
    stats = requests.get(b.url + "/stats", timeout=5).json()
    assert stats["recoveries_from_checkpoint"] == 0


def test_killed_uvicorn_servers_clients_resume_from_its_checkpoint(new_fleet, js):
    """SIGKILL: nothing saved; the checkpoints the uvicorn server wrote from
    its thread say where its client stood."""
    a, b = servers(new_fleet, "A", "B", **UVICORN)
    _recovered_with_every_event(new_fleet, js, a, b, lambda cid: a.stop(signal.SIGKILL))
    stats = requests.get(b.url + "/stats", timeout=5).json()
    assert stats["recoveries_from_checkpoint"] == 1


def test_close_with_recovery_leaves_no_thread_or_task(new_fleet):
    """close() drains (the client's socket closed, its session saved), then
    ends recovery's checkpoints, session reads and threads with the rest."""
    (a,) = servers(new_fleet, "A", **UVICORN)
    client = new_fleet.client(a)
    assert client.call("whoami")["recovered"] is False
    left = requests.post(a.url + "/close", timeout=60).json()
    assert left == {"threads": [], "tasks": []}
    assert client.disconnected.wait(10)


def test_recovered_exactly_while_records_queue_for_the_loop(new_fleet, js):
    """Bursts to the client's room while it comes back to a uvicorn server:
    records that server's consumer has read but its loop has not delivered
    yet are past the replay's end (they reach the connection live), so none
    comes twice and none is lost."""
    a, b = servers(new_fleet, "A", "B", **UVICORN)
    (c,) = servers(new_fleet, "C")  # gevent: a burst is emitted without waiting
    cid, _ = add_client(js, [a, b], announce=True)
    sender, tags, done = new_fleet.client(c), [], threading.Event()

    def bursts():
        while not done.is_set():
            tag = f"b{len(tags)}"
            sender.call("burst", {"n": BURST, "tag": tag, "room": f"r-{cid}"})
            tags.append(tag)
            time.sleep(0.1)

    thread = threading.Thread(target=bursts, daemon=True)
    thread.start()
    time.sleep(1)
    js.drop("cut", ids=[cid])
    wait_until(lambda: len(received(js, cid)[0]["connectLog"]) >= 2, 40, 0.2, "a reconnect")
    time.sleep(2)
    done.set()
    thread.join(10)
    expected = {(tag, i) for tag in tags for i in range(BURST)}

    def counts():
        client, _ = received(js, cid)
        return client, Counter(tuple(args[0]) for _, event, args, _ in client["eventLog"]
                               if event == "burst")

    wait_until(lambda: set(counts()[1]) >= expected, 30, 0.5, "every burst delivered")
    client, got = counts()
    assert_recovered(client)
    assert not [k for k, n in got.items() if n > 1], "delivered twice"
    assert set(got) == expected
