"""Connection state recovery with the real JS client (socket.io-client from
npm, many in one Node process: tests/js/csr_clients.mjs) against real server
processes: the behaviour of CONTRACT.md and the pitfalls of the Node
adapters (NOTES.md).

Each test sends numbered streams (a broadcast, a room, a user, the client's
sid) from a python-socketio client on another dyno while the JS client's
connection is disturbed, then checks every stream arrived exactly once, in
order, and that the client was recovered with its first sid.
"""
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from harness import unique, wait_until

from flask_signalr_kafka.offsets import parse

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtests"))
from restart_test import NodeClients  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def js(artifacts):
    driver = NodeClients(max_seconds=200, log_path=artifacts / "csr-driver.log")
    yield driver
    driver.close()


def servers(fleet, *labels, **env):
    env = {"CONNECTION_STATE_RECOVERY": 1, **env}
    return [fleet.server(label, **env) for label in labels]


def add_client(js, dynos, announce=False, namespace="/", **options):
    cid = unique("c")
    auth = {"user": f"u-{cid}", **({"csr": True} if announce else {})}
    js.add([{"id": cid, "urls": [d.url for d in dynos], "auth": auth, "rooms": [f"r-{cid}"],
             "policy": "rotate", "namespace": namespace}], **options)
    sid = js.wait_ready([cid])[cid]
    return cid, sid


class Streams(threading.Thread):
    """Numbered emits to the client's four kinds of target, from another
    dyno, ``rate`` rounds a second until stopped."""

    def __init__(self, sender, cid, sid, rate=20, namespace="/"):
        super().__init__(daemon=True)
        self.sender, self.rate, self.namespace = sender, rate, namespace
        self.targets = {"all": {}, "room": {"to": f"r-{cid}"}, "user": {"user": f"u-{cid}"},
                        "sid": {"to": sid}}
        self.sent = 0
        self._done = threading.Event()

    def one_round(self):
        for kind, target in self.targets.items():
            self.sender.call("emit", {"event": "s", "data": {"st": kind, "n": self.sent},
                                      "namespace": self.namespace, **target})
        self.sent += 1

    def run(self):
        while not self._done.is_set():
            try:
                self.one_round()
            except Exception:
                if not self._done.is_set():
                    raise
                return
            time.sleep(1 / self.rate)

    def stop(self):
        self._done.set()
        self.join(10)
        return self.sent


def received(js, cid):
    (client,) = [c for c in js.report("full") if c["id"] == cid]
    streams = {}
    for _, event, args, _offset in client["eventLog"]:
        if event == "s":
            streams.setdefault(args[0]["st"], []).append(args[0]["n"])
    return client, streams


def settled(js, cid, sent, timeout=20):
    def done():
        client, streams = received(js, cid)
        if all(len(streams.get(k, [])) >= sent for k in ("all", "room", "user", "sid")):
            return client, streams
        return None

    try:
        return wait_until(done, timeout, 0.5, "every stream delivered")
    except AssertionError:
        return received(js, cid)


def assert_exact(client, streams, sent, allow_duplicates=False):
    for kind in ("all", "room", "user", "sid"):
        got = streams.get(kind, [])
        missing = sorted(set(range(sent)) - set(got))
        assert not missing, f"{kind}: lost {missing[:20]} of {sent}; connects {client['connects']}"
        if not allow_duplicates:
            assert got == list(range(sent)), f"{kind}: duplicated or out of order: {got}"


def assert_recovered(client, times=1):
    connects = client["connectLog"]
    assert len(connects) == times + 1, connects
    first = connects[0]["sid"]
    for again in connects[1:]:
        assert again["recovered"] is True, connects
        assert again["sid"] == first, connects


def test_cut_connection_is_recovered_on_another_dyno(new_fleet, js):
    a, b = servers(new_fleet, "A", "B")
    cid, sid = add_client(js, [a, b])
    streams = Streams(new_fleet.client(b), cid, sid)
    streams.start()
    time.sleep(1)
    assert js.drop("cut", ids=[cid])["count"] == 1
    wait_until(lambda: len(received(js, cid)[0]["connectLog"]) == 2, 20, 0.2, "a reconnect")
    time.sleep(1)
    sent = streams.stop()
    client, got = settled(js, cid, sent)
    assert_recovered(client)
    assert str(b.port) in str(client["connectLog"][1]["upstream"])  # the other dyno
    # Not announced: its first drop is recovered from the window, whole.
    assert_exact(client, got, sent, allow_duplicates=True)


def test_announced_client_gets_every_event_once_across_two_drops(new_fleet, js):
    """With offsets the window is cut exactly; replayed events carry offsets
    too, so the second drop is exact again (the offset advanced)."""
    a, b = servers(new_fleet, "A", "B")
    cid, sid = add_client(js, [a, b], announce=True)
    streams = Streams(new_fleet.client(b), cid, sid)
    streams.start()
    for n in (2, 3):
        time.sleep(1)
        js.drop("cut", ids=[cid])
        wait_until(lambda n=n: len(received(js, cid)[0]["connectLog"]) == n, 20, 0.2,
                   f"reconnect {n - 1}")
    time.sleep(1)
    sent = streams.stop()
    client, got = settled(js, cid, sent)
    assert_recovered(client, times=2)
    assert_exact(client, got, sent)
    second, third = client["connectLog"][1:]
    assert second["offsetSent"] and third["offsetSent"]
    assert second["offsetSent"].split(".")[0] != third["offsetSent"].split(".")[0], (
        "the second offset must come from the dyno that recovered the client")


def test_drop_before_the_first_event(new_fleet, js):
    """Node fails this: no event yet means no offset to send."""
    a, b = servers(new_fleet, "A", "B")
    cid, sid = add_client(js, [a, b])
    streams = Streams(new_fleet.client(b), cid, sid)
    js.drop("cut", ids=[cid])
    streams.one_round()  # while it is away
    wait_until(lambda: len(received(js, cid)[0]["connectLog"]) == 2, 20, 0.2, "a reconnect")
    streams.one_round()
    client, got = settled(js, cid, 2)
    assert client["connectLog"][1]["offsetSent"] is None
    assert_recovered(client)
    assert_exact(client, got, 2)


def test_reconnect_before_the_old_dyno_noticed(new_fleet, js):
    """The client notices a dead network long before its dyno does (ping
    timeout 20 s there): the dyno it comes back to asks the old one to let
    go, and the old one saves the session first."""
    a, b = servers(new_fleet, "A", "B", PING_INTERVAL=1, PING_TIMEOUT=20)
    cid, sid = add_client(js, [a, b], announce=True, pingTimeoutMs=400)
    streams = Streams(new_fleet.client(b), cid, sid)
    streams.start()
    time.sleep(1)
    js.drop("blackhole", ids=[cid])
    wait_until(lambda: len(received(js, cid)[0]["connectLog"]) == 2, 30, 0.2, "a reconnect")
    time.sleep(1)
    sent = streams.stop()
    client, got = settled(js, cid, sent)
    assert client["disconnectLog"][0]["reason"] == "ping timeout"
    assert_recovered(client)
    assert_exact(client, got, sent)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_dyno_stopped_or_killed(new_fleet, js, sig):
    a, b = servers(new_fleet, "A", "B")
    cid, sid = add_client(js, [a, b], announce=True)
    streams = Streams(new_fleet.client(b), cid, sid)
    streams.start()
    time.sleep(1)
    a.stop(sig)
    wait_until(lambda: len(received(js, cid)[0]["connectLog"]) == 2, 30, 0.2, "a reconnect")
    time.sleep(1)
    sent = streams.stop()
    client, got = settled(js, cid, sent)
    assert_recovered(client)
    # A crash leaves only the last checkpoint: nothing lost, a few twice.
    assert_exact(client, got, sent, allow_duplicates=sig == signal.SIGKILL)


def test_quiet_connection_outlives_the_time_limit(new_fleet, js):
    """The limit counts from the drop, not from the last event."""
    a, b = servers(new_fleet, "A", "B", MAX_DISCONNECTION=3)
    cid, sid = add_client(js, [a, b], announce=True)
    time.sleep(5)
    streams = Streams(new_fleet.client(b), cid, sid)
    js.drop("cut", ids=[cid])
    streams.one_round()
    wait_until(lambda: len(received(js, cid)[0]["connectLog"]) == 2, 20, 0.2, "a reconnect")
    client, got = settled(js, cid, 1)
    assert_recovered(client)
    assert_exact(client, got, 1)


def test_back_too_late_is_a_new_connection(new_fleet, js):
    (a,) = servers(new_fleet, "A", MAX_DISCONNECTION=2)
    cid, sid = add_client(js, [a], announce=True)
    a.stop(signal.SIGTERM)
    time.sleep(3.5)
    a.start()
    wait_until(lambda: len(received(js, cid)[0]["connectLog"]) == 2, 30, 0.2, "a reconnect")
    client, _ = received(js, cid)
    again = client["connectLog"][1]
    assert again["recovered"] is False and again["sid"] != sid
    assert not client["errors"] or all("timeout" not in e["message"] for e in client["errors"])


def test_namespace_and_binary_are_recovered(new_fleet, js):
    a, b = servers(new_fleet, "A", "B")
    cid, sid = add_client(js, [a, b], announce=True, namespace="/chat")
    sender = new_fleet.client(b, namespaces=("/", "/chat"))
    js.drop("cut", ids=[cid])
    sender.call("emit", {"event": "bin", "data": b"\x00\x01\xfe", "to": f"r-{cid}",
                         "namespace": "/chat"})
    sender.call("emit", {"event": "elsewhere", "data": "not for /chat"})
    wait_until(lambda: len(received(js, cid)[0]["connectLog"]) == 2, 20, 0.2, "a reconnect")

    def binary_events():
        client, _ = received(js, cid)
        return [args for _, event, args, _ in client["eventLog"] if event == "bin"]

    (args,) = wait_until(binary_events, 10, 0.2, "the binary event")
    assert args[0] == {"type": "Buffer", "data": [0, 1, 254]}
    client, _ = received(js, cid)
    assert_recovered(client)
    assert not [e for e in client["eventLog"] if e[1] == "elsewhere"]


def test_python_clients_get_no_offsets(new_fleet, js):
    """python-socketio Clients never announce recovery: every event reaches
    their handlers with exactly its own arguments, beside a JS client that
    gets offsets, and callbacks work with recovery on."""
    a, b = servers(new_fleet, "A", "B")
    cid, sid = add_client(js, [a], announce=True)
    # A handler with fixed parameters: an appended offset would be a TypeError.
    py = new_fleet.client(a, user=f"u-{cid}", answers={"ask": lambda data: {"got": data}})
    py.call("join", {"room": f"r-{cid}"})
    streams = Streams(new_fleet.client(b), cid, py.sid)
    streams.targets["js-sid"] = {"to": sid}
    streams.one_round()
    for kind in ("all", "room", "user", "sid"):
        py.wait_for("s", ({"st": kind, "n": 0},))
    assert all(len(args) == 1 for args in py.got("s")), py.got("s")
    client, _ = settled(js, cid, 1)
    offsets = [offset for _, event, _args, offset in client["eventLog"] if event == "s"]
    assert offsets and all(parse(o) is not None for o in offsets), offsets
    # A call to the python client on another dyno, answered through Kafka.
    caller = new_fleet.client(b)
    answer = caller.call("call", {"event": "ask", "data": 7, "to": py.sid})
    assert answer == {"answer": {"got": 7}}, answer
