"""The rolling-restart proof's engine (loadtests/restart_test.py is its
command line; tests/integration/test_restart_short.py runs it short): real
socket.io-client clients (tests/js/csr_clients.mjs through
testkit.node_clients) on several dynos (tests/server_app.py), a steady mix of
broadcast, room, user and sid emits from a write-only KafkaManager, every dyno
in turn restarted or cut off, and every client's streams counted.

Every payload is ``{"st": stream, "n": seq}``: one stream for the broadcasts
(``all``), one per room (``room:r3``), per user (``user:u7``) and per
connection (``sid:c12``, addressed to the sid the client had at its first
connect). All clients are connected and in their rooms before the first emit
and the last emit is followed by a settle time, so a client EXPECTS every
message of its four streams; it is LOST if it never arrived, DUPLICATED for
each extra copy, OUT OF ORDER when it arrived after a later one of its
stream. A reconnect is a RECOVERY that succeeded when the client saw
``socket.recovered === true`` and kept its first sid, failed otherwise.
"""
from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flask_signalr_kafka import KafkaManager, KafkaTopicConfig, user
from testkit.harness import ServerProcess, unique
from testkit.node_clients import NodeClients

ROOT = Path(__file__).resolve().parent.parent
KILL_MODES = ("term", "kill", "none", "drop", "blackhole")


# -- the emitter ----------------------------------------------------------------
class _Failures(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += 1


class Emitter(threading.Thread):
    """A write-only KafkaManager (a worker process of the app) emitting one
    message per stream ``rate`` times a second, until ``stop()``."""

    def __init__(self, bootstrap: str, prefix: str, streams: dict[str, str | None],
                 rate: float):
        super().__init__(daemon=True)
        self.mgr = KafkaManager(bootstrap_servers=bootstrap, write_only=True,
                                topic_config=KafkaTopicConfig(prefix=prefix))
        self.streams = streams  # stream name -> target (None: everyone)
        self.rate = rate
        self.emitted: Counter = Counter()
        self.running = True
        self.failures = _Failures()
        logging.getLogger("flask_signalr_kafka").addHandler(self.failures)
        self.started_at = self.stopped_at = None

    def run(self):
        self.started_at = time.time()
        period = 1.0 / self.rate
        next_tick = time.monotonic()
        while self.running:
            for stream, target in self.streams.items():
                self.mgr.emit("m", {"st": stream, "n": self.emitted[stream]}, to=target)
                self.emitted[stream] += 1
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_tick = time.monotonic()  # behind: no burst to catch up
        self.stopped_at = time.time()

    def stop(self) -> dict[str, int]:
        self.running = False
        self.join(30)
        self.mgr.close()  # flushes what is queued
        logging.getLogger("flask_signalr_kafka").removeHandler(self.failures)
        return dict(self.emitted)


# -- counting -------------------------------------------------------------------
def count_client(client: dict, targets: list[str], emitted: dict[str, int]) -> dict:
    """Expected, received, lost, duplicated and out-of-order messages of one
    client, and its reconnects."""
    arrivals: dict[str, list[int]] = {s: [] for s in targets}
    stray = 0
    without_offset = 0
    for _t, stream, n, offset in client["seq"]:
        if stream in arrivals:
            arrivals[stream].append(n)
        else:
            stray += 1
        if offset is None:
            without_offset += 1
    expected = received = lost = dup = ooo = unknown = 0
    per_stream = {}
    for stream in targets:
        want = emitted.get(stream, 0)
        got = arrivals[stream]
        seen: set[int] = set()
        s_dup = s_ooo = s_unknown = 0
        top = -1
        for n in got:
            if n in seen:
                s_dup += 1
                continue
            seen.add(n)
            if n >= want:
                s_unknown += 1  # never emitted: the counting is broken
            if n < top:
                s_ooo += 1
            top = max(top, n)
        s_lost = want - len(seen & set(range(want)))
        per_stream[stream] = {"expected": want, "received": len(got), "lost": s_lost,
                              "dup": s_dup, "ooo": s_ooo}
        expected += want
        received += len(got)
        lost += s_lost
        dup += s_dup
        ooo += s_ooo
        unknown += s_unknown
    first_sid = client["connectLog"][0]["sid"] if client["connectLog"] else None
    reconnects = client["connectLog"][1:]
    ok = sum(1 for c in reconnects if c["recovered"] and c["sid"] == first_sid)
    # time away: from the first disconnect after a connect to the next connect
    away = []
    gone_at = None
    for t, kind in sorted([(c["t"], "c") for c in client["connectLog"]]
                          + [(d["t"], "d") for d in client["disconnectLog"]]):
        if kind == "d" and gone_at is None:
            gone_at = t
        elif kind == "c" and gone_at is not None:
            away.append(t - gone_at)
            gone_at = None
    # socket.io-client reports "disconnect" also when a reconnect attempt's
    # transport closes before the server answered its CONNECT
    closed_connections = len(client["connectLog"]) - (1 if client["connected"] else 0)
    return {
        "id": client["id"], "expected": expected, "received": received, "lost": lost,
        "dup": dup, "ooo": ooo, "stray": stray, "unknown": unknown,
        "without_offset": without_offset,
        "drops": len(client["disconnectLog"]),
        "reasons": dict(Counter(d["reason"] for d in client["disconnectLog"])),
        "recovered": ok, "not_recovered": len(reconnects) - ok,
        "unanswered": len(client["disconnectLog"]) - closed_connections,
        "away_max_s": round(max(away) / 1000, 2) if away else 0.0,
        "connected_at_end": client["connected"],
        "upstreams": [c["upstream"] for c in client["connectLog"]],
        "streams": per_stream,
    }


def totals(rows: list[dict]) -> dict:
    keys = ("expected", "received", "lost", "dup", "ooo", "stray", "unknown", "drops",
            "recovered", "not_recovered", "unanswered")
    out = {k: sum(r[k] for r in rows) for k in keys}
    out["away_max_s"] = max((r["away_max_s"] for r in rows), default=0.0)
    out["clients"] = len(rows)
    out["clients_losing"] = sum(1 for r in rows if r["lost"])
    out["clients_disturbed"] = sum(1 for r in rows if r["drops"])
    out["not_connected_at_end"] = sum(1 for r in rows if not r["connected_at_end"])
    reasons: Counter = Counter()
    lost_by_kind: Counter = Counter()
    for r in rows:
        reasons.update(r["reasons"])
        for stream, figures in r["streams"].items():
            lost_by_kind[stream.split(":")[0]] += figures["lost"]
    out["reasons"] = dict(reasons)
    out["lost_by_kind"] = {k: lost_by_kind[k] for k in ("all", "room", "user", "sid")}
    return out


# -- one run --------------------------------------------------------------------
def plan_clients(n: int) -> list[dict]:
    """Client i: user u<i//2> (two connections a user), room r<i % rooms>."""
    rooms = max(1, n // 4)
    return [{"id": f"c{i}", "user": f"u{i // 2}", "room": f"r{i % rooms}"} for i in range(n)]


def run(bootstrap: str, *, engine: str = "kafka", dynos: int = 3, clients: int = 60,
        kill: str = "term", recovery: bool = True, duration: float = 60.0, rate: float = 4.0,
        max_disconnection: float = 120.0, log_dir: Path, settle: float = 4.0,
        ping_timeout_ms: int | None = None, announce: bool = False,
        disturb_count: int | None = None, say=print) -> dict:
    """Start ``dynos`` server processes and ``clients`` JS clients, emit for
    ``duration`` seconds while each dyno in turn (the first ``disturb_count``
    only, if given) is disturbed as ``kill`` says, and count what every client
    got. Everything started is stopped."""
    if kill not in KILL_MODES:
        raise ValueError(f"kill must be one of {KILL_MODES}")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    prefix = unique("rr")
    env = {"CONNECTION_STATE_RECOVERY": "1" if recovery else "0",
           "MAX_DISCONNECTION": str(max_disconnection)}
    if engine == "tansu":
        env["FETCH_MAX_WAIT_MS"] = "20"  # Tansu answers a fetch only at its deadline
    servers = [ServerProcess(bootstrap, prefix, f"d{k}", log_dir, **env) for k in range(dynos)]
    driver = emitter = None
    timeline: list[tuple[float, str]] = []
    started = time.time()

    def mark(what):
        timeline.append((round(time.time() - started, 2), what))
        say(f"  [{time.time() - started:6.1f}s] {what}")

    try:
        with ThreadPoolExecutor(dynos) as pool:
            list(pool.map(lambda s: s.start(60), servers))
        mark(f"{dynos} dynos ready ({prefix}, recovery {'on' if recovery else 'off'})")
        plan = plan_clients(clients)
        driver = NodeClients(max_seconds=duration * 3 + 300,
                             log_path=log_dir / f"{prefix}-node.log")
        urls = [s.url for s in servers]
        # announce: auth {csr: true} asks for offsets from the first connection
        # (a plain client announces only when it first reconnects)
        auth = {"csr": True} if announce else {}
        driver.add([{"id": c["id"], "auth": {"user": c["user"], **auth}, "rooms": [c["room"]],
                     # rotate: each reconnect goes to the next dyno of its list
                     "urls": urls[i % dynos:] + urls[:i % dynos], "policy": "rotate"}
                    for i, c in enumerate(plan)],
                   **({"pingTimeoutMs": ping_timeout_ms} if ping_timeout_ms else {}))
        sids = driver.wait_ready([c["id"] for c in plan], 60 + clients * 0.5)
        mark(f"{clients} clients connected and joined")
        streams: dict[str, str | None] = {"all": None}
        for c in plan:
            streams[f"room:{c['room']}"] = c["room"]
            streams[f"user:{c['user']}"] = user(c["user"])
        for c in plan:
            streams[f"sid:{c['id']}"] = sids[c["id"]]
        emitter = Emitter(bootstrap, prefix, streams, rate)
        emitter.start()
        t0 = time.monotonic()
        mark(f"emitting {len(streams)} streams at {rate:g}/s")
        victims = servers[:disturb_count] if disturb_count is not None else servers
        for k, server in enumerate(victims):
            wait_for = t0 + duration * (k + 1) / (len(victims) + 1) - time.monotonic()
            if wait_for > 0:
                time.sleep(wait_for)
            disturb(server, kill, driver, mark)
        remaining = t0 + duration - time.monotonic()
        time.sleep(max(remaining, 3.0))
        emitted = emitter.stop()
        emit_failures = emitter.failures.count
        mark(f"emitter stopped: {sum(emitted.values())} messages, "
             f"{emit_failures} produce warnings")
        settle_clients(driver, plan, settle, mark)
        report = driver.report()
    finally:
        if emitter and emitter.is_alive():
            emitter.stop()
        if driver:
            driver.close()
        for s in servers:
            try:
                s.stop()
            except Exception:
                pass
    by_id = {c["id"]: c for c in report}
    labels = {s.url: s.label for s in servers}
    rows = []
    for c in plan:
        targets = ["all", f"room:{c['room']}", f"user:{c['user']}", f"sid:{c['id']}"]
        row = count_client(by_id[c["id"]], targets, emitted)
        row["upstreams"] = [labels.get(u, u) for u in row["upstreams"]]
        rows.append(row)
    return {
        "engine": engine, "kill": kill, "recovery": recovery, "announce": announce,
        "dynos": dynos, "disturbed": [s.label for s in victims],
        "clients": clients, "duration": duration, "rate": rate,
        "max_disconnection": max_disconnection, "streams": len(streams),
        "emitted": sum(emitted.values()), "emit_failures": emit_failures,
        "totals": totals(rows), "per_client": rows, "timeline": timeline,
        "code": code_version(), "prefix": prefix,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
    }


def code_version() -> str:
    """HEAD, and "+dirty" when flask_signalr_kafka/ or tests/server_app.py
    differ from it: which server code the figures are of."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "flask_signalr_kafka",
                                "tests/server_app.py"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def disturb(server: ServerProcess, kill: str, driver: NodeClients, mark) -> None:
    """Restart or cut off one dyno; return once it serves again."""
    if kill == "none":
        mark(f"{server.label}: left alone")
        return
    if kill in ("drop", "blackhole"):
        mode = "cut" if kill == "drop" else "blackhole"
        got = driver.drop(mode, upstream=server.url)
        mark(f"{server.label}: {mode} {got['count']} connections")
        return
    sig = signal.SIGTERM if kill == "term" else signal.SIGKILL
    server.stop(sig)
    mark(f"{server.label}: {sig.name}, exited {server.process.returncode}")
    server.start(60)
    mark(f"{server.label}: started again on :{server.port}")


def settle_clients(driver: NodeClients, plan, settle: float, mark, limit: float = 60.0) -> None:
    """Wait until every client is connected and nothing arrived for
    ``settle`` seconds (at most ``limit`` s)."""
    deadline = time.monotonic() + limit
    last_total = -1
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        status = driver.status()
        total = sum(s["events"] for s in status)
        connected = sum(1 for s in status if s["connected"])
        if total != last_total:
            last_total, quiet_since = total, time.monotonic()
        if connected == len(plan) and time.monotonic() - quiet_since >= settle:
            break
        time.sleep(0.5)
    mark(f"settled: {connected}/{len(plan)} connected, {total} events received")


# -- output ---------------------------------------------------------------------
COLUMNS = ("expected", "received", "lost", "dup", "ooo", "recovered", "not_recovered",
           "unanswered", "away_max_s")


def markdown(results: list[dict]) -> str:
    lines = ["| engine | kill | recovery | clients | expected | received | lost | dup | "
             "out of order | recoveries ok | recoveries failed | unanswered connects | "
             "longest away (s) | clients losing |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["totals"]
        lines.append(
            f"| {r['engine']} | {r['kill']} | {'on' if r['recovery'] else 'off'} | "
            f"{r['clients']} | " + " | ".join(str(t[k]) for k in COLUMNS)
            + f" | {t['clients_losing']} |")
    out = ["# Rolling-restart proof", "",
           f"{results[0]['dynos']} dynos, {results[0]['clients']} socket.io-client clients, "
           f"{results[0]['rate']:g} emits/s per stream for {results[0]['duration']:g} s "
           f"(`loadtests/restart_test.py`, see docs/restart-test.md).", "", *lines, ""]
    for r in results:
        out += [f"## {r['kill']}, recovery {'on' if r['recovery'] else 'off'} "
                f"({r['started']}, prefix {r['prefix']}, code {r.get('code', '?')})", "",
                f"disconnect reasons: {r['totals']['reasons']}; "
                f"lost by target kind: {r['totals']['lost_by_kind']}; "
                f"emitted {r['emitted']} messages on {r['streams']} streams, "
                f"{r['emit_failures']} produce warnings; stray {r['totals']['stray']}, "
                f"never-emitted {r['totals']['unknown']}", "",
                "timeline: " + "; ".join(f"{t}s {w}" for t, w in r["timeline"]), "",
                "| client | upstreams | drops | " + " | ".join(COLUMNS) + " |",
                "|---|---|---|" + "---|" * len(COLUMNS)]
        for row in r["per_client"]:
            if row["drops"] or row["lost"] or row["dup"] or row["ooo"]:
                ups = " ".join(u or "?" for u in row["upstreams"])
                out.append(f"| {row['id']} | {ups} | {row['drops']} | "
                           + " | ".join(str(row[k]) for k in COLUMNS) + " |")
        out.append("")
    return "\n".join(out)


def print_run(r: dict, say=print) -> None:
    t = r["totals"]
    say(f"== {r['engine']} kill={r['kill']} recovery={'on' if r['recovery'] else 'off'}: "
        f"expected {t['expected']}, received {t['received']}, lost {t['lost']}, "
        f"dup {t['dup']}, out-of-order {t['ooo']}, recoveries {t['recovered']} ok / "
        f"{t['not_recovered']} failed, {t['unanswered']} unanswered connects, longest away "
        f"{t['away_max_s']} s, {t['clients_losing']}/{t['clients']} clients lost "
        f"messages, reasons {t['reasons']}, lost by kind {t['lost_by_kind']}")
    for row in r["per_client"]:
        if row["drops"] or row["lost"] or row["dup"]:
            say(f"   {row['id']}: expected {row['expected']} received {row['received']} "
                f"lost {row['lost']} dup {row['dup']} ooo {row['ooo']} drops {row['drops']} "
                f"recovered {row['recovered']}/{row['recovered'] + row['not_recovered']}")
