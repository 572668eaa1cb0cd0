"""The publisher's memory bound during a Kafka outage, the figures that show
the outage, and the request timeouts derived from the cluster's broker
session timeout; without a broker."""
import contextlib
import threading
import time
from types import SimpleNamespace

import pytest
from kafka.future import Future
from prometheus_client import CollectorRegistry, generate_latest

from flask_signalr_kafka import KafkaManager, ProducerBufferFullError
from flask_signalr_kafka.observability import metrics
from flask_signalr_kafka.observability.prometheus import register
from flask_signalr_kafka.transport import producer as producer_module
from flask_signalr_kafka.transport.clients import (
    confluent_client,
    confluent_consumer,
    confluent_producer,
    kafka_python_client,
)
from flask_signalr_kafka.transport.clients.client_config import request_timeout_ms
from flask_signalr_kafka.transport.topics import KafkaTopicConfig


class HeldProducer:
    """A producer whose cluster answers nothing: every future waits until
    the test settles it."""

    def __init__(self, config=None, runtime=None):
        self.futures = []

    def send(self, topic, value=None, key=None, partition=None):
        future = Future()
        self.futures.append(future)
        return future

    def close(self, timeout=None):
        pass


def held_publisher(buffer_memory, client=None):
    client = client or kafka_python_client.KafkaPythonClient()
    client.producer = HeldProducer
    return producer_module.Publisher({"buffer_memory": buffer_memory}, KafkaTopicConfig(),
                                     await_produce=False, client=client)


def test_emits_beyond_the_memory_bound_are_refused_with_a_clear_error_and_counted():
    overhead = kafka_python_client.CLIENT.record_overhead
    value = b"x" * 1000
    size = overhead + len(value) + len("room")
    publisher = held_publisher(buffer_memory=10 * size)
    for _ in range(10):
        publisher.send("send-group", "room", value)
    assert publisher.buffered == 10 * size and publisher.in_flight == 10
    with pytest.raises(ProducerBufferFullError, match=r"buffer_memory in producer_config"):
        publisher.send("send-group", "room", value)
    with pytest.raises(BufferError):  # a BufferError, as librdkafka's own
        publisher.send("send-all", None, value)
    assert dict(publisher.stats.refused) == {"send-group": 1, "send-all": 1}
    assert publisher.buffered == 10 * size and len(publisher.producer.futures) == 10

    # The cluster takes what was held: room again, for as much.
    for future in publisher.producer.futures[:4]:
        future.success(None)
    publisher.producer.futures[4].failure(TimeoutError("delivery timed out"))
    assert publisher.in_flight == 5 and publisher.buffered == 5 * size
    for _ in range(5):
        publisher.send("send-group", "room", value)
    with pytest.raises(ProducerBufferFullError):
        publisher.send("send-group", "room", value)


def test_a_record_larger_than_the_bound_goes_when_nothing_is_held():
    publisher = held_publisher(buffer_memory=10)
    publisher.send("send-all", None, b"x" * 100)
    with pytest.raises(ProducerBufferFullError):
        publisher.send("send-all", None, b"x")


def test_a_send_the_client_refuses_is_not_counted_as_held():
    publisher = held_publisher(buffer_memory=1 << 20)

    def broken(*args, **kwargs):
        raise ValueError("no such topic")

    publisher.producer.send = broken
    with pytest.raises(ValueError):
        publisher.send("send-all", None, b"x")
    assert publisher.buffered == 0 and publisher.in_flight == 0


class FullLibrdkafka:
    """librdkafka's producer with its queue full: every produce raises."""

    def __init__(self, config):
        self.produced = 0

    def produce(self, *args, **kwargs):
        self.produced += 1
        raise BufferError("Local: Queue full")

    def poll(self, timeout):
        time.sleep(min(timeout, 0.05))
        return 0

    def list_topics(self, topic=None, timeout=None):
        return SimpleNamespace(topics={})

    def flush(self, timeout=None):
        return 0


def test_a_full_librdkafka_queue_refuses_the_emit_at_once(monkeypatch):
    # It used to retry every 5 ms until the queue had room: for ever during
    # an outage, and under asyncio in time.sleep on the event loop.
    monkeypatch.setattr(confluent_producer.confluent_kafka, "Producer", FullLibrdkafka)
    client = confluent_client.ConfluentClient()
    publisher = producer_module.Publisher({}, KafkaTopicConfig(), await_produce=False,
                                          client=client)
    outcome = []

    def send():
        try:
            publisher.send("send-group", "room", b"x")
            outcome.append("sent")
        except BaseException as exc:
            outcome.append(exc)

    try:
        sender = threading.Thread(target=send, daemon=True)
        started = time.monotonic()
        sender.start()
        sender.join(2)
        assert outcome, "the send did not return within 2 s"
        assert isinstance(outcome[0], ProducerBufferFullError), outcome
        assert "queue.buffering.max.kbytes" in str(outcome[0])
        assert time.monotonic() - started < 1
        assert dict(publisher.stats.refused) == {"send-group": 1}
        assert publisher.in_flight == 0 and publisher.buffered == 0
    finally:
        publisher.producer._closed = True


def test_the_default_bounds_are_32_mb_in_either_dialect():
    mgr = KafkaManager(bootstrap_servers="127.0.0.1:1")
    assert mgr.producer_config["buffer_memory"] == 32 * 1024 * 1024
    assert kafka_python_client.CLIENT.buffer_memory(mgr.producer_config) == 32 * 1024 * 1024
    mgr = KafkaManager(bootstrap_servers="127.0.0.1:1", client="confluent")
    assert mgr.producer_config["queue.buffering.max.kbytes"] == 32 * 1024
    assert confluent_client.CLIENT.buffer_memory(mgr.producer_config) == 32 * 1024 * 1024
    mgr = KafkaManager(bootstrap_servers="127.0.0.1:1",
                       producer_config={"buffer_memory": 1 << 20})
    assert kafka_python_client.CLIENT.buffer_memory(mgr.producer_config) == 1 << 20


def test_health_and_metrics_show_the_outage_while_it_lasts(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(producer_module.time, "monotonic", lambda: clock[0])
    mgr = KafkaManager(bootstrap_servers="127.0.0.1:1")
    publisher = mgr.core.publisher = held_publisher(buffer_memory=1 << 20)
    assert mgr.health()["kafka"]["reachable"] is True  # idle: nothing waits
    publisher.send("send-all", None, b"x")
    clock[0] += 2
    publisher.producer.futures[0].success(None)
    publisher.send("send-all", None, b"y")  # sent at 1002, acked at 1002
    clock[0] += 4
    kafka = mgr.health()["kafka"]
    assert kafka["reachable"] is True and kafka["unacknowledged_seconds"] == 4
    clock[0] += metrics.UNREACHABLE_AFTER
    kafka = mgr.health()["kafka"]
    assert kafka["reachable"] is False and kafka["buffered_records"] == 1
    assert kafka["buffer_limit_bytes"] == 1 << 20 and kafka["buffered_bytes"] > 0
    stats = mgr.stats()
    assert stats["kafka_reachable"] == 0 and stats["producer_unacknowledged_seconds"] == 9
    publisher.buffer_memory = 1
    with pytest.raises(ProducerBufferFullError):
        publisher.send("send-all", None, b"z")
    registry = CollectorRegistry()
    register(mgr, registry)
    text = generate_latest(registry).decode()
    assert 'flask_signalr_kafka_records_refused_total{topic="send-all"} 1.0' in text
    assert "flask_signalr_kafka_kafka_reachable 0.0" in text
    # The cluster is back: the held record is acknowledged.
    publisher.producer.futures[1].success(None)
    assert mgr.health()["kafka"]["reachable"] is True
    assert mgr.stats()["kafka_reachable"] == 1


class FakeAdmin:
    def __init__(self, session_ms):
        self.session_ms = session_ms

    def describe_cluster(self):
        return {"brokers": [{"broker_id": 2}]}

    def describe_configs(self, resources, config_filter=None):
        if self.session_ms is None:
            raise PermissionError("DescribeConfigs denied")
        return {"broker": {"2": {"broker.session.timeout.ms": {"value": str(self.session_ms)}}}}


def derived(client, session_ms, **configs):
    mgr = KafkaManager(bootstrap_servers="127.0.0.1:1", client=client, **configs)
    mgr.core.admin = lambda: contextlib.nullcontext(FakeAdmin(session_ms))
    mgr.core._derive_request_timeouts()
    setting = mgr.core.client.request_timeout
    return mgr.producer_config.get(setting), mgr.consumer_config.get(setting)


def test_request_timeouts_are_the_broker_session_timeout_plus_5_s():
    assert request_timeout_ms(5000, None) == 10_000
    assert request_timeout_ms(None, 15_000) == 15_000
    assert derived("kafka-python", 5000) == (10_000, 10_000)
    # confluent's consumers have 6 s of their own (client_config).
    assert derived("confluent", 9000) == (14_000, 6000)
    # A cluster that does not say: the library's (kafka-python) or 15 s.
    assert derived("kafka-python", None) == (None, None)
    assert derived("confluent", None) == (15_000, 6000)


def test_a_request_timeout_the_app_set_wins():
    assert derived("kafka-python", 5000, producer_config={"request_timeout_ms": 40_000}) == (
        40_000, 10_000)
    assert derived("confluent", 5000, consumer_config={"socket.timeout.ms": 30_000}) == (
        10_000, 30_000)


@pytest.mark.parametrize(("sends_per_yield", "expected"), [(None, 641), (64, 10)])
def test_a_loop_of_refused_emits_still_lets_the_other_greenlets_run(sends_per_yield, expected):
    """One pause every ``sends_per_yield`` sends: kafka-python's own (1: its
    I/O is a greenlet of the same hub), or another client's."""
    pauses = []
    client = kafka_python_client.KafkaPythonClient()
    client.producer = HeldProducer
    if sends_per_yield is not None:
        client.sends_per_yield = sends_per_yield
    publisher = producer_module.Publisher({"buffer_memory": 1}, KafkaTopicConfig(),
                                          await_produce=False, pause=pauses.append,
                                          client=client)
    publisher.send("send-all", None, b"x")  # fills it
    for _ in range(640):
        with pytest.raises(ProducerBufferFullError):
            publisher.send("send-all", None, b"x")
    assert len(pauses) == expected and set(pauses) == {0}


class FakeConn:
    def __init__(self, connected, in_flight=0, paused=False):
        self.connected = connected
        # kafka-python's (correlation id, future, sent at, timeout at, timer)
        self.in_flight_requests = [(0, None, time.monotonic(), 0, None)] * in_flight
        self.paused = {"max"} if paused else set()


class FakeManager:
    """kafka-python 3's connection manager, as least_loaded_node reads it."""

    def __init__(self, conns, backing_off=()):
        self._conns = conns
        self._backing_off = set(backing_off)
        self.cluster = SimpleNamespace(
            brokers=lambda: [SimpleNamespace(node_id=n) for n in (1, 2, 3)])

    def connection_delay(self, node_id):
        return 1.0 if node_id in self._backing_off else 0


def test_metadata_goes_to_a_connected_node_not_to_the_one_that_just_timed_out():
    from kafka.net.manager import KafkaConnectionManager

    # Node 1 was hung: its connection was closed at the request timeout (no
    # backoff, nothing in flight); 2 and 3 are live, each with a fetch in flight.
    after_timeout = {2: FakeConn(True, 1), 3: FakeConn(True, 2)}
    manager = FakeManager(after_timeout)
    # kafka-python's own choice, every time: the hung node again.
    assert {KafkaConnectionManager.least_loaded_node(manager) for _ in range(20)} == {1}
    assert {kafka_python_client.least_loaded_node(manager) for _ in range(20)} == {2}
    # Reconnecting to the hung node (initializing, not connected): still 2.
    manager._conns[1] = FakeConn(False, 1)
    assert kafka_python_client.least_loaded_node(manager) == 2
    # An idle connected node first; no connected node: one that may connect.
    manager._conns[3] = FakeConn(True, 0)
    assert kafka_python_client.least_loaded_node(manager) == 3
    manager = FakeManager({1: FakeConn(False), 2: FakeConn(False)}, backing_off=(1, 3))
    assert kafka_python_client.least_loaded_node(manager) == 2


def test_kafka_pythons_clients_are_made_with_that_choice():
    config = kafka_python_client._with_net_client({"bootstrap_servers": "x:1"})
    assert config["kafka_client"] is kafka_python_client.NetClient
    mine = object()
    assert kafka_python_client._with_net_client({"kafka_client": mine})["kafka_client"] is mine
    client = kafka_python_client.NetClient(bootstrap_servers=["127.0.0.1:1"])
    try:
        assert client._manager.least_loaded_node.func is kafka_python_client.least_loaded_node
    finally:
        client.close()


class SlowQueries:
    """The shared metadata consumer: answers, then times out (a hung broker)."""

    def __init__(self):
        self.answer = True

    def call(self, method, *args):
        from confluent_kafka import KafkaError, KafkaException

        if not self.answer:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed to get metadata"))
        meta = SimpleNamespace(error=None, partitions={0: None, 1: None, 2: None})
        return SimpleNamespace(topics={args[0]: meta})


def test_a_confluent_consumer_goes_on_with_known_partitions_when_metadata_times_out():
    from kafka.errors import KafkaTimeoutError

    consumer = confluent_consumer.ConfluentConsumer.__new__(confluent_consumer.ConfluentConsumer)
    consumer._queries, consumer._closed, consumer._partition_ids = SlowQueries(), False, {}
    consumer._queries.answer = False
    with pytest.raises(KafkaTimeoutError):  # nothing known yet: as before
        consumer.partitions_for_topic("t")
    consumer._queries.answer = True
    assert consumer.partitions_for_topic("t") == {0, 1, 2}
    consumer._queries.answer = False
    # It used to raise here too: the consumer loop restarted (consumer.py's
    # periodic check) and its new consumer met the hung broker again.
    assert consumer.partitions_for_topic("t") == {0, 1, 2}


def test_librdkafkas_connection_setup_timeout_follows_the_request_timeout():
    mgr = KafkaManager(bootstrap_servers="127.0.0.1:1", client="confluent",
                       consumer_config={"socket.connection.setup.timeout.ms": 20_000})
    mgr.core.admin = lambda: contextlib.nullcontext(FakeAdmin(5000))
    mgr.core._derive_request_timeouts()
    assert mgr.producer_config["socket.connection.setup.timeout.ms"] == 10_000
    assert mgr.consumer_config["socket.connection.setup.timeout.ms"] == 20_000  # the app's
    assert mgr.consumer_config["socket.timeout.ms"] == 6000  # client_config's
