"""The offsets of connection state recovery: the string a dyno appends to
each event for a client that takes part, and that the client sends back
when it reconnects (socket.io-client keeps the last one it received).

Two shapes, both starting with the dyno's tag and its delivery step:

- ``"<tag>.<step>"`` (short): which step the client got; the dyno's saved
  window or its checkpoint's tail says what came after it.
- ``"<tag>.<step>.<ref>.<emits>.<slot>+<n>,..."`` (full): everything the dyno
  had delivered by that step, as the difference from its reference point
  ``ref`` (a durable record of its positions in the sessions topic):
  ``emits`` more of its own emits, and ``n`` more records on each listed
  slot (``a``/``c``/``g``/``u`` for send-all, send-conn, send-group,
  send-user, then the partition). A dyno that dies leaves its reference
  points behind, so a client's full offset says exactly what it had even
  when its dyno was killed after sending it.
"""
from __future__ import annotations

from typing import NamedTuple

from .addressing import SEND_ALL, SEND_CONN, SEND_GROUP, SEND_USER

#: A slot of the send topics: (topic base name, partition).
Slot = tuple[str, int]

_CODES = {SEND_ALL: "a", SEND_CONN: "c", SEND_GROUP: "g", SEND_USER: "u"}
_BASES = {code: base for base, code in _CODES.items()}


class Offset(NamedTuple):
    """A parsed offset; ``ref`` is ``None`` for a short one."""

    tag: str
    step: int
    ref: int | None = None
    emits: int = 0
    slots: dict[Slot, int] = {}


def short(tag: str, step: int) -> str:
    return f"{tag}.{step}"


def full(tag: str, step: int, ref: int, emits: int, slots: dict[Slot, int]) -> str:
    moved = ",".join(f"{_CODES[base]}{partition}+{n}" for (base, partition), n in slots.items())
    return f"{tag}.{step}.{ref}.{emits}.{moved}"


def parse(text: object) -> Offset | None:
    """The offset a client sent, or ``None`` for anything that is not one
    of ours (a client's offset is untrusted input)."""
    if not isinstance(text, str) or len(text) > 4096:
        return None
    parts = text.split(".")
    if len(parts) == 2 and parts[1].isdigit():
        return Offset(parts[0], int(parts[1]))
    if len(parts) != 5 or not all(p.isdigit() for p in parts[1:4]):
        return None
    slots = {}
    for item in filter(None, parts[4].split(",")):
        code, partition, plus, n = item[:1], *item[1:].partition("+")
        if code not in _BASES or not plus or not partition.isdigit() or not n.isdigit():
            return None
        slots[(_BASES[code], int(partition))] = int(n)
    return Offset(parts[0], int(parts[1]), int(parts[2]), int(parts[3]), slots)
