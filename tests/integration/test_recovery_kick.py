"""No recovery after the server disconnected a client on purpose (issue 22,
item 3), with the official JS client (tests/js/csr_clients.mjs), which keeps
its pid and offset across ``io server disconnect`` and sends them when it
connects again (the driver reconnects by hand, as an app would)."""
import pytest
import requests
from test_recovery import Streams, add_client, js, received, servers, settled  # noqa: F401

from testkit.harness import wait_until

pytestmark = pytest.mark.timeout(120)


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
