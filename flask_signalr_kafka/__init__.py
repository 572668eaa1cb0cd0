"""A Kafka backplane for Flask-SocketIO, wire-compatible with the .NET
SignalR backplane Ascentis.SignalR.Kafka."""
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
from .managers.async_manager import AsyncKafkaManager
from .managers.manager import KafkaManager
from .recovery.recovery_options import ConnectionStateRecovery
from .transport.topics import KafkaTopicConfig, TopicSpec
from .wire.addressing import user
from .wire.fleet_records import RemoteSocket

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
