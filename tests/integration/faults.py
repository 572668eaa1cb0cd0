"""The fault tests' stream: two dynos emit numbered records to each other's
client (broadcast, room, user, sid) and join it to new rooms, while a test
breaks the cluster; then the figures: what was emitted, what the broker
acknowledged (the producer's own futures in the server), what it holds (read
back raw), what the clients received, lost, duplicated, and the longest
delivery gap."""
from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime

import socketio

from testkit.harness import RawTopic, unique, wait_until

KINDS = ("all", "room", "user", "sid")
TOPIC_OF = {"all": "send-all", "room": "send-group", "user": "send-user", "sid": "send-conn"}
TAG = re.compile(rb"S\|([^|\"]+)\|(\w+)\|(\d+)")
_STAMP = r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] "
_NEW_CONTROLLER = re.compile(_STAMP + r".*\[QuorumController id=\d+\] In the new epoch "
                             r"(\d+), the leader is (\d+)\.", re.M)


def _when(stamp: str) -> float:
    """A Kafka log line's time (local), as time.time()."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def active_controller(cluster) -> int | None:
    """The KRaft controller quorum's leader, from the nodes' logs (each node
    logs every election it sees)."""
    latest: tuple[int, int] | None = None
    for node in cluster.nodes:
        for found in _NEW_CONTROLLER.finditer(node.log_path.read_text(errors="replace")):
            epoch, leader = int(found[2]), int(found[3])
            if latest is None or epoch > latest[0]:
                latest = (epoch, leader)
    return None if latest is None else latest[1]


def fenced_after(cluster, node_id: int, since: float) -> float | None:
    """Seconds from ``since`` (time.time()) until the controller fenced
    ``node_id`` (a fence record replayed in another node's log), or None."""
    fenced = re.compile(_STAMP + r".*BrokerRegistrationChangeRecord\(brokerId="
                        rf"{node_id}, .*fenced=1,", re.M)
    times = [_when(found[1]) for node in cluster.nodes if node.node_id != node_id
             for found in fenced.finditer(node.log_path.read_text(errors="replace"))]
    after = [t - since for t in times if t >= since - 1]
    return round(min(after), 2) if after else None


class Receiver:
    """A real socketio.Client on one dyno that times every stream record."""

    def __init__(self, server, user: str, room: str) -> None:
        self.server = server
        self.user = user
        self.room = room
        self.arrivals: list[tuple[float, str]] = []  # (monotonic, "origin|kind|n")
        self._lock = threading.Lock()
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("s", self._on_stream)
        self.sio.connect(server.url, transports=["websocket"], auth={"user": user},
                         wait_timeout=10)
        assert self.sio.call("join", {"room": room}, timeout=10) == "ok"

    def _on_stream(self, tag: str) -> None:
        with self._lock:
            self.arrivals.append((time.monotonic(), tag[2:]))

    @property
    def sid(self) -> str:
        return self.sio.get_sid()

    def received(self, origin: str) -> list[tuple[float, str, str]]:
        """(time, kind, "kind:n") of the records ``origin`` emitted."""
        with self._lock:
            arrivals = list(self.arrivals)
        out = []
        for at, tag in arrivals:
            source, kind, n = tag.split("|")
            if source == origin:
                out.append((at, kind, f"{kind}:{n}"))
        return out

    def call(self, event: str, data=None, timeout: float = 60):
        return self.sio.call(event, data, timeout=timeout)

    def close(self) -> None:
        self.sio.disconnect()


@dataclass
class Figures:
    test: str
    emitted: int = 0
    acked: int = 0  # the producer's future succeeded
    failed: int = 0  # the producer's future failed
    raised: int = 0  # the emit itself raised (await_produce=True)
    held: int = 0  # distinct records the broker holds (read back)
    held_twice: int = 0  # records the broker holds more than once
    held_extra: int = 0  # copies beyond the first (a record held 3 times: 2)
    delivered: int = 0  # distinct records that reached their client
    lost: int = 0  # acknowledged (or returned, or held) but never delivered
    duplicated: int = 0  # deliveries beyond the first
    #: deliveries of a record beyond the copies the broker holds of it: a
    #: record read or handed out twice by the consumer, never a producer's
    #: retry (each copy it wrote may be delivered once)
    redelivered: int = 0
    gap_s: float = 0.0  # longest silence of one kind at one client
    #: seconds from the fault to the end of the silence it caused, of the
    #: kind and client that waited longest (None: no fault given)
    back_s: float | None = None
    joins: int = 0
    joins_ok: int = 0
    joins_timeout: int = 0
    joins_error: int = 0
    join_max_s: float = 0.0
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        return (f"[{self.test}] emitted={self.emitted} acked={self.acked} failed={self.failed} "
                f"raised={self.raised} held={self.held} held_twice={self.held_twice} "
                f"held_extra={self.held_extra} delivered={self.delivered} lost={self.lost} "
                f"duplicated={self.duplicated} redelivered={self.redelivered} "
                f"gap={self.gap_s:.1f}s back={self.back_s}s joins={self.joins_ok}/{self.joins} ok, "
                f"{self.joins_timeout} timeout, {self.joins_error} error, "
                f"max {self.join_max_s:.1f}s {self.extra or ''}")

    def record(self, artifacts) -> None:
        print("\nFAULT " + self.line(), flush=True)
        with open(artifacts / "faults.jsonl", "a") as out:
            out.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **asdict(self)})
                      + "\n")


class Stream:
    """Two dynos streaming to each other's receiver."""

    def __init__(self, fleet, a, b, rate: float = 10, join_every: float = 0.5) -> None:
        self.fleet = fleet
        self.servers = {"A": a, "B": b}
        self.rate = rate
        self.join_every = join_every
        self.rx = {label: Receiver(server, unique(f"u{label}"), unique(f"r{label}"))
                   for label, server in self.servers.items()}
        # Each dyno's driver is a client of its own (it only sends events).
        self.drivers = {label: fleet.client(server) for label, server in self.servers.items()}
        self.reports: dict[str, dict] = {}
        self.started = 0.0

    @staticmethod
    def other(label: str) -> str:
        return "B" if label == "A" else "A"

    def start(self) -> None:
        self.started = time.monotonic()
        for label, driver in self.drivers.items():
            target = self.rx[self.other(label)]
            assert driver.call("stream", {
                "origin": label, "room": target.room, "user": target.user, "sid": target.sid,
                "rate": self.rate, "join_every": self.join_every,
            }) == "ok"

    def wait_flowing(self, timeout: float = 20) -> None:
        """Until every kind from each dyno reaches the other's receiver."""
        def flowing():
            return all({k for _, k, _ in self.rx[self.other(o)].received(o)} >= set(KINDS)
                       for o in self.servers)
        wait_until(flowing, timeout, 0.1, "every kind of emit delivered both ways")

    def wait_flowing_after(self, since: float, timeout: float = 60) -> None:
        """Until every kind from each dyno arrives again after ``since``."""
        def flowing():
            return all({k for at, k, _ in self.rx[self.other(o)].received(o) if at > since}
                       >= set(KINDS) for o in self.servers)
        wait_until(flowing, timeout, 0.1, f"every kind delivered again within {timeout:g} s")

    def stop(self, timeout: float = 60) -> None:
        for label, driver in self.drivers.items():
            self.reports[label] = driver.call("stream_stop", {"timeout": timeout},
                                              timeout=timeout + 30)

    def settle(self, timeout: float = 30, must: str = "acked") -> None:
        """Wait until every record that ``must`` be delivered was, or timeout."""
        def done():
            return all(self._must(o, must) <= self._delivered_ids(o) for o in self.servers)
        try:
            wait_until(done, timeout, 0.2, "every acknowledged record delivered")
        except AssertionError:
            pass  # the figures say what is missing

    def _must(self, origin: str, must: str) -> set[str]:
        report = self.reports[origin]
        if must == "returned":
            return set(report["emitted"]) - set(report["raised"])
        return set(report["acked"])

    def _delivered_ids(self, origin: str) -> set[str]:
        return {ident for _, _, ident in self.rx[self.other(origin)].received(origin)}

    def held(self) -> Counter:
        """How many times the broker holds each record ("origin|kind:n")."""
        held: Counter = Counter()
        for kind in KINDS:
            reader = RawTopic(self.fleet.broker.bootstrap, self.fleet.topic(TOPIC_OF[kind]))
            try:
                for record in reader.drain(quiet=1.0):
                    for found in TAG.finditer(record.value or b""):
                        held[f"{found[1].decode()}|{found[2].decode()}:{found[3].decode()}"] += 1
            finally:
                reader.close()
        return held

    def figures(self, test: str, must: str = "acked", window: tuple[float, float] | None = None,
                fault_at: float | None = None, **extra) -> Figures:
        """The figures of the run; ``fault_at`` (monotonic) gives ``back_s``."""
        held = self.held()
        fig = Figures(test, extra=extra)
        for origin, report in self.reports.items():
            received = self.rx[self.other(origin)].received(origin)
            counts = Counter(ident for _, _, ident in received)
            fig.emitted += len(report["emitted"])
            fig.acked += len(report["acked"])
            fig.failed += len(report["failed"])
            fig.raised += len(report["raised"])
            mine = {k.split("|", 1)[1]: v for k, v in held.items() if k.startswith(origin + "|")}
            fig.held += len(mine)
            fig.held_twice += sum(1 for v in mine.values() if v > 1)
            fig.held_extra += sum(v - 1 for v in mine.values())
            fig.delivered += len(counts)
            must_have = self._must(origin, must) | set(mine)
            fig.lost += len(must_have - set(counts))
            fig.duplicated += sum(v - 1 for v in counts.values())
            # Per record: a producer's retry may write it 3 times (CI: 14
            # deliveries beyond the first of 13 records held twice or more).
            beyond = {ident: (n, mine.get(ident, 0)) for ident, n in counts.items()
                      if n > max(mine.get(ident, 0), 1)}
            fig.redelivered += sum(n - max(copies, 1) for n, copies in beyond.values())
            if beyond:  # which ones: (deliveries, copies held)
                fig.extra.setdefault("redelivered_of", {}).update(
                    {f"{origin}|{ident}": v for ident, v in sorted(beyond.items())[:5]})
            for kind in KINDS:
                times = sorted(at for at, k, _ in received if k == kind)
                if window is not None:
                    times = [t for t in times if window[0] <= t <= window[1]] or times
                gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
                if fault_at is not None:
                    # The end of this stream's longest silence that ended after
                    # the fault (records already on their way arrive just after
                    # it, and then the silence begins); never delivered again
                    # counts as the whole rest of the run.
                    spans = [(b - a, b) for a, b in zip(times, times[1:], strict=False)
                             if b > fault_at]
                    back = (max(spans)[1] if spans else time.monotonic()) - fault_at
                    if fig.back_s is None or back > fig.back_s:
                        fig.back_s = back
                        fig.extra["back_of"] = f"{origin}>{kind}"
                if max(gaps, default=0.0) > fig.gap_s:
                    fig.gap_s = max(gaps)
                    # Which stream stalled longest, and from when (run time).
                    start = times[gaps.index(fig.gap_s)] - self.started
                    fig.extra["gap_of"] = f"{origin}>{kind} at {start:.1f}s"
            for _room, outcome, seconds in report["joins"]:
                fig.joins += 1
                fig.joins_ok += outcome == "ok"
                fig.joins_timeout += outcome == "timeout"
                fig.joins_error += outcome not in ("ok", "timeout")
                fig.join_max_s = max(fig.join_max_s, seconds)
        fig.gap_s = round(fig.gap_s, 2)
        if fig.back_s is not None:
            fig.back_s = round(fig.back_s, 2)
        fig.join_max_s = round(fig.join_max_s, 2)
        return fig

    def joined_rooms_missing(self) -> list[str]:
        """Rooms a join reported "ok" for that the receiver is not in."""
        missing = []
        for origin, report in self.reports.items():
            rooms = set(self.rx[self.other(origin)].call("rooms"))
            missing += [room for room, outcome, _ in report["joins"]
                        if outcome == "ok" and room not in rooms]
        return missing

    def close(self) -> None:
        for rx in self.rx.values():
            try:
                rx.close()
            except Exception:
                pass
