"""Kafka settings from the environment, in the config vars of Apache Kafka
on Heroku (and of anything that follows its names).

| variable | meaning |
|---|---|
| ``KAFKA_URL`` | comma-separated ``kafka://host:port`` or ``kafka+ssl://host:port`` |
| ``KAFKA_TRUSTED_CERT`` | PEM of the CA that signed the brokers' certificates |
| ``KAFKA_CLIENT_CERT`` | PEM of this client's certificate |
| ``KAFKA_CLIENT_CERT_KEY`` | PEM of this client's private key |
| ``KAFKA_PREFIX`` | multi-tenant plans: prepended to topic names and client ids |

Without ``KAFKA_URL`` the embedded development broker's address is used.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..transport.clients.client_config import to_librdkafka
from ..transport.topics import KafkaTopicConfig

#: Kafka's default port, where ``flask-signalr-kafka broker`` listens too.
DEFAULT_PORT = 9092
LOCAL_BROKER = f"127.0.0.1:{DEFAULT_PORT}"
_SCHEMES = {"kafka": "PLAINTEXT", "kafka+ssl": "SSL"}


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict:
    """``KafkaManager`` keyword arguments for the environment's Kafka:
    ``bootstrap_servers``, the SSL settings of all three clients, and the
    tenant prefix (as ``tenant_prefix``)."""
    env = os.environ if environ is None else environ
    servers, protocol = _parse_url(env.get("KAFKA_URL", "").strip())
    client: dict = {}
    if protocol == "SSL":
        client["security_protocol"] = "SSL"
        client.update(_ssl_files(env))
    return {
        "bootstrap_servers": servers,
        "client_config": client,
        "tenant_prefix": env.get("KAFKA_PREFIX", ""),
    }


def _parse_url(url: str) -> tuple[list[str], str]:
    if not url:
        return [LOCAL_BROKER], "PLAINTEXT"
    servers, protocols = [], set()
    for part in url.split(","):
        parsed = urlsplit(part.strip())
        if parsed.scheme not in _SCHEMES or not parsed.hostname or not parsed.port:
            raise ValueError(
                f"KAFKA_URL entry {part.strip()!r} is not kafka://host:port or "
                "kafka+ssl://host:port"
            )
        servers.append(f"{parsed.hostname}:{parsed.port}")
        protocols.add(_SCHEMES[parsed.scheme])
    if len(protocols) > 1:
        raise ValueError("KAFKA_URL mixes kafka:// and kafka+ssl:// brokers")
    return servers, protocols.pop()


def _ssl_files(env: Mapping[str, str]) -> dict:
    """Write the PEM config vars to files only this user can read (kafka-python
    takes paths) and return the matching SSL settings."""
    pems = {
        "ssl_cafile": env.get("KAFKA_TRUSTED_CERT"),
        "ssl_certfile": env.get("KAFKA_CLIENT_CERT"),
        "ssl_keyfile": env.get("KAFKA_CLIENT_CERT_KEY"),
    }
    if not any(pems.values()):
        return {}
    directory = tempfile.mkdtemp(prefix="flask-signalr-kafka-")  # mode 0700
    atexit.register(shutil.rmtree, directory, True)
    settings = {}
    for setting, pem in pems.items():
        if pem:
            path = os.path.join(directory, setting.removeprefix("ssl_"))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(pem)
            settings[setting] = path
    if pems["ssl_cafile"]:
        # Heroku's broker certificates name no host we connect by: the CA
        # pins the cluster, as Heroku's own client examples do.
        settings["ssl_check_hostname"] = False
    return settings


def manager_kwargs_from_env(environ: Mapping[str, str] | None,
                            kwargs: dict[str, Any]) -> dict[str, Any]:
    """``KafkaManager.from_env``'s arguments: ``kwargs`` with the
    environment's broker, SSL settings and tenant prefix filled in (config
    dicts given in ``kwargs`` win over the environment's)."""
    settings = settings_from_env(environ)
    kwargs = dict(kwargs)
    if kwargs.get("client") == "confluent":
        # The same settings under librdkafka's names.
        settings["client_config"] = to_librdkafka(settings["client_config"])
    topic_config = kwargs.pop("topic_config", None)
    if topic_config is None:
        topic_config = KafkaTopicConfig()
    if settings["tenant_prefix"] and isinstance(topic_config, KafkaTopicConfig):
        topic_config = dataclasses.replace(topic_config, tenant_prefix=settings["tenant_prefix"])
    for name in ("producer_config", "consumer_config", "admin_config"):
        kwargs[name] = {**settings["client_config"], **(kwargs.get(name) or {})}
    kwargs.setdefault("bootstrap_servers", settings["bootstrap_servers"])
    return {**kwargs, "topic_config": topic_config}
