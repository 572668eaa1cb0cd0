"""Fleet queries under way: an id each, the servers still to answer, what
came, and a wait bounded by the query's timeout.

A query expects one answer from every server alive when it was asked. It
is done when each has answered or stopped counting (:meth:`FleetQueries.gone`,
as Node's ``removeNode`` settles a request), and its caller then gets every
answer; after its timeout, :class:`.FleetTimeoutError` with what did come.
Ids come from one per-server counter: an answer names the asker and the id.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import FleetTimeoutError


class _Query:
    def __init__(self, waiting_for: Iterable[str], responses: list) -> None:
        self.missing = set(waiting_for)
        self.answered: set[str] = set()
        self.responses = responses
        self.done = threading.Event()
        if not self.missing:
            self.done.set()


class FleetQueries:
    """The queries this server asked that still wait for answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # callers and the consumer
        self._ids = itertools.count(1)
        self._pending: dict[int, _Query] = {}

    def ask(self, publish: Callable[[int], Any], waiting_for: Iterable[str], timeout: float,
            what: str, responses: list | None = None) -> list:
        """Reserve an id, ``publish(id)`` the request, and block until every
        server of ``waiting_for`` answered or stopped counting.

        :param responses: what the answers are added to (this server's own).
        :raises FleetTimeoutError: not all answered within ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        query = _Query(waiting_for, [] if responses is None else responses)
        with self._lock:
            request_id = next(self._ids)
            self._pending[request_id] = query
        try:
            publish(request_id)
            if not query.done.wait(max(0.0, deadline - time.monotonic())):
                with self._lock:
                    missing = frozenset(query.missing)
                    responses = list(query.responses)
                raise FleetTimeoutError(
                    f"{what}: {len(missing)} of {len(missing) + len(query.answered)} servers "
                    f"did not answer within {timeout:g} s ({', '.join(sorted(missing))})",
                    responses, missing)
            with self._lock:
                return list(query.responses)
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    def answer(self, request_id: int, server: str, values: list, last: bool = True) -> bool:
        """``server``'s answer, or a part of it (``last``: its final part);
        ``False`` when no query waits for it (late, or a second answer)."""
        with self._lock:
            query = self._pending.get(request_id)
            if query is None or server in query.answered:
                return False
            query.responses.extend(values)
            if not last:
                return True
            query.answered.add(server)
            query.missing.discard(server)
            if not query.missing:
                query.done.set()
        return True

    def gone(self, server: str) -> None:
        """``server`` no longer counts: no query waits for it any longer."""
        with self._lock:
            for query in self._pending.values():
                query.missing.discard(server)
                if not query.missing:
                    query.done.set()

    def __len__(self) -> int:
        return len(self._pending)
