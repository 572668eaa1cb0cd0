"""Exceptions raised by flask_signalr_kafka."""


class KafkaBackplaneError(Exception):
    """Base class of every error this package raises."""


class AckTimeoutError(KafkaBackplaneError, TimeoutError):
    """A group change for a connection on another server was not acknowledged
    within ``ack_timeout`` seconds (the connection may not exist anywhere)."""


class BrokerUnavailableError(KafkaBackplaneError, ConnectionError):
    """The Kafka cluster could not be reached at startup."""


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
