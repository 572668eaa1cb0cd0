"""The fleet calls of a manager (docs/fleet.md): a mixin whose methods
start the manager if need be and hand over to its :class:`.fleet.Fleet`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FleetCalls:
    """``fetch_sockets``, ``sockets_join``, ``sockets_leave``,
    ``disconnect_sockets``, ``server_count``, ``server_side_emit`` and
    ``on_server_event`` for a manager with ``fleet`` and ``_start()``."""

    fleet: Any

    def fetch_sockets(self, room: Any = None, namespace: str = "/",
                      timeout: float = 5.0) -> list:
        """Every connection in ``room`` (``None``: all; a list: their union;
        or ``user(x)``) on every server, as :class:`.RemoteSocket` objects.

        :raises FleetTimeoutError: a live server did not answer in time;
            its ``responses`` hold what came."""
        self._start()
        return self.fleet.fetch_sockets(room, namespace or "/", timeout)

    def sockets_join(self, rooms: Any, room: Any = None, namespace: str = "/") -> None:
        """Every connection in ``room``, wherever it is, joins ``rooms``."""
        self._start()
        self.fleet.sockets_join(rooms, room, namespace or "/")

    def sockets_leave(self, rooms: Any, room: Any = None, namespace: str = "/") -> None:
        """Every connection in ``room``, wherever it is, leaves ``rooms``."""
        self._start()
        self.fleet.sockets_leave(rooms, room, namespace or "/")

    def disconnect_sockets(self, room: Any = None, namespace: str = "/") -> None:
        """Every connection in ``room`` is disconnected by its server."""
        self._start()
        self.fleet.disconnect_sockets(room, namespace or "/")

    def server_count(self) -> int:
        """How many servers of the fleet are alive, this one included."""
        return self.fleet.server_count()

    def server_side_emit(self, event: str, *args: Any, namespace: str = "/",
                         callback: Callable[[list], Any] | None = None,
                         timeout: float = 5.0) -> None:
        """``event`` to the :meth:`on_server_event` handlers of every other
        server; ``callback(responses)`` with their return values.

        :raises FleetTimeoutError: with ``callback``, a live server did not
            answer in time."""
        self._start()
        self.fleet.server_side_emit(event, *args, namespace=namespace or "/",
                                    callback=callback, timeout=timeout)

    def on_server_event(self, event: str, handler: Callable[..., Any],
                        namespace: str = "/") -> None:
        """Run ``handler(*args)`` for ``event`` from another server's
        :meth:`server_side_emit`; its return value is the answer."""
        self.fleet.on_server_event(event, handler, namespace or "/")
