"""The two Kafka clients' dialects, the choice of client, the confluent
adapter's delivery futures and the worker that keeps librdkafka's waits off
gevent's hub; without a broker."""
import threading
import time

import gevent
import pytest
from confluent_kafka import KafkaError, KafkaException
from kafka.errors import KafkaTimeoutError

from flask_signalr_kafka import KafkaManager, kafka_client
from flask_signalr_kafka.client_config import (
    KAFKA_PYTHON_NAMES,
    LIBRDKAFKA_NAMES,
    to_kafka_python,
    to_librdkafka,
)
from flask_signalr_kafka.concurrency import Worker
from flask_signalr_kafka.confluent_client import Delivery
from flask_signalr_kafka.env_config import manager_kwargs_from_env


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


def test_a_property_librdkafka_does_not_know_is_a_value_error():
    from flask_signalr_kafka.concurrency import Runtime
    from flask_signalr_kafka.confluent_client import CLIENT

    runtime = Runtime("threading", None, time.sleep)
    with pytest.raises(ValueError, match='consumer_config: No such configuration property: "x.y"'):
        CLIENT.consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g", "x.y": 1}, runtime)
