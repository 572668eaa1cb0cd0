"""The Kafka core of one server: its identity, the producer, a consumer per
topic, its home partitions and claims, and the ids of records that expect
an Ack. It knows nothing of python-socketio: the adapter
(:mod:`.manager`) hands it a handler per topic and the features (recovery,
metrics, shutdown, the CLI) use its public methods.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# The admin client is kafka-python's with either client (see kafka_client).
from kafka import KafkaAdminClient
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from ..errors import BrokerUnavailableError
from ..runtime.concurrency import Runtime
from ..wire.addressing import SEND_CONN, make_sid
from . import topics
from .ack_waiter import AckWaiter
from .clients import client_config
from .clients.kafka_client import Consumer, KafkaClient, client_named
from .consumer import ConsumerGroup, TopicConsumer
from .home_partitions import HomePartitions, draw_server_name
from .producer import Publisher
from .topics import KafkaTopicConfig

logger = logging.getLogger("flask_signalr_kafka")


def new_server_name() -> str:
    """``<hostname>_<32 lowercase hex>``: unique per process."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex}"

#: Seconds a claimed sid may wait for its connection before it is dropped.
CLAIM_GRACE = 60.0

#: The topics read at every emit or group change that concerns this dyno
#: share one client consumer, the rarely written ones another: one fetch per
#: broker each (docs/kafka-clients.md, "Consumers").
HOT, COLD = "hot", "cold"
CONSUMER_GROUPS = {
    topics.ACK: HOT, topics.SEND_ALL: HOT, topics.SEND_CONN: HOT,
    topics.SEND_GROUP: HOT, topics.SEND_USER: HOT,
    topics.GROUP_MGMT: COLD, topics.FLEET: COLD,
}
#: Bases whose consumers may wait long for a fetch (see ``_group_config``).
COLD_BASES = frozenset({topics.GROUP_MGMT, topics.FLEET})


class KafkaCore:
    """Kafka for one server.

    :param producer_config: the producer's settings, in ``client``'s dialect.
    :param consumer_config: the consumers' settings, in ``client``'s dialect.
    :param admin_config: keyword arguments for ``kafka.KafkaAdminClient``
                         (the admin client is kafka-python's with either client).
    :param topic_config: the topic names and creation specs.
    :param await_produce: publishing waits for the broker and raises its error.
    :param connect_timeout: seconds to wait for the cluster at startup.
    :param home_partitions: ``True``, an int, or ``False`` (see
        :mod:`.home_partitions`).
    :param write_only: publish only; consume nothing.
    :param sessions: also create the sessions topic (connection state recovery).
    :param fetch_wait_given: the app set ``fetch_max_wait_ms`` itself.
    :param server_name: this server's name (redrawn for home partitions).
    :param client: the Kafka client library (kafka-python by default).
    """

    def __init__(self, *, server_name: str, producer_config: dict[str, Any],
                 consumer_config: dict[str, Any], admin_config: dict[str, Any],
                 topic_config: KafkaTopicConfig,
                 await_produce: bool, connect_timeout: float, home_partitions: bool | int,
                 write_only: bool, sessions: bool, fetch_wait_given: bool,
                 client: KafkaClient | None = None) -> None:
        self.client = client or client_named("kafka-python")
        self.producer_config = producer_config
        self.consumer_config = consumer_config
        self.admin_config = admin_config
        self.topic_config = topic_config
        self.await_produce = await_produce
        self.connect_timeout = connect_timeout
        self.home_partitions = home_partitions
        self.write_only = write_only
        self.sessions = sessions
        self._fetch_wait_given = fetch_wait_given
        self.server_name = server_name
        #: The key of the acks for this server (its name; read per ack record).
        self.ack_key = server_name.encode()
        self.acks = AckWaiter()
        self.runtime = Runtime.standalone()
        self.publisher: Publisher | None = None
        self._consumers: dict[str, TopicConsumer] = {}
        #: base -> the key of the consumer group that reads it (a base not
        #: named has a group of its own).
        self.consumer_groups: dict[str, str] = dict(CONSUMER_GROUPS)
        self._groups: dict[str, ConsumerGroup] = {}
        self._home: HomePartitions | None = None
        self._holds: Callable[[str], bool] = lambda sid: False
        self._local_sids: Callable[[], set[str]] = set
        #: sid -> when this server claimed its send-conn partitions; claims
        #: and releases come from many threads (under ``_claims_lock``).
        self._claimed_at: dict[str, float] = {}
        self._claims_lock = threading.Lock()
        self._readiness: list[threading.Event] = []
        self.closed = False

    # -- lifecycle ---------------------------------------------------------------

    def connect(self, runtime: Runtime, holds: Callable[[str], bool],
                local_sids: Callable[[], set[str]]) -> None:
        """Create missing topics, choose the home partitions, connect the
        producer.

        :param runtime: what the consumers run on.
        :param holds: whether this server holds a connection with that sid.
        :param local_sids: every sid this server holds.
        :raises BrokerUnavailableError: the cluster cannot be reached.
        """
        if self.closed:
            raise RuntimeError("this KafkaManager was closed")
        self.runtime = runtime
        self._holds, self._local_sids = holds, local_sids
        self.create_topics()
        self._derive_request_timeouts()
        if self.home_partitions is not False and not self.write_only:
            self._choose_home()
        self.publisher = self._connect(Publisher, self.producer_config, self.topic_config,
                                       self.await_produce, runtime.sleep, self.client, runtime)

    def _derive_request_timeouts(self) -> None:
        """Set the producer's and consumers' request timeout (and, where the
        client has one, its connection setup timeout) from the cluster's
        ``broker.session.timeout.ms`` (see
        :func:`.client_config.request_timeout_ms`), where the app did not
        set them: a hung leader is left after that timeout."""
        settings = [self.client.request_timeout, *self.client.setup_timeouts]
        wanted = [(c, s) for c in (self.producer_config, self.consumer_config)
                  for s in settings if s not in c]
        if not wanted:
            return  # the app's own, all
        with self.admin() as admin:
            session = topics.broker_session_timeout_ms(admin)
        timeout = client_config.request_timeout_ms(session, self.client.fallback_request_timeout_ms)
        if timeout is not None:
            for config, setting in wanted:
                config[setting] = timeout
        logger.info("request timeout %s=%s (broker.session.timeout.ms %s)",
                    self.client.request_timeout, timeout, session)

    def consume(self, handlers: dict[str, Callable[[Any], None]],
                partitions: dict[str, Callable[[list[int]], Iterable[int]]] | None = None,
                ) -> None:
        """Start reading each topic base of ``handlers``, in the consumer
        group :attr:`consumer_groups` names (a group already started takes
        it up).

        :param partitions: for a base of ours, which of its partition ids to
            read (asked at each assignment); every partition by default.
        """
        wanted = dict(partitions or {})
        if self._home is not None:
            wanted.update({topics.ACK: self._home.ack_wanted,
                           topics.SEND_CONN: self._home.conn_wanted})
        joined: dict[str, list[TopicConsumer]] = {}
        for base, handler in handlers.items():
            consumer = TopicConsumer(self.topic_config.name(base), handler, self.consumer_config,
                                     self.runtime, on_missing_topic=self.create_topics,
                                     partitions=wanted.get(base), client=self.client)
            if base == SEND_CONN and self._home is not None:
                consumer.poll_timeout_ms = 200  # a claim waits for the poll to return
            joined.setdefault(self.consumer_groups.get(base, base), []).append(consumer)
            self._consumers[base] = consumer
        for key, members in joined.items():
            group = self._groups.get(key)
            if group is None:
                self._groups[key] = group = ConsumerGroup(
                    members, self._group_config(key), self.runtime, self.client)
            else:
                for member in members:
                    group.add(member)
            group.start()
        logger.info("kafka backplane %s consuming %s", self.server_name,
                    "; ".join(g.topics for g in self._groups.values()))

    def _group_config(self, key: str) -> dict[str, Any]:
        """The consumer settings of group ``key``. A group of cold topics
        only may wait long for a fetch (it returns as soon as a record
        comes): an idle dyno sends fewer requests. The hot ones keep the
        short wait: under kafka-python a partition whose records are still
        being handed out is left out of the next fetch and waits for it to
        return (3 s there halved a dyno's broadcast throughput)."""
        static_wait = self.client.static_fetch_wait_ms
        bases = {b for b in (*topics.BASE_NAMES, topics.FLEET)
                 if self.consumer_groups.get(b, b) == key}
        if bases <= COLD_BASES and not self._fetch_wait_given and static_wait is not None:
            return {**self.consumer_config, self.client.fetch_wait: static_wait}
        return self.consumer_config

    def add_readiness(self, event: threading.Event) -> None:
        """Make :meth:`wait_ready` also wait for ``event`` (a feature's own)."""
        self._readiness.append(event)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every consumer reads from a fixed position and every
        feature is ready; ``False`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events = [c.ready for c in self._consumers.values()] + self._readiness
        for event in events:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not event.wait(remaining):
                return False
        return bool(self._consumers)

    def flush(self, timeout: float | None = None) -> None:
        if self.publisher is not None:
            self.publisher.flush(timeout)

    def stop_consuming(self, bases: Iterable[str] | None = None) -> None:
        """Stop the consumers of ``bases`` (all by default), each between two
        batches, so that their positions say exactly what was delivered."""
        stopping = [c for b, c in self._consumers.items() if bases is None or b in bases]
        for consumer in stopping:
            consumer.request_stop()  # all at once: each may finish a poll
        for consumer in stopping:
            consumer.stop()

    def close(self, timeout: float = 10.0) -> None:
        """Stop consuming and close the producer (after a flush)."""
        self.closed = True
        self.stop_consuming()
        if self.publisher is not None:
            self.publisher.close(timeout)

    # -- publishing and acks ----------------------------------------------------

    def publish(self, base: str, key: str | None, value: bytes | None,
                timeout: float | None = None, partition: int | None = None) -> Any:
        """Publish a record (see :meth:`.Publisher.send`); its future."""
        return self.publisher.send(base, key, value, timeout=timeout, partition=partition)

    # -- positions ---------------------------------------------------------------

    @property
    def consumers(self) -> list[TopicConsumer]:
        return list(self._consumers.values())

    def consumer(self, base: str) -> TopicConsumer | None:
        return self._consumers.get(base)

    def positions(self, bases: Iterable[str]) -> dict[tuple[str, int], int]:
        """The next offset to deliver on every partition read of ``bases``."""
        out = {}
        for base in bases:
            consumer = self._consumers.get(base)
            if consumer is not None:
                for tp, offset in list(consumer.positions.items()):
                    out[(base, tp.partition)] = offset
        return out

    def partition_count(self, base: str) -> int:
        """How many partitions ``base``'s topic has (0 before it is read)."""
        consumer = self._consumers.get(base)
        return consumer.partition_count if consumer is not None else 0

    # -- home partitions and claims ----------------------------------------------

    def new_sid(self, random_id: Callable[[], str]) -> str:
        """A connection id that lands on a partition this server reads."""
        if self._home is not None:
            return self._home.allocate_sid()
        return make_sid(random_id())

    def claim(self, sid: str, timeout: float = 10.0) -> None:
        """Read the send-conn partitions of ``sid`` (murmur2's and CRC-32's),
        a connection this server takes over, from their log end; return
        once they are assigned and positioned, so that every record for it
        from then on is read here. Released by :meth:`release`.

        :raises TimeoutError: not positioned within ``timeout`` seconds.
        """
        now = time.monotonic()
        with self._claims_lock:
            if sid in self._claimed_at:
                return
            self._claimed_at[sid] = now
            old = [s for s, at in self._claimed_at.items() if now - at > CLAIM_GRACE]
        # A claim whose connection never arrived (its recovery failed after
        # the claim) is dropped after a while.
        for stale in old:
            if not self._holds(stale):
                self.release(stale)
        home = self._home
        if home is None or not home.claim(sid):
            return  # every partition is read, or it hashes home
        consumer = self._consumers.get(SEND_CONN)
        if consumer is None:
            return  # the consumer's first assignment will include it
        if not consumer.refresh().wait(timeout):
            raise TimeoutError(f"the send-conn partitions of {sid} were not read "
                               f"within {timeout:g} s")

    def release(self, sid: str) -> None:
        """Stop reading the partitions of ``sid`` (its connection left)."""
        with self._claims_lock:
            self._claimed_at.pop(sid, None)
        if self._home is not None and self._home.release(sid):
            consumer = self._consumers.get(SEND_CONN)
            if consumer is not None:
                consumer.refresh()

    def _choose_home(self) -> None:
        """Learn the partition counts of ack and send-conn, draw a server
        name whose ack partition is the same under murmur2 and CRC-32, and
        derive the home send-conn partitions from it."""
        names = [self.topic_config.name(topics.ACK), self.topic_config.name(SEND_CONN)]
        with self.admin() as admin:
            counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
        n_ack, n_conn = (counts.get(name) or 1 for name in names)
        old = self.server_name
        self.server_name = draw_server_name(old.rsplit("_", 1)[0], n_ack)
        self.ack_key = self.server_name.encode()
        for config in (self.producer_config, self.consumer_config, self.admin_config):
            for setting in ("client_id", "client.id", "group.id"):  # either dialect
                if config.get(setting) == self.topic_config.tenant_prefix + old:
                    config[setting] = self.topic_config.tenant_prefix + self.server_name
        count = None if self.home_partitions is True else self.home_partitions
        self._home = HomePartitions(self.server_name, n_conn, count, self._local_sids)
        logger.info("%s reads send-conn partitions %s of %d and its ack partition",
                    self.server_name, sorted(self._home.home), n_conn)

    # -- the cluster -------------------------------------------------------------

    def create_topics(self) -> list[str]:
        """Create the backplane topics that are missing; return the names
        created.

        :raises BrokerUnavailableError: the cluster cannot be reached.
        :raises TopicCreationError: the cluster refused a topic.
        """
        with self.admin() as admin:
            return topics.ensure_topics(admin, self.topic_config, self.servers(),
                                        sessions=self.sessions)

    def new_consumer(self, earliest: bool = False) -> Consumer:
        """A consumer of the server's client and settings, without a group,
        for a read of its own (a replay, a sessions partition, ``tail``);
        the caller closes it.

        :param earliest: an out-of-range position resets to the log start.
        """
        return self.client.consumer(self.consumer_config, self.runtime, earliest)

    @contextlib.contextmanager
    def admin(self) -> Iterator[KafkaAdminClient]:
        """A connected admin client, closed afterwards.

        :raises BrokerUnavailableError: the cluster cannot be reached.
        """
        admin = self.connect_admin()
        try:
            yield admin
        finally:
            admin.close()

    def connect_admin(self) -> KafkaAdminClient:
        """A connected admin client; the caller closes it.

        :raises BrokerUnavailableError: the cluster cannot be reached.
        """
        return self._connect(KafkaAdminClient, **self.admin_config)

    def servers(self) -> str:
        servers = self.admin_config.get("bootstrap_servers")
        return servers if isinstance(servers, str) else ",".join(servers or ())

    def _connect(self, factory: Callable, *args: Any, **kwargs: Any) -> Any:
        try:
            return factory(*args, **kwargs)
        except (KafkaTimeoutError, KafkaConnectionError) as exc:
            raise BrokerUnavailableError(
                f"could not reach Kafka at {self.servers()} within "
                f"{self.connect_timeout:g} s ({exc}): check bootstrap_servers, the "
                "security settings, and that the broker runs"
            ) from exc
