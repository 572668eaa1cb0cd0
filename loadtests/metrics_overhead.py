"""What counting costs on the hot paths (issue 10: "counting must not cost
measurable throughput"), measured per record against a real broker.

For each hook: the hook alone (timeit, best of 5), and the operation it sits
in (a Publisher.send with a real producer; a consumer poll + dispatch of a
batch), so the share is the ratio of the two on this machine.

    .venv/bin/python loadtests/metrics_overhead.py [--engine kafka|tansu]
"""
from __future__ import annotations

import argparse
import sys
import time
import timeit

from kafka import KafkaConsumer, TopicPartition

from flask_signalr_kafka.cli.broker import start_broker
from flask_signalr_kafka.runtime.stats import ConsumerStats, DeliveryLatency, ProducerStats
from flask_signalr_kafka.transport.producer import Publisher
from flask_signalr_kafka.transport.topics import KafkaTopicConfig, ensure_topics


def best(stmt, number, **ns) -> float:
    """Seconds per call, best of 5 runs of ``number`` calls."""
    return min(timeit.repeat(stmt, number=number, repeat=5, globals=ns)) / number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="kafka")
    parser.add_argument("--records", type=int, default=20000)
    args = parser.parse_args()

    # The produce path's one hook: a lost record is counted in the errback
    # that logged it already, so a sent record costs one dict increment.
    stats, topic = ProducerStats(), "t-send-all"
    produce_hook = best("stats.produced[topic] += 1", 1_000_000, stats=stats, topic=topic)
    cstats = ConsumerStats()
    batch = [type("R", (), {"timestamp": 1})()] * 50
    tp = TopicPartition("t", 0)
    batch_hook = best("cstats.batch(tp, batch, 5)", 200_000, cstats=cstats, tp=tp, batch=batch)
    delivered = ProducerStats().produced  # the same defaultdict(int) increment
    deliver_hook = best("d[t] += 1", 1_000_000, d=delivered, t=topic)
    # The delivery-latency histogram: a clock read and a bisect a record delivered.
    latency_hook = best("lat.observe('send-all', ts)", 1_000_000,
                        lat=DeliveryLatency(("send-all",)), ts=int(time.time() * 1000) - 3)

    with start_broker(args.engine) as broker:
        config = KafkaTopicConfig(prefix="overhead")
        from kafka import KafkaAdminClient
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        ensure_topics(admin, config, broker.bootstrap)
        admin.close()
        publisher = Publisher({"bootstrap_servers": broker.bootstrap, "linger_ms": 1},
                              config, await_produce=False)
        publisher.send("send-all", None, b"x" * 100)
        publisher.flush()
        start = time.perf_counter()
        for _ in range(args.records):
            publisher.send("send-all", None, b"x" * 100)
        publisher.flush()
        send = (time.perf_counter() - start) / args.records
        publisher.close()

        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                                 enable_auto_commit=False, fetch_max_wait_ms=20)
        name = config.name("send-all")
        tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got, batches, start = 0, 0, time.perf_counter()
        while got < args.records:
            for part, records in consumer.poll(timeout_ms=500).items():
                got += len(records)
                batches += 1
                consumer.highwater(part)
        consume = (time.perf_counter() - start) / got
        highwater = best("c.highwater(tp)", 100_000, c=consumer, tp=tps[0])
        consumer.close()

    per_record_consume_hooks = ((batch_hook + highwater) * batches / got + deliver_hook
                                + latency_hook)
    print(f"engine {args.engine}, {args.records} records of 100 bytes")
    print(f"produce: send {send * 1e6:.1f} us/record; hooks {produce_hook * 1e9:.0f} ns "
          f"= {100 * produce_hook / send:.2f}%")
    print(f"consume: poll {consume * 1e6:.1f} us/record ({got / batches:.0f} records/batch); "
          f"hooks {per_record_consume_hooks * 1e9:.0f} ns/record "
          f"(batch {batch_hook * 1e9:.0f} ns + highwater {highwater * 1e9:.0f} ns a batch, "
          f"delivered {deliver_hook * 1e9:.0f} ns + latency {latency_hook * 1e9:.0f} ns "
          f"a record) "
          f"= {100 * per_record_consume_hooks / consume:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
