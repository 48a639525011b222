"""eventlog's own diagnostics: the ``eventlog`` stdlib logger, never its own events.

eventlog's warnings go to this logger only. An application may route stdlib logging
into eventlog (a handler that calls ``send()``): while eventlog itself is logging, on
that thread, :func:`in_own_logging` is true and ``send()`` drops the entry (counted as
``dropped_by_reason["recursion"]``) instead of feeding eventlog's warnings back into it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["in_own_logging", "logger", "mark_own_logging_thread", "own_logging"]


class _OwnLogging(threading.local):
    active = False  # a class default: reading it needs no getattr fallback


_local = _OwnLogging()
own_logging = _local
"""``own_logging.active``: :func:`in_own_logging` without a call, for ``send()``."""


def in_own_logging() -> bool:
    """Whether this thread is inside one of eventlog's own logging calls."""
    return _local.active


def mark_own_logging_thread() -> None:
    """Treat everything logged on this thread (one of eventlog's own) as eventlog's: the
    libraries it calls (httpx) log too, and must not loop back either."""
    _local.active = True


class _GuardedLogger(logging.LoggerAdapter[logging.Logger]):
    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        outer = in_own_logging()
        _local.active = True
        try:
            kwargs.setdefault("stacklevel", 3)
            self.logger.log(level, msg, *args, **kwargs)
        finally:
            _local.active = outer

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return msg, kwargs


logger = _GuardedLogger(logging.getLogger("eventlog"), {})
