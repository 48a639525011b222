"""One call for either way of logging, chosen by the URL: to a collector, or in-process.

``eventlog.connect(url)`` returns a :class:`LogClient`: an ``http://`` or ``https://``
URL gives an :class:`~eventlog.remote.HttpLogSender` that posts to a collector
(``eventlog serve``); a ``postgresql://`` or ``sqlite://`` URL, or a file path, gives a
writer into that database in a thread of its own (:func:`eventlog.start_background_logger`).
So an application switches between the two by configuration alone.

Why both are thread-based and ``close()`` blocks: the one interface has to serve sync
applications (which have no event loop to run a writer on) as well as async ones, and
a sync ``close()`` that returns before the events are delivered would lose them at exit.
Async code uses ``await aclose()``, which waits in a thread and keeps the loop running.
Code that already runs an event loop and wants the writer on it uses
:func:`eventlog.start_database_logger` directly.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any, Protocol, Self

from sqlalchemy.engine import URL

from eventlog.background import BackgroundLogger, start_background_logger
from eventlog.events import ProxyLogEntry
from eventlog.remote import HttpLogSender
from eventlog.stats import LoggerStats

__all__ = ["LogClient", "connect"]

_DATABASE_SCHEMES = ("postgresql", "postgres", "sqlite")


class LogClient(Protocol):
    """What :func:`connect` returns, whichever way the events go."""

    def send(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        """Queue one entry or a sequence of entries; never blocks (but see ``overflow``)."""
        ...

    async def send_async(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        """Queue; with ``overflow="block"``, wait for room without blocking the loop."""
        ...

    def stats(self) -> LoggerStats:
        """A snapshot of the counters."""
        ...

    def close(self, timeout: float | None = None) -> LoggerStats:
        """Deliver everything sent (within ``timeout`` seconds), then stop. Blocks."""
        ...

    async def aclose(self, timeout: float | None = None) -> LoggerStats:  # noqa: ASYNC109
        """:meth:`close` without blocking the event loop."""
        ...

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...


def connect(url: str | os.PathLike[str] | URL, **options: Any) -> LogClient:
    """Start logging to ``url``: a collector (``http(s)://``) or a database.

    ``options`` go to :class:`~eventlog.remote.HttpLogSender` (``token``,
    ``batch_size``, ``debounce_time``, ``max_queue``, ``overflow``, ``close_timeout``...)
    or to :func:`~eventlog.start_background_logger` (``migrate``, ``batch_size``,
    ``debounce_time``, ``max_queue``, ``overflow``, ``close_timeout``...); the names they
    share mean the same. ``ValueError`` for a URL of neither kind, ``TypeError`` for an
    option the chosen kind does not take.
    """
    if isinstance(url, str) and "://" in url:
        scheme = url.partition("://")[0].lower()
        if scheme in ("http", "https"):
            return HttpLogSender(url, **options)
        if scheme.partition("+")[0] not in _DATABASE_SCHEMES:
            raise ValueError(
                "url must be http(s):// (a collector), postgresql:// or sqlite:// (a "
                f"database) or a file path (SQLite), got {url!r}"
            )
    return _InProcess(start_background_logger(url, **options), options.get("overflow"))


class _InProcess:
    """A :class:`~eventlog.BackgroundLogger` with the async half of :class:`LogClient`."""

    __slots__ = ("_logger", "_overflow")

    def __init__(self, logger: BackgroundLogger, overflow: object) -> None:
        self._logger = logger
        self._overflow = overflow

    def send(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        self._logger.send(entry)

    async def send_async(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        if self._overflow == "block":  # send() may wait for room: not on the loop
            await asyncio.to_thread(self._logger.send, entry)
        else:
            self._logger.send(entry)

    def stats(self) -> LoggerStats:
        return self._logger.stats()

    def close(self, timeout: float | None = None) -> LoggerStats:
        return self._logger.close(timeout)

    async def aclose(self, timeout: float | None = None) -> LoggerStats:  # noqa: ASYNC109
        return await asyncio.to_thread(self._logger.close, timeout)

    @property
    def closed(self) -> bool:
        return self._logger.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._logger)
