"""Fleet queries benchmark (`make bench-fleet-queries`): what the fleet API
costs (docs/fleet.md).

One Apache Kafka node; tests/server_app.py dynos (gevent), black-box:

- **Queries.** 4 dynos with CONNECTIONS lean websocket clients each
  (testkit/ws_reader.py); a python-socketio client on dyno 0 asks it for
  ``fetch_sockets()`` (every connection of the fleet) QUERIES times, then
  for ``server_side_emit`` with a callback (every other dyno's handler
  answers) QUERIES times. Reported: p50 and p99 of the time the call took
  on the dyno, and the sockets each answer held.
- **Idle heartbeats.** Fleets of 2, 4 and 8 dynos without clients: each
  dyno's CPU over IDLE seconds, all of its idle work (fetch loops included).
  What grows with the fleet is what the others' heartbeats cost; the
  heartbeats of a 50-dyno fleet are then simulated on a 2-dyno fleet (48
  more origins, each beating at the start of every 5 s slot as servers do,
  scattered over SPREAD seconds, written to the fleet topic) and the
  difference measured directly.

- **Node.js** (``--node``): the same on a Node.js Socket.IO 4.8 cluster with
  @socket.io/redis-streams-adapter (loadtests/node-fleet/, npm; a Debian
  redis-server): ``io.fetchSockets()`` and ``io.serverSideEmitWithAck()``
  timed on the server, and the idle CPU of 2, 4 and 8 servers.

Writes loadtests/results/fleet-queries-<time>.md and .json and prints the
table.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import requests
from bench import start_redis
from kafka import KafkaProducer

from flask_signalr_kafka.cli.broker import free_port, start_broker, wait_for_port
from flask_signalr_kafka.fleet.liveness import HEARTBEAT_INTERVAL
from flask_signalr_kafka.wire import fleet_records
from testkit.harness import Fleet
from testkit.measure import cpu_seconds, percentile, raise_fd_limit, write_report
from testkit.ws_reader import Reader

HERE = Path(__file__).parent
NODE_DIR = HERE / "node-fleet"


def queries(broker, args, log_dir: Path) -> dict:
    fleet = Fleet(broker, log_dir)
    readers = []
    try:
        dynos = [fleet.server(f"q{i}") for i in range(4)]
        readers = [Reader("127.0.0.1", d.port, args.connections) for d in dynos]
        asker = fleet.client(dynos[0])
        total = 4 * args.connections + 1
        fetch, sizes = [], set()
        for i in range(args.queries + 5):
            answer = asker.call("fleet", {"op": "fetch_sockets", "timeout": 10.0})
            assert "error" not in answer, answer
            sizes.add(len(answer["sockets"]))
            if i >= 5:  # the first few warm up the producer and the fetches
                fetch.append(answer["elapsed"] * 1000)
        emit = []
        for i in range(args.queries + 5):
            answer = asker.call("fleet", {"op": "server_side_emit", "event": "whoareyou",
                                          "callback": True, "timeout": 10.0})
            assert "error" not in answer and len(answer["responses"]) == 3, answer
            if i >= 5:
                emit.append(answer["elapsed"] * 1000)
        out = {"dynos": 4, "connections_per_dyno": args.connections,
               "sockets_per_answer": sorted(sizes), "expected_sockets": total,
               "fetch_sockets_p50_ms": percentile(fetch, 0.5),
               "fetch_sockets_p99_ms": percentile(fetch, 0.99),
               "server_side_emit_p50_ms": percentile(emit, 0.5),
               "server_side_emit_p99_ms": percentile(emit, 0.99)}
        print(f"queries: fetch_sockets of {sorted(sizes)} sockets p50 "
              f"{out['fetch_sockets_p50_ms']:.1f} ms p99 {out['fetch_sockets_p99_ms']:.1f} ms; "
              f"server_side_emit p50 {out['server_side_emit_p50_ms']:.1f} ms", flush=True)
        return out
    finally:
        for r in readers:
            r.close()
        fleet.close()


def idle_cpu(dynos, seconds: float) -> list[float]:
    """Each dyno's CPU over ``seconds``, in % of one core."""
    before = [cpu_seconds(d.process.pid) for d in dynos]
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return [(cpu_seconds(d.process.pid) - b) / elapsed * 100 for d, b in zip(dynos, before,
                                                                          strict=True)]


def beat_as(origins: list[str], topic: str, bootstrap: str, stop: threading.Event,
            spread: float) -> None:
    """Heartbeats of ``origins`` as real servers send them: each from a
    producer of its own, at the start of every HEARTBEAT_INTERVAL slot of the
    wall clock, the servers' clocks and wake-ups scattered over ``spread``
    seconds."""

    def server(origin: str) -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
        value = fleet_records.encode(fleet_records.Heartbeat(origin))
        while True:
            slot_start = (time.time() // HEARTBEAT_INTERVAL + 1) * HEARTBEAT_INTERVAL
            if stop.wait(slot_start + random.uniform(0, spread) - time.time()):
                break
            producer.send(topic, value, partition=0)
        producer.close()

    threads = [threading.Thread(target=server, args=(o,)) for o in origins]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def heartbeats(broker, args, log_dir: Path) -> dict:
    out = {}
    for size in (2, 4, 8):
        fleet = Fleet(broker, log_dir)
        try:
            dynos = [fleet.server(f"h{size}-{i}") for i in range(size)]
            time.sleep(args.settle)
            per_dyno = idle_cpu(dynos, args.idle)
            out[size] = {"cpu_pct_per_dyno": sum(per_dyno) / size, "each": per_dyno,
                         "heartbeats_read_per_s": (size - 1) / HEARTBEAT_INTERVAL}
            print(f"idle: {size} dynos, {sum(per_dyno) / size:.2f}% of a core per dyno",
                  flush=True)
            if size == 2:
                stop = threading.Event()
                others = [f"simulated_{i:032x}" for i in range(48)]
                beater = threading.Thread(target=beat_as, args=(
                    others, fleet.topic("fleet"), broker.bootstrap, stop, args.spread))
                beater.start()
                try:
                    time.sleep(args.settle)
                    loaded = idle_cpu(dynos, args.idle)
                finally:
                    stop.set()
                    beater.join()
                out["2+48 simulated"] = {
                    "cpu_pct_per_dyno": sum(loaded) / 2, "each": loaded,
                    "heartbeats_read_per_s": 49 / HEARTBEAT_INTERVAL}
                print(f"idle: 2 dynos + 48 simulated, {sum(loaded) / 2:.2f}% of a core per dyno",
                      flush=True)
        finally:
            fleet.close()
    return out


class NodeServer:
    """loadtests/node-fleet/server.js: one Node.js Socket.IO 4.8 server on the
    Redis streams adapter."""

    def __init__(self, redis_url: str, log_dir: Path, label: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / f"node-fleet-{label}.log", "ab")
        self.process = subprocess.Popen(
            ["node", "server.js"], cwd=NODE_DIR, stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PORT=str(self.port), REDIS_URL=redis_url))
        wait_for_port(self.port)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)
        self.log.close()


def node_cluster(args, log_dir: Path) -> dict:
    """The same queries and idle measures on a Node.js cluster."""
    if not (NODE_DIR / "node_modules").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR,
                       check=True)
    redis, redis_url = start_redis(log_dir)
    out: dict = {}
    try:
        servers = [NodeServer(redis_url, log_dir, f"q{i}") for i in range(4)]
        readers = []
        try:
            readers = [Reader("127.0.0.1", s.port, args.connections) for s in servers]
            timings = {}
            for path in ("/fetch", "/emit"):
                got = []
                for i in range(args.queries + 5):
                    answer = requests.get(servers[0].url + path, timeout=30).json()
                    if i >= 5:
                        got.append(answer["ms"])
                timings[path] = (got, answer["n"])
            out["queries"] = {
                "sockets": timings["/fetch"][1], "answers": timings["/emit"][1],
                "fetch_sockets_p50_ms": percentile(timings["/fetch"][0], 0.5),
                "fetch_sockets_p99_ms": percentile(timings["/fetch"][0], 0.99),
                "server_side_emit_p50_ms": percentile(timings["/emit"][0], 0.5),
                "server_side_emit_p99_ms": percentile(timings["/emit"][0], 0.99)}
            q = out["queries"]
            print(f"node: fetchSockets of {q['sockets']} p50 {q['fetch_sockets_p50_ms']:.1f} ms "
                  f"p99 {q['fetch_sockets_p99_ms']:.1f} ms; serverSideEmitWithAck p50 "
                  f"{q['server_side_emit_p50_ms']:.1f} ms", flush=True)
        finally:
            for r in readers:
                r.close()
            for s in servers:
                s.stop()
        for size in (2, 4, 8):
            servers = [NodeServer(redis_url, log_dir, f"h{size}-{i}") for i in range(size)]
            try:
                time.sleep(args.settle)
                per_server = idle_cpu(servers, args.idle)
                out[size] = sum(per_server) / size
                print(f"node idle: {size} servers, {out[size]:.2f}% of a core per server",
                      flush=True)
            finally:
                for s in servers:
                    s.stop()
    finally:
        redis.terminate()
        redis.wait(10)
    return out


def markdown(report: dict) -> str:
    q, h = report["queries"], report["heartbeats"]
    lines = [
        f"# Fleet queries, {report['date']}",
        "",
        f"{report['machine']}; load average before {report['load_before'][0]:.2f}. "
        "One Apache Kafka node, tests/server_app.py dynos (gevent).",
        "",
        f"## Queries: 4 dynos, {q['connections_per_dyno']:,} connections each",
        "",
        "| call | p50 | p99 |",
        "|---|---|---|",
        f"| `fetch_sockets()` ({q['expected_sockets']:,} sockets) | "
        f"{q['fetch_sockets_p50_ms']:.1f} ms | {q['fetch_sockets_p99_ms']:.1f} ms |",
        f"| `server_side_emit(..., callback=...)` (3 answers) | "
        f"{q['server_side_emit_p50_ms']:.1f} ms | {q['server_side_emit_p99_ms']:.1f} ms |",
        "",
        "## Idle CPU per dyno (all its idle work; heartbeats are what grows)",
        "",
        "| fleet | heartbeats read per dyno | CPU per dyno (% of a core) |",
        "|---|---|---|",
    ]
    for size, row in h.items():
        lines.append(f"| {size} | {row['heartbeats_read_per_s']:.1f}/s | "
                     f"{row['cpu_pct_per_dyno']:.2f}% |")
    two, fifty = h[2], h["2+48 simulated"]
    extra = fifty["cpu_pct_per_dyno"] - two["cpu_pct_per_dyno"]
    lines += ["", f"48 more servers' heartbeats ({48 / HEARTBEAT_INTERVAL:.1f}/s) cost a dyno "
              f"{extra:+.2f}% of a core.", ""]
    node = report.get("node")
    if node:
        nq = node["queries"]
        lines += [
            "## Node.js Socket.IO 4.8 on @socket.io/redis-streams-adapter, same machine",
            "",
            "| call | p50 | p99 |",
            "|---|---|---|",
            f"| `io.fetchSockets()` ({nq['sockets']:,} sockets) | "
            f"{nq['fetch_sockets_p50_ms']:.1f} ms | {nq['fetch_sockets_p99_ms']:.1f} ms |",
            f"| `io.serverSideEmitWithAck()` ({nq['answers']} answers) | "
            f"{nq['server_side_emit_p50_ms']:.1f} ms | {nq['server_side_emit_p99_ms']:.1f} ms |",
            "",
            "| servers | idle CPU per server (% of a core) |",
            "|---|---|",
            *(f"| {size} | {node[size]:.2f}% |" for size in (2, 4, 8)),
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000, help="per dyno")
    parser.add_argument("--queries", type=int, default=200, help="calls of each kind")
    parser.add_argument("--idle", type=float, default=30, help="seconds of each idle measure")
    parser.add_argument("--settle", type=float, default=6, help="seconds before measuring")
    parser.add_argument("--spread", type=float, default=0.02,
                        help="seconds over which simulated servers' heartbeats scatter")
    parser.add_argument("--node", action="store_true",
                        help="also a Node.js Socket.IO cluster on the Redis streams adapter")
    parser.add_argument("--skip", default="", help="queries or heartbeats")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    out_dir = Path(args.out)
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    raise_fd_limit(4 * args.connections + 1000)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
        "load_before": os.getloadavg(),
    }
    with start_broker("kafka", log_dir=log_dir) as broker:
        if "queries" not in args.skip:
            report["queries"] = queries(broker, args, log_dir)
        if "heartbeats" not in args.skip:
            report["heartbeats"] = heartbeats(broker, args, log_dir)
    if args.node:
        report["node"] = node_cluster(args, log_dir)
    if "queries" in report and "heartbeats" in report:
        write_report(out_dir, "fleet-queries", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
