"""The fleet feature without Kafka: records, liveness, queries under way,
and the feature over a fake core and host."""
import threading
import time
from types import SimpleNamespace

import msgspec
import pytest

from flask_signalr_kafka import FleetTimeoutError, RemoteSocket
from flask_signalr_kafka.errors import MalformedRecord
from flask_signalr_kafka.fleet.fleet import EVERYONE, Fleet, answer_partition
from flask_signalr_kafka.fleet.fleet_queries import FleetQueries
from flask_signalr_kafka.fleet.liveness import Liveness
from flask_signalr_kafka.runtime.concurrency import Runtime
from flask_signalr_kafka.wire import fleet_records
from flask_signalr_kafka.wire.fleet_records import (
    DISCONNECT,
    JOIN,
    EventAnswer,
    Farewell,
    FetchSockets,
    Heartbeat,
    ServerEvent,
    SocketsAction,
    SocketsAnswer,
)

# -- records -------------------------------------------------------------------


@pytest.mark.parametrize("record", [
    Heartbeat("s1", initial=True), Farewell("s1"),
    FetchSockets("s1", 7, 3, "/chat", ["r", 5]),
    SocketsAction("s1", "/", None, JOIN, ["x"]),
    ServerEvent("s1", 0, 0, "/", "ev", [1, "two", {"three": [3]}, b"\x00"]),
    SocketsAnswer("s2", "s1", 7, [RemoteSocket("sid~a", "/", {"sid~a", "r"}, "s2")]),
    EventAnswer("s2", "s1", 7, {"ok": True}),
])
def test_records_round_trip(record):
    assert fleet_records.decode(fleet_records.encode(record)) == record


def test_layout_is_a_tagged_array():
    value = fleet_records.encode(FetchSockets("s1", 7, 3, "/", None))
    assert msgspec.msgpack.decode(value) == [3, "s1", 7, 3, "/", None]


@pytest.mark.parametrize("value", [
    None, b"", b"\xc1", msgspec.msgpack.encode([99, "s"]), msgspec.msgpack.encode([1]),
    msgspec.msgpack.encode([4, "s", "/", None, 9, []]),
    msgspec.msgpack.encode([6, "s", "a", 1, [["sid"]]]),
])
def test_malformed_records_raise(value):
    with pytest.raises(MalformedRecord):
        fleet_records.decode(value)


def test_answer_partition_is_never_the_requests_one():
    for n in (2, 3, 10, 50):
        parts = {answer_partition(f"host_{i:032x}", n) for i in range(500)}
        assert parts <= set(range(1, n)) and len(parts) == n - 1
    assert answer_partition("x", 1) == EVERYONE


# -- liveness ------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_liveness_counts_drops_the_silent_and_beats_on_the_wall_clock_slots():
    clock, wall, beats, gone = Clock(), Clock(), [], []
    wall.now = 1000.5  # slot 200 of 5 s
    live = Liveness(lambda: beats.append(wall.now), gone.append, clock=clock, wall=wall)
    assert live.count() == 1
    assert live.heard("b") is True and live.heard("b") is False
    live.heard("c")
    assert live.count() == 3 and live.others() == {"b", "c"}
    clock.now += 4
    wall.now += 4
    live.tick()
    assert beats == []  # still slot 200
    clock.now += 4.5
    wall.now += 4.5  # slot 201: every server beats now
    live.heard("c")
    live.tick()
    live.tick()
    assert beats == [1009.0] and live.count() == 3
    clock.now += 2  # b silent for 10.5 s
    wall.now += 2
    live.tick()
    assert gone == ["b"] and live.others() == {"c"}
    live.gone("c")
    live.gone("c")  # said twice: once is enough
    assert gone == ["b", "c"] and live.count() == 1


def test_the_loop_beats_at_the_start_of_each_slot():
    beats = []
    live = Liveness(lambda: beats.append(time.time()), lambda s: None, interval=0.5)
    live.start(Runtime.standalone())
    time.sleep(1.3)
    live.stop()
    assert 2 <= len(beats) <= 3
    assert all(t % 0.5 < 0.1 for t in beats), beats


# -- queries -------------------------------------------------------------------------


def test_query_returns_once_every_server_answered():
    queries = FleetQueries()
    published = []

    def publish(request_id):
        published.append(request_id)
        queries.answer(request_id, "b", ["b1", "b2"])
        assert queries.answer(request_id, "b", ["again"]) is False
        threading.Timer(0.05, queries.answer, (request_id, "c", ["c1"])).start()

    started = time.monotonic()
    got = queries.ask(publish, {"b", "c"}, 5.0, "q", ["mine"])
    assert got == ["mine", "b1", "b2", "c1"] and time.monotonic() - started < 1
    assert len(queries) == 0 and queries.answer(published[0], "c", []) is False


def test_query_times_out_with_what_came():
    queries = FleetQueries()
    with pytest.raises(FleetTimeoutError) as info:
        queries.ask(lambda i: queries.answer(i, "b", [1]), {"b", "c"}, 0.2, "the query")
    assert isinstance(info.value, TimeoutError)
    assert info.value.responses == [1] and info.value.missing == {"c"}
    assert "1 of 2 servers did not answer within 0.2 s (c)" in str(info.value)


def test_a_server_that_stops_counting_no_longer_holds_a_query():
    queries = FleetQueries()

    def publish(request_id):
        queries.answer(request_id, "b", [1])
        threading.Timer(0.05, queries.gone, ("c",)).start()

    assert queries.ask(publish, {"b", "c"}, 5.0, "q") == [1]
    assert queries.ask(lambda i: None, set(), 5.0, "alone", ["mine"]) == ["mine"]


# -- the feature over a fake core and host -------------------------------------------


class FakeCore:
    def __init__(self, name="me", write_only=False):
        self.server_name = name
        self.write_only = write_only
        self.published = []
        self.runtime = Runtime.standalone()
        self.consumed = {}
        self.readiness = []

    def publish(self, base, key, value, timeout=None, partition=None):
        self.published.append((base, partition, fleet_records.decode(value)))

    def consume(self, handlers, partitions=None):
        self.consumed = {"handlers": handlers, "partitions": partitions}

    def add_readiness(self, event):
        self.readiness.append(event)

    def consumer(self, base):
        return None


class FakeHost:
    """Connections a (rooms r1, r2) and b (room r2) in "/", c in "/chat"."""

    def __init__(self):
        self.rooms = {("/", "a"): ["a", "r1", "r2"], ("/", "b"): ["b", "r2"],
                      ("/chat", "c"): ["c"]}
        self.disconnected = []

    def get_participants(self, namespace, room):
        wanted = None if room is None else set(room if isinstance(room, list) else [room])
        for (ns, sid), rooms in list(self.rooms.items()):
            if ns == namespace and (wanted is None or wanted & set(rooms)):
                yield sid, "eio-" + sid

    def get_rooms(self, sid, namespace):
        return list(self.rooms[(namespace, sid)])

    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        self.rooms[(namespace, sid)].append(room)

    def basic_leave_room(self, sid, namespace, room):
        self.rooms[(namespace, sid)].remove(room)

    def disconnect_local(self, sid, namespace):
        self.disconnected.append(sid)
        del self.rooms[(namespace, sid)]


def record(message, partition=EVERYONE):
    return SimpleNamespace(value=fleet_records.encode(message), partition=partition,
                           topic="fleet", offset=0)


@pytest.fixture
def started():
    core, host = FakeCore(), FakeHost()
    fleet = Fleet(core, host)
    fleet.start()
    fleet.core.consumed["partitions"]["fleet"](list(range(10)))
    yield fleet
    fleet.liveness.stop()


def test_start_reads_the_shared_and_own_answer_partition_and_joins(started):
    assert started.core.consumed["partitions"]["fleet"](list(range(10))) == {
        0, answer_partition("me", 10)}
    handle = started.core.consumed["handlers"]["fleet"]
    time.sleep(0.05)
    assert started.core.published[0] == ("fleet", 0, Heartbeat("me", initial=True))
    handle(record(Heartbeat("me", initial=True)))
    assert started.ready.wait(2) and started.core.readiness == [started.ready]


def test_answers_a_fetch_for_its_own_connections_to_the_askers_partition(started):
    handle = started.core.consumed["handlers"]["fleet"]
    handle(record(FetchSockets("other", 4, 7, "/", ["r1"])))
    base, partition, answer = started.core.published[-1]
    assert (base, partition) == ("fleet", 7)
    assert answer == SocketsAnswer("me", "other", 4,
                                   [RemoteSocket("a", "/", {"a", "r1", "r2"}, "me")])
    assert started.liveness.others() == {"other"}
    handle(record(FetchSockets("other", 5, 7, "/", [])))
    assert started.core.published[-1][2].sockets == []


def test_a_long_answer_comes_in_parts_and_counts_once_whole(started, monkeypatch):
    monkeypatch.setattr("flask_signalr_kafka.fleet.fleet.ANSWER_PART", 1)
    handle = started.core.consumed["handlers"]["fleet"]
    handle(record(FetchSockets("other", 4, 7, "/", None)))
    parts = [p[2] for p in started.core.published[-2:]]
    assert [(len(p.sockets), p.more) for p in parts] == [(1, True), (1, False)]
    queries = FleetQueries()

    def publish(request_id):
        for part in parts:
            queries.answer(request_id, "other", part.sockets, last=not part.more)

    assert {s.sid for s in queries.ask(publish, {"other"}, 1.0, "q")} == {"a", "b"}


def test_applies_actions_to_its_own_connections(started):
    handle = started.core.consumed["handlers"]["fleet"]
    handle(record(SocketsAction("other", "/", ["r2"], JOIN, ["x", "y"])))
    assert started.host.rooms[("/", "b")] == ["b", "r2", "x", "y"]
    handle(record(SocketsAction("other", "/chat", None, DISCONNECT, [])))
    assert started.host.disconnected == ["c"]


def test_a_request_outside_the_shared_partition_is_malformed(started):
    handle = started.core.consumed["handlers"]["fleet"]
    with pytest.raises(MalformedRecord):
        handle(record(FetchSockets("other", 4, 7, "/", None), partition=3))
    assert started.liveness.others() == set()


def test_fetch_sockets_waits_for_every_live_server(started):
    handle = started.core.consumed["handlers"]["fleet"]
    started.ready.set()
    handle(record(Heartbeat("b")))
    handle(record(Heartbeat("c")))
    remote = RemoteSocket("z", "/", {"z", "r1"}, "b")

    def answer_later():
        time.sleep(0.05)
        request = started.core.published[-1][2]
        handle(record(SocketsAnswer("b", "me", request.request_id, [remote]), 5))
        handle(record(SocketsAnswer("b", "someone else", request.request_id, []), 5))
        handle(record(Farewell("c")))

    threading.Thread(target=answer_later).start()
    found = started.fetch_sockets("r1", "/", 2.0)
    assert found == [RemoteSocket("a", "/", {"a", "r1", "r2"}, "me"), remote]
    assert started.server_count() == 2


def test_server_events_reach_handlers_and_answer(started):
    handle = started.core.consumed["handlers"]["fleet"]
    got = threading.Event()
    started.on_server_event("ping", lambda *args: got.set() or ["pong", *args])
    handle(record(ServerEvent("other", 9, 4, "/", "ping", [1])))
    assert got.wait(2)
    time.sleep(0.05)
    assert started.core.published[-1] == ("fleet", 4, EventAnswer("me", "other", 9,
                                                                  ["pong", 1]))
    handle(record(ServerEvent("other", 10, 4, "/", "unhandled", [])))
    time.sleep(0.05)
    assert started.core.published[-1] == ("fleet", 4, EventAnswer("me", "other", 10, None))


def test_write_only_writes_no_origin_and_cannot_ask():
    fleet = Fleet(FakeCore(write_only=True), FakeHost())
    fleet.server_side_emit("note", 1)
    fleet.sockets_join("x", room="nobody")
    assert [p[2].origin for p in fleet.core.published] == ["", ""]
    with pytest.raises(RuntimeError, match="write_only"):
        fleet.server_count()
    with pytest.raises(RuntimeError, match="write_only"):
        fleet.fetch_sockets()


def test_wrong_arguments_say_what_to_do(started):
    with pytest.raises(TypeError, match="str"):
        started.server_side_emit(3)
    with pytest.raises(TypeError, match="callable"):
        started.on_server_event("x", None)
    with pytest.raises(ValueError, match="timeout"):
        started.fetch_sockets(timeout=0)


def test_close_says_farewell_once(started):
    started.close()
    started.close()
    farewells = [p for p in started.core.published if isinstance(p[2], Farewell)]
    assert farewells == [("fleet", 0, Farewell("me"))]
