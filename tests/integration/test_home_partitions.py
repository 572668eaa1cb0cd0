"""Home partitions on real servers: a dyno reads only the send-conn and ack
partitions its ids hash to, sends to one connection still reach it from
Python and from a (CRC-32 partitioning) .NET producer, and the escape hatch
reads every partition."""
import zlib

import pytest
import requests
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2
from test_interop import dotnet_invocation, json_frame

from testkit.harness import unique

# The combinations besides the default one that run this module (make test).
pytestmark = [pytest.mark.tansu, pytest.mark.confluent]

PARTITIONS = 10  # TopicSpec's default, which the server app keeps


def read(server):
    return requests.get(server.url + "/partitions", timeout=5).json()["read"]


def murmur2_of(key):
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def crc32_of(key):
    return zlib.crc32(key.encode()) % PARTITIONS


def test_a_dyno_reads_its_home_partitions_and_every_partition_elsewhere(fleet, connect):
    for server in (fleet.a, fleet.b):
        parts = read(server)
        assert len(parts["send-conn"]) == 1, parts
        assert len(parts["ack"]) == 1, parts
        full = list(range(PARTITIONS))
        for base in ("send-all", "send-group", "send-user", "group-mgmt"):
            assert parts[base] == full, (base, parts)
        client = connect(server)
        home = parts["send-conn"]
        assert [murmur2_of(client.sid)] == home and [crc32_of(client.sid)] == home
        name = requests.get(server.url + "/partitions", timeout=5).json()["server_name"]
        assert [murmur2_of(name)] == parts["ack"] == [crc32_of(name)]


def test_remote_sends_to_one_connection_reach_it(fleet, connect):
    a, b = connect(fleet.a), connect(fleet.b)
    word = unique("one")
    a.call("emit", {"event": "E", "data": word, "to": b.sid})
    b.call("emit", {"event": "E", "data": word, "to": a.sid})
    b.wait_for("E", (word,))
    a.wait_for("E", (word,))


def test_dotnet_record_on_the_crc32_partition_reaches_the_connection(fleet, connect):
    """A .NET producer (librdkafka's CRC-32 partitioner) puts a record keyed
    by the sid on crc32(sid) % n: the dyno holding it reads that partition."""
    target = connect(fleet.b)
    word = unique("crc")
    producer = KafkaProducer(bootstrap_servers=fleet.broker.bootstrap)
    try:
        producer.send(fleet.topic("send-conn"), key=target.sid.encode(),
                      value=dotnet_invocation({"json": json_frame("ToConn", word)}),
                      partition=crc32_of(target.sid)).get(10)
    finally:
        producer.close()
    target.wait_for("ToConn", (word,))


def test_escape_hatch_reads_every_partition(new_fleet):
    a = new_fleet.server("A", HOME_PARTITIONS=0)
    b = new_fleet.server("B")
    full = list(range(PARTITIONS))
    parts = read(a)
    assert parts["send-conn"] == full and parts["ack"] == full
    assert len(read(b)["send-conn"]) == 1
    target = new_fleet.client(a)
    other = new_fleet.client(b)
    # Its sids are python-socketio's own random ids: any partition.
    word = unique("all")
    producer = KafkaProducer(bootstrap_servers=new_fleet.broker.bootstrap)
    try:
        for partition in (0, PARTITIONS - 1):  # wherever another partitioner puts it
            producer.send(new_fleet.topic("send-conn"), key=target.sid.encode(),
                          value=dotnet_invocation({"json": json_frame("P", word, partition)}),
                          partition=partition).get(10)
    finally:
        producer.close()
    target.wait_for("P", (word, 0))
    target.wait_for("P", (word, PARTITIONS - 1))
    other.call("emit", {"event": "E", "data": word, "to": target.sid})
    target.wait_for("E", (word,))
