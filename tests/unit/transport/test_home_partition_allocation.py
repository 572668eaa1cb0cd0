"""Home partitions: ids that land home under murmur2 and CRC-32, the home
set a server name picks, claims, and what choosing an id costs."""
import random
import re
import time
import zlib

import pytest
from kafka.partitioner.default import murmur2

from flask_signalr_kafka.transport.home_partitions import (
    HomePartitions,
    draw_server_name,
    draw_sid,
    home_count,
    home_set,
    partitions_of,
)
from flask_signalr_kafka.wire.addressing import looks_like_sid


def java(key, n):
    return (murmur2(key.encode()) & 0x7FFFFFFF) % n


def librdkafka(key, n):
    return zlib.crc32(key.encode()) % n


@pytest.mark.parametrize("n", [1, 3, 10, 30, 100])
def test_sids_land_home_under_both_partitioners_and_keep_their_shape(n):
    home = home_set(random.getrandbits(64), n)
    for _ in range(200):
        sid, _ = draw_sid(n, home)
        assert looks_like_sid(sid), sid
        assert java(sid, n) in home and librdkafka(sid, n) in home


def test_sids_are_random():
    home = frozenset({3})
    sids = {draw_sid(10, home)[0] for _ in range(500)}
    assert len(sids) == 500


@pytest.mark.parametrize("n", [10, 30, 100])
def test_the_default_home_set_bounds_the_draws(n):
    home = home_set(7, n)
    assert len(home) == home_count(n) == -(-n // 10)
    draws = [draw_sid(n, home)[1] for _ in range(2000)]
    # (n/h)**2 is about 100 draws here; the mean of 2000 stays well within 2x.
    assert sum(draws) / len(draws) < 200


def test_choosing_an_id_takes_well_under_a_millisecond():
    home = home_set(1, 100)
    start = time.perf_counter()
    for _ in range(1000):
        draw_sid(100, home)
    per_id = (time.perf_counter() - start) / 1000
    assert per_id < 1e-3, f"{per_id * 1e6:.0f} µs per id"


def test_home_sets_are_spaced_and_slots_do_not_overlap():
    assert home_set(0, 10) == {0}
    assert home_set(13, 10) == {3}
    assert home_set(4, 30) == {4, 14, 24}
    assert home_set(5, 100, count=4) == {5, 30, 55, 80}
    # Different slots share nothing; the same slot shares everything.
    assert not home_set(1, 30) & home_set(2, 30)
    assert home_set(1, 30) == home_set(11, 30)


def test_server_name_shape_and_its_ack_partition_under_both():
    for n in (1, 10, 30):
        name = draw_server_name("web.1", n)
        assert re.fullmatch(r"web\.1_[0-9a-f]{32}", name), name
        assert java(name, n) == librdkafka(name, n)
        assert partitions_of(name, n) == {java(name, n)}


def test_claims_add_partitions_and_release_drops_them():
    name = draw_server_name("h", 10)
    home = HomePartitions(name, 10)
    assert home.conn_wanted(range(10)) == set(home.home)
    foreign = next(s for s in (draw_sid(10, frozenset({p}))[0] for p in range(10))
                   if not partitions_of(s, 10) <= home.home)
    extra = home.claim(foreign)
    assert extra and extra == partitions_of(foreign, 10) - home.home
    assert home.conn_wanted(range(10)) == set(home.home) | extra
    own = home.allocate_sid()
    assert home.claim(own) == frozenset()  # it hashes home: nothing to add
    assert home.release(foreign)
    assert home.conn_wanted(range(10)) == set(home.home)
    assert home.ack_wanted(range(10)) == set(partitions_of(name, 10))


def test_a_partition_count_change_keeps_local_connections_read():
    name = draw_server_name("h", 10)
    local = []
    home = HomePartitions(name, 10, local_sids=lambda: local)
    local.extend(home.allocate_sid() for _ in range(20))
    wanted = home.conn_wanted(range(12))  # the topic grew to 12 partitions
    assert home.n == 12
    for sid in local:
        assert partitions_of(sid, 12) <= wanted
    assert java(home.allocate_sid(), 12) in home.home


def test_draw_sid_refuses_a_home_outside_the_topic():
    with pytest.raises(ValueError):
        draw_sid(10, frozenset({10}))


def test_the_escape_hatch_argument():
    from flask_signalr_kafka import KafkaManager

    assert KafkaManager("127.0.0.1:1").core.home_partitions is True
    assert KafkaManager("127.0.0.1:1", home_partitions=False).core.home_partitions is False
    assert KafkaManager("127.0.0.1:1", home_partitions=3).core.home_partitions == 3
    for bad in (0, -1, "yes", 1.5):
        with pytest.raises(ValueError):
            KafkaManager("127.0.0.1:1", home_partitions=bad)
