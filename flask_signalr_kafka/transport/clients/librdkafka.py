"""librdkafka as every confluent adapter calls it: a client made from
properties (a refused one as a ``ValueError`` that names the argument), a
batch read from a consumer, and how long a metadata or offsets request
waits. Imports none of the other confluent modules.
"""
from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException

#: Records taken from librdkafka's queue per poll.
BATCH = 500
#: Seconds a metadata or offsets request waits for its answer.
METADATA_TIMEOUT = 10.0


def made(factory: Any, config: dict[str, Any], name: str) -> Any:
    """``factory(config)``; librdkafka's refusal of a property as a ValueError."""
    try:
        return factory(config)
    except KafkaException as exc:
        raise ValueError(f"librdkafka refused {name}: {exc.args[0].str()} (client='confluent' "
                         "takes librdkafka properties, see its CONFIGURATION.md)") from exc


def fetch(consumer: Any, timeout: float) -> list:
    """Up to :data:`BATCH` messages: waits ``timeout`` s for the first only
    (``consume`` with a timeout waits for all of them)."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(BATCH - 1, 0)]
