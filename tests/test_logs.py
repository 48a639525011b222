"""Application logs: the daily file, the line format, configure_logging, log events."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import eventlog
from eventlog import Database, EventLogHandler, EventPayload, start_database_logger
from eventlog.context import reset_request_id, set_request_id
from eventlog.events import ProxyLogEntry
from eventlog.logs import DailyFileHandler, LineFormatter, use_color
from eventlog.schema import chronicle_events
from eventlog.testing import MemoryDatabase

ENV = ("LOG_LEVEL", "CONSOLE_LOG_LEVEL", "LOG_DIR", "NO_COLOR")


class FakeClock:
    """Seconds since the epoch that move only when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()  # a naive datetime: local time, as the handler's

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ListSender:
    """Keeps what it is sent."""

    def __init__(self) -> None:
        self.entries: list[ProxyLogEntry] = []

    def send(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        assert isinstance(entry, EventPayload)
        self.entries.append(entry)


@pytest.fixture(autouse=True)
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore the root logger as it was, and close what a test added to it."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def record(message: str = "hello", level: int = logging.INFO, **kwargs: Any) -> logging.LogRecord:
    return logging.LogRecord("app.routes", level, __file__, 42, message, (), None, "chat", **kwargs)


def file_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- the daily file ------------------------------------------------------------------


def test_daily_file_switches_to_the_new_days_file_at_midnight(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 23, 59, 58))
    handler = DailyFileHandler(tmp_path, "app", clock=clock)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        handler.handle(record("before midnight"))
        clock.advance(1)  # 23:59:59
        handler.handle(record("last second"))
        clock.advance(2)  # 00:00:01 the next day
        handler.handle(record("after midnight"))
        assert handler.path.name == "logging_app_2026-03-02.txt"
    finally:
        handler.close()
    assert file_names(tmp_path) == ["logging_app_2026-03-01.txt", "logging_app_2026-03-02.txt"]
    first = (tmp_path / "logging_app_2026-03-01.txt").read_text()
    assert first == "before midnight\nlast second\n"
    assert (tmp_path / "logging_app_2026-03-02.txt").read_text() == "after midnight\n"


def test_daily_file_appends_to_todays_file_when_reopened(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 9, 0))
    for text in ("one", "two"):
        handler = DailyFileHandler(tmp_path, "app", clock=clock)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.handle(record(text))
        handler.close()
    assert (tmp_path / "logging_app_2026-03-01.txt").read_text() == "one\ntwo\n"


def test_files_older_than_retention_days_are_deleted_at_open_and_at_midnight(
    tmp_path: Path,
) -> None:
    today = date(2026, 3, 31)
    for days_ago in (40, 31, 30, 29, 1):
        (tmp_path / f"logging_app_{today - timedelta(days=days_ago)}.txt").write_text("x")
    others = ["logging_other_2020-01-01.txt", "logging_app_v2_2020-01-01.txt", "notes.txt"]
    for name in others:
        (tmp_path / name).write_text("x")
    clock = FakeClock(datetime(2026, 3, 31, 23, 59, 59))
    handler = DailyFileHandler(tmp_path, "app", retention_days=30, clock=clock)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        kept = ["2026-03-01", "2026-03-02", "2026-03-30", "2026-03-31"]
        assert file_names(tmp_path) == sorted([f"logging_app_{day}.txt" for day in kept] + others)
        clock.advance(2)  # April 1st: March 1st is now 31 days old
        handler.handle(record("april"))
    finally:
        handler.close()
    kept = ["2026-03-02", "2026-03-30", "2026-03-31", "2026-04-01"]
    assert file_names(tmp_path) == sorted([f"logging_app_{day}.txt" for day in kept] + others)


def test_retention_of_zero_days_keeps_only_todays_file(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 12, 0))
    handler = DailyFileHandler(tmp_path, "app", retention_days=0, clock=clock)
    try:
        handler.handle(record())
        clock.advance(86_400)
        handler.handle(record())
    finally:
        handler.close()
    assert file_names(tmp_path) == ["logging_app_2026-03-02.txt"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retention_days": -1}, "retention_days must be an int >= 0, got -1"),
        ({"retention_days": 1.5}, "retention_days must be an int >= 0, got 1.5"),
        ({"name": "a/b"}, "name must be a non-empty file name part, got 'a/b'"),
        ({"name": ""}, "name must be a non-empty file name part, got ''"),
    ],
)
def test_daily_file_refuses_bad_arguments(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"name": "app", **options}
    name = arguments.pop("name")
    with pytest.raises(ValueError, match=re.escape(message)):
        DailyFileHandler(tmp_path, name, **arguments)


# -- the line format -----------------------------------------------------------------


def test_line_has_the_seeds_columns_with_no_req_outside_a_request() -> None:
    item = record("Processing generation request")
    item.created = datetime(2025, 1, 19, 14, 30, 20).timestamp()
    line = LineFormatter().format(item)
    assert line == (
        "2025-01-19 14:30:20 | INFO     | app.routes            | chat                "
        "| no-req     | Processing generation request"
    )


def test_line_has_the_request_id_of_the_request_being_handled() -> None:
    token = set_request_id("req_a1b2c3")
    try:
        line = LineFormatter().format(record("inside"))
    finally:
        reset_request_id(token)
    assert " | req_a1b2c3 | inside" in line
    assert " | no-req     | outside" in LineFormatter().format(record("outside"))


def test_line_of_an_exception_ends_with_its_traceback() -> None:
    try:
        raise KeyError("missing")
    except KeyError:
        item = logging.LogRecord(
            "app", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info()
        )
    lines = LineFormatter().format(item).splitlines()
    assert lines[0].endswith("| failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "KeyError: 'missing'"


def test_colours_only_on_a_terminal_and_never_with_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert use_color(Terminal())
    assert not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Terminal())

    line = LineFormatter(color=True).format(record("careful", logging.WARNING))
    assert " | \x1b[33mWARNING \x1b[0m | app.routes " in line
    line = LineFormatter(color=True).format(record("broken", logging.ERROR))
    assert "\x1b[31mERROR   \x1b[0m" in line
    assert "\x1b" not in LineFormatter().format(record("plain", logging.ERROR))


# -- configure_logging ---------------------------------------------------------------


def our_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_eventlog_configured", False)]


def test_configure_logging_writes_todays_file_in_the_seeds_format(tmp_path: Path) -> None:
    log = eventlog.configure_logging("vllmserver", log_dir=tmp_path)
    log.info("VLLM Server starting up")
    logging.getLogger("app.factory.model").warning("model loading is slow")
    logging.getLogger("app.chatty").debug("not at INFO")
    today = date.today().isoformat()
    assert file_names(tmp_path) == [f"logging_vllmserver_{today}.txt"]
    lines = (tmp_path / f"logging_vllmserver_{today}.txt").read_text().splitlines()
    assert len(lines) == 2
    time = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    function = "test_configure_logging_writes_todays_file_in_the_seeds_format"
    assert re.fullmatch(
        rf"{time} \| INFO     \| vllmserver            \| {function} \| no-req     \| "
        "VLLM Server starting up",
        lines[0],
    )
    assert " | WARNING  | app.factory.model     | " in lines[1]


def test_configure_logging_twice_does_not_add_handlers_twice(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    eventlog.configure_logging("app", log_dir=tmp_path, sender=ListSender())
    first = our_handlers()
    eventlog.configure_logging("app", log_dir=tmp_path, sender=ListSender())
    second = our_handlers()
    assert len(first) == len(second) == 4  # counter, console, file, events
    assert len(root.handlers) == before + 4
    logging.getLogger("app").warning("once")
    today = date.today().isoformat()
    assert (tmp_path / f"logging_app_{today}.txt").read_text().count("once") == 1
    replaced = [h for h in first if h not in second]
    assert {type(h).__name__ for h in replaced} == {
        "StreamHandler",
        "DailyFileHandler",
        "EventLogHandler",
    }


def test_configure_logging_takes_unset_arguments_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("CONSOLE_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "from-env"))
    eventlog.configure_logging("svc")
    stats = eventlog.get_logging_stats()
    assert (stats["level"], stats["console_level"]) == ("DEBUG", "ERROR")
    assert stats["log_directory"] == str(tmp_path / "from-env")
    assert stats["log_file"] == str(
        tmp_path / "from-env" / f"logging_svc_{date.today().isoformat()}.txt"
    )
    # Arguments win over the environment.
    eventlog.configure_logging("svc", log_dir=tmp_path / "explicit", level="WARNING")
    stats = eventlog.get_logging_stats()
    assert (stats["level"], stats["console_level"]) == ("WARNING", "ERROR")
    assert stats["log_directory"] == str(tmp_path / "explicit")


def test_configure_logging_refuses_a_bad_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="level must be a logging level"):
        eventlog.configure_logging("app", log_dir=tmp_path, level="LOUD")
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(ValueError, match="LOG_LEVEL must be a logging level"):
        eventlog.configure_logging("app", log_dir=tmp_path)


def test_console_gets_its_own_level_and_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = eventlog.configure_logging("app", log_dir=tmp_path, console_level="WARNING")
    log.info("file only")
    log.warning("both")
    err = capsys.readouterr().err
    assert "file only" not in err
    assert " | WARNING  | app " in err
    assert "\x1b" not in err  # captured output is not a terminal
    text = (tmp_path / f"logging_app_{date.today().isoformat()}.txt").read_text()
    assert "file only" in text
    assert "both" in text


def test_set_logging_level_changes_the_logger_and_its_handlers_at_run_time(
    tmp_path: Path,
) -> None:
    sender = ListSender()
    log = eventlog.configure_logging("app", log_dir=tmp_path, level="INFO", sender=sender)
    log.debug("hidden")
    eventlog.set_logging_level(logging.DEBUG)
    log.debug("shown")
    eventlog.set_logging_level("warning")
    log.info("hidden again")
    assert [e.data["message"] for e in sender.entries] == ["shown"]  # type: ignore[union-attr]
    stats = eventlog.get_logging_stats()
    assert (stats["level"], stats["console_level"], stats["root_level"]) == ("WARNING",) * 3
    with pytest.raises(ValueError, match="level must be a logging level"):
        eventlog.set_logging_level("LOUD")


def test_logging_stats_count_records_per_level(tmp_path: Path) -> None:
    log = eventlog.configure_logging("app", log_dir=tmp_path)
    before = eventlog.get_logging_stats()["records"]
    log.info("a")
    log.info("b")
    log.error("c")
    log.debug("below the level: not counted")
    stats = eventlog.get_logging_stats()
    after = stats["records"]
    assert after["INFO"] - before["INFO"] == 2
    assert after["ERROR"] - before["ERROR"] == 1
    assert after["DEBUG"] == before["DEBUG"]
    assert stats["configured"] is True
    assert stats["name"] == "app"
    assert stats["loggers"] >= 1
    assert {"StreamHandler", "DailyFileHandler"} <= set(stats["handlers"])
    assert stats["log_directory"] == str(tmp_path)
    assert stats["retention_days"] == 30
    assert stats["events"] is False


# -- records as events ---------------------------------------------------------------


def test_record_becomes_a_log_event_with_its_fields() -> None:
    sender = ListSender()
    log = logging.getLogger("app.routes")
    log.addHandler(handler := EventLogHandler(sender))
    token = set_request_id("req-1")
    try:
        log.warning("user %s waited", "u1", extra={"user": "u1", "thing": object()})
    finally:
        reset_request_id(token)
        log.removeHandler(handler)
    (event,) = sender.entries
    assert isinstance(event, EventPayload)
    assert event.type == "log"
    assert event.error is None
    data = event.data
    assert data["level"] == "WARNING"
    assert data["logger"] == "app.routes"
    assert data["message"] == "user u1 waited"
    assert data["module"] == "test_logs"
    assert data["function"] == "test_record_becomes_a_log_event_with_its_fields"
    assert isinstance(data["line"], int)
    assert data["request_id"] == "req-1"
    assert data["extra"]["user"] == "u1"
    assert data["extra"]["thing"].startswith("<object object")


def test_exception_is_the_events_error_with_its_traceback() -> None:
    sender = ListSender()
    log = logging.getLogger("app.errors")
    log.addHandler(handler := EventLogHandler(sender))
    try:
        empty: dict[str, int] = {}
        try:
            empty["missing"]
        except KeyError:
            log.exception("lookup failed")
    finally:
        log.removeHandler(handler)
    (event,) = sender.entries
    assert isinstance(event, EventPayload)
    assert event.data["message"] == "lookup failed"
    assert event.error["type"] == "KeyError"
    assert event.error["message"] == "'missing'"
    assert "Traceback (most recent call last)" in event.error["traceback"]
    assert 'empty["missing"]' in event.error["traceback"]


def test_handler_below_its_level_sends_nothing() -> None:
    sender = ListSender()
    log = logging.getLogger("app.levels")
    log.addHandler(handler := EventLogHandler(sender, level="WARNING"))
    try:
        log.info("below")
        log.warning("at")
    finally:
        log.removeHandler(handler)
    assert [e.data["message"] for e in sender.entries] == ["at"]  # type: ignore[union-attr]


def test_eventlogs_own_records_never_become_events() -> None:
    sender = ListSender()
    root = logging.getLogger()
    root.addHandler(handler := EventLogHandler(sender))
    try:
        logging.getLogger("eventlog").warning("eventlog's own warning")
        eventlog._log.logger.warning("through the guarded logger")
        logging.getLogger("eventlog.asgi").info("an access line")
    finally:
        root.removeHandler(handler)
    assert sender.entries == []


def test_record_logged_from_inside_send_does_not_loop() -> None:
    class LoudSender(ListSender):
        def send(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
            logging.getLogger("app.loud").warning("logged while sending")
            super().send(entry)

    sender = LoudSender()
    log = logging.getLogger("app.loud")
    log.addHandler(handler := EventLogHandler(sender))
    try:
        log.warning("first")
    finally:
        log.removeHandler(handler)
    assert [e.data["message"] for e in sender.entries] == ["first"]  # type: ignore[union-attr]


def test_a_sender_that_fails_never_breaks_the_application(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenSender:
        def send(self, entry: Any) -> None:
            raise RuntimeError("broken")

    log = logging.getLogger("app.broken")
    log.addHandler(handler := EventLogHandler(BrokenSender()))
    try:
        log.warning("one")
        log.warning("two")
    finally:
        log.removeHandler(handler)
    warnings = [r for r in caplog.records if r.name == "eventlog"]
    assert len(warnings) == 1  # rate-limited
    assert "could not send a log record" in warnings[0].getMessage()


async def test_the_warning_about_a_full_queue_does_not_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sender, task = start_database_logger(MemoryDatabase(), max_queue=1, debounce_time=60)
    root = logging.getLogger()
    root.addHandler(handler := EventLogHandler(sender))
    try:
        logging.getLogger("app").warning("queued")
        logging.getLogger("app").warning("dropped: the queue is full, eventlog warns")
    finally:
        root.removeHandler(handler)
    stats = sender.stats()
    assert stats.dropped_by_reason["queue_full"] == 1, stats.dropped_by_reason
    assert stats.dropped_by_reason["recursion"] == 0
    assert any(r.name == "eventlog" for r in caplog.records)
    sender.close()
    await task


async def test_records_after_the_sender_is_closed_are_skipped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sender, task = start_database_logger(MemoryDatabase())
    sender.close()
    await task
    log = logging.getLogger("app.shutdown")
    log.addHandler(handler := EventLogHandler(sender))
    try:
        log.warning("shutting down")
    finally:
        log.removeHandler(handler)
    assert sender.stats().dropped == 0
    assert not [r for r in caplog.records if r.name == "eventlog"]


async def test_log_lines_land_in_the_database(db: Database, tmp_path: Path) -> None:
    sender, task = start_database_logger(db, batch_size=100, debounce_time=60)
    log = eventlog.configure_logging("app", log_dir=tmp_path, sender=sender)
    token = set_request_id("req-db")
    try:
        log.info("answered %d questions", 3)
        try:
            raise ValueError("bad input")
        except ValueError:
            logging.getLogger("app.routes").exception("failed")
    finally:
        reset_request_id(token)
    logging.getLogger("eventlog").warning("eventlog's own: file and console only")
    sender.close()
    await task
    async with db.engine.connect() as conn:
        result = await conn.execute(
            select(chronicle_events)
            .where(chronicle_events.c.event_type == "log")
            .order_by(chronicle_events.c.created_at)
        )
        rows = [dict(r) for r in result.mappings()]
    assert [r["meta"]["message"] for r in rows] == ["answered 3 questions", "failed"]
    assert [r["meta"]["level"] for r in rows] == ["INFO", "ERROR"]
    assert {r["meta"]["request_id"] for r in rows} == {"req-db"}
    assert rows[0]["error"] is None
    assert rows[1]["error"]["type"] == "ValueError"
    assert "raise ValueError" in rows[1]["error"]["traceback"]
    text = (tmp_path / f"logging_app_{date.today().isoformat()}.txt").read_text()
    assert "| req-db     | answered 3 questions" in text
    assert "eventlog's own: file and console only" in text
