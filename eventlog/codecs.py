"""Values as the drivers take them, per dialect: the write path skips SQLAlchemy's types.

The writer hands rows straight to asyncpg (binary COPY, executemany) and to sqlite3, so
each column's Python value is converted once, here, to what the driver expects and what
:mod:`eventlog.types` reads back: on PostgreSQL JSON as text for ``jsonb`` and everything
else as is; on SQLite ids as text, JSON as text, and times as the fixed-width UTC text
that SQLAlchemy's SQLite ``DATETIME`` uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table

from eventlog.types import JsonType, TagsType, UTCDateTime, UUIDType, json_dumps

__all__ = ["RowEncoder", "row_encoder"]

RowEncoder = Callable[[Mapping[str, Any]], tuple[Any, ...]]


def _json(value: Any) -> str | None:
    return None if value is None else json_dumps(value)


def _sqlite_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None and value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_uuid(value: Any) -> str | None:
    return None if value is None else str(value)


def _encoder(column_type: Any, dialect: str) -> Callable[[Any], Any] | None:
    """The conversion for one column, or None when the value goes to the driver as is."""
    if column_type is JsonType:
        return _json  # jsonb takes JSON text; SQLite stores the text
    if column_type is TagsType:
        return None if dialect == "postgresql" else _json  # text[] takes the list
    if isinstance(column_type, UUIDType):
        return None if dialect == "postgresql" else _sqlite_uuid
    if isinstance(column_type, UTCDateTime):
        return None if dialect == "postgresql" else _sqlite_time
    return None


def row_encoder(table: Table, dialect: str, columns: list[str] | None = None) -> RowEncoder:
    """Turn a row dict into the tuple of driver values, in ``columns`` order."""
    names = columns if columns is not None else [c.name for c in table.columns]
    steps = [(name, _encoder(table.c[name].type, dialect)) for name in names]

    def encode(row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(
            row.get(name) if convert is None else convert(row.get(name)) for name, convert in steps
        )

    return encode
