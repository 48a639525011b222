"""Entries as self-describing JSON records, and back: for the spool and dead letters.

The workflow wire format (``to_json``) leaves out what a client may not say
(``internal_metadata``) and has no form for an LLM call at all, so entries that wait on
disk or in the dead-letter table need a form of their own that gives back the very same
entry: ``{"kind": "<class>", <every field>}``, with ids and times as text, durations as
whole microseconds, and metadata as objects. JSON values (requests, responses, data)
take the conversions the database write takes (see :func:`eventlog.types.json_dumps`),
so a value written from a record is what the entry would have written itself; strings
that UTF-8 cannot hold are repaired first (see :mod:`eventlog.sanitize`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any, Final

import orjson

from eventlog.events import (
    ENTRY_TYPES,
    InternalMetadata,
    ProxyLogEntry,
    RequestMetadata,
)
from eventlog.exceptions import InvalidEventError
from eventlog.sanitize import repair_json
from eventlog.types import json_default

__all__ = ["entry_from_record", "entry_to_record", "record_kind"]

_KINDS: Final[dict[str, type[ProxyLogEntry]]] = {cls.__name__: cls for cls in ENTRY_TYPES}
_CLASSES: Final = frozenset(ENTRY_TYPES)
_UUID_FIELDS: Final = frozenset({"id", "run_id", "step_id", "parent_step"})
_TIME_FIELDS: Final = frozenset({"timestamp", "time"})
_DURATION_FIELDS: Final = frozenset({"latency", "total_latency", "time_to_first_token"})
_METADATA: Final[dict[str, type[RequestMetadata] | type[InternalMetadata]]] = {
    "metadata": RequestMetadata,
    "internal_metadata": InternalMetadata,
}
_OPTIONS: Final = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_MICROSECOND: Final = timedelta(microseconds=1)
# Field names per class, looked up once (dataclasses.fields() per entry is slow).
_NAMES: Final[dict[type, tuple[str, ...]]] = {
    cls: tuple(f.name for f in fields(cls))
    for cls in (*ENTRY_TYPES, RequestMetadata, InternalMetadata)
}
_NAME_SETS: Final = {cls: frozenset(names) for cls, names in _NAMES.items()}


def _metadata(value: RequestMetadata | InternalMetadata) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _NAMES[type(value)]:
        item = getattr(value, name)
        if item is not None:
            out[name] = str(item) if isinstance(item, uuid.UUID) else item
    return out


def _kind_of(cls: type) -> type:
    """The entry class a record names: a subclass is kept as the class it extends."""
    for base in cls.__mro__:
        if base in _CLASSES:
            return base
    raise TypeError(f"not a log entry: {cls.__name__}")


def entry_to_record(entry: ProxyLogEntry) -> bytes:
    """``entry`` as one line of JSON (no newline in it), which
    :func:`entry_from_record` turns back into an equal entry."""
    cls = type(entry)
    if cls not in _CLASSES:
        cls = _kind_of(cls)
    record: dict[str, Any] = {"kind": cls.__name__}
    for name in _NAMES[cls]:
        value = getattr(entry, name)
        if value is None:
            continue
        if name in _UUID_FIELDS:
            value = str(value)
        elif name in _TIME_FIELDS:
            value = value.isoformat()
        elif name in _DURATION_FIELDS:
            value = value // _MICROSECOND
        elif name in _METADATA:
            value = _metadata(value)
        elif isinstance(value, tuple):
            value = list(value)
        record[name] = value
    try:
        return orjson.dumps(record, default=json_default, option=_OPTIONS)
    except (orjson.JSONEncodeError, RecursionError, UnicodeEncodeError, TypeError):
        # A lone surrogate, nesting past orjson's limit, an integer past 64 bits: the
        # repairs the database write would make anyway (and note on the row).
        return orjson.dumps(repair_json(record), default=json_default, option=_OPTIONS)


def record_kind(record: Mapping[str, Any]) -> str:
    """The entry class named by a decoded record (``"ProxyLogEvent"``, ...)."""
    kind = record.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise InvalidEventError("kind", f"must name an entry class, got {kind!r}")
    return kind


def entry_from_record(record: bytes | str | Mapping[str, Any]) -> ProxyLogEntry:
    """The entry a record describes; :class:`~eventlog.InvalidEventError` if it is not one."""
    if not isinstance(record, Mapping):
        try:
            record = orjson.loads(record)
        except orjson.JSONDecodeError as err:
            raise InvalidEventError("", f"is not JSON: {err}") from None
        if not isinstance(record, Mapping):
            raise InvalidEventError("", "must be a JSON object")
    cls = _KINDS[record_kind(record)]
    values: dict[str, Any] = {}
    names = _NAME_SETS[cls]
    for name, value in record.items():
        if name == "kind" or name not in names or value is None:
            continue
        try:
            if name in _UUID_FIELDS:
                value = uuid.UUID(value)
            elif name in _TIME_FIELDS:
                value = datetime.fromisoformat(value)
            elif name in _DURATION_FIELDS:
                value = timedelta(microseconds=value)
            elif name in _METADATA:
                value = _METADATA[name].from_dict(value)
        except (TypeError, ValueError, AttributeError) as err:
            raise InvalidEventError(
                name, f"is not valid in a {cls.__name__} record: {err}"
            ) from None
        values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise InvalidEventError("", f"is not a valid {cls.__name__} record: {err}") from None
