"""Helpers for testing code that logs with eventlog, without a database.

- :class:`MemoryDatabase` keeps every batch in memory and lets a test wait for entries;
  pass it to :func:`eventlog.start_database_logger` in place of a real database.
- :class:`ManualClock` is a clock that only moves when told to, for timing tests that
  never sleep.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from eventlog.events import ProxyLogEntry

if TYPE_CHECKING:
    from eventlog.deadletters import DeadLetter

__all__ = ["ManualClock", "MemoryDatabase"]


class MemoryDatabase:
    """An in-memory stand-in for :class:`eventlog.Database`: it records each batch.

    ``batches`` holds the batches in the order they were written; ``entries`` all of
    their entries. Set ``fail_next`` to an exception to make the next write raise it,
    and ``refuse`` to a predicate to make every batch holding a matching entry fail
    (as a database constraint would); refused entries the writer sets aside arrive in
    ``dead_letters``.
    """

    dialect = "memory"

    def __init__(self) -> None:
        self.batches: list[list[ProxyLogEntry]] = []
        self.fail_next: BaseException | None = None
        self.refuse: Callable[[ProxyLogEntry], bool] | None = None
        self.dead_letters: list[DeadLetter] = []
        self.closed = False
        self._changed = asyncio.Condition()

    @property
    def entries(self) -> list[ProxyLogEntry]:
        """Every written entry, in write order."""
        return [entry for batch in self.batches for entry in batch]

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
        """Record ``entries`` as one batch (or raise ``fail_next`` once)."""
        failure, self.fail_next = self.fail_next, None
        if failure is not None:
            raise failure
        refuse = self.refuse
        if refuse is not None and any(refuse(entry) for entry in entries):
            raise ValueError("refused by MemoryDatabase.refuse")
        async with self._changed:
            self.batches.append(list(entries))
            self._changed.notify_all()

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep the dead letters the writer sets aside."""
        self.dead_letters.extend(letters)

    async def wait_for_batches(self, count: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a bounded wait is the point of a test helper
        """Wait until at least ``count`` batches are written (``TimeoutError`` after)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.batches) >= count)

    async def close(self) -> None:
        """Mark the database closed."""
        self.closed = True


class ManualClock:
    """A monotonic clock for tests: ``clock()`` reads it, ``advance(s)`` moves it.

    Pass it as ``start_database_logger(..., clock=clock)``: the writer subscribes, so
    each ``advance`` wakes it to look at the new time, and nothing sleeps for real.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[], None]] = []

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every subscriber."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback()

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every :meth:`advance`."""
        with self._lock:
            self._subscribers.append(callback)
