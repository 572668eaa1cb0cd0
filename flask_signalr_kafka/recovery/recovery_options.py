"""The settings of connection state recovery (``KafkaManager(...,
connection_state_recovery=...)``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConnectionStateRecovery:
    """Settings of connection state recovery.

    :param max_disconnection_duration: seconds a client may stay away and
        still be recovered (the Node server's default, 120).
    :param skip_connect_handler: ``False`` (default): the app's connect
        handler runs again on a recovery (it can authenticate and set up the
        connection as usual; ``KafkaManager.is_recovered(sid, namespace)``
        tells a recovered connection); ``True``: it does not, as Node's
        ``skipMiddlewares``.
    :param max_replay_records: a recovery that would read more records than
        this fails (the client gets a new connection) rather than make the
        dyno read without bound.
    :param checkpoint_interval: seconds between a dyno's checkpoints while
        it delivers: after a SIGKILL, a client that has only a short offset
        or none is replayed from the last one.
    :param release_timeout: seconds to wait for the dyno that still holds a
        reconnecting client's old connection to let it go.
    :param window_steps: delivery steps a dyno remembers for the window (a
        recovery that would need older ones is refused, never lossy).
    :param browser_offsets: ``True`` (default): a connection whose
        User-Agent starts with ``Mozilla/`` (a web browser, where the
        official Socket.IO client is the one that runs) gets offsets from
        its first connection without announcing recovery, so that its
        first drop is exact too. Offsets are an extra last argument of
        every event: set ``False`` if other Socket.IO clients run in
        browsers (or send such a User-Agent) with handlers of a fixed
        number of arguments; browsers then get offsets once they announce
        (``auth: {csr: true}``) or from their first reconnect.
    """

    max_disconnection_duration: float = 120.0
    skip_connect_handler: bool = False
    max_replay_records: int = 50_000
    checkpoint_interval: float = 0.25
    release_timeout: float = 3.0
    window_steps: int = 200_000
    browser_offsets: bool = True

    def __post_init__(self) -> None:
        for name in ("max_disconnection_duration", "checkpoint_interval", "release_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"ConnectionStateRecovery.{name} must be a positive number "
                                 f"of seconds, not {value!r}")
        for name in ("max_replay_records", "window_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ConnectionStateRecovery.{name} must be a positive int, "
                                 f"not {value!r}")
        if not isinstance(self.browser_offsets, bool):
            raise ValueError("ConnectionStateRecovery.browser_offsets must be True or False, "
                             f"not {self.browser_offsets!r}")


def options_from(value: Any) -> ConnectionStateRecovery | None:
    """The ``connection_state_recovery`` argument as settings, or ``None``."""
    if value is None or value is False:
        return None
    if value is True:
        return ConnectionStateRecovery()
    if isinstance(value, ConnectionStateRecovery):
        return value
    raise TypeError("connection_state_recovery must be False, True or a "
                    f"ConnectionStateRecovery(...), not {value!r}")
