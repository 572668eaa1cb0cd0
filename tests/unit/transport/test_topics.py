"""Topic naming, specs, and creation against a fake admin client."""

import dataclasses

import pytest

from flask_signalr_kafka import KafkaTopicConfig, TopicCreationError, TopicSpec
from flask_signalr_kafka.transport import topics

BASES = ["ack", "group-mgmt", "send-all", "send-conn", "send-group", "send-user"]


# -- naming -------------------------------------------------------------------


def test_base_names():
    assert list(topics.BASE_NAMES) == BASES


def test_names_with_prefix():
    config = KafkaTopicConfig(prefix="chat")
    assert config.names == {base: f"chat-{base}" for base in BASES}
    assert config.name("send-all") == "chat-send-all"
    assert config.name("group-mgmt") == "chat-group-mgmt"


@pytest.mark.parametrize("prefix", ["", " ", "\t  "])
def test_blank_prefix_gives_bare_names(prefix):
    config = KafkaTopicConfig(prefix=prefix)
    assert config.names == {base: base for base in BASES}


def test_default_config_gives_bare_names():
    assert KafkaTopicConfig().name("ack") == "ack"


@pytest.mark.parametrize("prefix", ["Chat.Prod", "a-b", " x ", "app_1"])
def test_prefix_is_used_verbatim(prefix):
    assert KafkaTopicConfig(prefix=prefix).name("send-user") == f"{prefix}-send-user"


def test_unknown_base_name():
    with pytest.raises(KeyError):
        KafkaTopicConfig().name("send-nobody")


# -- TopicSpec ----------------------------------------------------------------


def test_topic_spec_defaults():
    spec = TopicSpec()
    assert (spec.num_partitions, spec.replication_factor, spec.configs) == (10, None, None)


def test_spec_per_topic_and_default():
    custom = TopicSpec(num_partitions=3, replication_factor=2, configs={"retention.ms": "1000"})
    config = KafkaTopicConfig(prefix="p", send_group=custom)
    assert config.spec("send-group") is custom
    assert config.spec("ack") == TopicSpec()


@pytest.mark.parametrize("field", ["num_partitions", "replication_factor"])
@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", None, True])
def test_topic_spec_validation(field, bad):
    if field == "replication_factor" and bad is None:
        return  # the cluster's default
    with pytest.raises(ValueError, match=field):
        TopicSpec(**{field: bad})


def test_topic_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TopicSpec().num_partitions = 3


# -- KafkaTopicConfig type errors ----------------------------------------------


@pytest.mark.parametrize("bad", [None, 5, b"chat", ["chat"]])
def test_prefix_must_be_str(bad):
    with pytest.raises(TypeError, match="prefix"):
        KafkaTopicConfig(prefix=bad)


@pytest.mark.parametrize(
    "field", ["ack", "group_mgmt", "send_all", "send_conn", "send_group", "send_user"]
)
@pytest.mark.parametrize("bad", [{"num_partitions": 3}, 3, "spec", (10, 1)])
def test_spec_fields_must_be_topic_specs(field, bad):
    with pytest.raises(TypeError, match=field):
        KafkaTopicConfig(**{field: bad})


# -- ensure_topics ----------------------------------------------------------------


class FakeAdmin:
    def __init__(self, existing=(), codes=None, create_raises=None):
        self.existing = list(existing)
        self.codes = codes or {}
        self.create_raises = create_raises
        self.create_calls = []

    def list_topics(self):
        return list(self.existing)

    def describe_topics(self, names):
        """Created topics have a leader for each partition at once here."""
        return [{"name": n, "error_code": 0, "partitions": [{"partition": 0, "leader_id": 1}]}
                for n in names]

    def create_topics(self, new_topics, raise_errors=True, **kwargs):
        self.create_calls.append((new_topics, raise_errors, kwargs))
        if self.create_raises is not None:
            raise self.create_raises
        result = []
        for name in new_topics:
            code = self.codes.get(name, 0)
            entry = {"name": name, "error_code": code}
            if code:
                entry["error_message"] = None
            else:
                self.existing.append(name)
            result.append(entry)
        return {"throttle_time_ms": 0, "topics": result}


SERVERS = "broker-a:9092,broker-b:9092"


def test_creates_all_missing_topics_with_default_specs():
    admin = FakeAdmin(existing=["unrelated"])
    config = KafkaTopicConfig(prefix="chat")
    created = topics.ensure_topics(admin, config, SERVERS)
    assert sorted(created) == sorted(f"chat-{b}" for b in [*BASES, "fleet"])
    assert len(admin.create_calls) == 1
    request, raise_errors, _ = admin.create_calls[0]
    assert raise_errors is False
    assert request == {
        **{f"chat-{b}": {"num_partitions": 10, "replication_factor": -1, "configs": {}}
           for b in BASES},
        "chat-fleet": {"num_partitions": 10, "replication_factor": -1,
                       "configs": topics.FLEET_CONFIGS},
    }


def test_creates_only_missing_topics_with_each_spec():
    config = KafkaTopicConfig(
        prefix="app",
        send_all=TopicSpec(
            num_partitions=3, replication_factor=2, configs={"retention.ms": "60000"}
        ),
        send_user=TopicSpec(num_partitions=1),
        ack=TopicSpec(num_partitions=7),  # exists already: not created
    )
    admin = FakeAdmin(existing=["app-ack", "app-group-mgmt", "app-send-conn", "ack",
                                "app-fleet"])
    created = topics.ensure_topics(admin, config, SERVERS)
    assert sorted(created) == ["app-send-all", "app-send-group", "app-send-user"]
    request, _, _ = admin.create_calls[0]
    assert request == {
        "app-send-all": {
            "num_partitions": 3,
            "replication_factor": 2,
            "configs": {"retention.ms": "60000"},
        },
        "app-send-group": {"num_partitions": 10, "replication_factor": -1, "configs": {}},
        "app-send-user": {"num_partitions": 1, "replication_factor": -1, "configs": {}},
    }


def test_nothing_missing_creates_nothing():
    admin = FakeAdmin(existing=[f"p-{b}" for b in [*BASES, "fleet"]])
    assert topics.ensure_topics(admin, KafkaTopicConfig(prefix="p"), SERVERS) == []
    assert admin.create_calls == []


def test_topic_already_exists_is_fine():
    # Another server created it between our list and our create.
    admin = FakeAdmin(codes={"send-all": 36, "ack": 36})
    created = topics.ensure_topics(admin, KafkaTopicConfig(), SERVERS)
    assert sorted(created) == ["fleet", "group-mgmt", "send-conn", "send-group", "send-user"]


def test_other_error_code_raises_naming_topic_and_servers():
    admin = FakeAdmin(codes={"x-send-conn": 38})
    with pytest.raises(TopicCreationError) as info:
        topics.ensure_topics(admin, KafkaTopicConfig(prefix="x"), SERVERS)
    message = str(info.value)
    assert "x-send-conn" in message
    assert SERVERS in message
    assert "InvalidReplicationFactor" in message


def test_error_message_from_the_broker_is_used():
    class Admin(FakeAdmin):
        def create_topics(self, new_topics, raise_errors=True, **kwargs):
            return {
                "topics": [
                    {"name": "ack", "error_code": 29, "error_message": "Authorization failed."}
                ]
            }

    with pytest.raises(TopicCreationError, match="Authorization failed") as info:
        topics.ensure_topics(Admin(existing=[*BASES[1:], "fleet"]), KafkaTopicConfig(), "h:1")
    assert "'ack'" in str(info.value) and "h:1" in str(info.value)


def test_create_call_failure_is_a_topic_creation_error():
    admin = FakeAdmin(create_raises=ConnectionError("socket closed"))
    with pytest.raises(TopicCreationError) as info:
        topics.ensure_topics(admin, KafkaTopicConfig(prefix="z"), SERVERS)
    assert SERVERS in str(info.value)
    assert "z-ack" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_creation_waits_until_every_new_partition_has_a_leader():
    """Right after CreateTopics a partition may have no leader yet, and writes
    to it fail: ensure_topics returns only once each has one."""

    class LeaderLater(FakeAdmin):
        described = 0

        def describe_topics(self, names):
            self.described += 1
            leader = 1 if self.described >= 3 else -1
            return [{"name": n, "error_code": 0,
                     "partitions": [{"partition": 0, "leader_id": leader}]} for n in names]

    admin = LeaderLater()
    created = topics.ensure_topics(admin, KafkaTopicConfig(prefix="t"), "b:9092")
    assert created and admin.described == 3


def test_fleet_topic_name_and_spec():
    config = KafkaTopicConfig(prefix="chat", tenant_prefix="t.",
                              fleet=TopicSpec(num_partitions=4, configs={"retention.ms": "60000"}))
    assert config.name("fleet") == "t.chat-fleet"
    assert KafkaTopicConfig().name("fleet") == "fleet"
    assert config.spec("fleet") == TopicSpec(4, None, {**topics.FLEET_CONFIGS,
                                                       "retention.ms": "60000"})
    with pytest.raises(TypeError, match="fleet"):
        KafkaTopicConfig(fleet=4)
