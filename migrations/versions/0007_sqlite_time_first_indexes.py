"""SQLite: the per-user and per-project indexes with the time first

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23

Every report reads the raw rows of a time window, so on SQLite the B-trees for a user's
or a project's calls put ``created_at`` first, as issue 6's schema has it: a new row's
entries then go at the end of those indexes. Keyed by user first, each insert landed on
a random page of a large index, and SQLite writes every page a transaction changes to
its WAL (a whole page for a ~50-byte entry): on ``eventlog bench``'s workload (5,000
users) the writer made 0.63 of its empty-table events/s once the table held 1M rows,
and the raw executemany 0.48; with the time first, 0.80 and 0.75 (a throwaway script
around the bench's own backend, one run each). PostgreSQL keeps its key-first B-trees:
its WAL logs the change, not the page, and it held up at 1M rows (1.37).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = ("user_id", "project_id")


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for key in KEYS:
        op.drop_index(f"chronicle_events_{key}_created_at_idx", "chronicle_events")
        op.create_index(
            f"chronicle_events_created_at_{key}_idx", "chronicle_events", ["created_at", key]
        )


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for key in KEYS:
        op.drop_index(f"chronicle_events_created_at_{key}_idx", "chronicle_events")
        op.create_index(
            f"chronicle_events_{key}_created_at_idx", "chronicle_events", [key, "created_at"]
        )
