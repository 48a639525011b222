"""Follow ``chronicle_events`` as rows are committed: what ``eventlog tail`` prints.

Both backends are polled (every ``poll_interval`` seconds) by ``(created_at, id)``.
PostgreSQL's LISTEN/NOTIFY would spare the polls, but only if the writer sent a NOTIFY
with each batch, which it does not (yet); one mechanism on both backends also means one
behaviour to test.

``created_at`` is the event's own time, set where it was sent, not the commit time: a
row is committed a batch later (``debounce_time``), and PostgreSQL commits two batches
at once, so rows may become visible a little out of order. Each poll therefore reads
two things: the rows after the newest one yielded, and the ids of rows up to ``lag``
older than it, to catch the late ones. Ids already yielded within ``lag`` are
remembered, so every row is yielded exactly once. A row committed more than ``lag``
after its ``created_at`` (kept back by a database outage, a client's own batching,
a clock far behind) is not seen.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, and_, or_, select, true
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from eventlog._checks import positive_int, seconds
from eventlog.database import Database
from eventlog.events import to_utc, utc_now
from eventlog.exceptions import DatabaseError
from eventlog.schema import chronicle_events

__all__ = ["follow"]

_events = chronicle_events.c


def _filters(where: Mapping[str, Any] | None) -> ColumnElement[bool]:
    """``{column: value}`` as equality conditions (None matches NULL)."""
    conditions: list[ColumnElement[bool]] = []
    for name, value in (where or {}).items():
        if name not in _events:
            known = ", ".join(sorted(_events.keys()))
            raise ValueError(f"where: no column {name!r} in chronicle_events; use one of {known}")
        column = _events[name]
        conditions.append(column.is_(None) if value is None else column == value)
    return and_(true(), *conditions)


def _start(since: datetime | timedelta | None) -> datetime:
    if since is None:
        return utc_now()
    if isinstance(since, timedelta):
        if since < timedelta(0):
            raise ValueError(f"since must be a non-negative age or a datetime, got {since}")
        return utc_now() - since
    if isinstance(since, datetime):
        return to_utc(since)
    raise TypeError(f"since must be a datetime, a timedelta or None, got {type(since).__name__}")


async def follow(
    db: Database,
    *,
    since: datetime | timedelta | None = None,
    poll_interval: float = 0.5,
    where: Mapping[str, Any] | None = None,
    lag: timedelta = timedelta(seconds=10),
    page_size: int = 1000,
) -> AsyncGenerator[RowMapping, None]:
    """Yield each ``chronicle_events`` row (all columns) as it is committed, forever.

    Starts at ``since`` (a time, or an age such as ``timedelta(minutes=10)``; default:
    now), so older rows come first, a page of ``page_size`` at a time, then new ones as
    they appear. ``where`` keeps rows whose columns equal the values
    (``{"event_type": "chronicle_llm_request", "model": "gpt-4o"}``). Rows are yielded
    in ``(created_at, id)`` order within a poll; a row committed late (up to ``lag``
    after its ``created_at``) comes in the poll that sees it. Stop by breaking out and
    closing the generator (``aclose()``), or by cancelling the task.
    """
    poll = seconds("poll_interval", poll_interval, positive=True)
    if not isinstance(lag, timedelta) or lag < timedelta(0):
        raise ValueError(f"lag must be a timedelta >= 0, got {lag!r}")
    positive_int("page_size", page_size)
    start = _start(since)
    matches = _filters(where)
    # The newest (created_at, id) yielded, and the ids yielded within `lag` of it.
    last: tuple[datetime, uuid.UUID] | None = None
    recent: dict[uuid.UUID, datetime] = {}
    while True:
        try:
            async with db.engine.connect() as conn:
                late = [] if last is None else await _late(conn, matches, start, last, lag, recent)
                page = await _after(conn, matches, start, last, page_size)
        except (SQLAlchemyError, OSError) as err:
            raise DatabaseError(
                f"reading new events from {db.url} failed: {type(err).__name__}: {err}"
            ) from err
        rows = sorted(late + page, key=lambda row: (row["created_at"], row["id"]))
        for row in rows:
            if row["id"] in recent:
                continue
            recent[row["id"]] = row["created_at"]
            key = (row["created_at"], row["id"])
            if last is None or key > last:
                last = key
            yield row
        if last is not None:
            oldest = min(last[0], utc_now()) - lag
            recent = {i: t for i, t in recent.items() if t >= oldest}
        if len(page) < page_size:  # caught up: wait for more (else read the next page now)
            await asyncio.sleep(poll)


async def _after(
    conn: AsyncConnection,
    matches: ColumnElement[bool],
    start: datetime,
    last: tuple[datetime, uuid.UUID] | None,
    page_size: int,
) -> list[RowMapping]:
    """The next page of rows after ``last`` (from ``start`` at first)."""
    if last is None:
        after = _events.created_at >= start
    else:
        at, id_ = last
        after = or_(_events.created_at > at, and_(_events.created_at == at, _events.id > id_))
    query = (
        select(chronicle_events)
        .where(after, matches)
        .order_by(_events.created_at, _events.id)
        .limit(page_size)
    )
    return list((await conn.execute(query)).mappings())


async def _late(
    conn: AsyncConnection,
    matches: ColumnElement[bool],
    start: datetime,
    last: tuple[datetime, uuid.UUID],
    lag: timedelta,
    recent: Mapping[uuid.UUID, datetime],
) -> list[RowMapping]:
    """Rows up to ``lag`` before ``last`` that were committed after it was read: ids
    first (cheap), whole rows only for the ids not yielded yet."""
    at, id_ = last
    # From the wall clock, not the newest event: one event stamped in the future (a
    # client's fast clock) must not hide the ones after it.
    floor = max(start, min(at, utc_now()) - lag)
    window = and_(
        _events.created_at >= floor,
        or_(_events.created_at < at, and_(_events.created_at == at, _events.id <= id_)),
        matches,
    )
    ids = (await conn.execute(select(_events.id).where(window))).scalars()
    missed = [i for i in ids if i not in recent]
    if not missed:
        return []
    query = select(chronicle_events).where(_events.id.in_(missed[:10_000]))
    return list((await conn.execute(query)).mappings())
