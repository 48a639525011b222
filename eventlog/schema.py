"""The tables eventlog writes: chronicle's three, with the same names and columns.

Differences from chronicle, each on purpose:

- ``chronicle_events`` gains integer ``prompt_tokens``, ``completion_tokens`` and
  ``total_tokens`` (read from the response's ``usage``), so token queries need no JSON.
- ``created_at`` keeps microseconds on both backends (chronicle's SQLite keeps seconds).
- Run and step columns that only a start event carries (``name``, ``type``,
  ``start_time``...) are nullable, and ``chronicle_steps.run_id`` has no foreign key:
  an end, error, state or update event that arrives before its start creates the row,
  and the start fills it in later (see :mod:`eventlog.statements`).
- ``chronicle_events.created_at`` has a BRIN index on PostgreSQL: rows arrive in time
  order, and BRIN costs almost nothing per insert where a B-tree costs a page split.

- Since revision 0004 ``chronicle_events`` also has the cache and reasoning token
  counts, the call's cost with the price it came from, time to first token, and a
  ``status``/``error_type`` (filled by the writer: see :mod:`eventlog.usage`).

And tables of eventlog's own: ``eventlog_dead_letters``, the entries the database
refused for good, kept where a person can find and re-send them (see
:mod:`eventlog.deadletters`); ``eventlog_prices``, the user's prices (see
:mod:`eventlog.prices`); the rollup, LLM calls summed per hour and per day by the
writer in the events' own transaction (``eventlog_rollup_hourly``,
``eventlog_rollup_daily``, ``eventlog_rollup_users_daily``,
``eventlog_rollup_users_hourly``: see :mod:`eventlog.rollup`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)

from eventlog.types import JsonType, TagsType, UTCDateTime, UUIDType

__all__ = [
    "LATENCY_BIN_EDGES",
    "POSTGRESQL_ONLY_INDEXES",
    "ROLLUP_KEYS",
    "ROLLUP_TABLES",
    "ROLLUP_VALUE_COLUMNS",
    "SQLITE_ONLY_INDEXES",
    "USAGE_SUM_COLUMNS",
    "USER_ROLLUP_KEYS",
    "chronicle_events",
    "chronicle_runs",
    "chronicle_steps",
    "eventlog_dead_letters",
    "eventlog_prices",
    "eventlog_rollup_active_users",
    "eventlog_rollup_daily",
    "eventlog_rollup_hourly",
    "eventlog_rollup_users_daily",
    "eventlog_rollup_users_hourly",
    "include_object_for",
    "metadata",
]

metadata = MetaData()

chronicle_events = Table(
    "chronicle_events",
    metadata,
    Column("id", UUIDType, primary_key=True),
    Column("event_type", Text, nullable=False),
    Column("organization_id", Text),
    Column("project_id", Text),
    Column("user_id", Text),
    Column("chat_request", JsonType),
    Column("chat_response", JsonType),
    Column("error", JsonType),
    Column("provider", Text),
    Column("model", Text),
    Column("application", Text),
    Column("environment", Text),
    Column("request_organization_id", Text),
    Column("request_project_id", Text),
    Column("request_user_id", Text),
    Column("workflow_id", Text),
    Column("workflow_name", Text),
    Column("run_id", UUIDType),
    Column("step_id", UUIDType),
    Column("step_index", Integer),
    Column("prompt_id", Text),
    Column("prompt_version", Integer),
    Column("meta", JsonType),
    Column("response_meta", JsonType),
    Column("retries", Integer),
    Column("rate_limited", Boolean),
    Column("request_latency_ms", Integer),
    Column("total_latency_ms", Integer),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("total_tokens", Integer),
    Column("created_at", UTCDateTime, nullable=False),
    # Filled by the writer since revision 0004 (see eventlog.usage and eventlog.prices).
    Column("cache_read_tokens", Integer),
    Column("cache_write_tokens", Integer),
    Column("reasoning_tokens", Integer),
    Column("cost_usd", Numeric(20, 9)),  # exact dollars, to the nano-dollar
    Column("price_id", Text),  # the price used; "provider" for a cost the provider reported
    Column("ttft_ms", Integer),  # time to first token
    Column("status", Text),  # "ok", "error" or "rate_limited"
    Column("error_type", Text),
    Index("chronicle_events_workflow_id_idx", "workflow_id"),
    Index("chronicle_events_project_id_created_at_idx", "project_id", "created_at"),
    Index("chronicle_events_run_id_created_at_idx", "run_id", "created_at"),
)
# A user's calls in a time window. PostgreSQL: the user, then the time. SQLite (since
# 0007): the time first. With thousands of users, each insert into a user-first index
# lands on a random page, and SQLite writes every page a transaction changes whole to its
# WAL (PostgreSQL logs the change): at 1M rows the writer made 0.63 of its empty-table
# events/s with the user first and 0.80 with the time first (eventlog bench's workload,
# 5,000 users). SQLite's planner takes this narrow index for a window filtered by user and
# checks the user in the index before reading a row; reports over whole days read the
# per-user rollup. Projects are few: their index keeps the project first on both.
Index(
    "chronicle_events_user_id_created_at_idx",
    chronicle_events.c.user_id,
    chronicle_events.c.created_at,
).ddl_if(dialect="postgresql")
Index(
    "chronicle_events_created_at_user_id_idx",
    chronicle_events.c.created_at,
    chronicle_events.c.user_id,
).ddl_if(dialect="sqlite")
# Time ranges: BRIN on PostgreSQL (rows arrive in time order; nearly free per insert).
Index(
    "chronicle_events_created_at_idx", chronicle_events.c.created_at, postgresql_using="brin"
).ddl_if(dialect="postgresql")
# The exact latency report's columns, after the time (since 0005): a day's percentiles
# by model are read from this index alone, not from the rows (on SQLite the latency
# columns lie past ~3 KB of JSON in each row; PostgreSQL reads a 1.5 KB heap tuple per
# call). It replaces SQLite's plain B-tree on created_at.
Index(
    "chronicle_events_created_at_latency_idx",
    *(
        chronicle_events.c[name]
        for name in (
            "created_at",
            "event_type",
            "model",
            "request_latency_ms",
            "total_latency_ms",
            "ttft_ms",
        )
    ),
)

chronicle_runs = Table(
    "chronicle_runs",
    metadata,
    Column("id", UUIDType, primary_key=True),
    Column("name", Text),
    Column("description", Text),
    Column("application", Text),
    Column("environment", Text),
    Column("input", JsonType),
    Column("output", JsonType),
    Column("status", Text, nullable=False),
    Column("trace_id", Text),
    Column("span_id", Text),
    Column("tags", TagsType),
    Column("info", JsonType),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("chronicle_runs_name_created_at_idx", "name", "created_at"),
    Index("chronicle_runs_name_updated_at_idx", "name", "updated_at"),
    Index("chronicle_runs_app_env_created_at_idx", "application", "environment", "created_at"),
    Index("chronicle_runs_app_env_updated_at_idx", "application", "environment", "updated_at"),
    Index("chronicle_runs_updated_at_idx", "updated_at"),
    Index("chronicle_runs_created_at_idx", "created_at"),
)

chronicle_steps = Table(
    "chronicle_steps",
    metadata,
    Column("id", UUIDType, primary_key=True),
    Column("run_id", UUIDType, nullable=False),
    Column("type", Text),
    Column("parent_step", UUIDType),
    Column("name", Text),
    Column("input", JsonType),
    Column("output", JsonType),
    Column("status", Text, nullable=False),
    Column("tags", TagsType),
    Column("info", JsonType),
    Column("span_id", Text),
    Column("start_time", UTCDateTime),
    Column("end_time", UTCDateTime),
    Index("chronicle_steps_run_id_idx", "run_id"),
)

eventlog_dead_letters = Table(
    "eventlog_dead_letters",
    metadata,
    Column("id", UUIDType, primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),  # when the entry was refused
    Column("batch_id", UUIDType, nullable=False),
    Column("batch_size", Integer, nullable=False),
    Column("entry_kind", Text, nullable=False),  # the entry class: "ProxyLogEvent", ...
    Column("entry_id", UUIDType),  # the entry's id (step_id for step events)
    # The entry as an eventlog.records record. TEXT, not jsonb: jsonb refuses \u0000,
    # and a dead letter must be storable whatever the entry holds.
    Column("entry", Text, nullable=False),
    Column("error", Text, nullable=False),  # the latest refusal, "TypeName: message"
    Column("attempts", Integer, nullable=False, server_default=text("1")),
    Column("last_attempt_at", UTCDateTime),  # the latest retry; NULL before any
    Index("eventlog_dead_letters_created_at_idx", "created_at"),
)

eventlog_prices = Table(
    "eventlog_prices",
    metadata,
    # The user's own prices (``eventlog prices load``), ahead of the bundled ones. Money
    # is decimal text, exact on both backends: prices are read, never summed in SQL.
    Column("id", Text, primary_key=True),
    Column("provider", Text),
    Column("model", Text),  # an exact model name, or
    Column("pattern", Text),  # a glob over model names ("gpt-4o-2024-*")
    Column("valid_from", Date, nullable=False),
    Column("input", Text, nullable=False),  # USD per million tokens
    Column("output", Text, nullable=False),
    Column("cache_read", Text),  # NULL: priced as input
    Column("cache_write", Text),  # NULL: priced as input
    Column("reasoning", Text),  # NULL: priced as output
    Column("request", Text),  # USD per request
    Column("tiers", Text),  # JSON list of {"above_input_tokens": n, "input": ..., ...}
    Column("created_at", UTCDateTime, nullable=False),
)

LATENCY_BIN_EDGES: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 16, 19, 23, 27, 32, 38, 45, 54, 64, 76, 91, 108,
    128, 152, 181, 215, 256, 304, 362, 431, 512, 609, 724, 861, 1024, 1218, 1448, 1722,
    2048, 2435, 2896, 3444, 4096, 4871, 5793, 6889, 8192, 9742, 11585, 13777, 16384, 19484,
    23170, 27554, 32768, 38968, 46341, 55109, 65536, 77936, 92682, 110218, 131072, 155872,
    185364, 220436, 262144, 311744, 370728, 440872, 524288, 623487, 741455, 881744, 1048576,
)  # fmt: skip
"""Request-latency histogram edges in ms: ``round(2 ** (k / 4))``, duplicates dropped.
Bin 0 is under 1 ms, bin ``i`` is ``[edges[i-1], edges[i])``, the last bin is 1,048,576
ms and over: each bin is at most 19 % wide (``2 ** 0.25``)."""

ROLLUP_KEYS: tuple[str, ...] = (
    "model",
    "provider",
    "application",
    "environment",
    "project_id",
)
"""The dimensions of ``eventlog_rollup_hourly`` and ``eventlog_rollup_daily`` besides
the time; ``''`` stands for NULL (a key column cannot be NULL and unique on both
backends). Organization and user are not among them: with them the rollup has nearly a
row per three calls (measured: 353,142 rows for a million calls of 200 users), which
makes month-long reports slow and costs a third of the write throughput; they have
their own daily table, :data:`USER_ROLLUP_KEYS`."""

USER_ROLLUP_KEYS: tuple[str, ...] = ("organization_id", "user_id", *ROLLUP_KEYS)
"""The dimensions of ``eventlog_rollup_users_daily`` besides the day: every rollup key,
organization and user."""

USAGE_SUM_COLUMNS: tuple[str, ...] = (
    "requests",
    "errors",
    "rate_limited",
    "retried",
    "retries",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nanos",  # cost of the priced calls, in nano-dollars (exact)
    "priced",  # calls with a cost
    "unpriced",  # calls of a model without a price
    "unpriced_tokens",
    "tps_tokens",  # completion tokens of calls with both tokens and latency
    "tps_ms",  # their request latency
)
"""The sums the usage reports need: the columns of the per-user daily rollup."""

ROLLUP_VALUE_COLUMNS: tuple[str, ...] = (
    *USAGE_SUM_COLUMNS,
    "latency_count",
    "latency_sum_ms",
    "total_latency_count",
    "total_latency_sum_ms",
    "ttft_count",
    "ttft_sum_ms",
    *(f"lat_{i:02d}" for i in range(len(LATENCY_BIN_EDGES) + 1)),
    "latency_max_ms",  # the slowest request latency: the top of the last bin
)
"""The value columns of the hourly and daily rollups: sums (the usage sums, latency
counts and sums, a 77-bin request-latency histogram) and, last, a maximum."""


def _rollup_table(name: str, time: str, keys: tuple[str, ...], values: tuple[str, ...]) -> Table:
    return Table(
        name,
        metadata,
        Column(time, UTCDateTime, nullable=False),
        *(Column(key, Text, nullable=False) for key in keys),
        *(Column(value, BigInteger, nullable=False) for value in values),
        PrimaryKeyConstraint(time, *keys, name=f"{name}_pkey"),
    )


eventlog_rollup_hourly = _rollup_table(
    "eventlog_rollup_hourly", "hour", ROLLUP_KEYS, ROLLUP_VALUE_COLUMNS
)
"""LLM calls per UTC hour and :data:`ROLLUP_KEYS`."""

eventlog_rollup_daily = _rollup_table(
    "eventlog_rollup_daily", "day", ROLLUP_KEYS, ROLLUP_VALUE_COLUMNS
)
"""The same per UTC day: a month-long daily series reads 30 rows a group."""

eventlog_rollup_users_daily = _rollup_table(
    "eventlog_rollup_users_daily", "day", USER_ROLLUP_KEYS, USAGE_SUM_COLUMNS
)
"""Usage per UTC day, organization, user and :data:`ROLLUP_KEYS`: per-tenant and
per-user reports, and the distinct users of whole days."""

eventlog_rollup_users_hourly = _rollup_table(
    "eventlog_rollup_users_hourly", "hour", (*ROLLUP_KEYS, "user_id"), ()
)
"""Which users made calls in a UTC hour, per :data:`ROLLUP_KEYS` (no sums: one row
says "seen"): the distinct users of the hours at the ends of a window that are not
whole days. Written with insert-or-ignore, and only for pairs the writer has not
written before, so it costs next to nothing once an hour's users are in."""

eventlog_rollup_active_users = _rollup_table(
    "eventlog_rollup_active_users", "day", ("user_id",), ()
)
"""Which users made calls in a UTC day (no sums, no other key): a day's distinct users
in a few thousand narrow rows, for the reports that neither group nor filter. Written
like ``eventlog_rollup_users_hourly``."""

ROLLUP_TABLES: tuple[Table, ...] = (
    eventlog_rollup_hourly,
    eventlog_rollup_daily,
    eventlog_rollup_users_daily,
    eventlog_rollup_users_hourly,
    eventlog_rollup_active_users,
)

# One backend's own indexes: the BRIN and the user-first index above, and tag searches
# (`tags @> ARRAY['x']`) on PostgreSQL, as chronicle has them (SQLite keeps tags as JSON
# text, where an index would cost inserts and serve no query); the time-first user index
# on SQLite.
POSTGRESQL_ONLY_INDEXES = frozenset(
    {
        "chronicle_runs_tags_idx",
        "chronicle_steps_tags_idx",
        "chronicle_events_created_at_idx",
        "chronicle_events_user_id_created_at_idx",
    }
)
SQLITE_ONLY_INDEXES = frozenset({"chronicle_events_created_at_user_id_idx"})
for _table in (chronicle_runs, chronicle_steps):
    Index(f"{_table.name}_tags_idx", _table.c.tags, postgresql_using="gin").ddl_if(
        dialect="postgresql"
    )


def include_object_for(dialect: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """alembic's ``include_object`` hook for comparing a ``dialect`` database with the
    metadata: one backend's own indexes are not expected on the other."""
    other = SQLITE_ONLY_INDEXES if dialect == "postgresql" else POSTGRESQL_ONLY_INDEXES

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        return not (type_ == "index" and name in other)

    return include_object
