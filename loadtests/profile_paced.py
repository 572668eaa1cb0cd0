"""Where a paced delivery's CPU goes (`make profile-paced`): the figures behind
issue 23's paced-CPU target, for each backend of loadtests/bench.py.

The bench's dynos and readers (A emits to a broadcast, one sid on B and a
room of B's connections, one after the other, at a steady rate);
while the emits are delivered it samples each dyno twice over:

- per thread, from /proc: the CPU of the Python threads (the gevent hub that
  runs python-socketio, engine.io and our code; a worker thread that waits
  in librdkafka) against the client library's own native threads
  (librdkafka's ``rdk:*``), which a Python profiler never sees;
- per function, with py-spy (Python threads only): each sample is charged to
  the package of its innermost frame (socketio, engineio, gevent, kafka,
  confluent_kafka, redis, flask_signalr_kafka, ...), so the share of our own
  code is set apart from the libraries'; and the functions most samples
  end in (their innermost frame, gevent's included: the hub's own work).

Writes loadtests/results/profile-<date>.md and .json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from bench import Dyno, settle, start_redis, warm_up
from broker_warmup import warm

from flask_signalr_kafka.cli.broker import start_broker
from testkit.measure import write_report
from testkit.ws_reader import Reader

HERE = Path(__file__).parent
PY_SPY = Path(sys.executable).with_name("py-spy")
_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of ``pid`` (threads of one name summed)."""
    out: Counter = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[_thread_kind(name, int(task.name) == pid)] += (
            int(fields[11]) + int(fields[12])) / _TICK
    return dict(out)


def _thread_kind(name: str, main: bool) -> str:
    """librdkafka's threads by their kind (``rdk:main``, ``rdk:broker``: of
    every client summed), Python's as the main thread (the gevent hub) and
    the others (poll threads, workers)."""
    if name.startswith("rdk:"):
        return "rdk:broker" if name.startswith("rdk:broker") else name
    return "Python main (hub)" if main else "Python other"


def package_of(frame: str) -> str:
    """The package an innermost py-spy frame (``fn (pkg/module.py:line)``,
    paths relative to their import root) is in; a module of no package is
    the standard library's."""
    found = re.search(r"\((.*?):\d+\)$", frame)
    path = found[1] if found else frame
    if path.startswith("/"):  # a script run by path: ours
        return "bench server"
    return path.split("/", 1)[0].removesuffix(".py") if "/" in path else "stdlib"


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)),
         "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def packages(raw: Path) -> dict[str, float]:
    """Shares of the samples by the package of their innermost frame that is
    not gevent's (a socket write is charged to the websocket code that made
    it); stacks of gevent alone are its hub. py-spy leaves out the samples
    of threads it sees idle."""
    counts: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        found = [package_of(f) for f in stack.split(";")]
        mine = [p for p in found if p not in ("gevent", "greenlet")]
        counts[mine[-1] if mine else "gevent hub"] += int(n)
    total = sum(counts.values()) or 1
    return {k: round(v / total * 100, 1) for k, v in counts.most_common()}


def functions(raw: Path, top: int = 12) -> dict[str, float]:
    """Shares of the samples by their innermost frame's function (gevent's
    included), the ``top`` largest."""
    counts: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            counts[stack.split(";")[-1]] += int(n)
    total = sum(counts.values()) or 1
    return {k: round(v / total * 100, 1) for k, v in counts.most_common(top)}


#: What the profile emits to: the bench's three targets (``sid``: B's first
#: connection).
TARGETS = {"broadcast": ("all", True), "one sid": ("sid", False), "room": ("bench", True)}


def profile(backend: str, env: dict, args, log_dir: Path) -> dict:
    a, b = Dyno(backend, env, log_dir, "A"), Dyno(backend, env, log_dir, "B")
    reader = Reader("127.0.0.1", b.port, args.clients)
    out = {}
    try:
        warm_up(backend, a, reader, args.clients)
        for name in args.targets.split(","):
            target, fan_out = TARGETS[name]
            if target == "sid":
                target = reader.connections[0].sid
            out[name] = profile_target(backend, name, target, args.clients if fan_out else 1,
                                       a, b, reader, args, log_dir)
        return out
    finally:
        reader.close()
        a.stop()
        b.stop()


def profile_target(backend: str, name: str, target: str, fan_out: int, a: Dyno, b: Dyno,
                   reader: Reader, args, log_dir: Path) -> dict:
    n = int(args.rate * args.seconds)
    reader.reset()
    before = {d: thread_cpu(d.process.pid) for d in (a, b)}
    spies = {}
    for label, d in (("A", a), ("B", b)):
        raw = log_dir / f"spy-{backend}-{name.replace(' ', '-')}-{label}"
        spies[label] = (py_spy(d.process.pid, args.seconds - 1, raw), raw)
    sender = threading.Thread(target=a.burst, args=(target, n, args.rate))
    sender.start()
    sender.join()
    settle(reader, n * fan_out)
    after = {d: thread_cpu(d.process.pid) for d in (a, b)}
    result = {"rate": args.rate, "emits": n, "received": reader.received, "dynos": {}}
    for label, d in (("A", a), ("B", b)):
        spy, raw = spies[label]
        spy.wait(30)
        threads = {k: round((after[d].get(k, 0) - before[d].get(k, 0))
                            / max(reader.received, 1) * 1000, 4)
                   for k in after[d]}
        result["dynos"][label] = {
            "cpu_s_per_1000_by_thread": threads,
            "python_samples_by_package": packages(raw) if raw.exists() else {},
            "python_samples_by_function": functions(raw) if raw.exists() else {},
        }
    print(f"  {backend:15} {name:9} {result['received']}/{n * fan_out} delivered; "
          + "; ".join(f"{lbl}: {v['cpu_s_per_1000_by_thread']}"
                      for lbl, v in result["dynos"].items()), flush=True)
    return result


def markdown(report: dict) -> str:
    lines = [
        f"Machine: {report['machine']}; {report['date']}; Apache Kafka; {report['clients']} "
        f"clients on dyno B; dyno A emits to each target at {report['rate']:g}/s for "
        f"{report['seconds']:g} s.",
        "",
        "| backend | target | dyno | CPU s per 1,000 deliveries, by thread | Python samples "
        "by package (innermost frame not gevent's; gevent hub: gevent's alone), % |",
        "|---|---|---|---|---|",
    ]
    for backend, targets in report["results"].items():
        for name, res in targets.items():
            for label, dyno in res["dynos"].items():
                threads = ", ".join(f"{k} {v:.3f}"
                                    for k, v in dyno["cpu_s_per_1000_by_thread"].items())
                top = ", ".join(f"{k} {v:g}" for k, v in list(
                    dyno["python_samples_by_package"].items())[:8])
                lines.append(f"| {backend} | {name} | {label} | {threads} | {top} |")
    lines += ["", "Functions most Python samples end in (innermost frame), %:", ""]
    for backend, targets in report["results"].items():
        for name, res in targets.items():
            for label, dyno in res["dynos"].items():
                top = "; ".join(f"`{k}` {v:g}"
                                for k, v in dyno.get("python_samples_by_function", {}).items())
                lines.append(f"- {backend}, {name}, {label}: {top}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="ours,ours-confluent,redis")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200, help="emits/s to each target")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated, of: %(default)s")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--warm-broker-seconds", type=float, default=60,
                        help="paced traffic through the new broker first, so that no "
                             "backend pays for its JIT (default %(default)s; 0: none)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--summarize", metavar="JSON",
                        help="only rewrite this report's package shares from its run's "
                             "samples (left in <out>/logs)")
    args = parser.parse_args()
    out_dir = Path(args.out)
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.summarize:
        path = Path(args.summarize)
        report = json.loads(path.read_text())
        for backend, targets in report["results"].items():
            for name, res in targets.items():
                for label, dyno in res["dynos"].items():
                    raw = log_dir / f"spy-{backend}-{name.replace(' ', '-')}-{label}"
                    dyno["python_samples_by_package"] = packages(raw)
                    dyno["python_samples_by_function"] = functions(raw)
        path.write_text(json.dumps(report, indent=1))
        path.with_suffix(".md").write_text(markdown(report))
        print(markdown(report))
        return 0
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
        "clients": args.clients, "rate": args.rate, "seconds": args.seconds, "results": {},
    }
    with start_broker("kafka", log_dir=log_dir) as broker:
        report["broker_warmup_ms_per_record"] = warm(broker, args.warm_broker_seconds)
        redis = None
        try:
            for backend in args.backends.split(","):
                env = {"BOOTSTRAP": broker.bootstrap, "PREFIX": f"prof-{uuid.uuid4().hex[:6]}"}
                if backend == "redis":
                    redis, env["REDIS_URL"] = start_redis(log_dir)
                report["results"][backend] = profile(backend, env, args, log_dir)
        finally:
            if redis is not None:
                redis.terminate()
                redis.wait()
    write_report(out_dir, "profile", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
