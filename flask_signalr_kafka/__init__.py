"""A Kafka backplane for Flask-SocketIO, wire-compatible with the .NET
SignalR backplane Ascentis.SignalR.Kafka."""
from .addressing import user
from .async_manager import AsyncKafkaManager
from .errors import (
    AckTimeoutError,
    BrokerUnavailableError,
    FleetTimeoutError,
    KafkaBackplaneError,
    MalformedRecord,
    PayloadTooLargeError,
    ProducerBufferFullError,
    TopicCreationError,
)
from .fleet_records import RemoteSocket
from .manager import KafkaManager
from .recovery_options import ConnectionStateRecovery
from .topics import KafkaTopicConfig, TopicSpec

__all__ = [
    "AckTimeoutError",
    "AsyncKafkaManager",
    "BrokerUnavailableError",
    "ConnectionStateRecovery",
    "FleetTimeoutError",
    "KafkaBackplaneError",
    "KafkaManager",
    "KafkaTopicConfig",
    "MalformedRecord",
    "PayloadTooLargeError",
    "ProducerBufferFullError",
    "RemoteSocket",
    "TopicCreationError",
    "TopicSpec",
    "user",
]
__version__ = "0.1.0"
