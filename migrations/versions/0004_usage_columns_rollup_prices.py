"""Usage columns on chronicle_events, the hourly rollup, and the user's prices

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

Additive only. ``chronicle_events`` gains cache-read, cache-write and reasoning token
counts, ``cost_usd`` (exact: numeric dollars to the nano-dollar), the ``price_id`` it was
computed with, time to first token, ``status`` and ``error_type``; rows written before
keep NULL there (``eventlog reprice`` and ``eventlog rollup --rebuild`` fill what they
can). B-trees on ``(user_id, created_at)`` and ``(project_id, created_at)`` serve the
per-user and per-project reports; ``created_at`` keeps its BRIN (PostgreSQL) or B-tree
(SQLite) from 0001. ``eventlog_rollup_hourly`` sums LLM calls per hour and dimension,
with a fixed 77-bin log-scale histogram of request latency and its maximum;
``eventlog_prices`` holds prices loaded by the user. Types spelled out per dialect, as in 0001.

The rollup is filled from the LLM calls already stored, in one statement, so that
long-window reports include history from the start (their cost is unknown: they count
as unpriced until ``eventlog reprice``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EVENT_COLUMNS = (
    ("cache_read_tokens", sa.Integer()),
    ("cache_write_tokens", sa.Integer()),
    ("reasoning_tokens", sa.Integer()),
    ("cost_usd", sa.Numeric(20, 9)),
    ("price_id", sa.Text()),
    ("ttft_ms", sa.Integer()),
    ("status", sa.Text()),
    ("error_type", sa.Text()),
)

_ROLLUP_KEYS = (
    "model",
    "provider",
    "application",
    "environment",
    "organization_id",
    "project_id",
    "user_id",
)

_ROLLUP_SUMS = (
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


def _edges() -> list[int]:
    """The histogram's bin edges in ms: round(2 ** (k / 4)), duplicates dropped."""
    edges: list[int] = []
    for k in range(81):
        edge = round(2 ** (k / 4))
        if not edges or edge > edges[-1]:
            edges.append(edge)
    return edges


def _backfill() -> None:
    """Sum the LLM calls already stored into the rollup, as the writer would have."""
    is_pg = op.get_context().dialect.name == "postgresql"
    hour = (
        "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        if is_pg
        else "strftime('%Y-%m-%d %H:00:00.000000', created_at)"
    )
    # As eventlog.rollup.rollup_key: '' for NULL, a name over 360 bytes cut to 90 chars.
    size = "octet_length({})" if is_pg else "length(CAST({} AS BLOB))"
    keys = [
        f"CASE WHEN {size.format(key)} > 360 THEN substr({key}, 1, 90) ELSE COALESCE({key}, '') END"
        for key in _ROLLUP_KEYS
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
        "0",
        "0",
        "0",
        "0",
        "0",
        "COUNT(*)",
        f"SUM({tokens})",
        "COUNT(request_latency_ms)",
        "COALESCE(SUM(request_latency_ms), 0)",
        "COUNT(total_latency_ms)",
        "COALESCE(SUM(total_latency_ms), 0)",
        "0",
        "0",
        f"COALESCE(SUM(CASE WHEN {tps} THEN completion_tokens END), 0)",
        f"COALESCE(SUM(CASE WHEN {tps} THEN request_latency_ms END), 0)",
        *(f"SUM({b})" for b in bins),
        "COALESCE(MAX(request_latency_ms), 0)",
    ]
    assert len(sums) == len(_ROLLUP_SUMS)
    columns = ", ".join(["hour", *_ROLLUP_KEYS, *_ROLLUP_SUMS])
    group = ", ".join([hour, *keys])
    op.execute(
        f"INSERT INTO eventlog_rollup_hourly ({columns}) "
        f"SELECT {hour}, {', '.join(keys)}, {', '.join(sums)} FROM chronicle_events "
        f"WHERE event_type = 'chronicle_llm_request' GROUP BY {group}"
    )


def upgrade() -> None:
    time = sa.DateTime(timezone=True)
    with op.batch_alter_table("chronicle_events") as batch:
        for name, type_ in _EVENT_COLUMNS:
            batch.add_column(sa.Column(name, type_))
    op.create_index(
        "chronicle_events_user_id_created_at_idx", "chronicle_events", ["user_id", "created_at"]
    )
    op.create_index(
        "chronicle_events_project_id_created_at_idx",
        "chronicle_events",
        ["project_id", "created_at"],
    )
    op.create_table(
        "eventlog_rollup_hourly",
        sa.Column("hour", time, nullable=False),
        *(sa.Column(key, sa.Text(), nullable=False) for key in _ROLLUP_KEYS),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _ROLLUP_SUMS),
        sa.PrimaryKeyConstraint("hour", *_ROLLUP_KEYS, name="eventlog_rollup_hourly_pkey"),
    )
    op.create_table(
        "eventlog_prices",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("provider", sa.Text()),
        sa.Column("model", sa.Text()),
        sa.Column("pattern", sa.Text()),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("cache_read", sa.Text()),
        sa.Column("cache_write", sa.Text()),
        sa.Column("reasoning", sa.Text()),
        sa.Column("request", sa.Text()),
        sa.Column("tiers", sa.Text()),
        sa.Column("created_at", time, nullable=False),
    )
    _backfill()


def downgrade() -> None:
    op.drop_table("eventlog_prices")
    op.drop_table("eventlog_rollup_hourly")
    op.drop_index("chronicle_events_project_id_created_at_idx", "chronicle_events")
    op.drop_index("chronicle_events_user_id_created_at_idx", "chronicle_events")
    with op.batch_alter_table("chronicle_events") as batch:
        for name, _ in reversed(_EVENT_COLUMNS):
            batch.drop_column(name)
