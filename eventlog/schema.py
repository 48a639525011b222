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

And one table of eventlog's own, ``eventlog_dead_letters``: the entries the database
refused for good, kept where a person can find and re-send them (see
:mod:`eventlog.deadletters`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)

from eventlog.types import JsonType, TagsType, UTCDateTime, UUIDType

__all__ = [
    "POSTGRESQL_ONLY_INDEXES",
    "chronicle_events",
    "chronicle_runs",
    "chronicle_steps",
    "eventlog_dead_letters",
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
    Index("chronicle_events_workflow_id_idx", "workflow_id"),
    Index("chronicle_events_run_id_created_at_idx", "run_id", "created_at"),
    Index(
        "chronicle_events_created_at_idx",
        "created_at",
        postgresql_using="brin",
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

# Tag searches (`tags @> ARRAY['x']`) on PostgreSQL, as chronicle has them; SQLite
# keeps tags as JSON text, where an index would cost inserts and serve no query.
POSTGRESQL_ONLY_INDEXES = frozenset({"chronicle_runs_tags_idx", "chronicle_steps_tags_idx"})
for _table in (chronicle_runs, chronicle_steps):
    Index(f"{_table.name}_tags_idx", _table.c.tags, postgresql_using="gin").ddl_if(
        dialect="postgresql"
    )


def include_object_for(dialect: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """alembic's ``include_object`` hook for comparing a ``dialect`` database with the
    metadata: PostgreSQL-only indexes are not expected on SQLite."""

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        return not (
            dialect != "postgresql" and type_ == "index" and name in POSTGRESQL_ONLY_INDEXES
        )

    return include_object
