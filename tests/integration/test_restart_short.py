"""The rolling-restart proof, short (loadtests/restart_test.py; `make
restart-test` runs the long one): two dynos, ten real socket.io-client
clients, a stream of broadcast, room, user and sid emits, and the first dyno
SIGTERMed and started again mid-stream. Recovery off measures what is lost
today; recovery on must lose nothing and duplicate nothing. Figures are
printed and appended to test-artifacts/restart-short.jsonl.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from testkit.restart import print_run, run

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = [pytest.mark.skipif(
    not shutil.which("node") or not (ROOT / "node_modules" / "socket.io-client").is_dir(),
    reason="needs node and `npm ci` (socket.io-client)",
), pytest.mark.serial]  # serial: it measures loss (see test_metrics.py)

CLIENTS = 10


def short_run(broker, artifacts, recovery):
    result = run(broker.bootstrap, engine=broker.engine, dynos=2, clients=CLIENTS, kill="term",
                 recovery=recovery, duration=12, rate=4, disturb_count=1, log_dir=artifacts,
                 settle=3)
    print_run(result)
    with open(Path(artifacts) / "restart-short.jsonl", "a") as f:
        f.write(json.dumps({k: v for k, v in result.items() if k != "per_client"}) + "\n")
    rows = result["per_client"]
    # the counting itself: every client was counted, got its streams, and
    # every arrival is an emitted message of one of its four streams
    assert len(rows) == CLIENTS
    assert result["emit_failures"] == 0
    for row in rows:
        assert row["expected"] >= 4 * 4 * 10, row  # 4 streams, 4/s, >= 10 s
        assert row["unknown"] == 0 and row["stray"] == 0, row
        assert row["received"] - row["dup"] + row["lost"] == row["expected"], row
        assert row["connected_at_end"], row
    # the clients of d0 (half of them) were dropped by its SIGTERM, and
    # reconnected to d1; d1's own clients were never dropped
    disturbed = [r for r in rows if r["drops"]]
    calm = [r for r in rows if not r["drops"]]
    assert {r["id"] for r in disturbed} == {f"c{i}" for i in range(0, CLIENTS, 2)}
    for r in disturbed:
        assert r["upstreams"][:2] == ["d0", "d1"], r
        assert r["reasons"] == {"transport close": r["drops"]}, r
    for r in calm:
        assert (r["lost"], r["dup"], r["ooo"]) == (0, 0, 0), r
    return result, disturbed


def test_restart_without_recovery_measures_the_loss(broker, artifacts):
    result, disturbed = short_run(broker, artifacts, recovery=False)
    for r in disturbed:
        assert r["recovered"] == 0 and r["not_recovered"] == r["drops"], r
        # a new sid after the drop: what the app sends to the old one is lost
        assert r["streams"][f"sid:{r['id']}"]["lost"] > 0, r
    assert result["totals"]["lost"] > 0


def test_restart_with_recovery_loses_and_duplicates_nothing(broker, artifacts):
    result, disturbed = short_run(broker, artifacts, recovery=True)
    for r in disturbed:
        assert r["recovered"] == r["drops"] and r["not_recovered"] == 0, r
    t = result["totals"]
    assert (t["lost"], t["dup"], t["ooo"]) == (0, 0, 0), t
