"""Checks of the manager's own arguments, with messages that say what to pass."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..wire import hub_protocol


def positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 < value < math.inf
    ):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def check_instance(value: Any, cls: type, name: str) -> Any:
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, not {type(value).__name__}")
    return value


def check_protocols(protocols: Iterable[str]) -> tuple[str, ...]:
    if isinstance(protocols, str):
        protocols = (protocols,)
    chosen = tuple(dict.fromkeys(protocols))
    unknown = [p for p in chosen if p not in hub_protocol.PROTOCOLS]
    if unknown:
        raise ValueError(
            f"hub_protocols {unknown} unknown: use {list(hub_protocol.PROTOCOLS)}"
        )
    if hub_protocol.JSON not in chosen:
        chosen = (hub_protocol.JSON,) + chosen  # .NET aborts clients whose frame is missing
    return chosen


def check_home(value: Any) -> bool | int:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value > 0:
        return value
    raise ValueError(f"home_partitions must be True, False or a positive int, not {value!r}")
