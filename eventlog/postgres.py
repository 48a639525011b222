"""Writing a batch to PostgreSQL with asyncpg: binary COPY first, upserts when needed.

COPY is the fastest way into a table, but it has no ``ON CONFLICT``: an event id that is
already stored (a re-sent event, a retried batch) makes the whole COPY fail with a
unique violation. Then the transaction is rolled back and the batch is written again
with ``INSERT ... ON CONFLICT (id) DO NOTHING``, so re-sending stays idempotent and the
common case keeps COPY's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from operator import itemgetter
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
    """Write encoded event rows and run/step statements in one transaction.

    Rows go in id order: two batches written at once that share ids (a re-sent event)
    then take their row locks in the same order and wait rather than deadlock.
    """
    if events:
        events.sort(key=itemgetter(0))
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "chronicle_events", records=_paced(events), columns=list(columns)
                )
                await _apply(conn, workflow)
            return
        except asyncpg.UniqueViolationError:
            pass  # an id that is already stored: the conflict-safe path below
    async with conn.transaction():
        if events:
            await conn.executemany(insert_events, events)
        await _apply(conn, workflow)


# Rows asyncpg encodes between two turns of the event loop (~1 ms for 2.6 KB rows): one
# COPY of a whole batch would hold the application's loop for ~10 ms.
_COPY_SLICE = 100


async def _paced(rows: list[list[Any]]) -> AsyncIterator[list[Any]]:
    for i, row in enumerate(rows):
        if i % _COPY_SLICE == _COPY_SLICE - 1:
            await asyncio.sleep(0)
        yield row


async def _apply(conn: asyncpg.Connection, workflow: dict[str, list[list[Any]]]) -> None:
    for sql, params in workflow.items():
        await conn.executemany(sql, params)
