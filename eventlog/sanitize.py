"""Repair messy values on their way to the database, and say what was repaired.

Ordinary messy data must not become a failed batch: PostgreSQL rejects a NUL character
in text or JSON, neither driver encodes a lone surrogate, JSON cannot hold integers past
64 bits or nesting past orjson's depth, and an integer column holds 32 bits. Each such
value is repaired here, in a documented way, and the repair is written down (the row's
``meta`` or ``info`` gets ``"eventlog_repairs": [...]``) and counted (``repaired``):

- NUL characters are removed from text and from every string and key in JSON;
- lone surrogates become U+FFFD;
- JSON integers outside 64 bits become their decimal string;
- JSON nested deeper than 100 levels is cut there, the rest kept as its ``repr`` text;
- JSON larger than ``max_json_bytes`` (default 1 MiB) is replaced by
  ``{"eventlog_truncated": {"original_bytes": N, "kept_bytes": K, "head": "..."}}``;
- integer columns: a value outside 32 bits, or not an integer, becomes NULL (a string of
  digits or a whole float is converted); a non-bool flag is taken by its truth value;
- text columns: a non-string is stored as ``str(value)``.

On SQLite, which stores whatever it is given, every value is checked (inline checks;
the cleaning runs only when a check fails). PostgreSQL refuses such values itself, so
there the common case skips the checks, and a batch it refuses (or whose values do not
encode) is encoded again with them and retried once: the repairs are the same on both.
"""

from __future__ import annotations

import math
from typing import Any, Final

import orjson

from eventlog.types import json_dumps

__all__ = [
    "MAX_INDEXED_TEXT_BYTES",
    "MAX_JSON_BYTES",
    "clean_bool",
    "clean_indexed_text",
    "clean_int",
    "clean_json",
    "clean_text",
    "repair_json",
]

MAX_JSON_BYTES = 1 << 20
_INT32 = (-(2**31), 2**31 - 1)
_JSON_INT = (-(2**63), 2**64 - 1)
_MAX_DEPTH = 100


def _fix_str(value: str) -> tuple[str, bool]:
    fixed = value.replace("\x00", "") if "\x00" in value else value
    if not fixed.isascii():
        try:
            fixed.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates to U+FFFD; a split but valid pair is joined again.
            fixed = fixed.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return fixed, fixed is not value


def _walk(value: Any, depth: int, notes: set[str]) -> Any:
    if isinstance(value, str):
        fixed, changed = _fix_str(value)
        if changed:
            notes.add("text repaired (NUL removed or lone surrogate replaced)")
        return fixed
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if not _JSON_INT[0] <= value <= _JSON_INT[1]:
            notes.add("integer beyond 64 bits stored as a string")
            return str(value)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= _MAX_DEPTH:
        notes.add(f"nesting deeper than {_MAX_DEPTH} levels cut")
        return repr(value)[:1000]
    if isinstance(value, dict):
        return {
            _walk(str(k) if not isinstance(k, str) else k, depth + 1, notes): _walk(
                v, depth + 1, notes
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_walk(item, depth + 1, notes) for item in value]
    return value  # left to json_dumps' conversions (datetime, UUID, dataclass, str())


def repair_json(value: Any) -> Any:
    """``value`` with the repairs :func:`clean_json` makes, without noting them."""
    return _walk(value, 0, set())


def clean_json(value: Any, column: str, repairs: list[str], max_bytes: int) -> str:
    """``value`` as JSON text the database accepts, repaired if it must be."""
    try:
        text = json_dumps(value)
        repaired = "\\u0000" in text  # an escaped NUL (or a literal "\\u0000": harmless)
    except (orjson.JSONEncodeError, RecursionError, UnicodeEncodeError, TypeError):
        repaired = True
    if repaired:
        notes: set[str] = set()
        text = json_dumps(_walk(value, 0, notes))
        repairs.extend(f"{column}: {note}" for note in sorted(notes))
    # A character is at most 4 bytes: only a long text needs measuring in bytes.
    size = len(text) if len(text) * 4 <= max_bytes else len(text.encode("utf-8"))
    if size > max_bytes:
        head = text[: max(0, max_bytes // 2)]
        text = json_dumps(
            {
                "eventlog_truncated": {
                    "original_bytes": size,
                    "kept_bytes": len(head.encode("utf-8")),
                    "head": head,
                }
            }
        )
        repairs.append(f"{column}: {size} bytes of JSON over the {max_bytes}-byte cap, truncated")
    return text


def clean_text(value: Any, column: str, repairs: list[str]) -> str:
    """``value`` as text the database accepts."""
    if not isinstance(value, str):
        repairs.append(f"{column}: {type(value).__name__} stored as text")
        value = str(value)
    fixed, changed = _fix_str(value)
    if changed:
        repairs.append(f"{column}: NUL removed or lone surrogate replaced")
    return fixed


MAX_INDEXED_TEXT_BYTES: Final = 1000
"""An indexed text column (``user_id``, ``workflow_id``, a run's ``name``...) keeps at
most this many bytes: PostgreSQL refuses a B-tree entry over 2,704 bytes, and a run's
index has two such columns."""


def clean_indexed_text(value: Any, column: str, repairs: list[str]) -> str:
    """:func:`clean_text`, cut to :data:`MAX_INDEXED_TEXT_BYTES` (noted)."""
    text = clean_text(value, column, repairs)
    if len(text) * 4 > MAX_INDEXED_TEXT_BYTES:
        data = text.encode("utf-8")
        if len(data) > MAX_INDEXED_TEXT_BYTES:
            repairs.append(
                f"{column}: {len(data)} bytes cut to {MAX_INDEXED_TEXT_BYTES} (an indexed column)"
            )
            text = data[:MAX_INDEXED_TEXT_BYTES].decode("utf-8", "ignore")
    return text


def clean_int(value: Any, column: str, repairs: list[str]) -> int | None:
    """``value`` as an integer a 32-bit column holds, else None (noted)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if _INT32[0] <= value <= _INT32[1]:
            return value
        repairs.append(f"{column}: {value} is outside the 32-bit range, stored as NULL")
        return None
    converted: int | None = None
    if (
        (isinstance(value, float) and value.is_integer())
        or (isinstance(value, str) and value.strip().lstrip("+-").isdigit())
        or isinstance(value, bool)
    ):
        converted = int(value)
    if converted is not None and _INT32[0] <= converted <= _INT32[1]:
        repairs.append(f"{column}: {type(value).__name__} {value!r} stored as an integer")
        return converted
    repairs.append(f"{column}: {type(value).__name__} {value!r} is not an integer, stored as NULL")
    return None


def clean_bool(value: Any, column: str, repairs: list[str]) -> bool:
    """``value`` as a boolean (its truth value, noted, for anything but a bool)."""
    if isinstance(value, bool):
        return value
    repairs.append(f"{column}: {type(value).__name__} {value!r} stored as {bool(value)}")
    return bool(value)
