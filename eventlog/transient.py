"""Which database failures are worth retrying: the database was away, not the data bad.

A batch that failed for a transient reason (connection refused or lost, server restart,
deadlock, serialization failure, SQLite ``database is locked`` or a database file
that cannot be opened or read) is kept and written
again later; any other failure means the batch itself was refused.
"""

from __future__ import annotations

import sqlite3

import asyncpg
from sqlalchemy import exc as sa_exc

__all__ = ["is_transient"]

_TRANSIENT_POSTGRES = (
    asyncpg.PostgresConnectionError,  # class 08: connection failure, lost connection
    asyncpg.exceptions.OperatorInterventionError,  # 57: admin or crash shutdown, restarting
    asyncpg.exceptions.TransactionRollbackError,  # 40: deadlock, serialization failure
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
)


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) says "try again later"."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OSError, TimeoutError, *_TRANSIENT_POSTGRES)):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, asyncpg.InterfaceError) and "closed" in str(current):
            return True  # "connection is closed", "pool is closing"
        if isinstance(current, sqlite3.OperationalError) and any(
            # busy, or the file cannot be reached (its volume or folder is away)
            word in str(current)
            for word in ("locked", "busy", "unable to open", "disk I/O error")
        ):
            return True
        current = current.__cause__ or current.__context__
    return False
