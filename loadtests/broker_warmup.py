"""Warm a freshly started Apache Kafka before a benchmark measures through it.

A new broker's JVM runs its request paths interpreted until the JIT has
compiled them: on this project's 2-core machine a paced record cost the
broker 1.8 ms of CPU in its first minute and 0.47 ms four minutes of traffic
later (loadtests/bench.py's dynos, one sid at 400/s). Without a warm-up the
first backend measured pays for the JIT, in its latency too, and the next
ones do not.

This drives single-record produce requests and the fetches that answer them
through a topic of its own at a steady rate, the paced phases' kind of
traffic, and prints what each window cost the broker per record.
"""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from pacing import paced

from testkit.measure import cpu_seconds_of

PARTITIONS = 10
#: Seconds of traffic per measured window.
WINDOW = 5.0


class _Traffic:
    """A producer sending to ``topic`` and a consumer thread reading it back."""

    def __init__(self, producer, poll: Callable[[], object], closing: Callable[[], None]) -> None:
        self.producer, self._poll, self._closing = producer, poll, closing
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._done.is_set():
            self._poll()

    def close(self) -> None:
        self._done.set()
        self._reader.join()
        self._closing()


def _kafka_python(bootstrap: str, topic: str) -> tuple[_Traffic, Callable[[int], None]]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=500)
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])

    def closing() -> None:
        producer.close()
        consumer.close()

    def send(seq: int) -> None:
        producer.send(topic, value=b"x" * 100, key=b"%d" % (seq % 64))

    return _Traffic(producer, lambda: consumer.poll(timeout_ms=200), closing), send


def _confluent(bootstrap: str, topic: str) -> tuple[_Traffic, Callable[[int], None]]:
    """With the backplane's own librdkafka settings (idempotent producer)."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka import TopicPartition as Partition

    from flask_signalr_kafka import KafkaManager

    manager = KafkaManager(bootstrap, client="confluent")  # its settings; connects nothing
    producer = Producer(manager.producer_config)
    consumer = Consumer({**manager.consumer_config, "group.id": topic})
    consumer.assign([Partition(topic, p) for p in range(PARTITIONS)])

    def send(seq: int) -> None:
        producer.produce(topic, b"x" * 100, b"%d" % (seq % 64))
        producer.poll(0)

    return _Traffic(producer, lambda: consumer.poll(0.2), consumer.close), send


def warm_broker(bootstrap: str, broker_cpu: Callable[[], float], seconds: float,
                rate: float = 1000, window: float = WINDOW) -> list[float]:
    """Send ``rate`` records/s for ``seconds`` and read them back, window by
    window with kafka-python and, where it is installed, confluent-kafka in
    turn; the broker's CPU ms per record in each window (printed as it goes)."""
    topic = f"warmup-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    clients = [_kafka_python]
    try:
        import confluent_kafka  # noqa: F401
        clients.append(_confluent)
    except ImportError:
        pass
    traffic = [make(bootstrap, topic) for make in clients]
    per_record: list[float] = []
    per_window = max(int(rate * window), 1)
    try:
        for i in range(max(int(seconds / window), 1)):
            flow, send = traffic[i % len(traffic)]
            cpu0 = broker_cpu()
            for seq in paced(per_window, rate):
                send(seq)
            flow.producer.flush()
            per_record.append((broker_cpu() - cpu0) / per_window * 1000)
            print(f"  broker warm-up: {per_record[-1]:.3f} ms of its CPU per record",
                  flush=True)
    finally:
        for flow, _ in traffic:
            flow.close()
        admin.delete_topics([topic])
        admin.close()
    return per_record


def store_pids(broker) -> list[int]:
    """The broker's processes (a Kafka cluster's JVMs, or Tansu)."""
    processes = [node.process for node in getattr(broker, "nodes", ())] or [broker.process]
    return [p.pid for p in processes if p is not None]


def warm(broker, seconds: float) -> list[float]:
    """:func:`warm_broker` on a broker of flask_signalr_kafka.cli.broker;
    nothing for Tansu (no JIT) or ``seconds`` 0."""
    if seconds <= 0 or broker.engine != "kafka":
        return []
    pids = store_pids(broker)
    print(f"warming the broker up for {seconds:g} s", flush=True)
    return warm_broker(broker.bootstrap, lambda: cpu_seconds_of(pids), seconds)
