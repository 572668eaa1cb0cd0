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
