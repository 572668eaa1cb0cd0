"""The Kafka client library under the core: what the core asks of it, and
which library answers (``client=`` of ``KafkaManager``).

Two implement it: :mod:`.kafka_python_client` (kafka-python, the default)
and :mod:`.confluent_client` (confluent-kafka, librdkafka). The core,
the on-demand reads of recovery and the CLI's ``tail`` use only what the
protocols below name: kafka-python's producer and consumer methods, which
the confluent adapters mirror. Admin work (topic creation, ``doctor``,
``top``, ``max.message.bytes``) is rare and slow-path: both clients use
kafka-python's ``KafkaAdminClient``, the confluent one with its settings
translated from librdkafka's names (:mod:`.client_config`).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

# A (topic, partition) namedtuple: both clients' consumers take and return it.
from kafka import TopicPartition

from ...runtime.concurrency import Runtime

__all__ = ["CLIENTS", "KafkaClient", "TopicPartition", "client_named"]

#: ``client=`` value -> the module that implements it.
CLIENTS = {"kafka-python": "kafka_python_client", "confluent": "confluent_client"}


class Future(Protocol):
    """One record's delivery."""

    def add_errback(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def get(self, timeout: float | None = None) -> Any: ...


class Producer(Protocol):
    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             partition: int | None = None) -> Future: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


class Consumer(Protocol):
    """A consumer without a group: partitions are assigned and positioned by
    the caller."""

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...

    def seek_to_end(self, *partitions: TopicPartition) -> None: ...

    def position(self, partition: TopicPartition) -> int: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list]: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    def beginning_offsets(self, partitions: list[TopicPartition]) -> dict: ...

    def end_offsets(self, partitions: list[TopicPartition]) -> dict: ...

    def close(self) -> None: ...


class KafkaClient(Protocol):
    """A Kafka client library.

    ``name`` is its ``client=`` value; ``fetch_wait`` the name of the
    consumer's fetch wait setting in its dialect; ``static_fetch_wait_ms``
    that wait for the consumers whose partitions never change (``None``:
    the same as the others'); ``timeout_errors`` and
    ``connection_errors`` what its calls raise when the cluster cannot be
    reached in time. ``buffer_setting`` names the producer setting of the
    publisher's memory bound, and ``record_overhead`` is what one queued
    record costs the process beyond its key and value (measured, bytes).
    ``request_timeout`` names the setting of the request timeout that the
    core derives from the cluster's broker session timeout, and
    ``fallback_request_timeout_ms`` is its value when the cluster does not
    say (``None``: the library's own); ``setup_timeouts`` name the
    settings that get the same value (a connection's setup).
    ``sends_per_yield``: a greenlet that sends in a loop yields once every
    so many records, so that the client's I/O gets to send them.
    """

    name: str
    buffer_setting: str
    record_overhead: int
    request_timeout: str
    fallback_request_timeout_ms: int | None
    setup_timeouts: tuple[str, ...]
    fetch_wait: str
    static_fetch_wait_ms: int | None
    timeout_errors: tuple[type[BaseException], ...]
    connection_errors: tuple[type[BaseException], ...]
    sends_per_yield: int

    def configs(self, bootstrap_servers: Any, connect_timeout: float, client_id: str,
                producer_config: Any, consumer_config: Any, admin_config: Any,
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The producer and consumer settings in this client's dialect (our
        defaults under the user's) and the admin's as ``KafkaAdminClient``
        keyword arguments.

        :raises ValueError: no broker, or a setting of the other dialect.
        """

    def producer(self, config: dict[str, Any], runtime: Runtime) -> Producer: ...

    def buffer_memory(self, config: dict[str, Any]) -> int:
        """The publisher's memory bound (bytes) in the producer settings."""

    def consumer(self, config: dict[str, Any], runtime: Runtime,
                 earliest: bool = False) -> Consumer:
        """A consumer; ``earliest``: an out-of-range position resets to the
        log start (the compacted sessions topic) rather than its end."""

    def unusable(self, producer: Producer, error: BaseException) -> bool:
        """Whether ``producer`` will fail every later record after ``error``."""


def client_named(name: Any) -> KafkaClient:
    """The client of ``client=``.

    :raises ValueError: an unknown name, or confluent-kafka not installed.
    """
    if name not in CLIENTS:
        raise ValueError(f"client must be one of {', '.join(map(repr, CLIENTS))}, not {name!r}")
    try:
        module = importlib.import_module(f".{CLIENTS[name]}", __package__)
    except ImportError as exc:
        raise ValueError(
            f"client={name!r} needs its library ({exc}): pip install "
            "'flask-signalr-kafka[confluent]'"
        ) from exc
    return module.CLIENT
