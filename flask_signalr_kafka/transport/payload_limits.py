"""How large an emit may be, and the check that refuses a larger one before
any client gets it.

A record meets two limits on its way to the other servers:

- the producer's: kafka-python refuses a record above ``max_request_size``
  (default 1 MiB) or ``buffer_memory``, after the local clients got it, and
  the remote ones never do;
- the topic's: the broker refuses a record batch above the topic's
  ``max.message.bytes`` (Kafka's default 1,048,588 bytes).

The limit is the smaller of the two, learnt once at startup
(DescribeConfigs of the four send topics; when the cluster does not answer,
Kafka's default is assumed and logged). An emit is checked before it is
delivered to anyone, so a too-large one raises
:class:`~flask_signalr_kafka.errors.PayloadTooLargeError` and reaches
nobody, local or remote.

Sizes are upper bounds computed without encoding the record a second time:
the hub-protocol frames are encoded once (and reused for the records); every
other MessagePack item of the record is counted with its largest header (5
bytes for a string, 9 for an integer), and Kafka's framing with
:data:`RECORD_OVERHEAD`, the most kafka-python's own estimate adds. A record
is never refused that kafka-python and the broker would take by more than a
few dozen bytes. Compression does not enter: kafka-python checks the
uncompressed size against ``max_request_size``, and the broker's check of the
compressed batch can only be smaller.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PayloadTooLargeError
from ..wire.addressing import SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER, route
from .core import KafkaCore

logger = logging.getLogger("flask_signalr_kafka")

#: Apache Kafka's default ``max.message.bytes`` (``message.max.bytes``).
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
#: kafka-python's producer defaults, used when the config sets neither.
_PRODUCER_DEFAULTS = {"max_request_size": 1_048_576, "buffer_memory": 33_554_432}
#: Kafka's framing of a record sent alone: the v2 batch header (61 bytes),
#: kafka-python's largest per-record overhead (21), and 5-byte varints for
#: the key length, value length and header count.
RECORD_OVERHEAD = 61 + 21 + 5 + 5 + 5
#: The largest MessagePack header of a string or binary (str32/bin32).
_ITEM = 5
#: The InvocationExt's fixed items at their largest: outer array, excluded
#: array, frames map, callback id, earlier-targets array, emit sequence.
_FIXED = 5 + 5 + 5 + 9 + 5 + 9
#: Where the limits are raised, named in every error.
SETTINGS = ("producer_config max_request_size, the topics' max.message.bytes, and "
            "consumer_config max_partition_fetch_bytes / fetch_max_bytes "
            "(docs/guide/payloads.md: \"Payloads above 1 MB\")")
SEND_BASES = (SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER)


@dataclass(frozen=True)
class PayloadLimit:
    """The largest record an emit may produce.

    :param producer: the producer's limit (``max_request_size``, or
                     ``buffer_memory`` when smaller).
    :param topic: the smallest ``max.message.bytes`` of the send topics.
    :param topic_name: the topic that has it.
    """

    producer: int
    topic: int
    topic_name: str

    @property
    def limit(self) -> int:
        return min(self.producer, self.topic)

    def describe(self) -> str:
        return (f"producer max_request_size {self.producer:,}, topic {self.topic_name} "
                f"max.message.bytes {self.topic:,}")


def producer_limit(producer_config: dict[str, Any]) -> int:
    """What the producer accepts as one record.

    :param producer_config: the ``KafkaProducer`` keyword arguments, or
                            librdkafka's properties (``message.max.bytes``).
    """
    if "message.max.bytes" in producer_config:  # librdkafka's (client="confluent")
        return int(producer_config["message.max.bytes"])
    return min(producer_config.get(name, default) for name, default in _PRODUCER_DEFAULTS.items())


def learn(core: KafkaCore) -> PayloadLimit:
    """The limit of a server's producer and send topics (see :func:`limit_of`).

    :param core: the server's Kafka core.
    """
    return limit_of(core.connect_admin, map(core.topic_config.name, SEND_BASES),
                    core.producer_config)


def limit_of(admin_factory: Callable[[], Any], topic_names: Iterable[str],
             producer_config: dict[str, Any]) -> PayloadLimit:
    """The limit of this producer and the send topics, asking the cluster for
    each topic's ``max.message.bytes``; Kafka's default when it cannot say
    (a topic that does not exist yet, DescribeConfigs not allowed).

    :param admin_factory: returns a connected ``kafka.KafkaAdminClient``.
    :param topic_names: the send topics.
    :param producer_config: the ``KafkaProducer`` keyword arguments.
    """
    from kafka.admin import ConfigResource, ConfigResourceType

    names = list(topic_names)
    sizes: dict[str, int] = {}
    try:
        admin = admin_factory()
        try:
            described = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in names],
                config_filter="all",
            )["topic"]
        finally:
            admin.close()
        for name in names:
            entry = (described.get(name) or {}).get("max.message.bytes") or {}
            if entry.get("value") is not None:
                sizes[name] = int(entry["value"])
    except Exception as exc:  # a cluster or ACL that does not say: assume the default
        logger.info("could not read max.message.bytes of %s (%s); assuming Kafka's "
                    "default %d", ", ".join(names), exc, KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
    for name in names:
        sizes.setdefault(name, KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
    smallest = min(names, key=sizes.__getitem__)
    return PayloadLimit(producer_limit(producer_config), sizes[smallest], smallest)


def _len(text: str) -> int:
    return len(text.encode()) + _ITEM


def upper_bound(frames: dict[str, bytes], server_name: str, namespace: str,
                targets: Sequence[str | None], skip_sid: Sequence[str]) -> int:
    """At least :func:`exact_size` of any record of the emit: 4 UTF-8 bytes a
    character, every target and its key in every record."""
    chars = (len(server_name) + len(namespace) + sum(map(len, skip_sid))
             + sum(map(len, frames)) + 2 * sum(len(t) for t in targets if t is not None))
    items = 2 * len(frames) + len(skip_sid) + len(targets) + 3
    return (_FIXED + RECORD_OVERHEAD + sum(map(len, frames.values())) + 4 * chars
            + _ITEM * items)


def exact_size(frames: dict[str, bytes], server_name: str, namespace: str,
               targets: Sequence[str | None], published: Collection[str | None],
               skip_sid: Sequence[str]) -> int:
    """The size of the emit's largest record (those of the ``targets`` in
    ``published``)."""
    base = (_FIXED + sum(_len(p) + len(f) + _ITEM for p, f in frames.items())
            + sum(map(_len, skip_sid)) + _len(server_name) + _len(namespace)
            + RECORD_OVERHEAD)
    earlier = [0]  # the earlier targets' bytes before each index
    for one in targets:
        earlier.append(earlier[-1] + (0 if one is None else _len(one)))
    chosen = set(published)
    return max(base + earlier[i] + len((route(one)[1] or "").encode())
               for i, one in enumerate(targets) if one in chosen)


def check_emit(limit: PayloadLimit | None, frames: dict[str, bytes], server_name: str,
               event: str, namespace: str, targets: Sequence[str | None],
               published: Collection[str | None], skip_sid: Sequence[str]) -> None:
    """Raise before delivery if a record of this emit would be too large.

    :param limit: the limit (``None``: not learnt, nothing to check).
    :param frames: the emit's hub-protocol frames.
    :param server_name: the emitting server's (each record carries it).
    :param targets: the emit's targets, deduplicated, in order.
    :param published: the targets that get a record.
    :param skip_sid: the excluded connection ids.
    :raises PayloadTooLargeError: a record would exceed the limit.
    """
    if not published or limit is None:
        return
    # Most emits are far below the limit: an upper bound clears them
    # without encoding anything (1.3 us instead of 4.7 for a one-sid emit).
    if upper_bound(frames, server_name, namespace, targets, skip_sid) <= limit.limit:
        return
    size = exact_size(frames, server_name, namespace, targets, published, skip_sid)
    if size > limit.limit:
        what = "everyone" if list(targets) == [None] else ", ".join(
            "everyone" if t is None else repr(t) for t in targets[:5]) + (
            ", ..." if len(targets) > 5 else "")
        raise PayloadTooLargeError(
            f"emit {event!r} to {what} needs a Kafka record of up to {size:,} bytes, "
            f"above the limit of {limit.limit:,} ({limit.describe()}); nobody got it. "
            f"Send less, or raise {SETTINGS}",
            size, limit.limit,
        )
