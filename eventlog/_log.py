"""eventlog's own diagnostics: a stdlib logger, with repeated warnings rate-limited.

eventlog never records its own warnings as events: they go to the ``eventlog`` stdlib
logger only, so an application that routes logging into eventlog cannot make it loop.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RateLimitedLog", "logger"]

logger = logging.getLogger("eventlog")


class RateLimitedLog:
    """Log the first occurrence at once, then at most one summary line per ``interval``.

    A database that is down for a minute fails hundreds of batches; one line per failure
    would bury the application's own logs.
    """

    def __init__(self, level: int, interval: float = 10.0) -> None:
        self._level = level
        self._interval = interval
        self._last = float("-inf")
        self._suppressed = 0
        self._lock = threading.Lock()

    def __call__(self, msg: str, *args: object, exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self._interval:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._last = now
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        logger.log(self._level, msg, *args, exc_info=exc_info)
