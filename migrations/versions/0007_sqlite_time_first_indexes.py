"""SQLite: the per-user index with the time first

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23

On SQLite the B-tree for a user's calls becomes ``(created_at, user_id)``, as issue 6's
schema has SQLite's indexes (the time first): a new row's entry then goes at the end of
the index. Keyed by user first, with thousands of users each insert landed on a random
page of a large index, and SQLite writes every page a transaction changes whole to its
WAL (a 4 KiB page for a ~50-byte entry). On ``eventlog bench``'s workload (5,000 users)
the writer made 0.63 of its empty-table events/s once the table held 1M rows, and 0.80
with the time first (a throwaway script around the bench's own backend, one run each).

SQLite's planner takes this narrow index for a time window filtered by user and checks
the user in the index before it reads a row. PostgreSQL keeps ``(user_id, created_at)``:
its WAL logs the change, not the page, and it held up at 1M rows (1.37). The project
index keeps the project first on both: projects are few, so its inserts go to few places.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    op.drop_index("chronicle_events_user_id_created_at_idx", "chronicle_events")
    op.create_index(
        "chronicle_events_created_at_user_id_idx", "chronicle_events", ["created_at", "user_id"]
    )


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    op.drop_index("chronicle_events_created_at_user_id_idx", "chronicle_events")
    op.create_index(
        "chronicle_events_user_id_created_at_idx", "chronicle_events", ["user_id", "created_at"]
    )
