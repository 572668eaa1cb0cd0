"""An idempotent producer whose cluster forgot its producer id must not leave
the dyno mute. Apache Kafka 2.5+ lets kafka-python bump the epoch; Tansu, an
in-memory broker restarted, refuses that and kafka-python's producer enters a
fatal state: the Publisher replaces it."""
import time

from flask_signalr_kafka import KafkaManager, KafkaTopicConfig
from flask_signalr_kafka.cli.broker import free_port, start_broker
from testkit.harness import unique


def test_idempotent_producer_replaced_once_the_broker_forgot_it(artifacts):
    port = free_port()
    broker = start_broker("tansu", port=port, log_dir=artifacts)
    mgr = KafkaManager(bootstrap_servers=broker.bootstrap, write_only=True, await_produce=True,
                       producer_config={"enable_idempotence": True, "request_timeout_ms": 5000,
                                        "delivery_timeout_ms": 10000},
                       topic_config=KafkaTopicConfig(prefix=unique("idem")))
    try:
        for i in range(5):
            mgr.emit("e", i, to="room")
        broker.stop()  # Tansu keeps producer ids in memory only
        broker = start_broker("tansu", port=port, log_dir=artifacts)
        failures, deadline = 0, time.monotonic() + 20
        while True:
            try:
                mgr.emit("e", "after", to="room")
                break
            except Exception:
                failures += 1
                assert time.monotonic() < deadline, "the dyno stayed mute"
                time.sleep(0.05)
        assert mgr.core.publisher.replaced >= 1
        for i in range(5):  # and it keeps publishing
            mgr.emit("e", i, to="room")
    finally:
        mgr.close(timeout=1)
        broker.stop()
