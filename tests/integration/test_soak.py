"""The soak, short (`make soak` runs the long one; docs/soak.md): one dyno of
each kind (gevent, threading, uvicorn, gunicorn), 20 real socket.io-client
clients each behind its own balancer, half announcing recovery, emits of the
four kinds from an undisturbed emitter and from the dynos, and a fault every
~4 s for 75 s, and on until one of each kind came (SIGTERM through the app's
handler or uvicorn's, gunicorn's SIGTERM, SIGKILL, a network drop, a
blackhole, a kick, a restart of the whole fleet). The ledger's targets must
all be met: nothing lost, nothing repeated to an announcing client, nothing
out of order, every reconnect but a kicked one recovered with its sid, a
kicked one not recovered, no reconnect loop.

Select it with ``pytest tests/integration/test_soak.py`` or ``-m soak``;
``SOAK_SEED=<seed>`` replays a run's faults (the seed is printed first, and
the report, with the replay command, last). Reports are written to
test-artifacts/soak-*.txt and .json.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from testkit.soak import FAULTS, report_text, run, write

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = [
    pytest.mark.soak,
    pytest.mark.serial,
    pytest.mark.skipif(
        not shutil.which("node") or not (ROOT / "node_modules" / "socket.io-client").is_dir(),
        reason="needs node and `npm ci` (socket.io-client)"),
]

CLIENTS = 20
DURATION = 75.0


@pytest.mark.timeout(420)
def test_soak_short_meets_every_target(broker, artifacts):
    if broker.engine != "kafka":
        pytest.skip("the soak runs on Apache Kafka")
    seed = int(os.environ["SOAK_SEED"]) if os.environ.get("SOAK_SEED") else None
    r = run(broker.bootstrap, seed=seed, duration=DURATION, clients=CLIENTS, interval=4.0,
            cover=True, log_dir=artifacts,
            kafka_client=os.environ.get("KAFKA_CLIENT", "kafka-python"))
    text = report_text(r)
    print(text)
    write(r, Path(artifacts))
    t = r["totals"]
    # the soak itself ran: faults of most kinds, every client counted and
    # disturbed somewhere, arrivals all of what was sent to them
    assert len(r["per_client"]) == CLIENTS
    assert sum(r["fault_counts"].values()) >= 5, text
    assert set(r["fault_counts"]) == set(FAULTS), text  # cover: one of each kind at least
    assert t["reconnects"] >= CLIENTS / 2, text
    assert t["expected"] >= CLIENTS * 3 * DURATION, text
    assert t["unknown"] == 0 and t["stray"] == 0, text
    assert r["emit_failures"] == 0, text
    # the targets: 0 lost, 0 repeated to announcing clients, 0 out of order,
    # every non-kick reconnect recovered with its sid, no kicked client
    # recovered, no loop, every client back
    assert t["failed_targets"] == {}, text
