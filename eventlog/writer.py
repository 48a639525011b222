"""The writer task: drain the channel, batch, and hand each batch to the database.

A batch is flushed when ``batch_size`` entries are pending, or when the *oldest* pending
entry has waited ``debounce_time`` (chronicle restarts its timer on every message, so a
steady trickle can wait for a full batch; here no entry waits longer than
``debounce_time`` plus the write), and finally when the sender is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from eventlog._checks import positive_int, seconds
from eventlog._log import logger
from eventlog.channel import _NO_FLUSH, OVERFLOW_MODES, LogSender, Overflow
from eventlog.database import ProxyDatabase
from eventlog.events import EventPayload, ProxyLogEntry, ProxyLogEvent
from eventlog.ids import uuid7
from eventlog.records import entry_to_record
from eventlog.spool import DEFAULT_WINDOW, Spool
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
    cancel_timeout: float = 5.0,
    max_queue: int | None = None,
    max_queue_bytes: int | None = None,
    overflow: Overflow = "drop_newest",
    high_water: int | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    spool_fsync_interval: float = 0.1,
    dead_letter_dir: str | os.PathLike[str] | None = None,
) -> tuple[LogSender, asyncio.Task[None]]:
    """Start the writer task on the running loop; return ``(sender, task)``.

    ``db`` is a :class:`~eventlog.Database` (or anything with ``write_log_batch``).
    ``sender.close()`` makes the task write everything sent before, then end.

    Failures (see the README's "Reliability" section for the guarantees):

    - A batch that fails for a transient reason (the database is down, restarting, busy:
      see :mod:`eventlog.transient`) is kept and written again, the delay doubling from
      ``retry_base_delay`` up to ``retry_max_delay`` seconds with jitter, while
      ``send()`` goes on accepting entries. After ``close()``, retrying stops
      ``close_timeout`` seconds later.
    - A batch the database refuses otherwise is split in halves until the refused
      entries are alone; each goes to the ``eventlog_dead_letters`` table, or if that
      fails too, to a JSONL file in ``dead_letter_dir`` (else it is logged with its
      content and counted ``failed``).
    - Cancelling the task writes what it can for up to ``cancel_timeout`` seconds first.

    Memory: ``max_queue`` bounds the entries accepted and not yet written (the batches
    being written included), and ``max_queue_bytes`` their size (as JSON); ``overflow``
    says what a full queue does: ``"drop_newest"`` refuses the new entries,
    ``"drop_oldest"`` pushes out the oldest ones not yet taken by the writer,
    ``"block"`` makes senders on other threads wait (``send_async()`` waits without
    blocking; the loop's own thread is never blocked) and ``"spill"`` keeps the excess
    in the spool only. A warning is logged once when ``high_water``
    entries wait (default 80 % of ``max_queue``, or 100,000).

    ``spool_dir`` turns on the durable spool (:mod:`eventlog.spool`): every entry is
    appended there before it is written, fsynced every ``spool_fsync_interval`` seconds,
    and replayed by the next logger if this one dies or closes before writing it.
    """
    positive_int("batch_size", batch_size)
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
        ("cancel_timeout", cancel_timeout),
        ("spool_fsync_interval", spool_fsync_interval),
    ):
        seconds(name, value)
    if retry_max_delay < retry_base_delay:
        raise ValueError(
            f"retry_max_delay must be >= retry_base_delay, got {retry_max_delay!r} "
            f"< {retry_base_delay!r}"
        )
    for name, bound in (
        ("max_queue", max_queue),
        ("max_queue_bytes", max_queue_bytes),
        ("high_water", high_water),
    ):
        positive_int(name, bound, optional=True)
    if overflow not in OVERFLOW_MODES:
        raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_MODES)}, got {overflow!r}")
    if overflow == "spill" and spool_dir is None:
        raise ValueError('overflow="spill" needs spool_dir: the excess is kept in the spool')
    if overflow == "drop_oldest" and spool_dir is not None:
        raise ValueError(
            'overflow="drop_oldest" cannot be used with spool_dir: the spool keeps every '
            'entry in order until it is written; use "spill", "block" or "drop_newest"'
        )
    for name, folder in (("spool_dir", spool_dir), ("dead_letter_dir", dead_letter_dir)):
        if folder is not None and not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"{name} must be a path, got {type(folder).__name__}")
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
    spool: Spool | None = None
    if spool_dir is not None:
        # Memory between the spool and the commit; with a bound, within it (replayed
        # entries count against max_queue as soon as they are in memory).
        if max_queue is None:
            window = DEFAULT_WINDOW
        elif overflow == "spill":
            window = max_queue
        else:
            window = min(max_queue, DEFAULT_WINDOW)
        spool = Spool(
            spool_dir,
            fsync_interval=float(spool_fsync_interval),
            window=max(window, batch_size),
            clock=clock,
        )
        spool.open()  # at start-up, once: creating the folder is not worth a thread hop
    sender = LogSender(
        loop,
        clock,
        float(close_timeout),
        max_queue=max_queue,
        max_queue_bytes=max_queue_bytes,
        overflow=overflow,
        high_water=high_water,
        spool=spool,
    )
    subscribe = getattr(clock, "subscribe", None)
    if callable(subscribe):
        subscribe(sender._wake_writer)
    config = _Config(
        batch_size=batch_size,
        debounce=debounce,
        clock=clock,
        retry_base_delay=float(retry_base_delay),
        retry_max_delay=float(retry_max_delay),
        cancel_timeout=float(cancel_timeout),
        dead_letter_dir=None if dead_letter_dir is None else Path(dead_letter_dir),
    )
    task = loop.create_task(_write_loop(db, sender, config, spool), name="eventlog-writer")
    sender._task = task
    return sender, task


@dataclass(frozen=True, slots=True, kw_only=True)
class _Config:
    batch_size: int
    debounce: float
    clock: Clock
    retry_base_delay: float
    retry_max_delay: float
    cancel_timeout: float
    dead_letter_dir: Path | None


class _State:
    """What the writer holds between the channel and the database: kept across a
    cancellation, so that the flush on the way out writes it too."""

    __slots__ = ("arrivals", "consumed", "pending")

    def __init__(self) -> None:
        self.pending: deque[ProxyLogEntry] = deque()
        # (count, clock() of the first) for each drain still in `pending`, oldest first:
        # tells the age of the oldest pending entry after a partial flush.
        self.arrivals: deque[_Arrival] = deque()
        self.consumed = 0  # entries taken into batches: the spool's positions


async def _write_loop(
    db: ProxyDatabase, sender: LogSender, config: _Config, spool: Spool | None
) -> None:
    failures = _FailureLog(config.clock)
    state = _State()
    writes = _Writes(db, sender, failures, config, spool)
    sender._oldest = lambda: _oldest_time(state, writes)
    spooling = None
    if spool is not None:
        spooling = asyncio.get_running_loop().create_task(
            spool.run(sender, writes.time_left), name="eventlog-spool"
        )
    try:
        await _loop(sender, state, config, writes)
    except asyncio.CancelledError as err:
        await _flush_after_cancel(sender, state, config, writes, err)
        raise
    finally:
        if spooling is not None:
            if not spooling.done():
                spooling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([spooling])
        if spool is not None:
            spool.close()
        failures.flush()


async def _flush_after_cancel(
    sender: LogSender,
    state: _State,
    config: _Config,
    writes: _Writes,
    err: asyncio.CancelledError,
) -> None:
    """The writer was cancelled: write what can be within ``cancel_timeout``, then count
    the rest (an application that cancels its tasks on shutdown loses nothing that the
    database can take in that time)."""
    sender.close()
    task = asyncio.current_task()
    flush = config.cancel_timeout if _NO_FLUSH not in err.args else 0.0
    if flush > 0 and task is not None:
        task.uncancel()
        sender._close_timeout = min(
            sender._close_timeout, config.clock() - (sender._closed_at or 0.0) + flush
        )
        try:
            async with asyncio.timeout(flush):
                await _loop(sender, state, config, writes)
        except (TimeoutError, asyncio.CancelledError):
            pass  # out of time, or cancelled again: stop at once
    await writes.cancel()
    lost = sender._record_lost()
    if lost:
        where = "left in the spool" if sender._spool is not None else "counted as failed"
        logger.warning(
            "eventlog: the writer task was cancelled with %d entries not written, %s; "
            "close the sender and await the task (or sender.aclose()) to write them all",
            lost,
            where,
        )


def _oldest_time(state: _State, writes: _Writes) -> float | None:
    times = [t for t in writes.started_times() if t is not None]
    with contextlib.suppress(IndexError):  # read from another thread: may change under us
        times.append(state.arrivals[0].time)
    return min(times) if times else None


async def _loop(sender: LogSender, state: _State, config: _Config, writes: _Writes) -> None:
    batch_size, debounce, clock = config.batch_size, config.debounce, config.clock
    arrivals = state.arrivals
    while True:
        entries, first_time, closed = sender._drain()
        if entries:
            if state.pending:
                state.pending.extend(entries)
            else:
                state.pending = entries  # the channel's own deque: nothing copied
            arrivals.append(_Arrival(len(entries), first_time))
        pending = state.pending
        if not pending:
            if closed:
                await writes.finish()
                return
            await sender._wait(1, None)
            continue
        waited = clock() - arrivals[0].time
        if len(pending) >= batch_size or closed or waited >= debounce:
            if not writes.has_slot():
                # Wait with the batch still pending: a cancellation meanwhile leaves it
                # for the flush after it.
                await writes.wait_for_slot()
                continue
            count = min(batch_size, len(pending))
            batch = [pending.popleft() for _ in range(count)]
            start = state.consumed
            state.consumed += count
            oldest = arrivals[0].time
            _forget(arrivals, count)
            await writes.start(batch, start, oldest)
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
    Each write is a task of its own, so that cancelling the writer does not cut a
    write short in the middle (the flush after a cancellation waits for it).
    """

    def __init__(
        self,
        db: ProxyDatabase,
        sender: LogSender,
        failures: _FailureLog,
        config: _Config,
        spool: Spool | None,
    ) -> None:
        self._db = db
        self._sender = sender
        self._failures = failures
        self._config = config
        self._clock = config.clock
        self._spool = spool
        self._unavailable = _FailureLog(
            config.clock, "the database is unavailable; will retry", level=logging.WARNING
        )
        self._refused = _FailureLog(config.clock, "the database refused", level=logging.WARNING)
        limit = getattr(db, "concurrent_writes", 1)
        self._limit = limit if isinstance(limit, int) and limit > 1 else 1
        self._tasks: dict[asyncio.Task[None], float] = {}  # write -> clock() of its oldest
        self._ordered: asyncio.Task[None] | None = None

    def has_slot(self) -> bool:
        return len(self._tasks) < self._limit

    async def wait_for_slot(self) -> None:
        while len(self._tasks) >= self._limit:
            await asyncio.wait(list(self._tasks), return_when=asyncio.FIRST_COMPLETED)

    async def start(self, batch: list[ProxyLogEntry], start: int, oldest: float) -> None:
        """Start writing ``batch`` (a slot is free); returns once it is under way (or,
        one write at a time, done)."""
        ordered = self._limit > 1 and any(type(entry) not in _ROW_TYPES for entry in batch)
        task = asyncio.get_running_loop().create_task(
            self._write(batch, start, self._ordered if ordered else None)
        )
        self._tasks[task] = oldest
        task.add_done_callback(self._forget)
        if ordered:
            self._ordered = task
        if self._limit == 1:
            await asyncio.wait([task])

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    def started_times(self) -> list[float]:
        return list(self._tasks.values())

    async def finish(self) -> None:
        """Wait for every write under way."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def cancel(self) -> None:
        """Stop the writes under way, and wait until they have stopped."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def time_left(self) -> float:
        """Seconds until retrying must stop: infinite until close(), then the deadline."""
        closed_at = self._sender._closed_at
        if closed_at is None:
            return math.inf
        return closed_at + self._sender._close_timeout - self._clock()

    async def _write(
        self, batch: list[ProxyLogEntry], start: int, after: asyncio.Task[None] | None
    ) -> None:
        if after is not None:
            await asyncio.wait([after])
        began = self._clock()
        error = await self._attempt(batch)
        if error is None:
            self._written(batch, start, self._clock() - began)
        elif isinstance(error, _GaveUp):
            self._gave_up(batch, start, error.error)
        else:
            # Refused: find the entries the database will not take, write the others.
            self._refused.add(len(batch), error)
            letters: list[tuple[ProxyLogEntry, Exception, int]] = []
            await self._isolate(batch, start, error, letters, known_bad=True)
            self._sender._record_batch_failed()
            if letters:
                await self._set_aside(letters, uuid7(), len(batch))
                if self._spool is not None:  # only once stored (or logged)
                    for _, _, position in letters:
                        self._spool.settle(position, 1, committed=True)

    async def _attempt(self, batch: list[ProxyLogEntry]) -> Exception | None:
        """Write ``batch``, retrying transient failures; None when written, else the
        non-transient error or :class:`_GaveUp` (the close deadline passed)."""
        delay = self._config.retry_base_delay
        while True:
            try:
                repaired = await self._db.write_log_batch(batch)
            except Exception as err:
                transient = is_transient(err)
                left = self.time_left()
                if transient:
                    self._sender._record_transient_failure(retrying=left > 0)
                if not transient:
                    return err
                if left <= 0:
                    return _GaveUp(err)
                self._unavailable.add(len(batch), err)
                # Full jitter keeps several writers (or processes) from retrying in step.
                pause = min(delay * (0.5 + random.random() / 2), left)
                await self._sender._wait_closed_or(pause)
                delay = min(delay * 2, self._config.retry_max_delay)
            else:
                if isinstance(repaired, int) and repaired > 0:
                    self._sender._record_repaired(repaired)
                return None

    async def _isolate(
        self,
        entries: list[ProxyLogEntry],
        start: int,
        error: Exception,
        letters: list[tuple[ProxyLogEntry, Exception, int]],
        *,
        known_bad: bool,
    ) -> None:
        """Bisect ``entries`` (refused as a whole with ``error``) down to the refused
        ones, writing every half the database takes. An entry is set aside only after
        it has been refused on its own (a refusal may not repeat)."""
        if not known_bad or len(entries) == 1:
            began = self._clock()
            outcome = await self._attempt(entries)
            if outcome is None:
                self._written(entries, start, self._clock() - began)
                return
            if isinstance(outcome, _GaveUp):
                self._gave_up(entries, start, outcome.error)
                return
            error = outcome
        if len(entries) == 1:
            letters.append((entries[0], error, start))
            return
        middle = len(entries) // 2
        first, second = entries[:middle], entries[middle:]
        before = len(letters)
        await self._isolate(first, start, error, letters, known_bad=False)
        # If the first half went in whole, the refused entries are in the second.
        first_clean = len(letters) == before
        await self._isolate(second, start + middle, error, letters, known_bad=first_clean)

    def _written(self, entries: list[ProxyLogEntry], start: int, latency: float) -> None:
        self._sender._record_write(len(entries), ok=True, latency=latency, entries=entries)
        if self._spool is not None:
            self._spool.settle(start, len(entries), committed=True)

    def _gave_up(self, entries: list[ProxyLogEntry], start: int, error: Exception) -> None:
        self._sender._record_write(len(entries), ok=False, entries=entries)
        if self._spool is not None:
            lost = self._spool.settle(start, len(entries), committed=False)
            if lost:  # never spooled (the disk failed): nowhere left to keep them
                self._sender._record_failed(lost)
        self._failures.add(len(entries), error)

    async def _set_aside(
        self, refused: list[tuple[ProxyLogEntry, Exception, int]], batch_id: uuid.UUID, size: int
    ) -> None:
        """Store refused entries as dead letters: in the table, else in a JSONL file,
        else (no folder, or it failed too) in the log, with their content."""
        from eventlog.deadletters import DeadLetter, describe_error, write_dead_letter_file

        entries = [entry for entry, _, _ in refused]
        letters = [
            DeadLetter(entry=entry, error=describe_error(err), batch_id=batch_id, batch_size=size)
            for entry, err, _ in refused
        ]
        failures: list[str] = []
        where: object = None
        store = getattr(self._db, "write_dead_letters", None)
        if callable(store):
            try:
                await store(letters)
                where = "eventlog_dead_letters (eventlog dead-letters)"
            except Exception as err:
                failures.append(f"the table: {describe_error(err)}")
        folder = self._config.dead_letter_dir
        if where is None and folder is not None:
            try:
                where = await asyncio.to_thread(write_dead_letter_file, folder, letters)
            except Exception as err:
                failures.append(f"the folder: {describe_error(err)}")
        self._sender._record_dead_letters(len(letters), stored=where is not None, entries=entries)
        failed = "; ".join(failures)
        if where is not None:
            logger.warning(
                "eventlog: %d of a batch of %d entries refused by the database, set aside "
                "in %s%s; first: %s",
                len(letters),
                size,
                where,
                f" ({failed} failed)" if failed else "",
                letters[0].error,
            )
            return
        for letter in letters:
            logger.error(
                "eventlog: entry refused by the database and not stored anywhere (%s): "
                "%s; the entry: %s",
                f"{failed} failed" if failed else "no dead_letter_dir",
                letter.error,
                entry_to_record(letter.entry).decode(),
            )


class _GaveUp(Exception):
    """A transient failure that outlasted the close deadline."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


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
