"""How a Socket.IO target (``to=``/``room=``) maps to a backplane topic and key.

python-socketio hands the manager one string for a room, a connection id or
(ours) a user; these rules tell them apart without asking other servers:

- ``None``: everyone, on send-all.
- ``user(x)`` (a room named ``user:x``): the user's connections, on send-user
  keyed by ``x``.
- a connection id that this package allocated (``sid~`` + 20 URL-safe base64
  characters): on send-conn keyed by the id, unless it is local.
- anything else: a room, on send-group keyed by its name.
"""
from __future__ import annotations

import re

USER_PREFIX = "user:"
SID_PREFIX = "sid~"
_SID_SHAPE = re.compile(r"sid~[A-Za-z0-9_-]{20}\Z")

SEND_ALL = "send-all"
SEND_CONN = "send-conn"
SEND_GROUP = "send-group"
SEND_USER = "send-user"


def user(user_id: str) -> str:
    """The room that holds every connection of ``user_id``.

    A connection joins it (``join_room(user(user_id))``, normally in the
    connect handler) and ``emit(..., to=user(user_id))`` then reaches all of
    the user's connections on every server, .NET ones included.
    """
    if not isinstance(user_id, str) or not user_id:
        raise TypeError(f"user() takes a non-empty str user id, not {user_id!r}")
    return USER_PREFIX + user_id


def user_id_of(room: str) -> str | None:
    """The user id if ``room`` is a :func:`user` room, else ``None``."""
    if isinstance(room, str) and room.startswith(USER_PREFIX) and len(room) > len(USER_PREFIX):
        return room[len(USER_PREFIX) :]
    return None


def make_sid(random_id: str) -> str:
    """A connection id in the shape :func:`looks_like_sid` recognises."""
    return SID_PREFIX + random_id


def looks_like_sid(target: object) -> bool:
    """Whether ``target`` has the shape of a connection id we allocate."""
    return isinstance(target, str) and _SID_SHAPE.match(target) is not None


def route(target: str | None) -> tuple[str, str | None]:
    """``(topic base name, key)`` of a target that is not a local connection."""
    if target is None:
        return SEND_ALL, None
    uid = user_id_of(target)
    if uid is not None:
        return SEND_USER, uid
    if looks_like_sid(target):
        return SEND_CONN, target
    return SEND_GROUP, target
