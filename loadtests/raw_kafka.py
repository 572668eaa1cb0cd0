"""The physical limit for the benchmark: plain kafka-python, one producer
process and one consumer process on the same broker, no backplane.

  python raw_kafka.py consume BOOTSTRAP TOPIC EXPECTED FETCH_MAX_WAIT_MS
  python raw_kafka.py produce BOOTSTRAP TOPIC N RATE

Values are ~100 bytes carrying the send time; the consumer prints one JSON
line: records received, first/last receive times, latencies (ms).
"""
import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pacing import paced


def consume(bootstrap, topic, expected, fetch_max_wait_ms):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=fetch_max_wait_ms)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    for tp, end in consumer.end_offsets(partitions).items():
        consumer.seek(tp, end)
    print("ready", flush=True)
    received, first, last, latencies = 0, None, None, []
    idle_since = time.time()
    while received < expected and time.time() - idle_since < 3:
        batches = consumer.poll(timeout_ms=200)
        now = time.time()
        for records in batches.values():
            for record in records:
                received += 1
                latencies.append((now - float(record.value[:20])) * 1000)
            first = first or now
            last = now
            idle_since = now
    print(json.dumps({"received": received, "first": first, "last": last,
                      "latencies_ms": latencies}), flush=True)


def produce(bootstrap, topic, n, rate):
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, acks="all",
                             enable_idempotence=False)
    padding = b"x" * 80
    started = time.time()
    for _ in paced(n, rate):
        producer.send(topic, value=b"%20.6f" % time.time() + padding)
    producer.flush()
    print(json.dumps({"seconds": time.time() - started}), flush=True)


if __name__ == "__main__":
    mode, bootstrap, topic = sys.argv[1:4]
    if mode == "consume":
        consume(bootstrap, topic, int(sys.argv[4]), int(sys.argv[5]))
    else:
        produce(bootstrap, topic, int(sys.argv[4]), float(sys.argv[5]))
