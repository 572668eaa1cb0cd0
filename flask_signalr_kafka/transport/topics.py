"""Topic naming and creation for the six backplane topics and ours."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from kafka.errors import for_code

from ..errors import TopicCreationError

logger = logging.getLogger(__name__)

ACK = "ack"
GROUP_MGMT = "group-mgmt"
SEND_ALL = "send-all"
SEND_CONN = "send-conn"
SEND_GROUP = "send-group"
SEND_USER = "send-user"
BASE_NAMES = (ACK, GROUP_MGMT, SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER)
#: Ours alone (never read by .NET): connection state recovery's sessions.
SESSIONS = "sessions"
#: Ours alone: the fleet's requests, heartbeats and answers (docs/fleet.md).
FLEET = "fleet"

#: The sessions topic keeps the latest record per key; small segments let
#: the cleaner run often, so a starting dyno reads little.
SESSIONS_CONFIGS = {
    "cleanup.policy": "compact",
    "segment.ms": "600000",
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": "600000",
}

#: The fleet topic's records matter for seconds: an hour of them is plenty,
#: in segments small enough for the retention to delete them.
FLEET_CONFIGS = {"retention.ms": "3600000", "segment.ms": "600000"}

_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicSpec:
    """How a topic is created when it is missing (an existing topic is used
    as it is).

    :param num_partitions: partitions of the new topic.
    :param replication_factor: replicas of each partition; ``None`` (default):
        the cluster's ``default.replication.factor`` (KIP-464, Kafka 2.4+), so
        a managed cluster that demands 3 gets 3 and a three-broker cluster's
        topics get replicas. ``1`` is the .NET backplane's default.
    :param configs: topic configs, e.g. ``{"retention.ms": "3600000"}``.
    """

    num_partitions: int = 10
    replication_factor: int | None = None
    configs: dict[str, str] | None = None

    def __post_init__(self) -> None:
        for name in ("num_partitions", "replication_factor"):
            value = getattr(self, name)
            if value is None and name == "replication_factor":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TopicSpec.{name} must be a positive int, not {value!r}")


@dataclass(frozen=True)
class KafkaTopicConfig:
    """The six topic names (``<prefix>-<base>``, or the bare base name when
    the prefix is blank) and the spec each is created with.

    :param prefix: prepended verbatim, with a hyphen, to every topic name.
    :param ack, group_mgmt, send_all, send_conn, send_group, send_user: the
        :class:`TopicSpec` of each topic; ``None`` for the default spec.
    :param sessions: the :class:`TopicSpec` of ``<prefix>-sessions``, used
        only with connection state recovery; ``None`` for the default spec.
        Its configs are laid over a compacted topic's (``SESSIONS_CONFIGS``).
    :param fleet: the :class:`TopicSpec` of ``<prefix>-fleet`` (fleet
        queries, heartbeats and answers; at least 2 partitions, see
        docs/fleet.md); ``None`` for the default spec. Its configs are laid
        over ``FLEET_CONFIGS``.
    :param tenant_prefix: prepended verbatim, without a hyphen, to the whole
        name: a multi-tenant cluster's prefix (Heroku's ``KAFKA_PREFIX``).
    """

    prefix: str = ""
    ack: TopicSpec | None = None
    group_mgmt: TopicSpec | None = None
    send_all: TopicSpec | None = None
    send_conn: TopicSpec | None = None
    send_group: TopicSpec | None = None
    send_user: TopicSpec | None = None
    sessions: TopicSpec | None = None
    tenant_prefix: str = ""
    fleet: TopicSpec | None = None
    names: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("prefix", "tenant_prefix"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"KafkaTopicConfig {name} must be a str, not {value!r}")
        for base in (*BASE_NAMES, SESSIONS, FLEET):
            field_name = base.replace("-", "_")
            spec = getattr(self, field_name)
            if spec is not None and not isinstance(spec, TopicSpec):
                raise TypeError(f"KafkaTopicConfig {field_name} must be a TopicSpec, not {spec!r}")
        prefix = self.prefix.strip() and self.prefix
        tenant = self.tenant_prefix
        object.__setattr__(
            self,
            "names",
            {base: f"{tenant}{prefix}-{base}" if prefix else tenant + base for base in BASE_NAMES},
        )

    def name(self, base: str) -> str:
        """The topic name of a base name such as ``"send-all"`` (or ``"sessions"``)."""
        if base in (SESSIONS, FLEET):
            prefix = self.prefix.strip() and self.prefix
            return f"{self.tenant_prefix}{prefix}-{base}" if prefix else (
                self.tenant_prefix + base
            )
        return self.names[base]

    def spec(self, base: str) -> TopicSpec:
        spec = getattr(self, base.replace("-", "_")) or TopicSpec()
        if base == SESSIONS:
            spec = TopicSpec(spec.num_partitions, spec.replication_factor,
                             {**SESSIONS_CONFIGS, **(spec.configs or {})})
        elif base == FLEET:
            spec = TopicSpec(spec.num_partitions, spec.replication_factor,
                             {**FLEET_CONFIGS, **(spec.configs or {})})
        return spec


def ensure_topics(
    admin: Any, topic_config: KafkaTopicConfig, servers: str, sessions: bool = False
) -> list[str]:
    """Create the backplane topics that do not exist yet; return their names.
    With a tenant prefix (Heroku's ``KAFKA_PREFIX``: multi-tenant plans
    refuse CreateTopics from clients) nothing is created: the missing topics
    are logged in one line with the commands that create them.

    :param admin: a connected ``kafka.KafkaAdminClient``.
    :param servers: the bootstrap servers, for error messages.
    :param sessions: also the sessions topic (connection state recovery).
    :raises TopicCreationError: a topic is missing and the cluster refused it.
    """
    if topic_config.tenant_prefix:
        _report_missing(topic_config, missing_topics(admin, topic_config, sessions))
        return []
    existing = set(admin.list_topics())
    wanted = _wanted(topic_config, sessions)
    missing = {name: base for base, name in wanted.items() if name not in existing}
    if not missing:
        return []
    request = {}
    for name, base in missing.items():
        spec = topic_config.spec(base)
        request[name] = {
            "num_partitions": spec.num_partitions,
            # -1: the cluster's default.replication.factor (CreateTopics v4+).
            "replication_factor": (-1 if spec.replication_factor is None
                                   else spec.replication_factor),
            "configs": dict(spec.configs or {}),
        }
    try:
        result = admin.create_topics(request, raise_errors=False)
    except Exception as exc:
        raise TopicCreationError(
            f"could not create topics {sorted(missing)} on {servers}: {exc}"
        ) from exc
    created = []
    for topic in result.get("topics", []):
        code = topic.get("error_code", 0)
        if code == 0:
            created.append(topic["name"])
        elif code != _TOPIC_ALREADY_EXISTS:
            error = for_code(code)
            detail = topic.get("error_message") or error.__name__
            raise TopicCreationError(
                f"could not create topic {topic['name']!r} on {servers}: {detail}. "
                "Create it by hand or grant this client CREATE on the cluster."
            )
    if created:
        logger.info("created topics %s", ", ".join(sorted(created)))
        _await_leaders(admin, created)
    return created


def broker_session_timeout_ms(admin: Any) -> int | None:
    """The cluster's ``broker.session.timeout.ms`` (how long the controller
    waits before it fences a silent broker and moves its leaderships), read
    with DescribeConfigs from one broker; ``None`` when the cluster does not
    say (DescribeConfigs not allowed, an old broker, a managed service).

    :param admin: a connected ``kafka.KafkaAdminClient``.
    """
    from kafka.admin import ConfigResource, ConfigResourceType

    try:
        brokers = admin.describe_cluster()["brokers"]
        node = str(brokers[0]["broker_id"])
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, node)], config_filter="all")
        entry = (described.get("broker") or {}).get(node, {}).get("broker.session.timeout.ms")
        return int(entry["value"]) if entry and entry.get("value") is not None else None
    except Exception as exc:  # an ACL, a cluster that does not say: the caller's fallback
        logger.info("could not read broker.session.timeout.ms (%s)", exc)
        return None


def _await_leaders(admin: Any, names: list[str], timeout: float = 10.0) -> None:
    """Wait until every partition of new topics has a leader: before that,
    writes fail and are retried, and a server that says it is ready would
    deliver its first records seconds late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            described = admin.describe_topics(names)
        except Exception:  # the topics may not be in the metadata yet
            described = []
        if len(described) == len(names) and all(
            t.get("error_code", 0) == 0 and t.get("partitions")
            and all(p.get("leader_id", p.get("leader", -1)) >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        time.sleep(0.05)
    logger.warning("topics %s have partitions without a leader after %g s", names, timeout)


def _wanted(topic_config: KafkaTopicConfig, sessions: bool) -> dict[str, str]:
    wanted = {**topic_config.names, FLEET: topic_config.name(FLEET)}
    if sessions:
        wanted[SESSIONS] = topic_config.name(SESSIONS)
    return wanted


def missing_topics(admin: Any, topic_config: KafkaTopicConfig, sessions: bool = False) -> list[str]:
    """The base names of the backplane topics the cluster does not list;
    all of them when it cannot list topics.

    :param admin: a connected ``kafka.KafkaAdminClient``.
    :param sessions: also the sessions topic (connection state recovery).
    """
    wanted = _wanted(topic_config, sessions)
    try:
        existing = set(admin.list_topics())
    except Exception as exc:  # a tenant may not be allowed to list
        logger.debug("could not list topics: %s", exc)
        existing = set()
    return [base for base, name in wanted.items() if name not in existing]


def heroku_commands(topic_config: KafkaTopicConfig, bases: list[str]) -> list[str]:
    """``heroku kafka:topics:create`` commands for the topics of ``bases``,
    with each topic's spec (partitions; replication factor when set;
    compaction for the sessions topic).

    :param bases: base names such as ``"send-all"``.
    """
    commands = []
    for base in bases:
        spec = topic_config.spec(base)
        command = (f"heroku kafka:topics:create {topic_config.name(base)} "
                   f"--partitions {spec.num_partitions}")
        if spec.replication_factor is not None:
            command += f" --replication-factor {spec.replication_factor}"
        if (spec.configs or {}).get("cleanup.policy") == "compact":
            command += " --compaction"
        commands.append(command)
    return commands


#: The missing sets already logged at WARNING: a consumer waiting for its
#: topic asks again every second.
_reported: set[frozenset[str]] = set()


def _report_missing(topic_config: KafkaTopicConfig, bases: list[str]) -> None:
    if not bases:
        return
    names = frozenset(map(topic_config.name, bases))
    level = logging.DEBUG if names in _reported else logging.WARNING
    _reported.add(names)
    logger.log(level, "KAFKA_PREFIX is set, so no topic is created (multi-tenant plans refuse "
               "it): create %s with: %s", ", ".join(sorted(names)),
               "; ".join(heroku_commands(topic_config, bases)))
