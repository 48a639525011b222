"""Column types that mean the same on PostgreSQL and SQLite.

PostgreSQL gets its native types (uuid, jsonb, timestamptz, text[]); SQLite gets the
nearest portable ones, chosen so that plain SQL on the file stays readable: ids as the
usual 36-character text, JSON as text, times as fixed-width UTC text
(``2026-11-22 18:25:58.123456``: sorts correctly and SQLite's date functions read it).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import DateTime, Dialect, String, Text, TypeDecorator, Uuid
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import TypeEngine

from eventlog.events import error_to_json

__all__ = [
    "JSONText",
    "JsonType",
    "TagsType",
    "UTCDateTime",
    "UUIDType",
    "json_default",
    "json_dumps",
    "json_loads",
]


def json_default(value: Any) -> Any:
    """What JSON holds for a value orjson cannot serialise itself.

    orjson already writes datetime and date (ISO 8601), UUID (text), dataclasses
    (objects), enums (their value) and numpy arrays. Beyond those: sets and tuples become
    arrays, bytes text (invalid UTF-8 replaced), Decimal its exact decimal text, a
    pydantic model its ``model_dump(mode="json")``, an exception
    ``{"type", "message", "traceback"}``, a timedelta its seconds, and anything else its
    ``repr``, rather than failing the whole batch.
    """
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, BaseException):
        return error_to_json(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        try:
            return dump(mode="json")
        except Exception:
            return repr(value)
    return repr(value)


_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
# orjson takes twice as long with OPT_NON_STR_KEYS (measured: 0.84 against 0.41 µs for a
# typical request or response body), and nearly every body has text keys only: without
# it first, with it when a key is not text (orjson refuses such a dict without it).
_TEXT_KEYS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def json_dumps(value: Any) -> str:
    """Serialise to JSON text for a JSON/jsonb column."""
    try:
        return orjson.dumps(value, default=json_default, option=_TEXT_KEYS_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return orjson.dumps(value, default=json_default, option=_OPTIONS).decode()


def json_loads(text: str | bytes) -> Any:
    """Parse JSON text read from a JSON column."""
    return orjson.loads(text)


class UUIDType(TypeDecorator[uuid.UUID]):
    """Native ``uuid`` on PostgreSQL, 36-character text elsewhere."""

    impl = String(36)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Uuid(as_uuid=True))
        return dialect.type_descriptor(String(36))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> uuid.UUID | None:
        if value is None or isinstance(value, uuid.UUID):
            return value
        return uuid.UUID(value)


class UTCDateTime(TypeDecorator[datetime]):
    """``timestamptz`` on PostgreSQL; on SQLite, UTC text with microseconds.

    Always binds and returns aware UTC datetimes; a naive input is taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        elif value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JSONText(TypeDecorator[Any]):
    """JSON stored in a ``TEXT`` column: SQLite gives a column declared ``JSON`` numeric
    affinity, which would turn the JSON text ``1`` into the integer 1 (and big integers
    into floats). SQLite's json functions read the text as usual."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else json_dumps(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json_loads(value)


JsonType = JSONText().with_variant(JSONB(none_as_null=True), "postgresql")
"""JSON text on SQLite, ``jsonb`` on PostgreSQL; Python ``None`` is SQL NULL."""

TagsType = JSONText().with_variant(ARRAY(Text), "postgresql")
"""A list of strings: ``text[]`` on PostgreSQL, a JSON array on SQLite."""
