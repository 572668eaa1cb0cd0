"""What the parts of a dyno's recovery share: its Kafka core, the Socket.IO
side (:class:`ConnectionHost`), the settings, the delivery log, the session
store, the figures, and the tables of the connections held here.

:class:`.recovery.Recovery` makes one :class:`RecoveryState` and hands it to
:class:`.handshake.Handshake` and :class:`.saves.Saves`; each part keeps its
own tables to itself and meets the others here only.
"""
from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from ..transport.core import KafkaCore
from ..transport.topics import SESSIONS
from ..wire.addressing import SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER
from .recovery_options import ConnectionStateRecovery
from .sessions import SessionReader, SessionStore
from .steps import DeliveryLog

logger = logging.getLogger(__name__)

SEND_BASES = (SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER)
#: Seconds a live dyno's checkpoint round may take beyond its interval: the
#: wait for its own records' acks (up to 1 s). More would delay every
#: takeover of a killed dyno's clients, and so lengthen their replays.
SLOW_ROUND = 1.0


class ConnectionHost(Protocol):
    """What recovery needs of the Socket.IO side (the manager)."""

    server: Any

    def is_local(self, sid: str, namespace: str) -> bool: ...

    def get_rooms(self, sid: str, namespace: str) -> list: ...

    def eio_sid_from_sid(self, sid: str, namespace: str) -> str | None: ...

    def request_release(self, sid: str, namespace: str) -> None: ...

    def close_socket(self, eio_sid: str) -> None:
        """Close an Engine.IO socket here; return once closed (may block)."""


class RecoveryState:
    """The state a dyno's recovery parts share (see the module's docstring),
    made from :class:`.recovery.Recovery`'s arguments (documented there)."""

    def __init__(self, core: KafkaCore, host: ConnectionHost, options: ConnectionStateRecovery,
                 delivered: Callable[[], dict[tuple[str, int], int]] | None = None) -> None:
        self.core = core
        #: Where delivery stands, when it lags the core's positions (asyncio:
        #: records read but still queued for the loop are not delivered yet).
        self.delivered = delivered
        self.host = host
        self.options = options
        self.owner = core.server_name
        self.log = DeliveryLog(options.window_steps)
        self.log.tag = secrets.token_hex(4)
        reader = SessionReader(core.new_consumer, core.topic_config.name(SESSIONS),
                               keep=min(60.0, options.max_disconnection_duration))
        self.store = SessionStore(self._publish_session, reader, self.owner,
                                  options.max_disconnection_duration)
        core.add_readiness(self.log.ready)
        self.stats: Counter[str] = Counter()
        #: sids whose client announced recovery (a pid or ``csr``).
        self.announced: set[str] = set()
        #: sid -> live events held back while its missed ones are replayed.
        self.replaying: dict[str, list] = {}
        #: sid -> where its replay ends: this dyno's positions and emit
        #: counter when it began (:meth:`.recovery.Recovery.begin`).
        self.replay_ends: dict[str, Any] = {}
        #: connection -> its pid, for every connection here with a session.
        self.pids: dict[tuple[str, str], str] = {}
        #: connections recovered here.
        self.recovered: set[tuple[str, str]] = set()
        #: recovered connections -> the dyno that held them before.
        self.taken: dict[tuple[str, str], str] = {}
        #: connection -> where it came and joined its rooms (slot -> position).
        self.joins: dict[tuple[str, str], dict[tuple[str, int], int]] = {}

    def _publish_session(self, key: str, value: bytes | None, partition: int) -> Any:
        return self.core.publish(SESSIONS, key, value, partition=partition)

    def positions(self) -> dict[tuple[str, int], int]:
        """This dyno's delivery position on every partition of the send topics."""
        return self.delivered() if self.delivered else self.core.positions(SEND_BASES)

    def await_readback(self, timeout: float) -> bool:
        """Flush this dyno's records and wait until its consumers have read
        them back, so that its positions cover everything it delivered."""
        deadline = time.monotonic() + timeout
        try:
            self.core.flush(timeout)
        except Exception:
            logger.warning("could not flush before saving sessions", exc_info=True)
        # Where its records landed, known here (own_acked) once answered.
        self.log.wait_acks(max(0.0, deadline - time.monotonic()), self.core.runtime.sleep)
        while True:
            positions = self.positions()
            # A partition not read here (another dyno's home) has nothing to wait for.
            behind = [s for s, off in self.log.own_acked.items()
                      if positions.get(s, off + 1) <= off]
            if not behind:
                return True
            if time.monotonic() > deadline:
                logger.warning("own records not read back in %.1f s on %s", timeout, behind)
                return False
            self.core.runtime.sleep(0.005)

    def liveness(self) -> float:
        """Seconds without a new checkpoint after which a dyno counts as
        dead: three of its intervals, a second, and a slow round's
        (:data:`SLOW_ROUND`)."""
        return 3 * self.options.checkpoint_interval + 1 + SLOW_ROUND
