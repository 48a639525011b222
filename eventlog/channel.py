"""The channel between the application's senders and the writer task.

``send()`` is the application's hot path: it appends to a deque under a lock held for a
few hundred nanoseconds and wakes the writer only when the writer is asleep waiting for
exactly what this send brings (its first entry, or the entry that fills a batch). So a
busy application pays no system call per event, from the loop's thread or any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from eventlog._log import logger
from eventlog.events import ENTRY_TYPES, ProxyLogEntry
from eventlog.stats import LoggerStats

__all__ = ["LogSender"]

_NEVER: Final = float("inf")


class LogSender:
    """The application's handle on a logger: ``send()`` entries, ``close()`` when done.

    Made by :func:`eventlog.start_database_logger`; safe to share between threads and
    tasks. Entries are kept in the order they were sent.
    """

    __slots__ = (
        "__weakref__",
        "_batches",
        "_clock",
        "_close_timeout",
        "_closed",
        "_closed_at",
        "_closed_event",
        "_dropped",
        "_failed",
        "_failed_writes",
        "_first_time",
        "_lock",
        "_loop",
        "_loop_thread",
        "_queue",
        "_queued_since_drain",
        "_repaired",
        "_retries",
        "_sent",
        "_task",
        "_transient_failures",
        "_waiter",
        "_wake_at",
        "_warned_closed",
        "_written",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        close_timeout: float = 30.0,
    ) -> None:
        self._loop = loop
        self._task: asyncio.Task[None] | None = None  # the writer, once started
        self._close_timeout = close_timeout
        self._loop_thread = threading.get_ident()
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: deque[ProxyLogEntry] = deque()
        self._first_time = 0.0  # clock() when the queue last went from empty to not empty
        self._queued_since_drain = 0
        self._wake_at = _NEVER  # the writer sleeps until this many entries are queued
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._warned_closed = False
        self._sent = 0
        self._dropped = 0
        self._written = 0
        self._batches = 0
        self._failed = 0
        self._failed_writes = 0
        self._retries = 0
        self._transient_failures = 0
        self._repaired = 0
        self._closed_at: float | None = None  # clock() at close()
        self._closed_event = asyncio.Event()  # set on the loop's thread after close()

    # -- the application's side ------------------------------------------------------

    def send(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        """Queue one entry, or a sequence of entries as one message; never blocks.

        Raises ``TypeError`` for an object that is not an entry (a programming error).
        After :meth:`close` the entries are counted as dropped and one warning is logged.
        """
        if type(entry) in ENTRY_TYPES:
            message: tuple[ProxyLogEntry, ...] | None = None
            count = 1
        else:
            message = _as_message(entry)
            count = len(message)
            if count == 0:
                return
        with self._lock:
            if self._closed:
                self._dropped += count
                warn, self._warned_closed = not self._warned_closed, True
                wake = False
            else:
                warn = False
                if not self._queue:
                    self._first_time = self._clock()
                # A sequence goes in whole under the lock: atomic, in order, and the
                # writer takes the queue as it is, with no message to unpack.
                if message is None:
                    self._queue.append(entry)  # type: ignore[arg-type]
                else:
                    self._queue.extend(message)
                self._sent += count
                self._queued_since_drain += count
                wake = self._queued_since_drain >= self._wake_at
                if wake:
                    self._wake_at = _NEVER
        if wake:
            self._wake_writer()
        elif warn:
            logger.warning(
                "eventlog: send() after close(): %d entries dropped "
                "(further drops are counted in stats().dropped, not logged)",
                count,
            )

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
        self._wake_writer()

    async def aclose(self, timeout: float | None = None) -> LoggerStats:  # noqa: ASYNC109
        """Close, then wait for the writer: everything sent before is written or counted.

        ``timeout`` (seconds) bounds the whole of it, retries of an unavailable database
        included (default: the logger's ``close_timeout`` for retries, and no bound on a
        write under way). What is not written by then is counted in ``failed``. Returns
        the final stats. Closing twice is harmless.
        """
        if timeout is not None:
            if (
                isinstance(timeout, bool)
                or not isinstance(timeout, (int, float))
                or not (timeout >= 0)
            ):
                raise ValueError(f"timeout must be seconds >= 0 or None, got {timeout!r}")
            if not self._closed:
                self._close_timeout = min(self._close_timeout, float(timeout))
        self.close()
        task = self._task
        if task is not None and not task.done():
            try:
                # shield: a timeout here must not cancel the writer before we decide to.
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return self.stats()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def stats(self) -> LoggerStats:
        """A consistent snapshot of this logger's counters; callable from any thread."""
        with self._lock:
            return LoggerStats(
                sent=self._sent,
                written=self._written,
                batches=self._batches,
                failed_writes=self._failed_writes,
                failed=self._failed,
                dropped=self._dropped,
                retries=self._retries,
                repaired=self._repaired,
                transient_failures=self._transient_failures,
                queued=self._sent - self._written - self._failed,
            )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<LogSender {state} sent={self._sent} written={self._written}>"

    # -- the writer's side -----------------------------------------------------------

    def _drain(self) -> tuple[deque[ProxyLogEntry], float, bool]:
        """Take every queued entry: (entries, clock() of the oldest, closed)."""
        with self._lock:
            messages = self._queue
            if messages:
                self._queue = deque()
                self._queued_since_drain = 0
            return messages, self._first_time, self._closed

    async def _wait(self, wake_at: int, delay: float | None) -> None:
        """Sleep until ``wake_at`` entries are queued, close(), or ``delay`` seconds."""
        loop = self._loop
        with self._lock:
            if self._closed or self._queued_since_drain >= wake_at:
                return
            waiter = self._waiter = loop.create_future()
            self._wake_at = wake_at
        timer = None if delay is None else loop.call_later(max(delay, 0.0), self._wake)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._wake_at = _NEVER
                self._waiter = None

    def _record_write(self, count: int, ok: bool) -> None:
        with self._lock:
            if ok:
                self._written += count
                self._batches += 1
            else:
                self._failed += count
                self._failed_writes += 1

    def _record_repaired(self, count: int) -> None:
        with self._lock:
            self._repaired += count

    def _record_lost(self) -> int:
        """Count every entry not yet written or failed as failed; return how many."""
        with self._lock:
            lost = self._sent - self._written - self._failed
            self._failed += lost
            return lost

    def _record_transient_failure(self, *, retrying: bool) -> None:
        with self._lock:
            self._transient_failures += 1
            if retrying:
                self._retries += 1

    async def _wait_closed_or(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if close() is called meanwhile."""
        if self._closed:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed_event.wait(), delay)

    def _wake(self) -> None:
        """Wake the writer if it sleeps; runs on the loop's thread."""
        if self._closed:
            self._closed_event.set()
        waiter = self._waiter
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
