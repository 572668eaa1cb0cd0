"""The idle librdkafka consumer that makes the metadata and offsets
requests of the confluent consumers sharing its settings
(:class:`Queries`), so that they do not wait behind the consumers'
long-poll fetches.
"""
from __future__ import annotations

import threading
from typing import Any

import confluent_kafka

from ...runtime.concurrency import Runtime
from .librdkafka import METADATA_TIMEOUT, made


class Queries:
    """An idle librdkafka consumer (nothing assigned, so nothing fetched)
    that makes the metadata and offsets requests of the consumers sharing
    its settings. A consumer's own connections carry its long-poll fetches,
    and a broker answers a connection's requests one at a time: there, a
    claim's offsets request waited behind a fetch for up to
    ``fetch.wait.max.ms`` (3 s when it was measured). Shared, and closed
    with its last user.

    :param key: its settings, as :meth:`acquire` keys them.
    :param config: librdkafka consumer properties.
    :param runtime: where its calls wait (several at once).
    """

    #: The open ones, by key.
    shared: dict[tuple, Queries] = {}
    _lock = threading.Lock()
    #: Properties that shape fetches only: consumers that differ in them share.
    FETCH_ONLY = ("fetch.", "auto.offset.reset", "queued.")

    def __init__(self, key: tuple, config: dict[str, Any], runtime: Runtime) -> None:
        self._key = key
        self._consumer = made(confluent_kafka.Consumer, config, "consumer_config")
        self._worker = runtime.worker(serial=False)
        self._users = 0
        self._in_flight = 0
        self._idle = threading.Condition()

    @classmethod
    def acquire(cls, config: dict[str, Any], runtime: Runtime) -> Queries:
        key = (id(runtime), tuple(sorted((k, repr(v)) for k, v in config.items()
                                         if not k.startswith(cls.FETCH_ONLY))))
        with cls._lock:
            queries = cls.shared.get(key)
            if queries is None:
                queries = cls.shared[key] = cls(key, config, runtime)
            queries._users += 1
        return queries

    def call(self, method: str, *args: Any) -> Any:
        """The idle consumer's ``method(*args)``, waited for in the runtime."""
        with self._idle:
            self._in_flight += 1
        try:
            return self._worker.call(getattr(self._consumer, method), *args)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def release(self) -> None:
        """One user fewer; the last closes it once its requests return."""
        with self._lock:
            self._users -= 1
            if self._users:
                return
            del self.shared[self._key]
        with self._idle:
            self._idle.wait_for(lambda: not self._in_flight, METADATA_TIMEOUT + 1)
        try:
            self._worker.call(self._consumer.close)
        finally:
            self._worker.close()
