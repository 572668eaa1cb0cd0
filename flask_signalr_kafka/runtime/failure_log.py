"""Logging for a loop that keeps failing while Kafka is away: the first
failure with its traceback, then one line a minute, then one when it works
again, so that an outage does not bury the log under identical tracebacks."""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

#: Seconds between the lines of a failure that goes on.
REPEAT_EVERY = 60.0


class FailureLog:
    """The log of one loop's failures.

    :param logger: where the lines go.
    :param what: what failed, as the lines name it ("fleet heartbeat").
    :param every: seconds between the lines while the failure goes on.
    :param clock: a monotonic clock (tests pass their own).
    """

    def __init__(self, logger: logging.Logger, what: str, every: float = REPEAT_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._what = what
        self._every = every
        self._clock = clock
        self._since: float | None = None  # when the failures began
        self._last = 0.0  # when the last line was written
        self._count = 0  # failures since the last line

    def failed(self) -> None:
        """Call from the ``except`` block of a failure."""
        now = self._clock()
        if self._since is None:
            self._since = self._last = now
            self._count = 0
            self._logger.exception("%s failed", self._what)
            return
        self._count += 1
        if now - self._last >= self._every:
            self._logger.warning("%s still failing after %.0f s (%d more failures): %s",
                                 self._what, now - self._since, self._count, _error_line())
            self._last, self._count = now, 0

    def succeeded(self) -> None:
        """Call after a success: says once that the failures are over."""
        if self._since is not None:
            self._logger.warning("%s works again after %.0f s", self._what,
                                 self._clock() - self._since)
            self._since = None


def _error_line() -> str:
    error = sys.exc_info()[1]
    return f"{type(error).__name__}: {error}" if error is not None else "no exception"
