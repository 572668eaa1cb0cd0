"""Malformed records are logged once with topic, partition and offset, and
skipped; the server goes on and loses nothing else."""
import re

import msgspec
import pytest
from kafka import KafkaProducer

from testkit.harness import unique, wait_until

# The combinations besides the default one that run this module (make test).
pytestmark = [pytest.mark.tansu]

GOOD_FRAME = b'{"type":1,"target":"Good","arguments":["%s"]}\x1e'

BAD = [
    ("send-all", None, b"\xc1garbage"),
    ("send-all", None, b""),
    ("send-all", None, msgspec.msgpack.encode([[]])),
    ("send-all", None, msgspec.msgpack.encode([None, {"json": b"x"}])),
    ("send-all", None, msgspec.msgpack.encode([[], {"json": b"not json\x1e"}])),
    ("send-all", None, msgspec.msgpack.encode([[], {"json": b'{"type":3}\x1e'}])),
    ("send-all", None, msgspec.msgpack.encode([[], {"protobuf": b"x"}])),
    ("send-group", None, msgspec.msgpack.encode([[], {"json": GOOD_FRAME % b"nokey"}])),
    ("send-user", None, msgspec.msgpack.encode([[], {"json": GOOD_FRAME % b"nokey"}])),
    ("group-mgmt", "g", msgspec.msgpack.encode([1, "srv", 9, "g", "c"])),
    ("group-mgmt", "g", msgspec.msgpack.encode([1, "srv", 1])),
    ("ack", None, b"\xff\xff"),
]


def test_malformed_records_are_logged_and_skipped(new_fleet):
    server = new_fleet.server("A")
    client = new_fleet.client(server)
    producer = KafkaProducer(bootstrap_servers=new_fleet.broker.bootstrap)
    sent = []
    for base, key, value in BAD:
        meta = producer.send(new_fleet.topic(base), value=value,
                             key=key and key.encode()).get(10)
        sent.append((meta.topic, meta.partition, meta.offset))
    # Acks are read only when keyed by this server's name: make that one count.
    name = client.call("whoami")
    assert name["server"] == "A"
    word = unique("good")
    producer.send(new_fleet.topic("send-all"),
                  value=msgspec.msgpack.encode([[], {"json": GOOD_FRAME % word.encode()}]))
    producer.flush()
    producer.close()
    client.wait_for("Good", (word,))
    def logged(log, topic, partition, offset):
        pattern = rf"{re.escape(topic)} partition {partition} offset {offset}\b"
        return len(re.findall(pattern, log))

    # The log is read again each time: the lines may come after the good one.
    wait_until(lambda: all(logged(server.log(), *s) for s in sent if "-ack" not in s[0]), 5,
               what="every bad record logged")
    log = server.log()
    for topic, partition, offset in sent:
        if topic.endswith("-ack"):
            continue  # not keyed by this server: not ours to read
        assert logged(log, topic, partition, offset) == 1, (topic, partition, offset)
    assert "WARNING" in log
    assert server.ready()
