"""An app's own SIGTERM handler that closes the manager and exits drains the
dyno as the package's handlers do: every session saved, every socket
closed cleanly, and the client recovered on another dyno from its saved
session (not from a checkpoint, the crash path).

Two handlers of tests/server_app.py: ``signal.signal`` (the handler runs in
the gevent hub: close() moves its work to a greenlet and ``sys.exit``'s
atexit waits for it) and gevent's documented pattern, a greenlet spawned by
``gevent.signal_handler`` that calls close() and then ``os._exit(0)``, which
waits for nothing (close() must return only when its work is done).

Only the spawned handler is held to a drain that hands the client over from
its saved session: a ``signal.signal`` handler's ``sys.exit`` raises inside
whatever greenlet the signal interrupted, kafka-python's I/O loop among
them (seen once in seven runs: the drain's flush then timed out, the
socket was cut first, and the client was recovered from a checkpoint,
exactly, all the same). The
package's own handler (a greenlet of its own) runs beside the app's and
waits for the same close; it lets the app's handler finish before it ends
the process.
"""
import signal
import time

import pytest
import requests
from test_recovery import (
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

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def js(artifacts):
    driver = NodeClients(max_seconds=200, log_path=artifacts / "app-sigterm-driver.log")
    yield driver
    driver.close()


@pytest.mark.parametrize("handler", ["spawn", "1"])
def test_app_sigterm_handler_drains_to_another_dyno(new_fleet, js, handler):
    a, b = servers(new_fleet, "A", "B", APP_SIGTERM=handler, LOG_LEVEL="INFO")
    cid, sid = add_client(js, [a, b], announce=True)
    streams = Streams(new_fleet.client(b), cid, sid)
    streams.start()
    time.sleep(1)
    a.stop(signal.SIGTERM)
    wait_until(lambda: len(received(js, cid)[0]["connectLog"]) >= 2, 40, 0.2, "a reconnect")
    time.sleep(3)  # a recovered connection stays connected, and gets the live events
    sent = streams.stop()
    client, got = settled(js, cid, sent)
    log = a.log()
    assert "drained: 1 connections saved and closed" in log, log[-3000:]
    assert_recovered(client)
    assert str(b.port) in str(client["connectLog"][1]["upstream"])
    assert_exact(client, got, sent)
    if handler == "spawn":
        stats = requests.get(b.url + "/stats", timeout=5).json()
        assert stats["recoveries_from_checkpoint"] == 0, stats
        # The package's own handler, beside the app's, let the app finish.
        assert "closed at SIGTERM; exiting" in log
        assert a.process.returncode == 0
