"""``flask-signalr-kafka top``: records per second on each backplane topic,
across the whole cluster, refreshed like ``top``.

The figures come from the log ends (ListOffsets "latest" for every
partition), so they count what every producer wrote, .NET peers included,
and need no consumer group and no read of the records: the first thing to
look at when "nothing arrives" (is anything written at all, and where?).
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from kafka import TopicPartition
from kafka.admin import OffsetSpec

from ..transport.topics import FLEET, KafkaTopicConfig

# How often the partition list is read again (topics created, partitions added).
_METADATA_EVERY = 30.0


@dataclass
class TopicRate:
    """One topic over one interval.

    :param records_per_s: records appended per second, all partitions.
    :param log_end: the sum of the partitions' log ends (records ever written
                    and still counted by the broker).
    :param hottest: ``(partition, records_per_s)`` of the busiest partition.
    """

    name: str
    partitions: int
    records_per_s: float
    log_end: int
    hottest: tuple[int, float] | None


class LogEnds:
    """Reads the log end of every partition of some topics.

    :param admin: a connected ``kafka.KafkaAdminClient``.
    :param topics: the topic names.
    """

    def __init__(self, admin: Any, topics: list[str]) -> None:
        self.admin = admin
        self.topics = topics
        self.partitions: dict[str, list[TopicPartition]] = {}
        self._listed_at = -_METADATA_EVERY

    def sample(self) -> tuple[float, dict[TopicPartition, int]]:
        """``(monotonic time, {partition: log end})`` now."""
        if time.monotonic() - self._listed_at >= _METADATA_EVERY:
            self._list_partitions()
        specs = {tp: OffsetSpec.LATEST for tps in self.partitions.values() for tp in tps}
        ends = self.admin.list_partition_offsets(specs) if specs else {}
        return time.monotonic(), {tp: o.offset for tp, o in ends.items()}

    def _list_partitions(self) -> None:
        self.partitions = {
            t["name"]: [TopicPartition(t["name"], p["partition_index"]) for p in t["partitions"]]
            for t in self.admin.describe_topics(self.topics)
            if t.get("error_code", 0) == 0 and t["partitions"]
        }
        self._listed_at = time.monotonic()


def rates(
    topics: list[str],
    before: tuple[float, dict[TopicPartition, int]],
    after: tuple[float, dict[TopicPartition, int]],
) -> list[TopicRate]:
    """Records per second of each topic between two samples. A log end that
    went back (a recreated topic, a broker that lost its data) counts as 0."""
    elapsed = max(after[0] - before[0], 1e-9)
    result = []
    for name in topics:
        per_partition = {
            tp.partition: max(0, end - before[1].get(tp, end)) / elapsed
            for tp, end in after[1].items() if tp.topic == name
        }
        log_end = sum(end for tp, end in after[1].items() if tp.topic == name)
        hottest = max(per_partition.items(), key=lambda kv: kv[1], default=None)
        result.append(TopicRate(name, len(per_partition), sum(per_partition.values()),
                                log_end, hottest))
    return result


def frames(ends: LogEnds, interval: float) -> Iterator[list[TopicRate]]:
    """Endless: the rates of each interval, one list per interval."""
    previous = ends.sample()
    while True:
        time.sleep(max(0.0, interval - (time.monotonic() - previous[0])))
        current = ends.sample()
        yield rates(ends.topics, previous, current)
        previous = current


def render(rows: list[TopicRate], servers: str, interval: float) -> str:
    """One screen: a header line, then one line a topic."""
    total = sum(r.records_per_s for r in rows)
    lines = [
        f"{time.strftime('%H:%M:%S')}  {servers}  {total:,.1f} records/s in all "
        f"(log ends, every {interval:g} s)",
        f"{'TOPIC':<32} {'PARTS':>5} {'REC/S':>10} {'LOG END':>12}  HOTTEST",
    ]
    for r in rows:
        if not r.partitions:
            lines.append(f"{r.name:<32} {'-':>5} {'-':>10} {'-':>12}  (missing)")
            continue
        hot = f"p{r.hottest[0]} {r.hottest[1]:,.1f}/s" if r.hottest and r.hottest[1] else "-"
        lines.append(f"{r.name:<32} {r.partitions:>5} {r.records_per_s:>10,.1f} "
                     f"{r.log_end:>12,}  {hot}")
    return "\n".join(lines)


def run(
    admin_config: dict[str, Any],
    topic_config: KafkaTopicConfig,
    interval: float = 1.0,
    iterations: int | None = None,
    out: TextIO | None = None,
) -> int:
    """Print a screen every ``interval`` seconds, ``iterations`` times (for
    ever when ``None``). On a terminal that understands it the screen is
    cleared first, as ``top`` does; elsewhere (``TERM=dumb``, a pipe, a log)
    the screens follow one another, separated by a blank line.

    :param admin_config: ``kafka.KafkaAdminClient`` keyword arguments.
    :param topic_config: the topics to watch.
    """
    from kafka import KafkaAdminClient

    out = out or sys.stdout
    clear = out.isatty() and os.environ.get("TERM", "dumb") not in ("", "dumb")
    servers = admin_config.get("bootstrap_servers")
    servers = servers if isinstance(servers, str) else ",".join(servers or ())
    admin = KafkaAdminClient(**admin_config)
    try:
        ends = LogEnds(admin, [*topic_config.names.values(), topic_config.name(FLEET)])
        for count, rows in enumerate(frames(ends, interval), 1):
            screen = render(rows, servers, interval)
            out.write(("\033[H\033[2J" if clear else "\n" if count > 1 else "") + screen + "\n")
            out.flush()
            if iterations is not None and count >= iterations:
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        admin.close()
    return 0
