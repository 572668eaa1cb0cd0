"""The rolling-restart proof (issue 8, item 5): real socket.io-client clients
(tests/js/csr_clients.mjs, many in one Node process) on three dynos
(tests/server_app.py), a steady mix of broadcast, room, user and sid emits,
and every dyno in turn restarted or cut off, on Apache Kafka.

    .venv/bin/python loadtests/restart_test.py --kill term --recovery on
    make restart-test                        # term and kill, recovery on and off

What is counted and how: testkit/restart.py.

Kill modes: ``term`` (SIGTERM, started again on its port), ``kill`` (SIGKILL,
started again), ``drop`` (the clients' TCP connections to the dyno are closed
by their proxies: "transport close"), ``blackhole`` (the proxies stop
forwarding and close nothing: the client notices by ping timeout, the dyno
later), ``none`` (no disturbance: the baseline). Results go to
loadtests/results/restart-<time>-<kill>-<recovery>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from testkit.harness import bootstrap_or_broker
from testkit.restart import KILL_MODES, markdown, print_run, run

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kill", default="term",
                   help=f"comma-separated, of {', '.join(KILL_MODES)} (default term)")
    p.add_argument("--recovery", default="on", choices=("on", "off", "both"))
    p.add_argument("--duration", type=float, default=60.0, help="seconds of emitting per run")
    p.add_argument("--clients", type=int, default=60)
    p.add_argument("--dynos", type=int, default=3)
    p.add_argument("--disturb", type=int, default=None,
                   help="disturb only the first N dynos (default: every one in turn)")
    p.add_argument("--rate", type=float, default=4.0, help="emits per second per stream")
    p.add_argument("--max-disconnection", type=float, default=120.0)
    p.add_argument("--ping-timeout-ms", type=int, default=None,
                   help="client-side ping timeout (blackhole mode: detection after the "
                        "server's ping interval plus this)")
    p.add_argument("--announce", action="store_true",
                   help="clients send auth {csr: true}: offsets from their first connection")
    p.add_argument("--engine", default="kafka", choices=("kafka", "tansu"))
    p.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = p.parse_args(argv)
    kills = args.kill.split(",")
    for k in kills:
        if k not in KILL_MODES:
            p.error(f"--kill {k}: not one of {KILL_MODES}")
    recoveries = {"on": [True], "off": [False], "both": [True, False]}[args.recovery]
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with bootstrap_or_broker(args.bootstrap, args.engine, log_dir) as bootstrap:
        for kill in kills:
            for recovery in recoveries:
                print(f"-- kill={kill} recovery={'on' if recovery else 'off'}", flush=True)
                r = run(bootstrap, engine=args.engine, dynos=args.dynos, clients=args.clients,
                        kill=kill, recovery=recovery, duration=args.duration, rate=args.rate,
                        max_disconnection=args.max_disconnection, log_dir=log_dir,
                        ping_timeout_ms=args.ping_timeout_ms, announce=args.announce,
                        disturb_count=args.disturb,
                        say=lambda s: print(s, flush=True))
                print_run(r, say=lambda s: print(s, flush=True))
                results.append(r)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"restart-{stamp}-{'-'.join(kills)}-{args.recovery}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / f"{name}.md").write_text(markdown(results))
    print(f"wrote loadtests/results/{name}.json and .md")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
