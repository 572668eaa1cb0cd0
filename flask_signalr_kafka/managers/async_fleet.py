"""The fleet as a whole for an asyncio manager (docs/fleet.md): the calls
as coroutines, and a :class:`.fleet.FleetHost` whose methods run on the
event loop.

:class:`.fleet.Fleet` answers requests in the fleet consumer's thread and
waits for answers in the caller's. Under asyncio both must stay off the
loop, while the rooms they read and change belong to it: so the calls run
in the manager's blocking threads, and the host hands each room read or
change to the loop and waits for it there.
"""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from ..runtime.loop_bridge import call_on_loop

#: Seconds a fleet thread waits for the loop to run a room read or change.
LOOP_WAIT = 30.0


async def _settle(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    return await result if inspect.isawaitable(result) else result


class LoopHost:
    """The fleet's view of an asyncio manager: every call runs on its loop.

    :param manager: the manager (``get_participants``, ``get_rooms``,
                    ``basic_enter_room``, ``basic_leave_room``, ``server``).
    :param loop: a callable giving the manager's running loop.
    """

    def __init__(self, manager: Any, loop: Callable[[], asyncio.AbstractEventLoop | None]):
        self._manager = manager
        self._loop = loop

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (awaited if it is a coroutine) on the loop, from a
        thread that is not the loop's; its result."""
        return call_on_loop(self._loop(), fn, *args, timeout=LOOP_WAIT)

    def get_participants(self, namespace: str, room: Any) -> Iterable[tuple[str, Any]]:
        return self.run(lambda: list(self._manager.get_participants(namespace, room)))

    def get_rooms(self, sid: str, namespace: str) -> list:
        return self.run(self._manager.get_rooms, sid, namespace)

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: Any = None) -> Any:
        return self.run(self._manager.basic_enter_room, sid, namespace, room, eio_sid)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> Any:
        return self.run(self._manager.basic_leave_room, sid, namespace, room)

    def disconnect_local(self, sid: str, namespace: str) -> None:
        self.run(lambda: self._manager.server.disconnect(sid, namespace=namespace,
                                                        ignore_queue=True))


class AsyncFleetCalls:
    """``fetch_sockets``, ``sockets_join``, ``sockets_leave``,
    ``disconnect_sockets``, ``server_side_emit`` as coroutines (and
    ``server_count``, ``on_server_event``) for an asyncio manager with
    ``fleet``, ``_fleet_loop_host``, ``_blocking``, ``_bind()`` and
    ``_ensure_started()``.
    Each means what :class:`.fleet_calls.FleetCalls`' method of its name
    means."""

    fleet: Any
    _blocking: Any
    _fleet_loop_host: LoopHost

    async def fetch_sockets(self, room: Any = None, namespace: str = "/",
                            timeout: float = 5.0) -> list:
        """Every connection in ``room`` on every server (a coroutine).

        :raises FleetTimeoutError: a live server did not answer in time."""
        self._bind()
        await self._ensure_started()
        return await self._blocking.call(self.fleet.fetch_sockets, room, namespace or "/",
                                         timeout)

    async def sockets_join(self, rooms: Any, room: Any = None, namespace: str = "/") -> None:
        """Every connection in ``room``, wherever it is, joins ``rooms``."""
        self._bind()
        await self._ensure_started()
        await self._blocking.call(self.fleet.sockets_join, rooms, room, namespace or "/")

    async def sockets_leave(self, rooms: Any, room: Any = None, namespace: str = "/") -> None:
        """Every connection in ``room``, wherever it is, leaves ``rooms``."""
        self._bind()
        await self._ensure_started()
        await self._blocking.call(self.fleet.sockets_leave, rooms, room, namespace or "/")

    async def disconnect_sockets(self, room: Any = None, namespace: str = "/") -> None:
        """Every connection in ``room`` is disconnected by its server."""
        self._bind()
        await self._ensure_started()
        await self._blocking.call(self.fleet.disconnect_sockets, room, namespace or "/")

    def server_count(self) -> int:
        """How many servers of the fleet are alive, this one included."""
        return self.fleet.server_count()

    async def server_side_emit(self, event: str, *args: Any, namespace: str = "/",
                               callback: Callable[[list], Any] | None = None,
                               timeout: float = 5.0) -> None:
        """``event`` to the :meth:`on_server_event` handlers of every other
        server; ``callback(responses)`` (a function or a coroutine function)
        runs on the loop with their return values.

        :raises FleetTimeoutError: with ``callback``, a live server did not
            answer in time."""
        self._bind()
        await self._ensure_started()
        responses: list = []
        await self._blocking.call(
            lambda: self.fleet.server_side_emit(
                event, *args, namespace=namespace or "/",
                callback=None if callback is None else responses.append, timeout=timeout))
        if callback is not None:
            await _settle(callback, responses[0])

    def on_server_event(self, event: str, handler: Callable[..., Any],
                        namespace: str = "/") -> None:
        """Run ``handler(*args)`` (a function or a coroutine function) on the
        loop for ``event`` from another server; its result is the answer."""
        if not callable(handler):
            raise TypeError(f"on_server_event needs a callable handler, not {handler!r}")
        host = self._fleet_loop_host
        self.fleet.on_server_event(event, lambda *args: host.run(handler, *args),
                                   namespace or "/")
