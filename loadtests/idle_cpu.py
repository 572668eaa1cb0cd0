"""An idle dyno's CPU and a new pair's first remote join, per consumer layout
(issue 23: one client consumer per topic against the core's hot and cold
groups).

For each variant, in rounds (so that a noisy minute hits every variant):
two dynos of ``loadtests/bench_server.py`` on fresh topics (created by the
first, as at a first deploy), ``--clients`` readers on B; the time A's first
``enter_room`` of a B connection takes (B reads group-mgmt, A reads its ack);
then B's CPU (``/proc/<pid>/stat``) over ``--seconds`` with no traffic.
Run under the shared lock::

    flock /work/heavy.lock .venv/bin/python loadtests/idle_cpu.py \\
        --variants ours,ours:CONSUMER_GROUPS=per-topic,ours-confluent --seconds 40

A variant is a bench backend, then ``:NAME=value`` settings for its dynos
(``CONSUMER_GROUPS=per-topic``, ``COLD_FETCH_WAIT_MS``, ``FETCH_MAX_WAIT_MS``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import requests

from flask_signalr_kafka.cli.broker import start_broker
from loadtests.bench import Dyno
from testkit.ws_reader import Reader


def parse(variant: str) -> tuple[str, dict[str, str]]:
    backend, *settings = variant.split(":")
    return backend, dict(s.split("=", 1) for s in settings)


def measure(variant: str, bootstrap: str, args, log_dir: Path) -> tuple[float, float]:
    """(first remote join seconds, B's idle CPU in % of a core)."""
    backend, settings = parse(variant)
    env = {"BOOTSTRAP": bootstrap, "PREFIX": f"idle-{uuid.uuid4().hex[:6]}",
           "FETCH_MAX_WAIT_MS": "", **settings}
    a = Dyno(backend, env, log_dir, "idle-A")
    b = Dyno(backend, env, log_dir, "idle-B")
    reader = Reader("127.0.0.1", b.port, args.clients)
    try:
        sid = reader.connections[0].sid
        r = requests.post(a.url + "/join", json={"sid": sid, "room": "first"}, timeout=30)
        r.raise_for_status()
        join = r.json()["seconds"]
        a.stop()
        time.sleep(2)  # past startup
        cpu0 = b.cpu()
        time.sleep(args.seconds)
        return join, (b.cpu() - cpu0) / args.seconds * 100
    finally:
        reader.close()
        b.stop()
        if a.process.poll() is None:
            a.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="ours,ours:CONSUMER_GROUPS=per-topic")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    variants = args.variants.split(",")
    log_dir = Path("/tmp") / f"idle-cpu-{uuid.uuid4().hex[:6]}"
    log_dir.mkdir()
    figures: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    with start_broker("kafka", log_dir=log_dir) as broker:
        for _ in range(args.rounds):
            for variant in variants:
                join, idle = measure(variant, broker.bootstrap, args, log_dir)
                figures[variant].append((join, idle))
                print(f"{variant:50} first remote join {join * 1000:7.0f} ms  "
                      f"idle {idle:.2f}% of a core", flush=True)
    print("\n| variant | first remote join ms | idle dyno, % of a core |\n|---|---|---|")
    for variant, runs in figures.items():
        joins = ", ".join(f"{j * 1000:.0f}" for j, _ in runs)
        idles = ", ".join(f"{i:.2f}" for _, i in runs)
        mean = statistics.mean(i for _, i in runs)
        print(f"| {variant} | {joins} | {idles} (mean {mean:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
