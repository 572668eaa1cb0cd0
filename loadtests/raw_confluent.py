"""The floor under ``client="confluent"`` at a paced rate: plain
confluent-kafka, a producer and a consumer with the backplane's librdkafka
settings (loadtests/bench.py's broker, no Python server, no sockets of
clients), records sent at a steady rate and timed from send to poll.

  python raw_confluent.py [--rate 400] [--seconds 10]

Starts its own Apache Kafka; writes loadtests/results/raw-confluent-<date>.md
and .json: p50/p90/p99 ms and the process's CPU seconds per 1,000 records
(both clients' librdkafka threads and the poll loop), what the bench's
dynos pay on top of which is theirs.
"""
from __future__ import annotations

import argparse
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pacing import paced

from flask_signalr_kafka import KafkaManager
from flask_signalr_kafka.cli.broker import start_broker
from testkit.measure import own_cpu, percentile, write_report

HERE = Path(__file__).parent


def run(bootstrap: str, rate: float, seconds: float) -> dict:
    topic = f"raw-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: its futures need it
    admin.create_topics([NewTopic(topic, num_partitions=10, replication_factor=1)])[topic].result()
    # The manager's own librdkafka properties (linger, acks, Nagle, fetch wait).
    mgr = KafkaManager(bootstrap, client="confluent")
    producer = Producer(mgr.producer_config)
    consumer = Consumer({**mgr.consumer_config, "group.id": topic})
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(10)])
    n = int(rate * seconds)
    latencies: list[float] = []
    started = threading.Event()

    def consume() -> None:
        started.set()
        idle_since = time.time()
        while len(latencies) < n and time.time() - idle_since < 3:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            latencies.append((time.time() - float(message.value()[:20])) * 1000)
            idle_since = time.time()

    reader = threading.Thread(target=consume)
    reader.start()
    started.wait()
    time.sleep(2)  # assigned, first fetch under way
    cpu0 = own_cpu()
    padding = b"x" * 80
    for seq in paced(n, rate):
        producer.produce(topic, b"%20.6f" % time.time() + padding, key=b"%d" % (seq % 64))
        producer.poll(0)
    producer.flush()
    reader.join()
    cpu = own_cpu() - cpu0
    consumer.close()
    return {"rate": rate, "records": n, "received": len(latencies),
            "cpu_s_per_1000": cpu / max(len(latencies), 1) * 1000,
            "p50_ms": percentile(latencies, 0.5), "p90_ms": percentile(latencies, 0.9),
            "p99_ms": percentile(latencies, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=400)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    log_dir = HERE / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with start_broker("kafka", log_dir=log_dir) as broker:
        result = run(broker.bootstrap, args.rate, args.seconds)
    result["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_report(HERE / "results", "raw-confluent", result,
                 f"Plain confluent-kafka, the manager's librdkafka settings, Apache Kafka, "
                 f"{result['date']}: {result['received']}/{result['records']} records at "
                 f"{result['rate']:g}/s; p50 / p90 / p99 {result['p50_ms']:.2f} / "
                 f"{result['p90_ms']:.2f} / {result['p99_ms']:.2f} ms; "
                 f"{result['cpu_s_per_1000']:.3f} CPU s per 1,000 records.\n")


if __name__ == "__main__":
    main()
