"""The rooms of each connection, kept beside python-socketio's rooms.

python-socketio's ``BaseManager`` keeps ``rooms[namespace][room] -> members``
and finds a connection's rooms, at each ``get_rooms`` and disconnect, by
scanning every room of the namespace: a cost that grows with the server's
connections, and a quadratic connect storm once connection state recovery
asks for a connection's rooms at each session write. :class:`RoomIndex`
keeps them per connection too.
"""
from __future__ import annotations

from typing import Any

from . import socketio_hooks


class RoomIndex:
    """A mixin for a python-socketio ``Manager``: ``get_rooms`` and
    ``basic_disconnect`` from a per-connection index; subclasses hear of
    every change through :meth:`_room_changed`."""

    def __init__(self) -> None:
        super().__init__()
        #: (namespace, sid) -> its rooms (None: the namespace), in join order.
        self._rooms_of: dict[tuple[str, str], dict[str | None, None]] = {}

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: Any = None) -> Any:
        result = super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._rooms_of.setdefault((namespace, sid), {})[room] = None
        self._room_changed(sid, namespace, room, True)
        return result

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> Any:
        result = super().basic_leave_room(sid, namespace, room)
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.pop(room, None)
            if not rooms:
                del self._rooms_of[(namespace, sid)]
        self._room_changed(sid, namespace, room, False)
        return result

    def get_rooms(self, sid: str, namespace: str) -> list:
        """The rooms ``sid`` is in, as python-socketio's, without its scan."""
        # Copied first, in one C call: recovery's threads read it too.
        rooms = list(self._rooms_of.get((namespace, sid), ()))
        return [room for room in rooms if room is not None]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        socketio_hooks.basic_disconnect(self, sid, namespace,
                                        list(self._rooms_of.get((namespace, sid), ())))

    def _room_changed(self, sid: str, namespace: str, room: Any, joined: bool) -> None:
        """``sid`` joined (``joined``) or left ``room``."""
