"""Follow ``chronicle_events`` as rows are committed: what ``eventlog tail`` prints.

On PostgreSQL the follower LISTENs on :data:`eventlog.postgres.NOTIFY_CHANNEL`, which
the writer notifies in every batch that inserts events, and reads when a notification
arrives: a row shows up a round trip after its commit, and a quiet database costs no
queries. A slow safety poll stays for rows whose notification never came (written by
another program, or while the listening connection was down): every 5 s, or every
``lag / 2`` if that is shorter (so that late rows, below, stay within reach), and never
more often than ``poll_interval``. While the listening connection cannot be opened or
has been lost, the follower polls every ``poll_interval`` and tries to listen again
after 1, 2, 4... up to 30 s.

SQLite has no notifications: it is polled every ``poll_interval`` seconds.

``created_at`` is the event's own time, set where it was sent, not the commit time: a
row is committed a batch later (``debounce_time``), and PostgreSQL commits two batches
at once, so rows may become visible a little out of order. Each read therefore fetches
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
from eventlog._log import logger
from eventlog.database import Database
from eventlog.events import to_utc, utc_now
from eventlog.exceptions import DatabaseError
from eventlog.postgres import NOTIFY_CHANNEL
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
    listen: bool | None = None,
) -> AsyncGenerator[RowMapping, None]:
    """Yield each ``chronicle_events`` row (all columns) as it is committed, forever.

    Starts at ``since`` (a time, or an age such as ``timedelta(minutes=10)``; default:
    now), so older rows come first, a page of ``page_size`` at a time, then new ones as
    they appear. ``where`` keeps rows whose columns equal the values
    (``{"event_type": "chronicle_llm_request", "model": "gpt-4o"}``). Rows are yielded
    in ``(created_at, id)`` order within a read; a row committed late (up to ``lag``
    after its ``created_at``) comes in the read that sees it.

    ``listen``: wake on the writer's notifications (PostgreSQL's LISTEN/NOTIFY) rather
    than poll every ``poll_interval``; None (the default) listens on PostgreSQL and polls
    SQLite, False always polls, True refuses SQLite. Listening takes one connection of
    ``db``'s pool, named ``eventlog-tail``, until the iteration ends.

    Stop by breaking out and closing the generator (``aclose()``), or by cancelling the
    task: either closes the listening connection.
    """
    poll = seconds("poll_interval", poll_interval, positive=True)
    if not isinstance(lag, timedelta) or lag < timedelta(0):
        raise ValueError(f"lag must be a timedelta >= 0, got {lag!r}")
    positive_int("page_size", page_size)
    if listen is not None and not isinstance(listen, bool):
        raise ValueError(f"listen must be True, False or None (automatic), got {listen!r}")
    if listen and db.dialect != "postgresql":
        raise ValueError(f"listen=True needs PostgreSQL (LISTEN/NOTIFY); {db.dialect} is polled")
    start = _start(since)
    matches = _filters(where)
    listener = None
    if db.dialect == "postgresql" and listen is not False:
        safety = max(poll, min(_SAFETY_POLL, lag.total_seconds() / 2))
        listener = _Listener(db, poll=poll, safety_poll=safety)
    # The newest (created_at, id) yielded, and the ids yielded within `lag` of it.
    last: tuple[datetime, uuid.UUID] | None = None
    recent: dict[uuid.UUID, datetime] = {}
    try:
        while True:
            if listener is not None:
                listener.reading()
            try:
                async with db.engine.connect() as conn:
                    late = (
                        [] if last is None else await _late(conn, matches, start, last, lag, recent)
                    )
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
            if len(page) == page_size:
                continue  # not caught up: read the next page now
            if listener is None:
                await asyncio.sleep(poll)
            else:
                await listener.wait()
    finally:
        if listener is not None:
            await listener.close()


APPLICATION_NAME = "eventlog-tail"
"""The ``application_name`` of the listening connection, as ``pg_stat_activity`` shows it."""

_SAFETY_POLL = 5.0  # seconds between reads while listening (at most; see the docstring)
_MIN_READ_GAP = 0.05  # seconds: a busy writer notifies hundreds of times a second
_MIN_BACKOFF = 1.0  # seconds before listening again, doubled at each failure in a row...
_MAX_BACKOFF = 30.0  # ...up to this
_WARN_EVERY = 600.0  # seconds: a connection that keeps dropping warns once per this


class _Listener:
    """A connection LISTENing on :data:`NOTIFY_CHANNEL`, and the waits between reads.

    The connection comes from ``db``'s pool (so it is opened with the URL's ``ssl``,
    ``timeout``... which the engine holds and its URL does not) and is never given back:
    it is invalidated (closed) when lost or done with, so no other user of the pool
    gets a connection that is LISTENing and named after tail.
    """

    def __init__(self, db: Database, *, poll: float, safety_poll: float) -> None:
        self._db = db
        self._poll = poll
        self._safety_poll = safety_poll
        self._woken = asyncio.Event()  # set by a notification, or by the connection's end
        self._conn: AsyncConnection | None = None
        self._driver: Any = None  # its asyncpg.Connection
        self._read_at = 0.0  # loop time of the last read
        self._retry_at = 0.0  # loop time after which to try to listen again
        self._backoff = _MIN_BACKOFF
        self._warn_at = 0.0  # loop time after which a lost connection warns again

    def reading(self) -> None:
        """A read begins: it sees every commit notified so far, and only those after it
        wake the next :meth:`wait`."""
        self._woken.clear()
        self._read_at = asyncio.get_running_loop().time()

    async def wait(self) -> None:
        """Return when the next read is due: on a notification, else on the next poll."""
        loop = asyncio.get_running_loop()
        if self._driver is not None and self._driver.is_closed():
            await self._discard()
            self._not_listening("the connection listening for new events was closed")
        if self._conn is None and loop.time() >= self._retry_at:
            await self._listen()
        if self._conn is not None:
            timeout = self._safety_poll
        else:  # polling, until it is time to try to listen again
            timeout = max(0.0, min(self._poll, self._retry_at - loop.time()))
        try:
            async with asyncio.timeout(timeout):
                await self._woken.wait()
        except TimeoutError:
            return
        # Notifications coalesce into one read, and reads are spaced a little, so that
        # a follower of a busy writer does not read back to back.
        await asyncio.sleep(self._read_at + _MIN_READ_GAP - loop.time())

    async def _listen(self) -> None:
        # Listening only spares polls: whatever stops it, the follower polls on, and a
        # database that is really down is reported by the next read.
        try:
            conn = await self._db.engine.connect()
        except Exception as err:
            self._not_listening(f"cannot connect to listen for new events: {_describe(err)}")
            return
        try:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            await driver.execute(f"SET application_name = '{APPLICATION_NAME}'")
            driver.add_termination_listener(self._wake)
            await driver.add_listener(NOTIFY_CHANNEL, self._wake)
        except BaseException as err:
            await _invalidate(conn)
            if not isinstance(err, Exception):
                raise
            self._not_listening(f"LISTEN {NOTIFY_CHANNEL} failed: {_describe(err)}")
            return
        self._conn, self._driver = conn, driver
        self._backoff = _MIN_BACKOFF
        self._woken.set()  # read once more: a commit may have come before LISTEN took effect

    def _wake(self, *_args: object) -> None:
        self._woken.set()

    def _not_listening(self, reason: str) -> None:
        now = asyncio.get_running_loop().time()
        self._retry_at = now + self._backoff
        message = "eventlog tail: %s; polling %s every %g s, listening again in %g s"
        args = (reason, self._db.url, self._poll, self._backoff)
        if now >= self._warn_at:
            self._warn_at = now + _WARN_EVERY
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)

    async def _discard(self) -> None:
        conn, self._conn, self._driver = self._conn, None, None
        if conn is not None:
            await _invalidate(conn)

    async def close(self) -> None:
        """Close the listening connection, if open; closing twice is harmless."""
        await self._discard()


async def _invalidate(conn: AsyncConnection) -> None:
    """Close ``conn`` for good (SQLAlchemy closes it gracefully, within 2 s)."""
    try:
        await conn.invalidate()
        await conn.close()
    except Exception as err:  # it is being thrown away: nothing more to do with it
        logger.debug("eventlog tail: closing the listening connection: %s", _describe(err))


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


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
