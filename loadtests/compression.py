"""Should the producer compress? CPU per delivery and bytes on the wire for
each ``compression_type``, with kafka-python and with librdkafka
(confluent-kafka), for a typical chat emit and for a 100 kB JSON emit.

  python loadtests/compression.py [--chat N] [--big N]

Starts its own one-node Apache Kafka (``make kafka-jars``). Every record is
a real backplane record (an InvocationExt with its JSON frame, as an emit to
a room writes it), sent alone and awaited, as a chat's emits go: one record
per batch, which is the worst case for compression. Figures per record:

- produce CPU: this process's CPU time (all threads: kafka-python's IO
  thread, librdkafka's threads) per record sent;
- consume CPU: a kafka-python consumer's CPU per record read, decompressing
  included (every dyno reads every record of send-all and send-group);
- bytes: the partition's log size on the broker per record, which is what
  crossed the wire to the broker and what every consumer fetches.

Codecs whose library is missing are skipped and named: kafka-python needs
``lz4``, ``python-snappy`` (or ``cramjam``) and ``zstandard``; confluent-kafka
carries all of them.
"""
from __future__ import annotations

import argparse
import json
import random
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from flask_signalr_kafka.cli.broker import start_broker
from flask_signalr_kafka.wire import hub_protocol, records

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
_WORDS = ("the of and to in is you that it he was for on are as with his they at be this "
          "have from or one had by word but not what all were we when your can said there "
          "use an each which she do how their if will up other about out many then them "
          "these so some her would make like him into time has look two more write go see "
          "number no way could people my than first water been call who oil its now find").split()


def chat_data(rng: random.Random) -> dict:
    """One chat message as an app emits it."""
    return {"user": f"user{rng.randrange(10_000)}", "room": "lobby",
            "text": " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(5, 20))),
            "ts": 1_764_600_000_000 + rng.randrange(10**6), "id": rng.getrandbits(64)}


def big_data(rng: random.Random, size: int = 100_000) -> list:
    """About ``size`` bytes of JSON: a list of varied objects, as an app's
    state sync might send (not a repeated string, which flatters every codec)."""
    items: list = []
    while len(json.dumps(items)) < size:
        items += [{"id": rng.getrandbits(48), "name": f"item-{rng.randrange(10**6)}",
                   "price": round(rng.uniform(0, 1000), 2), "tags": rng.sample(_WORDS, 3),
                   "note": " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(3, 12))),
                   "active": rng.random() < 0.5} for _ in range(20)]
    return items


def record(data) -> bytes:
    frames = hub_protocol.encode_frames("message", [data], ("json",))
    return records.encode(records.InvocationExt(
        [], frames, origin="bench_" + "0" * 32, namespace="/"))


def kafka_python_send(bootstrap: str, topic: str, values: list[bytes], codec: str) -> float:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, acks="all",
                             enable_idempotence=False, metrics_enabled=False,
                             compression_type=None if codec == "none" else codec,
                             max_request_size=2_000_000)
    producer.send(topic, b"warm-up").get(30)
    started = time.process_time()
    for value in values:
        producer.send(topic, value, key=b"room").get(30)
    cpu = time.process_time() - started
    producer.close()
    return cpu


def confluent_send(bootstrap: str, topic: str, values: list[bytes], codec: str) -> float:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": "all",
                         "compression.type": codec, "message.max.bytes": 2_000_000})
    producer.produce(topic, b"warm-up")
    producer.flush(30)
    started = time.process_time()
    for value in values:
        producer.produce(topic, value, key=b"room")
        producer.flush(30)
    cpu = time.process_time() - started
    return cpu


def consume_cpu(bootstrap: str, topic: str, count: int) -> float:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, metrics_enabled=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 1)  # after the warm-up record
    seen = 0
    started = time.process_time()
    while seen < count:
        for batch in consumer.poll(timeout_ms=1000).values():
            seen += len(batch)
    cpu = time.process_time() - started
    consumer.close()
    return cpu


def log_bytes(cluster, topic: str) -> int:
    folder = cluster.nodes[0].dir / "data" / f"{topic}-0"
    return sum(f.stat().st_size for f in folder.glob("*.log"))


def available(client: str, codec: str) -> bool:
    if codec == "none" or client == "librdkafka":
        return True
    import kafka.codec

    return getattr(kafka.codec, f"has_{codec}")()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chat", type=int, default=2000, help="chat records per run")
    parser.add_argument("--big", type=int, default=200, help="100 kB records per run")
    args = parser.parse_args()
    rng = random.Random(17)
    payloads = {
        "chat": [record(chat_data(rng)) for _ in range(args.chat)],
        "100kB": [record(big_data(rng)) for _ in range(args.big)],
    }
    clients = {"kafka-python": kafka_python_send}
    try:
        import confluent_kafka

        clients["librdkafka"] = confluent_send
        print(f"# kafka-python {__import__('kafka').__version__}, "
              f"librdkafka {confluent_kafka.libversion()[0]}")
    except ImportError:
        print("# confluent-kafka not installed: librdkafka skipped")
    cluster = start_broker("kafka")
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    rows = []
    try:
        for name, values in payloads.items():
            mean = sum(map(len, values)) / len(values)
            print(f"\n{name}: {len(values)} records of {mean:,.0f} bytes on average")
            print(f"{'client':<13}{'codec':<8}{'produce µs':>12}{'consume µs':>12}"
                  f"{'bytes/rec':>11}{'vs none':>9}")
            for client, send in clients.items():
                plain = None
                for codec in CODECS:
                    if not available(client, codec):
                        print(f"{client:<13}{codec:<8}  skipped: its library is not installed")
                        continue
                    topic = f"bench-{name.lower()}-{client}-{codec}-{rng.getrandbits(24):x}"
                    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={
                        "max.message.bytes": "2000000"})])
                    produce = send(cluster.bootstrap, topic, values, codec)
                    consume = consume_cpu(cluster.bootstrap, topic, len(values))
                    size = (log_bytes(cluster, topic) - 80) / len(values)  # less the warm-up
                    plain = plain or size
                    row = {"payload": name, "client": client, "codec": codec,
                           "produce_us": produce / len(values) * 1e6,
                           "consume_us": consume / len(values) * 1e6, "bytes": size}
                    rows.append(row)
                    print(f"{client:<13}{codec:<8}{row['produce_us']:>12,.0f}"
                          f"{row['consume_us']:>12,.0f}{size:>11,.0f}{size / plain:>9.2f}",
                          flush=True)
    finally:
        admin.close()
        cluster.stop()
    print("\n" + json.dumps(rows))


if __name__ == "__main__":
    main()
