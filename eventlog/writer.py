"""The writer task: drain the channel, batch, and hand each batch to the database.

A batch is flushed when ``batch_size`` entries are pending, or when the *oldest* pending
entry has waited ``debounce_time`` (chronicle restarts its timer on every message, so a
steady trickle can wait for a full batch; here no entry waits longer than
``debounce_time`` plus the write), and finally when the sender is closed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta

from eventlog._log import logger
from eventlog.channel import LogSender
from eventlog.database import ProxyDatabase
from eventlog.events import EventPayload, ProxyLogEntry, ProxyLogEvent

__all__ = ["Clock", "start_database_logger"]

Clock = Callable[[], float]
"""Monotonic seconds. A clock with a ``subscribe(callback)`` method (such as
:class:`eventlog.testing.ManualClock`) calls ``callback()`` whenever it jumps, so the
writer re-reads it at once instead of sleeping in real time."""


def start_database_logger(
    db: ProxyDatabase,
    batch_size: int = 100,
    debounce_time: float | timedelta = 1.0,
    *,
    clock: Clock | None = None,
) -> tuple[LogSender, asyncio.Task[None]]:
    """Start the writer task on the running loop; return ``(sender, task)``.

    ``db`` is a :class:`~eventlog.Database` (or anything with ``write_log_batch``).
    ``sender.close()`` makes the task write everything sent before, then end.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(debounce_time, timedelta):
        debounce = debounce_time.total_seconds()
    elif isinstance(debounce_time, (int, float)) and not isinstance(debounce_time, bool):
        debounce = float(debounce_time)
    else:
        raise ValueError(
            "debounce_time must be seconds (a float) or a timedelta, "
            f"got {type(debounce_time).__name__}"
        )
    if not math.isfinite(debounce) or debounce < 0:
        raise ValueError(f"debounce_time must be finite and >= 0 seconds, got {debounce_time!r}")
    if not callable(getattr(db, "write_log_batch", None)):
        raise TypeError(f"db must have an async write_log_batch(entries), got {type(db).__name__}")
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be a callable returning seconds, got {type(clock).__name__}")
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "start_database_logger() must be called inside a running event loop "
            "(for example in an async function or an ASGI lifespan)"
        ) from None
    clock = clock or time.monotonic
    sender = LogSender(loop, clock)
    subscribe = getattr(clock, "subscribe", None)
    if callable(subscribe):
        subscribe(sender._wake_writer)
    task = loop.create_task(
        _write_loop(db, sender, batch_size, debounce, clock), name="eventlog-writer"
    )
    return sender, task


async def _write_loop(
    db: ProxyDatabase,
    sender: LogSender,
    batch_size: int,
    debounce: float,
    clock: Clock,
) -> None:
    failures = _FailureLog(clock)
    writes = _Writes(db, sender, failures)
    try:
        await _loop(sender, batch_size, debounce, clock, writes)
    except asyncio.CancelledError:
        writes.cancel()
        lost = sender.stats().queued
        if lost:
            logger.warning(
                "eventlog: the writer task was cancelled with %d entries not confirmed "
                "written (a batch already handed to the database may still commit); "
                "call sender.close() and await the task to write them all",
                lost,
            )
        raise
    finally:
        failures.flush()


async def _loop(
    sender: LogSender,
    batch_size: int,
    debounce: float,
    clock: Clock,
    writes: _Writes,
) -> None:
    pending: deque[ProxyLogEntry] = deque()
    # (count, clock() of the first) for each drain still in `pending`, oldest first:
    # tells the age of the oldest pending entry after a partial flush.
    arrivals: deque[_Arrival] = deque()
    while True:
        entries, first_time, closed = sender._drain()
        if entries:
            if pending:
                pending.extend(entries)
            else:
                pending = entries  # the channel's own deque: nothing copied
            arrivals.append(_Arrival(len(entries), first_time))
        if not pending:
            if closed:
                await writes.finish()
                return
            await sender._wait(1, None)
            continue
        waited = clock() - arrivals[0].time
        if len(pending) >= batch_size or closed or waited >= debounce:
            count = min(batch_size, len(pending))
            batch = [pending.popleft() for _ in range(count)]
            _forget(arrivals, count)
            await writes.start(batch)
            continue  # drain what came in meanwhile before deciding again
        await sender._wait(batch_size - len(pending), debounce - waited)


class _Arrival:
    """``count`` entries drained together, the oldest sent at ``time``."""

    __slots__ = ("count", "time")

    def __init__(self, count: int, time: float) -> None:
        self.count = count
        self.time = time


def _forget(arrivals: deque[_Arrival], count: int) -> None:
    """Drop the first ``count`` entries' arrival records."""
    while count:
        first = arrivals[0]
        if first.count <= count:
            count -= first.count
            arrivals.popleft()
        else:
            first.count -= count
            count = 0


class _Writes:
    """The batches being written: at most ``db.concurrent_writes`` at once (default 1).

    With two connections the server writes one batch while Python prepares the next.
    Event rows are independent, but run and step events of one run must apply in the
    order sent: a batch that holds any waits for the previous such batch to finish.
    """

    def __init__(self, db: ProxyDatabase, sender: LogSender, failures: _FailureLog) -> None:
        self._db = db
        self._sender = sender
        self._failures = failures
        limit = getattr(db, "concurrent_writes", 1)
        self._limit = limit if isinstance(limit, int) and limit > 1 else 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._ordered: asyncio.Task[None] | None = None

    async def start(self, batch: list[ProxyLogEntry]) -> None:
        """Start writing ``batch``; returns once it is under way (or done, one at a time)."""
        if self._limit == 1:
            await self._write(batch, None)
            return
        while len(self._tasks) >= self._limit:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        ordered = any(type(entry) not in _ROW_TYPES for entry in batch)
        task = asyncio.get_running_loop().create_task(
            self._write(batch, self._ordered if ordered else None)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if ordered:
            self._ordered = task

    async def finish(self) -> None:
        """Wait for every write under way."""
        while self._tasks:
            await asyncio.wait(self._tasks)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _write(self, batch: list[ProxyLogEntry], after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await asyncio.wait([after])
        try:
            await self._db.write_log_batch(batch)
        except Exception as err:
            self._sender._record_write(len(batch), ok=False)
            self._failures.add(len(batch), err)
        else:
            self._sender._record_write(len(batch), ok=True)


# Entries that become chronicle_events rows: their order between batches does not matter.
_ROW_TYPES = frozenset({ProxyLogEvent, EventPayload})


class _FailureLog:
    """Logs failed writes: the first at once, then one summary per ``interval``.

    A database that is down for a minute fails hundreds of batches; a line for each would
    bury the application's own logs. Nothing is left out: the summary counts the batches
    and entries since the last line, and what is pending is logged when the writer ends.
    """

    def __init__(self, clock: Clock, interval: float = 10.0) -> None:
        self._clock = clock
        self._interval = interval
        self._last = -math.inf
        self._batches = 0
        self._entries = 0
        self._error: Exception | None = None

    def add(self, entries: int, err: Exception) -> None:
        now = self._clock()
        if now - self._last >= self._interval and not self._batches:
            self._last = now
            logger.error(
                "eventlog: failed to write a batch of %d entries: %s: %s",
                entries,
                type(err).__name__,
                err,
                exc_info=err,
            )
            return
        self._batches += 1
        self._entries += entries
        self._error = err
        if now - self._last >= self._interval:
            self._last = now
            self.flush()

    def flush(self) -> None:
        """Log the failures not reported yet, if any."""
        if self._batches:
            logger.error(
                "eventlog: failed to write %d more batches (%d entries); last error: %s: %s",
                self._batches,
                self._entries,
                type(self._error).__name__,
                self._error,
            )
            self._batches = self._entries = 0
            self._error = None
