"""The rollup: LLM calls summed per hour and per day, kept by the writer.

Five tables (see :mod:`eventlog.schema`), so that a month-long report reads hundreds of
rows, not millions:

- ``eventlog_rollup_hourly``: per UTC hour, model, provider, application, environment and
  project: counts, token and cost sums, latency sums and a fixed log-scale histogram of
  request latency (see :data:`~eventlog.schema.LATENCY_BIN_EDGES`);
- ``eventlog_rollup_daily``: the same per UTC day;
- ``eventlog_rollup_users_daily``: the usage sums per UTC day, organization and user as
  well (per-tenant billing, top users, distinct users of whole days);
- ``eventlog_rollup_users_hourly``: which users made calls in an hour (the distinct
  users of the hours at a window's ends);
- ``eventlog_rollup_active_users``: which users made calls in a day (the distinct users
  of whole days, for reports that neither group nor filter).

Organization and user are kept out of the hourly rollup on purpose: with them it had a
row per three calls (200 users: 353,142 rows for a million calls), which made a 30-day
report read 440 MB and took a third of the write throughput.

Each call counts once. The writer adds a batch's increments in the transaction that
inserts the batch's rows, and only for the rows actually inserted: an event sent twice,
or a batch retried after a lost commit, finds its id stored and adds nothing. The
database sums them itself (:func:`batch_statement`), from the rows as stored: on
PostgreSQL the rows of the ids the transaction inserted (a COPY inserts all or fails; the
conflict-safe path learns them from ``RETURNING``), on SQLite the rows above the highest
``rowid`` before the insert. So no Python sums the rollup (that was about 40 % of the
writer's samples in py-spy on ``eventlog bench``'s workload), and the sums are those of
the stored values, as the raw reports see them.

:func:`rebuild` recomputes the rollup from the raw rows (``eventlog rollup --rebuild``):
after a bulk import by other means, a prune, or a re-pricing. It locks the rollup against
the writer's increments one day at a time (the writer waits; no increment is lost or
counted twice).
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from eventlog.exceptions import DatabaseError
from eventlog.schema import (
    LATENCY_BIN_EDGES,
    ROLLUP_KEYS,
    ROLLUP_TABLES,
    ROLLUP_VALUE_COLUMNS,
    USAGE_SUM_COLUMNS,
    USER_ROLLUP_KEYS,
    chronicle_events,
    eventlog_rollup_active_users,
    eventlog_rollup_daily,
    eventlog_rollup_hourly,
    eventlog_rollup_users_daily,
    eventlog_rollup_users_hourly,
)
from eventlog.transient import is_transient

if TYPE_CHECKING:
    from eventlog.database import Database

__all__ = [
    "LLM_CALL",
    "ROLLUP_KEY_BYTES",
    "ROLLUP_KEY_CHARS",
    "SUM_COLUMNS",
    "Call",
    "Increments",
    "RebuildResult",
    "add_calls",
    "batch_statement",
    "day_of",
    "hour_of",
    "latency_bin",
    "rebuild",
    "rollup_key",
    "setup_statements",
]

LLM_CALL: Final = "chronicle_llm_request"

SUM_COLUMNS: Final[tuple[str, ...]] = ROLLUP_VALUE_COLUMNS
"""The hourly and daily rollups' value columns, in table order: the order of the sums
in :class:`Increments`. All are sums but the last, ``latency_max_ms``, a maximum. The
first :data:`~eventlog.schema.USAGE_SUM_COLUMNS` are the per-user table's columns."""

_USAGE: Final = len(USAGE_SUM_COLUMNS)
assert SUM_COLUMNS[:_USAGE] == USAGE_SUM_COLUMNS
_FIRST_BIN: Final = SUM_COLUMNS.index("lat_00")
_MAX: Final = SUM_COLUMNS.index("latency_max_ms")
_NANOS: Final = Decimal(1_000_000_000)
_S: Final = {name: i for i, name in enumerate(SUM_COLUMNS)}
_LATENCY_COUNT: Final = _S["latency_count"]
_TOTAL_LATENCY_COUNT: Final = _S["total_latency_count"]
_TTFT_COUNT: Final = _S["ttft_count"]
assert _S["latency_sum_ms"] == _LATENCY_COUNT + 1
assert _S["total_latency_sum_ms"] == _TOTAL_LATENCY_COUNT + 1
assert _S["ttft_sum_ms"] == _TTFT_COUNT + 1

# A call, as the rollup's rebuild reads it from the stored rows: a tuple.
#   (id, hour, model, provider, application, environment, project, organization, user,
#    has_error, rate_limited, retries, prompt, completion, total, cache_read, cache_write,
#    reasoning, request_ms, total_ms, ttft_ms, cost)
Call = tuple[Any, ...]

_CALL_KEYS: Final = (*ROLLUP_KEYS, "organization_id", "user_id")
assert ("organization_id", "user_id", *ROLLUP_KEYS) == USER_ROLLUP_KEYS  # add_calls' order
_N_KEYS: Final = len(_CALL_KEYS)
_N_COARSE: Final = len(ROLLUP_KEYS)
_ROW_FIELDS: Final = (
    *_CALL_KEYS,
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


def hour_of(moment: datetime) -> datetime:
    """The UTC hour ``moment`` falls in."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def day_of(moment: datetime) -> datetime:
    """The UTC day ``moment`` falls in (its midnight)."""
    return hour_of(moment).replace(hour=0)


def latency_bin(ms: int) -> int:
    """The histogram bin of a request latency in milliseconds."""
    return bisect.bisect_right(LATENCY_BIN_EDGES, ms)


ROLLUP_KEY_BYTES: Final = 360
"""A name longer than this (in UTF-8) is kept in the rollup as its first
:data:`ROLLUP_KEY_CHARS` characters: a rollup's primary key holds up to seven names, and
PostgreSQL refuses a B-tree entry over 2,704 bytes."""
ROLLUP_KEY_CHARS: Final = 90


def rollup_key(name: str | None) -> str:
    """A dimension's value as the rollup keys it: ``''`` for none, long names cut."""
    if name is None:
        return ""
    if len(name) * 4 > ROLLUP_KEY_BYTES and len(name.encode("utf-8")) > ROLLUP_KEY_BYTES:
        return name[:ROLLUP_KEY_CHARS]
    return name


RollupRows = list[tuple[Table, list[tuple[datetime, tuple[str, ...], list[int]]]]]
"""Rows to add, per table: ``(time, keys, values)`` in key order."""


class Increments:
    """Rollup rows being added up from stored calls (:func:`add_calls`, for
    :func:`rebuild`): sums per hour and :data:`~eventlog.schema.ROLLUP_KEYS`, usage sums
    per day, organization, user and keys, the (hour, keys and user) seen and the (day,
    user) seen."""

    __slots__ = ("active", "hourly", "seen", "users")

    def __init__(self) -> None:
        self.hourly: dict[tuple[datetime, tuple[str, ...]], list[int]] = {}
        self.users: dict[tuple[datetime, tuple[str, ...]], list[int]] = {}
        self.seen: set[tuple[datetime, tuple[str, ...]]] = set()
        self.active: set[tuple[datetime, tuple[str, ...]]] = set()

    def rows(self) -> RollupRows:
        """The rows of every rollup table, each table's in key order, tables in
        :data:`ROLLUP_TABLES` order."""
        daily: dict[tuple[datetime, tuple[str, ...]], list[int]] = {}
        for (hour, keys), sums in self.hourly.items():
            key = (hour.replace(hour=0), keys)
            into = daily.get(key)
            if into is None:
                daily[key] = list(sums)
            else:
                into[:_MAX] = map(int.__add__, into[:_MAX], sums[:_MAX])
                if sums[_MAX] > into[_MAX]:
                    into[_MAX] = sums[_MAX]
        return [
            (eventlog_rollup_hourly, _sorted(self.hourly)),
            (eventlog_rollup_daily, _sorted(daily)),
            (eventlog_rollup_users_daily, _sorted(self.users)),
            (eventlog_rollup_users_hourly, [(hour, k, []) for hour, k in sorted(self.seen)]),
            (eventlog_rollup_active_users, [(day, k, []) for day, k in sorted(self.active)]),
        ]


def _sorted(
    groups: dict[tuple[datetime, tuple[str, ...]], list[int]],
) -> list[tuple[datetime, tuple[str, ...], list[int]]]:
    return [(when, keys, sums) for (when, keys), sums in sorted(groups.items())]


def add_calls(increments: Increments, calls: Iterable[Call]) -> None:
    """Add ``calls`` to ``increments``: what the writer's SQL (:func:`batch_statement`)
    adds for them, computed in Python by :func:`rebuild`."""
    width = len(SUM_COLUMNS)
    hourly, users = increments.hourly, increments.users
    seen, active = increments.seen, increments.active
    add = int.__add__
    for call in calls:
        hour = call[1]
        keys = tuple(rollup_key(k) for k in call[2 : 2 + _N_KEYS])
        coarse = keys[:_N_COARSE]
        organization, user = keys[_N_COARSE], keys[_N_COARSE + 1]
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
        ) = call[2 + _N_KEYS :]
        completion_ok = completion is not None and request_ms is not None and request_ms > 0
        if cost is None:
            cost_nanos = priced = 0
            unpriced_tokens = _tokens(prompt, completion, total)
        else:
            # Rounded as the writer's SQL rounds the stored cost (half away from zero): a
            # cost given as a float need not be whole nano-dollars.
            nanos = cost.scaleb(9) if type(cost) is Decimal else Decimal(cost) * _NANOS
            cost_nanos = int(nanos.to_integral_value(ROUND_HALF_UP))
            priced, unpriced_tokens = 1, 0
        usage = (  # in USAGE_SUM_COLUMNS order
            1,
            1 if has_error else 0,
            1 if rate_limited else 0,
            1 if retries and retries > 0 else 0,
            retries or 0,  # as SUM(retries) over the raw rows
            prompt or 0,
            completion or 0,
            total or 0,
            cache_read or 0,
            cache_write or 0,
            reasoning or 0,
            cost_nanos,
            priced,
            1 - priced,
            unpriced_tokens,
            completion if completion_ok else 0,
            request_ms if completion_ok else 0,
        )
        sums = hourly.get((hour, coarse))
        if sums is None:
            sums = hourly[(hour, coarse)] = [0] * width
        sums[:_USAGE] = map(add, sums[:_USAGE], usage)
        if request_ms is not None:
            sums[_LATENCY_COUNT] += 1
            sums[_LATENCY_COUNT + 1] += request_ms
            sums[_FIRST_BIN + latency_bin(request_ms)] += 1
            if request_ms > sums[_MAX]:
                sums[_MAX] = request_ms
        if total_ms is not None:
            sums[_TOTAL_LATENCY_COUNT] += 1
            sums[_TOTAL_LATENCY_COUNT + 1] += total_ms
        if ttft_ms is not None:
            sums[_TTFT_COUNT] += 1
            sums[_TTFT_COUNT + 1] += ttft_ms
        day = hour.replace(hour=0)
        user_key = (organization, user, *coarse)
        per_user = users.get((day, user_key))
        if per_user is None:
            users[(day, user_key)] = list(usage)
        else:
            per_user[:] = map(add, per_user, usage)
        if user:
            seen.add((hour, (*coarse, user)))
            active.add((day, (user,)))


def _tokens(prompt: int | None, completion: int | None, total: int | None) -> int:
    if total is not None:
        return total
    return (prompt or 0) + (completion or 0)


# -- writing -----------------------------------------------------------------------------


def _key_sql(column: str, dialect: str) -> str:
    """A dimension as :func:`rollup_key` keys it, in SQL."""
    size = (
        f"octet_length({column})" if dialect == "postgresql" else f"length(CAST({column} AS BLOB))"
    )
    return (
        f"CASE WHEN {size} > {ROLLUP_KEY_BYTES} THEN substr({column}, 1, {ROLLUP_KEY_CHARS}) "
        f"ELSE COALESCE({column}, '') END"
    )


def _bin_sql(low: int, high: int) -> str:
    """:func:`latency_bin` of ``r`` (known to be in bins ``low..high``) as a binary search
    of nested ``CASE`` s: seven comparisons a row for SQLite, which has no
    ``width_bucket``."""
    if low == high:
        return str(low)
    middle = (low + high + 1) // 2  # r is in bin >= middle iff r >= edges[middle - 1]
    return (
        f"CASE WHEN r >= {LATENCY_BIN_EDGES[middle - 1]} THEN {_bin_sql(middle, high)} "
        f"ELSE {_bin_sql(low, middle - 1)} END"
    )


# The token counts, summed as they are: the usage sums after the counts of calls.
_TOKEN_COLUMNS: Final = USAGE_SUM_COLUMNS[5:11]
assert (_TOKEN_COLUMNS[0], _TOKEN_COLUMNS[-1]) == ("prompt_tokens", "reasoning_tokens")


def _calls_sql(dialect: str) -> str:
    """One row per LLM call of the batch, with the rollup's keys and per-call values
    (as :func:`add_calls` computes them) under the rollup's column names. On SQLite it
    runs in a trigger: the batch's parameters are the columns of ``NEW``."""
    pg = dialect == "postgresql"
    if pg:
        hour = "date_trunc('hour', e.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        day = "date_trunc('day', e.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        edges = ",".join(map(str, LATENCY_BIN_EDGES))
        bin_ = f"width_bucket(e.request_latency_ms, '{{{edges}}}'::int[])"
        # The ids are those of LLM calls the transaction inserted (all of the batch's
        # after a COPY, those RETURNING gave as LLM calls otherwise), so event_type is
        # not tested here: with it the planner scanned every call of the table by the
        # latency index and filtered the ids (measured: 14 against 3 ms for 1,000
        # calls among 20,000).
        where = "e.id = ANY($1::uuid[])"
        # The calls whose presence rows the writer has not stored before.
        fresh = "e.id = ANY($2::uuid[]) AS fresh"
    else:
        # The writer's own time text ("YYYY-MM-DD HH:MM:SS.ffffff", UTC), cut.
        hour = "substr(e.created_at, 1, 13) || ':00:00.000000'"
        day = "substr(e.created_at, 1, 10) || ' 00:00:00.000000'"
        search = _bin_sql(0, len(LATENCY_BIN_EDGES)).replace("r >=", "e.request_latency_ms >=")
        bin_ = f"CASE WHEN e.request_latency_ms IS NULL THEN NULL ELSE {search} END"
        # SQLite gives an inserted row a rowid above every rowid there was, and the
        # writer holds the write lock from before the insert.
        where = "e.rowid > NEW.before"
        fresh = f"e.id IN (SELECT id FROM {_FRESH_TABLE}) AS fresh"
    true, false = ("1", "0")
    flag = "CASE WHEN {} THEN 1 ELSE 0 END"
    priced = "e.cost_usd IS NOT NULL"
    tps = "e.completion_tokens IS NOT NULL AND e.request_latency_ms > 0"
    per_call = {
        "requests": true,
        "errors": flag.format("e.error IS NOT NULL"),
        "rate_limited": flag.format("e.rate_limited"),
        "retried": flag.format("e.retries > 0"),
        "retries": "COALESCE(e.retries, 0)",
        **{name: f"COALESCE(e.{name}, 0)" for name in _TOKEN_COLUMNS},
        "cost_nanos": "COALESCE(CAST(round(e.cost_usd * 1000000000) AS BIGINT), 0)",
        "priced": flag.format(priced),
        "unpriced": flag.format(f"NOT ({priced})"),
        "unpriced_tokens": (
            # In 64 bits: two valid 32-bit counts may not add up in 32 (the checked
            # encoder then stores no total).
            f"CASE WHEN {priced} THEN 0 ELSE COALESCE(CAST(e.total_tokens AS BIGINT), "
            "CAST(COALESCE(e.prompt_tokens, 0) AS BIGINT) + COALESCE(e.completion_tokens, 0)) END"
        ),
        "tps_tokens": f"CASE WHEN {tps} THEN e.completion_tokens ELSE {false} END",
        "tps_ms": f"CASE WHEN {tps} THEN e.request_latency_ms ELSE {false} END",
    }
    assert tuple(per_call) == USAGE_SUM_COLUMNS
    columns = [
        f"{hour} AS hour",
        f"{day} AS day",
        *(f"{_key_sql('e.' + key, dialect)} AS {key}" for key in _CALL_KEYS),
        *(f"{sql} AS {name}" for name, sql in per_call.items()),
        "e.request_latency_ms AS r",
        "e.total_latency_ms AS tl",
        "e.ttft_ms AS tf",
        f"{bin_} AS b",
        fresh,
    ]
    if not pg:
        where += f" AND e.event_type = '{LLM_CALL}'"
    return f"SELECT {', '.join(columns)} FROM chronicle_events e WHERE {where}"


_LATENCIES: Final = (
    ("latency_count", "latency_sum_ms", "r"),
    ("total_latency_count", "total_latency_sum_ms", "tl"),
    ("ttft_count", "ttft_sum_ms", "tf"),
)
_BINS: Final = tuple(f"lat_{i:02d}" for i in range(len(LATENCY_BIN_EDGES) + 1))


def _hourly_sql(dialect: str, calls: str) -> str:
    """The hourly increments (``hour``, :data:`ROLLUP_KEYS`, :data:`SUM_COLUMNS`) of the
    rows of ``calls``, grouped. PostgreSQL counts each bin with a ``FILTER``; SQLite,
    where 77 ``CASE`` s a call cost more than the rest of the rollup, first counts the
    calls per group and bin, then spreads those counts over the bin columns."""
    keys = ", ".join(("hour", *ROLLUP_KEYS))
    usage = [f"SUM({name}) AS {name}" for name in USAGE_SUM_COLUMNS if name != "requests"]
    if dialect == "postgresql":
        sums = ["COUNT(*) AS requests", *usage]
        for count, total, column in _LATENCIES:
            sums += [f"COUNT({column}) AS {count}", f"COALESCE(SUM({column}), 0) AS {total}"]
        sums += [f"COUNT(*) FILTER (WHERE b = {i}) AS {name}" for i, name in enumerate(_BINS)]
        sums.append("GREATEST(COALESCE(MAX(r), 0), 0) AS latency_max_ms")  # from 0, as kept
        return f"SELECT {keys}, {', '.join(sums)} FROM {calls} GROUP BY {keys}"
    inner = ["COUNT(*) AS requests", *usage]
    outer = [f"SUM({name}) AS {name}" for name in USAGE_SUM_COLUMNS]
    for count, total, column in _LATENCIES:
        inner += [f"COUNT({column}) AS {count}", f"SUM({column}) AS {total}"]
        outer += [f"SUM({count}) AS {count}", f"COALESCE(SUM({total}), 0) AS {total}"]
    inner += ["MAX(r) AS latency_max_ms"]
    outer += [
        f"SUM(CASE WHEN b = {i} THEN requests ELSE 0 END) AS {n}" for i, n in enumerate(_BINS)
    ]
    outer.append("max(COALESCE(MAX(latency_max_ms), 0), 0) AS latency_max_ms")
    by_bin = f"SELECT {keys}, b, {', '.join(inner)} FROM {calls} GROUP BY {keys}, b"
    return f"SELECT {keys}, {', '.join(outer)} FROM ({by_bin}) GROUP BY {keys}"


def _upsert_sql(table: Table, dialect: str, select: str) -> str:
    """``INSERT INTO table`` the rows of ``select`` (in the table's column order), in key
    order (two writers lock rollup rows in the same order, and wait rather than
    deadlock), adding to the rows there (``DO NOTHING`` for a table of keys only)."""
    pg = dialect == "postgresql"
    columns = [c.name for c in table.columns]
    key = [c.name for c in table.primary_key.columns]
    values = [name for name in columns if name not in key]
    if values:
        into = "t." if pg else ""
        most = "GREATEST" if pg else "max"
        sets = [
            f"{name} = {most}({into}{name}, excluded.{name})"
            if name == "latency_max_ms"
            else f"{name} = {into}{name} + excluded.{name}"
            for name in values
        ]
        conflict = "DO UPDATE SET " + ", ".join(sets)
    else:
        conflict = "DO NOTHING"
    alias = " AS t" if pg else ""
    return (
        f"INSERT INTO {table.name}{alias} ({', '.join(columns)}) "
        f"SELECT * FROM ({select}) AS s ORDER BY {', '.join(key)} "
        f"ON CONFLICT ({', '.join(key)}) {conflict}"
    )


def _daily_sql(dialect: str, hourly: str) -> str:
    """The daily increments from the hourly ones (the table or CTE ``hourly``)."""
    day = (
        "date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        if dialect == "postgresql"
        else "substr(hour, 1, 10) || ' 00:00:00.000000'"
    )
    sums = [f"SUM({name})" for name in SUM_COLUMNS[:_MAX]] + ["MAX(latency_max_ms)"]
    keys = ", ".join(ROLLUP_KEYS)
    return f"SELECT {day} AS day, {keys}, {', '.join(sums)} FROM {hourly} GROUP BY 1, {keys}"


def _users_sql(calls: str) -> str:
    keys = ", ".join(("day", *USER_ROLLUP_KEYS))
    sums = ["COUNT(*)", *(f"SUM({name})" for name in USAGE_SUM_COLUMNS[1:])]
    return f"SELECT {keys}, {', '.join(sums)} FROM {calls} GROUP BY {keys}"


def _seen_sql(table: Table, calls: str) -> str:
    keys = ", ".join(c.name for c in table.primary_key.columns)
    return f"SELECT DISTINCT {keys} FROM {calls} WHERE user_id <> '' AND fresh"


_BATCH_TABLE: Final = "eventlog_batch_hourly"
_BATCH_VIEW: Final = "eventlog_batch"
_FRESH_TABLE: Final = "eventlog_batch_fresh"


def batch_statement(dialect: str) -> str:
    """The statement that adds the LLM calls a batch's transaction inserted to every
    rollup table, run in that transaction after the insert: the database sums the calls
    from the rows as stored, so no Python sums the calls.

    PostgreSQL: two parameters, the ids (``uuid[]``) of the LLM calls the transaction
    inserted (not those of calls stored before, which a re-sent id would count again)
    and those of them whose presence rows may be new. SQLite, once
    :func:`setup_statements` have run on the connection: the named parameters
    ``before``, the highest ``rowid`` of ``chronicle_events`` before the insert, and
    ``fresh``, a JSON array of the ids whose presence rows may be new.
    """
    if dialect == "sqlite":
        # Without a conflict clause: one here would override those of the trigger's steps.
        return f"INSERT INTO {_BATCH_VIEW} (before, fresh) VALUES (:before, :fresh)"
    if dialect != "postgresql":
        raise ValueError(f"unsupported dialect {dialect!r}")
    calls = _calls_sql(dialect)
    parts = [
        f"c AS MATERIALIZED ({calls})",
        f"h AS MATERIALIZED ({_hourly_sql(dialect, 'c')})",
        f"u0 AS ({_upsert_sql(eventlog_rollup_hourly, dialect, 'SELECT * FROM h')})",
        f"u1 AS ({_upsert_sql(eventlog_rollup_daily, dialect, _daily_sql(dialect, 'h'))})",
        f"u2 AS ({_upsert_sql(eventlog_rollup_users_daily, dialect, _users_sql('c'))})",
        *(
            f"u{i} AS ({_upsert_sql(table, dialect, _seen_sql(table, 'c'))})"
            for i, table in ((3, eventlog_rollup_users_hourly), (4, eventlog_rollup_active_users))
        ),
    ]
    return "WITH " + ",\n".join(parts) + "\nSELECT 1"


def setup_statements(dialect: str) -> tuple[str, ...]:
    """What a connection runs once before :func:`batch_statement`: nothing on
    PostgreSQL. On SQLite, temporary objects of the connection's own: a table for a
    batch's hourly increments, from which the daily ones are summed, and a view whose
    ``INSTEAD OF INSERT`` trigger runs the rollup's statements in turn. One statement a
    batch instead of eight: sqlite3 takes the GIL back after each statement, and with
    the writer encoding the next batch meanwhile each took up to a switch interval
    (5 ms) to get it: 43 ms a batch of 1,000 calls for 19 ms of SQL, against 21 ms as one
    statement (``eventlog bench``'s workload, the writer flat out; a throwaway script
    timing the writer's thread).
    """
    if dialect == "postgresql":
        return ()
    if dialect != "sqlite":
        raise ValueError(f"unsupported dialect {dialect!r}")
    source = f"({_calls_sql(dialect)})"
    columns = ", ".join(
        [
            "hour TEXT",
            *(f"{key} TEXT" for key in ROLLUP_KEYS),
            *(f"{name} INTEGER" for name in SUM_COLUMNS),
        ]
    )
    # Inside a trigger, tables are named without their schema: the temporary schema is
    # searched first, then the main one.
    batch = _BATCH_TABLE
    steps = (
        # The fresh ids in a table first: read from NEW in the calls' query, they were
        # parsed again for every call.
        f"DELETE FROM {_FRESH_TABLE}",
        f"INSERT OR IGNORE INTO {_FRESH_TABLE} SELECT value FROM json_each(NEW.fresh)",
        f"DELETE FROM {batch}",
        f"INSERT INTO {batch} {_hourly_sql(dialect, source)}",
        _upsert_sql(eventlog_rollup_hourly, dialect, f"SELECT * FROM {batch}"),
        _upsert_sql(eventlog_rollup_daily, dialect, _daily_sql(dialect, batch)),
        _upsert_sql(eventlog_rollup_users_daily, dialect, _users_sql(source)),
        _upsert_sql(
            eventlog_rollup_users_hourly, dialect, _seen_sql(eventlog_rollup_users_hourly, source)
        ),
        _upsert_sql(
            eventlog_rollup_active_users, dialect, _seen_sql(eventlog_rollup_active_users, source)
        ),
    )
    body = "".join(f"{step};\n" for step in steps)
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {_BATCH_TABLE} ({columns})",
        f"CREATE TEMP TABLE IF NOT EXISTS {_FRESH_TABLE} (id TEXT PRIMARY KEY)",
        f"CREATE TEMP VIEW IF NOT EXISTS {_BATCH_VIEW} AS SELECT 0 AS before, '' AS fresh",
        f"CREATE TEMP TRIGGER IF NOT EXISTS {_BATCH_VIEW}_rollup "
        f"INSTEAD OF INSERT ON {_BATCH_VIEW} BEGIN\n{body}END",
    )


# -- rebuild -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What :func:`rebuild` did: the span it covered, the hourly rollup rows it wrote and
    the LLM calls they sum."""

    since: datetime | None
    until: datetime | None
    rows: int
    calls: int


_DAY: Final = timedelta(days=1)
# The last hour a rebuild reaches: a call stamped in year 9999 must not overflow the
# arithmetic on its hour (or its day's end).
_LAST_HOUR: Final = datetime(9999, 12, 30, tzinfo=UTC)
_LOCK: Final = (
    "LOCK TABLE " + ", ".join(t.name for t in ROLLUP_TABLES) + " IN SHARE ROW EXCLUSIVE MODE"
)


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
    only ``model``'s rows when given. The daily tables are recomputed for each day the
    window touches: the daily sums from that day's hourly rows, the per-user sums from
    the raw rows of the whole day.

    Hours older than the oldest stored call are kept when the rollup has history from
    before it: ``prune`` deleted their raw rows, and the rollup is their long-term
    record. The per-user rows of a day that ``prune`` cut through stay as the writer
    kept them, changed only by what ``before_chunk`` changes in that day's remaining
    calls (a re-pricing).

    Works a UTC day at a time, each day in one transaction that first locks the rollup
    against the writer's increments. ``before_chunk(conn, start, end)`` runs first in
    each day's transaction (re-pricing uses it to update the costs it then sums).
    """
    from eventlog import sqlite  # here: it imports this module

    span = await _span(db, since, until)
    if span is None:
        return RebuildResult(since, until, 0, 0)
    start, end, complete_from = span
    rows = calls = 0
    chunk_start = start
    while chunk_start < end:
        day = day_of(chunk_start)
        chunk_end = min(day + _DAY, end)
        try:
            async with db.engine.begin() as conn:
                # The writer's increments wait from here to the commit: on SQLite the
                # write lock from the start (sqlite3 would begin at the first write,
                # after the reads: a batch committed between the per-user sums read
                # before and after a re-pricing was counted twice).
                if db.dialect == "postgresql":
                    await conn.exec_driver_sql(_LOCK)
                else:
                    await sqlite.begin(conn, "IMMEDIATE")
                whole = day >= complete_from
                before = None
                if before_chunk is not None:
                    if not whole:  # a day cut by a prune: its per-user rows are adjusted
                        before = await _user_sums(conn, day, model)
                    await before_chunk(conn, chunk_start, chunk_end)
                n_rows, n_calls = await _rebuild_chunk(
                    conn, day, chunk_start, chunk_end, model, users=whole
                )
                if before is not None:
                    await _add_user_changes(conn, before, await _user_sums(conn, day, model))
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
) -> tuple[datetime, datetime, datetime] | None:
    """The whole hours to rebuild: ``[since, until)`` rounded out, or every hour with
    calls or rollup rows; never the hours older than the oldest stored call when the
    rollup has history from before it (pruned raw rows: the rollup is their only record,
    and the hour the prune cut through is left as the writer kept it). Third: the first
    day whose raw rows are all there (per-user sums of earlier days are kept)."""
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
        return None  # no raw calls: nothing to rebuild from, history kept as it is
    floor = hour_of(oldest_call)
    complete_from = datetime.min.replace(tzinfo=UTC)
    if oldest_kept is not None and hour_of(oldest_kept) < floor:
        floor += timedelta(hours=1)  # pruned before: the first hour may be partial
        complete_from = day_of(oldest_call) + _DAY
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
        return None
    return start, end, complete_from


def _where_model(table: Table, model: str | None) -> list[Any]:
    return [] if model is None else [table.c.model == model]


async def _rebuild_chunk(
    conn: AsyncConnection,
    day: datetime,
    start: datetime,
    end: datetime,
    model: str | None,
    *,
    users: bool,
) -> tuple[int, int]:
    """Rebuild the hours ``[start, end)`` of ``day`` and that day's daily rows (its
    per-user rows only if ``users``: the whole day's raw rows are there)."""
    day_end = day + _DAY
    # The caller's transaction holds the writer's increments off (see rebuild).
    for table, time, low, high in (
        (eventlog_rollup_hourly, "hour", start, end),
        (eventlog_rollup_users_hourly, "hour", start, end),
        (eventlog_rollup_daily, "day", day, day_end),
        (eventlog_rollup_users_daily, "day", day, day_end),
        (eventlog_rollup_active_users, "day", day, day_end),
    ):
        if table in (eventlog_rollup_users_daily, eventlog_rollup_active_users) and not users:
            continue
        if table is eventlog_rollup_active_users and model is not None:
            continue  # no model in its key: a model's rebuild adds its users below
        await conn.execute(
            delete(table).where(
                table.c[time] >= low, table.c[time] < high, *_where_model(table, model)
            )
        )
    window = Increments()  # the hours being rebuilt
    whole_day = Increments()  # the day's per-user sums
    n_calls = 0
    async for call in _stored_calls(conn, *((day, day_end) if users else (start, end)), model):
        add_calls(whole_day, (call,))
        if start <= call[1] < end:
            add_calls(window, (call,))
            n_calls += 1
    written = window.rows()
    await _insert(conn, eventlog_rollup_hourly, written[0][1])
    await _insert(conn, eventlog_rollup_users_hourly, written[3][1])
    if users:
        day_rows = whole_day.rows()
        await _insert(conn, eventlog_rollup_users_daily, day_rows[2][1])
        await _insert(conn, eventlog_rollup_active_users, day_rows[4][1], ignore=True)
    # The day's sums, from its hourly rows as they now are (the hours outside the window
    # are kept, with their pruned history).
    hourly = eventlog_rollup_hourly
    kept = await conn.execute(
        select(hourly).where(
            hourly.c.hour >= day, hourly.c.hour < day_end, *_where_model(hourly, model)
        )
    )
    daily = Increments()
    for row in kept:
        daily.hourly[(hour_of(row[0]), tuple(row[1 : 1 + _N_COARSE]))] = list(row[1 + _N_COARSE :])
    await _insert(conn, eventlog_rollup_daily, daily.rows()[1][1])
    return len(written[0][1]), n_calls


async def _stored_calls(
    conn: AsyncConnection, start: datetime, end: datetime, model: str | None
) -> AsyncIterator[Call]:
    """The LLM calls stored in ``[start, end)`` (only ``model``'s when given), as the
    rollup sees them."""
    events = chronicle_events.c
    # Whether the call failed as SQL sees it (error IS NOT NULL), as the writer, the
    # 0004 backfill and the raw reports count it: a JSON null imported by other means
    # is an error there too. (And error bodies are not read and decoded for nothing.)
    wanted = [
        events.id,
        events.created_at,
        *(events.error.is_not(None) if name == "error" else events[name] for name in _ROW_FIELDS),
    ]
    query = select(*wanted, events.cost_usd).where(
        events.event_type == LLM_CALL, events.created_at >= start, events.created_at < end
    )
    if model is not None:
        query = query.where(events.model == model)
    result = await conn.stream(query.execution_options(yield_per=5000))
    async for row in result:
        fields = list(row[2:-1])
        fields[_N_KEYS] = bool(fields[_N_KEYS])
        yield (row[0], hour_of(row[1]), *fields, row[-1])


async def _user_sums(
    conn: AsyncConnection, day: datetime, model: str | None
) -> dict[tuple[datetime, tuple[str, ...]], list[int]]:
    """The per-user sums of the raw calls of ``day`` still stored."""
    increments = Increments()
    async for call in _stored_calls(conn, day, day + _DAY, model):
        add_calls(increments, (call,))
    return increments.users


async def _add_user_changes(
    conn: AsyncConnection,
    before: dict[tuple[datetime, tuple[str, ...]], list[int]],
    after: dict[tuple[datetime, tuple[str, ...]], list[int]],
) -> None:
    """Add ``after - before`` to the per-user rows of a day a prune cut through: what a
    re-pricing changed in its remaining calls (its pruned calls are known only there)."""
    table = eventlog_rollup_users_daily
    zero = [0] * _USAGE
    changes = []
    for key in sorted(before.keys() | after.keys()):
        change = [a - b for a, b in zip(after.get(key, zero), before.get(key, zero), strict=True)]
        if any(change):
            changes.append((key[0], key[1], change))
    if not changes:
        return
    # Added to the rows there, one row of parameters at a time (the writer's SQL adds
    # the sums of a SELECT; here the changes are Python values, typed by the table).
    primary = [c.name for c in table.primary_key.columns]
    ins: Any = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)
    add = {c.name: c + ins.excluded[c.name] for c in table.columns if c.name not in primary}
    names = [c.name for c in table.columns]
    await conn.execute(
        ins.on_conflict_do_update(index_elements=primary, set_=add),
        [dict(zip(names, (day, *keys, *change), strict=True)) for day, keys, change in changes],
    )


async def _insert(
    conn: AsyncConnection,
    table: Table,
    rows: list[tuple[datetime, tuple[str, ...], list[int]]],
    *,
    ignore: bool = False,
) -> None:
    """Insert rows (``ignore``: those not there already)."""
    if not rows:
        return
    key = [c.name for c in table.primary_key.columns]
    values = [c.name for c in table.columns if c.name not in key]
    statement: Any = insert(table)
    if ignore:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(table).on_conflict_do_nothing(index_elements=key)
    await conn.execute(
        statement,
        [
            {
                key[0]: when,
                **dict(zip(key[1:], keys, strict=True)),
                **dict(zip(values, sums, strict=True)),
            }
            for when, keys, sums in rows
        ],
    )
