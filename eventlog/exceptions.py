"""The exceptions eventlog raises.

Every exception derives from one root, so ``except EventLogError`` catches them all::

    EventLogError
    ├── InvalidEventError          (also ValueError) malformed event data; ``.field`` names it
    └── DatabaseError              the database failed or refused a batch
        └── MigrationError         the schema could not be brought up to date

Bad *arguments* (``batch_size=0``) raise the built-in ``ValueError``/``TypeError`` at
once, as the standard library does, with a message that names the parameter and the rule.
"""

from __future__ import annotations

__all__ = [
    "DatabaseError",
    "EventLogError",
    "InvalidEventError",
    "MigrationError",
]


class EventLogError(Exception):
    """Root of every error raised by eventlog."""


class InvalidEventError(EventLogError, ValueError):
    """An event (usually JSON from outside) is malformed.

    ``field`` is the dotted path of the offending value (``"id"``, ``"data.type"``), or
    ``""`` when the object as a whole is wrong.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        where = f"field {field!r}" if field else "event"
        super().__init__(f"invalid event: {where} {message}")


class DatabaseError(EventLogError):
    """The database failed or refused a batch; the driver's error is the ``__cause__``.

    ``transient`` says whether the failure is worth retrying (the database was away or
    busy, rather than the batch bad): see :func:`eventlog.transient.is_transient`.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class MigrationError(DatabaseError):
    """The alembic migrations could not be applied."""
