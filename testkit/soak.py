"""The soak's engine (loadtests/soak.py is its command line, `make soak` runs
it, tests/integration/test_soak.py runs it short; docs/soak.md says how to
read its report): a fleet of dynos of every kind, real socket.io-client
clients each behind its own balancer, a steady stream of emits of the four
kinds, random faults, and a ledger of what every client should have had.

The fleet: one dyno per entry of ``kinds`` (``gevent`` and ``threading``:
tests/server_app.py under ``socketio.run`` with the app's own SIGTERM
handler, gevent's ``APP_SIGTERM=spawn`` and threading's ``signal.signal``
one, ``APP_SIGTERM=1``; ``uvicorn``: tests/asgi_server_app.py;
``gunicorn``: tests/server_app.py under gunicorn), connection state
recovery on. The clients: tests/js/csr_clients.mjs, half announcing
(``auth: {csr: true}``), half with the client's defaults, each behind a
proxy of its own with the ``balance`` policy: a reconnect goes to the next
dyno the balancer has not been told is down, and to the next one at once if
it refuses; nothing is cut for being silent.

The emits, every payload ``{"st": stream, "n": seq}``: a write-only
:class:`testkit.restart.Emitter` that no fault touches (streams ``all``,
``room:<r>``, ``user:<u>``, ``sid:<client>``), and one extra Node client per
dyno that asks its dyno, through tests/server_app.py's ``emit`` event, to
emit (streams ``<dyno>/all``, ``<dyno>/room:<r>``, ...): emits from dynos
that are stopped, killed and cut off. An emit of a dyno counts only if the
dyno acknowledged it before it was told to stop (and not in the 2 s before
a SIGKILL, which loses what was not yet produced).

The faults (``FAULTS``), one every ``interval`` s on average, chosen by
``random.Random(seed)``: the first ones cover every enabled kind once, in a
random order. A SIGTERMed or SIGKILLed dyno is marked down at its balancers
first and started again on its port (the fleet keeps its size), then marked
up once ``/ready``.

The ledger (:func:`client_ledger`), per client: every reconnect is
recovered with the client's sid, except after a kick, where a recovered
connection is a failure; every event addressed to the client (its rooms,
its user, its sid of the time, broadcasts) is delivered, once to an
announcing client; a plain client may get again, right after its first
drop, what it had before it (counted apart: ``first-drop repeats``); each
stream keeps its order; every drop is explained by a fault that touched the
client, and no fault makes a client drop more than once (a loop). After a
reconnect that was not recovered the events of the gap (from the fault to
the rooms joined again) are not expected: the failure is the reconnect.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from flask_signalr_kafka import user
from testkit.harness import ServerProcess, unique
from testkit.node_clients import NodeClients
from testkit.restart import Emitter, code_version, plan_clients, settle_clients

KINDS = ("gevent", "threading", "uvicorn", "gunicorn")
FAULTS = ("term", "gunicorn-term", "kill", "drop", "blackhole", "kick", "rolling")
# how a SIGTERM reaches the manager's close(), per kind of dyno
TERM_BY = {"gevent": "the app's SIGTERM handler", "threading": "the app's SIGTERM handler",
           "uvicorn": "uvicorn's shutdown", "gunicorn": "gunicorn's SIGTERM"}
DEFAULT_WEIGHTS = {"term": 3, "gunicorn-term": 1, "kill": 2, "drop": 3, "blackhole": 1,
                   "kick": 2, "rolling": 0.5}
GAP_BEFORE = 2.0  # s before the fault (or the drop) an unrecovered gap starts
GAP_AFTER = 1.0  # s after the rooms are joined again it ends
ATTRIBUTE_WITHIN = 45.0  # s after a fault a drop may still be its doing
REPEAT_WITHIN = 15.0  # s after the first reconnect a plain client's repeats come
KILL_UNCERTAIN = 2.0  # s before a SIGKILL a dyno's acknowledged emit may be lost


def dyno_env(kind: str) -> dict:
    """The environment of one dyno of ``kind``."""
    # gevent: the app's handler as gevent documents it (a greenlet spawned
    # from gevent.signal_handler); a signal.signal handler there may raise
    # its SystemExit inside kafka-python's I/O greenlet (docs/operating.md).
    return {"gevent": {"ASYNC_MODE": "gevent", "APP_SIGTERM": "spawn"},
            "threading": {"ASYNC_MODE": "threading", "APP_SIGTERM": "1"},
            "uvicorn": {"RUNNER": "uvicorn"},
            "gunicorn": {"RUNNER": "gunicorn", "ASYNC_MODE": "gevent"}}[kind]


@dataclass
class Dyno:
    kind: str
    proc: ServerProcess
    starts: int = 1

    @property
    def label(self) -> str:
        return self.proc.label

    @property
    def url(self) -> str:
        return self.proc.url


@dataclass
class Fault:
    """One fault, or one dyno's stop within a fleet restart (``group``)."""

    n: int
    kind: str
    t: float
    dyno: str | None = None
    touched: list[str] = field(default_factory=list)
    detail: str = ""
    group: int | None = None
    t_end: float | None = None


class TimedEmitter(Emitter):
    """The restart proof's emitter, noting when each message went and to
    which target (the ledger needs the time and the sid of the time)."""

    def __init__(self, bootstrap, prefix, streams, rate, sent: dict):
        super().__init__(bootstrap, prefix, streams, rate)
        self.sent = sent
        emit = self.mgr.emit

        def timed(event, data, to=None, **kwargs):
            kind, _, name = data["st"].partition(":")
            target = to if kind == "sid" else (name or None)
            self.sent[(data["st"], data["n"])] = Sent(time.time(), kind, target, True, "emitter")
            return emit(event, data, to=to, **kwargs)

        self.mgr.emit = timed

    def retarget(self, stream: str, sid: str) -> None:
        # a new dict: the emitting loop keeps iterating the one it has
        self.streams = {**self.streams, stream: sid}


@dataclass
class Sent:
    t: float
    kind: str  # all, room, user, sid
    target: str | None  # room, user id or sid
    certain: bool  # counted as expected (else optional)
    origin: str  # "emitter" or a dyno's label
    acked_at: float | None = None


class Pump(threading.Thread):
    """A client pinned to one dyno asking it to emit, ``rate`` a second,
    cycling through the four kinds of target: the emits of a dyno that the
    faults do touch."""

    def __init__(self, soak: Soak, dyno: Dyno, rate: float):
        super().__init__(daemon=True)
        self.soak, self.dyno, self.rate = soak, dyno, rate
        self.client_id = f"p-{dyno.label}"
        self.running = True
        self.answers: Counter = Counter()

    def run(self):
        plan = self.soak.plan
        counters: Counter = Counter()
        k = 0
        while self.running:
            c = plan[k % len(plan)]
            kind = ("all", "room", "user", "sid")[k % 4]
            k += 1
            target = {"all": None, "room": c["room"], "user": c["user"],
                      "sid": self.soak.sids.get(c["id"])}[kind]
            name = c["id"] if kind == "sid" else target
            stream = f"{self.dyno.label}/{kind}" + ("" if kind == "all" else f":{name}")
            n = counters[stream]
            counters[stream] += 1
            msg = {"event": "m", "data": {"st": stream, "n": n}}
            if kind == "user":
                msg["user"] = target
            elif target:
                msg["to"] = target
            sent = Sent(time.time(), kind, target, False, self.dyno.label)
            self.soak.sent[(stream, n)] = sent
            try:
                reply = self.soak.driver.emit(self.client_id, "emit", msg, timeout=3)
                answer = reply.get("answer") or reply.get("error")
            except AssertionError as exc:
                answer = str(exc)[:60]
            self.answers["ok" if answer == "ok" else "not acknowledged"] += 1
            if answer == "ok":
                sent.acked_at = time.time()
                sent.certain = True
            else:
                time.sleep(0.3)
            time.sleep(1.0 / self.rate)


class Soak:
    """One soak run; :meth:`run` returns its result (see :func:`run`)."""

    def __init__(self, bootstrap: str, *, seed: int, duration: float, clients: int,
                 kinds, faults, interval: float, rate: float, dyno_rate: float,
                 ping_interval: float, ping_timeout: float, max_disconnection: float,
                 log_dir: Path, kafka_client: str, settle: float, cover: bool, say):
        self.bootstrap, self.seed, self.duration = bootstrap, seed, duration
        self.n_clients, self.kinds = clients, list(kinds)
        self.faults_enabled = [f for f in faults if f != "gunicorn-term" or "gunicorn" in kinds]
        self.interval, self.rate, self.dyno_rate = interval, rate, dyno_rate
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.settle, self.say, self.cover = settle, say, cover
        self.ping_wait = ping_interval + ping_timeout
        # two streams: the schedule (kinds, waits) replays exactly; the
        # targets draw one number each, whatever the fleet looks like
        self.rng = random.Random(seed)
        self.target_rng = random.Random(seed + 1_000_003)
        self.prefix = unique("soak")
        self.env = {"CONNECTION_STATE_RECOVERY": "1", "MAX_DISCONNECTION": str(max_disconnection),
                    "PING_INTERVAL": str(ping_interval), "PING_TIMEOUT": str(ping_timeout),
                    "KAFKA_CLIENT": kafka_client, "LOG_LEVEL": "INFO"}
        self.options = dict(kinds=self.kinds, faults=self.faults_enabled, interval=interval,
                            rate=rate, dyno_rate=dyno_rate, ping_interval=ping_interval,
                            ping_timeout=ping_timeout, max_disconnection=max_disconnection,
                            kafka_client=kafka_client, cover=cover)
        self.dynos: list[Dyno] = []
        self.down: set[str] = set()
        self.faults: list[Fault] = []
        self.timeline: list[tuple[float, str]] = []
        self.sent: dict[tuple[str, int], Sent] = {}
        self.sids: dict[str, str] = {}
        self.driver: NodeClients | None = None
        self.emitter: TimedEmitter | None = None
        self.pumps: list[Pump] = []
        self.started = time.time()
        self._following = False

    # -- helpers ----------------------------------------------------------------
    def mark(self, what: str) -> None:
        self.timeline.append((round(time.time() - self.started, 2), what))
        self.say(f"  [{time.time() - self.started:6.1f}s] {what}")

    def plan_ids(self) -> list[str]:
        return [c["id"] for c in self.plan]

    def where(self) -> dict[str, str | None]:
        """Each client's dyno now (None: not connected)."""
        labels = {d.url: d.label for d in self.dynos}
        return {s["id"]: labels.get(s["upstream"]) if s["connected"] else None
                for s in self.driver.status() if not s["id"].startswith("p-")}

    def follow(self) -> None:
        """Keep ``sids`` (each client's sid now) and the emitter's sid
        streams in step with the connects that were not recovered."""
        index = 0
        while self._following:
            lines, index = self.driver.since(index)
            for line in lines:
                if line.get("type") == "connect" and not line["id"].startswith("p-"):
                    cid, sid = line["id"], line["sid"]
                    if self.sids.get(cid) != sid:
                        self.sids[cid] = sid
                        if self.emitter is not None:
                            self.emitter.retarget(f"sid:{cid}", sid)
            time.sleep(0.1)

    def set_down(self) -> None:
        self.driver.upstreams(self.down)

    # -- faults -----------------------------------------------------------------
    def pick(self, choices: list):
        return choices[int(self.target_rng.random() * len(choices))]

    def next_fault_kind(self, n: int) -> str:
        if n < len(self.deck):
            return self.deck[n]
        kinds = self.faults_enabled
        return self.rng.choices(kinds, [DEFAULT_WEIGHTS[k] for k in kinds])[0]

    def stop_dyno(self, dyno: Dyno, sig: signal.Signals, fault: Fault) -> None:
        """Mark ``dyno`` down, signal it, wait for its exit, start it again
        on its port and mark it up once ready."""
        where = self.where()
        fault.dyno = dyno.label
        # a client between connections may be on its way to this dyno
        fault.touched = sorted(c for c, d in where.items() if d in (dyno.label, None))
        flux = sum(1 for d in where.values() if d is None)
        self.down.add(dyno.url)
        self.set_down()
        fault.t = time.time()
        began = time.monotonic()
        # a crash takes the whole dyno: gunicorn's worker too, not only its
        # master (an orphaned worker would serve on, then leave)
        children = _children(dyno.proc.process.pid) if sig == signal.SIGKILL else []
        dyno.proc.stop(sig)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        exited = time.monotonic() - began
        code = dyno.proc.process.returncode
        how = TERM_BY[dyno.kind] if sig == signal.SIGTERM else "SIGKILL"
        dyno.proc.start(60)
        dyno.starts += 1
        self.down.discard(dyno.url)
        self.set_down()
        fault.detail = (f"{dyno.kind}, {how}: exited {code} in {exited:.1f} s, serving "
                        f"again after {time.monotonic() - began:.1f} s; "
                        f"{len(fault.touched) - flux} clients on it, {flux} between connections")
        fault.t_end = time.time()

    def inject(self, kind: str) -> list[Fault]:
        n = len(self.faults) + 1
        fault = Fault(n, kind, time.time())
        pick = self.pick
        if kind in ("term", "gunicorn-term", "kill"):
            pool = ([d for d in self.dynos if d.kind == "gunicorn"] if kind == "gunicorn-term"
                    else [d for d in self.dynos if d.kind != "gunicorn"] if kind == "term"
                    else self.dynos)
            # one with clients, if any: a fault that touches nobody tests nothing
            busy = set(self.where().values())
            dyno = pick([d for d in pool if d.label in busy] or pool)
            self.stop_dyno(dyno, signal.SIGKILL if kind == "kill" else signal.SIGTERM, fault)
            return [fault]
        if kind in ("drop", "blackhole"):
            where = self.where()
            # a dyno with clients (sorted: the same draw for the same fleet)
            busy = sorted({d for d in where.values() if d is not None})
            label = pick(busy or [self.dynos[0].label])
            dyno = next(d for d in self.dynos if d.label == label)
            ids = sorted(c for c, d in where.items() if d == dyno.label)
            fault.dyno, fault.touched = dyno.label, ids
            fault.t = time.time()
            got = self.driver.drop("cut" if kind == "drop" else "blackhole", ids=ids)
            fault.detail = f"{got['count']} connections of the clients on {dyno.label}"
            fault.t_end = time.time()
            return [fault]
        if kind == "kick":
            status = {s["id"]: s for s in self.driver.status()}
            # one the server can reach (a blackholed one only thinks it is connected)
            live = [c for c in self.plan_ids()
                    if status[c]["connected"] and status[c]["upstream"] is not None]
            if not live:
                fault.detail = "nobody connected"
                return [fault]
            victim = pick(live)
            sid = status[victim]["sid"]
            fault.touched = [victim]
            fault.dyno = {d.url: d.label for d in self.dynos}.get(status[victim]["upstream"])
            fault.t = time.time()
            reply = self.driver.emit(victim, "kick", {"sid": sid}, timeout=3)
            answer = reply.get("answer") or reply.get("error")
            fault.detail = f"{victim} ({sid}) disconnected by its server: {answer}"
            fault.t_end = time.time()
            return [fault]
        if kind == "rolling":
            done = []
            for dyno in self.dynos:
                sub = Fault(n + len(done), "rolling", time.time(), group=n)
                self.stop_dyno(dyno, signal.SIGTERM, sub)
                done.append(sub)
                self.faults.append(sub)
                self.mark(f"fault #{sub.n} rolling (group #{n}) {sub.dyno} at "
                          f"{sub.t - self.started:.1f}s: {sub.detail}; {len(sub.touched)} "
                          "clients touched")
            return []
        raise ValueError(f"unknown fault {kind}")

    # -- the run ----------------------------------------------------------------
    def run(self) -> dict:
        say = self.say
        say(f"soak seed {self.seed} (replay: --seed {self.seed})")
        self.deck = list(self.faults_enabled)
        self.rng.shuffle(self.deck)
        self.plan = plan_clients(self.n_clients)
        for i, c in enumerate(self.plan):
            c["announce"] = i % 2 == 0
        report = None
        try:
            self.dynos = [Dyno(kind, ServerProcess(self.bootstrap, self.prefix, f"d{k}",
                                                   self.log_dir, **self.env, **dyno_env(kind)))
                          for k, kind in enumerate(self.kinds)]
            with ThreadPoolExecutor(len(self.dynos)) as pool:
                list(pool.map(lambda d: d.proc.start(90), self.dynos))
            self.mark("dynos ready: " + ", ".join(f"{d.label} {d.kind}" for d in self.dynos)
                      + f" ({self.prefix})")
            self.driver = NodeClients(max_seconds=self.duration * 3 + 600,
                                      log_path=self.log_dir / f"{self.prefix}-node.log")
            urls = [d.url for d in self.dynos]
            k = len(urls)
            csr = {"csr": True}
            self.driver.add([{"id": c["id"], "rooms": [c["room"]], "policy": "balance",
                              "auth": {"user": c["user"], **(csr if c["announce"] else {})},
                              "urls": urls[i % k:] + urls[:i % k]}
                             for i, c in enumerate(self.plan)])
            self.sids.update(self.driver.wait_ready(self.plan_ids(), 60 + self.n_clients))
            self.driver.add([{"id": f"p-{d.label}", "urls": [d.url], "policy": "stay"}
                             for d in self.dynos])
            self.driver.wait_ready([f"p-{d.label}" for d in self.dynos], 60)
            self.mark(f"{len(self.plan)} clients ({sum(c['announce'] for c in self.plan)} "
                      f"announcing) connected and joined, {len(self.dynos)} pumps")
            self._following = True
            threading.Thread(target=self.follow, daemon=True).start()
            streams: dict[str, str | None] = {"all": None}
            for c in self.plan:
                streams[f"room:{c['room']}"] = c["room"]
                streams[f"user:{c['user']}"] = user(c["user"])
            for c in self.plan:
                streams[f"sid:{c['id']}"] = self.sids[c["id"]]
            self.emitter = TimedEmitter(self.bootstrap, self.prefix, streams, self.rate, self.sent)
            self.emitter.start()
            self.pumps = [Pump(self, d, self.dyno_rate) for d in self.dynos]
            for p in self.pumps:
                p.start()
            t0 = time.monotonic()
            end = t0 + self.duration
            self.mark(f"emitting: {len(streams)} streams at {self.rate:g}/s, "
                      f"{len(self.pumps)} dynos at {self.dyno_rate:g}/s; faults every "
                      f"~{self.interval:g} s for {self.duration:g} s")
            while True:
                wait = self.rng.uniform(0.5, 1.5) * self.interval
                done = len({f.group or f.n for f in self.faults})
                # cover: the first faults, one of each kind, all come
                if time.monotonic() + wait > end - 2 and not (self.cover and done < len(self.deck)):
                    break
                time.sleep(wait)
                kind = self.next_fault_kind(done)
                for f in self.inject(kind):
                    self.faults.append(f)
                    self.mark(f"fault #{f.n} {f.kind} {f.dyno or ''} at "
                              f"{f.t - self.started:.1f}s: {f.detail}; {len(f.touched)} "
                              "clients touched")
            # the last fault's clients back (a blackhole is noticed after the
            # ping interval and timeout) while the emits go on
            tail = self.ping_wait + 5.0
            last = max((f.t_end or f.t for f in self.faults), default=0.0)
            time.sleep(max(0.0, end - time.monotonic(), last + tail - time.time()))
            for p in self.pumps:
                p.running = False
            for p in self.pumps:
                p.join(10)
            self.emitter.stop()
            self.mark(f"emits stopped: emitter {sum(self.emitter.emitted.values())} "
                      f"({self.emitter.failures.count} produce warnings), dynos "
                      f"{dict(sum((p.answers for p in self.pumps), Counter()))}")
            settle_clients(_Forwarding(self.driver), self.plan + self.pumps, self.settle,
                           self.mark, limit=90)
            report = self.driver.report()
        finally:
            self._following = False
            for p in self.pumps:
                p.running = False
            if self.emitter and self.emitter.is_alive():
                self.emitter.stop()
            if self.driver:
                self.driver.close()
            for d in self.dynos:
                try:
                    d.proc.stop()
                except Exception:
                    pass
        return self.result(report)

    def result(self, report: list[dict]) -> dict:
        by_id = {c["id"]: c for c in report}
        labels = {d.url: d.label for d in self.dynos}
        raw = self.log_dir / f"{self.prefix}-raw.json"
        # what the ledger reads, to count again (recount()) after a change to it
        raw.write_text(json.dumps({
            "plan": self.plan, "clients": [by_id[c["id"]] for c in self.plan],
            "sent": [[st, n, *s.__dict__.values()] for (st, n), s in self.sent.items()],
            "faults": [f.__dict__ for f in self.faults], "labels": labels,
            "started": self.started}))
        rows = ledger_all(self.plan, by_id, self.sent, self.faults, labels, self.started)
        fault_counts = Counter(f.kind for f in self.faults if f.group is None)
        rolling = len({f.group for f in self.faults if f.group})
        if rolling:
            fault_counts["rolling"] = rolling
        return {
            "seed": self.seed, "prefix": self.prefix, "code": code_version(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)),
            "duration": self.duration, "clients": self.n_clients, "options": self.options,
            "dynos": [{"label": d.label, "kind": d.kind, "starts": d.starts} for d in self.dynos],
            "emitted": len(self.sent),
            "emitted_certain": sum(1 for s in self.sent.values() if s.certain),
            "emit_failures": self.emitter.failures.count if self.emitter else None,
            "faults": [f.__dict__ for f in self.faults], "fault_counts": dict(fault_counts),
            "timeline": self.timeline, "totals": totals(rows), "per_client": rows,
            "server_logs": scan_logs([d.proc.log_path for d in self.dynos]),
            "log_dir": str(self.log_dir), "raw": str(raw),
        }


def ledger_all(plan, by_id, sent, faults, labels, started) -> list[dict]:
    """Every client's ledger (dyno emits made uncertain by the faults first)."""
    kills = defaultdict(list)
    terms = defaultdict(list)
    for f in faults:
        if f.kind == "kill":
            kills[f.dyno].append((f.t, f.t_end))
        elif f.kind in ("term", "gunicorn-term", "rolling"):
            terms[f.dyno].append((f.t, f.t_end))
    uncertain(sent, kills, terms)
    return [client_ledger(c, by_id[c["id"]], sent, faults, labels, started) for c in plan]


def recount(raw_path) -> dict:
    """The ledger again over a run's ``<prefix>-raw.json``: its totals and
    rows (a change to the ledger checked on a run that showed a failure)."""
    raw = json.loads(Path(raw_path).read_text())
    sent = {(st, n): Sent(*rest) for st, n, *rest in raw["sent"]}
    faults = [Fault(**f) for f in raw["faults"]]
    by_id = {c["id"]: c for c in raw["clients"]}
    rows = ledger_all(raw["plan"], by_id, sent, faults, raw["labels"], raw["started"])
    return {"totals": totals(rows), "per_client": rows}


class _Forwarding:
    """The driver as :func:`testkit.restart.settle_clients` sees it: a
    client is connected only if its balancer forwards (a blackholed one
    thinks it is connected until its ping timeout)."""

    def __init__(self, driver: NodeClients):
        self.driver = driver

    def status(self) -> list[dict]:
        return [{**s, "connected": s["connected"] and s["upstream"] is not None}
                for s in self.driver.status()]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux's /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def uncertain(sent: dict, kills: dict, terms: dict) -> None:
    """A dyno's emit is expected only if acknowledged before the dyno was
    told to stop, and not in the last seconds before a SIGKILL (``kills``
    and ``terms``: each dyno's (stopped, serving again) times)."""
    for s in sent.values():
        if s.origin == "emitter" or not s.certain:
            continue
        for t, back in terms.get(s.origin, ()):
            if t - 0.05 <= s.acked_at <= (back or t + 60):
                s.certain = False
        for t, back in kills.get(s.origin, ()):
            if t - KILL_UNCERTAIN <= s.acked_at <= (back or t + 60):
                s.certain = False


# -- the ledger -------------------------------------------------------------------
def _attribute(t: float, touches: list[Fault]) -> Fault | None:
    """The latest fault touching the client before ``t``, if recent."""
    best = None
    for f in touches:
        # f.t is taken just before the fault is made, on the clock the
        # driver's times are on: a drop before it is another's
        if f.t - 0.05 <= t and t - f.t <= ATTRIBUTE_WITHIN:
            best = f
    return best


def client_ledger(c: dict, rep: dict, sent: dict, faults: list[Fault], labels: dict,
                  t0: float = 0.0) -> dict:
    """Everything the ledger checks of one client (module docstring);
    times in its failure lines are seconds after ``t0``."""
    cid, announcing = c["id"], c["announce"]
    touches = sorted((f for f in faults if cid in f.touched), key=lambda f: f.t)
    connects = rep["connectLog"]
    drops = [(d["t"] / 1000, d["reason"]) for d in rep["disconnectLog"]]
    failures: list[str] = []
    # drops: which fault, and how many per fault (a loop)
    per_fault: Counter = Counter()
    unexplained = 0
    drop_fault: list[Fault | None] = []
    for t, reason in drops:
        f = _attribute(t, touches)
        drop_fault.append(f)
        if f is None:
            unexplained += 1
            failures.append(f"dropped at {t - t0:.1f}s ({reason}) with no fault touching it")
        else:
            per_fault[f.n] += 1
    loops = sum(n - 1 for n in per_fault.values() if n > 1)
    for n, count in per_fault.items():
        if count > 1:
            when = ", ".join(f"{t - t0:.1f}s {r}"
                             for (t, r), f in zip(drops, drop_fault, strict=True)
                             if f is not None and f.n == n)
            failures.append(f"dropped {count} times for fault #{n} (a loop): {when}")
    # reconnects: recovered with the sid, except after a kick
    segments = [(connects[0]["t"] / 1000, connects[0]["sid"])] if connects else []
    gaps: list[tuple[float, float]] = []
    outcome: Counter = Counter()
    reconnect_faults: Counter = Counter()
    failed_at: list[tuple[float, int]] = []  # recovered, wrongly: (its drop, which reconnect)
    for k, cn in enumerate(connects[1:], 1):
        t = cn["t"] / 1000
        before = [i for i, (td, _) in enumerate(drops) if td <= t + 0.05]
        i = before[-1] if before else None
        td, reason = drops[i] if i is not None else (t, "?")
        f = drop_fault[i] if i is not None else None
        kicked = f is not None and f.kind == "kick" and reason == "io server disconnect"
        seg_sid = segments[-1][1]
        at = (f"reconnect {k} at {t - t0:.1f}s to {labels.get(cn['upstream'], cn['upstream'])} "
              f"after {f'fault #{f.n} {f.kind}' if f else 'no fault'} ({reason})")
        reconnect_faults[f.kind if f else "none"] += 1
        if kicked:
            if cn["recovered"]:
                outcome["kick_recovered"] += 1
                failures.append(f"{at}: recovered after a kick")
                failed_at.append((td, k))
                continue
            outcome["kick_new"] += 1
        elif cn["recovered"] and cn["sid"] == seg_sid:
            outcome["recovered"] += 1
            continue
        elif cn["recovered"]:
            outcome["other_sid"] += 1
            failures.append(f"{at}: recovered with sid {cn['sid']}, not {seg_sid}")
            failed_at.append((td, k))
        else:
            outcome["not_recovered"] += 1
            failures.append(f"{at}: not recovered")
        # a new connection: what was sent in the gap is not expected
        start = min(td, f.t if f else td) - GAP_BEFORE
        gaps.append((start, (cn.get("joinedAt") or cn["t"] + 5000) / 1000 + GAP_AFTER))
        segments.append((t, cn["sid"]))
    sids = {sid for _, sid in segments}

    def addressed(s: Sent) -> bool:
        return (s.kind == "all" or (s.kind == "room" and s.target == c["room"])
                or (s.kind == "user" and s.target == c["user"])
                or (s.kind == "sid" and s.target in sids))

    def sid_at(t: float) -> str | None:
        current = None
        for start, sid in segments:
            if start <= t:
                current = sid
        return current

    ready = (rep.get("readyAt") or 0) / 1000
    expected = set()
    for key, s in sent.items():
        if (s.certain and s.t >= ready and addressed(s)
                and not any(a <= s.t <= b for a, b in gaps)
                and (s.kind != "sid" or s.target == sid_at(s.t))):
            expected.add(key)
    # arrivals
    arrivals: dict[tuple[str, int], list[float]] = defaultdict(list)
    stray = unknown = 0
    order: dict[str, list[int]] = defaultdict(list)
    for t, st, n, _offset in rep.get("seq", ()):
        key = (st, n)
        s = sent.get(key)
        if s is None:
            unknown += 1
            continue
        if not addressed(s):
            stray += 1
            continue
        if not arrivals[key] and s.certain:
            order[st].append(n)
        arrivals[key].append(t / 1000)
    first_drop = drops[0][0] if drops else None
    first_back = connects[1]["t"] / 1000 if len(connects) > 1 else None
    dup = repeats = dup_lines = 0
    for key, times in arrivals.items():
        extra = len(times) - 1
        if extra <= 0:
            continue
        # what it had before its first drop, again at its first reconnect
        # (replayed events may come just before the client's "connect"; one
        # got in the drop's own millisecond was had before it)
        allowed = (not announcing and first_drop is not None and first_back is not None
                   and times[0] <= first_drop
                   and all(first_drop <= t <= first_back + REPEAT_WITHIN for t in times[1:]))
        if allowed:
            repeats += extra
        else:
            dup += extra
            dup_lines += 1
            if dup_lines <= 3:
                failures.append(f"{key[0]} #{key[1]} (sent at {sent[key].t - t0:.1f}s) "
                                f"delivered {len(times)} times, at "
                                + ", ".join(f"{t - t0:.1f}s" for t in times))
    ooo = 0
    for st, ns in order.items():
        top = -1
        for n in ns:
            if n < top:
                ooo += 1
                if ooo <= 3:
                    failures.append(f"{st} #{n} after #{top}")
            top = max(top, n)
    lost_keys = sorted(expected - set(arrivals), key=lambda k: sent[k].t)
    lost_by_kind = Counter(sent[k].kind for k in lost_keys)
    lost_by_fault = Counter()
    after_failed = 0
    for key in lost_keys:
        # a client wrongly recovered (after a kick, or as another sid) may
        # lack its rooms from then on: its losses are that failure's
        wrong = [k for t, k in failed_at if t <= sent[key].t + 1.0]
        if wrong:
            after_failed += 1
            lost_by_fault[f"after failed reconnect {wrong[-1]}"] += 1
            continue
        f = _attribute(sent[key].t + 5.0, touches)
        lost_by_fault[f"#{f.n} {f.kind}" if f else "no fault"] += 1
    if lost_keys:
        first = lost_keys[0]
        failures.append(f"lost {len(lost_keys)} ({dict(lost_by_kind)}), by fault "
                        f"{dict(lost_by_fault)}; first {first[0]} #{first[1]} sent at "
                        f"{sent[first].t - t0:.1f}s")
    reasons = Counter(r for _, r in drops)
    return {
        "id": cid, "announcing": announcing, "user": c["user"], "room": c["room"],
        "expected": len(expected), "received": sum(len(v) for v in arrivals.values()),
        "lost": len(lost_keys), "lost_after_failed_reconnect": after_failed, "dup": dup,
        "first_drop_repeats": repeats, "ooo": ooo,
        "stray": stray, "unknown": unknown,
        "drops": len(drops), "reasons": dict(reasons), "reconnects": len(connects) - 1,
        "recovered": outcome["recovered"], "not_recovered": outcome["not_recovered"],
        "other_sid": outcome["other_sid"], "kick_new": outcome["kick_new"],
        "kick_recovered": outcome["kick_recovered"], "loops": loops,
        "unexplained": unexplained, "touched_by": len(touches),
        "reconnects_after": dict(reconnect_faults),
        "lost_by_kind": dict(lost_by_kind), "lost_by_fault": dict(lost_by_fault),
        "connected_at_end": rep["connected"], "connect_errors": rep.get("errorCount", 0),
        "upstreams": [labels.get(x["upstream"], x["upstream"]) for x in connects],
        "failures": failures,
        # the connection's life: [s, "drop", reason] and [s, dyno, recovered, sid]
        "history": sorted([[round(t - t0, 2), "drop", r] for t, r in drops]
                          + [[round(x["t"] / 1000 - t0, 2), labels.get(x["upstream"]),
                              x["recovered"], x["sid"]] for x in connects], key=lambda e: e[0]),
    }


#: what must be 0 for the soak to pass, and what each counts
TARGETS = {
    "lost": "events addressed to a client never delivered",
    "dup_announcing": "events delivered twice to an announcing client",
    "dup_plain": "repeats to a plain client beyond its first drop's last seconds",
    "ooo": "events delivered after a later one of their stream",
    "not_recovered": "reconnects (not after a kick) that were not recovered",
    "other_sid": "reconnects recovered with another sid",
    "kick_recovered": "reconnects after a kick that were recovered",
    "loops": "drops beyond one per fault that touched the client",
    "unexplained": "drops no fault explains",
    "not_connected_at_end": "clients not connected once settled",
    "stray": "events delivered to a client they were not addressed to",
    "unknown": "arrivals the soak never sent (the counting is broken)",
}


def totals(rows: list[dict]) -> dict:
    out = {k: sum(r[k] for r in rows) for k in (
        "expected", "received", "lost", "lost_after_failed_reconnect", "first_drop_repeats",
        "ooo", "stray", "unknown",
        "drops", "reconnects", "recovered", "not_recovered", "other_sid", "kick_new",
        "kick_recovered", "loops", "unexplained", "connect_errors")}
    out["dup_announcing"] = sum(r["dup"] for r in rows if r["announcing"])
    out["dup_plain"] = sum(r["dup"] for r in rows if not r["announcing"])
    out["lost_announcing"] = sum(r["lost"] for r in rows if r["announcing"])
    out["lost_plain"] = out["lost"] - out["lost_announcing"]
    out["not_connected_at_end"] = sum(1 for r in rows if not r["connected_at_end"])
    out["clients_failing"] = sum(1 for r in rows if r["failures"])
    for key in ("lost_by_kind", "reasons", "reconnects_after"):
        merged: Counter = Counter()
        for r in rows:
            merged.update(r[key])
        out[key] = dict(merged)
    out["failed_targets"] = {k: out[k] for k in TARGETS if out[k]}
    out["passed"] = not out["failed_targets"]
    return out


LOG_LINES = {
    "recovering": re.compile(r"recovery INFO (recovering) "),
    "no recovery": re.compile(r"no recovery for pid \S+: ([\w-]+)"),
    "traceback": re.compile(r"^Traceback"),
    "error": re.compile(r" ERROR "),
}


def scan_logs(paths) -> dict:
    """What the dynos' logs say: refused recoveries by reason, tracebacks
    and errors."""
    found: dict[str, Counter] = {k: Counter() for k in LOG_LINES}
    for path in paths:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            for kind, pattern in LOG_LINES.items():
                m = pattern.search(line)
                if m:
                    found[kind][m.group(1) if m.groups() else Path(path).stem[-2:]] += 1
                    break
    return {k: dict(v) for k, v in found.items()}


def run(bootstrap: str, *, seed: int | None = None, duration: float = 180.0,
        clients: int = 20, kinds=KINDS, faults=FAULTS, interval: float = 8.0,
        rate: float = 1.0, dyno_rate: float = 2.0, ping_interval: float = 5.0,
        ping_timeout: float = 5.0, max_disconnection: float = 120.0, log_dir: Path,
        kafka_client: str = "kafka-python", settle: float = 5.0, cover: bool = False,
        say=print) -> dict:
    """Run the soak once on the broker at ``bootstrap`` (module docstring);
    ``seed`` None picks one; ``cover``: go on past ``duration`` until a
    fault of each kind came. Everything started is stopped."""
    if seed is None:
        seed = random.SystemRandom().randrange(1, 10**6)
    bad = [k for k in kinds if k not in KINDS] + [f for f in faults if f not in FAULTS]
    if bad:
        raise ValueError(f"unknown dyno kinds or faults: {bad}")
    return Soak(bootstrap, seed=seed, duration=duration, clients=clients, kinds=kinds,
                faults=faults, interval=interval, rate=rate, dyno_rate=dyno_rate,
                ping_interval=ping_interval, ping_timeout=ping_timeout,
                max_disconnection=max_disconnection, log_dir=log_dir,
                kafka_client=kafka_client, settle=settle, cover=cover, say=say).run()


# -- the report -------------------------------------------------------------------
def report_text(r: dict) -> str:
    t = r["totals"]
    o = r["options"]
    failed = ", ".join(f"{k} {v}" for k, v in t["failed_targets"].items())
    fleet = ", ".join(f"{d['label']} {d['kind']} (started {d['starts']}x)" for d in r["dynos"])
    lines = [
        f"== soak seed {r['seed']}: {'PASS' if t['passed'] else f'FAIL ({failed})'}",
        f"fleet: {fleet}; "
        f"{o['kafka_client']}; {r['clients']} clients (even ids announcing); "
        f"{r['duration']:g} s; code {r['code']}; prefix {r['prefix']}",
        f"faults: {r['fault_counts']} ({len(r['faults'])} dyno stops or cuts in all)",
        f"events: {r['emitted']} sent ({r['emitted_certain']} counted), {t['expected']} "
        f"expected deliveries, {t['received']} received; lost {t['lost']} (announcing "
        f"{t['lost_announcing']}, plain {t['lost_plain']}; by kind {t['lost_by_kind']}; "
        f"{t['lost_after_failed_reconnect']} after a reconnect wrongly recovered); "
        f"repeated to announcing {t['dup_announcing']}; plain repeats beyond the first drop "
        f"{t['dup_plain']}; plain first-drop repeats (allowed) {t['first_drop_repeats']}; "
        f"out of order {t['ooo']}; stray {t['stray']}; unknown {t['unknown']}",
        f"reconnects: {t['reconnects']} ({t['reconnects_after']}): recovered {t['recovered']}, "
        f"not recovered {t['not_recovered']}, recovered with another sid {t['other_sid']}, "
        f"after a kick new {t['kick_new']} / recovered {t['kick_recovered']}; drops "
        f"{t['drops']} {t['reasons']}; loops {t['loops']}; unexplained drops "
        f"{t['unexplained']}; not connected at end {t['not_connected_at_end']}; "
        f"connect errors {t['connect_errors']}",
        f"dyno logs ({r['log_dir']}/{r['prefix']}-d*.log): {r['server_logs']}",
        "timeline:",
        *(f"  {ts:7.1f}s {what}" for ts, what in r["timeline"]),
    ]
    failing = [row for row in r["per_client"] if row["failures"]]
    if failing:
        lines.append(f"failing clients ({len(failing)}/{r['clients']}):")
        for row in failing:
            lines.append(f"  {row['id']} ({'announcing' if row['announcing'] else 'plain'}, "
                         f"via {' '.join(str(u) for u in row['upstreams'])}):")
            lines += [f"    {line}" for line in row["failures"][:6]]
            if len(row["failures"]) > 6:
                lines.append(f"    ... {len(row['failures']) - 6} more")
    all_faults = set(o["faults"]) >= set(FAULTS) - {"gunicorn-term"}
    lines.append(f"replay: make soak SOAK_ARGS=\"--seed {r['seed']} --duration {r['duration']:g} "
                 f"--clients {r['clients']} --kinds {','.join(o['kinds'])} --interval "
                 f"{o['interval']:g}{' --cover' if o.get('cover') else ''}"
                 f"{'' if all_faults else ' --faults ' + ','.join(o['faults'])}"
                 f"{' --client confluent' if o['kafka_client'] == 'confluent' else ''}\"")
    return "\n".join(lines)


def write(r: dict, directory: Path) -> Path:
    """The result as JSON and the report as text; returns the JSON's path."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"soak-{time.strftime('%Y%m%d-%H%M%S')}-seed{r['seed']}"
    (directory / f"{stem}.json").write_text(json.dumps(r, indent=1, default=str))
    (directory / f"{stem}.txt").write_text(report_text(r) + "\n")
    return directory / f"{stem}.json"
