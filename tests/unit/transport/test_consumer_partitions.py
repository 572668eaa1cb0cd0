"""TopicConsumer reading a subset of partitions that grows and shrinks at
runtime (home partitions), against the fake KafkaConsumer of test_consumer."""
import gevent

from tests.unit.transport.test_consumer import FakeCluster, make, rec, tp, wait_until  # noqa: F401


def test_reads_only_the_partitions_the_filter_picks(make):  # noqa: F811
    cluster = FakeCluster(partitions=(0, 1, 2, 3), end={0: 4, 1: 9, 2: 1, 3: 7})
    asked = []

    def wanted(ids):
        asked.append(list(ids))
        return {1, 3, 99}  # 99 is no partition of the topic: ignored

    tc = make(cluster, lambda r: None, partitions=wanted)
    wait_until(tc.ready.is_set)
    assert asked == [[0, 1, 2, 3]]
    assert cluster.consumers[0].assigned == [tp(1), tp(3)]
    assert tc.positions == {tp(1): 9, tp(3): 7}


def test_refresh_adds_a_partition_at_its_log_end_and_drops_another(make):  # noqa: F811
    cluster = FakeCluster(partitions=(0, 1, 2), end={0: 4, 1: 9, 2: 1})
    chosen = {0}
    seen = []
    tc = make(cluster, lambda r: seen.append((r.partition, r.offset)),
              partitions=lambda ids: set(chosen))
    wait_until(tc.ready.is_set)
    assert tc.positions == {tp(0): 4}
    cluster.end[2] = 30  # records written meanwhile are not ours
    chosen.clear()
    chosen.add(2)
    done = tc.refresh()
    wait_until(done.is_set)
    first = cluster.consumers[0]
    assert first.assigned == [tp(2)]
    assert tc.positions == {tp(2): 30}
    assert first.seeks[-1] == (2, 30)
    cluster.script = [{tp(2): [rec(2, 30)]}]
    wait_until(lambda: seen == [(2, 30)])
    assert tc.positions == {tp(2): 31}
    assert len(cluster.consumers) == 1  # no new consumer for a refresh


def test_refresh_before_the_loop_runs_is_applied_once_it_does(make):  # noqa: F811
    cluster = FakeCluster(partitions=(0, 1), end={0: 2, 1: 3})
    chosen = {0}
    tc = make(cluster, lambda r: None, partitions=lambda ids: set(chosen))
    chosen.add(1)
    done = tc.refresh()
    wait_until(done.is_set)
    gevent.sleep(0.01)
    assert cluster.consumers[0].assigned == [tp(0), tp(1)]
    assert tc.positions == {tp(0): 2, tp(1): 3}
