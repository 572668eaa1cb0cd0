"""A connection recovered on a dyno that did not read its send-conn partition
before (issue 22, soak seed 457058: client c8 recovered on d2, dropped 0.6 s
later, and the next dyno replayed its whole sid stream, 41 events, again).
The partition is claimed for it at the recovery, after the dyno's last
reference point, and its replay's steps are its own (short offsets): the
full offsets it got next had no position on that slot, so the next recovery
read it from the log's start."""
from flask_signalr_kafka.recovery.recovery import Restore
from flask_signalr_kafka.recovery.sessions import SAVED, Session
from flask_signalr_kafka.transport.home_partitions import partitions_of
from flask_signalr_kafka.wire import offsets
from tests.unit.recovery.test_offset_before_join import dyno as came_to_a_dyno

BASES = ("send-all", "send-group", "send-user")
SID = "sid~c"
#: Its send-conn partition (both partitioners agree): not one this dyno reads.
SLOT = ("send-conn", 9)
assert partitions_of(SID, 10) == {SLOT[1]}


def dyno():
    """A Recovery whose consumers stand at ``at[0]`` on every send slot but
    send-conn, of which it reads the partitions in ``conn`` (its home ones,
    and those claimed)."""
    r, at, saved = came_to_a_dyno()
    conn = {0, 1}
    r.core.positions = lambda bases: {
        **{(b, p): at[0] for b in BASES for p in range(10)},
        **{("send-conn", p): at[0] for p in conn}}
    at[0] = 90
    return r, at, conn, saved


def recovered_here(r, at, conn):
    """The client comes from another dyno (its session there had its sid
    stream up to 40); this dyno claims its partition, registers it, replays
    what it missed, then it is live."""
    session = Session(SAVED, SID, "/", ["r1"], "host_2", "cd", 0.0,
                      [(b, p, 80) for b in BASES for p in range(10)] + [(*SLOT, 40)], 3)
    conn.add(SLOT[1])  # the claim: read from its log end on
    at[0] = 100
    r.joined(SID, "/", None)  # the manager's pre_connect, in its order
    r.joined(SID, "/", SID)
    r.begin(SID, "/", session)
    r.joined(SID, "/", "r1")
    missed = [([["send-conn", SID, SLOT[1], off]], "ev", []) for off in range(40, 100)]
    restore = Restore("pid", session, "cd.7")
    for _event, _args, given in r.replay_steps(restore, SID, missed):
        assert offsets.parse(given).ref is None  # its own steps: short offsets
    r.saves.write_live = lambda key: True
    r.registered(SID, "/", "pid", True)


def test_the_offsets_after_a_replay_cover_the_connections_own_stream():
    r, at, conn, saved = dyno()
    r.log.write_ref(r.owner, r.saves._position_list(), r.store.put_ref)  # point 1, before the claim
    recovered_here(r, at, conn)
    given = r.log.step([["send-all", None, 0, 100]])  # live, to it and others
    assert offsets.parse(given).ref == 1
    r.forget(SID, "/", "transport close")()
    taken = r.handshake.resume.exactly(saved[-1], given)
    assert taken is not saved[-1], "the dyno's own offset was not taken"
    starts = {(b, p): off for b, p, off in taken.positions}
    assert starts.get(SLOT, 0) == 100, "its sid stream would be replayed from the log's start"


def test_an_offset_without_a_position_on_its_own_stream_is_not_taken():
    """Where a connection came includes its sid stream: an offset that says
    nothing of it (a reference point from before the claim, nothing past it)
    would replay that stream from the log's start."""
    r, at, conn, saved = dyno()
    # Point 1: positions read as the client came, before its claim.
    r.log.write_ref(r.owner, [(b, p, 100) for b in BASES for p in range(10)]
                    + [("send-conn", p, 100) for p in sorted(conn)], r.store.put_ref)
    recovered_here(r, at, conn)
    r.forget(SID, "/", "transport close")()
    session = saved[-1]
    taken = r.handshake.resume.exactly(session, f"{r.log.tag}.1.1.0.")
    assert taken is session and r.stats["offsets-before-join"] == 1
    assert dict(((b, p), off) for b, p, off in session.joined)[SLOT] == 100
