"""The channel between the application's senders and the writer task.

``send()`` is the application's hot path: it appends to a deque under a lock held for a
few hundred nanoseconds and wakes the writer only when the writer is asleep waiting for
exactly what this send brings (its first entry, or the entry that fills a batch). So a
busy application pays no system call per event, from the loop's thread or any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Final, Literal

from eventlog import context as _context
from eventlog._checks import timeout as check_timeout
from eventlog._log import logger, own_logging
from eventlog.events import ENTRY_TYPES, ProxyLogEntry
from eventlog.records import entry_to_record
from eventlog.stats import DROP_REASONS, LoggerStats

if TYPE_CHECKING:
    from eventlog.spool import Spool

__all__ = ["OVERFLOW_MODES", "LogSender", "Overflow"]

_NEVER: Final = float("inf")

Overflow = Literal["block", "drop_newest", "drop_oldest", "spill"]
OVERFLOW_MODES: Final = ("block", "drop_newest", "drop_oldest", "spill")

# Unbounded queues warn once past this many entries waiting (bounded ones at 80 %).
DEFAULT_HIGH_WATER: Final = 100_000
_LATENCY_WINDOW: Final = 1000


class LogSender:
    """The application's handle on a logger: ``send()`` entries, ``close()`` when done.

    Made by :func:`eventlog.start_database_logger`; safe to share between threads and
    tasks. Entries are kept in the order they were sent.
    """

    __slots__ = (
        "__weakref__",
        "_batches",
        "_blocked",
        "_check_room",
        "_clock",
        "_close_timeout",
        "_closed",
        "_closed_at",
        "_closed_event",
        "_dead_letters",
        "_dropped",
        "_failed",
        "_failed_writes",
        "_first_time",
        "_high_water",
        "_latencies",
        "_lock",
        "_loop",
        "_loop_thread",
        "_max_bytes",
        "_max_queue",
        "_oldest",
        "_overflow",
        "_queue",
        "_queued_bytes",
        "_queued_since_drain",
        "_ready",
        "_ready_time",
        "_repaired",
        "_replayed",
        "_resolved",
        "_retries",
        "_sent",
        "_space",
        "_space_waiters",
        "_spool",
        "_spool_waiter",
        "_task",
        "_transient_failures",
        "_waiter",
        "_wake_at",
        "_warned",
        "_written",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        close_timeout: float = 30.0,
        *,
        max_queue: int | None = None,
        max_queue_bytes: int | None = None,
        overflow: Overflow = "drop_newest",
        high_water: int | None = None,
        spool: Spool | None = None,
    ) -> None:
        self._loop = loop
        self._task: asyncio.Task[None] | None = None  # the writer, once started
        self._close_timeout = close_timeout
        self._loop_thread = threading.get_ident()
        self._clock = clock
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)  # senders blocked on a full queue
        self._blocked = 0
        self._space_waiters: list[asyncio.Future[None]] = []  # send_async() callers
        self._max_queue = max_queue
        self._max_bytes = max_queue_bytes
        self._queued_bytes = 0  # JSON size of what is queued, kept with max_queue_bytes
        self._overflow: Overflow = overflow
        # Whether send() must check for room (bounded, and not spilling to disk): read
        # once here, not on every call.
        self._check_room = (
            max_queue is not None or max_queue_bytes is not None
        ) and overflow != "spill"
        if high_water is None:
            high_water = DEFAULT_HIGH_WATER if max_queue is None else max(1, max_queue * 4 // 5)
        self._high_water = high_water
        # What send() appends to. With a spool, the spool task moves entries from here to
        # disk and then to `_ready`, which the writer drains; without, the writer drains
        # `_queue` itself and `_ready` is unused.
        self._queue: deque[ProxyLogEntry] = deque()
        self._ready: deque[ProxyLogEntry] = deque()
        self._spool = spool
        self._spool_waiter: asyncio.Future[None] | None = None
        self._ready_time = 0.0  # clock() of the oldest entry in `_ready`
        self._first_time = 0.0  # clock() when the drained queue last became non-empty
        self._queued_since_drain = 0
        self._wake_at = _NEVER  # the writer sleeps until this many entries are queued
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._warned: set[str] = set()  # warnings given once
        self._sent = 0
        self._replayed = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._written = 0
        self._batches = 0
        self._failed = 0
        self._failed_writes = 0
        self._dead_letters = 0
        self._resolved = 0  # written + failed + dead letters + evicted
        self._retries = 0
        self._transient_failures = 0
        self._repaired = 0
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._oldest: Callable[[], float | None] | None = None  # set by the writer
        self._closed_at: float | None = None  # clock() at close()
        self._closed_event = asyncio.Event()  # set on the loop's thread after close()

    # -- the application's side ------------------------------------------------------

    def send(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        """Queue one entry, or a sequence of entries as one message.

        Never blocks, except with ``overflow="block"`` on a full queue from a thread
        other than the event loop's. Raises ``TypeError`` for an object that is not an
        entry (a programming error). An entry that is not accepted (after
        :meth:`close`, or over ``max_queue``) is counted in ``stats().dropped_by_reason``
        and a warning is logged once per reason.
        """
        if type(entry) in ENTRY_TYPES:
            message: tuple[ProxyLogEntry, ...] | None = None
            count = 1
        else:
            message = _as_message(entry)
            count = len(message)
            if count == 0:
                return
        if _context.used:  # eventlog.run/step: fill run_id/step_id the entries leave unset
            _context.fill_entries(entry if message is None else message)
        if own_logging.active:
            self._drop("recursion", count)
            return
        size = 0 if self._max_bytes is None else _size_of(entry, message)
        with self._lock:
            if self._closed or (self._check_room and not self._fits(count, size)):
                accepted = False
            else:
                accepted = True
                wake = self._enqueue(entry, message, count, size)
                high = self._sent + self._replayed - self._resolved >= self._high_water
        if not accepted:
            self._send_slow(entry, message, count, size)
            return
        if wake:
            self._wake_writer()
        if high:
            self._warn_high_water()

    async def send_async(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        """Queue like :meth:`send`; with ``overflow="block"``, wait for room first.

        The way for coroutines to respect a bound without blocking the event loop.
        From another event loop than the logger's, the wait happens in a thread.
        """
        message: tuple[ProxyLogEntry, ...] = (
            (entry,) if type(entry) in ENTRY_TYPES else _as_message(entry)  # type: ignore[assignment]
        )
        bounded = self._max_queue is not None or self._max_bytes is not None
        if self._overflow != "block" or not bounded or not message:
            self.send(entry)
            return
        size = 0 if self._max_bytes is None else _size_of(message[0], message)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            await asyncio.to_thread(self.send, entry)
            return
        while True:
            with self._lock:
                if self._closed or self._fits(len(message), size):
                    break
                waiter = loop.create_future()
                self._space_waiters.append(waiter)
            try:
                await waiter
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self._space_waiters.remove(waiter)
        self.send(entry)

    def close(self) -> None:
        """Stop accepting entries; the writer writes everything sent before, then ends.

        Await the writer task to know when that is done. Closing twice is harmless.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closed_at = self._clock()
            self._wake_at = _NEVER
            self._space.notify_all()
        self._wake_writer()

    async def aclose(self, timeout: float | None = None) -> LoggerStats:  # noqa: ASYNC109
        """Close, then wait for the writer: everything sent before is written or counted.

        ``timeout`` (seconds) bounds the whole of it, retries of an unavailable database
        included (default: the logger's ``close_timeout`` for retries, and no bound on a
        write under way). What is not written by then stays in the spool (with
        ``spool_dir``) or is counted in ``failed``. Returns the final stats. Closing
        twice is harmless.
        """
        timeout = check_timeout("timeout", timeout)
        if timeout is not None and not self._closed:
            self._close_timeout = min(self._close_timeout, timeout)
        self.close()
        task = self._task
        if task is not None and not task.done():
            try:
                # shield: a timeout here must not cancel the writer before we decide to.
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                # The deadline is spent: no flushing on the way out.
                self._close_timeout = 0.0
                task.cancel(_NO_FLUSH)
                await asyncio.wait([task])  # a cancel of our caller still propagates
        return self.stats()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def stats(self) -> LoggerStats:
        """A consistent snapshot of this logger's counters; callable from any thread."""
        oldest = self._oldest
        with self._lock:
            latencies = sorted(self._latencies)
            first = self._first_time if self._queue else None
            dropped = dict(self._dropped)
            stats = LoggerStats(
                sent=self._sent,
                written=self._written,
                batches=self._batches,
                failed_writes=self._failed_writes,
                failed=self._failed,
                dropped=sum(dropped.values()),
                dropped_by_reason=dropped,
                retries=self._retries,
                repaired=self._repaired,
                transient_failures=self._transient_failures,
                dead_letters=self._dead_letters,
                replayed=self._replayed,
                queued=self._sent + self._replayed - self._resolved,
                queued_bytes=self._queued_bytes,
                write_latency_last=self._latencies[-1] if latencies else None,
                write_latency_p50=statistics.median(latencies) if latencies else None,
                # nearest rank: with few writes, the slowest of them
                write_latency_p99=latencies[math.ceil(0.99 * len(latencies)) - 1]
                if latencies
                else None,
            )
        times = [t for t in (first, oldest() if oldest is not None else None) if t is not None]
        age = max(0.0, self._clock() - min(times)) if times and stats.queued else None
        spool = self._spool
        return replace(
            stats,
            oldest_queued_age=age,
            spooled=spool.pending if spool is not None else 0,
            spool_corrupt=spool.corrupt if spool is not None else 0,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<LogSender {state} sent={self._sent} written={self._written}>"

    # -- send()'s slow paths ---------------------------------------------------------

    def _enqueue(
        self,
        entry: object,
        message: tuple[ProxyLogEntry, ...] | None,
        count: int,
        size: int = 0,
    ) -> bool:
        """Append under the lock; whether the writer (or the spool task) must be woken."""
        self._queued_bytes += size
        queue = self._queue
        was_empty = not queue
        if was_empty:
            self._first_time = self._clock()
        # A sequence goes in whole under the lock: atomic, in order, and the writer
        # takes the queue as it is, with no message to unpack.
        if message is None:
            queue.append(entry)  # type: ignore[arg-type]
        else:
            queue.extend(message)
        self._sent += count
        if self._spool is not None:
            return was_empty and self._spool_waiter is not None
        self._queued_since_drain += count
        wake = self._queued_since_drain >= self._wake_at
        if wake:
            self._wake_at = _NEVER
        return wake

    def _fits(self, count: int, size: int) -> bool:
        """Whether ``count`` more entries of ``size`` bytes fit the bounds (under the
        lock). A message larger than a bound still goes into an empty queue (else it could
        never go in, and a blocked sender would wait forever)."""
        max_queue = self._max_queue
        waiting = self._sent + self._replayed - self._resolved
        if max_queue is not None and waiting and waiting + count > max_queue:
            return False
        max_bytes = self._max_bytes
        return max_bytes is None or not self._queued_bytes or self._queued_bytes + size <= max_bytes

    def _room_by_evicting(self, count: int, size: int) -> int | None:
        """How many of the oldest queued entries must go for ``count`` entries of
        ``size`` bytes to fit; None if even all of them would not make room."""
        waiting = self._sent + self._replayed - self._resolved
        queued_bytes = self._queued_bytes
        evict = 0
        for oldest in (None, *self._queue):
            if oldest is not None:
                evict += 1
                waiting -= 1
                if self._max_bytes is not None:
                    queued_bytes -= _size_of(oldest)
            entries_fit = (
                self._max_queue is None or not waiting or (waiting + count <= self._max_queue)
            )
            bytes_fit = (
                self._max_bytes is None
                or queued_bytes <= 0
                or queued_bytes + size <= self._max_bytes
            )
            if entries_fit and bytes_fit:
                return evict
        return None

    def _send_slow(
        self,
        entry: object,
        message: tuple[ProxyLogEntry, ...] | None,
        count: int,
        size: int,
    ) -> None:
        """A send that the fast path refused: closed, or over ``max_queue``."""
        wake = False
        reason: str | None = None
        with self._lock:
            if self._closed:
                reason = "closed"
            elif self._overflow == "drop_newest":
                reason = "queue_full"
            elif self._overflow == "drop_oldest":
                evict = self._room_by_evicting(count, size)
                if evict is None:  # the rest are being written: the new entries go
                    reason = "queue_full"
                else:
                    freed = 0
                    for _ in range(evict):
                        oldest = self._queue.popleft()
                        if self._max_bytes is not None:
                            freed += _size_of(oldest)
                    self._dropped["evicted"] += evict
                    self._resolved += evict
                    self._queued_bytes = max(0, self._queued_bytes - freed)
                    wake = self._enqueue(entry, message, count, size)
            elif threading.get_ident() == self._loop_thread:
                # "block" on the loop's own thread would deadlock the loop: accept.
                wake = self._enqueue(entry, message, count, size)
            else:
                self._blocked += 1
                try:
                    while not self._closed and not self._fits(count, size):
                        self._space.wait()
                finally:
                    self._blocked -= 1
                if self._closed:
                    reason = "closed"
                else:
                    wake = self._enqueue(entry, message, count, size)
        if reason is not None:
            self._drop(reason, count)
        elif wake:
            self._wake_writer()

    def _drop(self, reason: str, count: int) -> None:
        with self._lock:
            self._dropped[reason] += count
            first = reason not in self._warned
            self._warned.add(reason)
        if first and reason != "recursion":
            detail = {
                "closed": "send() after close()",
                "queue_full": f"the queue is full (max_queue={self._max_queue})",
            }.get(reason, reason)
            logger.warning(
                "eventlog: %s: %d entries dropped (further drops are counted in "
                "stats().dropped_by_reason[%r], not logged)",
                detail,
                count,
                reason,
            )

    def _warn_high_water(self) -> None:
        with self._lock:
            if "high_water" in self._warned:
                return
            self._warned.add("high_water")
        logger.warning(
            "eventlog: %d entries are waiting to be written (high-water mark %d%s); "
            "the database is slow or away. This is logged once.",
            self._sent + self._replayed - self._resolved,
            self._high_water,
            f", max_queue={self._max_queue}" if self._max_queue is not None else "",
        )

    # -- the writer's side -----------------------------------------------------------

    def _drain(self) -> tuple[deque[ProxyLogEntry], float, bool]:
        """Take every queued entry: (entries, clock() of the oldest, closed).

        ``closed`` is true once nothing more can come: close() was called and, with a
        spool, the spool task has handed over everything it holds.
        """
        with self._lock:
            if self._spool is None:
                messages = self._queue
                if messages:
                    self._queue = deque()
                    self._queued_since_drain = 0
                return messages, self._first_time, self._closed
            messages = self._ready
            if messages:
                self._ready = deque()
                self._queued_since_drain = 0
            return messages, self._ready_time, self._closed and self._spool.finished

    def _take_for_spool(self) -> tuple[deque[ProxyLogEntry], float]:
        """The spool task takes what send() queued: (entries, clock() of the oldest)."""
        with self._lock:
            messages = self._queue
            if messages:
                self._queue = deque()
            return messages, self._first_time

    def _hand_over(
        self, entries: Sequence[ProxyLogEntry], first_time: float, *, replayed: bool
    ) -> None:
        """The spool task passes entries on to the writer (on the loop's thread)."""
        added = self._bytes_of(entries) if replayed else 0
        with self._lock:
            self._queued_bytes += added
            if not self._ready:
                self._ready_time = first_time
            self._ready.extend(entries)
            if replayed:
                self._replayed += len(entries)
            self._queued_since_drain += len(entries)
            wake = self._queued_since_drain >= self._wake_at
            if wake:
                self._wake_at = _NEVER
        if wake:
            self._wake()

    async def _wait_for_spool_work(self, delay: float | None) -> None:
        """The spool task sleeps until send() queues something, close(), or ``delay``."""
        loop = self._loop
        with self._lock:
            if self._queue or self._closed:
                return
            waiter = self._spool_waiter = loop.create_future()
        try:
            await self._sleep(waiter, delay)
        finally:
            with self._lock:
                self._spool_waiter = None

    async def _wait(self, wake_at: int, delay: float | None) -> None:
        """Sleep until ``wake_at`` entries are queued, close(), or ``delay`` seconds."""
        loop = self._loop
        with self._lock:
            done = self._closed and (self._spool is None or self._spool.finished)
            if done or self._queued_since_drain >= wake_at:
                return
            waiter = self._waiter = loop.create_future()
            self._wake_at = wake_at
        try:
            await self._sleep(waiter, delay)
        finally:
            with self._lock:
                self._wake_at = _NEVER
                self._waiter = None

    async def _sleep(self, waiter: asyncio.Future[None], delay: float | None) -> None:
        """Await ``waiter``, which :meth:`_wake` also resolves after ``delay`` seconds."""
        timer = None if delay is None else self._loop.call_later(max(delay, 0.0), self._wake)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()

    def _record_write(
        self,
        count: int,
        ok: bool,
        latency: float | None = None,
        entries: Sequence[ProxyLogEntry] = (),
    ) -> None:
        freed = self._bytes_of(entries)
        with self._lock:
            if ok:
                self._written += count
                self._batches += 1
                if latency is not None:
                    self._latencies.append(latency)
            else:
                self._failed_writes += 1
                if self._spool is None:
                    self._failed += count
            if ok or self._spool is None:  # with a spool, unwritten entries stay there
                self._resolve(count, freed)

    def _record_failed(self, count: int) -> None:
        with self._lock:
            self._failed += count
            self._resolve(count)

    def _record_batch_failed(self) -> None:
        with self._lock:
            self._failed_writes += 1

    def _record_dead_letters(
        self, count: int, *, stored: bool, entries: Sequence[ProxyLogEntry] = ()
    ) -> None:
        freed = self._bytes_of(entries)
        with self._lock:
            if stored:
                self._dead_letters += count
            else:
                self._failed += count
            self._resolve(count, freed)

    def _record_repaired(self, count: int) -> None:
        with self._lock:
            self._repaired += count

    def _record_lost(self) -> int:
        """Count every entry not yet written as failed (or left in the spool)."""
        with self._lock:
            lost = self._sent + self._replayed - self._resolved
            if self._spool is None:
                self._failed += lost
                self._resolve(lost)
            return lost

    def _record_transient_failure(self, *, retrying: bool) -> None:
        with self._lock:
            self._transient_failures += 1
            if retrying:
                self._retries += 1

    def _bytes_of(self, entries: Sequence[ProxyLogEntry]) -> int:
        """The size ``max_queue_bytes`` counts of ``entries`` (0 when not bounded)."""
        if self._max_bytes is None:
            return 0
        return sum(_size_of(entry) for entry in entries)

    def _resolve(self, count: int, freed: int = 0) -> None:
        """``count`` entries (``freed`` bytes) left the queue, under the lock: wake
        blocked senders."""
        self._resolved += count
        if self._max_bytes is not None:
            empty = self._sent + self._replayed == self._resolved
            self._queued_bytes = 0 if empty else max(0, self._queued_bytes - freed)
        if self._blocked:
            self._space.notify_all()
        for waiter in self._space_waiters:
            if not waiter.done():
                waiter.set_result(None)
        waiting = self._sent + self._replayed - self._resolved
        if "high_water" in self._warned and waiting < self._high_water // 2:
            self._warned.discard("high_water")  # warn again if it fills up again

    async def _wait_closed_or(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if close() is called meanwhile."""
        if self._closed:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed_event.wait(), delay)

    def _wake(self) -> None:
        """Wake the writer (and the spool task) if asleep; runs on the loop's thread."""
        if self._closed:
            self._closed_event.set()
            for space in self._space_waiters:
                if not space.done():
                    space.set_result(None)
        for waiter in (self._waiter, self._spool_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _wake_writer(self) -> None:
        """Wake the writer from any thread."""
        if threading.get_ident() == self._loop_thread:
            self._wake()
        else:
            # A closed loop raises RuntimeError: then there is no writer left to wake.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake)


# The cancel message aclose() uses once its deadline is spent: end without flushing.
_NO_FLUSH: Final = "eventlog: aclose() deadline passed"


def _size_of(entry: object, message: Sequence[ProxyLogEntry] | None = None) -> int:
    """The bytes an entry counts against ``max_queue_bytes``: the length of its JSON
    record (what the spool would write), a fair measure of what it holds."""
    if message is not None:
        return sum(len(entry_to_record(item)) for item in message)
    return len(entry_to_record(entry))  # type: ignore[arg-type]


def _as_message(entry: object) -> tuple[ProxyLogEntry, ...]:
    if isinstance(entry, ENTRY_TYPES):
        return (entry,)  # a subclass of an entry type
    if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence):
        raise TypeError(
            "send() takes an event (ProxyLogEvent, a workflow event or EventPayload) "
            f"or a sequence of them, got {type(entry).__name__}"
        )
    message = tuple(entry)
    for i, item in enumerate(message):
        if not isinstance(item, ENTRY_TYPES):
            raise TypeError(
                f"send() got a sequence whose item {i} is a {type(item).__name__}, not an event"
            )
    return message
