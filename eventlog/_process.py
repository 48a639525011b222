"""Process-level hooks shared by the loggers that run a thread of their own."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable

__all__ = ["at_exit"]


def at_exit(callback: Callable[[], None]) -> None:
    """Run ``callback`` when the main thread ends, before Python joins the other threads.

    threading's exit hooks run then, while thread pools still take work (a plain
    ``atexit`` hook runs after: SQLite writes and DNS look-ups go through pools), and
    also at the end of a multiprocessing child, which never runs ``atexit``'s. Another
    Python, or an import during shutdown, falls back to ``atexit``.
    """
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading._register_atexit")
        register(callback)
    except RuntimeError:
        atexit.register(callback)
