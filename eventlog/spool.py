"""A write-ahead spool on local disk: what ``send()`` accepted survives a crash.

With ``spool_dir``, a task on the logger's loop moves what ``send()`` queued to the
spool (one ``write()`` per batch of entries, in a thread of its own, so ``send()`` costs
what it did) and only then hands it to the writer; the file is fsynced every
``fsync_interval`` seconds. An entry leaves the spool when its batch is committed (or set
aside as a dead letter): a segment file is deleted once all its entries have.

Memory holds at most ``window`` entries between the spool and the commit; the rest wait
on disk and are read back, in order, as the writer catches up (``overflow="spill"``). A
new logger first replays what earlier ones left (a crash, or a close while the database
was away), ahead of anything sent to it.

Files: ``<spool_dir>/<time_ns>-<pid>-<n>.spool``, one record a line:
``<crc32 as 8 hex digits> <entry as JSON>\\n`` (see :mod:`eventlog.records`). A process
holds an exclusive ``flock`` on each segment it owns, so several processes (a forked
child, workers sharing a folder) never replay each other's live segments. A record that
is torn (a crash mid-write), fails its checksum or does not decode is skipped and
counted (``spool_corrupt``): it never blocks start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
import time
import weakref
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from eventlog._log import logger
from eventlog.events import ProxyLogEntry
from eventlog.exceptions import InvalidEventError
from eventlog.records import entry_from_record, entry_to_record

if TYPE_CHECKING:
    from eventlog.channel import LogSender

__all__ = ["DEFAULT_WINDOW", "Spool"]

DEFAULT_WINDOW: Final = 10_000
"""Entries held in memory between the spool and the commit when ``max_queue`` is unset."""
SEGMENT_BYTES: Final = 16 << 20
_SUFFIX: Final = ".spool"


class _Segment:
    """One spool file, and the positions (in the order of hand-over to the writer) that
    its records were given."""

    __slots__ = (
        "adopted",
        "assigned",
        "failed",
        "file",
        "path",
        "ranges",
        "read_done",
        "records",
        "resolved",
        "sealed",
        "size",
    )

    def __init__(self, path: Path, file: BinaryIO, *, adopted: bool) -> None:
        self.path = path
        self.file = file  # kept open: it holds the flock that says "a live owner has me"
        self.adopted = adopted  # left by an earlier logger: read back, counted `replayed`
        self.sealed = adopted  # no more records will be appended
        self.read_done = not adopted  # every record has been given a position
        self.records = 0  # appended by this logger
        self.size = 0
        self.ranges: list[list[int]] = []  # [start, count] of its records' positions
        self.assigned = 0
        self.resolved = 0
        self.failed = False  # could not be read back: kept for the next logger

    @property
    def deletable(self) -> bool:
        return (
            self.sealed
            and not self.failed
            and self.read_done
            and self.resolved == self.assigned
            and (self.adopted or self.assigned == self.records)
        )


class Spool:
    """The spool of one logger; its :meth:`run` task sits between ``send()`` and the
    writer (see the module's documentation)."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        fsync_interval: float = 0.1,
        window: int = DEFAULT_WINDOW,
        segment_bytes: int = SEGMENT_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder = Path(folder).expanduser()
        self._fsync_interval = fsync_interval
        self._window = window
        self._segment_bytes = segment_bytes
        self._clock = clock
        self._segments: list[_Segment] = []
        self._current: _Segment | None = None
        self._counter = 0
        self._next = 0  # the position the next entry handed to the writer gets
        self._in_memory = 0  # handed to the writer and not settled yet
        # The first record not handed over yet: (segment, byte offset); None when the
        # writer has everything appended so far (records go straight to it).
        self._backlog: tuple[_Segment, int] | None = None
        self._dirty = False
        self._last_fsync = -math.inf
        self.pending = 0  # records in the spool not committed yet (known of)
        self.corrupt = 0
        self.finished = False  # closed, and nothing more will be handed over
        # Entries that could not be spooled: held behind a backlog, and the positions
        # they were handed over at.
        self._held: list[tuple[Sequence[ProxyLogEntry], float]] = []
        self._unspooled_ranges: list[tuple[int, int]] = []
        self._room = asyncio.Event()  # the writer settled entries: room in memory
        self._notify: Callable[[], None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="eventlog-spool")

    # -- start-up ----------------------------------------------------------------------

    def open(self) -> int:
        """Create the folder and adopt the segments no live process holds; return how
        many were adopted (they are replayed first)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        adopted = 0
        for path in sorted(self.folder.glob(f"*{_SUFFIX}")):
            try:
                file = path.open("rb+")
            except OSError:
                continue  # deleted by its owner meanwhile
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                file.close()  # a live logger's segment
                continue
            segment = _Segment(path, file, adopted=True)
            self._segments.append(segment)
            adopted += 1
        if self._segments:
            self._backlog = (self._segments[0], 0)
        spool = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_after_fork(spool))
        return adopted

    def _forget_after_fork(self) -> None:
        # A forked child shares these open files (and so their locks) with its parent,
        # which still owns them: close the child's copies (closing a copy does not
        # release a flock that the parent's copy holds; only LOCK_UN would).
        for segment in self._segments:
            with contextlib.suppress(OSError):
                segment.file.close()
        self._segments = []
        self._current = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="eventlog-spool")

    # -- the task ------------------------------------------------------------------------

    async def run(self, sender: LogSender, time_left: Callable[[], float]) -> None:
        """Move entries from ``send()`` to disk and on to the writer until closed."""
        loop = asyncio.get_running_loop()
        self._notify = sender._wake
        try:
            while True:
                entries, first_time = sender._take_for_spool()
                if entries:
                    await self._append(loop, sender, entries, first_time)
                await self._read_backlog(loop, sender)
                if self._dirty and self._clock() - self._last_fsync >= self._fsync_interval:
                    await self._sync(loop)
                if sender.closed and not sender._queue:
                    if self._backlog is None or time_left() <= 0:
                        await self._sync(loop)
                        return
                    if self._in_memory >= self._window:
                        self._room.clear()
                        await self._room.wait()
                    continue
                if self._backlog is not None and self._in_memory < self._window:
                    continue  # the writer made room while this task was busy
                delay = None
                if self._dirty:
                    delay = self._last_fsync + self._fsync_interval - self._clock()
                await sender._wait_for_spool_work(delay)
        finally:
            # Whatever send() queued and this task did not spool (it was cancelled, or
            # the disk failed) still goes to the writer, in order, behind the rest.
            left, first_time = sender._take_for_spool()
            if left:
                self._unspooled(sender, left, first_time)
            for held, held_time in self._held:
                self._hand_over_unspooled(sender, held, held_time)
            self._held.clear()
            self.finished = True
            sender._wake()

    async def _sync(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await loop.run_in_executor(self._executor, self._fsync)
        except OSError as err:
            self._dirty = False
            self._last_fsync = self._clock()
            logger.error("eventlog: fsync of the spool in %s failed: %s", self.folder, err)

    async def _append(
        self,
        loop: asyncio.AbstractEventLoop,
        sender: LogSender,
        entries: Sequence[ProxyLogEntry],
        first_time: float,
    ) -> None:
        try:
            segment, offset = await loop.run_in_executor(self._executor, self._write, entries)
        except OSError as err:
            # The disk is full or gone: the entries still go to the database, unspooled.
            logger.error(
                "eventlog: could not write %d entries to the spool in %s: %s; "
                "they are written to the database without it",
                len(entries),
                self.folder,
                err,
            )
            if self._current is not None:  # it may end in a torn record: start anew
                self._current.sealed = True
                self._current = None
            self._unspooled(sender, entries, first_time)
            return
        self.pending += len(entries)
        if self._backlog is None and self._in_memory + len(entries) <= self._window:
            self._assign(segment, len(entries))
            sender._hand_over(entries, first_time, replayed=False)
            return
        segment.read_done = False  # these records reach the writer by being read back
        if self._backlog is None:
            self._backlog = (segment, offset)  # memory is full: the rest waits on disk

    def _unspooled(
        self, sender: LogSender, entries: Sequence[ProxyLogEntry], first_time: float
    ) -> None:
        """Entries that are not on disk: to the writer now, or, behind a backlog on
        disk, once that is read (so that they keep their place in the order)."""
        if self._backlog is not None and not self.finished:
            self._held.append((entries, first_time))
        else:
            self._hand_over_unspooled(sender, entries, first_time)

    def _hand_over_unspooled(
        self, sender: LogSender, entries: Sequence[ProxyLogEntry], first_time: float
    ) -> None:
        self._in_memory += len(entries)
        self._unspooled_ranges.append((self._next, len(entries)))
        self._next += len(entries)
        self.pending += len(entries)
        sender._hand_over(entries, first_time, replayed=False)

    async def _read_backlog(self, loop: asyncio.AbstractEventLoop, sender: LogSender) -> None:
        while self._backlog is not None and self._in_memory < self._window:
            segment, offset = self._backlog
            room = self._window - self._in_memory
            try:
                entries, end, bad = await loop.run_in_executor(
                    self._executor, _read_records, segment.path, offset, room
                )
            except OSError as err:
                # Left on disk for the next start; the entries after it go on.
                logger.error(
                    "eventlog: could not read spool file %s: %s; it is kept for the next start",
                    segment.path,
                    err,
                )
                entries, end, bad = [], None, 0
                segment.failed = True  # never deleted by this logger
            if bad:
                self.corrupt += bad
                logger.warning(
                    "eventlog: skipped %d torn or damaged records in spool file %s",
                    bad,
                    segment.path,
                )
            if entries:
                if segment.adopted:
                    self.pending += len(entries)
                self._assign(segment, len(entries))
                sender._hand_over(entries, self._clock(), replayed=segment.adopted)
            if end is not None:
                self._backlog = (segment, end)
                continue
            # The end of this segment: on to the next, or caught up with the writing.
            segment.read_done = True
            later = self._segments[self._segments.index(segment) + 1 :]
            if segment is self._current or not later:
                self._backlog = None
                for held, held_time in self._held:
                    self._hand_over_unspooled(sender, held, held_time)
                self._held.clear()
            else:
                self._backlog = (later[0], 0)
            self._delete_done()

    def _assign(self, segment: _Segment, count: int) -> None:
        ranges = segment.ranges
        if ranges and ranges[-1][0] + ranges[-1][1] == self._next:
            ranges[-1][1] += count
        else:
            ranges.append([self._next, count])
        segment.assigned += count
        self._next += count
        self._in_memory += count

    # -- the writer's side ---------------------------------------------------------------

    def settle(self, start: int, count: int, *, committed: bool) -> int:
        """The writer is done with positions ``start .. start + count - 1``: committed
        (or dead-lettered) ones leave the spool; the others stay for the next start.
        Returns how many of the others were never spooled (so they are lost)."""
        self._in_memory -= count
        end = start + count
        unspooled = 0
        for first, size in self._unspooled_ranges:
            unspooled += max(0, min(end, first + size) - max(start, first))
        if not committed:
            self.pending -= unspooled
        if committed:
            self.pending -= count
            for segment in self._segments:
                for first, assigned in segment.ranges:
                    low, high = max(start, first), min(end, first + assigned)
                    if low < high:
                        segment.resolved += high - low
            self._delete_done()
        if self._backlog is not None:
            self._room.set()
            if self._notify is not None:
                self._notify()
        return 0 if committed else unspooled

    def _delete_done(self) -> None:
        done = [s for s in self._segments if s.deletable]
        for segment in done:
            self._segments.remove(segment)
            with contextlib.suppress(OSError):
                segment.path.unlink()
            segment.file.close()

    def close(self) -> None:
        """Release the files: what is not committed stays for the next logger. Waits for
        a write still under way in the spool's thread (a cancelled task leaves one)."""
        self._executor.shutdown(wait=True)
        for segment in self._segments:
            segment.sealed = True
        self._delete_done()
        for segment in self._segments:
            if segment.records == 0 and not segment.adopted:
                with contextlib.suppress(OSError):
                    segment.path.unlink()
            segment.file.close()
        self._segments = []
        self._current = None

    # -- in the spool's thread -----------------------------------------------------------

    def _write(self, entries: Sequence[ProxyLogEntry]) -> tuple[_Segment, int]:
        """Append ``entries`` in one write; (segment, offset of the first)."""
        data = b"".join(_frame(entry_to_record(entry)) for entry in entries)
        segment = self._current
        if segment is None or segment.size >= self._segment_bytes:
            segment = self._new_segment()
        offset = segment.size
        view = memoryview(data)
        while view:
            written = os.write(segment.file.fileno(), view)
            view = view[written:]
        segment.size += len(data)
        segment.records += len(entries)
        self._dirty = True
        return segment, offset

    def _new_segment(self) -> _Segment:
        if self._current is not None:
            os.fsync(self._current.file.fileno())
            self._current.sealed = True
        self._counter += 1
        path = self.folder / f"{time.time_ns():020d}-{os.getpid()}-{self._counter:06d}{_SUFFIX}"
        file = path.open("xb", buffering=0)
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        _fsync_dir(self.folder)  # the new name survives a power cut
        segment = _Segment(path, file, adopted=False)
        self._segments.append(segment)
        self._current = segment
        return segment

    def _fsync(self) -> None:
        if self._current is not None and self._dirty:
            os.fsync(self._current.file.fileno())
        self._dirty = False
        self._last_fsync = self._clock()


def _forget_after_fork(spool: weakref.ref[Spool]) -> None:
    alive = spool()
    if alive is not None:
        alive._forget_after_fork()


def _frame(record: bytes) -> bytes:
    return b"%08x %s\n" % (zlib.crc32(record), record)


def _read_records(
    path: Path, offset: int, limit: int
) -> tuple[list[ProxyLogEntry], int | None, int]:
    """Up to ``limit`` entries from ``path`` at ``offset``: (entries, offset after them
    or None at the end of the file, damaged records skipped)."""
    entries: list[ProxyLogEntry] = []
    bad = 0
    with path.open("rb") as file:
        file.seek(offset)
        while len(entries) < limit:
            line = file.readline()
            if not line:
                return entries, None, bad
            if not line.endswith(b"\n"):
                return entries, None, bad + 1  # torn: the writer died mid-record
            offset += len(line)
            entry = _parse(line)
            if entry is None:
                bad += 1
            else:
                entries.append(entry)
    return entries, offset, bad


def _parse(line: bytes) -> ProxyLogEntry | None:
    if len(line) < 10 or line[8:9] != b" ":
        return None
    record = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(record):
            return None
        return entry_from_record(record)
    except (ValueError, InvalidEventError):
        return None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
