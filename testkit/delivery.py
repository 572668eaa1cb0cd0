"""The delivery ledger of the Locust load kit (loadtests/locustfile.py):
one Locust process's account of the messages its users sent, counted
exactly: each room and private message, and each user's own shout, must
reach that user's receiver connection exactly once within the grace period;
later is LATE (and lost), twice is a DUPLICATE, never is LOST. Latencies and
losses are reported as Locust ``deliver`` requests through the environment's
request event; nothing here imports Locust, so tests drive it with a stand-in
environment (tests/unit/test_delivery.py).
"""
from __future__ import annotations

import itertools
import logging
import random
import time
import uuid
from collections import OrderedDict

import gevent

# The sample chat's line kinds, and the names they get in the stats table.
KINDS = {"room": "room", "private": "private", "all": "broadcast"}
COUNTERS = ("sent", "received", "lost", "late", "duplicate")

log = logging.getLogger("loadtest")


def option(environment, name, default):
    value = getattr(getattr(environment, "parsed_options", None), name, None)
    return default if value is None else value


def fire(environment, request_type, name, response_time, exception=None):
    environment.events.request.fire(
        request_type=request_type, name=name, response_time=response_time,
        response_length=0, exception=exception, context={},
    )


class MessageLost(Exception):
    pass


class Ledger:
    """Counters of one Locust process (one worker).

    ``pending`` holds every room/private message, and every shout, until the
    sender's own receiver connection gets it; the sweeper turns entries older
    than the grace period into losses. Message ids start with a per-process
    prefix, so a process recognises its own messages (and only times those:
    the send time and the receive time then come from the same clock).
    """

    def __init__(self, environment):
        self.environment = environment
        self.prefix = uuid.uuid4().hex[:12] + "."  # made after --processes forks
        self._seq = itertools.count(1)
        pairs_offset = random.randrange(1 << 16)
        self._pair_counter = itertools.count(pairs_offset)
        self.reset()

    def reset(self):
        self.counts = {kind: dict.fromkeys(COUNTERS, 0) for kind in KINDS.values()}
        self.other = dict.fromkeys(
            ("users", "connections", "connect_failed", "dropped", "same_dyno",
             "misrouted"), 0)
        self.pending = {}  # msgid -> (kind, sent_at, user name); in send order
        self.finished = OrderedDict()  # msgid -> [state, user name, finished_at]
        self.draining = False
        self.drained = False

    @property
    def grace(self):
        return float(option(self.environment, "loss_grace", 5.0))

    def pick_pair(self, hosts):
        """(sender url, receiver url): every ordered pair of different hosts in
        turn, so the users of a process spread evenly over the dynos."""
        if len(hosts) == 1:
            return hosts[0], hosts[0]
        pairs = [(a, b) for a in hosts for b in hosts if a != b]
        return pairs[next(self._pair_counter) % len(pairs)]

    def register(self, kind, user_name):
        msgid = f"{self.prefix}{next(self._seq)}"
        sent_at = time.time()
        self.pending[msgid] = (kind, sent_at, user_name)
        self.counts[kind]["sent"] += 1
        return msgid, sent_at

    def unregister(self, msgid):
        entry = self.pending.pop(msgid, None)
        if entry is not None:
            self.counts[entry[0]]["sent"] -= 1

    def on_line(self, conn, data):
        """A ``line`` arrived on one of this process's connections."""
        now = time.time()
        if not isinstance(data, dict) or data.get("kind") not in KINDS:
            return
        kind = KINDS[data["kind"]]
        try:
            stamp, msgid = str(data.get("text", "")).split("|", 1)
            latency = (now - float(stamp)) * 1000
        except ValueError:
            return  # not ours: a join line, a person typing in the demo page
        if not msgid.startswith(self.prefix):
            return  # another worker's message: its clock, not ours
        cross = bool(conn.dyno) and data.get("dyno") != conn.dyno
        if conn.role == "receiver" and self._receipt(
                msgid, kind, conn.user_name, latency, timed=kind != "broadcast" or cross):
            return
        if kind == "broadcast" and cross:
            # Fan-out: every connection of this process on another dyno than
            # the sender's times every shout of this process.
            fire(self.environment, "deliver", "broadcast", latency)

    def _receipt(self, msgid, kind, user_name, latency, timed):
        """The receiver of ``user_name`` got message ``msgid``: count it.
        False if it is another user's message."""
        entry = self.pending.get(msgid)
        if entry is not None:
            owner = entry[2]
        else:
            done = self.finished.get(msgid)
            if done is None:
                return False  # forgotten (older than the memory of finished ids)
            owner = done[1]
        if owner != user_name:
            if kind != "broadcast":  # another user's shout is normal; the rest is not
                self.other["misrouted"] += 1
            return kind != "broadcast"
        if entry is None:  # seen before
            if done[0] == "lost":
                self.counts[kind]["late"] += 1  # counted as lost already
                done[0] = "late"
            else:
                self.counts[kind]["duplicate"] += 1
            return True
        del self.pending[msgid]
        grace = self.grace
        if latency > grace * 1000:  # arrived, but after the grace period
            self.counts[kind]["lost"] += 1
            self.counts[kind]["late"] += 1
            self.finished[msgid] = ["late", user_name, time.time()]
            fire(self.environment, "deliver", kind, latency,
                 MessageLost(f"not received within {grace:g} s"))
            return True
        self.counts[kind]["received"] += 1
        self.finished[msgid] = ["ok", user_name, time.time()]
        if timed:
            fire(self.environment, "deliver", kind, latency)
        return True

    def sweep(self, everything=False):
        """Messages older than the grace period (all of them with
        ``everything``) are lost: a failed ``deliver`` request each."""
        now = time.time()
        grace = self.grace
        while self.pending:
            msgid = next(iter(self.pending))
            kind, sent_at, user_name = self.pending[msgid]
            if not everything and now - sent_at < grace:
                break
            del self.pending[msgid]
            self.counts[kind]["lost"] += 1
            self.finished[msgid] = ["lost", user_name, now]
            fire(self.environment, "deliver", kind, (now - sent_at) * 1000,
                 MessageLost(f"not received within {grace:g} s"))
        horizon = now - max(60.0, 10 * grace)  # remember finished ids this long
        while self.finished:
            msgid = next(iter(self.finished))
            if self.finished[msgid][2] >= horizon:
                break
            del self.finished[msgid]

    def sweeper(self):
        while True:
            gevent.sleep(0.2)
            try:
                self.sweep()
            except Exception:
                log.exception("delivery sweeper")

    def drain(self):
        """Stop sending, give every message in flight the grace period, count."""
        if self.drained:
            return
        self.draining = True
        deadline = time.time() + self.grace + 0.5
        while self.pending and time.time() < deadline:
            gevent.sleep(0.05)
        self.sweep(everything=True)
        self.drained = True

    def snapshot(self):
        return {"counts": {k: dict(v) for k, v in self.counts.items()},
                "other": dict(self.other)}


def add_up(snapshots):
    total = {"counts": {kind: dict.fromkeys(COUNTERS, 0) for kind in KINDS.values()},
             "other": {}}
    for snap in snapshots:
        for kind, counters in snap.get("counts", {}).items():
            row = total["counts"].setdefault(kind, dict.fromkeys(COUNTERS, 0))
            for name, value in counters.items():
                row[name] = row.get(name, 0) + value
        for name, value in snap.get("other", {}).items():
            total["other"][name] = total["other"].get(name, 0) + value
    return total
