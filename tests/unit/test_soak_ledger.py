"""The soak's ledger (testkit/soak.py) on made-up client histories: each
failure kind it must catch, and what it must let pass (a plain client's
first-drop repeats, the gap after a kick)."""
from testkit.soak import Fault, Sent, client_ledger, totals

T0 = 1000.0  # seconds
ANNOUNCING = {"id": "c0", "user": "u0", "room": "r0", "announce": True}
PLAIN = {"id": "c1", "user": "u0", "room": "r1", "announce": False}


def ms(t):
    return int((T0 + t) * 1000)


def sent_all(count, every=1.0, stream="all", kind="all", target=None):
    """``count`` events of one stream, one every ``every`` s from t=1."""
    return {(stream, n): Sent(T0 + 1 + n * every, kind, target, True, "emitter")
            for n in range(count)}


def history(connects, drops=(), arrivals=(), connected=True):
    return {"connectLog": [{"t": ms(t), "sid": sid, "recovered": rec, "upstream": "u",
                            **({"joinedAt": ms(j)} if j else {})}
                           for t, sid, rec, j in connects],
            "disconnectLog": [{"t": ms(t), "reason": r} for t, r in drops],
            "seq": [[ms(t), st, n, offset] for t, st, n, offset in arrivals],
            "readyAt": ms(0.5), "connected": connected, "errorCount": 0}


def ledger(client, rep, sent, faults=()):
    return client_ledger(client, rep, sent, list(faults), {"u": "d0"}, T0)


def test_every_event_once_and_recovered_passes():
    sent = sent_all(10)
    fault = Fault(1, "drop", T0 + 4.5, "d0", ["c0"])
    rep = history([(0, "A", False, None), (5.5, "A", True, None)], [(4.6, "transport close")],
                  [(1.1 + n, "all", n, None) for n in range(4)]
                  + [(5.6, "all", 4, None)]
                  + [(1.1 + n, "all", n, None) for n in range(5, 10)])
    row = ledger(ANNOUNCING, rep, sent, [fault])
    assert (row["lost"], row["dup"], row["ooo"], row["recovered"], row["failures"]) == (
        0, 0, 0, 1, [])
    assert totals([row])["passed"]


def test_lost_repeated_and_out_of_order_are_counted():
    sent = sent_all(6)
    rep = history([(0, "A", False, None)], (),
                  [(1.1, "all", 0, None), (2.1, "all", 2, None), (2.2, "all", 1, None),
                   (2.3, "all", 1, None), (6.1, "all", 5, None)])
    row = ledger(ANNOUNCING, rep, sent)
    assert (row["lost"], row["dup"], row["ooo"]) == (2, 1, 1)  # 3 and 4; 1 twice; 1 after 2
    t = totals([row])
    assert t["failed_targets"] == {"lost": 2, "dup_announcing": 1, "ooo": 1}


def test_a_plain_clients_first_drop_repeats_are_allowed_once():
    sent = sent_all(10)
    faults = [Fault(1, "drop", T0 + 4.5, "d0", ["c1"]), Fault(2, "drop", T0 + 8.5, "d0", ["c1"])]
    arrivals = [(1.1 + n, "all", n, None) for n in range(10)]
    arrivals += [(5.6, "all", 2, None), (5.6, "all", 3, None)]  # again after the first drop
    arrivals += [(9.6, "all", 7, None)]  # and again after the second: a failure
    rep = history([(0, "A", False, None), (5.5, "A", True, None), (9.5, "A", True, None)],
                  [(4.6, "transport close"), (8.6, "transport close")], sorted(arrivals))
    row = ledger(PLAIN, rep, sent, faults)
    assert (row["first_drop_repeats"], row["dup"]) == (2, 1)
    assert ledger(dict(PLAIN, announce=True), rep, sent, faults)["dup"] == 3
    assert totals([row])["failed_targets"] == {"dup_plain": 1}


def test_a_kicked_client_must_not_be_recovered_and_its_gap_is_not_expected():
    sent = {**sent_all(10), **sent_all(10, stream="sid:c0", kind="sid", target="A")}
    kick = Fault(1, "kick", T0 + 4.5, "d0", ["c0"])
    before = [(1.1 + n, st, n, None) for n in range(4) for st in ("all", "sid:c0")]
    after = [(1.1 + n, "all", n, None) for n in range(7, 10)]
    new = history([(0, "A", False, None), (5.5, "B", False, 6.5)],
                  [(4.6, "io server disconnect")], before + after)
    row = ledger(ANNOUNCING, new, sent, [kick])
    # sent from 2 s before the kick to 1 s after the rooms were joined again:
    # not expected; the old sid's later events: addressed to nobody
    assert (row["kick_new"], row["kick_recovered"], row["lost"], row["failures"]) == (
        1, 0, 0, [])
    recovered = history([(0, "A", False, None), (5.5, "A", True, None)],
                        [(4.6, "io server disconnect")], before + after)
    row = ledger(ANNOUNCING, recovered, sent, [kick])
    assert row["kick_recovered"] == 1
    # no gap for a recovered one: 4-6 of the broadcasts, 4-9 of its sid
    assert row["lost"] == 3 + 6
    assert row["lost_after_failed_reconnect"] == 9  # the failed reconnect's doing
    assert "recovered after a kick" in row["failures"][0]


def test_a_reconnect_not_recovered_or_with_another_sid_fails():
    sent = sent_all(4)
    fault = Fault(1, "kill", T0 + 2.0, "d0", ["c0"])
    for rec, sid, key in ((False, "B", "not_recovered"), (True, "B", "other_sid")):
        rep = history([(0, "A", False, None), (2.5, "B" if sid else "A", rec, 3.0)],
                      [(2.1, "transport close")],
                      [(1.1 + n, "all", n, None) for n in range(4)])
        row = ledger(ANNOUNCING, rep, sent, [fault])
        assert row[key] == 1 and row["recovered"] == 0, row
        assert totals([row])["failed_targets"] == {key: 1}


def test_drops_beyond_one_per_fault_are_a_loop_and_drops_without_a_fault_fail():
    sent = sent_all(2)
    fault = Fault(1, "term", T0 + 2.0, "d0", ["c0"])
    rep = history([(0, "A", False, None), (2.5, "A", True, None), (3.5, "A", True, None),
                   (30, "A", True, None)],
                  [(2.1, "transport close"), (3.0, "transport close"), (29, "ping timeout")],
                  [(1.1, "all", 0, None), (2.1, "all", 1, None)])
    row = ledger(ANNOUNCING, rep, sent, [fault])
    assert (row["loops"], row["unexplained"]) == (2, 0)  # 29 s is within the 45 s window
    rep["disconnectLog"][2]["t"] = ms(60)
    rep["connectLog"][3]["t"] = ms(61)
    row = ledger(ANNOUNCING, rep, sent, [fault])
    assert (row["loops"], row["unexplained"]) == (1, 1)
    assert totals([row])["failed_targets"] == {"loops": 1, "unexplained": 1}


def test_events_to_another_client_or_never_sent_break_the_counting():
    sent = {**sent_all(2), **sent_all(2, stream="room:r9", kind="room", target="r9")}
    rep = history([(0, "A", False, None)], (),
                  [(1.1, "all", 0, None), (1.2, "room:r9", 0, None), (2.1, "all", 1, None),
                   (2.2, "all", 7, None)])
    row = ledger(ANNOUNCING, rep, sent)
    assert (row["stray"], row["unknown"], row["lost"]) == (1, 1, 0)


def test_a_drop_just_before_a_fault_is_not_that_faults():
    """A blackholed client's ping timeout 0.8 s before a kill of the dyno it
    then reconnects to: one drop for each fault, no loop."""
    sent = sent_all(2)
    faults = [Fault(1, "blackhole", T0 + 2.0, "d3", ["c0"]),
              Fault(2, "kill", T0 + 9.5, "d0", ["c0"])]
    rep = history([(0, "A", False, None), (9.0, "A", True, None), (12.0, "A", True, None)],
                  [(8.7, "ping timeout"), (9.5, "transport close")],
                  [(1.1, "all", 0, None), (2.1, "all", 1, None)])
    row = ledger(ANNOUNCING, rep, sent, faults)
    assert (row["loops"], row["unexplained"], row["failures"]) == (0, 0, [])


def test_a_plain_client_may_not_get_twice_what_was_sent_while_it_was_away():
    sent = sent_all(10)
    fault = Fault(1, "drop", T0 + 4.5, "d0", ["c1"])
    arrivals = [(1.1 + n, "all", n, None) for n in range(4)]
    arrivals += [(5.45, "all", 3, None)]  # replayed just before its "connect": allowed
    arrivals += [(5.6, "all", 4, None), (5.6, "all", 4, None)]  # sent while away, twice
    arrivals += [(1.1 + n, "all", n, None) for n in range(5, 10)]
    rep = history([(0, "A", False, None), (5.5, "A", True, None)],
                  [(4.6, "transport close")], sorted(arrivals))
    row = ledger(PLAIN, rep, sent, [fault])
    assert (row["first_drop_repeats"], row["dup"]) == (1, 1)
