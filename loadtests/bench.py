"""Side-by-side benchmark of Socket.IO backplanes on one machine (`make bench`).

The same workload runs through flask_signalr_kafka's KafkaManager ("ours"),
python-socketio's KafkaManager (with the one-line bytes fix kafka-python 3
needs, otherwise its own design), python-socketio's RedisManager (redis-server
from Debian, started here on loopback), and plain kafka-python produce ->
consume on the same broker as the physical limit.

Two server processes (dynos A and B); A emits, lean websocket readers (see
testkit/ws_reader.py) hold CLIENTS connections on B. For broadcast, one sid on B and a
room of all B's connections it measures: deliveries/s at saturation with loss
counted, latency p50/p90/p99 at a fixed moderate rate, CPU seconds of the two
servers per 1,000 deliveries, and the CPU an idle dyno burns per minute. The
load generator's own CPU is reported too, so its limit is not taken for ours,
and so are the store's (the broker's or redis-server's) and how busy the
machine's cores were in each phase. ``raw-confluent`` adds plain
confluent-kafka at the one-sid rate (loadtests/raw_confluent.py), the floor
under ``ours-confluent``'s latency. A new Apache Kafka is first warmed up
with paced traffic (loadtests/broker_warmup.py), so that the first backend
does not pay for the broker's JIT.

A ``--variant LABEL=BACKEND:VAR=VALUE;...`` runs BACKEND again under
LABEL with those environment variables for its dynos (see bench_server.py:
PRODUCER_CONFIG, CONSUMER_CONFIG, SET), beside the others in the same run.
When redis ran, a second table gives every backend's figures as ratios to
RedisManager's in that run.

Writes loadtests/results/bench-<date>.md and .json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import requests
from broker_warmup import WINDOW, store_pids, warm

from flask_signalr_kafka.cli.broker import ENGINES, free_port, start_broker, wait_for_port
from testkit.measure import (
    cpu_seconds,
    cpu_seconds_of,
    machine_busy_seconds,
    own_cpu,
    percentile,
    write_report,
)
from testkit.ws_reader import Reader

HERE = Path(__file__).parent

BACKENDS = ("ours", "ours-confluent", "ours-threading", "ours-all", "ours-recovery",
            "stock-kafka", "redis")
#: Served by bench_asgi_server.py (AsyncServer under uvicorn) instead.
ASYNC_BACKENDS = ("ours-async", "async-redis")
BACKENDS += ASYNC_BACKENDS
#: The floors: plain clients through the same broker, no server, no sockets.
RAW = ("raw", "raw-confluent")


class Dyno:
    def __init__(self, backend: str, env: dict, log_dir: Path, label: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / f"bench-{backend}-{label}.log", "ab")
        kind = env.get("BACKEND", backend)  # a variant's backend
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / ("bench_asgi_server.py" if kind in ASYNC_BACKENDS
                                          else "bench_server.py"))],
            env={**os.environ, "BACKEND": kind, **env, "PORT": str(self.port)},
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.url + "/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{backend} dyno {label} did not start; see {self.log.name}")
            time.sleep(0.1)

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def burst(self, target: str, n: int, rate: float = 0) -> float:
        r = requests.post(self.url + "/burst", json={"target": target, "n": n, "rate": rate},
                          timeout=600)
        r.raise_for_status()
        return r.json()["seconds"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def settle(reader: Reader, expected: int, quiet: float = 1.5, limit: float = 120) -> None:
    """Wait until every expected delivery arrived, or none came for ``quiet`` s."""
    deadline = time.monotonic() + limit
    seen, since = -1, time.monotonic()
    while reader.received < expected and time.monotonic() < deadline:
        if reader.received != seen:
            seen, since = reader.received, time.monotonic()
        elif time.monotonic() - since > quiet:
            return
        time.sleep(0.05)


def warm_up(backend: str, a: Dyno, reader: Reader, clients: int) -> None:
    """Until a broadcast from A reaches every reader (the stock managers
    start listening only at their first client)."""
    deadline = time.monotonic() + 60
    while reader.received < clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{backend}: A's broadcasts never reached B")
        a.burst("all", 1)
        time.sleep(0.3)


class Counters:
    """CPU seconds so far of the two dynos, the store (the Kafka broker or
    redis-server), this process (the readers) and the whole machine: what
    a phase cost is the difference of two of them."""

    def __init__(self, a: Dyno, b: Dyno, store_pids: list[int]) -> None:
        self.delivering = b.cpu()
        self.servers = a.cpu() + self.delivering
        self.store = cpu_seconds_of(store_pids)
        self.generator = own_cpu()
        self.busy, self.total = machine_busy_seconds()

    def spent(self, later: Counters, deliveries: int) -> dict:
        per = 1000 / max(deliveries, 1)
        return {
            "server_cpu_s_per_1000": (later.servers - self.servers) * per,
            "store_cpu_s_per_1000": (later.store - self.store) * per,
            "generator_cpu_s": later.generator - self.generator,
            # Of all cores: near 1.0, the machine itself is the limit.
            "machine_busy": (later.busy - self.busy) / max(later.total - self.total, 1e-9),
            # Of one core (B's Python runs on one): near 1.0, B is the limit.
            "b_busy": (later.delivering - self.delivering)
            / max((later.total - self.total) / (os.cpu_count() or 1), 1e-9),
        }


def run_backend(backend: str, env: dict, args, log_dir: Path, store_pids: list[int]) -> dict:
    a = Dyno(backend, env, log_dir, "A")
    b = Dyno(backend, env, log_dir, "B")
    # Readers that announce recovery get an offset on every event, as
    # socket.io-client >= 4.6 does once it reconnected.
    reader = Reader("127.0.0.1", b.port, args.clients, announce=backend == "ours-recovery")
    try:
        warm_up(backend, a, reader, args.clients)
        sid = reader.connections[0].sid
        scenarios = {
            "broadcast": ("all", args.clients),
            "one sid": (sid, 1),
            "room": ("bench", args.clients),
        }
        results = {}
        for name, (target, fanout) in scenarios.items():
            n = args.messages if fanout > 1 else args.sid_messages
            expected = n * fanout
            reader.reset()
            before, t0 = Counters(a, b, store_pids), time.time()
            emit_seconds = a.burst(target, n)
            settle(reader, expected)
            received = reader.received
            elapsed = max(reader.last - t0, 1e-9)
            sat = {
                "messages": n, "expected": expected, "received": received,
                "lost": expected - received,
                "deliveries_per_s": received / elapsed,
                "emit_seconds": emit_seconds,
                "seconds": elapsed,
                **before.spent(Counters(a, b, store_pids), received),
            }
            rate = args.rate if fanout > 1 else args.rate * 2
            n_lat = int(rate * args.latency_seconds)
            reader.reset(measure=True)
            before = Counters(a, b, store_pids)
            a.burst(target, n_lat, rate)
            settle(reader, n_lat * fanout)
            # While the paced emits are delivered.
            paced = before.spent(Counters(a, b, store_pids), reader.received)
            lat = [x * 1000 for x in reader.latencies]
            results[name] = {
                "saturation": sat,
                "latency": {
                    "rate_msgs_per_s": rate, "deliveries": len(lat), **paced,
                    "lost": n_lat * fanout - reader.received,
                    "p50_ms": percentile(lat, 0.50), "p90_ms": percentile(lat, 0.90),
                    "p99_ms": percentile(lat, 0.99),
                },
            }
            print(f"  {backend:12} {name:10} {sat['deliveries_per_s']:9.0f} deliveries/s "
                  f"lost {sat['lost']:6}  p50 {fmt(results[name]['latency']['p50_ms'], '.1f')} ms",
                  flush=True)
        reader.close()
        reader = None
        results["idle"] = idle_dyno(backend, env, args, log_dir)
        print(f"  {backend:12} idle       {results['idle']['percent_of_core']:.2f}% of a core",
              flush=True)
        return results
    finally:
        if reader is not None:
            reader.close()
        a.stop()
        b.stop()


def idle_dyno(backend: str, env: dict, args, log_dir: Path) -> dict:
    """CPU of a dyno with the backend's default settings, clients connected
    and no traffic."""
    defaults = {k: v for k, v in env.items() if k != "FETCH_MAX_WAIT_MS"}
    dyno = Dyno(backend, defaults, log_dir, "idle")
    reader = Reader("127.0.0.1", dyno.port, args.clients)
    try:
        time.sleep(2)  # past startup
        cpu0 = dyno.cpu()
        time.sleep(args.idle_seconds)
        idle = (dyno.cpu() - cpu0) / args.idle_seconds
    finally:
        reader.close()
        dyno.stop()
    return {"cpu_s_per_min": idle * 60, "percent_of_core": idle * 100}


def run_raw(bootstrap: str, args) -> dict:
    """Plain kafka-python: saturation and latency, same fetch setting as ours."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    out = {}
    for phase, n, rate in (("saturation", args.sid_messages, 0),
                           ("latency", int(args.rate * 2 * args.latency_seconds), args.rate * 2)):
        topic = f"raw-{uuid.uuid4().hex[:8]}"
        admin.create_topics({topic: {"num_partitions": 10, "replication_factor": 1}})
        consumer = subprocess.Popen(
            [sys.executable, str(HERE / "raw_kafka.py"), "consume", bootstrap, topic, str(n),
             str(args.fetch_max_wait_ms)], stdout=subprocess.PIPE, text=True)
        assert consumer.stdout.readline().strip() == "ready"
        t0 = time.time()
        subprocess.run([sys.executable, str(HERE / "raw_kafka.py"), "produce", bootstrap, topic,
                        str(n), str(rate)], check=True, capture_output=True)
        line = consumer.stdout.readline()
        consumer.wait()
        result = json.loads(line)
        lat = result["latencies_ms"]
        out[phase] = {
            "records": n, "received": result["received"], "lost": n - result["received"],
            "records_per_s": result["received"] / max((result["last"] or t0) - t0, 1e-9),
            "p50_ms": percentile(lat, 0.5), "p90_ms": percentile(lat, 0.9),
            "p99_ms": percentile(lat, 0.99),
        }
    admin.close()
    print(f"  raw kafka-python {out['saturation']['records_per_s']:9.0f} records/s  "
          f"p50 {out['latency']['p50_ms']:.1f} ms", flush=True)
    return out


def run_raw_confluent(broker, args) -> dict:
    """Plain confluent-kafka with the manager's settings, at the one-sid
    phase's rate: the floor under ``ours-confluent``'s paced latency."""
    import raw_confluent

    pids = store_pids(broker)
    store0 = cpu_seconds_of(pids)
    result = raw_confluent.run(broker.bootstrap, args.rate * 2, args.latency_seconds)
    result["store_cpu_s_per_1000"] = (cpu_seconds_of(pids) - store0) \
        / max(result["received"], 1) * 1000
    print(f"  raw confluent-kafka  p50 {fmt(result['p50_ms'], '.2f')} ms", flush=True)
    return result


def start_redis(log_dir: Path):
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: apt-get install redis-server (make bench does)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=open(log_dir / "bench-redis-server.log", "ab"), stderr=subprocess.STDOUT)
    wait_for_port(port)
    return process, f"redis://127.0.0.1:{port}/0"


def fmt(value, spec=".0f"):
    return "n/a" if value is None else format(value, spec)


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``LABEL=BACKEND:VAR=VALUE;...`` as its label and its dynos' environment."""
    label, _, rest = spec.partition("=")
    backend, _, assignments = rest.partition(":")
    if backend not in BACKENDS:
        raise SystemExit(f"--variant {spec!r}: no backend {backend!r}")
    env = {"BACKEND": backend}
    for assignment in filter(None, assignments.split(";")):
        name, _, value = assignment.partition("=")
        env[name] = value
    return label, env


def ratios(report: dict) -> list[str]:
    """Each backend's figures over RedisManager's in the same run."""
    redis = report["results"]["redis"]
    lines = ["", "Over RedisManager in this run (x): saturation deliveries/s; paced CPU per "
             "1,000 deliveries; p50; p99 (broadcast / one sid / room); idle CPU.", "",
             "| backend | saturation | paced CPU | p50 | p99 | idle |", "|---|---|---|---|---|---|"]
    for backend, res in report["results"].items():
        if backend in ("redis", *RAW):
            continue
        cells = []
        for phase, key in (("saturation", "deliveries_per_s"), ("latency", "server_cpu_s_per_1000"),
                           ("latency", "p50_ms"), ("latency", "p99_ms")):
            cells.append(" / ".join(
                f"{res[t][phase][key] / redis[t][phase][key]:.2f}"
                if res[t][phase].get(key) and redis[t][phase].get(key) else "n/a"
                for t in ("broadcast", "one sid", "room")))
        base = redis["idle"]["percent_of_core"]
        idle = f"{res['idle']['percent_of_core'] / base:.2f}" if base else "n/a"
        lines.append(f"| {backend} | " + " | ".join(cells) + f" | {idle} |")
    return lines


def warmup_line(report: dict) -> list[str]:
    warmup = report.get("broker_warmup_ms_per_record")
    if not warmup:
        return []
    return [f"Broker warmed up first ({len(warmup) * WINDOW:g} s of paced records): its CPU "
            f"per record {warmup[0]:.3f} ms in the first {WINDOW:g} s, {warmup[-1]:.3f} ms "
            "in the last.", ""]


def cpu_table(report: dict, ran: list[str]) -> list[str]:
    """Where the machine's CPU went in each phase: the dynos, the store
    (broker or redis-server), the readers, and how busy all cores were."""
    lines = ["", "CPU s per 1,000 deliveries: servers (A + B) / store / readers; the "
             "machine's cores busy, % (everything on it, the readers included); and B's "
             "CPU, % of one core.", "",
             "| backend | target | saturation | busy % | B % | paced | busy % | B % |",
             "|---|---|---|---|---|---|---|---|"]
    for backend in ran:
        for target in ("broadcast", "one sid", "room"):
            cells = []
            for phase in ("saturation", "latency"):
                ph = report["results"][backend][target][phase]
                if "store_cpu_s_per_1000" not in ph:  # a report from before these figures
                    cells += ["n/a", "n/a", "n/a"]
                    continue
                count = ph.get("received", ph.get("deliveries", 0))
                readers = ph["generator_cpu_s"] * 1000 / max(count, 1)
                cells += [f"{ph['server_cpu_s_per_1000']:.3f} / {ph['store_cpu_s_per_1000']:.3f}"
                          f" / {readers:.3f}", f"{ph['machine_busy'] * 100:.0f}",
                          fmt(ph.get("b_busy", None) and ph["b_busy"] * 100)]
            lines.append(f"| {backend} | {target} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    lines = [
        f"Machine: {report['machine']}; {report['date']}; broker: "
        f"{report.get('engine', 'tansu')}; {report['clients']} clients on dyno B, "
        f"emits from dyno A; fetch_max_wait_ms={report['fetch_max_wait_ms']} for ours and raw.",
        "",
        *warmup_line(report),
        "| backend | target | deliveries/s (saturation) | lost | p50 / p90 / p99 ms "
        "(moderate rate) | server CPU s / 1,000 deliveries (saturation / paced) "
        "| generator CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    ran = [b for b in report["results"] if b not in RAW]
    for backend in ran:
        res = report["results"][backend]
        for target in ("broadcast", "one sid", "room"):
            sat, lat = res[target]["saturation"], res[target]["latency"]
            ratio = ""
            if backend != "ours" and "ours" in report["results"]:
                ours = report["results"]["ours"][target]["saturation"]["deliveries_per_s"]
                ratio = f" (ours x{ours / sat['deliveries_per_s']:.1f})"
            lines.append(
                f"| {backend} | {target} | {sat['deliveries_per_s']:.0f}{ratio} | {sat['lost']} "
                f"| {fmt(lat['p50_ms'], '.1f')} / {fmt(lat['p90_ms'], '.1f')} / "
                f"{fmt(lat['p99_ms'], '.1f')} ({lat['rate_msgs_per_s']:.0f} msg/s) "
                f"| {sat['server_cpu_s_per_1000']:.3f} / "
                f"{fmt(lat.get('server_cpu_s_per_1000'), '.3f')} | {sat['generator_cpu_s']:.1f} |")
    raw = report["results"].get("raw")
    if raw:
        lines.append(
            f"| raw kafka-python | records | {raw['saturation']['records_per_s']:.0f} "
            f"| {raw['saturation']['lost']} | {fmt(raw['latency']['p50_ms'], '.1f')} / "
            f"{fmt(raw['latency']['p90_ms'], '.1f')} / {fmt(raw['latency']['p99_ms'], '.1f')} "
            f"| | |")
    floor = report["results"].get("raw-confluent")
    if floor:
        lines += ["", f"Plain confluent-kafka (loadtests/raw_confluent.py: the manager's "
                  f"settings, no server, no sockets), {floor['rate']:g} records/s: "
                  f"p50 / p90 / p99 {fmt(floor['p50_ms'], '.2f')} / {fmt(floor['p90_ms'], '.2f')}"
                  f" / {fmt(floor['p99_ms'], '.2f')} ms; CPU s per 1,000 records: clients "
                  f"{floor['cpu_s_per_1000']:.3f}, broker {floor['store_cpu_s_per_1000']:.3f}; "
                  f"{floor['received']} of {floor['records']} received."]
    lines += cpu_table(report, ran)
    lines += ["", "| backend | idle dyno CPU (% of a core) | CPU s per minute |", "|---|---|---|"]
    for backend in ran:
        res = report["results"][backend]
        lines.append(f"| {backend} | {res['idle']['percent_of_core']:.2f} "
                     f"| {res['idle']['cpu_s_per_min']:.2f} |")
    if "redis" in report["results"]:
        lines += ratios(report)
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS) + ",raw")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--messages", type=int, default=5000,
                        help="messages per fan-out saturation run (default %(default)s)")
    parser.add_argument("--sid-messages", type=int, default=20000,
                        help="messages of the one-sid saturation run (default %(default)s)")
    parser.add_argument("--rate", type=float, default=100,
                        help="msgs/s of the fan-out latency runs; sid runs use twice it")
    parser.add_argument("--latency-seconds", type=float, default=3)
    parser.add_argument("--idle-seconds", type=float, default=15)
    parser.add_argument("--engine", choices=ENGINES, default="kafka",
                        help="the broker (default %(default)s)")
    parser.add_argument("--fetch-max-wait-ms", default=None,
                        help="ours and raw under load (default: Kafka's 500, which Apache "
                             "Kafka cuts short when data arrives; 20 on Tansu, which answers "
                             "only at the deadline); 'default': ours keeps the manager's "
                             "own consumer settings (raw gets 500); the idle dyno keeps the "
                             "defaults")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="LABEL=BACKEND:VAR=VALUE;...",
                        help="BACKEND again as LABEL (name it in --backends) with these "
                             "environment variables, e.g. 'linger0=ours-confluent:"
                             "PRODUCER_CONFIG=linger.ms=0'")
    parser.add_argument("--warm-broker-seconds", type=float, default=60,
                        help="paced traffic through a new Apache Kafka before the first "
                             "backend, so that none pays for its JIT (default %(default)s; "
                             "0: none)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    variants = dict(parse_variant(v) for v in args.variant)
    if args.fetch_max_wait_ms is None:
        args.fetch_max_wait_ms = 20 if args.engine == "tansu" else 500  # Tansu workaround
    ours_wait = "" if args.fetch_max_wait_ms == "default" else str(args.fetch_max_wait_ms)
    if not ours_wait:
        args.fetch_max_wait_ms = 500  # raw's
    chosen = args.backends.split(",")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = out_dir / "logs"
    log_dir.mkdir(exist_ok=True)

    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
        "clients": args.clients, "fetch_max_wait_ms": ours_wait or "default",
        "engine": args.engine, "results": {},
    }
    with start_broker(args.engine, log_dir=log_dir) as broker:
        report["broker_warmup_ms_per_record"] = warm(broker, args.warm_broker_seconds)
        redis_process = None
        try:
            for backend in chosen:
                prefix = f"bench-{backend}-{uuid.uuid4().hex[:6]}"
                env = {"BOOTSTRAP": broker.bootstrap, "PREFIX": prefix,
                       "FETCH_MAX_WAIT_MS": ours_wait, **variants.get(backend, {})}
                if backend == "raw":
                    report["results"]["raw"] = run_raw(broker.bootstrap, args)
                    continue
                if backend == "raw-confluent":
                    report["results"][backend] = run_raw_confluent(broker, args)
                    continue
                store = store_pids(broker)
                if backend in ("redis", "async-redis"):
                    if redis_process is None:
                        redis_process, env["REDIS_URL"] = start_redis(log_dir)
                        redis_url = env["REDIS_URL"]
                    env["REDIS_URL"] = redis_url
                    store = [redis_process.pid]
                report["results"][backend] = run_backend(backend, env, args, log_dir, store)
        finally:
            if redis_process is not None:
                redis_process.terminate()
                redis_process.wait()
    report["variants"] = {label: variants[label] for label in chosen if label in variants}
    write_report(out_dir, "bench", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
