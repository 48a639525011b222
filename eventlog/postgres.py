"""Writing a batch to PostgreSQL with asyncpg: binary COPY first, upserts when needed.

COPY is the fastest way into a table, but it has no ``ON CONFLICT``: an event id that is
already stored (a re-sent event, a retried batch) makes the whole COPY fail with a
unique violation. Then the transaction is rolled back and the batch is written again
with ``INSERT ... ON CONFLICT (id) DO NOTHING``, so re-sending stays idempotent and the
common case keeps COPY's speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

__all__ = ["write_batch"]


async def write_batch(
    conn: asyncpg.Connection,
    events: list[list[Any]],
    columns: Sequence[str],
    insert_events: str,
    workflow: dict[str, list[list[Any]]],
) -> None:
    """Write encoded event rows and run/step statements in one transaction."""
    if events:
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "chronicle_events", records=events, columns=list(columns)
                )
                await _apply(conn, workflow)
            return
        except asyncpg.UniqueViolationError:
            pass  # an id that is already stored: the conflict-safe path below
    async with conn.transaction():
        if events:
            await conn.executemany(insert_events, events)
        await _apply(conn, workflow)


async def _apply(conn: asyncpg.Connection, workflow: dict[str, list[list[Any]]]) -> None:
    for sql, params in workflow.items():
        await conn.executemany(sql, params)
