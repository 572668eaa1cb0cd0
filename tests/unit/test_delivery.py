"""The Locust load kit's delivery ledger and end-of-run table
(testkit.delivery, testkit.delivery_report), without Locust: a stand-in
environment records the ``deliver`` requests the ledger reports."""
from __future__ import annotations

import time
from types import SimpleNamespace

from testkit.delivery import COUNTERS, KINDS, Ledger, MessageLost, add_up
from testkit.delivery_report import delivery_table


class Environment:
    """What the ledger uses of a Locust environment: the parsed options and
    the request event."""

    def __init__(self, loss_grace=5.0):
        self.parsed_options = SimpleNamespace(loss_grace=loss_grace)
        self.requests = []
        self.events = SimpleNamespace(request=SimpleNamespace(fire=self._fire))

    def _fire(self, **request):
        self.requests.append(request)

    def delivered(self, name):
        return [r for r in self.requests if r["name"] == name and r["exception"] is None]

    def failed(self, name):
        return [r for r in self.requests if r["name"] == name and r["exception"] is not None]


def conn(user_name, role="receiver", dyno="d2"):
    return SimpleNamespace(user_name=user_name, role=role, dyno=dyno)


def line(kind, msgid, sent_at, dyno="d1"):
    return {"kind": kind, "text": f"{sent_at:.6f}|{msgid}", "dyno": dyno}


def test_a_message_received_once_is_counted_and_timed():
    env = Environment()
    ledger = Ledger(env)
    msgid, sent_at = ledger.register("room", "alice")
    ledger.on_line(conn("alice"), line("room", msgid, sent_at))
    assert ledger.counts["room"] == {"sent": 1, "received": 1, "lost": 0, "late": 0,
                                     "duplicate": 0}
    assert not ledger.pending
    (request,) = env.delivered("room")
    assert request["request_type"] == "deliver" and request["response_time"] >= 0


def test_a_second_copy_is_a_duplicate():
    env = Environment()
    ledger = Ledger(env)
    msgid, sent_at = ledger.register("private", "alice")
    for _ in range(2):
        ledger.on_line(conn("alice"), line("private", msgid, sent_at))
    assert ledger.counts["private"]["received"] == 1
    assert ledger.counts["private"]["duplicate"] == 1
    assert len(env.delivered("private")) == 1


def test_a_message_past_the_grace_is_lost_and_its_arrival_is_late():
    env = Environment(loss_grace=0.05)
    ledger = Ledger(env)
    msgid, sent_at = ledger.register("room", "alice")
    time.sleep(0.1)
    ledger.sweep()
    assert ledger.counts["room"]["lost"] == 1 and not ledger.pending
    (failure,) = env.failed("room")
    assert isinstance(failure["exception"], MessageLost)
    ledger.on_line(conn("alice"), line("room", msgid, sent_at))
    assert ledger.counts["room"]["late"] == 1
    assert ledger.counts["room"]["received"] == 0
    # a second late copy is a duplicate, not a second late arrival
    ledger.on_line(conn("alice"), line("room", msgid, sent_at))
    assert ledger.counts["room"]["late"] == 1 and ledger.counts["room"]["duplicate"] == 1


def test_an_arrival_slower_than_the_grace_counts_as_lost_and_late():
    env = Environment(loss_grace=1.0)
    ledger = Ledger(env)
    msgid, _ = ledger.register("room", "alice")
    ledger.on_line(conn("alice"), line("room", msgid, time.time() - 2))
    assert ledger.counts["room"]["lost"] == 1 and ledger.counts["room"]["late"] == 1
    assert isinstance(env.failed("room")[0]["exception"], MessageLost)


def test_sweep_everything_loses_what_is_in_flight():
    env = Environment()
    ledger = Ledger(env)
    ledger.register("room", "alice")
    ledger.register("broadcast", "bob")
    ledger.sweep()
    assert len(ledger.pending) == 2  # within the grace: still expected
    ledger.sweep(everything=True)
    assert not ledger.pending
    assert ledger.counts["room"]["lost"] == ledger.counts["broadcast"]["lost"] == 1


def test_lines_of_other_processes_and_of_people_are_ignored():
    env = Environment()
    ledger = Ledger(env)
    other = Ledger(env)  # another worker: another prefix, another clock
    msgid, sent_at = other.register("room", "alice")
    ledger.on_line(conn("alice"), line("room", msgid, sent_at))
    ledger.on_line(conn("alice"), {"kind": "room", "text": "hello from a person"})
    ledger.on_line(conn("alice"), {"kind": "join", "text": "x"})
    ledger.on_line(conn("alice"), "not a dict")
    assert ledger.counts["room"]["received"] == 0 and not env.requests


def test_another_users_room_line_on_a_receiver_is_misrouted():
    env = Environment()
    ledger = Ledger(env)
    msgid, sent_at = ledger.register("room", "alice")
    ledger.on_line(conn("bob"), line("room", msgid, sent_at))
    assert ledger.other["misrouted"] == 1
    assert msgid in ledger.pending  # still expected on alice's receiver


def test_a_shout_counts_on_its_users_receiver_and_times_every_cross_dyno_receipt():
    env = Environment()
    ledger = Ledger(env)
    msgid, sent_at = ledger.register("broadcast", "alice")
    shout = line("all", msgid, sent_at, dyno="d1")
    ledger.on_line(conn("bob", dyno="d2"), shout)  # another user's receiver: fan-out
    ledger.on_line(conn("carol", role="sender", dyno="d1"), shout)  # same dyno: untimed
    ledger.on_line(conn("alice", dyno="d3"), shout)  # its own receiver
    assert ledger.counts["broadcast"]["received"] == 1
    assert ledger.other["misrouted"] == 0
    assert len(env.delivered("broadcast")) == 2  # bob's and alice's, both cross-dyno


def test_an_unsent_message_is_taken_back():
    ledger = Ledger(Environment())
    msgid, _ = ledger.register("private", "alice")
    ledger.unregister(msgid)
    assert ledger.counts["private"]["sent"] == 0 and not ledger.pending


def test_pairs_cycle_over_every_ordered_pair_of_different_hosts():
    ledger = Ledger(Environment())
    hosts = ["a", "b", "c"]
    pairs = [ledger.pick_pair(hosts) for _ in range(6)]
    assert sorted(pairs) == sorted((x, y) for x in hosts for y in hosts if x != y)
    assert ledger.pick_pair(["only"]) == ("only", "only")


def test_add_up_sums_every_process():
    one, two = Ledger(Environment()), Ledger(Environment())
    one.register("room", "a")
    two.register("room", "b")
    two.register("private", "b")
    one.other["users"], two.other["users"] = 1, 2
    total = add_up([one.snapshot(), two.snapshot()])
    assert total["counts"]["room"]["sent"] == 2
    assert total["counts"]["private"]["sent"] == 1
    assert total["other"]["users"] == 3
    assert set(total["counts"]) == set(KINDS.values())


def totals(**by_kind):
    counts = {kind: dict.fromkeys(COUNTERS, 0) for kind in KINDS.values()}
    for kind, values in by_kind.items():
        counts[kind].update(values)
    return {"counts": counts, "other": {"users": 2, "connections": 4}}


class Entry:
    num_requests, num_failures, max_response_time = 10, 1, 90.0

    def get_response_time_percentile(self, p):
        return {0.5: 12, 0.95: 40, 0.99: 80}[p]


def test_the_table_says_ok_when_everything_arrived():
    text, failures = delivery_table(totals(room={"sent": 3, "received": 3}), 1, 5.0)
    assert failures == 0
    assert "RESULT: OK: all 3 messages delivered within 5 s" in text
    assert "1 Locust process(es), 2 users, 4 connections opened" in text


def test_the_table_fails_on_a_loss_or_a_misrouted_line():
    total = totals(room={"sent": 3, "received": 2, "lost": 1})
    total["other"]["misrouted"] = 2
    text, failures = delivery_table(total, 2, 5.0)
    assert failures == 3
    assert "RESULT: FAIL: 1 message(s) lost (room 1), 2 misrouted" in text


def test_the_table_shows_latency_percentiles_and_warnings():
    total = totals(private={"sent": 4, "received": 4, "duplicate": 4})
    total["other"]["same_dyno"] = 1
    stats = SimpleNamespace(entries={("private", "deliver"): Entry()})
    text, _ = delivery_table(total, 1, 5.0, stats)
    row = next(ln for ln in text.splitlines() if ln.startswith("private"))
    assert row.split()[-5:] == ["9", "12", "40", "80", "90"]
    assert "private duplicates" in text
    assert "WARNING: 1 user(s) had both connections on one dyno" in text
