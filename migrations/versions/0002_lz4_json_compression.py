"""lz4 compression for the large JSON columns on PostgreSQL

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Request and response bodies are mostly a few kilobytes of JSON: PostgreSQL compresses
each such value on insert, and with its default pglz much of the server's time in a bulk
insert goes to compression attempts. lz4 compresses several times faster for a slightly
larger result, and decompresses faster too. Only new values are affected. Skipped on
SQLite, and on a PostgreSQL built without lz4 (older than 14, or compiled without it).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {
    "chronicle_events": ("chat_request", "chat_response", "error", "meta", "response_meta"),
    "chronicle_runs": ("input", "output", "info"),
    "chronicle_steps": ("input", "output", "info"),
}


def _lz4_available() -> bool:
    if op.get_context().dialect.name != "postgresql":
        return False
    bind = op.get_bind()
    found = bind.execute(
        sa.text(
            "SELECT 1 FROM pg_settings "
            "WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
        )
    ).first()
    return found is not None


def _set(method: str) -> None:
    if not _lz4_available():
        return
    for table, columns in COLUMNS.items():
        changes = ", ".join(f"ALTER COLUMN {c} SET COMPRESSION {method}" for c in columns)
        op.execute(f"ALTER TABLE {table} {changes}")


def upgrade() -> None:
    _set("lz4")


def downgrade() -> None:
    _set("default")
