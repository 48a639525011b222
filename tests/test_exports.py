"""The public surface: exactly these names, sorted, importable from ``eventlog``."""

from __future__ import annotations

import eventlog

# The names the core issue spells out as the contract, plus the documented extras.
CONTRACT = {
    "open_database",
    "Database",
    "start_database_logger",
    "LogSender",
    "ProxyLogEvent",
    "RequestMetadata",
    "InternalMetadata",
    "RunStartEvent",
    "RunUpdateEvent",
    "StepStartEvent",
    "StepEndEvent",
    "StepErrorEvent",
    "StepStateEvent",
    "EventPayload",
    "WorkflowEvent",
    "ProxyLogEntry",
    "parse_event",
    "EventLogError",
    # reliability (issue 4)
    "BackgroundLogger",
    "start_background_logger",
    "list_dead_letters",
    "retry_dead_letters",
    # the collector's clients (issue 5)
    "connect",
    "HttpLogSender",
    # runs, steps and LLM calls from application code
    "run",
    "step",
    "track_llm_call",
    "set_default_sender",
    # application logs (seed 004)
    "EventLogHandler",
    "configure_logging",
    "get_logging_stats",
    "set_logging_level",
}
EXTRAS = {
    "LogClient",
    "DeadLetter",
    "RetryResult",
    "StoredDeadLetter",
    "DatabaseError",
    "InvalidEventError",
    "LoggerStats",
    "MigrationError",
    "ProxyDatabase",
    "__version__",
}


def test_all_is_exactly_the_public_surface() -> None:
    assert set(eventlog.__all__) == CONTRACT | EXTRAS


def test_all_is_sorted_and_every_name_exists() -> None:
    assert eventlog.__all__ == sorted(eventlog.__all__)
    for name in eventlog.__all__:
        assert getattr(eventlog, name) is not None


def test_every_error_derives_from_event_log_error() -> None:
    for name in ("DatabaseError", "InvalidEventError", "MigrationError"):
        assert issubclass(getattr(eventlog, name), eventlog.EventLogError)
