"""Connection state recovery's figures for ``mgr.stats()`` and Prometheus
(:mod:`.recovery` counts them; the managers add these families to their
:class:`.metrics.Metrics`)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..runtime.stats import COUNTER, GAUGE, Family

if TYPE_CHECKING:
    from .recovery import Recovery


def metric_families(recovery_of: Callable[[], Recovery | None]) -> list[Family]:
    """Recovery's figures; ``recovery_of()`` is the manager's recovery, or
    ``None`` before it starts."""

    def counter(key: str) -> Callable[[], int]:
        return lambda: (r := recovery_of()) and r.stats[key] or 0

    def failed() -> dict:
        r = recovery_of()
        return {} if r is None else {
            (k.split(":", 1)[1],): v for k, v in r.stats.items() if k.startswith("failed:")
        }

    def held() -> dict:
        r = recovery_of()
        if r is None:
            return {("live",): 0, ("read",): 0}
        return {("live",): r.live_sessions, ("read",): r.store.reader.held()}

    return [
        Family("recoveries_attempted", COUNTER,
               "Reconnects that asked for connection state recovery.", (), counter("attempted")),
        Family("recoveries_succeeded", COUNTER, "Connections recovered.", (),
               counter("succeeded")),
        Family("recoveries_failed", COUNTER,
               "Recoveries refused (the client got a new connection), by reason.",
               ("reason",), failed),
        Family("recoveries_from_checkpoint", COUNTER,
               "Recoveries of clients whose dyno died (from its last checkpoint).", (),
               counter("from-checkpoint")),
        Family("recovery_replayed_events", COUNTER, "Missed events sent to recovered clients.",
               (), counter("replayed")),
        Family("sessions_saved", COUNTER, "Sessions this dyno saved at a drop or shutdown.", (),
               counter("saved")),
        Family("sessions_saved_inexact", COUNTER,
               "Saved sessions whose window the dyno no longer knew whole (their "
               "recovery is refused as window-lost; the log says why).", (),
               counter("saved-inexact")),
        Family("recovery_offsets_before_join", COUNTER,
               "Client offsets not taken because they reached back before the "
               "connection came or joined its rooms.", (), counter("offsets-before-join")),
        Family("sessions_records_read", COUNTER,
               "Records this dyno read from the sessions topic for reconnecting clients.",
               (), lambda: (r := recovery_of()) and r.store.reader.records_read or 0),
        Family("sessions_held", GAUGE,
               "Sessions of this dyno's live connections, and those it read for "
               "reconnecting clients.", ("state",), held),
    ]
