"""Fleet benchmark (`make bench-fleet`): what a send to one connection costs
the whole fleet as the fleet grows.

2, 4 and 8 dynos (bench_server.py) on one Apache Kafka broker (and a
redis-server for RedisManager), CLIENTS lean websocket readers on each. Each
dyno emits its share of a fixed total rate to random connections anywhere in
the fleet (the "one-conn" phase), then the same with every 10th emit to a
room of every connection and every 50th to everyone ("mixed"). Reported per
backend and fleet size: the whole fleet's CPU seconds per 1,000 deliveries,
bytes each dyno read from its sockets (broker fetches or Redis, and its
clients), p50/p99 latency and loss. Backends: ``ours`` (home
partitions), ``ours-confluent`` (the same on confluent-kafka; its bytes
read leave out librdkafka's sockets, which are not gevent's),
``ours-all`` (``home_partitions=False``), ``redis`` (python-socketio's
RedisManager).

Writes loadtests/results/fleet-<date>.md and .json and prints the table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import requests
from bench import Dyno, start_redis
from broker_warmup import warm

from flask_signalr_kafka.cli.broker import start_broker
from testkit.measure import own_cpu, percentile, write_report
from testkit.ws_reader import Reader

HERE = Path(__file__).parent

BACKENDS = ("ours", "ours-confluent", "ours-all", "redis")


def bytes_read(dyno: Dyno) -> int:
    return requests.get(dyno.url + "/received", timeout=10).json()["bytes"]


def wait_delivered(readers: list[Reader], expected: int, quiet: float = 2.0,
                   limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        got = sum(r.received for r in readers)
        if got >= expected:
            return
        if got != seen:
            seen, since = got, time.monotonic()
        elif time.monotonic() - since > quiet:
            return
        time.sleep(0.05)


def drive(load: dict, timeout: float, item: tuple[int, Dyno]) -> None:
    """One dyno's share of the load (seeded by its index), until it is sent."""
    i, dyno = item
    requests.post(dyno.url + "/mix", json={**load, "seed": i}, timeout=timeout).raise_for_status()


def run_fleet(backend: str, size: int, env: dict, args, log_dir: Path) -> dict:
    dynos, readers = [], []
    try:
        for i in range(size):
            dynos.append(Dyno(backend, env, log_dir, f"fleet{size}-{i}"))
        readers = [Reader("127.0.0.1", d.port, args.clients) for d in dynos]
        sids = [c.sid for r in readers for c in r.connections]
        total = len(sids)
        # Warm up until every dyno's emits reach every other dyno's clients.
        deadline = time.monotonic() + 60
        for r in readers:
            r.reset()
        while min(r.received for r in readers) < args.clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{backend}/{size}: the fleet never connected up")
            for d in dynos:
                d.burst("all", 1)
            time.sleep(0.3)
        time.sleep(1)
        # The fleet's CPU with no traffic (fetch polling, heartbeats): at a
        # fixed total rate it grows with the dynos whatever the backplane,
        # so the marginal cost of a delivery is reported without it too.
        idle0, t0 = sum(d.cpu() for d in dynos), time.monotonic()
        time.sleep(args.idle_seconds)
        idle_rate = (sum(d.cpu() for d in dynos) - idle0) / (time.monotonic() - t0)
        out = {"idle_fleet_cpu_s_per_s": idle_rate}
        phases = {"one-conn": (0, 0), "mixed": (args.room_every, args.all_every)}
        for phase, (room_every, all_every) in phases.items():
            per_dyno = args.rate / size
            n = int(per_dyno * args.seconds)
            emits = n * size
            fanout_emits = sum(1 for s in range(n) if (all_every and s % all_every == all_every - 1)
                               or (room_every and s % room_every == room_every - 1)) * size
            expected = emits - fanout_emits + fanout_emits * total
            for r in readers:
                r.reset(measure=True)
            cpu0 = [d.cpu() for d in dynos]
            started = time.monotonic()
            io0 = [bytes_read(d) for d in dynos]
            gen0 = own_cpu()
            load = {"targets": sids, "n": n, "rate": per_dyno, "room_every": room_every,
                    "all_every": all_every}
            with ThreadPoolExecutor(size) as pool:
                list(pool.map(partial(drive, load, args.seconds * 5 + 60), enumerate(dynos)))
            wait_delivered(readers, expected)
            received = sum(r.received for r in readers)
            cpu = sum(d.cpu() for d in dynos) - sum(cpu0)
            read = [bytes_read(d) - b for d, b in zip(dynos, io0, strict=True)]
            lat = [x * 1000 for r in readers for x in r.latencies]
            out[phase] = {
                "emits": emits, "expected": expected, "received": received,
                "lost": expected - received,
                "fleet_cpu_s": cpu, "fleet_cpu_s_per_1000": cpu / max(received, 1) * 1000,
                "marginal_cpu_s_per_1000": max(0.0, cpu - idle_rate * (
                    time.monotonic() - started)) / max(received, 1) * 1000,
                "bytes_read_per_dyno": sum(read) / size,
                "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
                "generator_cpu_s": own_cpu() - gen0,
            }
            o = out[phase]
            print(f"  {backend:9} {size} dynos {phase:8} "
                  f"{o['fleet_cpu_s_per_1000']:.3f} CPU s/1000 "
                  f"{o['bytes_read_per_dyno'] / 1e6:6.2f} MB/dyno p50 {o['p50_ms']:.1f} "
                  f"p99 {o['p99_ms']:.1f} ms lost {o['lost']}", flush=True)
        return out
    finally:
        for r in readers:
            r.close()
        for d in dynos:
            d.stop()


def markdown(report: dict) -> str:
    lines = [
        f"Machine: {report['machine']}; {report['date']}; Apache Kafka, one node; "
        f"{report['clients']} clients a dyno; {report['rate']:.0f} emits/s in total for "
        f"{report['seconds']:.0f} s a phase; send-conn has 10 partitions.",
        "",
        "| backend | dynos | phase | fleet CPU s / 1,000 deliveries | without idle "
        "| MB read per dyno | p50 / p99 ms | lost / expected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, by_size in report["results"].items():
        for size, phases in by_size.items():
            for phase, o in phases.items():
                if not isinstance(o, dict):
                    continue  # the idle figure
                lines.append(
                    f"| {backend} | {size} | {phase} | {o['fleet_cpu_s_per_1000']:.3f} "
                    f"| {o.get('marginal_cpu_s_per_1000', 0):.3f} "
                    f"| {o['bytes_read_per_dyno'] / 1e6:.2f} | {o['p50_ms'] or 0:.1f} / "
                    f"{o['p99_ms'] or 0:.1f} | {o['lost']} / {o['expected']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--sizes", default="2,4,8")
    parser.add_argument("--clients", type=int, default=4, help="readers per dyno")
    parser.add_argument("--rate", type=float, default=200, help="emits/s, whole fleet")
    parser.add_argument("--seconds", type=float, default=15, help="per phase")
    parser.add_argument("--idle-seconds", type=float, default=5)
    parser.add_argument("--room-every", type=int, default=10)
    parser.add_argument("--all-every", type=int, default=50)
    parser.add_argument("--warm-broker-seconds", type=float, default=60,
                        help="paced traffic through the new broker first, so that no "
                             "backend pays for its JIT (default %(default)s; 0: none)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    out_dir = Path(args.out)
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
        "load_before": os.getloadavg(), "clients": args.clients, "rate": args.rate,
        "seconds": args.seconds, "results": {},
    }
    sizes = [int(s) for s in args.sizes.split(",")]
    with start_broker("kafka", log_dir=log_dir) as broker:
        report["broker_warmup_ms_per_record"] = warm(broker, args.warm_broker_seconds)
        redis_process = redis_url = None
        try:
            for backend in args.backends.split(","):
                report["results"][backend] = {}
                for size in sizes:
                    env = {"BOOTSTRAP": broker.bootstrap,
                           "PREFIX": f"fleet-{backend}-{size}-{uuid.uuid4().hex[:6]}"}
                    if backend == "redis":
                        if redis_process is None:
                            redis_process, redis_url = start_redis(log_dir)
                        env["REDIS_URL"] = redis_url
                    report["results"][backend][size] = run_fleet(backend, size, env, args,
                                                                 log_dir)
        finally:
            if redis_process is not None:
                redis_process.terminate()
                redis_process.wait()
    write_report(out_dir, "fleet", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
