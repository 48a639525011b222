"""The writer task: drain the channel, batch, and hand each batch to the database.

A batch is flushed when ``batch_size`` entries are pending, or when the *oldest* pending
entry has waited ``debounce_time`` (chronicle restarts its timer on every message, so a
steady trickle can wait for a full batch; here no entry waits longer than
``debounce_time`` plus the write), and finally when the sender is closed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from eventlog._log import logger
from eventlog.channel import LogSender
from eventlog.database import ProxyDatabase
from eventlog.events import EventPayload, ProxyLogEntry, ProxyLogEvent
from eventlog.transient import is_transient

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
    retry_base_delay: float = 0.1,
    retry_max_delay: float = 5.0,
    close_timeout: float = 30.0,
) -> tuple[LogSender, asyncio.Task[None]]:
    """Start the writer task on the running loop; return ``(sender, task)``.

    ``db`` is a :class:`~eventlog.Database` (or anything with ``write_log_batch``).
    ``sender.close()`` makes the task write everything sent before, then end.

    A batch that fails for a transient reason (the database is down, restarting, busy:
    see :mod:`eventlog.transient`) is kept and written again, the delay doubling from
    ``retry_base_delay`` up to ``retry_max_delay`` seconds with jitter, while ``send()``
    goes on accepting entries. After ``close()``, retrying stops ``close_timeout``
    seconds later: what is not written by then is counted as ``failed``, so closing
    never hangs on a database that stays away.
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
    for name, value in (
        ("retry_base_delay", retry_base_delay),
        ("retry_max_delay", retry_max_delay),
        ("close_timeout", close_timeout),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    if retry_max_delay < retry_base_delay:
        raise ValueError(
            f"retry_max_delay must be >= retry_base_delay, got {retry_max_delay!r} "
            f"< {retry_base_delay!r}"
        )
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
    sender = LogSender(loop, clock, float(close_timeout))
    subscribe = getattr(clock, "subscribe", None)
    if callable(subscribe):
        subscribe(sender._wake_writer)
    retry = _Retry(float(retry_base_delay), float(retry_max_delay))
    task = loop.create_task(
        _write_loop(db, sender, batch_size, debounce, clock, retry), name="eventlog-writer"
    )
    sender._task = task
    return sender, task


async def _write_loop(
    db: ProxyDatabase,
    sender: LogSender,
    batch_size: int,
    debounce: float,
    clock: Clock,
    retry: _Retry,
) -> None:
    failures = _FailureLog(clock)
    writes = _Writes(db, sender, failures, retry, clock)
    try:
        await _loop(sender, batch_size, debounce, clock, writes)
    except asyncio.CancelledError:
        writes.cancel()
        lost = sender._record_lost()
        if lost:
            logger.warning(
                "eventlog: the writer task was cancelled with %d entries not confirmed "
                "written, counted as failed (a batch already handed to the database may "
                "still commit); close the sender and await the task to write them all",
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

    def __init__(
        self,
        db: ProxyDatabase,
        sender: LogSender,
        failures: _FailureLog,
        retry: _Retry,
        clock: Clock,
    ) -> None:
        self._db = db
        self._sender = sender
        self._failures = failures
        self._retry = retry
        self._clock = clock
        self._unavailable = _FailureLog(
            clock, "the database is unavailable; will retry", level=logging.WARNING
        )
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

    def _time_left(self) -> float:
        """Seconds until retrying must stop: infinite until close(), then the deadline."""
        closed_at = self._sender._closed_at
        if closed_at is None:
            return math.inf
        return closed_at + self._sender._close_timeout - self._clock()

    async def _write(self, batch: list[ProxyLogEntry], after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await asyncio.wait([after])
        delay = self._retry.base_delay
        while True:
            try:
                repaired = await self._db.write_log_batch(batch)
            except Exception as err:
                transient = is_transient(err)
                left = self._time_left()
                if transient:
                    self._sender._record_transient_failure(retrying=left > 0)
                if not transient or left <= 0:
                    self._sender._record_write(len(batch), ok=False)
                    self._failures.add(len(batch), err)
                    return
                self._unavailable.add(len(batch), err)
                # Full jitter keeps several writers (or processes) from retrying in step.
                pause = min(delay * (0.5 + random.random() / 2), left)
                await self._sender._wait_closed_or(pause)
                delay = min(delay * 2, self._retry.max_delay)
            else:
                self._sender._record_write(len(batch), ok=True)
                if isinstance(repaired, int) and repaired > 0:
                    self._sender._record_repaired(repaired)
                return


@dataclass(frozen=True, slots=True)
class _Retry:
    base_delay: float
    max_delay: float


# Entries that become chronicle_events rows: their order between batches does not matter.
_ROW_TYPES = frozenset({ProxyLogEvent, EventPayload})


class _FailureLog:
    """Logs failed writes: the first at once, then one summary per ``interval``.

    A database that is down for a minute fails hundreds of batches; a line for each would
    bury the application's own logs. Nothing is left out: the summary counts the batches
    and entries since the last line, and what is pending is logged when the writer ends.
    """

    def __init__(
        self,
        clock: Clock,
        what: str = "failed to write",
        *,
        level: int = logging.ERROR,
        interval: float = 10.0,
    ) -> None:
        self._clock = clock
        self._what = what
        self._level = level
        self._interval = interval
        self._last = -math.inf
        self._batches = 0
        self._entries = 0
        self._error: Exception | None = None

    def add(self, entries: int, err: Exception) -> None:
        now = self._clock()
        if now - self._last >= self._interval and not self._batches:
            self._last = now
            logger.log(
                self._level,
                "eventlog: %s a batch of %d entries: %s: %s",
                self._what,
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
            logger.log(
                self._level,
                "eventlog: %s %d more batches (%d entries); last error: %s: %s",
                self._what,
                self._batches,
                self._entries,
                type(self._error).__name__,
                self._error,
            )
            self._batches = self._entries = 0
            self._error = None
