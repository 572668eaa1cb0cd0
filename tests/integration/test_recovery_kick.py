"""The recovery handshake with the official JS client
(tests/js/csr_clients.mjs): no recovery after the server disconnected a
client on purpose (issue 22, item 3; the client keeps its pid and offset
across ``io server disconnect`` and sends them when it connects again, the
driver reconnecting by hand as an app would); and a client that gives up on
a slow recovery and tries again (item 4)."""
import signal
import time

import pytest
import requests
from test_recovery import (  # noqa: F401
    Streams,
    add_client,
    assert_exact,
    assert_recovered,
    js,
    received,
    servers,
    settled,
)

from testkit.harness import wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.spread]


@pytest.mark.parametrize("runner", ["gevent", "uvicorn"])
@pytest.mark.parametrize("how", ["kick", "fleet-disconnect-sockets"])
def test_a_client_the_server_disconnected_is_not_recovered(new_fleet, js, how, runner):  # noqa: F811
    """Kicked by its own dyno (``disconnect(sid)``), or by another dyno's
    ``disconnect_sockets`` (a command through Kafka): the client comes back
    carrying its pid and offset, and is a new connection, without its rooms;
    and the dyno keeps nothing of the old one. KafkaManager (gevent) and
    AsyncKafkaManager (uvicorn) alike."""
    # The client's dyno runs ``runner``; the other (the fleet call's) gevent.
    (a,) = servers(new_fleet, "A", **({"RUNNER": "uvicorn"} if runner == "uvicorn" else {}))
    (b,) = servers(new_fleet, "B")
    cid, sid = add_client(js, [a, b], announce=True, rejoin=False, verifyRooms=True)
    Streams(new_fleet.client(b), cid, sid).one_round()
    settled(js, cid, 1)  # it holds an offset
    if how == "kick":
        assert new_fleet.client(a).call("kick", {"sid": sid}) == "ok"
    else:
        assert new_fleet.client(b).call(
            "fleet", {"op": "disconnect_sockets", "room": f"r-{cid}"}) == "ok"
    wait_until(lambda: len(received(js, cid)[0]["connectLog"]) == 2, 20, 0.2, "a reconnect")
    client, _ = received(js, cid)
    assert client["disconnectLog"][0]["reason"] == "io server disconnect"
    assert client["disconnectLog"][0]["lastOffset"]
    first, again = client["connectLog"]
    assert again["recovered"] is False, client["connectLog"]
    assert again["sid"] != sid and again["pid"] != first["pid"]
    wait_until(lambda: "rooms" in received(js, cid)[0]["connectLog"][1], 10, 0.2, "its rooms")
    rooms = received(js, cid)[0]["connectLog"][1]["rooms"]
    # Only the user room its connect handler joined: not the one it had.
    assert rooms == [f"user:u-{cid}"], rooms
    # Nothing of the old connection stays on the dyno that held it.
    stats = requests.get(a.url + "/stats", timeout=5).json()
    assert stats["recoveries_succeeded"] == 0, stats


@pytest.mark.parametrize("retry", [True, False])
def test_a_client_that_gives_up_on_a_slow_recovery_and_tries_again_is_recovered(
        new_fleet, js, retry):  # noqa: F811
    """Its dyno A hangs (SIGSTOP, checkpoints 1 s apart: alive for 4 s), so
    B's recovery waits for A to release the session (3 s). The client's
    connection is cut meanwhile (a balancer's idle timeout, a connect
    timeout) and it tries again, on B: the second attempt is recovered,
    with every event once. It used to be refused as "duplicate: that
    connection is connected here" (the first attempt left a ghost)."""
    a, b = servers(new_fleet, "A", "B", CHECKPOINT_INTERVAL=1, LOG_LEVEL="INFO")
    cid = f"c-{new_fleet.prefix}"
    js.add([{"id": cid, "urls": [a.url, b.url, b.url], "auth": {"user": f"u-{cid}", "csr": True},
             "rooms": [f"r-{cid}"], "policy": "rotate"}],
           reconnectionDelay=100, reconnectionDelayMax=300)
    sid = js.wait_ready([cid])[cid]
    streams = Streams(new_fleet.client(b), cid, sid, rate=10)
    streams.start()
    time.sleep(1)
    a.process.send_signal(signal.SIGSTOP)
    try:
        assert js.drop("cut", ids=[cid])["count"] == 1

        def on_b():
            (status,) = [c for c in js.status() if c["id"] == cid]
            return status["upstream"] == b.url

        wait_until(on_b, 10, 0.02, "the first attempt on B")
        time.sleep(1.0)  # B waits for A's release
        if retry:
            assert js.drop("cut", ids=[cid])["count"] == 1
        wait_until(lambda: len(received(js, cid)[0]["connectLog"]) >= 2, 20, 0.2,
                   "a reconnect")
        time.sleep(2)
        sent = streams.stop()
    finally:
        a.process.send_signal(signal.SIGCONT)
    client, got = settled(js, cid, sent)
    assert_recovered(client)
    assert_exact(client, got, sent)
