"""KafkaManager.from_env and the Heroku-style KAFKA_* variables."""
import os
import stat

import pytest

from flask_signalr_kafka import KafkaManager, KafkaTopicConfig
from flask_signalr_kafka.config.env_config import LOCAL_BROKER, settings_from_env

CA, CERT, KEY = ("-----BEGIN CERTIFICATE-----\nca\n", "-----BEGIN CERTIFICATE-----\nme\n",
                 "-----BEGIN PRIVATE KEY-----\nsecret\n")


def test_without_kafka_url_the_embedded_broker_is_used():
    settings = settings_from_env({})
    assert settings == {"bootstrap_servers": [LOCAL_BROKER], "client_config": {},
                        "tenant_prefix": ""}


def test_plaintext_urls():
    settings = settings_from_env({"KAFKA_URL": "kafka://b1:9092, kafka://b2.example.com:9093"})
    assert settings["bootstrap_servers"] == ["b1:9092", "b2.example.com:9093"]
    assert settings["client_config"] == {}


def test_ssl_urls_write_pems_only_the_owner_can_read():
    env = {"KAFKA_URL": "kafka+ssl://b1:9096,kafka+ssl://b2:9096", "KAFKA_TRUSTED_CERT": CA,
           "KAFKA_CLIENT_CERT": CERT, "KAFKA_CLIENT_CERT_KEY": KEY}
    config = settings_from_env(env)["client_config"]
    assert config["security_protocol"] == "SSL"
    assert config["ssl_check_hostname"] is False
    for setting, pem in (("ssl_cafile", CA), ("ssl_certfile", CERT), ("ssl_keyfile", KEY)):
        path = config[setting]
        with open(path) as f:
            assert f.read() == pem
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


@pytest.mark.parametrize("url", ["b1:9092", "http://b1:9092", "kafka://b1", "kafka://:9092",
                                 "kafka://b1:9092,kafka+ssl://b2:9096"])
def test_bad_kafka_url_says_what_is_expected(url):
    with pytest.raises(ValueError, match="KAFKA_URL"):
        settings_from_env({"KAFKA_URL": url})


def test_from_env_prefixes_topics_and_client_ids_and_merges_configs():
    env = {"KAFKA_URL": "kafka+ssl://b1:9096", "KAFKA_TRUSTED_CERT": CA,
           "KAFKA_PREFIX": "columbia-1234."}
    mgr = KafkaManager.from_env(env, topic_config=KafkaTopicConfig(prefix="chat"),
                                producer_config={"linger_ms": 7, "ssl_check_hostname": True})
    assert mgr.topic_config.name("send-all") == "columbia-1234.chat-send-all"
    assert mgr.producer_config["client_id"].startswith("columbia-1234.")
    assert mgr.producer_config["bootstrap_servers"] == ["b1:9096"]
    assert mgr.producer_config["linger_ms"] == 7
    assert mgr.producer_config["ssl_check_hostname"] is True  # the caller's dict wins
    assert mgr.consumer_config["security_protocol"] == "SSL"
    assert mgr.admin_config["ssl_cafile"].endswith("cafile")


def test_tenant_prefix_without_topic_prefix():
    mgr = KafkaManager.from_env({"KAFKA_PREFIX": "t1."})
    assert mgr.topic_config.name("ack") == "t1.ack"


@pytest.mark.parametrize("bad", [{}, "", "chat"])
def test_from_env_rejects_a_topic_config_that_is_not_one(bad):
    with pytest.raises(TypeError, match="topic_config"):
        KafkaManager.from_env({}, topic_config=bad)
