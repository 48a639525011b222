"""Writing batches to SQLite: one connection on one thread of its own, one hop a batch.

aiosqlite sends every call to its thread and back, so a batch of BEGIN, a few
executemany and COMMIT costs several trips through the event loop, each delayed by
whatever the loop is doing. The writer instead hands the whole batch to this thread at
once. sqlite3 releases the GIL while SQLite works, so the event loop runs meanwhile, and
the writer encodes the next batch during the rollup's SQL and the commit, though not
while sqlite3 binds rows: that takes the GIL for each row (:meth:`binding_done`).

``BEGIN IMMEDIATE`` takes the write lock at the start, so another process writing the
same file makes this one wait (``busy_timeout``) instead of failing halfway.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from eventlog.statements import SQLITE_MERGE_FUNCTION, merge_info_json

__all__ = ["SQLiteWriter", "configure"]


def configure(conn: Any, *, memory: bool) -> None:
    """The settings of every eventlog SQLite connection (sqlite3 or SQLAlchemy's adapter).

    WAL lets readers (analytics, the CLI) work while the writer commits, and with it
    ``synchronous=NORMAL`` is durable against application crashes (a power loss may take
    the last transactions). A page cache of up to 32 MiB (SQLite's default is 2 MiB)
    keeps the rollup's pages and the top of the indexes between reports.
    """
    cursor = conn.cursor()
    if not memory:
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA cache_size=-32768")
    cursor.close()
    conn.create_function(SQLITE_MERGE_FUNCTION, 2, merge_info_json, deterministic=True)


class SQLiteWriter:
    """The write path's own connection to a SQLite database, used from one thread."""

    def __init__(self, database: str, *, uri: bool, memory: bool) -> None:
        self._database = database
        self._uri = uri
        self._memory = memory
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="eventlog-sqlite")
        # Done once the latest batch's rows are bound: sqlite3 takes the GIL for every
        # row it binds, so the writer does not encode meanwhile (see binding_done).
        self._binding: asyncio.Future[None] | None = None

    async def binding_done(self) -> None:
        """Until no batch's rows are being bound. Encoding the next batch while sqlite3
        binds one makes the binding wait for the GIL row after row; during the rest of
        the write (the rollup's SQL, the commit) SQLite runs without the GIL."""
        binding = self._binding
        if binding is not None and not binding.done():
            await asyncio.shield(binding)

    async def write_batch(
        self,
        events: list[list[Any]],
        insert_events: str,
        workflow: dict[str, list[list[Any]]],
        rollup: tuple[str, ...] | None = None,
        fresh: Sequence[Any] = (),
    ) -> bool:
        """Write encoded event rows, run/step statements and the rollup's increments in
        one transaction: ``rollup`` (:func:`eventlog.rollup.batch_statements`) sums the
        LLM calls the transaction inserted, and adds the presence rows of those whose ids
        are ``fresh``. Returns whether every event row was inserted."""
        loop = asyncio.get_running_loop()
        bound: asyncio.Future[None] = loop.create_future()
        self._binding = bound

        def on_bound() -> None:  # on the SQLite thread
            loop.call_soon_threadsafe(_resolve, bound)

        try:
            return await loop.run_in_executor(
                self._thread, self._write, events, insert_events, workflow, rollup, fresh, on_bound
            )
        finally:
            _resolve(bound)

    async def fetch_prices(self) -> list[dict[str, Any]] | Exception:
        """The rows of ``eventlog_prices`` (the user's prices), or why they cannot be
        read; on this writer's own connection."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._fetch_prices)

    def _fetch_prices(self) -> list[dict[str, Any]] | Exception:
        try:
            cursor = self._connection().execute("SELECT * FROM eventlog_prices ORDER BY id")
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except sqlite3.Error as err:
            return err

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._database, uri=self._uri, isolation_level=None, check_same_thread=False
            )
            configure(conn, memory=self._memory)
            self._conn = conn
        return self._conn

    def _write(
        self,
        events: list[list[Any]],
        insert_events: str,
        workflow: dict[str, list[list[Any]]],
        rollup: tuple[str, ...] | None,
        fresh: Sequence[Any],
        on_bound: Callable[[], None],
    ) -> bool:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        every_row = True
        try:
            if events:
                every_row = _insert_events(conn, events, insert_events, rollup, fresh, on_bound)
            for sql, params in workflow.items():
                conn.executemany(sql, params)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return every_row

    async def close(self) -> None:
        """Close the connection and end the thread; closing twice is harmless."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _insert_events(
    conn: sqlite3.Connection,
    events: list[list[Any]],
    sql: str,
    rollup: tuple[str, ...] | None,
    fresh: Sequence[Any],
    on_bound: Callable[[], None] = lambda: None,
) -> bool:
    """Insert the rows (a stored id is skipped) and add the LLM calls inserted to the
    rollup: the rows whose rowid is above the highest before the insert (this connection
    holds the write lock, so they are this insert's); the presence rows of those whose
    ids are ``fresh``. Returns whether every row was inserted."""
    if rollup is None:
        every_row = conn.executemany(sql, events).rowcount == len(events)
        on_bound()
        return bool(every_row)
    before = conn.execute("SELECT max(rowid) FROM chronicle_events").fetchone()[0]
    every_row = conn.executemany(sql, events).rowcount == len(events)
    on_bound()
    before = before if before is not None else 0
    params = {"before": before, "fresh": orjson.dumps(list(fresh)).decode()}
    for statement in rollup:
        conn.execute(statement, params)
    return bool(every_row)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
