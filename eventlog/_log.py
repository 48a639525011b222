"""eventlog's own diagnostics: the ``eventlog`` stdlib logger, never its own events.

eventlog's warnings go to this logger only, so an application that routes logging into
eventlog cannot make it loop.
"""

from __future__ import annotations

import logging

__all__ = ["logger"]

logger = logging.getLogger("eventlog")
