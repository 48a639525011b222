"""eventlog: record what an LLM application does, in batches, without slowing it down.

::

    db = await eventlog.open_database("sqlite:///eventlog.db", migrate=True)
    sender, task = eventlog.start_database_logger(db, batch_size=100, debounce_time=1.0)
    sender.send(eventlog.ProxyLogEvent(model="gpt-4o", request=..., response=...))
    sender.close()
    await task
    await db.close()
"""

from __future__ import annotations

from eventlog.background import BackgroundLogger, start_background_logger
from eventlog.channel import LogSender
from eventlog.connect import LogClient, connect
from eventlog.database import Database, ProxyDatabase, open_database
from eventlog.deadletters import (
    DeadLetter,
    RetryResult,
    StoredDeadLetter,
    list_dead_letters,
    retry_dead_letters,
)
from eventlog.events import (
    EventPayload,
    InternalMetadata,
    ProxyLogEntry,
    ProxyLogEvent,
    RequestMetadata,
    RunStartEvent,
    RunUpdateEvent,
    StepEndEvent,
    StepErrorEvent,
    StepStartEvent,
    StepStateEvent,
    WorkflowEvent,
)
from eventlog.exceptions import (
    DatabaseError,
    EventLogError,
    InvalidEventError,
    MigrationError,
)
from eventlog.instrument import run, set_default_sender, step, track_llm_call
from eventlog.logs import (
    EventLogHandler,
    configure_logging,
    get_logging_stats,
    set_logging_level,
)
from eventlog.parse import parse_event
from eventlog.remote import HttpLogSender
from eventlog.stats import LoggerStats
from eventlog.writer import start_database_logger

__all__ = [
    "BackgroundLogger",
    "Database",
    "DatabaseError",
    "DeadLetter",
    "EventLogError",
    "EventLogHandler",
    "EventPayload",
    "HttpLogSender",
    "InternalMetadata",
    "InvalidEventError",
    "LogClient",
    "LogSender",
    "LoggerStats",
    "MigrationError",
    "ProxyDatabase",
    "ProxyLogEntry",
    "ProxyLogEvent",
    "RequestMetadata",
    "RetryResult",
    "RunStartEvent",
    "RunUpdateEvent",
    "StepEndEvent",
    "StepErrorEvent",
    "StepStartEvent",
    "StepStateEvent",
    "StoredDeadLetter",
    "WorkflowEvent",
    "__version__",
    "configure_logging",
    "connect",
    "get_logging_stats",
    "list_dead_letters",
    "open_database",
    "parse_event",
    "retry_dead_letters",
    "run",
    "set_default_sender",
    "set_logging_level",
    "start_background_logger",
    "start_database_logger",
    "step",
    "track_llm_call",
]

__version__ = "0.1.0"
