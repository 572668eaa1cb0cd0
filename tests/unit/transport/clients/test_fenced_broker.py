"""kafka-python's clients leave a hung broker as soon as the cluster fences
it (kafka_python_client.drop_fenced, watch_stalls, least_loaded_node): the
network client's side, with kafka-python 3's connection manager faked as
those functions read it. The whole path, on a real three-node cluster, is
tests/integration/test_faults.py (test_broker_frozen)."""
from __future__ import annotations

import time
from types import SimpleNamespace

from flask_signalr_kafka.transport.clients import kafka_python_client as kpc


class Conn:
    """A kafka-python 3 connection: requests in flight since ``age`` s."""

    def __init__(self, in_flight=0, age=0.0, connected=True):
        sent = time.monotonic() - age
        self.in_flight_requests = [(n, None, sent, 0, None) for n in range(in_flight)]
        self.connected = connected
        self.paused = set()
        self.closed_with = None

    def close(self, error=None):
        self.closed_with = error


class Manager:
    def __init__(self, conns, live=(1, 2, 3)):
        self._conns = conns
        self.closed = False
        self.updates = 0
        self.cluster = SimpleNamespace(
            brokers=lambda: [SimpleNamespace(node_id=n) for n in live],
            metadata_refresh_in_progress=False, request_update=self._update)

    def _update(self):
        self.updates += 1

    def connection_delay(self, node_id):
        return 0


class Done(Exception):
    pass


class Net:
    """The I/O loop's sleep: ends the watch after ``rounds`` checks."""

    def __init__(self, manager, rounds=1):
        self.manager, self.rounds = manager, rounds

    async def _sleep(self):
        self.rounds -= 1
        if self.rounds < 0:
            raise Done

    def sleep(self, seconds):
        return self._sleep()


def run(coro):
    try:
        coro.send(None)
        while True:
            coro.send(None)
    except (StopIteration, Done):
        pass


def metadata_waiting(conn, node_id, waited_s, stall_s, fetches=False):
    """Run one stall check while a metadata request has waited ``waited_s``
    at ``conn``; whether the check closed it."""
    manager = Manager({node_id: conn})
    manager.cluster.metadata_refresh_in_progress = True
    manager._fsk_metadata_node = (node_id, time.monotonic() - waited_s)
    run(kpc.watch_stalls(manager, Net(manager), stall_s, fetches))
    return conn.closed_with


def test_a_fenced_brokers_stalled_connection_is_closed():
    hung, live = Conn(in_flight=3, age=6.0), Conn(in_flight=1, age=6.0)
    manager = Manager({3: hung, 2: live, "bootstrap-0": Conn(1, 6.0)}, live=(1, 2))
    kpc.drop_fenced(manager, 1.0)
    assert "fenced" in str(hung.closed_with)
    # Still in the metadata (a live leader waiting for its ISR): left alone.
    assert live.closed_with is None


def test_a_fenced_broker_with_nothing_stalled_is_left_alone():
    # Requests sent a moment ago (a broker restarting, a fresh fetch).
    fresh = Conn(in_flight=1, age=0.1)
    kpc.drop_fenced(Manager({3: fresh}, live=(1, 2)), 1.0)
    assert fresh.closed_with is None


def test_a_stalled_request_asks_for_metadata_every_check():
    manager = Manager({3: Conn(in_flight=1, age=5.0), 2: Conn(in_flight=1, age=0.2)})
    run(kpc.watch_stalls(manager, Net(manager, rounds=2), 4.0))
    assert manager.updates == 2
    idle = Manager({2: Conn(in_flight=1, age=3.0)})  # a fetch waiting its 3 s
    run(kpc.watch_stalls(idle, Net(idle, rounds=2), 4.0))
    assert idle.updates == 0


def test_a_metadata_request_to_a_hung_broker_is_failed():
    assert "stalled" in str(metadata_waiting(Conn(in_flight=2, age=6.0), 3, 5.0, 1.0))


def test_a_metadata_request_waiting_behind_a_fetch_is_not_failed():
    # A live broker's 3 s fetch, then the metadata request.
    assert metadata_waiting(Conn(in_flight=2, age=3.0), 2, 3.0, 1.0) is None


def test_metadata_never_goes_to_a_stalled_broker_while_another_can_take_it():
    # All three connected and busy; 3 has not answered for 5 s.
    manager = Manager({1: Conn(2, 0.5), 2: Conn(1, 0.5), 3: Conn(1, 5.0)})
    assert {kpc.least_loaded_node(manager, 4.0) for _ in range(30)} == {2}
    # Nothing else: the stalled one rather than no metadata at all.
    alone = Manager({3: Conn(1, 5.0)}, live=(3,))
    assert kpc.least_loaded_node(alone, 4.0) == 3


def test_a_consumers_fetch_is_cut_short_where_partitions_moved():
    waiting = {1: Conn(1, 0.5), 2: Conn(1, 0.5), 3: Conn(1, 0.5)}
    manager = Manager(waiting)
    watch = kpc.LeaderWatch(manager, 4.0)
    leaders = {1: {"t-0"}, 2: {"t-1"}, 3: {"t-2"}}
    manager.cluster.partitions_for_broker = lambda node: leaders.get(node)
    watch(manager.cluster)  # the first metadata: nothing moved
    assert all(conn.closed_with is None for conn in waiting.values())
    # Node 1 fenced (it was killed: its connection is gone): t-0 moves to 2.
    leaders = {2: {"t-0", "t-1"}, 3: {"t-2"}}
    del waiting[1]
    watch(manager.cluster)
    assert "moved" in str(waiting[2].closed_with)
    assert waiting[3].closed_with is None
    # Nothing moved since: nothing more is cut.
    waiting[2] = Conn(1, 0.5)
    watch(manager.cluster)
    assert waiting[2].closed_with is None


def test_when_every_broker_stalled_metadata_goes_to_the_last_to_stall():
    # A producer while a follower hangs: the live leaders hold its produces
    # too, but the hung broker stopped answering first.
    manager = Manager({1: Conn(1, 3.0), 2: Conn(1, 8.0), 3: Conn(1, 2.0)})
    assert {kpc.least_loaded_node(manager, 1.0) for _ in range(30)} == {3}


def test_metadata_never_goes_to_a_paused_connection():
    # Five produces in flight pause a connection (max_in_flight): a request
    # sent there fails at once ("Node paused"), and the refresh with it.
    paused = Conn(5, 3.0)
    paused.paused = {"max_in_flight"}
    manager = Manager({1: paused, 2: Conn(1, 8.0)}, live=(1, 2))
    assert kpc.least_loaded_node(manager, 1.0) == 2


def test_a_consumers_metadata_request_to_a_broker_that_answers_no_fetch_fails_sooner():
    # Its fetch (3 s wait) is 5 s old: hung.
    assert "stalled" in str(metadata_waiting(Conn(2, 5.0), 3, 1.5, 4.0, fetches=True))
    # A producer's waits METADATA_STALL_S: a live leader may hold it.
    assert metadata_waiting(Conn(2, 5.0), 2, 1.5, 1.0) is None


def test_among_busy_brokers_metadata_goes_to_the_one_that_answered_last():
    manager = Manager({1: Conn(1, 2.5), 2: Conn(1, 0.3), 3: Conn(1, 3.5)})
    assert {kpc.least_loaded_node(manager, 4.0) for _ in range(30)} == {2}


def test_kafka_pythons_private_parts_these_rely_on_are_there():
    """kafka-python 3.0's internals read above: a listener list and a
    refresh-in-progress flag on its cluster metadata, the I/O loop's sleep,
    and each in-flight request's send time at index 2 (this fails when
    kafka-python changes them)."""
    import inspect

    from kafka.net.connection import KafkaConnection

    source = inspect.getsource(KafkaConnection._send_request)
    assert "(correlation_id, future, sent_time, timeout_at, timeout_task)" in source
    consumer = kpc.NetClient(bootstrap_servers=["127.0.0.1:1"], fetch_max_wait_ms=3000)
    producer = kpc.NetClient(bootstrap_servers=["127.0.0.1:1"])
    try:
        cluster = consumer._manager.cluster
        assert any(isinstance(x, kpc.LeaderWatch) for x in cluster._listeners)
        assert not any(isinstance(x, kpc.LeaderWatch)
                       for x in producer._manager.cluster._listeners)
        assert cluster.metadata_refresh_in_progress is False
        assert callable(consumer._net.sleep)
    finally:
        consumer.close()
        producer.close()
