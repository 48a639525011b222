"""A logger for sync applications: the event loop and the writer run in a thread of their own.

Flask, gradio or a script has no event loop to run the writer on, so
:func:`start_background_logger` starts one in a daemon thread and returns a
:class:`BackgroundLogger` whose ``send()`` is :meth:`LogSender.send` itself.

Exit and fork are the two ways such a thread goes wrong, so both are handled here:

- At exit a hook closes every open logger within its ``atexit_timeout``. It runs before
  Python joins non-daemon threads (``threading._register_atexit``), not in ``atexit``:
  by then :mod:`concurrent.futures` refuses new work, and SQLite writes (and DNS look-ups)
  go through thread pools.
- A forked child (gunicorn ``--preload``, multiprocessing) has a copy of the parent's
  logger but not its thread. ``send()`` compares the pid, as OpenTelemetry's batch
  processor does, and the child starts a logger of its own on first use. It never touches
  the parent's copy: those entries are the parent's to write, and closing its connections
  would close the parent's. A fork waits until the logger's thread stands still (and on
  SQLite, until no write is under way), so the child inherits no lock held by a thread
  it does not have.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

# Imported before the exit hook is registered, so that its own hook (which shuts the thread
# pools down) runs after ours: threading's exit hooks run in reverse order.
import concurrent.futures.thread
import enum
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy.engine import URL

from eventlog._checks import seconds
from eventlog._checks import timeout as check_timeout
from eventlog._log import logger
from eventlog._process import at_exit
from eventlog.channel import LogSender, _as_message
from eventlog.database import Database, open_database
from eventlog.events import ENTRY_TYPES, ProxyLogEntry
from eventlog.migrate import upgrade
from eventlog.sanitize import MAX_JSON_BYTES
from eventlog.stats import DROP_REASONS, LoggerStats
from eventlog.writer import start_database_logger

__all__ = ["BackgroundLogger", "start_background_logger"]

THREAD_NAME: Final = "eventlog-background"

# close(timeout) waits this much longer than ``timeout`` for the database to close after
# the writer gave up, then leaves it closing in the daemon thread.
_CLOSE_SLACK: Final = 1.0
# os.fork() waits at most this long for the logger to stand still (see _ForkGate).
_FORK_WAIT: Final = 10.0
# A paused writer resumes after this long even if the fork never said it was done.
_PAUSE_LIMIT: Final = 30.0


def start_background_logger(
    url: str | URL | os.PathLike[str],
    *,
    migrate: bool = False,
    atexit_timeout: float = 10.0,
    max_json_bytes: int = MAX_JSON_BYTES,
    **options: Any,
) -> BackgroundLogger:
    """Log to the database at ``url`` from sync code, through a thread of its own.

    ``options`` are :func:`eventlog.start_database_logger`'s (``batch_size``,
    ``debounce_time``, ``close_timeout``...); ``max_json_bytes`` is
    :func:`eventlog.open_database`'s. A bad argument raises ``ValueError``/``TypeError``
    here, at once. Returns once the writer runs, and with ``migrate=True`` after migrating;
    a database that cannot be reached never makes this raise (a failed migration is
    logged, and the writer retries its writes).

    Close the logger at shutdown to write everything sent; otherwise a hook does it when
    the interpreter exits, waiting at most ``atexit_timeout`` seconds.
    """
    if not isinstance(migrate, bool):
        raise TypeError(f"migrate must be a bool, got {type(migrate).__name__}")
    exit_timeout = seconds("atexit_timeout", atexit_timeout)
    return BackgroundLogger(url, migrate, exit_timeout, max_json_bytes, options)


class _State(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class BackgroundLogger:
    """A logger whose writer runs in a daemon thread: ``send()``, ``stats()``, ``close()``.

    Made by :func:`start_background_logger`; safe to share between threads, and usable as
    a context manager (which closes it). In a forked child it is the child's own logger.
    """

    def __init__(
        self,
        url: str | URL | os.PathLike[str],
        migrate: bool,
        atexit_timeout: float,
        max_json_bytes: int,
        options: dict[str, Any],
    ) -> None:
        self._url = url
        self._max_json_bytes = max_json_bytes
        self._options = options
        self._atexit_timeout = atexit_timeout
        self._lock = threading.Lock()  # the slow paths only: close, and a fork's first use
        self._state = _State.RUNNING
        self._done = threading.Event()  # set once closed
        self._dropped = 0  # sent after close() in a child that had no runtime yet
        self._runtime: _Runtime | None = _Runtime(url, max_json_bytes, options, migrate=migrate)
        self._where = self._runtime.db.url
        _LOGGERS.add(self)
        _OPEN.add(self)

    def send(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        """Queue one entry, or a sequence as one message: :meth:`LogSender.send`.

        Safe from any thread. ``TypeError`` for a non-entry; after :meth:`close` the
        entries are counted as dropped. The first send in a forked child starts the
        child's own logger (a thread and a database handle, no connection yet).
        """
        runtime = self._runtime
        if runtime is None or runtime.pid != os.getpid():
            runtime = self._runtime_here(start=True)
            if runtime is None:
                self._drop(entry)
                return
        runtime.sender.send(entry)

    def stats(self) -> LoggerStats:
        """A consistent snapshot of this process's counters (see :class:`LoggerStats`)."""
        runtime = self._runtime
        if runtime is None or runtime.pid != os.getpid():
            runtime = self._runtime_here(start=False)
            if runtime is None:
                dropped = self._dropped
                return LoggerStats(
                    dropped=dropped,
                    dropped_by_reason={**dict.fromkeys(DROP_REASONS, 0), "closed": dropped},
                )
        return runtime.sender.stats()

    def close(self, timeout: float | None = None) -> LoggerStats:
        """Write everything sent, close the database, end the thread; return the stats.

        ``timeout`` (seconds) bounds the whole of it, give or take a second: what is not
        written by then is counted as ``failed``, and the database finishes closing in
        the background. Without it the writer's ``close_timeout`` bounds the retries of
        an unavailable database. Closing twice is harmless.
        """
        timeout = check_timeout("timeout", timeout)
        runtime = self._runtime_here(start=False)
        if runtime is not None and threading.get_ident() == runtime.thread.ident:
            raise RuntimeError("close() cannot wait for the logger on the logger's own thread")
        with self._lock:
            owner = self._state is _State.RUNNING
            if owner:
                self._state = _State.CLOSING
            done = self._done
            # Read again: another thread of a forked child may have started one meanwhile.
            runtime = self._runtime
        if not owner:
            done.wait(timeout)
            return self.stats()
        try:
            if runtime is not None:
                runtime.close(timeout, self)
        finally:
            with self._lock:
                self._state = _State.CLOSED
            done.set()
            _OPEN.discard(self)
        return self.stats()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._state is not _State.RUNNING

    def __enter__(self) -> BackgroundLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        stats = self.stats()
        return (
            f"<BackgroundLogger {self._state.value} {self._where} "
            f"sent={stats.sent} written={stats.written}>"
        )

    # -- exit and fork -----------------------------------------------------------------

    def _runtime_here(self, *, start: bool) -> _Runtime | None:
        """This process's runtime, or None; after a fork, drop the parent's copy and, with
        ``start``, start the child's own unless the logger is closed."""
        with self._lock:
            runtime = self._runtime
            if runtime is not None and runtime.pid != os.getpid():
                _ABANDONED.append(runtime)  # never collected: its finalizers are the parent's
                self._runtime = runtime = None
            if runtime is None and start and self._state is _State.RUNNING:
                try:
                    runtime = _Runtime(
                        self._url, self._max_json_bytes, self._options, migrate=False
                    )
                except Exception as err:
                    logger.error(
                        "eventlog: could not start the logger in forked process %d, "
                        "so it drops what is sent: %s: %s",
                        os.getpid(),
                        type(err).__name__,
                        err,
                    )
                    self._state = _State.CLOSED
                    self._done.set()
                    _OPEN.discard(self)
                self._runtime = runtime
            return runtime

    def _drop(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        count = 1 if type(entry) in ENTRY_TYPES else len(_as_message(entry))
        with self._lock:
            self._dropped += count

    def _close_at_exit(self) -> None:
        if self._state is not _State.RUNNING:
            return
        try:
            stats = self.close(self._atexit_timeout)
        except Exception:
            logger.exception("eventlog: closing %r at exit failed", self)
            return
        if stats.failed:
            logger.warning(
                "eventlog: %d entries were not written before exit (%r)", stats.failed, self
            )

    def _after_fork_in_child(self) -> None:
        """Reset what another thread may have held when the process forked."""
        self._lock = threading.Lock()
        if self._state is _State.CLOSING:  # the thread closing it is not in this process
            self._state = _State.CLOSED
        self._done = threading.Event()
        if self._state is _State.CLOSED:
            self._done.set()


class _Runtime:
    """One process's event loop thread, database and writer, for one logger."""

    def __init__(
        self,
        url: str | URL | os.PathLike[str],
        max_json_bytes: int,
        options: dict[str, Any],
        *,
        migrate: bool,
    ) -> None:
        self.pid = os.getpid()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.thread = threading.Thread(
            target=self._run,
            args=(url, max_json_bytes, options, migrate, ready),
            name=THREAD_NAME,
            daemon=True,
        )
        self.thread.start()
        try:
            ready.result()  # the construction error of an argument, raised here
        except BaseException:
            self.thread.join()
            raise

    # Set on the loop's thread before ``ready``:
    loop: asyncio.AbstractEventLoop
    db: Database
    gate: _ForkGate
    sender: LogSender
    _stop: asyncio.Event

    def _run(
        self,
        url: str | URL | os.PathLike[str],
        max_json_bytes: int,
        options: dict[str, Any],
        migrate: bool,
        ready: concurrent.futures.Future[None],
    ) -> None:
        try:
            asyncio.run(self._main(url, max_json_bytes, options, migrate, ready))
        except BaseException as err:
            if not ready.done():
                ready.set_exception(err)
            else:
                logger.exception("eventlog: the background logger's thread failed")

    async def _main(
        self,
        url: str | URL | os.PathLike[str],
        max_json_bytes: int,
        options: dict[str, Any],
        migrate: bool,
        ready: concurrent.futures.Future[None],
    ) -> None:
        db = await open_database(url, max_json_bytes=max_json_bytes)
        gate = _ForkGate(db)
        try:
            sender, _task = start_database_logger(gate, **options)
        except BaseException:
            await db.close()
            raise
        self.loop = asyncio.get_running_loop()
        self.db = db
        self.gate = gate
        self.sender = sender
        self._stop = asyncio.Event()
        if migrate:
            try:
                await upgrade(db.engine)
            except Exception as err:
                logger.error(
                    "eventlog: could not migrate %s; logging goes on, and writes are "
                    "retried while the database is unavailable: %s: %s",
                    db.url,
                    type(err).__name__,
                    err,
                )
        ready.set_result(None)
        await self._stop.wait()

    async def _close(self, timeout: float | None) -> None:  # noqa: ASYNC109 - passed on to aclose()
        try:
            await self.sender.aclose(timeout)
        finally:
            try:
                # Always: it ends SQLite's thread and the pool's connections.
                await self.db.close()
            finally:
                self._stop.set()

    def close(self, timeout: float | None, owner: BackgroundLogger) -> None:
        """Close the writer and the database on the loop, waiting at most about ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout + _CLOSE_SLACK
        try:
            future = asyncio.run_coroutine_threadsafe(self._close(timeout), self.loop)
        except RuntimeError:  # the loop is closed: its thread has ended already
            return
        try:
            future.result(None if deadline is None else deadline - time.monotonic())
        except TimeoutError:
            logger.warning(
                "eventlog: %r did not finish closing within %s s; the database goes on "
                "closing in the background",
                owner,
                timeout,
            )
            return
        except Exception:
            logger.exception("eventlog: closing %r failed", owner)
        self.thread.join(None if deadline is None else max(deadline - time.monotonic(), 0))

    def pause(self) -> _Pause | None:
        """Ask the loop's thread to stop between two writes, for a fork; None if it can't."""
        if (
            self.pid != os.getpid()
            or not self.thread.is_alive()
            or threading.get_ident() == self.thread.ident
        ):
            return None
        pause = _Pause()
        try:
            # The coroutine is made on the loop's thread, so a loop that ends first leaves
            # no coroutine never awaited.
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.gate.hold(pause)))
        except RuntimeError:  # the loop is closed
            return None
        return pause


class _Pause:
    """One fork's hold on one logger's thread."""

    __slots__ = ("held", "resume")

    def __init__(self) -> None:
        self.held = threading.Event()  # the loop's thread waits, with no write under way
        self.resume = threading.Event()  # the fork is done (in the parent)


class _ForkGate:
    """The database as the writer sees it, with a gate for forks.

    A lock held when the process forks stays held in the child, whose first
    ``ssl.SSLContext()`` (asyncpg makes one per connection) then waits for good; and a
    SQLite transaction or checkpoint under way in the parent leaves the child's copy of
    SQLite's in-process lock table saying the file is locked, so the child's writes fail
    with "database is locked" (or wait) for as long as it lives. So before a fork the
    loop's thread stops between two steps (asyncpg does its work there) and, on SQLite,
    new writes wait while the ones under way finish (they run in SQLite's own thread), and
    so do the checkpoints they queued (on a thread of their own).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._wait_for_writes = db.dialect == "sqlite"
        self._under_way = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)  # concurrent_writes, and whatever else is asked

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> int | None:
        await self._open.wait()
        self._under_way += 1
        self._idle.clear()
        try:
            return await self._db.write_log_batch(entries)
        finally:
            self._under_way -= 1
            if not self._under_way:
                self._idle.set()

    async def hold(self, pause: _Pause) -> None:
        """Close the gate, wait for the writes under way (SQLite), then block the loop's
        thread until the fork is done."""
        self._open.clear()
        try:
            if self._wait_for_writes:
                await self._idle.wait()
                await self._db.background_work_done()  # SQLite's checkpoints
            pause.held.set()
            pause.resume.wait(_PAUSE_LIMIT)  # blocking on purpose: nothing runs meanwhile
        finally:
            self._open.set()


# Every logger made in this process (and copied into it by fork), weakly, for the fork hook.
_LOGGERS: weakref.WeakSet[BackgroundLogger] = weakref.WeakSet()
# The open ones, for the exit hook: an open logger's thread runs, so it is kept alive (as a
# running Thread is) and closed at exit rather than collected with its last entries.
_OPEN: set[BackgroundLogger] = set()
# Runtimes copied from a parent process: kept so they are never collected here.
_ABANDONED: list[_Runtime] = []


def _close_all_at_exit() -> None:
    """Close every open logger, each within its ``atexit_timeout``; never raises."""
    for background_logger in list(_OPEN):
        try:
            background_logger._close_at_exit()
        except BaseException:  # an exception here would stop the interpreter's shutdown
            logger.exception("eventlog: closing a background logger at exit failed")


# The pauses of the fork under way in this thread (os.fork() runs its hooks in its thread).
_forking = threading.local()


def _before_fork() -> None:
    pauses = []
    for background_logger in list(_OPEN):
        runtime = background_logger._runtime
        pause = None if runtime is None else runtime.pause()
        if pause is not None:
            pauses.append(pause)
    deadline = time.monotonic() + _FORK_WAIT
    for pause in pauses:
        # A write that takes longer (a database far away) does not hold the fork up for
        # long: the fork goes ahead, with the risk this was meant to avoid.
        if not pause.held.wait(max(deadline - time.monotonic(), 0)):
            logger.warning(
                "eventlog: forking although the logger did not stand still within %s s "
                "(a write under way): the child's logger may find a SQLite database "
                "locked, or wait on a lock",
                _FORK_WAIT,
            )
    _forking.pauses = pauses


def _after_fork_in_parent() -> None:
    pauses: list[_Pause] = getattr(_forking, "pauses", [])
    _forking.pauses = []
    for pause in pauses:
        pause.resume.set()


def _after_fork_in_child() -> None:
    _forking.pauses = []
    for background_logger in list(_LOGGERS):
        background_logger._after_fork_in_child()


def _register_hooks() -> None:
    at_exit(_close_all_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )


_register_hooks()
