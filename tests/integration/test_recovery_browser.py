"""Connection state recovery in a real browser (headless Chromium): the
official Socket.IO client with its default options, which a page writes
without announcing anything, gets every event exactly once from its first
drop on, whether its dyno was cut off, killed or stopped. The page reaches
the dynos through a TCP proxy, as a browser reaches a fleet through its
load balancer."""
import signal
import time

import pytest
from test_recovery import Streams, servers

from testkit.harness import TcpProxy, unique, wait_until

pytestmark = [pytest.mark.timeout(180), pytest.mark.spread]


@pytest.mark.parametrize("gone", ["cut", "sigkill", "sigterm"])
def test_browser_with_default_options_gets_every_event_once(new_fleet, browser, gone):
    if new_fleet.broker.engine != "kafka":
        pytest.skip("runs on Apache Kafka; the Node recovery tests run on Tansu too")
    a, b = servers(new_fleet, "A", "B")
    proxy = TcpProxy(a.port)
    try:
        cid = unique("c")
        page = browser(f"{proxy.url}/csr-page?room=r-{cid}&room=user:u-{cid}")
        wait_until(lambda: page.execute_script("return window.joined") == 2, 20, 0.2,
                   "the page in its rooms")
        sid = page.execute_script("return window.connects[0].sid")
        streams = Streams(new_fleet.client(b), cid, sid)
        streams.start()
        time.sleep(1)
        proxy.upstream_port = b.port  # where the balancer sends it next
        if gone == "cut":
            assert proxy.cut() > 0
        else:
            a.stop(signal.SIGKILL if gone == "sigkill" else signal.SIGTERM)
        wait_until(lambda: len(page.execute_script("return window.connects")) >= 2, 40, 0.2,
                   "a reconnect")
        time.sleep(3)  # and it stays connected
        sent = streams.stop()

        def streams_in_page():
            got = {}
            for event in page.execute_script("return window.events"):
                got.setdefault(event["st"], []).append(event["n"])
            return got if all(len(got.get(k, ())) >= sent for k in streams.targets) else None

        got = wait_until(streams_in_page, 20, 0.5, "every stream in the page")
        for kind in streams.targets:
            assert got[kind] == list(range(sent)), f"{kind}: {got[kind]}"
        connects = page.execute_script("return window.connects")
        assert connects == [{"sid": sid, "recovered": False}, {"sid": sid, "recovered": True}]
    finally:
        proxy.close()
