"""The two Kafka clients' dialects, the choice of client, the confluent
adapter's delivery futures and the worker that keeps librdkafka's waits off
gevent's hub; without a broker."""
import threading
import time

import gevent
import pytest
from confluent_kafka import KafkaError, KafkaException
from kafka.errors import KafkaTimeoutError

from flask_signalr_kafka import KafkaManager
from flask_signalr_kafka.config.env_config import manager_kwargs_from_env
from flask_signalr_kafka.runtime.concurrency import Worker
from flask_signalr_kafka.transport.clients import kafka_client
from flask_signalr_kafka.transport.clients.client_config import (
    KAFKA_PYTHON_NAMES,
    LIBRDKAFKA_NAMES,
    to_kafka_python,
    to_librdkafka,
)
from flask_signalr_kafka.transport.clients.confluent_producer import Delivery


def test_kafka_python_is_the_default_and_confluent_the_other():
    assert KafkaManager("127.0.0.1:1").core.client.name == "kafka-python"
    mgr = KafkaManager("127.0.0.1:1", client="confluent")
    assert mgr.core.client.name == "confluent"
    assert mgr.producer_config["bootstrap.servers"] == "127.0.0.1:1"
    assert mgr.producer_config["enable.idempotence"] is True
    assert mgr.producer_config["partitioner"] == "murmur2_random"
    # The admin client is kafka-python's: its settings in its names.
    assert mgr.admin_config["bootstrap_servers"] == ["127.0.0.1:1"]
    with pytest.raises(ValueError, match="'kafka-python', 'confluent'"):
        KafkaManager("127.0.0.1:1", client="librdkafka")


@pytest.mark.parametrize("client, config, hint", [
    ("confluent", {"sasl_mechanism": "PLAIN"}, "'sasl_mechanism' -> 'sasl.mechanism'"),
    ("confluent", {"linger_ms": 5}, "'linger_ms' -> 'linger.ms'"),
    ("kafka-python", {"sasl.mechanism": "PLAIN"}, "'sasl.mechanism' -> 'sasl_mechanism'"),
    ("kafka-python", {"bootstrap.servers": "h:1"}, "'bootstrap.servers' -> 'bootstrap_servers'"),
])
@pytest.mark.parametrize("which", ["producer_config", "consumer_config", "admin_config"])
def test_a_setting_of_the_other_dialect_names_the_one_to_use(client, config, hint, which):
    with pytest.raises(ValueError, match=hint.replace("(", r"\(")) as raised:
        KafkaManager("127.0.0.1:1", client=client, **{which: config})
    assert which in str(raised.value)


def test_confluent_settings_reach_librdkafka_and_the_admin_in_its_names():
    mgr = KafkaManager(client="confluent",
                       producer_config={"bootstrap.servers": "a:1,b:2", "linger.ms": 7},
                       consumer_config={"bootstrap.servers": "a:1,b:2",
                                        "fetch.wait.max.ms": 50},
                       admin_config={"bootstrap.servers": "a:1,b:2", "security.protocol": "SSL",
                                     "ssl.endpoint.identification.algorithm": "none"})
    assert mgr.producer_config["linger.ms"] == 7
    assert mgr.consumer_config["fetch.wait.max.ms"] == 50
    assert mgr.core._fetch_wait_given
    # librdkafka's default only from 2.10: a paced record must not wait for an ACK.
    assert mgr.producer_config["socket.nagle.disable"] is True
    assert mgr.consumer_config["socket.nagle.disable"] is True
    assert mgr.admin_config["bootstrap_servers"] == ["a:1", "b:2"]
    assert mgr.admin_config["security_protocol"] == "SSL"
    assert mgr.admin_config["ssl_check_hostname"] is False
    with pytest.raises(ValueError, match="no kafka-python counterpart"):
        KafkaManager("a:1", client="confluent", admin_config={"sasl.oauthbearer.method": "oidc"})


def test_the_mapping_table_goes_both_ways():
    for setting, prop in LIBRDKAFKA_NAMES.items():
        assert KAFKA_PYTHON_NAMES[prop] == setting
    config = {"bootstrap_servers": ["a:1", "b:2"], "security_protocol": "SASL_SSL",
              "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "u",
              "sasl_plain_password": "p", "ssl_cafile": "/ca.pem", "ssl_check_hostname": False}
    translated = to_librdkafka(config)
    assert translated == {
        "bootstrap.servers": "a:1,b:2", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "u", "sasl.password": "p",
        "ssl.ca.location": "/ca.pem", "ssl.endpoint.identification.algorithm": "none"}
    assert to_kafka_python(translated) == config


def test_heroku_config_vars_work_with_either_client():
    env = {"KAFKA_URL": "kafka+ssl://h1:9096,kafka+ssl://h2:9096",
           "KAFKA_TRUSTED_CERT": "CA", "KAFKA_CLIENT_CERT": "CERT",
           "KAFKA_CLIENT_CERT_KEY": "KEY"}
    plain = manager_kwargs_from_env(env, {})
    assert plain["producer_config"]["security_protocol"] == "SSL"
    confluent = manager_kwargs_from_env(env, {"client": "confluent"})
    producer = confluent["producer_config"]
    assert producer["security.protocol"] == "SSL"
    assert open(producer["ssl.ca.location"]).read() == "CA"
    assert open(producer["ssl.key.location"]).read() == "KEY"
    assert producer["ssl.endpoint.identification.algorithm"] == "none"
    mgr = KafkaManager(**confluent)
    assert mgr.consumer_config["ssl.certificate.location"] == producer["ssl.certificate.location"]
    assert mgr.admin_config["ssl_certfile"] == producer["ssl.certificate.location"]
    assert mgr.admin_config["bootstrap_servers"] == ["h1:9096", "h2:9096"]


def test_client_named_gives_one_object_per_library():
    assert kafka_client.client_named("confluent") is kafka_client.client_named("confluent")
    assert kafka_client.client_named("confluent").fetch_wait == "fetch.wait.max.ms"
    assert kafka_client.client_named("kafka-python").fetch_wait == "fetch_max_wait_ms"


def settle_later(delivery, error, delay):
    def run():
        time.sleep(delay)
        delivery.settle(error, None)
    threading.Thread(target=run, daemon=True).start()


def test_a_delivery_calls_back_and_raises_as_kafka_pythons_future():
    reports = []
    ok, failed = Delivery(reports), Delivery(reports)
    seen = []
    ok.add_callback(lambda value: seen.append(("ok", value)))
    ok.add_errback(lambda error: seen.append(("not called", error)))
    failed.add_errback(lambda tag, error: seen.append((tag, error)), "lost")
    ok(None, None), failed(KafkaError(KafkaError._MSG_TIMED_OUT), None)
    assert [d for d, *_ in reports] == [ok, failed]  # queued, not settled, in librdkafka's call
    assert seen == []
    for delivery, error, message in reports:
        delivery.settle(error, message)
    assert seen[0] == ("ok", ok)
    assert seen[1][0] == "lost" and isinstance(seen[1][1], KafkaException)
    assert ok.get(0) is ok
    with pytest.raises(KafkaException):
        failed.get(0)
    late = []
    failed.add_errback(late.append)  # after the fact: called at once
    assert len(late) == 1


def test_a_delivery_waits_for_its_report_and_times_out():
    slow = Delivery([])
    settle_later(slow, None, 0.05)
    assert slow.get(5) is slow
    never = Delivery([])
    started = time.monotonic()
    with pytest.raises(KafkaTimeoutError):
        never.get(0.1)
    assert time.monotonic() - started >= 0.1


def test_the_worker_runs_blocking_calls_in_a_real_thread_while_greenlets_go_on():
    worker = Worker(threaded=True)
    ticks = []

    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    tick = gevent.spawn(ticker)
    gevent.sleep(0)
    main = threading.get_ident()
    # time.sleep is not patched here: in the hub it would stop the ticker.
    thread = worker.call(lambda: (time.sleep(0.3), threading.get_ident())[1])
    tick.kill()
    with pytest.raises(ZeroDivisionError):  # raised in the caller
        worker.call(lambda: 1 / 0)
    worker.close()
    assert thread != main
    assert len(ticks) >= 10, ticks
    with pytest.raises(ZeroDivisionError):
        Worker(threaded=False).call(lambda: 1 / 0)


@pytest.mark.parametrize("serial", [True, False])
def test_a_worker_under_gevent_overlaps_its_calls_unless_serial(serial):
    """A producer's flush must not wait behind its reporter's poll (up to
    0.5 s); a consumer's close must wait for its poll."""
    worker = Worker(threaded=True, serial=serial)
    order = []
    # time.sleep is not patched here: it blocks the pool's real thread.
    polling = gevent.spawn(worker.call, lambda: (time.sleep(0.4), order.append("poll")))
    gevent.sleep(0.05)
    worker.call(lambda: order.append("flush"))
    polling.join(5)
    worker.close()
    assert order == (["poll", "flush"] if serial else ["flush", "poll"])


@pytest.mark.parametrize("serial", [True, False])
def test_a_worker_in_the_callers_threads_runs_one_call_at_a_time_when_serial(serial):
    """Threading and asyncio mode: a consumer's close waits for its poll."""
    worker = Worker(threaded=False, serial=serial)
    inside, release, order = threading.Event(), threading.Event(), []

    def poll():
        order.append("poll")
        inside.set()
        release.wait(5)
        order.append("poll returned")

    polling = threading.Thread(target=worker.call, args=(poll,))
    polling.start()
    assert inside.wait(5)
    closing = threading.Thread(target=worker.call, args=(lambda: order.append("close"),))
    closing.start()
    closing.join(0.3)
    assert closing.is_alive() is serial
    release.set()
    polling.join(5)
    closing.join(5)
    expected = ["poll", "poll returned", "close"] if serial else ["poll", "close",
                                                                  "poll returned"]
    assert order == expected


def test_a_property_librdkafka_does_not_know_is_a_value_error():
    from flask_signalr_kafka.runtime.concurrency import Runtime
    from flask_signalr_kafka.transport.clients.confluent_client import CLIENT

    runtime = Runtime("threading", None, time.sleep)
    with pytest.raises(ValueError, match='consumer_config: No such configuration property: "x.y"'):
        CLIENT.consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g", "x.y": 1}, runtime)


class FakeMessage:
    def __init__(self, topic, partition, offset, value=b"v", key=None, error=None):
        self._t, self._p, self._o, self._v, self._k, self._e = (
            topic, partition, offset, value, key, error)

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def key(self):
        return self._k

    def timestamp(self):
        return (1, 1000 + self._o)

    def error(self):
        return self._e


class FakeLibrdkafkaConsumer:
    """Records what the adapter asks of librdkafka's consumer."""

    def __init__(self):
        self.calls = []
        self.queue = []

    def incremental_assign(self, tps):
        self.calls.append(("assign", [(tp.topic, tp.partition, tp.offset) for tp in tps]))

    def incremental_unassign(self, tps):
        self.calls.append(("unassign", [(tp.topic, tp.partition) for tp in tps]))

    def pause(self, tps):
        self.calls.append(("pause", [tp.partition for tp in tps]))

    def resume(self, tps):
        self.calls.append(("resume", [tp.partition for tp in tps]))

    def poll(self, timeout):
        return self.queue.pop(0) if self.queue else None

    def consume(self, n, timeout):
        out, self.queue = self.queue[:n], self.queue[n:]
        return out


def test_the_confluent_consumer_assigns_at_our_positions_and_keeps_them():
    from flask_signalr_kafka.runtime.concurrency import Runtime
    from flask_signalr_kafka.transport.clients.confluent_consumer import ConfluentConsumer
    from flask_signalr_kafka.transport.clients.kafka_client import TopicPartition

    # The constructor makes a librdkafka consumer: set the adapter up by hand.
    consumer = ConfluentConsumer.__new__(ConfluentConsumer)
    fake = FakeLibrdkafkaConsumer()
    consumer._runtime = Runtime("threading", None, time.sleep)
    consumer._worker = Worker(threaded=False)
    consumer._consumer = fake
    consumer._setup()
    consumer._thread, consumer._closed = None, False
    t0, t1 = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer.assign([t0, t1])
    consumer.seek(t0, 5)
    consumer.seek(t1, 7)
    consumer.pause(t1)
    fake.queue = [FakeMessage("t", 0, 5), FakeMessage("t", 0, 6), FakeMessage("t", 1, 9)]
    batches = consumer.poll(100)
    assert fake.calls == [("assign", [("t", 0, 5), ("t", 1, 7)]), ("pause", [1])]
    assert [r.offset for r in batches[t0]] == [5, 6] and batches[t0][0].timestamp == 1005
    assert consumer.position(t0) == 7 and consumer.position(t1) == 10
    # Seeking where it already is changes nothing; elsewhere reassigns it there.
    fake.calls.clear()
    consumer.seek(t0, 7)
    consumer.seek(t1, 3)
    fake.queue = [FakeMessage("t", 1, 3)]
    batches = consumer.poll(100)
    assert fake.calls == [("unassign", [("t", 1)]), ("assign", [("t", 1, 3)]), ("pause", [1])]
    assert [r.offset for r in batches[t1]] == [3]
    # A partition no longer wanted is unassigned; its records are dropped.
    fake.calls.clear()
    consumer.assign([t0])
    fake.queue = [FakeMessage("t", 1, 4), FakeMessage("t", 0, 7)]
    batches = consumer.poll(100)
    assert fake.calls == [("unassign", [("t", 1)])]
    assert list(batches) == [t0] and consumer._positions == {t0: 8}
