"""Application logs: stdlib ``logging`` into a daily file, the console and eventlog.

:func:`configure_logging` sets up the whole system once, at startup (seed 004's):

- the console, with a colour per level on a terminal (never when ``NO_COLOR`` is set);
- a file per day, ``logs/logging_<name>_YYYY-MM-DD.txt``, switched at local midnight, the
  files older than ``retention_days`` deleted (:class:`DailyFileHandler`);
- with a ``sender``, an :class:`EventLogHandler` that sends each record as a generic event
  of type ``log`` to the database.

Both text outputs share one line format (:class:`LineFormatter`)::

    2026-11-22 18:25:58 | INFO     | app.routes            | chat                | req-42     | ok

time, level, logger (the module, with ``logging.getLogger(__name__)``), function, the id
of the HTTP request being handled (``no-req`` outside one; see :mod:`eventlog.asgi`) and
the message, with the traceback of an exception on the lines after it.

The handlers go on the root logger, so every module's records and every library's (httpx,
openai, uvicorn's error log) go through them. eventlog's own diagnostics (the
``eventlog`` logger) reach the console and the file but never become events: an
application that routes logging into eventlog does not feed eventlog's warnings back
into it (see :mod:`eventlog._log`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from eventlog._log import in_own_logging
from eventlog._log import logger as _own_logger
from eventlog.context import current_scope, get_request_id
from eventlog.events import EventPayload, error_to_json
from eventlog.instrument import get_default_sender

if TYPE_CHECKING:
    from collections.abc import Sequence

    from eventlog.events import ProxyLogEntry

__all__ = [
    "NO_REQUEST",
    "DailyFileHandler",
    "EventLogHandler",
    "LineFormatter",
    "configure_logging",
    "get_logging_stats",
    "set_logging_level",
]

NO_REQUEST: Final = "no-req"
"""The request id column of a line logged outside any HTTP request (the seed's)."""

LOG_TYPE: Final = "log"
"""The ``type`` of the events :class:`EventLogHandler` sends."""

_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Sender(Protocol):
    def send(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None: ...


# -- levels and environment ------------------------------------------------------------


def _level(name: str, value: int | str) -> int:
    """A logging level from an int or a level name (any case); ValueError otherwise."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a logging level (int or name), got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name} must be a logging level >= 0, got {value!r}")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        number = logging.getLevelNamesMapping().get(text.upper())
        if number is not None:
            return number
        raise ValueError(
            f"{name} must be a logging level ({', '.join(_LEVELS)} or a number), got {value!r}"
        )
    raise TypeError(f"{name} must be a logging level (int or name), got {type(value).__name__}")


def _env_level(variable: str) -> int | None:
    value = os.environ.get(variable, "").strip()
    return _level(variable, value) if value else None


def _env_flag(variable: str, default: bool = False) -> bool:
    """``true``/``1``/``yes``/``on`` (any case) as True, ``false``/``0``/``no``/``off``
    as False, unset or empty as ``default``; anything else is a ValueError."""
    value = os.environ.get(variable, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{variable} must be true or false, got {value!r}")


def _env_number(variable: str, default: float, *, integer: bool = False) -> float:
    """A non-negative number from the environment, ``default`` when unset or empty."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{variable} must be {kind} >= 0, got {value!r}") from None
    if not number >= 0:  # also NaN
        raise ValueError(f"{variable} must be >= 0, got {value!r}")
    return number


def _request_id_of(record: logging.LogRecord) -> str | None:
    # A record handed on by a QueueHandler (or made elsewhere) may carry its own.
    value = getattr(record, "request_id", None)
    return value if isinstance(value, str) else get_request_id()


# -- formats ---------------------------------------------------------------------------

LINE_FORMAT: Final = (
    "%(asctime)s | %(color)s%(levelname)-8s%(reset)s | %(name)-21s | %(funcName)-19s"
    " | %(request)-10s | %(message)s"
)
DATE_FORMAT: Final = "%Y-%m-%d %H:%M:%S"

_COLORS: Final = {
    logging.DEBUG: "\x1b[36m",  # cyan
    logging.INFO: "\x1b[32m",  # green
    logging.WARNING: "\x1b[33m",  # yellow
    logging.ERROR: "\x1b[31m",  # red
    logging.CRITICAL: "\x1b[1;41m",  # bold, on red
}
_RESET: Final = "\x1b[0m"


class LineFormatter(logging.Formatter):
    """Seed 004's line: time, level, logger, function, request id, message.

    With ``color=True`` the level is in its colour (for a terminal). The record itself is
    not changed (other handlers see it as it was logged).
    """

    def __init__(self, *, color: bool = False) -> None:
        super().__init__(LINE_FORMAT, DATE_FORMAT)
        self.color = color

    def formatMessage(self, record: logging.LogRecord) -> str:
        values = dict(record.__dict__)
        values["request"] = _request_id_of(record) or NO_REQUEST
        if self.color:
            levels = [n for n in _COLORS if n <= record.levelno]
            values["color"] = _COLORS[max(levels)] if levels else _COLORS[logging.DEBUG]
            values["reset"] = _RESET
        else:
            values["color"] = values["reset"] = ""
        return LINE_FORMAT % values


def use_color(stream: Any) -> bool:
    """Colours on ``stream``: a terminal, and ``NO_COLOR`` unset or empty (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except (OSError, ValueError):  # closed or detached
        return False


# -- the daily file --------------------------------------------------------------------


class DailyFileHandler(logging.FileHandler):
    """Appends to ``directory/logging_<name>_YYYY-MM-DD.txt`` for the current local date.

    The first record after local midnight closes that file and opens the new day's, and
    deletes this handler's files dated more than ``retention_days`` days before the new
    day (so ``retention_days=30`` keeps today's file and the 30 before it); the same
    clean-up runs when the handler opens. ``clock`` returns seconds since the epoch
    (``time.time``), read at each record: pass a fake one to test the switch without
    waiting for midnight.

    (``TimedRotatingFileHandler`` writes the current day to a fixed name and renames it
    afterwards, and reads ``time.time()`` itself, so it cannot give the seed's names.)
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        name: str,
        *,
        retention_days: int = 30,
        clock: Callable[[], float] = time.time,
        encoding: str = "utf-8",
    ) -> None:
        if not isinstance(name, str) or not name or "/" in name or "\\" in name:
            raise ValueError(f"name must be a non-empty file name part, got {name!r}")
        if (
            not isinstance(retention_days, int)
            or isinstance(retention_days, bool)
            or retention_days < 0
        ):
            raise ValueError(f"retention_days must be an int >= 0, got {retention_days!r}")
        self.directory = Path(directory)
        self.name_part = name
        self.retention_days = retention_days
        self._clock = clock
        self._pattern = re.compile(rf"logging_{re.escape(name)}_(\d{{4}}-\d{{2}}-\d{{2}})\.txt")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.day = self._today()
        super().__init__(self.path_for(self.day), mode="a", encoding=encoding)
        self._prune()

    def path_for(self, day: date) -> Path:
        """The file of ``day``."""
        return self.directory / f"logging_{self.name_part}_{day.isoformat()}.txt"

    @property
    def path(self) -> Path:
        """The file written now."""
        return Path(self.baseFilename)

    def _today(self) -> date:
        return datetime.fromtimestamp(self._clock()).date()  # local time, as the seed

    def emit(self, record: logging.LogRecord) -> None:
        try:
            today = self._today()
            if today != self.day:  # midnight passed (or the clock was set back a day)
                self._switch(today)
        except Exception:
            self.handleError(record)
            return
        super().emit(record)

    def _switch(self, day: date) -> None:
        # Called under the handler's lock (Handler.handle holds it around emit).
        if self.stream is not None:
            self.stream.flush()
            self.stream.close()
        self.stream = None
        self.day = day
        self.baseFilename = os.path.abspath(self.path_for(day))
        self.stream = self._open()
        self._prune()

    def _prune(self) -> None:
        """Delete this handler's files dated more than ``retention_days`` before today."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for file_name in names:
            match = self._pattern.fullmatch(file_name)
            if match is None:
                continue
            try:
                day = date.fromisoformat(match.group(1))
            except ValueError:
                continue
            if (self.day - day).days > self.retention_days:
                try:
                    os.unlink(self.directory / file_name)
                except OSError as err:
                    _own_logger.warning(
                        "eventlog: could not delete the old log file %s: %s", file_name, err
                    )


# -- records as events -----------------------------------------------------------------

# The attributes every LogRecord has: anything else on a record came from `extra=`.
_PLAIN_RECORD = logging.LogRecord("", 0, "", 0, "", (), None)
_RECORD_ATTRIBUTES: Final = frozenset(
    [*_PLAIN_RECORD.__dict__, "message", "asctime", "request_id", "taskName"]
)

_local = threading.local()


def _is_own(name: str) -> bool:
    return name == "eventlog" or name.startswith("eventlog.")


def _json_safe(value: Any) -> Any:
    try:
        orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)
    return value


class EventLogHandler(logging.Handler):
    """Sends each log record as a generic event (``EventPayload``, type ``log``).

    The event's ``data``: ``level``, ``logger``, ``message``, ``module``, ``function``,
    ``line``, ``pathname``, ``process``, ``process_name``, ``thread``, ``request_id``
    (None outside a request), ``extra`` (the record's ``extra=`` fields, when any; values
    that are not JSON as their ``repr``) and ``stack`` (``stack_info=True``). An exception
    (``logger.exception``, ``exc_info=``) is the event's ``error``: ``{"type",
    "message", "traceback"}``. Inside :func:`eventlog.run`/:func:`eventlog.step` the
    event has the run's and step's ids. Its ``time`` is the record's.

    ``sender`` is anything with ``send(entry)``: a ``LogSender``, a
    ``BackgroundLogger``, ``eventlog.connect(...)``'s client. With None, the current
    run's sender or else :func:`eventlog.set_default_sender`'s is looked up at each
    record, and a record is skipped while there is none, or once the sender is closed
    (what an application logs while it shuts down is not counted as dropped).

    ``emit`` never raises and never waits (``send()`` appends to a queue). It skips
    records of the ``eventlog`` loggers (eventlog's own diagnostics), records logged while
    eventlog is logging on this thread, and records logged from inside this handler
    (by ``send()``, say): none of them can loop back.
    """

    def __init__(self, sender: _Sender | None = None, level: int | str = logging.INFO) -> None:
        super().__init__(_level("level", level))
        self.sender = sender
        self._failures = 0

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(_local, "emitting", False) or in_own_logging() or _is_own(record.name):
            return
        _local.emitting = True
        try:
            sender = self.sender if self.sender is not None else _default_sender()
            if sender is not None and not getattr(sender, "closed", False):
                sender.send(self.event(record))
        except Exception as err:
            self._failures += 1
            if self._failures == 1 or self._failures % 1000 == 0:  # rate-limited
                _own_logger.warning(
                    "eventlog: EventLogHandler could not send a log record (%d so far): %s: %s",
                    self._failures,
                    type(err).__name__,
                    err,
                )
        finally:
            _local.emitting = False

    def event(self, record: logging.LogRecord) -> EventPayload:
        """The event of ``record`` (what :meth:`emit` sends)."""
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: keep both
            message = f"{record.msg!r} % {record.args!r}"
        data: dict[str, Any] = {
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
            "pathname": record.pathname,
            "process": record.process,
            "process_name": record.processName,
            "thread": record.threadName,
            "request_id": _request_id_of(record),
        }
        extra = {
            key: _json_safe(value)
            for key, value in record.__dict__.items()
            if key not in _RECORD_ATTRIBUTES
        }
        if extra:
            data["extra"] = extra
        if record.stack_info:
            data["stack"] = record.stack_info
        error: Any = None
        if record.exc_info and record.exc_info[1] is not None:
            error = error_to_json(record.exc_info[1])
        scope = current_scope()
        return EventPayload(
            type=LOG_TYPE,
            data=data,
            error=error,
            run_id=None if scope is None else scope.run_id,
            step_id=None if scope is None else scope.step_id,
            time=datetime.fromtimestamp(record.created, UTC),
        )


def _default_sender() -> _Sender | None:
    """The current run's sender, else the process's default one (eventlog.instrument)."""
    scope = current_scope()
    if scope is not None and scope.sender is not None:
        sender: _Sender = scope.sender
        return sender
    return get_default_sender()


# -- configure_logging -----------------------------------------------------------------

_TAG: Final = "_eventlog_configured"  # set on each handler configure_logging adds


class _RecordCounter(logging.Handler):
    """Counts the records that reach the root logger's handlers, per level name."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.counts: dict[str, int] = dict.fromkeys(_LEVELS, 0)

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds this handler's lock around emit.
        self.counts[record.levelname] = self.counts.get(record.levelname, 0) + 1


class _Config:
    """What the last configure_logging() set up, for the stats and set_logging_level."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.name: str | None = None
        self.log_dir: Path | None = None
        self.retention_days: int | None = None
        self.level = logging.WARNING
        self.console_level = logging.WARNING
        self.console: logging.Handler | None = None
        self.file: DailyFileHandler | None = None
        self.events: EventLogHandler | None = None
        self.counter = _RecordCounter()


_config = _Config()


def configure_logging(
    name: str = "app",
    *,
    log_dir: str | os.PathLike[str] = "logs",
    level: int | str | None = None,
    console_level: int | str | None = None,
    retention_days: int = 30,
    sender: _Sender | None = None,
) -> logging.Logger:
    """Set up the application's logging (seed 004) and return the logger ``name``.

    On the root logger, at ``level``: the console (stderr) at ``console_level``, in
    colour on a terminal unless ``NO_COLOR`` is set; the file
    ``log_dir/logging_<name>_YYYY-MM-DD.txt`` (:class:`DailyFileHandler`, keeping
    ``retention_days`` days); and with a ``sender``, an :class:`EventLogHandler` that
    sends every record as a ``log`` event. The records of every logger go there; use the
    returned logger or ``logging.getLogger(__name__)``.

    Unset arguments come from the environment, as the seed names it: ``level`` from
    ``LOG_LEVEL`` (default INFO), ``console_level`` from ``CONSOLE_LOG_LEVEL`` (default:
    ``level``), and ``LOG_DIR`` replaces the default folder ``logs`` (an explicit other
    ``log_dir`` wins). Calling it again replaces the handlers it added before (closing
    them) rather than adding more; handlers added by others are left alone.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    resolved_level = _level("level", level) if level is not None else _env_level("LOG_LEVEL")
    if resolved_level is None:
        resolved_level = logging.INFO
    if console_level is not None:
        resolved_console: int | None = _level("console_level", console_level)
    else:
        resolved_console = _env_level("CONSOLE_LOG_LEVEL")
    if resolved_console is None:
        resolved_console = resolved_level
    directory = os.fspath(log_dir)
    env_dir = os.environ.get("LOG_DIR", "").strip()
    if directory == "logs" and env_dir:
        directory = env_dir
    events = None if sender is None else EventLogHandler(sender, resolved_level)
    file_handler = DailyFileHandler(directory, name, retention_days=retention_days)
    file_handler.setLevel(resolved_level)
    file_handler.setFormatter(LineFormatter())
    stream = sys.stderr
    console = logging.StreamHandler(stream)
    console.setLevel(resolved_console)
    console.setFormatter(LineFormatter(color=use_color(stream)))

    root = logging.getLogger()
    with _config.lock:
        for handler in list(root.handlers):
            if getattr(handler, _TAG, False) and handler is not _config.counter:
                root.removeHandler(handler)
                handler.close()
        added: list[logging.Handler] = [_config.counter, console, file_handler]
        if events is not None:
            added.append(events)
        for handler in added:
            setattr(handler, _TAG, True)
            if handler not in root.handlers:
                root.addHandler(handler)
        # The root logger lets through what the most talkative handler wants.
        root.setLevel(min(resolved_level, resolved_console))
        _config.name = name
        _config.log_dir = Path(directory).resolve()
        _config.retention_days = retention_days
        _config.level = resolved_level
        _config.console_level = resolved_console
        _config.console = console
        _config.file = file_handler
        _config.events = events
    return logging.getLogger(name)


def set_logging_level(level: int | str) -> None:
    """Change the level of the root logger and of every handler :func:`configure_logging`
    added (console, file, events), at run time: ``set_logging_level("DEBUG")``."""
    number = _level("level", level)
    with _config.lock:
        _config.level = _config.console_level = number
        for handler in (_config.console, _config.file, _config.events):
            if handler is not None:
                handler.setLevel(number)
    logging.getLogger().setLevel(number)


def get_logging_stats() -> dict[str, Any]:
    """The logging system's state, as a dict (a health check can return it).

    - ``configured``: whether :func:`configure_logging` was called;
    - ``name``: its ``name``; ``loggers``: how many named loggers exist;
    - ``level``, ``console_level``: level names (``root_level``: the root logger's);
    - ``handlers``: the root logger's handlers, as class names;
    - ``log_directory``, ``log_file``: the folder and today's file (str, or None);
    - ``retention_days``; ``events``: whether records are sent as events;
    - ``records``: how many records reached the handlers since the first
      :func:`configure_logging`, per level name (``{"DEBUG": 0, "INFO": 12, ...}``).
    """
    root = logging.getLogger()
    with _config.lock:
        file_handler = _config.file
        return {
            "configured": _config.name is not None,
            "name": _config.name,
            "loggers": len(logging.root.manager.loggerDict),
            "level": logging.getLevelName(_config.level) if _config.name else None,
            "console_level": (
                logging.getLevelName(_config.console_level) if _config.name else None
            ),
            "root_level": logging.getLevelName(root.level),
            "handlers": [type(h).__name__ for h in root.handlers],
            "log_directory": None if _config.log_dir is None else str(_config.log_dir),
            "log_file": None if file_handler is None else str(file_handler.path),
            "retention_days": _config.retention_days,
            "events": _config.events is not None,
            "records": dict(_config.counter.counts),
        }
