"""What connection state recovery costs (`make bench-recovery`), recovery off
against on, in one run, black-box.

One Apache Kafka node; for each mode two tests/server_app.py servers (A and
B, gevent, CONNECTION_STATE_RECOVERY=0 or 1, fresh topics). Measured per
mode: the idle CPU of A and B; a connect storm of CLIENTS raw Socket.IO
websocket clients to A only (announcing recovery with ``40{"csr":true}``
when it is on, as socket.io-client does once it reconnected), each joining
a room through server_app's "join" event; the storm's wall time, A's CPU per
connect and B's CPU and memory (VmRSS) per remote connection; the idle CPU
of both with the connections held; then every connection dropped (sockets
closed without a DISCONNECT packet: a transport close) and the CPU each
server spends on the drops. CPU figures are net of the server's own idle
rate. See docs/recovery-cost.md.

Writes loadtests/results/recovery-<time>.md and .json and prints the table.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from flask_signalr_kafka.cli.broker import start_broker  # noqa: E402
from testkit.harness import ServerProcess  # noqa: E402
from testkit.measure import (  # noqa: E402
    cpu_seconds,
    own_cpu,
    raise_fd_limit,
    rss_bytes,
    write_report,
)
from testkit.ws_reader import Connection  # noqa: E402

HERE = Path(__file__).parent


def pump(conn: Connection, until: bytes | None = None) -> bytes | None:
    """Read frames, answering Engine.IO pings, until one starts with
    ``until`` (returned) or, when ``until`` is None, the socket closes."""
    while True:
        data = conn.sock.recv(1 << 16)
        if not data:
            if until is None:
                return None
            raise ConnectionError("closed by the server")
        conn.buffer += data
        for payload in conn.frames():
            if payload[:1] == b"2":
                conn.send(b"3")
            elif payload[:2] == b"44":
                raise ConnectionError(f"connect refused: {payload[:200]!r}")
            elif until is not None and payload.startswith(until):
                return payload


class Storm:
    """``count`` raw Socket.IO clients connecting to one server, at most
    ``concurrency`` handshakes at a time; each joins room ``r<i % rooms>``
    and then stays, answering pings, until :meth:`drop`."""

    def __init__(self, port: int, count: int, *, announce: bool, concurrency: int,
                 rooms: int, timeout: float) -> None:
        self.port, self.count, self.announce = port, count, announce
        self.rooms, self.timeout = rooms, timeout
        self.pool = Pool(concurrency)
        self.connections: list[Connection] = []
        self.holders = []
        self.failed: list[str] = []
        self.join_answers: dict[str, int] = {}
        self.started = self.last_connect = self.last_join = 0.0

    def _one(self, i: int) -> None:
        try:
            with gevent.Timeout(self.timeout):
                conn = Connection("127.0.0.1", self.port, self.announce)
                pump(conn, b"40")
                self.last_connect = max(self.last_connect, time.monotonic())
                conn.send(b'421["join",{"room":"r%d"}]' % (i % self.rooms))
                answer = pump(conn, b"431")[3:].decode()
                self.last_join = max(self.last_join, time.monotonic())
        except (gevent.Timeout, OSError) as exc:
            self.failed.append(f"{type(exc).__name__}: {exc}")
            return
        self.join_answers[answer] = self.join_answers.get(answer, 0) + 1
        self.connections.append(conn)
        self.holders.append(gevent.spawn(self._hold, conn))

    @staticmethod
    def _hold(conn: Connection) -> None:
        try:
            pump(conn)
        except OSError:
            pass  # closed by drop()

    def run(self) -> None:
        self.started = time.monotonic()
        for i in range(self.count):
            self.pool.spawn(self._one, i)
        self.pool.join(timeout=self.timeout * (1 + self.count / self.pool.size))
        self.pool.kill()

    def drop(self) -> None:
        """Close every socket without a DISCONNECT packet."""
        for conn in self.connections:
            conn.sock.close()
        gevent.killall(self.holders, timeout=10)


def idle_rates(servers: dict, seconds: float) -> dict:
    cpu0, t0 = {k: cpu_seconds(s.process.pid) for k, s in servers.items()}, time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {k: (cpu_seconds(s.process.pid) - cpu0[k]) / elapsed for k, s in servers.items()}


def settle(servers: dict, idle: dict, minimum: float = 2.0, limit: float = 30.0) -> None:
    """Wait until each server's CPU over the last second is back near its
    idle rate (the other server works through the backplane after the
    storm), at least ``minimum`` and at most ``limit`` seconds."""
    t0 = time.monotonic()
    last = {k: cpu_seconds(s.process.pid) for k, s in servers.items()}
    while time.monotonic() - t0 < limit:
        time.sleep(1)
        now = {k: cpu_seconds(s.process.pid) for k, s in servers.items()}
        busy = any(now[k] - last[k] > idle[k] + 0.03 for k in servers)
        last = now
        if not busy and time.monotonic() - t0 >= minimum:
            return


class Window:
    """CPU seconds of each server over a window, net of its idle rate."""

    def __init__(self, servers: dict, idle: dict) -> None:
        self.servers, self.idle = servers, idle
        self.cpu0 = {k: cpu_seconds(s.process.pid) for k, s in servers.items()}
        self.gen0, self.t0 = own_cpu(), time.monotonic()

    def close(self) -> dict:
        elapsed = time.monotonic() - self.t0
        out = {k: cpu_seconds(s.process.pid) - self.cpu0[k] - self.idle[k] * elapsed
               for k, s in self.servers.items()}
        out["seconds"] = elapsed
        out["generator"] = own_cpu() - self.gen0
        return out


def run_mode(recovery: bool, bootstrap: str, args, log_dir: Path) -> dict:
    mode = "on" if recovery else "off"
    prefix = f"rcost-{mode}-{uuid.uuid4().hex[:6]}"
    env = {"CONNECTION_STATE_RECOVERY": "1" if recovery else "0"}
    servers = {label: ServerProcess(bootstrap, prefix, label, log_dir, **env)
               for label in ("A", "B")}
    storm = None
    try:
        gevent.joinall([gevent.spawn(s.start, 60) for s in servers.values()], raise_error=True)
        time.sleep(2)  # past startup
        idle = idle_rates(servers, args.idle_seconds)
        pid = {k: s.process.pid for k, s in servers.items()}
        rss0 = {k: rss_bytes(p) for k, p in pid.items()}
        print(f"  recovery {mode}: idle A {idle['A'] * 100:.1f}% B {idle['B'] * 100:.1f}%; "
              f"storm of {args.clients} clients to A", flush=True)

        storm = Storm(servers["A"].port, args.clients, announce=recovery,
                      concurrency=args.concurrency, rooms=args.rooms, timeout=args.timeout)
        window = Window(servers, idle)
        storm.run()
        storm_seconds = storm.last_connect - storm.started
        join_seconds = storm.last_join - storm.started
        settle(servers, idle)
        cpu = window.close()
        rss1 = {k: rss_bytes(p) for k, p in pid.items()}
        n = max(len(storm.connections), 1)
        print(f"  recovery {mode}: {len(storm.connections)} connected in {storm_seconds:.1f} s "
              f"(joined {join_seconds:.1f} s), {len(storm.failed)} failed; "
              f"A {cpu['A']:.1f} s, B {cpu['B']:.1f} s CPU", flush=True)

        held = idle_rates(servers, args.idle_seconds)

        drops = Window(servers, idle)
        storm.drop()
        settle(servers, idle)
        drop_cpu = drops.close()
        print(f"  recovery {mode}: dropped; A {drop_cpu['A']:.2f} s, B {drop_cpu['B']:.2f} s CPU",
              flush=True)
        return {
            "clients": args.clients, "connected": len(storm.connections),
            "failed": len(storm.failed), "failures": storm.failed[:10],
            "join_answers": storm.join_answers,
            "storm_seconds": storm_seconds, "join_seconds": join_seconds,
            "storm_cpu_s": cpu, "drop_cpu_s": drop_cpu,
            "holder_ms_per_connect": cpu["A"] / n * 1000,
            "other_ms_per_remote_connect": cpu["B"] / n * 1000,
            "holder_rss_bytes_per_connection": (rss1["A"] - rss0["A"]) / n,
            "other_rss_bytes_per_remote_connection": (rss1["B"] - rss0["B"]) / n,
            "rss_before": rss0, "rss_after": rss1,
            "idle_percent": {k: v * 100 for k, v in idle.items()},
            "held_idle_percent": {k: v * 100 for k, v in held.items()},
            "holder_ms_per_drop": drop_cpu["A"] / n * 1000,
            "other_ms_per_remote_drop": drop_cpu["B"] / n * 1000,
        }
    finally:
        if storm is not None:
            storm.drop()
        for s in servers.values():
            if s.process is not None:
                s.stop()


#: (header, how a mode's result reads in the table, the figure its ratio uses)
COLUMNS = (
    ("connect storm s", lambda r: f"{r['storm_seconds']:.1f}", lambda r: r["storm_seconds"]),
    ("joins done s", lambda r: f"{r['join_seconds']:.1f}", lambda r: r["join_seconds"]),
    ("holder CPU ms / connect", lambda r: f"{r['holder_ms_per_connect']:.2f}",
     lambda r: r["holder_ms_per_connect"]),
    ("other server CPU ms / remote connect", lambda r: f"{r['other_ms_per_remote_connect']:.2f}",
     lambda r: r["other_ms_per_remote_connect"]),
    ("other server RSS B / remote connection",
     lambda r: f"{r['other_rss_bytes_per_remote_connection']:.0f}",
     lambda r: r["other_rss_bytes_per_remote_connection"]),
    ("holder RSS B / connection", lambda r: f"{r['holder_rss_bytes_per_connection']:.0f}",
     lambda r: r["holder_rss_bytes_per_connection"]),
    ("idle CPU % A / B, no clients",
     lambda r: f"{r['idle_percent']['A']:.1f} / {r['idle_percent']['B']:.1f}",
     lambda r: r["idle_percent"]["A"] + r["idle_percent"]["B"]),
    ("idle CPU % A / B, clients held",
     lambda r: f"{r['held_idle_percent']['A']:.1f} / {r['held_idle_percent']['B']:.1f}",
     lambda r: r["held_idle_percent"]["A"] + r["held_idle_percent"]["B"]),
    ("holder CPU ms / drop", lambda r: f"{r['holder_ms_per_drop']:.2f}",
     lambda r: r["holder_ms_per_drop"]),
    ("other server CPU ms / remote drop", lambda r: f"{r['other_ms_per_remote_drop']:.2f}",
     lambda r: r["other_ms_per_remote_drop"]),
    ("connected / failed", lambda r: f"{r['connected']} / {r['failed']}", None),
)


def ratio(on: float, off: float) -> str:
    """on/off; n/a when off is within noise of zero or below (net of idle)."""
    return f"x{on / off:.2f}" if off > 1e-6 else "n/a"


def markdown(report: dict) -> str:
    results = report["results"]
    lines = [
        f"Machine: {report['machine']}; {report['date']}; load before "
        f"{report['load_before'][0]:.2f}; Apache Kafka, one node; {report['clients']} raw "
        f"Socket.IO clients to server A, {report['concurrency']} handshakes at a time, "
        f"each joining one of {report['rooms']} rooms; idle over {report['idle_seconds']:.0f} s; "
        "CPU net of each server's idle rate.",
        "",
        "| recovery | " + " | ".join(h for h, _, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for mode, r in results.items():
        lines.append(f"| {mode} | " + " | ".join(show(r) for _, show, _ in COLUMNS) + " |")
    if "off" in results and "on" in results:
        on, off = results["on"], results["off"]
        lines.append("| on/off | " + " | ".join(
            ratio(figure(on), figure(off)) if figure else "" for _, _, figure in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3000, help="clients of the storm")
    parser.add_argument("--modes", default="off,on", help="recovery modes, in this order")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="handshakes in flight at a time (default %(default)s)")
    parser.add_argument("--rooms", type=int, default=100, help="distinct rooms joined")
    parser.add_argument("--idle-seconds", type=float, default=10)
    parser.add_argument("--timeout", type=float, default=60,
                        help="seconds one client may take to connect and join")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    out_dir = Path(args.out)
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    raise_fd_limit(args.clients * 2 + 1000)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
        "load_before": os.getloadavg(), "clients": args.clients,
        "concurrency": args.concurrency, "rooms": args.rooms,
        "idle_seconds": args.idle_seconds, "results": {},
    }
    with start_broker("kafka", log_dir=log_dir) as broker:
        for mode in args.modes.split(","):
            report["results"][mode] = run_mode(mode == "on", broker.bootstrap, args, log_dir)
    write_report(out_dir, "recovery", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
