"""The SQL that applies a batch, per dialect: event inserts and run/step upserts.

Every run or step event is an ``INSERT ... ON CONFLICT (id) DO UPDATE``, written so that
statements of *different* kinds commute (the writer relies on this to apply a batch as
one executemany per statement):

- an end, error, state or update that arrives before its start creates the row, and the
  start fills in the start's columns later; a start never touches ``status``, ``output``
  or ``end_time`` of an existing row;
- a ``step:state`` never changes the status of a step that has ended;
- ``updated_at`` is the latest time of any event of the run;
- ``info`` is merged shallowly, key by key (PostgreSQL's ``jsonb ||``; the same function
  on SQLite, where ``json_patch`` would merge deeply and delete keys set to null). When two
  events set one key, the logically later event wins: an update or end over a start,
  whichever arrived first.

Events of the *same* kind for one run or step (two updates; an end and an error) are
applied in the order they were sent, and the last one applied wins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Insert, Table, case, func
from sqlalchemy.dialects import postgresql, sqlite

from eventlog.events import (
    RunStartEvent,
    RunUpdateEvent,
    StepEndEvent,
    StepErrorEvent,
    StepStartEvent,
    StepStateEvent,
)
from eventlog.schema import chronicle_events, chronicle_runs, chronicle_steps
from eventlog.types import json_dumps, json_loads

__all__ = ["SQLITE_MERGE_FUNCTION", "Statements", "merge_info_json", "statements_for"]

SQLITE_MERGE_FUNCTION = "eventlog_merge_info"


def merge_info_json(old: str | None, new: str | None) -> str | None:
    """SQLite's ``eventlog_merge_info(old, new)``: ``jsonb ||`` on JSON text."""
    if new is None:
        return old
    if old is None:
        return new
    old_value, new_value = json_loads(old), json_loads(new)
    if isinstance(old_value, dict) and isinstance(new_value, dict):
        return json_dumps({**old_value, **new_value})
    return new


@dataclass(frozen=True, slots=True)
class Statements:
    """The statements of one dialect, keyed by entry class for run and step events."""

    insert_events: Insert
    workflow: Mapping[type, Insert]


def statements_for(dialect: str) -> Statements:
    """Build the statements for ``"postgresql"`` or ``"sqlite"``."""
    if dialect == "postgresql":
        insert: Callable[[Table], Any] = postgresql.insert

        def merge(old: ColumnElement[Any], new: ColumnElement[Any]) -> ColumnElement[Any]:
            return case(
                (new.is_(None), old),
                (old.is_(None), new),
                else_=old.op("||")(new),
            )

        later: Any = func.greatest
    elif dialect == "sqlite":
        insert = sqlite.insert

        def merge(old: ColumnElement[Any], new: ColumnElement[Any]) -> ColumnElement[Any]:
            merged: ColumnElement[Any] = getattr(func, SQLITE_MERGE_FUNCTION)(
                old, new, type_=old.type
            )
            return merged

        later = func.max  # two-argument max() is SQLite's scalar greatest()
    else:
        raise ValueError(f"unsupported dialect {dialect!r}")

    events = insert(chronicle_events).on_conflict_do_nothing(index_elements=["id"])

    runs, steps = chronicle_runs.c, chronicle_steps.c

    ins = insert(chronicle_runs)
    x = ins.excluded
    run_start = ins.on_conflict_do_update(
        index_elements=["id"],
        set_={
            "name": x.name,
            "description": x.description,
            "application": x.application,
            "environment": x.environment,
            "input": x.input,
            "trace_id": x.trace_id,
            "span_id": x.span_id,
            "tags": x.tags,
            "created_at": x.created_at,
            "updated_at": later(runs.updated_at, x.updated_at),
            # No "status": a row that exists already has the status of a later event
            # (or of the same start, sent again).
            "info": merge(x.info, runs.info),
        },
    )

    ins = insert(chronicle_runs)
    x = ins.excluded
    run_update = ins.on_conflict_do_update(
        index_elements=["id"],
        set_={
            "status": x.status,
            "output": func.coalesce(x.output, runs.output),
            "info": merge(runs.info, x.info),
            "updated_at": later(runs.updated_at, x.updated_at),
        },
    )

    ins = insert(chronicle_steps)
    x = ins.excluded
    step_start = ins.on_conflict_do_update(
        index_elements=["id"],
        set_={
            "run_id": x.run_id,
            "type": x.type,
            "parent_step": x.parent_step,
            "name": x.name,
            "input": x.input,
            "tags": x.tags,
            "span_id": x.span_id,
            "start_time": x.start_time,
            "info": merge(x.info, steps.info),
        },
    )

    ins = insert(chronicle_steps)
    x = ins.excluded
    step_end = ins.on_conflict_do_update(
        index_elements=["id"],
        set_={
            "status": x.status,
            "output": x.output,
            "info": merge(steps.info, x.info),
            "end_time": x.end_time,
        },
    )

    ins = insert(chronicle_steps)
    x = ins.excluded
    step_state = ins.on_conflict_do_update(
        index_elements=["id"],
        set_={"status": case((steps.end_time.is_(None), x.status), else_=steps.status)},
    )

    return Statements(
        insert_events=events,
        workflow={
            RunStartEvent: run_start,
            RunUpdateEvent: run_update,
            StepStartEvent: step_start,
            StepEndEvent: step_end,
            StepErrorEvent: step_end,
            StepStateEvent: step_state,
        },
    )
