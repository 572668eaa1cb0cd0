"""The soak (issue 22): a fleet of dynos of every kind (gevent, threading,
uvicorn, gunicorn), real socket.io-client clients each behind its own
balancer, half of them announcing recovery, emits of the four kinds from a
dyno no fault touches and from the dynos, and random faults (SIGTERM through
each server's own handling, SIGKILL, a network drop, a blackhole, a kick, a
restart of the whole fleet one dyno at a time), on Apache Kafka; then a
ledger of what every client had to get.

    make soak                                     # 3 minutes, 20 clients
    make soak SOAK_ARGS="--seed 4242"             # replay a run's faults
    .venv/bin/python loadtests/soak.py --duration 60 --runs 3

What is checked and how to read the report: docs/soak.md (the engine is
testkit/soak.py). Each run prints its seed first and its report last, and
writes loadtests/results/soak-<time>-seed<seed>.json and .txt. The exit
status is 1 when a run failed a target.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from testkit.harness import bootstrap_or_broker
from testkit.soak import FAULTS, KINDS, recount, report_text, run, write

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, help="the faults' random seed (default: a new one a run)")
    p.add_argument("--runs", type=int, default=1, help="runs in a row, each with its own seed")
    p.add_argument("--duration", type=float, default=180.0, help="seconds of emits and faults")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--kinds", default=",".join(KINDS),
                   help=f"one dyno per entry, of {', '.join(KINDS)} (default: one of each)")
    p.add_argument("--faults", default=",".join(FAULTS),
                   help=f"the fault kinds to draw from, of {', '.join(FAULTS)}")
    p.add_argument("--interval", type=float, default=8.0,
                   help="mean seconds between one fault's end and the next (uniform 0.5-1.5x)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="the undisturbed emitter's emits per second per stream")
    p.add_argument("--dyno-rate", type=float, default=2.0,
                   help="emits per second each dyno is asked to make")
    p.add_argument("--ping-interval", type=float, default=5.0,
                   help="the dynos' PING_INTERVAL (a blackhole is noticed after it plus "
                        "--ping-timeout)")
    p.add_argument("--ping-timeout", type=float, default=5.0)
    p.add_argument("--max-disconnection", type=float, default=120.0)
    p.add_argument("--client", default=os.environ.get("KAFKA_CLIENT", "kafka-python"),
                   choices=("kafka-python", "confluent"),
                   help="the Kafka client of the Flask dynos (uvicorn's stays kafka-python)")
    p.add_argument("--cover", action="store_true",
                   help="go on past --duration until a fault of each kind came")
    p.add_argument("--recount", metavar="RAW_JSON",
                   help="only count again a run's <prefix>-raw.json (in its log dir) with this "
                        "ledger, and print its totals and failing clients")
    p.add_argument("--bootstrap", help="use this broker instead of starting Apache Kafka")
    args = p.parse_args(argv)
    if args.recount:
        r = recount(args.recount)
        print(json.dumps({k: v for k, v in r["totals"].items()}, indent=1))
        for row in r["per_client"]:
            for line in row["failures"]:
                print(f"{row['id']}: {line}")
        return 0 if r["totals"]["passed"] else 1
    if args.seed is not None and args.runs > 1:
        p.error("--seed replays one run: give --runs 1")
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    passed = True
    with bootstrap_or_broker(args.bootstrap, "kafka", log_dir) as bootstrap:
        for _ in range(args.runs):
            try:
                r = run(bootstrap, seed=args.seed, duration=args.duration, clients=args.clients,
                        kinds=args.kinds.split(","), faults=args.faults.split(","),
                        interval=args.interval, rate=args.rate, dyno_rate=args.dyno_rate,
                        ping_interval=args.ping_interval, ping_timeout=args.ping_timeout,
                        max_disconnection=args.max_disconnection, log_dir=log_dir,
                        kafka_client=args.client, cover=args.cover,
                        say=lambda s: print(s, flush=True))
            except ValueError as exc:
                p.error(str(exc))
            print(report_text(r), flush=True)
            path = write(r, RESULTS)
            print(f"wrote {path.relative_to(RESULTS.parent.parent)} and .txt", flush=True)
            passed = passed and r["totals"]["passed"]
    return 0 if passed else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
