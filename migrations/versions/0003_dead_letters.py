"""eventlog_dead_letters: entries the database refused for good

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

A batch the database refuses for a non-transient reason is split until the refused
entries are isolated; each of them is kept here (the entry as a JSON record, the error,
the batch it came from) until ``eventlog dead-letters --retry`` writes it after a fix.
The entry is TEXT on both backends, not jsonb: jsonb refuses ``\\u0000``, and a dead
letter must be storable whatever it holds. Types spelled out per dialect, as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        uuid: sa.types.TypeEngine = postgresql.UUID(as_uuid=True)
    else:
        uuid = sa.String(36)
    time = sa.DateTime(timezone=True)
    op.create_table(
        "eventlog_dead_letters",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("created_at", time, nullable=False),
        sa.Column("batch_id", uuid, nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("entry_kind", sa.Text(), nullable=False),
        sa.Column("entry_id", uuid),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("last_attempt_at", time),
    )
    op.create_index("eventlog_dead_letters_created_at_idx", "eventlog_dead_letters", ["created_at"])


def downgrade() -> None:
    op.drop_table("eventlog_dead_letters")
