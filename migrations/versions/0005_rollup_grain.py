"""The rollup's grain: coarse hourly and daily tables, users per day and per hour

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

0004's ``eventlog_rollup_hourly`` was keyed by hour, model, provider, application,
environment, organization, project and user. With the user and the organization in the
key it had nearly a row per three calls (measured: 353,142 rows for a million calls of
200 users), so a 30-day report read ~440 MB of rollup, and adding to it cost a third of
the write throughput. It is replaced by five tables:

- ``eventlog_rollup_hourly``: per UTC hour, model, provider, application, environment
  and project (no organization, no user), with the same sums, latency histogram and
  maximum as before (the value columns now list the usage sums first);
- ``eventlog_rollup_daily``: the same per UTC day;
- ``eventlog_rollup_users_daily``: the usage sums per UTC day, organization, user and
  the five keys above (per-tenant and per-user reports, distinct users of whole days);
- ``eventlog_rollup_users_hourly``: which users made calls in a UTC hour, per the five
  keys, without sums (distinct users of the partial days at a window's ends);
- ``eventlog_rollup_active_users``: which users made calls in a UTC day (the distinct
  users of whole days for reports that neither group nor filter, from narrow rows).

The old table is renamed, the new ones are filled from it in SQL (so the totals stay
exactly what they were, history whose raw rows were pruned included), and it is dropped.

A downgrade recreates 0004's table and fills it from the raw LLM calls still stored, as
0004 did (with the cost, cache, reasoning and TTFT columns the calls have by now): the
rollup history of raw rows pruned before the downgrade is lost.

A B-tree on ``(created_at, event_type, model, request_latency_ms, total_latency_ms,
ttft_ms)`` lets the exact latency report read its rows from the index (it replaces
SQLite's plain B-tree on ``created_at``; PostgreSQL keeps its BRIN).

Types spelled out per dialect, as in 0001; column names frozen here, as in 0004.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "eventlog_rollup_hourly_0004"

_KEYS = ("model", "provider", "application", "environment", "project_id")
_USER_KEYS = ("organization_id", "user_id", *_KEYS)

_USAGE_SUMS = (
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
    "cost_nanos",
    "priced",
    "unpriced",
    "unpriced_tokens",
    "tps_tokens",
    "tps_ms",
)

_VALUES = (
    *_USAGE_SUMS,
    "latency_count",
    "latency_sum_ms",
    "total_latency_count",
    "total_latency_sum_ms",
    "ttft_count",
    "ttft_sum_ms",
    *(f"lat_{i:02d}" for i in range(77)),
    "latency_max_ms",  # a maximum; every other value column is a sum
)

# 0004's table, for the downgrade.
_KEYS_0004 = (
    "model",
    "provider",
    "application",
    "environment",
    "organization_id",
    "project_id",
    "user_id",
)

_SUMS_0004 = (
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
    "cost_nanos",
    "priced",
    "unpriced",
    "unpriced_tokens",
    "latency_count",
    "latency_sum_ms",
    "total_latency_count",
    "total_latency_sum_ms",
    "ttft_count",
    "ttft_sum_ms",
    "tps_tokens",
    "tps_ms",
    *(f"lat_{i:02d}" for i in range(77)),
    "latency_max_ms",
)


def _is_pg() -> bool:
    return op.get_context().dialect.name == "postgresql"


def _day(column: str) -> str:
    """The UTC day of a time column, as the column stores it."""
    if _is_pg():
        return f"date_trunc('day', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    return f"strftime('%Y-%m-%d 00:00:00.000000', {column})"


def _create(name: str, time: str, keys: Sequence[str], values: Sequence[str]) -> None:
    op.create_table(
        name,
        sa.Column(time, sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(key, sa.Text(), nullable=False) for key in keys),
        *(sa.Column(value, sa.BigInteger(), nullable=False) for value in values),
        sa.PrimaryKeyConstraint(time, *keys, name=f"{name}_pkey"),
    )


def _sums(values: Sequence[str]) -> list[str]:
    return [f"MAX({v})" if v == "latency_max_ms" else f"SUM({v})" for v in values]


def _insert(table: str, columns: Sequence[str], select: Sequence[str], rest: str) -> None:
    op.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(select)} {rest}")


def upgrade() -> None:
    op.rename_table("eventlog_rollup_hourly", _OLD)
    if _is_pg():
        # The primary key's name must be free for the new table's (on SQLite the
        # constraint is part of the table and its name is not a schema object).
        op.execute("ALTER INDEX eventlog_rollup_hourly_pkey RENAME TO " + _OLD + "_pkey")
    _create("eventlog_rollup_hourly", "hour", _KEYS, _VALUES)
    _create("eventlog_rollup_daily", "day", _KEYS, _VALUES)
    _create("eventlog_rollup_users_daily", "day", _USER_KEYS, _USAGE_SUMS)
    _create("eventlog_rollup_users_hourly", "hour", (*_KEYS, "user_id"), ())
    _create("eventlog_rollup_active_users", "day", ("user_id",), ())

    keys = ", ".join(_KEYS)
    _insert(
        "eventlog_rollup_hourly",
        ["hour", *_KEYS, *_VALUES],
        ["hour", *_KEYS, *_sums(_VALUES)],
        f"FROM {_OLD} GROUP BY hour, {keys}",
    )
    day = _day("hour")
    _insert(
        "eventlog_rollup_daily",
        ["day", *_KEYS, *_VALUES],
        [day, *_KEYS, *_sums(_VALUES)],
        f"FROM eventlog_rollup_hourly GROUP BY {day}, {keys}",
    )
    _insert(
        "eventlog_rollup_users_daily",
        ["day", *_USER_KEYS, *_USAGE_SUMS],
        [day, *_USER_KEYS, *_sums(_USAGE_SUMS)],
        f"FROM {_OLD} GROUP BY {day}, {', '.join(_USER_KEYS)}",
    )
    _insert(
        "eventlog_rollup_users_hourly",
        ["hour", *_KEYS, "user_id"],
        ["DISTINCT hour", *_KEYS, "user_id"],
        f"FROM {_OLD} WHERE user_id <> ''",
    )
    _insert(
        "eventlog_rollup_active_users",
        ["day", "user_id"],
        [f"DISTINCT {day}", "user_id"],
        f"FROM {_OLD} WHERE user_id <> ''",
    )
    op.drop_table(_OLD)
    # The exact latency report's columns after the time: its rows come from the index
    # (it replaces SQLite's plain B-tree on created_at; PostgreSQL keeps its BRIN).
    op.create_index(
        "chronicle_events_created_at_latency_idx",
        "chronicle_events",
        [
            "created_at",
            "event_type",
            "model",
            "request_latency_ms",
            "total_latency_ms",
            "ttft_ms",
        ],
    )
    if not _is_pg():
        op.drop_index("chronicle_events_created_at_idx", "chronicle_events")


def _edges() -> list[int]:
    """The histogram's bin edges in ms: round(2 ** (k / 4)), duplicates dropped."""
    edges: list[int] = []
    for k in range(81):
        edge = round(2 ** (k / 4))
        if not edges or edge > edges[-1]:
            edges.append(edge)
    return edges


def _fill_0004() -> None:
    """0004's rollup from the raw LLM calls, as the writer would have summed them."""
    is_pg = _is_pg()
    hour = (
        "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        if is_pg
        else "strftime('%Y-%m-%d %H:00:00.000000', created_at)"
    )
    # As the writer keys it: '' for NULL, a name over 360 bytes cut to 90 chars.
    size = "octet_length({})" if is_pg else "length(CAST({} AS BLOB))"
    keys = [
        f"CASE WHEN {size.format(key)} > 360 THEN substr({key}, 1, 90) ELSE COALESCE({key}, '') END"
        for key in _KEYS_0004
    ]
    tokens = "COALESCE(total_tokens, COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0))"
    tps = "completion_tokens IS NOT NULL AND request_latency_ms > 0"
    edges = _edges()
    bins = ["CASE WHEN request_latency_ms < 1 THEN 1 ELSE 0 END"]
    bins += [
        f"CASE WHEN request_latency_ms >= {low} AND request_latency_ms < {high} THEN 1 ELSE 0 END"
        for low, high in itertools.pairwise(edges)
    ]
    bins.append(f"CASE WHEN request_latency_ms >= {edges[-1]} THEN 1 ELSE 0 END")
    sums = [
        "COUNT(*)",
        "SUM(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END)",
        f"SUM(CASE WHEN rate_limited = {'true' if is_pg else '1'} THEN 1 ELSE 0 END)",
        "SUM(CASE WHEN retries > 0 THEN 1 ELSE 0 END)",
        "COALESCE(SUM(retries), 0)",
        "COALESCE(SUM(prompt_tokens), 0)",
        "COALESCE(SUM(completion_tokens), 0)",
        "COALESCE(SUM(total_tokens), 0)",
        "COALESCE(SUM(cache_read_tokens), 0)",
        "COALESCE(SUM(cache_write_tokens), 0)",
        "COALESCE(SUM(reasoning_tokens), 0)",
        "COALESCE(SUM(CAST(round(cost_usd * 1000000000) AS BIGINT)), 0)",
        "COUNT(cost_usd)",
        "COUNT(*) - COUNT(cost_usd)",
        f"SUM(CASE WHEN cost_usd IS NULL THEN {tokens} ELSE 0 END)",
        "COUNT(request_latency_ms)",
        "COALESCE(SUM(request_latency_ms), 0)",
        "COUNT(total_latency_ms)",
        "COALESCE(SUM(total_latency_ms), 0)",
        "COUNT(ttft_ms)",
        "COALESCE(SUM(ttft_ms), 0)",
        f"COALESCE(SUM(CASE WHEN {tps} THEN completion_tokens END), 0)",
        f"COALESCE(SUM(CASE WHEN {tps} THEN request_latency_ms END), 0)",
        *(f"SUM({b})" for b in bins),
        "COALESCE(MAX(request_latency_ms), 0)",
    ]
    assert len(sums) == len(_SUMS_0004)
    _insert(
        "eventlog_rollup_hourly",
        ["hour", *_KEYS_0004, *_SUMS_0004],
        [hour, *keys, *sums],
        "FROM chronicle_events WHERE event_type = 'chronicle_llm_request' "
        f"GROUP BY {', '.join([hour, *keys])}",
    )


def downgrade() -> None:
    op.drop_table("eventlog_rollup_active_users")
    if not _is_pg():
        op.create_index("chronicle_events_created_at_idx", "chronicle_events", ["created_at"])
    op.drop_index("chronicle_events_created_at_latency_idx", "chronicle_events")
    op.drop_table("eventlog_rollup_users_hourly")
    op.drop_table("eventlog_rollup_users_daily")
    op.drop_table("eventlog_rollup_daily")
    op.drop_table("eventlog_rollup_hourly")
    _create("eventlog_rollup_hourly", "hour", _KEYS_0004, _SUMS_0004)
    _fill_0004()
