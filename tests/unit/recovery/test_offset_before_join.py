"""A client's full offset that reaches back before its connection joined its
rooms (issue 22: any of its dyno's last 256 reference points can be named,
and the client was replayed events sent to its rooms before it was in
them). The session keeps where the connection came and joined; an offset
older than that is not taken, while the offsets the dyno gave after the
join still are."""
import time
from types import SimpleNamespace

import msgspec

from flask_signalr_kafka.recovery import sessions
from flask_signalr_kafka.recovery.replay import slots_of_room
from flask_signalr_kafka.wire import offsets
from tests.unit.recovery.test_recovery_state import recovery

BASES = ("send-all", "send-conn", "send-group", "send-user")


def dyno():
    """A Recovery whose consumers stand at ``at[0]`` on every send slot."""
    at = [100]
    r = recovery()
    r.core.positions = lambda bases: {(b, p): at[0] for b in BASES for p in range(10)}
    r.host = SimpleNamespace(get_rooms=lambda sid, ns: [sid, "r1"],
                             server=SimpleNamespace(eio=SimpleNamespace(ping_interval=5,
                                                                        ping_timeout=5)))
    saved = []
    put = r.store.put
    r.store.put = lambda pid, session: (saved.append(session), put(pid, session))[1]
    return r, at, saved


def came_and_joined(r, sid="sid~a"):
    r.joined(sid, "/", None)
    r.joined(sid, "/", sid)
    r.joined(sid, "/", "r1")
    r.saves.write_live = lambda key: True
    r.registered(sid, "/", "pid", True)


def test_an_offset_naming_a_reference_point_before_the_join_is_not_taken():
    r, at, saved = dyno()
    r.log.write_ref(r.owner, r.saves._position_list(), r.store.put_ref)  # point 1, at 100
    at[0] = 200  # events went to r1 before the connection came
    came_and_joined(r)
    r.forget("sid~a", "/", "transport close")()
    session = saved[-1]
    # The client names point 1 and nothing delivered past it.
    forged = f"{r.log.tag}.1.1.0."
    taken = r.handshake.resume.exactly(session, forged)
    starts = {(b, p): off for b, p, off in taken.positions}
    room = slots_of_room(r.core.partition_count, "r1")
    assert all(starts[s] >= 200 for s in room), "replayed events sent before the join"
    assert taken is session and r.stats["offsets-before-join"] == 1
    assert all(off == 200 for _, _, off in session.joined)


def test_an_offset_the_dyno_gave_after_the_join_is_taken():
    r, at, saved = dyno()
    r.log.write_ref(r.owner, r.saves._position_list(), r.store.put_ref)  # point 1, at 100
    at[0] = 200
    came_and_joined(r)
    slot = sorted(slots_of_room(r.core.partition_count, "r1"))[0]
    given = r.log.step([["send-group", "r1", slot[1], 200]])  # a live step after the join
    assert offsets.parse(given).ref == 1
    at[0] = 201
    r.forget("sid~a", "/", "transport close")()
    taken = r.handshake.resume.exactly(saved[-1], given)
    assert taken.exact and taken.window == []
    starts = {(b, p): off for b, p, off in taken.positions}
    assert starts[slot] == 201 and starts[("send-all", 0)] == 200


def test_a_join_before_the_first_reference_point_still_counts_in_offsets():
    """The join is marked before any reference point is acked: offsets that
    count from the first one still cover it (else they would be refused)."""
    r, at, saved = dyno()
    at[0] = 150
    came_and_joined(r)
    at[0] = 160
    r.log.write_ref(r.owner, [(b, p, 140) for b in BASES for p in range(10)],
                    r.store.put_ref)  # positions read before the join, acked after
    given = r.log.step([["send-all", None, 0, 160]])
    r.forget("sid~a", "/", "transport close")()
    assert r.handshake.resume.exactly(saved[-1], given) is not saved[-1]


def test_sessions_of_older_dynos_without_joins_still_decode():
    """A record written before sessions kept joins (a rolling deploy)."""
    now = time.time()
    data = msgspec.msgpack.encode([sessions.SAVED, "sid~a", "/", ["r1"], "host_1", "t", now,
                                   [["send-all", 0, 5]], 3, [], True])
    session = sessions.decode_session(data)
    assert (session.positions, session.emit_seq, session.joined) == ([("send-all", 0, 5)], 3, [])
