"""Exceptions raised by flask_signalr_kafka."""


class KafkaBackplaneError(Exception):
    """Base class of every error this package raises."""


class AckTimeoutError(KafkaBackplaneError, TimeoutError):
    """A group change for a connection on another server was not acknowledged
    within ``ack_timeout`` seconds (the connection may not exist anywhere)."""


class BrokerUnavailableError(KafkaBackplaneError, ConnectionError):
    """The Kafka cluster could not be reached at startup."""


class ProducerBufferFullError(KafkaBackplaneError, BufferError):
    """An emit refused because the producer already holds its memory bound
    of records the cluster has not acknowledged (``buffer_memory``, or
    ``queue.buffering.max.kbytes`` with ``client="confluent"``): the cluster
    has been unreachable or slow for a while. Local clients got the emit."""


class TopicCreationError(KafkaBackplaneError):
    """A backplane topic is missing and could not be created."""


class MalformedRecord(KafkaBackplaneError, ValueError):
    """A Kafka record that is not a valid backplane record; it is skipped."""


class PayloadTooLargeError(KafkaBackplaneError, ValueError):
    """An emit whose Kafka record would be larger than the producer or the
    topic accepts; raised before any client, local or remote, gets it.

    :ivar size: the largest record of the emit, in bytes (an upper bound).
    :ivar limit: the largest record the producer and the topics accept.
    """

    def __init__(self, message: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class FleetTimeoutError(KafkaBackplaneError, TimeoutError):
    """A fleet query (``fetch_sockets``, ``server_side_emit`` with a
    callback) that some live server did not answer within its timeout.

    :ivar responses: what did arrive: the :class:`~.fleet_records.RemoteSocket`
        list of ``fetch_sockets`` (this server's included), or the return
        values of ``server_side_emit``'s handlers.
    :ivar missing: the names of the servers that did not answer.
    """

    def __init__(self, message: str, responses: list, missing: frozenset[str] = frozenset()):
        super().__init__(message)
        self.responses = responses
        self.missing = missing
