"""Values as the drivers take them, per dialect: the write path skips SQLAlchemy's types.

The writer hands rows straight to asyncpg (binary COPY, executemany) and to sqlite3, so
each column's Python value is converted once, here, to what the driver expects and what
:mod:`eventlog.types` reads back: on PostgreSQL JSON as text for ``jsonb`` and everything
else as is; on SQLite ids as text, JSON as text, and times as the fixed-width UTC text
that SQLAlchemy's SQLite ``DATETIME`` uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table

from eventlog.types import JsonType, TagsType, UTCDateTime, UUIDType, json_dumps

__all__ = ["RowEncoder", "row_encoder"]

RowEncoder = Callable[[Sequence[Any]], list[Any]]


def _postgres_time(value: datetime) -> datetime:
    # asyncpg would take a naive datetime as the machine's local time; eventlog says UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _sqlite_time(value: datetime) -> str:
    if value.tzinfo is not UTC:  # events hold UTC already, unless changed after creation
        value = value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return value.isoformat(" ", "microseconds")[:26]  # without the "+00:00"


def _encoder(column_type: Any, dialect: str) -> Callable[[Any], Any] | None:
    """The conversion of one column's non-null values, or None to pass them as they are."""
    if column_type is JsonType:
        return json_dumps  # jsonb takes JSON text; SQLite stores the text
    if column_type is TagsType:
        return None if dialect == "postgresql" else json_dumps  # text[] takes the list
    if isinstance(column_type, UUIDType):
        return None if dialect == "postgresql" else str
    if isinstance(column_type, UTCDateTime):
        return _postgres_time if dialect == "postgresql" else _sqlite_time
    return None


def row_encoder(table: Table, dialect: str, columns: Sequence[str]) -> RowEncoder:
    """Turn a tuple of Python values (in ``columns`` order) into driver values."""
    conversions = [
        (i, convert)
        for i, name in enumerate(columns)
        if (convert := _encoder(table.c[name].type, dialect)) is not None
    ]

    def encode(values: Sequence[Any]) -> list[Any]:
        encoded = list(values)
        for i, convert in conversions:
            value = encoded[i]
            if value is not None:
                encoded[i] = convert(value)
        return encoded

    return encode
