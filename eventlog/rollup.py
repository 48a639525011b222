"""The hourly rollup: LLM calls summed per hour and dimension, kept by the writer.

``eventlog_rollup_hourly`` has one row per hour, model, provider, application,
environment, organization, project and user, with counts, token and cost sums, latency
sums and a fixed log-scale histogram of request latency (see
:data:`~eventlog.schema.LATENCY_BIN_EDGES`). 30- and 90-day reports read it instead of
millions of raw rows.

Each call counts once. The writer adds a batch's increments in the transaction that
inserts the batch's rows, and only for the rows actually inserted: an event sent twice,
or a batch retried after a lost commit, finds its id stored and adds nothing. On
PostgreSQL a COPY either inserts every row or fails; the conflict-safe path learns the
inserted ids from ``RETURNING``. On SQLite the insert's row count says whether every row
went in; if not, the batch is inserted again, from a savepoint, without the stored ids.

:func:`rebuild` recomputes hours from the raw rows (``eventlog rollup --rebuild``): after a
bulk import by other means, a prune, or a re-pricing. It locks the rollup against the
writer's increments one day at a time (the writer waits; no increment is lost or counted
twice).
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Column, Insert, MetaData, Table, and_, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.schema import CreateTable

from eventlog.exceptions import DatabaseError
from eventlog.rows import EVENT_COLUMNS
from eventlog.schema import (
    LATENCY_BIN_EDGES,
    ROLLUP_KEYS,
    chronicle_events,
    eventlog_rollup_hourly,
)
from eventlog.transient import is_transient

if TYPE_CHECKING:
    from eventlog.database import Database

__all__ = [
    "DELTA_TABLE",
    "LLM_CALL",
    "ROLLUP_KEY_BYTES",
    "ROLLUP_KEY_CHARS",
    "SUM_COLUMNS",
    "Call",
    "RebuildResult",
    "add_calls",
    "aggregate",
    "call_from_row",
    "delta_table_ddl",
    "hour_of",
    "latency_bin",
    "rebuild",
    "rollup_key",
    "sorted_rows",
    "upsert_statement",
]

LLM_CALL: Final = "chronicle_llm_request"

SUM_COLUMNS: Final[tuple[str, ...]] = tuple(
    c.name for c in eventlog_rollup_hourly.columns if c.name != "hour" and c.name not in ROLLUP_KEYS
)
"""The rollup's value columns, in table order: the order of :func:`aggregate`'s values.
All are sums but the last, ``latency_max_ms``, a maximum."""

_FIRST_BIN: Final = SUM_COLUMNS.index("lat_00")
_MAX: Final = SUM_COLUMNS.index("latency_max_ms")
_S: Final = {name: i for i, name in enumerate(SUM_COLUMNS)}
_NANOS: Final = Decimal(1_000_000_000)

# A call, as the rollup needs it: a tuple, built once per inserted LLM call.
#   (id, hour, key texts x 7, has_error, rate_limited, retries, prompt, completion,
#    total, cache_read, cache_write, reasoning, request_ms, total_ms, ttft_ms, cost)
Call = tuple[Any, ...]

_ROW_FIELDS: Final = (
    *ROLLUP_KEYS,
    "error",
    "rate_limited",
    "retries",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "request_latency_ms",
    "total_latency_ms",
    "ttft_ms",
)
_ROW_INDEX: Final = tuple(EVENT_COLUMNS.index(name) for name in _ROW_FIELDS)
_EVENT_TYPE: Final = EVENT_COLUMNS.index("event_type")
_CREATED_AT: Final = EVENT_COLUMNS.index("created_at")
_COST: Final = EVENT_COLUMNS.index("cost_usd")


def hour_of(moment: datetime) -> datetime:
    """The UTC hour ``moment`` falls in."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def latency_bin(ms: int) -> int:
    """The histogram bin of a request latency in milliseconds."""
    return bisect.bisect_right(LATENCY_BIN_EDGES, ms)


def call_from_row(values: Sequence[Any], encoded: Sequence[Any]) -> Call | None:
    """The rollup's view of one event row, or None if it is not an LLM call.

    ``values`` are the row's Python values and ``encoded`` the driver's (both in
    :data:`~eventlog.rows.EVENT_COLUMNS` order): texts and numbers are taken as stored
    (after any repair), the time and cost from the Python values.
    """
    if values[_EVENT_TYPE] != LLM_CALL:
        return None
    fields = [encoded[i] for i in _ROW_INDEX]
    fields[len(ROLLUP_KEYS)] = fields[len(ROLLUP_KEYS)] is not None  # has an error
    return (encoded[0], hour_of(values[_CREATED_AT]), *fields, values[_COST])


ROLLUP_KEY_BYTES: Final = 360
"""A name longer than this (in UTF-8) is kept in the rollup as its first
:data:`ROLLUP_KEY_CHARS` characters: the rollup's primary key holds seven names, and
PostgreSQL refuses a B-tree entry over 2,704 bytes."""
ROLLUP_KEY_CHARS: Final = 90


def rollup_key(name: str | None) -> str:
    """A dimension's value as the rollup keys it: ``''`` for none, long names cut."""
    if name is None:
        return ""
    if len(name) * 4 > ROLLUP_KEY_BYTES and len(name.encode("utf-8")) > ROLLUP_KEY_BYTES:
        return name[:ROLLUP_KEY_CHARS]
    return name


# Positions in a row of sums, looked up once (aggregate() runs for every call).
_CACHE_READ_TOKENS: Final = _S["cache_read_tokens"]
_CACHE_WRITE_TOKENS: Final = _S["cache_write_tokens"]
_COMPLETION_TOKENS: Final = _S["completion_tokens"]
_COST_NANOS: Final = _S["cost_nanos"]
_ERRORS: Final = _S["errors"]
_LATENCY_COUNT: Final = _S["latency_count"]
_LATENCY_SUM_MS: Final = _S["latency_sum_ms"]
_PRICED: Final = _S["priced"]
_PROMPT_TOKENS: Final = _S["prompt_tokens"]
_RATE_LIMITED: Final = _S["rate_limited"]
_REASONING_TOKENS: Final = _S["reasoning_tokens"]
_REQUESTS: Final = _S["requests"]
_RETRIED: Final = _S["retried"]
_RETRIES: Final = _S["retries"]
_TOTAL_LATENCY_COUNT: Final = _S["total_latency_count"]
_TOTAL_LATENCY_SUM_MS: Final = _S["total_latency_sum_ms"]
_TOTAL_TOKENS: Final = _S["total_tokens"]
_TPS_MS: Final = _S["tps_ms"]
_TPS_TOKENS: Final = _S["tps_tokens"]
_TTFT_COUNT: Final = _S["ttft_count"]
_TTFT_SUM_MS: Final = _S["ttft_sum_ms"]
_UNPRICED: Final = _S["unpriced"]
_UNPRICED_TOKENS: Final = _S["unpriced_tokens"]


Groups = dict[tuple[Any, ...], list[int]]
"""Sums being added up: ``(hour, keys) -> sums in SUM_COLUMNS order``."""


def aggregate(calls: Iterable[Call]) -> list[tuple[datetime, tuple[str, ...], list[int]]]:
    """Sum calls per hour and key: ``(hour, keys, sums in SUM_COLUMNS order)``, sorted
    by hour and keys (two writers then lock rollup rows in the same order)."""
    groups: Groups = {}
    add_calls(groups, calls)
    return sorted_rows(groups)


def sorted_rows(groups: Groups) -> list[tuple[datetime, tuple[str, ...], list[int]]]:
    """The rows of ``groups`` in hour and key order."""
    return [(hour, keys, sums) for (hour, keys), sums in sorted(groups.items())]


def add_calls(groups: Groups, calls: Iterable[Call]) -> None:
    """Add ``calls`` to ``groups`` (the writer adds a batch a slice at a time, between
    turns of the event loop)."""
    width = len(SUM_COLUMNS)
    n_keys = len(ROLLUP_KEYS)
    for call in calls:
        hour = call[1]
        keys = tuple(rollup_key(k) for k in call[2 : 2 + n_keys])
        sums = groups.get((hour, keys))
        if sums is None:
            sums = groups[(hour, keys)] = [0] * width
        (
            has_error,
            rate_limited,
            retries,
            prompt,
            completion,
            total,
            cache_read,
            cache_write,
            reasoning,
            request_ms,
            total_ms,
            ttft_ms,
            cost,
        ) = call[2 + n_keys :]
        sums[_REQUESTS] += 1
        if has_error:
            sums[_ERRORS] += 1
        if rate_limited:
            sums[_RATE_LIMITED] += 1
        if retries:
            sums[_RETRIES] += retries  # as SUM(retries) over the raw rows
            if retries > 0:
                sums[_RETRIED] += 1
        sums[_PROMPT_TOKENS] += prompt or 0
        sums[_COMPLETION_TOKENS] += completion or 0
        sums[_TOTAL_TOKENS] += total or 0
        sums[_CACHE_READ_TOKENS] += cache_read or 0
        sums[_CACHE_WRITE_TOKENS] += cache_write or 0
        sums[_REASONING_TOKENS] += reasoning or 0
        if cost is None:
            sums[_UNPRICED] += 1
            sums[_UNPRICED_TOKENS] += _tokens(prompt, completion, total)
        else:
            sums[_PRICED] += 1
            sums[_COST_NANOS] += int(
                cost.scaleb(9) if type(cost) is Decimal else Decimal(cost) * _NANOS
            )
        if request_ms is not None:
            sums[_LATENCY_COUNT] += 1
            sums[_LATENCY_SUM_MS] += request_ms
            sums[_FIRST_BIN + latency_bin(request_ms)] += 1
            if request_ms > sums[_MAX]:
                sums[_MAX] = request_ms
            if completion is not None and request_ms > 0:
                sums[_TPS_TOKENS] += completion
                sums[_TPS_MS] += request_ms
        if total_ms is not None:
            sums[_TOTAL_LATENCY_COUNT] += 1
            sums[_TOTAL_LATENCY_SUM_MS] += total_ms
        if ttft_ms is not None:
            sums[_TTFT_COUNT] += 1
            sums[_TTFT_SUM_MS] += ttft_ms


def _tokens(prompt: int | None, completion: int | None, total: int | None) -> int:
    if total is not None:
        return total
    return (prompt or 0) + (completion or 0)


DELTA_TABLE: Final = "eventlog_rollup_delta"
"""On PostgreSQL a batch's increments are copied into this temporary table (one per
connection, emptied at each commit) and added with one ``INSERT ... SELECT``: one
statement instead of one execution per rollup row, a third of the rollup's cost."""

_delta = Table(
    DELTA_TABLE,
    MetaData(),
    *(Column(c.name, c.type) for c in eventlog_rollup_hourly.columns),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",
)


def delta_table_ddl() -> str:
    """``CREATE TEMPORARY TABLE IF NOT EXISTS eventlog_rollup_delta (...)``."""
    ddl = CreateTable(_delta, if_not_exists=True)
    dialect = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
    return str(ddl.compile(dialect=dialect)).strip()


def upsert_statement(dialect: str, *, from_delta: bool = False) -> Insert:
    """``INSERT ... ON CONFLICT (hour, keys) DO UPDATE SET s = s + excluded.s`` (and the
    greater of the two maxima); with ``from_delta`` (PostgreSQL), of the rows of
    :data:`DELTA_TABLE` in key order, instead of one row of parameters."""
    if dialect == "postgresql":
        ins: Any = postgresql.insert(eventlog_rollup_hourly)
        if from_delta:
            keys = [_delta.c.hour, *(_delta.c[k] for k in ROLLUP_KEYS)]
            ins = ins.from_select(
                [c.name for c in eventlog_rollup_hourly.columns],
                select(*_delta.columns).order_by(*keys),
            )
    elif dialect == "sqlite":
        ins = sqlite.insert(eventlog_rollup_hourly)
    else:
        raise ValueError(f"unsupported dialect {dialect!r}")
    table = eventlog_rollup_hourly.c
    greatest: Any = func.greatest if dialect == "postgresql" else func.max  # SQLite's max(a, b)
    values = {name: table[name] + ins.excluded[name] for name in SUM_COLUMNS}
    values["latency_max_ms"] = greatest(table.latency_max_ms, ins.excluded.latency_max_ms)
    statement: Insert = ins.on_conflict_do_update(
        index_elements=["hour", *ROLLUP_KEYS], set_=values
    )
    return statement


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What :func:`rebuild` did: the span it covered, the rollup rows it wrote and the
    LLM calls they sum."""

    since: datetime | None
    until: datetime | None
    rows: int
    calls: int


_CHUNK: Final = timedelta(days=1)
# The last hour a rebuild reaches: a call stamped in year 9999 must not overflow the
# arithmetic on its hour.
_LAST_HOUR: Final = datetime(9999, 12, 30, tzinfo=UTC)


async def rebuild(
    db: Database,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    model: str | None = None,
    before_chunk: Callable[[AsyncConnection, datetime, datetime], Awaitable[None]] | None = None,
) -> RebuildResult:
    """Recompute the rollup of the hours in ``[since, until)`` (every hour with calls or
    rollup rows when not given; times are rounded out to whole hours) from the raw rows;
    only ``model``'s rows when given. Hours older than the oldest stored call are kept
    when the rollup has history from before it: ``prune`` deleted their raw rows, and the
    rollup is their long-term record.

    Works a day at a time, each day in one transaction that first locks the rollup
    against the writer's increments. ``before_chunk(conn, start, end)`` runs first in
    each day's transaction (re-pricing uses it to update the costs it then sums).
    """
    start, end = await _span(db, since, until)
    if start is None or end is None:
        return RebuildResult(since, until, 0, 0)
    rows = calls = 0
    chunk_start = start
    while chunk_start < end:
        chunk_end = min(chunk_start + _CHUNK, end) if end - chunk_start > _CHUNK else end
        try:
            async with db.engine.begin() as conn:
                if db.dialect == "postgresql":
                    await conn.exec_driver_sql(
                        "LOCK TABLE eventlog_rollup_hourly IN SHARE ROW EXCLUSIVE MODE"
                    )
                if before_chunk is not None:
                    await before_chunk(conn, chunk_start, chunk_end)
                n_rows, n_calls = await _rebuild_chunk(conn, chunk_start, chunk_end, model)
        except SQLAlchemyError as err:
            raise DatabaseError(
                f"rebuilding the rollup of {chunk_start:%Y-%m-%d %H:00} to "
                f"{chunk_end:%Y-%m-%d %H:00} UTC failed: {type(err).__name__}: {err}",
                transient=is_transient(err),
            ) from err
        rows += n_rows
        calls += n_calls
        chunk_start = await _next_data(db, chunk_end, end, model)
    return RebuildResult(start, end, rows, calls)


async def _next_data(db: Database, after: datetime, end: datetime, model: str | None) -> datetime:
    """The first hour from ``after`` that has calls or rollup rows (``end`` if none):
    a rebuild skips the empty days between two far-apart calls."""
    events, rollup = chronicle_events.c, eventlog_rollup_hourly.c
    call = select(func.min(events.created_at)).where(
        events.event_type == LLM_CALL, events.created_at >= after, events.created_at < end
    )
    kept = select(func.min(rollup.hour)).where(rollup.hour >= after, rollup.hour < end)
    if model is not None:
        call = call.where(events.model == model)
        kept = kept.where(rollup.model == model)
    async with db.engine.connect() as conn:
        found = [(await conn.execute(query)).scalar() for query in (call, kept)]
    nexts = [hour_of(value) for value in found if value is not None]
    return max(after, min(nexts)) if nexts else end


async def _span(
    db: Database, since: datetime | None, until: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """The whole hours to rebuild: ``[since, until)`` rounded out, or every hour with
    calls or rollup rows; never the hours older than the oldest stored call when the
    rollup has history from before it (pruned raw rows: the rollup is their only record,
    and the hour the prune cut through is left as the writer kept it)."""
    events, rollup = chronicle_events.c, eventlog_rollup_hourly.c
    async with db.engine.connect() as conn:
        found = (
            await conn.execute(
                select(func.min(events.created_at), func.max(events.created_at)).where(
                    events.event_type == LLM_CALL
                )
            )
        ).one()
        kept = (await conn.execute(select(func.min(rollup.hour), func.max(rollup.hour)))).one()
    oldest_call, newest_call = found
    oldest_kept, newest_kept = kept
    if oldest_call is None:
        return None, None  # no raw calls: nothing to rebuild from, history kept as it is
    floor = hour_of(oldest_call)
    if oldest_kept is not None and hour_of(oldest_kept) < floor:
        floor += timedelta(hours=1)  # pruned before: the first hour may be partial
    if since is None:
        since = floor
    if until is None:
        newest = max(v for v in (newest_call, newest_kept) if v is not None)
        until = min(hour_of(newest), _LAST_HOUR) + timedelta(hours=1)  # the end of the last hour
    start = max(hour_of(since), floor)
    until = until.astimezone(UTC) if until.tzinfo else until.replace(tzinfo=UTC)
    end = min(hour_of(until), _LAST_HOUR)
    if end < until:
        end += timedelta(hours=1)
    if start >= end:
        return None, None
    return start, end


async def _rebuild_chunk(
    conn: AsyncConnection, start: datetime, end: datetime, model: str | None
) -> tuple[int, int]:
    rollup, events = eventlog_rollup_hourly.c, chronicle_events.c
    # The delete first: on SQLite it takes the write lock, so no batch commits between
    # the read below and the insert.
    condition = and_(rollup.hour >= start, rollup.hour < end)
    if model is not None:
        condition = and_(condition, rollup.model == model)
    await conn.execute(delete(eventlog_rollup_hourly).where(condition))
    # Whether the call failed as SQL sees it (error IS NOT NULL), as the writer, the
    # 0004 backfill and the raw reports count it: a JSON null imported by other means
    # is an error there too. (And error bodies are not read and decoded for nothing.)
    wanted = [
        events.id,
        events.created_at,
        *(events.error.is_not(None) if name == "error" else events[name] for name in _ROW_FIELDS),
    ]
    query = select(*wanted, events.cost_usd).where(
        events.event_type == LLM_CALL,
        events.created_at >= start,
        events.created_at < end,
    )
    if model is not None:
        query = query.where(events.model == model)
    result = await conn.stream(query.execution_options(yield_per=5000))
    calls: list[Call] = []
    n_keys = len(ROLLUP_KEYS)
    async for row in result:
        fields = list(row[2:-1])
        fields[n_keys] = bool(fields[n_keys])
        calls.append((row[0], hour_of(row[1]), *fields, row[-1]))
    grouped = aggregate(calls)
    if grouped:
        await conn.execute(
            insert(eventlog_rollup_hourly),
            [
                {
                    "hour": hour,
                    **dict(zip(ROLLUP_KEYS, keys, strict=True)),
                    **dict(zip(SUM_COLUMNS, sums, strict=True)),
                }
                for hour, keys, sums in grouped
            ],
        )
    return len(grouped), len(calls)
