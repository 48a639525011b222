"""Argument checks shared by the public entry points, each naming the parameter and the
rule: the same rule reads the same everywhere (``ValueError`` for a bad value)."""

from __future__ import annotations

import math
from typing import overload

__all__ = ["positive_int", "seconds", "timeout"]


def seconds(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as finite seconds, >= 0 (or > 0 with ``positive``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        rule = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number of seconds {rule}, got {value!r}")
    return float(value)


def timeout(name: str, value: object) -> float | None:
    """A deadline in seconds (>= 0), or None (or infinity) for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0):
        raise ValueError(f"{name} must be seconds >= 0 or None, got {value!r}")
    return None if math.isinf(value) else float(value)


@overload
def positive_int(name: str, value: object) -> int: ...
@overload
def positive_int(name: str, value: object, *, optional: bool) -> int | None: ...
def positive_int(name: str, value: object, *, optional: bool = False) -> int | None:
    """``value`` as an int >= 1 (or None, with ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        kind = "a positive int or None" if optional else "a positive int"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value
