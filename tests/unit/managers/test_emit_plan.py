"""What an emit sends (EmitPlan), and that both managers follow it the same
way: the records, decoded with the wire format's decoder, and the local
delivery."""
import asyncio

import pytest

from flask_signalr_kafka import AsyncKafkaManager, KafkaManager, PayloadTooLargeError, user
from flask_signalr_kafka.managers.emit_plan import EmitPlan
from flask_signalr_kafka.transport.ack_waiter import AckWaiter
from flask_signalr_kafka.transport.payload_limits import PayloadLimit
from flask_signalr_kafka.wire import records
from flask_signalr_kafka.wire.addressing import SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER, make_sid
from flask_signalr_kafka.wire.hub_protocol import decode_frames

ORIGIN = "host_" + "a" * 32
LOCAL = make_sid("L" * 20)
REMOTE = make_sid("R" * 20)


def rooms(*members):
    """A namespace's rooms on this server as python-socketio keeps them:
    every connection in room None and in a room named by its sid."""
    here = {None: {sid: "eio-" + sid for sid in members}}
    for sid in members:
        here[sid] = {sid: "eio-" + sid}
    return here


def plan(target=None, data="hi", skip_sid=None, *, callback=False, here=None, limit=None,
         count_emit=None, namespace="/chat"):
    return EmitPlan.of("ev", data, namespace, target, skip_sid, callback=callback,
                       origin=ORIGIN, here=here, protocols=("json",), limit=limit,
                       count_emit=count_emit)


def decoded(p, callback_id=0):
    return [(base, key, records.decode(value, records.InvocationExt))
            for base, key, value in p.records(callback_id)]


@pytest.mark.parametrize(("target", "base", "key"), [
    (None, SEND_ALL, None),
    ("lobby", SEND_GROUP, "lobby"),
    (user("ann"), SEND_USER, "ann"),
    (REMOTE, SEND_CONN, REMOTE),
])
def test_each_target_kind_gets_one_record_on_its_topic(target, base, key):
    p = plan(target, {"n": 1}, skip_sid=LOCAL, count_emit=lambda: 7)
    ((got_base, got_key, record),) = decoded(p, callback_id=3)
    assert (got_base, got_key) == (base, key)
    assert (record.origin, record.namespace, record.excluded) == (ORIGIN, "/chat", [LOCAL])
    assert (record.callback_id, record.emit_seq, record.earlier_targets) == (3, 7, [])
    assert decode_frames(record.frames) == ("ev", [{"n": 1}])
    assert (p.targets, p.published, p.skip_sid, p.excluded) == ((target,), (target,),
                                                               (LOCAL,), [LOCAL])


def test_a_list_is_deduplicated_and_each_record_names_every_earlier_target():
    here = rooms(LOCAL)
    p = plan(["r1", LOCAL, user("bo"), "r1", None], here=here)
    assert p.targets == ("r1", LOCAL, user("bo"), None)
    # The local connection got it here; the records after it still name it,
    # so that a server holding it in a room does not deliver it twice.
    assert p.published == ("r1", user("bo"), None)
    got = decoded(p)
    assert [(b, k) for b, k, _ in got] == [(SEND_GROUP, "r1"), (SEND_USER, "bo"), (SEND_ALL, None)]
    assert [r.earlier_targets for _, _, r in got] == [[], ["r1", LOCAL],
                                                      ["r1", LOCAL, user("bo")]]
    assert p.room == ["r1", LOCAL, user("bo"), None]


def test_a_local_connection_gets_no_record_without_recovery():
    p = plan(LOCAL, here=rooms(LOCAL))
    assert (p.published, p.records(), p.frames, p.deliver_here) == ((), [], {}, True)
    assert p.room == LOCAL


def test_with_recovery_a_local_connection_goes_to_send_conn_whatever_its_shape():
    plain = "abc"  # not our sid shape: routed as a room, were it not local
    counted = []
    p = plan([plain, "lobby"], here=rooms(plain), count_emit=lambda: counted.append(1) or 5)
    assert p.to_conn == frozenset({plain}) and p.emit_seq == 5 and counted == [1]
    assert [(b, k) for b, k, _ in decoded(p)] == [(SEND_CONN, plain), (SEND_GROUP, "lobby")]


def test_with_recovery_a_callback_keeps_a_local_connection_here():
    p = plan(LOCAL, here=rooms(LOCAL), callback=True, count_emit=lambda: 1)
    assert p.published == () and p.records() == []


@pytest.mark.parametrize(("target", "here", "deliver"), [
    ("lobby", rooms(LOCAL), False),  # nobody here is in it
    (REMOTE, rooms(LOCAL), False),
    (LOCAL, rooms(LOCAL), True),
    (None, rooms(LOCAL), True),
    (["lobby", LOCAL], rooms(LOCAL), True),
    ([], rooms(LOCAL), False),
    (None, None, False),  # no Socket.IO server: nobody to deliver to here
])
def test_the_local_delivery_runs_only_when_a_target_may_have_clients_here(target, here,
                                                                          deliver):
    assert plan(target, here=here).deliver_here is deliver


def test_too_large_is_refused_before_the_emit_is_counted():
    counted = []
    tiny = PayloadLimit(200, 200, "send-group")
    with pytest.raises(PayloadTooLargeError):
        plan("lobby", "x" * 500, limit=tiny, count_emit=lambda: counted.append(1) or 1)
    assert counted == []
    # Only what is published is checked: a local connection's emit passes.
    assert plan(LOCAL, "x" * 500, here=rooms(LOCAL), limit=tiny).published == ()


def test_the_plan_is_frozen():
    with pytest.raises(AttributeError):
        plan("lobby").published = ()


# -- both managers follow the plan the same way ---------------------------------


class FakeCore:
    server_name = ORIGIN
    closed = False
    await_produce = False

    def __init__(self):
        self.published = []
        self.acks = AckWaiter()

    def publish(self, base, key, value, timeout=None, partition=None):
        self.published.append((base, key))


class FakeServer:
    """Enough of a Socket.IO server for a manager's rooms."""


def manager(cls):
    mgr = cls("127.0.0.1:1")
    mgr.core = FakeCore()
    mgr._started = True  # nothing to connect: the core is fake
    mgr.server = FakeServer()
    mgr._register_sid(LOCAL, "/", "eio-local")
    delivered = []

    def deliver(event, data, namespace, room, skip_sid, callback, coords):
        delivered.append((room, skip_sid))

    async def deliver_async(*args):
        deliver(*args)

    mgr._deliver = deliver
    if cls is AsyncKafkaManager:
        mgr._deliver = deliver_async
        mgr._warm.update((SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER))  # sends never wait
    return mgr, delivered


def emit(mgr, *args, **kwargs):
    if isinstance(mgr, AsyncKafkaManager):
        asyncio.run(mgr.emit(*args, **kwargs))
    else:
        mgr.emit(*args, **kwargs)


@pytest.mark.parametrize("cls", [KafkaManager, AsyncKafkaManager])
def test_both_managers_deliver_here_only_to_targets_with_clients_here(cls):
    mgr, delivered = manager(cls)
    emit(mgr, "ev", "x", to="lobby", skip_sid=REMOTE)  # nobody here in it
    assert delivered == [] and mgr.core.published == [(SEND_GROUP, "lobby")]
    emit(mgr, "ev", "x", to=[LOCAL, "lobby", LOCAL])
    assert delivered == [([LOCAL, "lobby"], [])]
    assert mgr.core.published[1:] == [(SEND_GROUP, "lobby")]
    emit(mgr, "ev", "x", to=LOCAL)
    assert delivered[-1] == (LOCAL, []) and len(mgr.core.published) == 2


@pytest.mark.parametrize(("skip_sid", "skipped"), [
    (None, ()), (LOCAL, (LOCAL,)), ([LOCAL, REMOTE], (LOCAL, REMOTE)), ((REMOTE,), (REMOTE,)),
])
def test_skip_sid_is_python_socketios_none_one_or_several(skip_sid, skipped):
    p = plan("lobby", skip_sid=skip_sid)
    assert p.skip_sid == skipped and p.excluded == list(skipped)
    assert decoded(p)[0][2].excluded == list(skipped)
