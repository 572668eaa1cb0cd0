"""``flask-signalr-kafka doctor``: is the cluster set up safely for this
backplane?

It reads what the cluster says about itself (Metadata, DescribeConfigs,
DescribeCluster, ApiVersions) and judges it against what the backplane
needs. Reading is separate from judging: :func:`inspect` does the I/O,
:func:`assess` is a pure function of what was read, :func:`render` prints.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from ..transport.topics import (
    ACK,
    FLEET,
    GROUP_MGMT,
    SEND_ALL,
    SEND_CONN,
    SEND_GROUP,
    SEND_USER,
    SESSIONS,
    KafkaTopicConfig,
)

SEND_TOPICS = (SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER)

OK, NOTE, WARNING, ERROR = "ok", "note", "warning", "error"
EXIT_CODES = {OK: 0, NOTE: 0, WARNING: 1, ERROR: 2}
_RANK = {OK: 0, NOTE: 1, WARNING: 2, ERROR: 3}

_CONFIG_KEYS = ("retention.ms", "retention.bytes", "cleanup.policy", "min.insync.replicas")


@dataclass
class Broker:
    id: int
    host: str
    port: int
    rack: str | None = None
    #: the newest Kafka release whose API versions the broker matches
    #: (ApiVersions); ``None`` when it could not be asked.
    version: str | None = None


@dataclass
class TopicFacts:
    base: str
    name: str
    present: bool = False
    partitions: int = 0
    replication_factor: int = 0
    #: partition ids whose in-sync replicas are fewer than their replicas
    under_replicated: list[int] = field(default_factory=list)
    #: partition ids without a leader
    offline: list[int] = field(default_factory=list)
    #: the four configs of ``_CONFIG_KEYS`` the broker reported (values as
    #: Kafka gives them, strings); a key is absent when the broker did not say.
    configs: dict[str, str] = field(default_factory=dict)
    configs_error: str | None = None


@dataclass
class Finding:
    level: str
    check: str
    topic: str | None
    message: str


@dataclass
class Report:
    bootstrap_servers: str
    recovery_window: float
    cluster_id: str | None = None
    controller_id: int | None = None
    brokers: list[Broker] = field(default_factory=list)
    topics: list[TopicFacts] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``"ok"`` (notes at most), ``"warning"`` or ``"error"``."""
        worst = max((f.level for f in self.findings), key=_RANK.__getitem__, default=OK)
        return OK if worst == NOTE else worst

    @property
    def exit_code(self) -> int:
        """0 healthy (notes allowed), 1 warnings, 2 errors."""
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(status=self.status, exit_code=self.exit_code)
        return data


def diagnose(
    admin_config: dict[str, Any], topic_config: KafkaTopicConfig, recovery_window: float = 120.0
) -> Report:
    """Connect with ``admin_config``, read the cluster and judge it.

    :param admin_config: ``kafka.KafkaAdminClient`` keyword arguments (the
                         manager's ``admin_config``: same servers, same
                         security settings as the app).
    :param topic_config: the topics the app uses.
    :param recovery_window: seconds a client may be away and still be
                            recovered (``max_disconnection_duration``).
    """
    from kafka import KafkaAdminClient

    servers = admin_config.get("bootstrap_servers")
    servers = servers if isinstance(servers, str) else ",".join(servers or ())
    report = Report(bootstrap_servers=servers, recovery_window=recovery_window)
    try:
        admin = KafkaAdminClient(**admin_config)
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        report.findings.append(Finding(
            ERROR, "unreachable", None,
            f"could not reach Kafka at {servers}: {exc}. Check the servers, the security "
            "settings (KAFKA_URL, KAFKA_TRUSTED_CERT, ...) and that the brokers run.",
        ))
        return report
    try:
        inspect(admin, topic_config, report)
    finally:
        admin.close()
    report.findings.extend(assess(report))
    return report


def inspect(admin: Any, topic_config: KafkaTopicConfig, report: Report) -> None:
    """Fill ``report`` with the brokers and the facts of each topic.

    :param admin: a connected ``kafka.KafkaAdminClient``.
    """
    cluster = admin.describe_cluster()
    report.cluster_id = cluster.get("cluster_id")
    report.controller_id = cluster.get("controller_id")
    for b in sorted(cluster["brokers"], key=lambda b: b["broker_id"]):
        broker = Broker(b["broker_id"], b["host"], b["port"], b.get("rack"))
        try:
            broker.version = admin.get_broker_version_data(broker.id).broker_version_str
        except Exception:  # a broker that is down still belongs in the list
            broker.version = None
        report.brokers.append(broker)

    names = {**topic_config.names, SESSIONS: topic_config.name(SESSIONS),
             FLEET: topic_config.name(FLEET)}
    described = {t["name"]: t for t in admin.describe_topics(list(names.values()))}
    for base, name in names.items():
        facts = TopicFacts(base, name)
        meta = described.get(name)
        if meta and meta.get("error_code", 0) == 0 and meta["partitions"]:
            parts = meta["partitions"]
            facts.present = True
            facts.partitions = len(parts)
            facts.replication_factor = min(len(p["replica_nodes"]) for p in parts)
            facts.under_replicated = sorted(
                p["partition_index"] for p in parts if len(p["isr_nodes"]) < len(p["replica_nodes"])
            )
            facts.offline = sorted(p["partition_index"] for p in parts if p["leader_id"] < 0)
        report.topics.append(facts)

    present = [t for t in report.topics if t.present]
    if not present:
        return
    try:
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in present],
            config_filter="all",
        )["topic"]
    except Exception as exc:  # an old or partial broker: say so, go on
        for t in present:
            t.configs_error = f"{type(exc).__name__}: {exc}"
        return
    for t in present:
        entries = configs.get(t.name) or {}
        t.configs = {k: entries[k]["value"] for k in _CONFIG_KEYS
                     if k in entries and entries[k].get("value") is not None}


def assess(report: Report) -> list[Finding]:
    """What is wrong or risky in ``report`` for this backplane (a pure
    function of the facts, so every rule can be read in one place)."""
    findings: list[Finding] = []
    brokers = len(report.brokers)

    def add(level: str, check: str, topic: TopicFacts | None, message: str) -> None:
        findings.append(Finding(level, check, topic.name if topic else None, message))

    for t in report.topics:
        if not t.present:
            if t.base == SESSIONS:
                add(NOTE, "missing", t,
                    "missing; only connection state recovery uses it, and a dyno with "
                    "connection_state_recovery on creates it at startup")
            else:
                add(ERROR, "missing", t,
                    "missing: dynos that may create topics create it at startup; otherwise "
                    "run `flask-signalr-kafka create-topics` (release phase) or create it by hand")
            continue
        if t.base == FLEET and t.partitions < 2:
            add(WARNING, "partitions", t,
                "one partition: the fleet's answers share it with its requests, so every dyno "
                "reads every other dyno's answers; give it 2 partitions or more "
                "(docs/fleet.md)")
        if t.offline:
            add(ERROR, "offline", t,
                f"partitions {_ids(t.offline)} have no leader: records keyed to them can be "
                "neither produced nor read")
        if t.under_replicated:
            add(WARNING, "under-replicated", t,
                f"partitions {_ids(t.under_replicated)} have fewer in-sync replicas than "
                "replicas: a broker is down or behind")
        if t.replication_factor == 1 and brokers > 1:
            add(WARNING, "replication", t,
                f"replication factor 1 on a {brokers}-broker cluster: while one broker "
                "restarts (every rolling upgrade) its partitions have no leader, emits keyed "
                "to them fail and no dyno receives them. Use 3 (Kafka's "
                "kafka-reassign-partitions raises it without recreating the topic).")
        _check_configs(t, report.recovery_window, add)
    _check_partitions(report, add)
    return findings


def _check_configs(t: TopicFacts, window: float, add: Callable[..., None]) -> None:
    """min.insync.replicas, cleanup.policy and retention of one topic."""
    window_ms = window * 1000
    if t.configs_error:
        add(WARNING, "configs", t,
            f"the broker refused DescribeConfigs ({t.configs_error}): retention, cleanup "
            "policy and min.insync.replicas were not checked")
        return
    unreported = [k for k in _CONFIG_KEYS if k not in t.configs]
    if unreported:
        add(NOTE, "configs", t, f"the broker did not report {', '.join(unreported)}: not checked")

    min_isr = _int(t.configs.get("min.insync.replicas"))
    if min_isr is not None and min_isr > t.replication_factor:
        # Checked on Kafka 4.1: it caps the requirement at the replica count
        # and accepts acks=all; older brokers refused every such produce.
        add(WARNING, "min-isr", t,
            f"min.insync.replicas {min_isr} is above the replication factor "
            f"{t.replication_factor}: recent brokers cap it at the replica count (so the "
            "topic survives no replica down), older ones refuse every acks=all produce "
            "(the default) with NotEnoughReplicas; raise the replication factor")
    elif min_isr is not None and 1 < t.replication_factor == min_isr:
        add(WARNING, "min-isr", t,
            f"min.insync.replicas equals the replication factor ({min_isr}): one broker "
            "down stops every emit on the partitions it holds (acks=all); use "
            "replication factor min.insync.replicas + 1")

    policy = set((t.configs.get("cleanup.policy") or "").replace(" ", "").split(",")) - {""}
    if t.base == SESSIONS:
        if policy and "compact" not in policy:
            add(WARNING, "cleanup-policy", t,
                f"cleanup.policy is {','.join(sorted(policy))}, not compact: the latest "
                "session of each connection can be deleted by age while older ones pile up, "
                "and a dyno reading the sessions at startup reads all of them; set "
                "cleanup.policy=compact")
    elif "compact" in policy:
        if t.base == SEND_ALL:
            add(ERROR, "cleanup-policy", t,
                "cleanup.policy includes compact: a compacted topic refuses records without "
                "a key, and every broadcast is one; set cleanup.policy=delete")
        else:
            add(WARNING, "cleanup-policy", t,
                "cleanup.policy includes compact: compaction keeps only the newest record of "
                "each key, so older sends to the same room, user or connection vanish from "
                "the log before a recovering client replays them; set cleanup.policy=delete")

    retention = _int(t.configs.get("retention.ms"))
    deletes = t.base != SESSIONS or "delete" in policy
    replayed = t.base in SEND_TOPICS or t.base in (GROUP_MGMT, SESSIONS)
    if deletes and replayed and retention is not None and 0 <= retention < window_ms:
        what = ("sessions" if t.base == SESSIONS
                else "records" if t.base != GROUP_MGMT else "room changes")
        add(WARNING, "retention", t,
            f"retention.ms {retention} ({_duration(retention)}) is shorter than the recovery "
            f"window ({window:g} s): {what} a client missed can be deleted before it "
            "reconnects, and its recovery fails; a dyno that falls that far behind also "
            "loses records (use at least the window, e.g. retention.ms="
            f"{int(max(window_ms, 3_600_000))})")
    if (t.base in SEND_TOPICS and _int(t.configs.get("retention.bytes")) not in (None, -1)):
        add(NOTE, "retention", t,
            f"retention.bytes {t.configs['retention.bytes']} per partition: on a busy fleet "
            "size-based retention can delete records younger than the recovery window; "
            "size it for the peak bytes/s of a partition times the window")
    if t.base == ACK and retention is not None and 0 <= retention < 60_000:
        add(WARNING, "retention", t,
            f"retention.ms {retention} is under a minute: an ack a dyno reads late (a GC "
            "pause, a broker failover) can be gone, and the remote join times out")


def _check_partitions(report: Report, add: Callable[..., None]) -> None:
    """Partition counts. Each record is routed by its own topic's count and
    every dyno reads every partition it needs, so counts that differ between
    topics break nothing; say so rather than warn. What a count does decide:
    how many dynos can have send-conn and ack partitions of their own (home
    partitions), and how far one topic's produce load spreads over brokers."""
    present = [t for t in report.topics if t.present]
    counts = {t.base: t.partitions for t in present}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{base} {n}" for base, n in counts.items())
        add(NOTE, "partitions", None,
            f"partition counts differ ({listing}). That is safe: each record is routed by "
            "its own topic's count, ordering is kept per key within one topic (never across "
            "topics), and every dyno reads every partition it needs. What a count decides is "
            "per topic: send-conn and ack bound how many dynos get partitions of their own, "
            "send-all/send-group/send-user how widely produces spread over brokers.")
    brokers = len(report.brokers)
    for t in present:
        if brokers > 1 and t.partitions < brokers and t.base in SEND_TOPICS:
            add(NOTE, "partitions", t,
                f"{t.partitions} partition(s) on {brokers} brokers: its produce load "
                "lands on fewer brokers than the cluster has")


def render(report: Report) -> str:
    """The report as plain text for a terminal (no colours, no cursor
    movement: it reads the same in a log)."""
    lines = [f"cluster {report.cluster_id or '?'} at {report.bootstrap_servers}"
             + (f" (controller {report.controller_id})" if report.controller_id is not None
                else "")]
    for b in report.brokers:
        version = f"Kafka {b.version} protocol" if b.version else "version unknown"
        rack = f"  rack {b.rack}" if b.rack else ""
        lines.append(f"  broker {b.id:<4} {b.host}:{b.port:<6} {version}{rack}")
    if report.topics:
        lines.append("")
        header = ("topic", "partitions", "RF", "min.isr", "retention", "cleanup")
        rows = [header] + [
            (t.name, str(t.partitions), str(t.replication_factor),
             t.configs.get("min.insync.replicas", "?"),
             _duration(_int(t.configs.get("retention.ms"))), t.configs.get("cleanup.policy", "?"))
            if t.present else (t.name, "MISSING", "", "", "", "")
            for t in report.topics
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  " + "  ".join(
                cell.ljust(w) if i in (0, 5) else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip())
    lines.append("")
    # The same finding on several topics is one line naming them all.
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for f in sorted(report.findings, key=lambda f: -_RANK[f.level]):
        grouped.setdefault((f.level, f.check, f.message), []).append(f.topic or "")
    for (level, check, message), topics in grouped.items():
        where = ", ".join(t for t in topics if t)
        lines.append(f"{level.upper():7} [{check}] {where + ': ' if where else ''}{message}")
    counts = {level: sum(f.level == level for f in report.findings)
              for level in (ERROR, WARNING, NOTE)}
    lines.append(f"{report.status.upper()}: {counts[ERROR]} error(s), {counts[WARNING]} "
                 f"warning(s), {counts[NOTE]} note(s); recovery window {report.recovery_window:g} s"
                 f" (exit {report.exit_code})")
    return "\n".join(lines)


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True)


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _duration(ms: int | None) -> str:
    if ms is None:
        return "?"
    if ms < 0:
        return "forever"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms / 1000:g}s"


def _ids(ids: list[int]) -> str:
    return ",".join(map(str, ids[:10])) + (f" (+{len(ids) - 10})" if len(ids) > 10 else "")
