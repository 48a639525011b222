"""Retention: delete old events, runs and steps, or clear only the bulky JSON payloads.

:func:`prune` works in bounded batches so that a retention job never holds the tables
for long (the writer keeps writing meanwhile, on SQLite too): each batch is one short
transaction of one statement, ``DELETE ... WHERE id IN (SELECT id ... ORDER BY created_at
LIMIT n)``, oldest rows first, so an interrupted prune leaves "everything before some
time is gone", never holes.

Batches walk ``created_at`` in time windows that adapt to the data (halved when a window
holds more than a batch, doubled when it held less). On PostgreSQL ``created_at`` has a
BRIN index, which cannot return rows in order: a plain ``ORDER BY created_at LIMIT n``
over everything older than the cutoff would sort all of it again for every batch. A
window keeps each batch's scan proportional to the batch.

Runs are pruned by ``updated_at`` (their last activity, so a long run still being
updated is kept), together with their steps in the same transaction. Steps whose run
row never arrived are left alone: they have no time column to judge their age by.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import ColumnElement, Table, and_, delete, exists, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from eventlog.database import Database
from eventlog.events import to_utc, utc_now
from eventlog.exceptions import DatabaseError
from eventlog.schema import chronicle_events, chronicle_runs, chronicle_steps

__all__ = ["PruneResult", "parse_age", "prune", "resolve_cutoff"]

# The first time window a batch looks at; adapted from there on.
_FIRST_WINDOW = timedelta(minutes=10)
_SMALLEST_WINDOW = timedelta(milliseconds=1)
_MAX_BATCH_SIZE = 1_000_000

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(w|d|h|m|s)\s*$", re.IGNORECASE)
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_age(text: str) -> timedelta | datetime:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"`` as a timedelta, or an ISO date
    or datetime (``2025-01-31``, ``2025-01-31T12:00:00+02:00``; naive means UTC) as an
    aware datetime: what ``--older-than`` and ``--since`` accept.

    ``ValueError`` says which forms are accepted."""
    match = _AGE.match(text)
    if match:
        number, unit = float(match[1]), match[2].lower()
        return timedelta(**{_UNITS[unit]: number})
    try:
        if len(text.strip()) == 10:
            day = date.fromisoformat(text.strip())
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        return to_utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        pass
    raise ValueError(
        f"must be an age like 90d, 12h, 30m, 45s, 2w or an ISO date/time like 2025-01-31, "
        f"got {text!r}"
    )


def resolve_cutoff(name: str, value: timedelta | datetime, now: datetime) -> datetime:
    """The moment ``value`` means (an age before ``now``, or a time), which must be in
    the past: a cutoff in the future would take rows still being written."""
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValueError(f"{name} must be a positive age, got {value}")
        return now - value
    if isinstance(value, datetime):
        cutoff = to_utc(value)
        if cutoff > now:
            raise ValueError(f"{name} must be in the past, got {cutoff.isoformat()}")
        return cutoff
    raise TypeError(f"{name} must be a timedelta or a datetime, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What :func:`prune` did (or, with ``dry_run``, would do).

    ``longest_batch`` is the longest single transaction in seconds: the longest the
    tables were held for the writer."""

    events_deleted: int
    runs_deleted: int
    steps_deleted: int
    payloads_cleared: int
    older_than: datetime | None  # the delete cutoff, UTC
    payloads_older_than: datetime | None  # the payload cutoff, UTC
    dry_run: bool
    batches: int
    elapsed: float
    longest_batch: float


_Apply = Callable[[AsyncConnection, ColumnElement[bool]], Awaitable[int]]


class _Batches:
    """Runs each batch in a transaction of its own, counting them and timing the longest."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.count = 0
        self.longest = 0.0

    async def run(self, apply: _Apply, condition: ColumnElement[bool]) -> int:
        start = time.perf_counter()
        async with self.db.engine.begin() as conn:
            done = await apply(conn, condition)
        self.longest = max(self.longest, time.perf_counter() - start)
        self.count += 1
        return done


async def prune(
    db: Database,
    *,
    older_than: timedelta | datetime | None,
    payloads_older_than: timedelta | datetime | None = None,
    batch_size: int = 5000,
    dry_run: bool = False,
) -> PruneResult:
    """Delete events, runs (and their steps) older than ``older_than``, and clear the
    ``chat_request``/``chat_response`` of events older than ``payloads_older_than``
    (keeping their metric columns), at most ``batch_size`` rows per transaction.

    Each cutoff is an age (``timedelta(days=90)``) or a moment (a datetime; naive means
    UTC). ``dry_run`` only counts what would go. ``ValueError`` for bad arguments;
    :class:`~eventlog.DatabaseError` if the database fails (batches already done stay
    done: running it again continues).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not 1 <= batch_size <= _MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {_MAX_BATCH_SIZE:,}, got {batch_size}")
    if older_than is None and payloads_older_than is None:
        raise ValueError("give older_than, payloads_older_than, or both")
    now = utc_now()
    cutoff = None if older_than is None else resolve_cutoff("older_than", older_than, now)
    payload_cutoff = (
        None
        if payloads_older_than is None
        else resolve_cutoff("payloads_older_than", payloads_older_than, now)
    )
    if cutoff is not None and payload_cutoff is not None and payload_cutoff <= cutoff:
        raise ValueError(
            f"payloads_older_than ({payload_cutoff:%Y-%m-%d %H:%M:%S} UTC) must be more recent "
            f"than older_than ({cutoff:%Y-%m-%d %H:%M:%S} UTC): rows older than older_than "
            "are deleted whole, so clearing their payloads would do nothing"
        )
    started = time.perf_counter()
    batches = _Batches(db)
    events = runs = steps = payloads = 0
    try:
        if dry_run:
            events, runs, steps, payloads = await _count(db, cutoff, payload_cutoff)
        else:
            if cutoff is not None:
                events = await _delete_events(batches, cutoff, batch_size)
                runs, steps = await _delete_runs(batches, cutoff, batch_size)
            if payload_cutoff is not None:
                payloads = await _clear_payloads(batches, cutoff, payload_cutoff, batch_size)
    except (SQLAlchemyError, OSError) as err:
        raise DatabaseError(f"prune of {db.url} failed: {type(err).__name__}: {err}") from err
    return PruneResult(
        events_deleted=events,
        runs_deleted=runs,
        steps_deleted=steps,
        payloads_cleared=payloads,
        older_than=cutoff,
        payloads_older_than=payload_cutoff,
        dry_run=dry_run,
        batches=batches.count,
        elapsed=time.perf_counter() - started,
        longest_batch=batches.longest,
    )


def _has_payload() -> ColumnElement[bool]:
    events = chronicle_events.c
    return or_(events.chat_request.is_not(None), events.chat_response.is_not(None))


def _payload_range(cutoff: datetime | None, payload_cutoff: datetime) -> ColumnElement[bool]:
    created = chronicle_events.c.created_at
    condition = and_(created < payload_cutoff, _has_payload())
    return condition if cutoff is None else and_(created >= cutoff, condition)


async def _count(
    db: Database, cutoff: datetime | None, payload_cutoff: datetime | None
) -> tuple[int, int, int, int]:
    """What a prune would take: one read-only transaction, no batches."""
    events = runs = steps = payloads = 0
    async with db.engine.connect() as conn:

        async def count(table: Table, where: ColumnElement[bool]) -> int:
            query = select(func.count()).select_from(table).where(where)
            return int((await conn.execute(query)).scalar_one())

        if cutoff is not None:
            old_runs = chronicle_runs.c.updated_at < cutoff
            events = await count(chronicle_events, chronicle_events.c.created_at < cutoff)
            runs = await count(chronicle_runs, old_runs)
            run_ids = select(chronicle_runs.c.id).where(old_runs)
            steps = await count(chronicle_steps, chronicle_steps.c.run_id.in_(run_ids))
        if payload_cutoff is not None:
            payloads = await count(chronicle_events, _payload_range(cutoff, payload_cutoff))
    return events, runs, steps, payloads


async def _windows(
    batches: _Batches,
    column: ColumnElement[datetime],
    where: ColumnElement[bool],
    end: datetime,
    batch_size: int,
    apply: _Apply,
) -> int:
    """Call ``apply(conn, condition)`` in one transaction per batch, over time windows of
    ``column`` from the oldest row matching ``where`` up to ``end``; return the rows done.

    ``apply`` handles at most ``batch_size`` rows matching ``condition`` and must make them
    stop matching ``where`` (delete them, clear their payload): that is what lets a window
    be read again until it is empty, with no cursor to keep."""
    async with batches.db.engine.connect() as conn:
        first = select(func.min(column)).where(column < end, where)
        low: datetime | None = (await conn.execute(first)).scalar_one()
    done = 0
    window = _FIRST_WINDOW
    while low is not None and low < end:
        high = min(low + window, end)
        handled = await batches.run(apply, and_(column >= low, column < high, where))
        done += handled
        if handled < batch_size:
            low, window = high, window * 2  # this window is done: look further next time
        else:
            window = max(window / 2, _SMALLEST_WINDOW)  # rows left here: look closer
    return done


async def _delete_events(batches: _Batches, cutoff: datetime, batch_size: int) -> int:
    events = chronicle_events.c

    async def apply(conn: AsyncConnection, condition: ColumnElement[bool]) -> int:
        ids = select(events.id).where(condition).order_by(events.created_at).limit(batch_size)
        result = await conn.execute(delete(chronicle_events).where(events.id.in_(ids)))
        return int(result.rowcount)

    return await _windows(
        batches, events.created_at, events.created_at < cutoff, cutoff, batch_size, apply
    )


async def _clear_payloads(
    batches: _Batches, cutoff: datetime | None, payload_cutoff: datetime, batch_size: int
) -> int:
    events = chronicle_events.c

    async def apply(conn: AsyncConnection, condition: ColumnElement[bool]) -> int:
        ids = select(events.id).where(condition).order_by(events.created_at).limit(batch_size)
        clear = (
            update(chronicle_events)
            .where(events.id.in_(ids))
            .values(chat_request=None, chat_response=None)
        )
        return int((await conn.execute(clear)).rowcount)

    where = _payload_range(cutoff, payload_cutoff)
    return await _windows(batches, events.created_at, where, payload_cutoff, batch_size, apply)


# Ids bound in one IN (...): well under SQLite's 32,766 variables.
_IDS_PER_STATEMENT = 10_000


async def _delete_runs(batches: _Batches, cutoff: datetime, batch_size: int) -> tuple[int, int]:
    """Delete old runs and, in the same transaction, their steps."""
    runs = chronicle_runs.c
    runs_deleted = steps_deleted = 0

    steps = chronicle_steps.c
    # Step events do not touch their run's row: a run whose steps are still recent is
    # alive, however old its own updated_at.
    quiet = ~exists().where(
        steps.run_id == runs.id, or_(steps.start_time >= cutoff, steps.end_time >= cutoff)
    )

    async def apply(conn: AsyncConnection, condition: ColumnElement[bool]) -> int:
        nonlocal runs_deleted, steps_deleted
        batch = select(runs.id).where(condition, quiet).order_by(runs.updated_at).limit(batch_size)
        candidates = list((await conn.execute(batch)).scalars())
        for i in range(0, len(candidates), _IDS_PER_STATEMENT):
            chunk = candidates[i : i + _IDS_PER_STATEMENT]
            # updated_at checked again: a run updated since the select (PostgreSQL
            # re-reads the row it waited for) is active again and keeps its steps.
            gone = delete(chronicle_runs).where(runs.id.in_(chunk), runs.updated_at < cutoff, quiet)
            ids = list((await conn.execute(gone.returning(runs.id))).scalars())
            runs_deleted += len(ids)
            if ids:
                orphans = delete(chronicle_steps).where(chronicle_steps.c.run_id.in_(ids))
                steps_deleted += int((await conn.execute(orphans)).rowcount)
        return len(candidates)  # a full batch means the window may hold more

    await _windows(batches, runs.updated_at, runs.updated_at < cutoff, cutoff, batch_size, apply)
    return runs_deleted, steps_deleted
