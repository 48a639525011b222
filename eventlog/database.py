"""The database a logger writes to: PostgreSQL through asyncpg, or SQLite through aiosqlite.

:func:`open_database` is the one way in; it does not connect (so an application starts
while its database is down) unless asked to migrate.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from sqlalchemy import Insert, Table, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from eventlog import postgres, sqlite
from eventlog._log import logger
from eventlog.codecs import Row, RowEncoder, fast_encoder, row_encoder
from eventlog.events import ENTRY_TYPES, EventPayload, ProxyLogEntry, ProxyLogEvent
from eventlog.exceptions import DatabaseError
from eventlog.rollup import LLM_CALL, batch_statement, hour_of
from eventlog.rows import EVENT_COLUMNS, event_values, payload_values, workflow_params
from eventlog.sanitize import MAX_JSON_BYTES
from eventlog.schema import ROLLUP_KEYS
from eventlog.statements import statements_for
from eventlog.transient import is_transient
from eventlog.types import json_dumps, json_loads

if TYPE_CHECKING:
    from eventlog.deadletters import DeadLetter
    from eventlog.prices import PriceBook

__all__ = ["Database", "ProxyDatabase", "normalize_url", "open_database"]

SUPPORTED_URLS = (
    "postgresql://, postgres://, postgresql+asyncpg://, sqlite:///PATH, "
    "sqlite+aiosqlite:///PATH, or a file path"
)


@runtime_checkable
class ProxyDatabase(Protocol):
    """What the writer needs of a database: write one batch (chronicle's contract)."""

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> int | None:
        """Write ``entries`` in one transaction, in order; raise if it failed.

        May return how many entries had values repaired on the way (counted in the
        logger's ``repaired``); None means none, or not known."""
        ...


def normalize_url(url: str | URL | os.PathLike[str]) -> URL:
    """The SQLAlchemy async URL for any form :func:`open_database` accepts.

    ``ValueError`` names the supported forms for anything else.
    """
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if isinstance(url, str):
        if url == ":memory:":
            url = "sqlite://"
        if "://" not in url:
            if not url or url.startswith(("postgres:", "postgresql:", "sqlite:")):
                raise ValueError(f"database url must be one of {SUPPORTED_URLS}; got {url!r}")
            return URL.create("sqlite+aiosqlite", database=str(Path(url).expanduser()))
        try:
            parsed = make_url(url)
        except ArgumentError as err:
            raise ValueError(f"database url must be one of {SUPPORTED_URLS}; got {url!r}") from err
    else:
        parsed = url
    driver = parsed.drivername
    if driver in ("postgresql", "postgres", "postgresql+asyncpg"):
        return _asyncpg_query(parsed.set(drivername="postgresql+asyncpg"))
    if driver in ("sqlite", "sqlite+aiosqlite"):
        if parsed.database in (None, "", ":memory:"):
            # A private in-memory database would differ per connection. A named one in
            # the memdb VFS is the same for the engine and the writer's own connection,
            # and (unlike shared cache) locks as a file does, so busy_timeout applies.
            return URL.create(
                "sqlite+aiosqlite",
                database=f"file:/eventlog-{uuid.uuid4().hex}",
                query={"vfs": "memdb", "uri": "true"},
            )
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ValueError(
        f"database url scheme {driver!r} is not supported; use one of {SUPPORTED_URLS}"
    )


# libpq URL parameters that asyncpg takes under another name; the rest of libpq's are not
# understood by asyncpg, and failing here beats a TypeError at the first write.
_LIBPQ_TO_ASYNCPG = {"sslmode": "ssl", "connect_timeout": "timeout"}
_ASYNCPG_QUERY: dict[str, Callable[[str], Any]] = {
    "ssl": str,
    "timeout": float,
    "command_timeout": float,
    "prepared_statement_cache_size": int,
    "direct_tls": lambda value: value.lower() in ("1", "true", "yes", "on"),
}


def _asyncpg_query(url: URL) -> URL:
    query: dict[str, str] = {}
    for key, value in url.query.items():
        name = _LIBPQ_TO_ASYNCPG.get(key, key)
        if name not in _ASYNCPG_QUERY or not isinstance(value, str):
            supported = sorted(set(_ASYNCPG_QUERY) | set(_LIBPQ_TO_ASYNCPG))
            raise ValueError(
                f"database url parameter {key!r} is not supported with PostgreSQL "
                f"(once each); use {', '.join(supported)}"
            )
        try:
            _ASYNCPG_QUERY[name](value)
        except ValueError:
            raise ValueError(f"database url parameter {key}={value!r} is not valid") from None
        query[name] = value
    return url.set(query=query)


def _asyncpg_connect_args(url: URL) -> dict[str, Any]:
    """The URL's (already checked) parameters as typed asyncpg.connect() arguments.

    asyncpg keeps prepared statements of up to 15 KiB by default; the writer's rollup
    statement is 22 KiB (five tables, 101 columns each for two of them), and was
    parsed and planned again for every batch: the limit is raised for it."""
    args: dict[str, Any] = {"max_cacheable_statement_size": _MAX_CACHED_STATEMENT}
    args.update((key, _ASYNCPG_QUERY[key](str(value))) for key, value in url.query.items())
    return args


_MAX_CACHED_STATEMENT = 64 * 1024


def _is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.query.get("vfs") == "memdb"


def _sqlite_writer(url: URL) -> sqlite.SQLiteWriter:
    uri = url.query.get("uri") == "true"
    database = url.database or ":memory:"
    if uri:
        # SQLAlchemy passes the query (minus its own `uri` flag) to sqlite3 as the URI's.
        query = "&".join(f"{k}={v}" for k, v in url.query.items() if k != "uri")
        database = f"{database}?{query}" if query else database
    return sqlite.SQLiteWriter(database, uri=uri, memory=_is_memory(url))


def create_engine(url: URL) -> AsyncEngine:
    """An engine tuned for logging: orjson for JSON, WAL and a busy timeout on SQLite."""
    options: dict[str, Any] = {
        "json_serializer": json_dumps,
        "json_deserializer": json_loads,
        "pool_pre_ping": True,
    }
    if url.get_backend_name() == "sqlite":
        if _is_memory(url):
            options["poolclass"] = StaticPool
        engine = create_async_engine(url, **options)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            sqlite.configure(dbapi_connection, memory=_is_memory(url))

        return engine
    # asyncpg wants typed keyword arguments (timeout=5.0), not the URL's strings.
    options["connect_args"] = _asyncpg_connect_args(url)
    return create_async_engine(url.set(query={}), **options)


class Database:
    """A PostgreSQL or SQLite database holding the chronicle tables.

    ``engine`` is the SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncEngine`, for your
    own queries; ``dialect`` is ``"postgresql"`` or ``"sqlite"``. Batches are written on
    the pool's connections through the drivers themselves (COPY, executemany), with SQL
    that SQLAlchemy compiles once from :mod:`eventlog.statements`.
    """

    def __init__(self, engine: AsyncEngine, *, max_json_bytes: int = MAX_JSON_BYTES) -> None:
        if isinstance(max_json_bytes, bool) or not isinstance(max_json_bytes, int):
            raise ValueError(f"max_json_bytes must be an int, got {max_json_bytes!r}")
        if max_json_bytes < 1024:
            raise ValueError(f"max_json_bytes must be at least 1024, got {max_json_bytes!r}")
        self.engine = engine
        name = engine.dialect.name
        if name not in ("postgresql", "sqlite"):
            raise ValueError(f"unsupported database dialect {name!r}")
        self.dialect: Literal["postgresql", "sqlite"] = name  # type: ignore[assignment]
        # Batches under way at once: two. PostgreSQL writes them on two connections (the
        # server writes one while Python encodes the next). SQLite's thread writes one
        # at a time, and the next batch is encoded while SQLite runs the rollup's SQL and
        # commits, but not while sqlite3 binds rows (it takes the GIL for every row; see
        # SQLiteWriter.binding_done): measured 0.52-0.53 of the raw executemany's
        # events/s against 0.47-0.48 one batch at a time.
        self.concurrent_writes = 2
        self._sqlite = _sqlite_writer(engine.url) if name == "sqlite" else None
        statements = statements_for(name)
        self._insert_events = _compile(statements.insert_events, engine, max_json_bytes)
        assert self._insert_events.columns == EVENT_COLUMNS
        self._workflow = {
            cls: _compile(statement, engine, max_json_bytes)
            for cls, statement in statements.workflow.items()
        }
        # The rollup's statement (see eventlog.rollup), run in each batch's transaction
        # when the batch has LLM calls; None: the rollup is not kept.
        self._rollup: str | None = batch_statement(name)
        # The users' presence rows (hour, keys and user; day and user) this writer has
        # committed. A call whose two rows are both here is left out of the presence
        # tables' insert-or-ignore (which would only find them), so those tables cost
        # next to nothing once an hour's users are in. Bounded: the oldest are forgotten
        # a batch's worth at a time (a dict keeps them in the order remembered).
        self._seen_users: dict[Any, None] = {}
        self._presence_times = _sqlite_presence if name == "sqlite" else _pg_presence
        self._prices: PriceBook | None = None
        self._prices_loaded = -_PRICES_REFRESH
        self._closed = False

    @property
    def url(self) -> str:
        """The database URL, with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> int:
        """Write ``entries`` in one transaction; return how many had values repaired.

        LLM calls and generic events become ``chronicle_events`` rows (a repeated id is
        stored once); run and step events update ``chronicle_runs``/``chronicle_steps``,
        one executemany per kind of statement, in sent order within each (which gives the
        rows that applying them one by one would: see :mod:`eventlog.statements`).
        Messy values are repaired on the way (see :mod:`eventlog.sanitize`).
        Raises :class:`~eventlog.DatabaseError` if the batch was not written.
        """
        if self._closed:
            raise DatabaseError(f"write_log_batch() after close() of {self!r}")
        # SQLite stores whatever it is given, so values are checked and repaired before
        # they go in. PostgreSQL refuses bad values itself: the common case skips the
        # checks, and a refused batch is encoded again with them and retried once.
        checked = self._sqlite is not None
        try:
            return await self._write(entries, checked=checked) or 0
        except Exception as err:
            if checked or is_transient(err):
                raise self._error(entries, err) from err
            refused = err
        try:
            repaired = await self._write(entries, checked=True, only_if_repaired=True)
        except Exception as err:
            raise self._error(entries, err) from err
        if repaired is None:  # nothing to repair: the batch is refused as it is
            raise self._error(entries, refused) from refused
        return repaired

    def _error(self, entries: Sequence[ProxyLogEntry], err: Exception) -> DatabaseError:
        return DatabaseError(
            f"writing a batch of {len(entries)} entries to {self.dialect} failed: "
            f"{type(err).__name__}: {err}",
            transient=is_transient(err),
        )

    async def _write(
        self,
        entries: Sequence[ProxyLogEntry],
        *,
        checked: bool,
        only_if_repaired: bool = False,
    ) -> int | None:
        if self._sqlite is not None:
            if self._prices_stale():
                self._use_prices(await self._sqlite.fetch_prices())
            await self._sqlite.binding_done()
            encoded = await self._encode(entries, checked=checked)
            if only_if_repaired and not encoded.repaired:
                return None
            if encoded.events or encoded.workflow:
                every_row = await self._sqlite.write_batch(
                    encoded.events,
                    self._insert_events.sql,
                    encoded.workflow,
                    self._rollup if encoded.calls else None,
                    encoded.fresh,
                )
                self._remember(encoded, every_row)
            return encoded.repaired
        async with self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            if self._prices_stale():
                self._use_prices(await postgres.fetch_prices(driver))
            encoded = await self._encode(entries, checked=checked)
            if only_if_repaired and not encoded.repaired:
                return None
            if encoded.events or encoded.workflow:
                every_row = await postgres.write_batch(
                    driver,
                    encoded.events,
                    EVENT_COLUMNS,
                    self._insert_events.sql,
                    encoded.workflow,
                    self._rollup if encoded.calls else None,
                    encoded.calls,
                    encoded.fresh,
                )
                self._remember(encoded, every_row)
        return encoded.repaired

    def _remember(self, encoded: _Encoded, every_row: bool) -> None:
        """After a commit: the batch's presence rows are stored, if every row was
        inserted (a call whose id was stored before adds none: which ones those were is
        not known, so nothing is remembered)."""
        if encoded.seen and every_row:
            seen = self._seen_users
            seen.update(dict.fromkeys(encoded.seen))
            # Forgetting all at once freed 200,000 keys in ~50 ms on the event loop.
            excess = len(seen) - _SEEN_USERS_MAX
            if excess > 0:
                for key in list(islice(seen, excess)):
                    del seen[key]

    def _prices_stale(self) -> bool:
        """The user's prices are read again every minute, on the write's own connection,
        so that ``eventlog prices load`` reaches running writers."""
        return time.monotonic() - self._prices_loaded >= _PRICES_REFRESH

    def _use_prices(self, rows: Sequence[Mapping[str, Any]] | BaseException) -> None:
        """Price with the bundled prices and the user's ``rows`` (or, if they could not
        be read, the user's prices read before)."""
        from eventlog.prices import PriceBook, price_from_row  # it builds on this module

        self._prices_loaded = time.monotonic()
        user = []
        if isinstance(rows, BaseException):
            if self._prices is not None:
                return
            logger.warning(
                "eventlog: cannot read the user's prices from %s (%s); pricing with the "
                "bundled prices",
                self.url,
                f"{type(rows).__name__}: {rows}",
            )
        else:
            for row in rows:
                try:
                    user.append(price_from_row(row, self.url))
                except Exception as err:
                    logger.warning("eventlog: a price is set aside: %s", err)
        try:
            self._prices = PriceBook.default(user)
        except Exception as err:  # a broken install must not stop the logging
            logger.error("eventlog: cannot read the prices: %s: %s", type(err).__name__, err)

    async def _encode(self, entries: Sequence[ProxyLogEntry], *, checked: bool) -> _Encoded:
        """Driver-ready rows, the ids of the LLM calls among them (for the rollup) and of
        those with presence rows not yet stored, and how many entries had a value
        repaired; yields to the loop now and then, so a large batch does not hold the
        application's event loop for its whole serialisation."""
        encode_event = self._insert_events.encode if checked else self._insert_events.fast
        events: list[Row] = []
        workflow: dict[str, list[Row]] = {}
        calls: list[Any] = []
        fresh: list[Any] = []
        seen: set[Any] = set()
        known = self._seen_users
        presence = self._presence_times if self._rollup is not None else None
        repaired = 0
        prices = self._prices
        sqlite = self._sqlite
        for i, entry in enumerate(entries):
            if i % _ENCODE_SLICE == _ENCODE_SLICE - 1:
                if sqlite is not None:
                    await sqlite.binding_done()
                await asyncio.sleep(0)
            if isinstance(entry, (ProxyLogEvent, EventPayload)):
                if isinstance(entry, ProxyLogEvent):
                    values = event_values(entry, prices)
                else:
                    values = payload_values(entry)
                row, fixed = encode_event(values)
                events.append(row)
                if values[_EVENT_TYPE] == LLM_CALL:
                    calls.append(row[0])
                    if presence is not None and (user := row[_USER]):
                        hour, day = presence(row[_CREATED_AT])
                        by_hour = (hour, *_presence_keys(row), user)
                        by_day = (day, user)
                        if by_hour not in known or by_day not in known:
                            fresh.append(row[0])
                            seen.add(by_hour)
                            seen.add(by_day)
            else:
                compiled = self._workflow[_workflow_class(entry)]
                params = workflow_params(entry)
                encode = compiled.encode if checked else compiled.fast
                row, fixed = encode([params.get(name) for name in compiled.columns])
                workflow.setdefault(compiled.sql, []).append(row)
            repaired += fixed
        return _Encoded(events, workflow, calls, fresh, seen, repaired)

    async def background_work_done(self) -> None:
        """Until the work that writes left running on other threads is done: SQLite's
        checkpoints (see :mod:`eventlog.sqlite`). A fork waits for it, so that the child
        inherits no SQLite lock held by a thread it does not have."""
        if self._sqlite is not None:
            await self._sqlite.checkpoints_done()

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Store entries the database refused in ``eventlog_dead_letters``, in one
        transaction (see :mod:`eventlog.deadletters`)."""
        from eventlog.deadletters import store_dead_letters  # it builds on this module

        await store_dead_letters(self, letters)

    async def close(self) -> None:
        """Close every connection; closing twice is harmless."""
        if not self._closed:
            self._closed = True
            if self._sqlite is not None:
                await self._sqlite.close()
            await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Database {self.dialect} {self.url}>"


# Entries encoded between two yields to the event loop: ~1 ms of work for typical events.
# Measured with eventlog bench's loop-lag figure (three runs each): slices of 100 gave a
# p99 of 12.2 ms (PostgreSQL) and 11.0 ms (SQLite), slices of 25 gave 8.8 and 3.3.
_ENCODE_SLICE = 25
_PRICES_REFRESH = 60.0  # seconds between reads of the user's prices
_SEEN_USERS_MAX = 200_000  # presence rows remembered (~40 MB at most)
_EVENT_TYPE = EVENT_COLUMNS.index("event_type")
_CREATED_AT = EVENT_COLUMNS.index("created_at")
_USER = EVENT_COLUMNS.index("user_id")
_presence_keys = itemgetter(*(EVENT_COLUMNS.index(key) for key in ROLLUP_KEYS))


def _sqlite_presence(created_at: str) -> tuple[str, str]:
    """The hour and the day of an encoded time, as keys (SQLite: UTC text)."""
    return created_at[:13], created_at[:10]


def _pg_presence(created_at: datetime) -> tuple[datetime, date]:
    """The hour and the day of an encoded time, as keys (PostgreSQL: a datetime)."""
    hour = hour_of(created_at)
    return hour, hour.date()


@dataclass(frozen=True, slots=True)
class _Encoded:
    """A batch as the drivers take it."""

    events: list[Row]
    workflow: dict[str, list[Row]]
    calls: list[Any]  # the ids of the LLM calls among the events, for the rollup
    fresh: list[Any]  # the ids of the calls with presence rows not stored before
    seen: set[Any]  # those presence rows, remembered once committed
    repaired: int


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement as driver SQL, and how to turn a row dict into its parameters."""

    sql: str
    columns: tuple[str, ...]
    encode: RowEncoder  # checks and repairs values
    fast: RowEncoder  # converts only


def _compile(statement: Insert, engine: AsyncEngine, max_json_bytes: int) -> _Compiled:
    compiled = statement.compile(dialect=engine.dialect)
    table = statement.table
    assert isinstance(table, Table)
    assert compiled.positiontup is not None
    columns = tuple(compiled.positiontup)
    dialect = engine.dialect.name
    encode = row_encoder(table, dialect, columns, max_json_bytes=max_json_bytes)
    fast = fast_encoder(table, dialect, columns, max_json_bytes=max_json_bytes)
    return _Compiled(compiled.string, columns, encode, fast)


def _workflow_class(entry: object) -> type:
    for cls in type(entry).__mro__:
        if cls in _WORKFLOW_CLASSES:
            return cls
    raise TypeError(f"not a log entry: {type(entry).__name__}")


_WORKFLOW_CLASSES = frozenset(ENTRY_TYPES) - {ProxyLogEvent, EventPayload}


async def open_database(
    url: str | URL | os.PathLike[str],
    *,
    migrate: bool = False,
    max_json_bytes: int = MAX_JSON_BYTES,
) -> Database:
    """Open the database at ``url``; with ``migrate=True``, bring its schema up to date.

    ``max_json_bytes`` caps one JSON value (a request or response body...): a larger one
    is truncated, with a marker that says how much was cut (see :mod:`eventlog.sanitize`).

    Without ``migrate`` nothing connects yet, so this succeeds while the database is
    down: the logger's writes wait for it. A SQLite file's folder is created if missing.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite" and not _is_memory(parsed):
        assert parsed.database is not None
        # One mkdir at startup: not worth a thread hop.
        folder = Path(parsed.database).expanduser().parent  # noqa: ASYNC240
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            # The volume may not be mounted yet: start anyway, the writes retry.
            if migrate:
                raise DatabaseError(f"cannot create the folder {folder}: {err}") from err
            logger.warning(
                "eventlog: cannot create the folder %s for the SQLite database: %s; "
                "writes will be retried until it can be opened",
                folder,
                err,
            )
    db = Database(create_engine(parsed), max_json_bytes=max_json_bytes)
    if migrate:
        from eventlog.migrate import upgrade

        try:
            await upgrade(db.engine)
        except BaseException:
            await db.close()
            raise
    return db
