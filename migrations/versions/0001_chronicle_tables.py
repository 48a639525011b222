"""chronicle_events, chronicle_runs and chronicle_steps

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Chronicle's tables and indexes, with eventlog's additions (token columns, nullable
start-only columns so events may arrive out of order, sub-second times on SQLite, a BRIN
index on chronicle_events.created_at on PostgreSQL). The types are spelled out per
dialect here, not imported, so later changes to eventlog.schema never rewrite history.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _types() -> tuple[sa.types.TypeEngine, sa.types.TypeEngine, sa.types.TypeEngine]:
    """(uuid, json, tags) for the dialect being migrated."""
    if op.get_context().dialect.name == "postgresql":
        return postgresql.UUID(as_uuid=True), postgresql.JSONB(), postgresql.ARRAY(sa.Text())
    # JSON as TEXT: a column declared JSON gets numeric affinity in SQLite.
    return sa.String(36), sa.Text(), sa.Text()


def upgrade() -> None:
    uuid, json, tags = _types()
    time = sa.DateTime(timezone=True)
    is_pg = op.get_context().dialect.name == "postgresql"

    op.create_table(
        "chronicle_events",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("organization_id", sa.Text()),
        sa.Column("project_id", sa.Text()),
        sa.Column("user_id", sa.Text()),
        sa.Column("chat_request", json),
        sa.Column("chat_response", json),
        sa.Column("error", json),
        sa.Column("provider", sa.Text()),
        sa.Column("model", sa.Text()),
        sa.Column("application", sa.Text()),
        sa.Column("environment", sa.Text()),
        sa.Column("request_organization_id", sa.Text()),
        sa.Column("request_project_id", sa.Text()),
        sa.Column("request_user_id", sa.Text()),
        sa.Column("workflow_id", sa.Text()),
        sa.Column("workflow_name", sa.Text()),
        sa.Column("run_id", uuid),
        sa.Column("step_id", uuid),
        sa.Column("step_index", sa.Integer()),
        sa.Column("prompt_id", sa.Text()),
        sa.Column("prompt_version", sa.Integer()),
        sa.Column("meta", json),
        sa.Column("response_meta", json),
        sa.Column("retries", sa.Integer()),
        sa.Column("rate_limited", sa.Boolean()),
        sa.Column("request_latency_ms", sa.Integer()),
        sa.Column("total_latency_ms", sa.Integer()),
        sa.Column("prompt_tokens", sa.Integer()),
        sa.Column("completion_tokens", sa.Integer()),
        sa.Column("total_tokens", sa.Integer()),
        sa.Column("created_at", time, nullable=False),
    )
    op.create_index("chronicle_events_workflow_id_idx", "chronicle_events", ["workflow_id"])
    op.create_index(
        "chronicle_events_run_id_created_at_idx", "chronicle_events", ["run_id", "created_at"]
    )
    op.create_index(
        "chronicle_events_created_at_idx",
        "chronicle_events",
        ["created_at"],
        postgresql_using="brin",
    )

    op.create_table(
        "chronicle_runs",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("name", sa.Text()),
        sa.Column("description", sa.Text()),
        sa.Column("application", sa.Text()),
        sa.Column("environment", sa.Text()),
        sa.Column("input", json),
        sa.Column("output", json),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("trace_id", sa.Text()),
        sa.Column("span_id", sa.Text()),
        sa.Column("tags", tags),
        sa.Column("info", json),
        sa.Column("updated_at", time, nullable=False),
        sa.Column("created_at", time, nullable=False),
    )
    for name, columns in (
        ("chronicle_runs_name_created_at_idx", ["name", "created_at"]),
        ("chronicle_runs_name_updated_at_idx", ["name", "updated_at"]),
        ("chronicle_runs_app_env_created_at_idx", ["application", "environment", "created_at"]),
        ("chronicle_runs_app_env_updated_at_idx", ["application", "environment", "updated_at"]),
        ("chronicle_runs_updated_at_idx", ["updated_at"]),
        ("chronicle_runs_created_at_idx", ["created_at"]),
    ):
        op.create_index(name, "chronicle_runs", columns)

    op.create_table(
        "chronicle_steps",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("run_id", uuid, nullable=False),
        sa.Column("type", sa.Text()),
        sa.Column("parent_step", uuid),
        sa.Column("name", sa.Text()),
        sa.Column("input", json),
        sa.Column("output", json),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("tags", tags),
        sa.Column("info", json),
        sa.Column("span_id", sa.Text()),
        sa.Column("start_time", time),
        sa.Column("end_time", time),
    )
    op.create_index("chronicle_steps_run_id_idx", "chronicle_steps", ["run_id"])

    if is_pg:
        op.create_index(
            "chronicle_runs_tags_idx", "chronicle_runs", ["tags"], postgresql_using="gin"
        )
        op.create_index(
            "chronicle_steps_tags_idx", "chronicle_steps", ["tags"], postgresql_using="gin"
        )


def downgrade() -> None:
    op.drop_table("chronicle_steps")
    op.drop_table("chronicle_runs")
    op.drop_table("chronicle_events")
