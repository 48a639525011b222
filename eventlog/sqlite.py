"""Writing a batch to SQLite with aiosqlite: prepared statements in one transaction.

``BEGIN IMMEDIATE`` takes the write lock at the start, so a second process writing the
same file waits (``busy_timeout``) instead of failing halfway through the batch.
"""

from __future__ import annotations

from typing import Any

import aiosqlite

__all__ = ["write_batch"]


async def write_batch(
    conn: aiosqlite.Connection,
    events: list[tuple[Any, ...]],
    insert_events: str,
    workflow: dict[str, list[tuple[Any, ...]]],
) -> None:
    """Write encoded event rows and run/step statements in one transaction."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        if events:
            await conn.executemany(insert_events, events)
        for sql, params in workflow.items():
            await conn.executemany(sql, params)
    except BaseException:
        await conn.rollback()
        raise
    await conn.commit()
