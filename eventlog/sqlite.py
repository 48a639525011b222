"""Writing batches to SQLite: one connection on one thread of its own, one hop a batch.

aiosqlite sends every call to its thread and back, so a batch of BEGIN, a few
executemany and COMMIT costs several trips through the event loop, each delayed by
whatever the loop is doing. The writer instead hands the whole batch to this thread at
once. sqlite3 releases the GIL while SQLite works, so the event loop runs meanwhile, and
the writer encodes the next batch during the rollup's SQL and the commit, though not
while sqlite3 binds rows: that takes the GIL for each row (:meth:`binding_done`).

``BEGIN IMMEDIATE`` takes the write lock at the start, so another process writing the
same file makes this one wait (``busy_timeout``) instead of failing halfway.

Checkpoints (copying the WAL's pages into the database file, with an fsync) run on a
second thread and connection every 1,000 rows or 64 commits, not inside the writer's commit
as SQLite does by default: the writer goes on with the next batch meanwhile. SQLite's own
checkpoint at commit stays as a backstop, at a WAL of 16,384 pages instead of 1,000.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final
from urllib.parse import quote

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from eventlog._log import logger
from eventlog.codecs import Row
from eventlog.rollup import setup_statements
from eventlog.statements import SQLITE_MERGE_FUNCTION, merge_info_json

__all__ = ["SQLiteWriter", "begin", "configure"]


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
        # Checkpoints: their own thread and connection (file databases only).
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="eventlog-checkpoint")
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpoint_path = ""  # the database file's absolute path, once known
        self._wal = False  # the database is in WAL mode: checkpoints apply
        self._checkpointing = False  # one is queued or running
        self._checkpoint_failed = False  # its error is logged once
        self._rows_since_checkpoint = 0
        self._commits_since_checkpoint = 0
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
        events: list[Row],
        insert_events: str,
        workflow: dict[str, list[Row]],
        rollup: str | None = None,
        fresh: Sequence[Any] = (),
    ) -> bool:
        """Write encoded event rows, run/step statements and the rollup's increments in
        one transaction: ``rollup`` (:func:`eventlog.rollup.batch_statement`) sums the
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
            conn = _connect(self._database, uri=self._uri, memory=self._memory)
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                self._wal = str(mode).lower() == "wal"
                if self._wal:
                    conn.execute(f"PRAGMA wal_autocheckpoint={_BACKSTOP_PAGES}")
                    # The file's absolute path, for the checkpoints' connection: the same
                    # file whatever the working directory is when it (re)connects.
                    self._checkpoint_path = str(conn.execute("PRAGMA database_list").fetchone()[2])
                for statement in setup_statements("sqlite"):
                    conn.execute(statement)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _write(
        self,
        events: list[Row],
        insert_events: str,
        workflow: dict[str, list[Row]],
        rollup: str | None,
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
        if self._wal:
            self._rows_since_checkpoint += len(events) + sum(map(len, workflow.values()))
            self._commits_since_checkpoint += 1
            if not self._checkpointing and (
                self._rows_since_checkpoint >= _CHECKPOINT_ROWS
                or self._commits_since_checkpoint >= _CHECKPOINT_COMMITS
            ):
                self._checkpoint_soon()
        return every_row

    def _checkpoint_soon(self) -> None:
        """Queue a checkpoint (the batch is committed: nothing here may fail it)."""
        self._checkpointing = True  # before the thread may run it and clear the flag
        self._rows_since_checkpoint = self._commits_since_checkpoint = 0
        try:
            self._checkpointer.submit(self._checkpoint)
        except RuntimeError:  # the thread is shut down (the interpreter is exiting)
            self._checkpointing = False

    def _checkpoint(self) -> None:
        """Copy the WAL's committed pages into the database file (PASSIVE: without
        waiting for the writer or readers); on the checkpoint thread."""
        try:
            if self._checkpoint_conn is None:
                self._checkpoint_conn = _connect(
                    f"file:{quote(self._checkpoint_path)}?mode=rw", uri=True, memory=False
                )
            self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as err:
            # The writer's own checkpoint at _BACKSTOP_PAGES still bounds the WAL.
            if not self._checkpoint_failed:
                self._checkpoint_failed = True
                logger.warning(
                    "eventlog: a checkpoint of %s failed (%s: %s); the writer's commits "
                    "still checkpoint a WAL of %d pages. This is logged once.",
                    self._checkpoint_path,
                    type(err).__name__,
                    err,
                    _BACKSTOP_PAGES,
                )
        finally:
            self._checkpointing = False

    async def checkpoints_done(self) -> None:
        """Until the checkpoints queued so far have run."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._checkpointer, _nothing)

    async def close(self) -> None:
        """Close the connections and end the threads; closing twice is harmless."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)
        await loop.run_in_executor(self._checkpointer, self._close_checkpoints)
        self._checkpointer.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _close_checkpoints(self) -> None:
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None


def _connect(database: str, *, uri: bool, memory: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(database, uri=uri, isolation_level=None, check_same_thread=False)
    try:
        configure(conn, memory=memory)
    except BaseException:
        conn.close()
        raise
    return conn


# A checkpoint is queued after 1,000 rows or 64 commits since the last: about SQLite's
# default of 1,000 WAL pages for batches of 1,000 of eventlog bench's 2.7 KB calls, or for
# 64 one-call batches (each wrote 12-14 pages, measured: the row, its index entries, the
# rollup rows), and never a checkpoint (with its fsyncs) for every small batch of a quiet
# application.
_CHECKPOINT_ROWS: Final = 1000
_CHECKPOINT_COMMITS: Final = 64

# The WAL size (in pages) at which the writer's own commit checkpoints. The checkpoint
# thread copies most pages before that, but the WAL starts over from its beginning only
# after a checkpoint that ends before the writer's next transaction begins, which the
# writer, going on at once, rarely leaves time for: so the WAL file grows to about this
# size (64 MiB at SQLite's default 4 KiB pages, ~70 MB on disk while writing flat out),
# and the backstop's checkpoint, with little left to copy, restarts it. Measured with
# `eventlog bench --backends sqlite --growth-rows 1000000` (one run each, before the
# rollup became one statement): SQLite's default (a checkpoint in the commit at 1,000
# pages) made 8,459 events/s at 1M rows against 12,344 into an empty table (0.69) and 66
# ms send-to-commit p99; a checkpoint in the commit at 10,000 pages, 0.94 and 118 ms; the
# checkpoint thread (then after every commit, the same as every 1,000 rows at the bench's
# batches of 1,000), 13,843 against 13,325 (1.04) and 59 ms.
_BACKSTOP_PAGES: Final = 16384


async def begin(conn: AsyncConnection, mode: str = "") -> None:
    """Begin ``conn``'s transaction now (``mode``: ``"IMMEDIATE"`` takes the write lock
    at once), where sqlite3 would begin it only at the first write, after the reads: a
    snapshot for several reads, or the writer held off before them. Unless it has begun
    already: an engine may issue its own ``BEGIN`` (SQLAlchemy's recipe for SQLite)."""
    if not conn.in_transaction():
        await conn.begin()  # SQLAlchemy's, which runs the engine's own BEGIN if it has one
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is None or not driver.in_transaction:
        await conn.exec_driver_sql(f"BEGIN {mode}".rstrip())


def _nothing() -> None:
    pass


def _insert_events(
    conn: sqlite3.Connection,
    events: list[Row],
    sql: str,
    rollup: str | None,
    fresh: Sequence[Any],
    on_bound: Callable[[], None],
) -> bool:
    """Insert the rows (a stored id is skipped) and add the LLM calls inserted to the
    rollup: the rows whose rowid is above the highest before the insert (this connection
    holds the write lock, so they are this insert's); the presence rows of those whose
    ids are ``fresh``. Returns whether every row was inserted."""
    query = "SELECT max(rowid) FROM chronicle_events"
    before = conn.execute(query).fetchone()[0] or 0 if rollup is not None else 0
    every_row = conn.executemany(sql, events).rowcount == len(events)
    on_bound()
    if rollup is not None:
        conn.execute(rollup, {"before": before, "fresh": orjson.dumps(list(fresh)).decode()})
    return bool(every_row)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
