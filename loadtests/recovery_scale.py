"""A rolling restart of a fleet with connection state recovery, measured
(issue 13, item 4; docs/recovery-scale.md): what each dyno reads, keeps and
spends, and how long a restart takes, per connection, to extrapolate from.

One Apache Kafka node; DYNOS tests/server_app.py servers (gevent,
CONNECTION_STATE_RECOVERY=1, fresh topic prefix); CLIENTS raw Socket.IO
websocket clients (loadtests/ws_reader.py's handshake, one greenlet each),
spread evenly, each announcing recovery (``40{"csr":true}``) and joining room
``r<i % rooms>`` through server_app's "join" event. A write-only KafkaManager
(restart_test.py's Emitter) then emits a numbered message to every room
RATE times a second; each client keeps the numbers it got and the last
offset (the extra last argument of each event).

Then each original dyno in turn: SIGTERM (the package drains: it saves every
session and closes the sockets); each of its clients waits the official
client's first reconnection delay (0.5-1.5 s) and reconnects to another live
dyno with ``40{"pid":...,"offset":...}``; once all are back (or the restart
timeout passed) a replacement dyno starts on a new port before the next
restart. Measured per restart: SIGTERM to exit, SIGTERM to the last client
back, recovered (same sid and pid) / not recovered / failed, each dyno's CPU
and VmRSS, and the deltas of each dyno's /stats (``sessions_records_read``,
``recovery_replayed_events``, ...); plus the size of the departing dyno's
home partition of the sessions topic (what its clients' new holders read).
At the end, every client's numbered stream is checked for losses and
duplicates.

    .venv/bin/python loadtests/recovery_scale.py                # 4 dynos, 10,000 clients
    .venv/bin/python loadtests/recovery_scale.py --dynos 4 --clients 2000 --sessions-partitions 50

Writes loadtests/results/recovery-scale-<time>.md and .json and prints the
tables.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402
from gevent.lock import BoundedSemaphore  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parent
from flask_signalr_kafka import KafkaTopicConfig  # noqa: E402
from flask_signalr_kafka.cli.broker import start_broker  # noqa: E402
from flask_signalr_kafka.transport.topics import SESSIONS, SESSIONS_CONFIGS  # noqa: E402
from testkit.harness import ServerProcess  # noqa: E402
from testkit.measure import (  # noqa: E402
    cpu_seconds,
    own_cpu,
    percentile,
    raise_fd_limit,
    rss_bytes,
    write_report,
)
from testkit.restart import Emitter  # noqa: E402
from testkit.ws_reader import Connection  # noqa: E402

#: socket.io-client's first reconnection delay: 1 s, randomized by 0.5.
RECONNECT_DELAY = (0.5, 1.5)


class AuthConnection(Connection):
    """ws_reader's websocket handshake with our own CONNECT packet."""

    def __init__(self, host: str, port: int, connect_packet: bytes) -> None:
        self._first = connect_packet
        super().__init__(host, port, True)

    def send(self, payload: bytes) -> None:
        if self._first is not None:
            payload, self._first = self._first, None
        super().send(payload)


def frames(conn: Connection):
    """Socket.IO payloads until the connection closes, answering pings."""
    while True:
        data = conn.sock.recv(1 << 16)
        if not data:
            return
        conn.buffer += data
        for payload in conn.frames():
            if payload[:1] == b"2":
                conn.send(b"3")
            elif payload[:1] == b"1":  # Engine.IO close
                return
            else:
                yield payload


class Dyno:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.label = server.label
        self.alive = False
        self.home: int | None = None  # from its new connections' pids
        self.cpu = 0.0  # last sample, CPU seconds
        self.cpu_of: dict[int, float] = {}
        self.rss = self.rss_peak = 0

    def pids(self) -> list[int]:
        """The server process and its children (gunicorn's worker)."""
        pid = self.server.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        return [pid, *map(int, children)]

    def sample(self) -> None:
        try:
            pids = self.pids()
            for p in pids:  # a process that exited keeps its last figure
                self.cpu_of[p] = cpu_seconds(p)
            self.cpu = sum(self.cpu_of.values())
            self.rss = sum(rss_bytes(p) for p in pids)
            self.rss_peak = max(self.rss_peak, self.rss)
        except (OSError, RuntimeError, IndexError, ValueError):
            pass  # exited

    def stats(self) -> dict:
        try:
            return flatten(requests.get(self.server.url + "/stats", timeout=5).json())
        except (requests.RequestException, ValueError):
            return {}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


class Client:
    __slots__ = ("i", "room", "sid", "pid", "offset", "dyno", "got", "moves", "back_at",
                 "recovered", "not_recovered", "failures", "joined", "early")

    def __init__(self, i: int, room: str) -> None:
        self.i, self.room = i, room
        self.sid = self.pid = self.offset = None
        self.dyno: Dyno | None = None
        self.got: list[int] = []
        self.moves = 0
        self.back_at = 0.0  # monotonic time of the last CONNECT reply
        self.recovered = self.not_recovered = self.failures = 0
        self.joined = False
        self.early = 0  # events that came before a CONNECT reply


class Fleet:
    def __init__(self, args, bootstrap: str, prefix: str, log_dir: Path) -> None:
        self.args, self.bootstrap, self.prefix, self.log_dir = args, bootstrap, prefix, log_dir
        self.env = {"CONNECTION_STATE_RECOVERY": "1", "MAX_DISCONNECTION": "120",
                    "RUNNER": args.runner,
                    # gunicorn's worker takes 1,000 connections by default
                    "GUNICORN_CMD_ARGS": f"--worker-connections {args.clients + 1000}"}
        self.dynos: list[Dyno] = []
        self.started = 0
        self.handshakes = BoundedSemaphore(args.concurrency)
        self.stopping = False
        self.clients = [Client(i, f"r{i % args.rooms}") for i in range(args.clients)]
        self.greenlets: list[gevent.Greenlet] = []
        self.idle_rate: dict[str, float] = {}  # CPU s per s, clients held
        self.mean_idle = 0.0

    def start_dyno(self) -> Dyno:
        label = f"d{self.started}"
        self.started += 1
        dyno = Dyno(ServerProcess(self.bootstrap, self.prefix, label, self.log_dir, **self.env))
        dyno.server.start(90)
        dyno.alive = True
        self.dynos.append(dyno)
        return dyno

    def live(self, but: Dyno | None = None) -> list[Dyno]:
        return [d for d in self.dynos if d.alive and d is not but]

    # -- one client -------------------------------------------------------
    def life(self, c: Client, dyno: Dyno) -> None:
        while not self.stopping:
            try:
                self._session(c, dyno)
            except (gevent.Timeout, OSError, ConnectionError, ValueError):
                c.failures += 1
            if self.stopping:
                return
            gevent.sleep(random.uniform(*RECONNECT_DELAY))
            live = self.live(but=c.dyno) or self.live()
            if not live:
                return
            c.moves += 1
            dyno = live[(c.i + c.moves) % len(live)]

    def _session(self, c: Client, dyno: Dyno) -> None:
        with self.handshakes, gevent.Timeout(self.args.timeout):
            packet = b'40{"csr":true}' if c.pid is None else b"40" + json.dumps(
                {"pid": c.pid, "offset": c.offset}).encode()
            conn = AuthConnection("127.0.0.1", dyno.server.port, packet)
            stream = frames(conn)
            reply = b""
            for payload in stream:  # events before the CONNECT reply count too
                if payload[:2] in (b"40", b"44"):
                    reply = payload
                    break
                c.early += payload[:2] == b"42"
                self._event(c, payload)
            if reply[:2] != b"40":
                raise ConnectionError(reply[:200])
            connected = json.loads(reply[2:])
            if c.pid is None:
                pid = connected.get("pid") or ""
                head = pid.partition(".")[0]
                if dyno.home is None and head.isdigit():
                    dyno.home = int(head)
            elif connected.get("sid") == c.sid and connected.get("pid") == c.pid:
                c.recovered += 1
            else:
                c.not_recovered += 1
                c.joined = False
            c.sid, c.pid, c.dyno = connected.get("sid"), connected.get("pid"), dyno
            c.back_at = time.monotonic()
            if not c.joined:
                conn.send(b'421["join",{"room":"%s"}]' % c.room.encode())
                for payload in stream:
                    if payload.startswith(b"431"):
                        break
                    self._event(c, payload)
                c.joined = True
        try:
            for payload in stream:
                self._event(c, payload)
        finally:
            conn.sock.close()

    @staticmethod
    def _event(c: Client, payload: bytes) -> None:
        if payload[:2] != b"42":
            return
        args = json.loads(payload[2:])
        if len(args) >= 2 and isinstance(args[1], dict) and args[1].get("st") == c.room:
            c.got.append(args[1]["n"])
        if len(args) == 3 and isinstance(args[2], str):
            c.offset = args[2]
            head, h, _ = c.offset.partition("h")  # the tag: "<home>h<random>"
            if c.dyno is not None and c.dyno.home is None and h and head.isdigit():
                c.dyno.home = int(head)

    def connect_all(self) -> dict:
        for d in self.dynos:
            d.sample()
        t0, cpu0 = time.monotonic(), {d.label: d.cpu for d in self.dynos}
        rss0 = {d.label: d.rss for d in self.dynos}
        for c in self.clients:
            self.greenlets.append(gevent.spawn(self.life, c, self.dynos[c.i % len(self.dynos)]))
        deadline = t0 + self.args.timeout * (1 + len(self.clients) / self.args.concurrency)
        while time.monotonic() < deadline and sum(c.joined for c in self.clients) < len(
                self.clients):
            gevent.sleep(0.5)
        seconds = time.monotonic() - t0
        gevent.sleep(2)
        for d in self.dynos:
            d.sample()
        joined = sum(c.joined for c in self.clients)
        per = max(joined, 1)
        return {"seconds": seconds, "joined": joined,
                "cpu_s": {d.label: d.cpu - cpu0[d.label] for d in self.dynos},
                "cpu_ms_per_connect": sum(d.cpu - cpu0[d.label] for d in self.dynos) / per * 1000,
                "rss_b_per_connection": sum(d.rss - rss0[d.label] for d in self.dynos) / per,
                "rss_b": {d.label: d.rss for d in self.dynos},
                "homes": {d.label: d.home for d in self.dynos}}

    def idle(self, seconds: float) -> dict:
        for d in self.live():
            d.sample()
        cpu0, t0 = {d.label: d.cpu for d in self.live()}, time.time()
        gevent.sleep(seconds)
        for d in self.live():
            d.sample()
        self.idle_rate = {d.label: (d.cpu - cpu0[d.label]) / (time.time() - t0)
                          for d in self.live()}
        self.mean_idle = sum(self.idle_rate.values()) / max(len(self.idle_rate), 1)
        return {k: v * 100 for k, v in self.idle_rate.items()}

    # -- one restart --------------------------------------------------------
    def restart(self, dyno: Dyno) -> dict:
        args = self.args
        moving = [c for c in self.clients if c.dyno is dyno and c.joined]
        receivers = self.live(but=dyno)
        before = {d.label: d.stats() for d in receivers}
        for d in self.live():
            d.sample()
            d.rss_peak = 0
        rss0 = {d.label: d.rss for d in receivers}
        cpu0 = {d.label: d.cpu for d in self.live()}
        gen0 = own_cpu()
        counts0 = {id(c): (c.recovered, c.not_recovered, c.failures) for c in moving}
        dyno.alive = False
        t0 = time.monotonic()
        sigterm_at = time.time()
        dyno.server.process.send_signal(signal.SIGTERM)
        exit_at: list[float] = []
        gevent.spawn(dyno.server.process.wait).link(
            lambda _: exit_at.append(time.monotonic() - t0))
        deadline = t0 + args.restart_timeout
        while time.monotonic() < deadline and not (
                exit_at and all(c.back_at > t0 for c in moving)):
            for d in [dyno, *receivers]:
                d.sample()
            gevent.sleep(0.1)
        back = [c.back_at - t0 for c in moving if c.back_at > t0]
        dyno.server.stop()
        gevent.sleep(args.settle)
        elapsed = time.monotonic() - t0
        for d in receivers:
            d.sample()
        after = {d.label: d.stats() for d in receivers}
        delta = {d.label: {k: v - before[d.label].get(k, 0) for k, v in after[d.label].items()
                           if v != before[d.label].get(k, 0)} for d in receivers}
        recovered = sum(c.recovered - counts0[id(c)][0] for c in moving)
        not_recovered = sum(c.not_recovered - counts0[id(c)][1] for c in moving)
        failures = sum(c.failures - counts0[id(c)][2] for c in moving)
        # CPU net of each dyno's idle rate with its clients held (the fleet's
        # mean for a replacement, not measured alone).
        idle = {d.label: self.idle_rate.get(d.label, self.mean_idle) for d in [dyno, *receivers]}
        drain = exit_at[0] if exit_at else None
        cpu = {d.label: d.cpu - cpu0[d.label]
               - idle[d.label] * (drain or elapsed if d is dyno else elapsed)
               for d in [dyno, *receivers]}
        records_read = {k: v.get("sessions_records_read", 0) for k, v in delta.items()}
        part = partition_size(self.bootstrap, self.prefix, dyno.home)
        t1 = time.monotonic()
        new = self.start_dyno()
        started = time.monotonic() - t1
        per = max(recovered, 1)
        receivers_cpu = sum(cpu[d.label] for d in receivers)
        return {
            "dyno": dyno.label, "home": dyno.home, "sigterm_at": sigterm_at, "clients": len(moving),
            "drain_s": drain, "last_back_s": max(back, default=None),
            "all_back": len(back) == len(moving), "window_s": elapsed, "idle_rate": idle,
            "back_p50_s": percentile(back, 0.5), "back_p95_s": percentile(back, 0.95),
            "back": len(back), "recovered": recovered, "not_recovered": not_recovered,
            "failed_attempts": failures,
            "cpu_s": cpu, "departing_cpu_s": cpu[dyno.label],
            "departing_ms_per_connection": cpu[dyno.label] / max(len(moving), 1) * 1000,
            "receivers_cpu_s": receivers_cpu,
            "receivers_ms_per_recovery": receivers_cpu / per * 1000,
            "generator_cpu_s": own_cpu() - gen0,
            "rss_delta_b": {d.label: d.rss - rss0[d.label] for d in receivers},
            "rss_b": {d.label: d.rss for d in receivers},
            "rss_peak_b": {d.label: d.rss_peak for d in receivers},
            "receivers_rss_b_per_recovery": sum(d.rss - rss0[d.label] for d in receivers) / per,
            "sessions_records_read": records_read,
            "sessions_records_read_total": sum(records_read.values()),
            "home_partition": part,
            "stats_delta": delta,
            "replacement": new.label, "replacement_home": new.home,
            "replacement_start_s": started,
        }

    def stop(self) -> None:
        self.stopping = True
        gevent.killall(self.greenlets, timeout=10)
        for d in self.dynos:
            if d.server.process is not None and d.server.process.poll() is None:
                d.server.stop()


def create_sessions_topic(bootstrap: str, prefix: str, partitions: int) -> str:
    """The sessions topic, made before any dyno does (so with ``partitions``)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    name = KafkaTopicConfig(prefix=prefix).name(SESSIONS)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=SESSIONS_CONFIGS)])
    finally:
        admin.close()
    return name


def partition_size(bootstrap: str, prefix: str, partition: int | None) -> dict:
    """Records and bytes (key + value) in a sessions partition, by kind."""
    from kafka import KafkaConsumer, TopicPartition

    if partition is None:
        return {}
    tp = TopicPartition(KafkaTopicConfig(prefix=prefix).name(SESSIONS), partition)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False)
    out: dict = {"partition": partition, "records": 0, "bytes": 0}
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        deadline = time.monotonic() + 30
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for r in batch:
                    kind = (r.key or b"?")[:2].decode(errors="replace")
                    size = len(r.key or b"") + len(r.value or b"")
                    out["records"] += 1
                    out["bytes"] += size
                    out[f"records {kind}"] = out.get(f"records {kind}", 0) + 1
                    out[f"bytes {kind}"] = out.get(f"bytes {kind}", 0) + size
    finally:
        consumer.close()
    return out


def check_streams(clients: list[Client], emitted: dict[str, int]) -> dict:
    """Losses and duplicates of each client's room stream (every client was
    in its room before the first emit)."""
    lost = dup = lost_clients = dup_clients = 0
    unrecovered = [c for c in clients if c.not_recovered]
    for c in clients:
        got = set(c.got)
        missing = emitted.get(c.room, 0) - len(got & set(range(emitted.get(c.room, 0))))
        extra = len(c.got) - len(got)
        lost += missing
        dup += extra
        lost_clients += missing > 0
        dup_clients += extra > 0
    return {"events_before_connect_reply": sum(c.early for c in clients),
            "expected": sum(emitted.get(c.room, 0) for c in clients), "lost": lost,
            "duplicated": dup, "clients_with_loss": lost_clients,
            "clients_with_duplicates": dup_clients,
            "clients_never_recovered_once": len(unrecovered),
            "lost_by_unrecovered_clients": sum(
                emitted.get(c.room, 0) - len(set(c.got)) for c in unrecovered),
            "examples": [{"room": c.room, "emitted": emitted.get(c.room, 0),
                          "missing": sorted(set(range(emitted.get(c.room, 0))) - set(c.got)),
                          "got": c.got, "moves": c.moves, "recovered": c.recovered}
                         for c in clients if set(range(emitted.get(c.room, 0))) - set(c.got)
                         or len(c.got) != len(set(c.got))][:20]}


def settle_streams(clients: list[Client], emitted: dict[str, int], limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if all(emitted.get(c.room, 0) - 1 in c.got for c in clients if c.joined):
            return
        gevent.sleep(0.5)


def run(args, bootstrap: str, log_dir: Path) -> dict:
    prefix = f"rscale-{uuid.uuid4().hex[:6]}"
    if args.sessions_partitions:
        create_sessions_topic(bootstrap, prefix, args.sessions_partitions)
    fleet = Fleet(args, bootstrap, prefix, log_dir)
    emitter = None
    t_start = time.monotonic()

    def say(text: str) -> None:
        print(f"  [{time.monotonic() - t_start:6.1f}s] {text}", flush=True)

    try:
        gevent.joinall([gevent.spawn(fleet.start_dyno) for _ in range(args.dynos)],
                       raise_error=True)
        fleet.dynos.sort(key=lambda d: d.label)
        say(f"{args.dynos} dynos ready ({prefix})")
        connect = fleet.connect_all()
        say(f"{connect['joined']}/{args.clients} connected and joined in "
            f"{connect['seconds']:.1f} s; homes {connect['homes']}")
        emitter = Emitter(bootstrap, prefix, {f"r{k}": f"r{k}" for k in range(args.rooms)},
                          args.rate)
        emitter.start()
        emit_started = time.time()
        gevent.sleep(args.warmup)
        idle = fleet.idle(args.idle_seconds)
        held = {d.label: d.stats().get("sessions_held.live", 0) for d in fleet.dynos}
        say(f"streaming; CPU % with clients held {idle}")
        restarts = []
        for dyno in list(fleet.dynos[:args.dynos]):
            r = fleet.restart(dyno)
            restarts.append(r)
            say(f"restart {dyno.label} (home {r['home']}, {r['clients']} clients): "
                f"drain {r['drain_s'] or 0:.1f} s, last back {r['last_back_s'] or 0:.1f} s, "
                f"{r['recovered']} recovered, {r['not_recovered']} not, "
                f"{r['failed_attempts']} failed attempts; sessions read "
                f"{r['sessions_records_read']}; {r['replacement']} up in "
                f"{r['replacement_start_s']:.1f} s")
        emitted = emitter.stop()
        emitter = None
        settle_streams(fleet.clients, emitted, args.settle * 4)
        streams = check_streams(fleet.clients, emitted)
        say(f"streams: {streams}")
        stats = {d.label: d.stats() for d in fleet.live()}
        return {"prefix": prefix, "connect": connect, "idle_percent": idle,
                "sessions_held_live": held, "restarts": restarts, "emitted": sum(
                    emitted.values()), "streams": streams, "final_stats": stats,
                "sessions_partitions": args.sessions_partitions or 10,
                "emit_started_at": emit_started, "runner": args.runner,
                "homes": {d.label: d.home for d in fleet.dynos},
                "seconds": time.monotonic() - t_start}
    finally:
        if emitter is not None:
            emitter.stop()
        fleet.stop()


def markdown(report: dict) -> str:
    r = report["result"]
    c = r["connect"]
    s = r["streams"]
    lines = [
        f"Machine: {report['machine']}; {report['date']}; load before "
        f"{report['load_before'][0]:.2f}; Apache Kafka, one node; {report['dynos']} dynos, "
        f"{report['clients']} raw Socket.IO clients announcing recovery, "
        f"{report['concurrency']} handshakes at a time, {report['rooms']} rooms, "
        f"{report['rate']:g} emits/s per room; dynos run by {r['runner']}; sessions topic of "
        f"{r['sessions_partitions']} "
        f"partitions; homes {r['homes']}; run {r['seconds']:.0f} s.",
        "",
        f"Connect: {c['joined']} connected and joined in {c['seconds']:.1f} s; "
        f"{c['cpu_ms_per_connect']:.2f} ms CPU per connect (all dynos); "
        f"{c['rss_b_per_connection']:.0f} B VmRSS per connection. Idle with clients held, "
        f"% of a core: {', '.join(f'{k} {v:.1f}' for k, v in r['idle_percent'].items())}.",
        "",
        "| restart | home | clients | drain s | last back s | p50 / p95 back s | recovered / "
        "not / failed attempts | departing CPU ms / conn | receivers CPU ms / recovery | "
        "receivers RSS B / recovery | sessions records read (by receiver) | home partition "
        "records / KB | replayed events | replacement up s |",
        "|---" * 14 + "|",
    ]
    for x in r["restarts"]:
        part = x["home_partition"]
        replayed = sum(d.get("recovery_replayed_events", 0) for d in x["stats_delta"].values())
        lines.append(
            f"| {x['dyno']} | {x['home']} | {x['clients']} | {x['drain_s'] or 0:.1f} | "
            f"{x['last_back_s'] or 0:.1f} | {x['back_p50_s'] or 0:.1f} / {x['back_p95_s'] or 0:.1f}"
            f" | {x['recovered']} / {x['not_recovered']} / {x['failed_attempts']} | "
            f"{x['departing_ms_per_connection']:.2f} | {x['receivers_ms_per_recovery']:.2f} | "
            f"{x['receivers_rss_b_per_recovery']:.0f} | "
            f"{x['sessions_records_read_total']} ({', '.join(f'{k} {v}' for k, v in x['sessions_records_read'].items())})"  # noqa: E501
            f" | {part.get('records', 0)} / {part.get('bytes', 0) / 1024:.0f} | {replayed} | "
            f"{x['replacement_start_s']:.1f} |")
    lines += [
        "",
        f"Streams: {s['expected']} expected deliveries, {s['lost']} lost "
        f"({s['clients_with_loss']} clients), {s['duplicated']} duplicated "
        f"({s['clients_with_duplicates']} clients); {s['clients_never_recovered_once']} clients "
        f"had a reconnect not recovered ({s['lost_by_unrecovered_clients']} of the losses).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dynos", type=int, default=4)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64,
                        help="handshakes in flight at a time, connects and reconnects")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.2,
                        help="emits per second to each room (default %(default)s)")
    parser.add_argument("--sessions-partitions", type=int, default=0,
                        help="create the sessions topic with this many partitions "
                             "(0: server_app's TopicSpec, 10)")
    parser.add_argument("--runner", choices=("gunicorn", "socketio.run"), default="gunicorn",
                        help="how a dyno runs (harness.py): gunicorn drains at SIGTERM")
    parser.add_argument("--timeout", type=float, default=60,
                        help="seconds one handshake may take")
    parser.add_argument("--restart-timeout", type=float, default=120,
                        help="seconds a restart may take until its clients are back")
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--idle-seconds", type=float, default=5)
    parser.add_argument("--settle", type=float, default=3)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    out_dir = Path(args.out)
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    raise_fd_limit(args.clients + 2000)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
        "load_before": os.getloadavg(), "argv": sys.argv[1:], **{
            k: getattr(args, k) for k in ("dynos", "clients", "concurrency", "rooms", "rate")},
    }
    with start_broker("kafka", log_dir=log_dir) as broker, gevent.Timeout(args.max_seconds):
        report["result"] = run(args, broker.bootstrap, log_dir)
    write_report(out_dir, "recovery-scale", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
