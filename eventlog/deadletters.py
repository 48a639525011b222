"""Dead letters: entries the database refused for good, kept where a person finds them.

When the database refuses a batch for a reason that waiting will not cure (a constraint,
a trigger, a value it will not take), the writer splits the batch until the refused
entries are isolated and writes the rest. Each refused entry becomes a
:class:`DeadLetter`, stored in the ``eventlog_dead_letters`` table (migration 0003) by
:func:`store_dead_letters`, or, if even that insert fails, appended to a JSONL file by
:func:`write_dead_letter_file`. Once the cause is fixed, :func:`retry_dead_letters`
sends them again one entry at a time and removes each one written; ``eventlog
dead-letters`` lists and retries them from the command line.

Entries are kept as :mod:`eventlog.records` records, so a retried entry is the very entry
that was refused. Re-sending is at least once: an entry written whose dead letter could
not then be removed is sent again next time (an event with the same id is stored once).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from sqlalchemy import Select, Table, delete, func, insert, inspect, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from eventlog._checks import positive_int
from eventlog.database import Database
from eventlog.events import ENTRY_TYPES, ProxyLogEntry, to_utc, utc_now
from eventlog.exceptions import DatabaseError, InvalidEventError
from eventlog.ids import uuid7
from eventlog.records import entry_from_record, entry_to_record
from eventlog.sanitize import clean_text
from eventlog.schema import eventlog_dead_letters as _table
from eventlog.transient import is_transient

__all__ = [
    "DeadLetter",
    "RetryResult",
    "StoredDeadLetter",
    "count_dead_letters",
    "describe_error",
    "table_failure",
    "list_dead_letter_files",
    "list_dead_letters",
    "retry_dead_letters",
    "store_dead_letters",
    "write_dead_letter_file",
]

FILE_GLOB: Final = "dead-letters-*.jsonl"
MAX_ERROR_CHARS: Final = 10_000
_LOCK_NAME: Final = ".dead-letters.lock"
_ENTRY_CLASSES: Final = ", ".join(cls.__name__ for cls in ENTRY_TYPES)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """An entry the database refused, with why and where it came from."""

    entry: ProxyLogEntry
    error: str  # "TypeName: message" of the database's refusal (see describe_error)
    batch_id: uuid.UUID  # one per original batch, shared by its dead letters
    batch_size: int  # entries in that original batch
    time: datetime = field(default_factory=utc_now)  # when it was refused
    id: uuid.UUID = field(default_factory=uuid7)

    def __post_init__(self) -> None:
        if not isinstance(self.entry, ENTRY_TYPES):
            raise TypeError(
                f"entry must be a log entry ({_ENTRY_CLASSES}), got {type(self.entry).__name__}"
            )
        if not isinstance(self.error, str):
            raise TypeError(f"error must be a str, got {type(self.error).__name__}")
        for name in ("batch_id", "id"):
            if not isinstance(getattr(self, name), uuid.UUID):
                raise TypeError(
                    f"{name} must be a uuid.UUID, got {type(getattr(self, name)).__name__}"
                )
        if (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or not 1 <= self.batch_size <= 2**31 - 1
        ):
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not isinstance(self.time, datetime):
            raise TypeError(f"time must be a datetime, got {type(self.time).__name__}")
        if self.time.tzinfo is not UTC:
            object.__setattr__(self, "time", to_utc(self.time))


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredDeadLetter:
    """A dead letter as stored: a row of ``eventlog_dead_letters``, or a line of a JSONL
    file (then ``file`` names it)."""

    id: uuid.UUID
    time: datetime  # when the entry was refused
    batch_id: uuid.UUID
    batch_size: int
    kind: str  # the entry class: "ProxyLogEvent", "RunStartEvent"...
    entry_id: uuid.UUID | None  # the entry's id (step_id for step events)
    error: str  # the latest refusal
    attempts: int  # failed writes so far, the first one included
    last_attempt_at: datetime | None  # the latest retry; None before any
    record: dict[str, Any] = field(hash=False)  # the entry as an eventlog.records record
    file: Path | None = None

    def entry(self) -> ProxyLogEntry:
        """The refused entry; :class:`~eventlog.InvalidEventError` if the record no
        longer describes one."""
        return entry_from_record(self.record)

    def to_json(self) -> dict[str, Any]:
        """This dead letter as a JSON object (what ``eventlog dead-letters --json`` prints)."""
        return {
            "id": str(self.id),
            "time": self.time.isoformat(),
            "batch_id": str(self.batch_id),
            "batch_size": self.batch_size,
            "kind": self.kind,
            "entry_id": None if self.entry_id is None else str(self.entry_id),
            "error": self.error,
            "attempts": self.attempts,
            "last_attempt_at": None
            if self.last_attempt_at is None
            else self.last_attempt_at.isoformat(),
            "file": None if self.file is None else str(self.file),
            "entry": self.record,
        }


@dataclass(frozen=True, slots=True)
class RetryResult:
    """What :func:`retry_dead_letters` did: dead letters tried, written, still failing."""

    retried: int = 0
    written: int = 0
    failed: int = 0


def describe_error(err: BaseException) -> str:
    """``"TypeName: message"`` of the database's own error behind ``err``: the driver's
    error that a :class:`~eventlog.DatabaseError` was raised from, without SQLAlchemy's
    wrapping (which repeats the statement and its parameters, the whole entry)."""
    cause = err
    while isinstance(cause, DatabaseError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, DBAPIError) and isinstance(cause.orig, BaseException):
        cause = cause.orig
    message = str(cause)
    return f"{type(cause).__name__}: {message}" if message else type(cause).__name__


# -- the table --------------------------------------------------------------------------


async def store_dead_letters(db: Database, letters: Sequence[DeadLetter]) -> None:
    """Insert ``letters`` into ``eventlog_dead_letters`` in one transaction.

    Raises :class:`~eventlog.DatabaseError` if they were not stored (the writer then
    falls back to :func:`write_dead_letter_file`).
    """
    if not letters:
        return
    rows = [_row(letter) for letter in letters]
    try:
        async with db.engine.begin() as conn:
            await conn.execute(insert(_table), rows)
    except (SQLAlchemyError, OSError) as err:
        raise await _failure(db, f"storing {len(rows)} dead letters", err) from err


async def list_dead_letters(db: Database, *, limit: int | None = None) -> list[StoredDeadLetter]:
    """The stored dead letters, oldest first; at most ``limit`` of them."""
    _check_limit(limit)
    query = select(_table).order_by(_table.c.created_at, _table.c.id)
    if limit is not None:
        query = query.limit(limit)
    return [_from_row(row) for row in await _fetch(db, query, "listing dead letters")]


async def count_dead_letters(db: Database) -> int:
    """How many dead letters the table holds."""
    rows = await _fetch(db, select(func.count()).select_from(_table), "counting dead letters")
    return int(rows[0][0])


async def retry_dead_letters(
    db: Database,
    *,
    limit: int | None = None,
    folder: str | os.PathLike[str] | None = None,
) -> RetryResult:
    """Send the stored dead letters again (and, with ``folder``, those in its JSONL files),
    oldest first, at most ``limit`` in all.

    Each goes through ``db.write_log_batch`` alone, so one entry still refused does not
    hold the others back. A written one is removed; a refused one stays, its
    ``attempts`` counted up and its ``error`` replaced by the new refusal; a record that
    no longer describes an entry stays too, and counts as failed. A transient failure
    (the database went away) stops the retry with :class:`~eventlog.DatabaseError`:
    nothing is lost, and nothing is counted against the entries.
    """
    _check_limit(limit)
    tally = _Tally(limit)
    for letter in await list_dead_letters(db, limit=limit):
        tally.retried += 1
        try:
            entry = letter.entry()
        except InvalidEventError as err:
            await _mark_failed(db, letter.id, describe_error(err))
            tally.failed += 1
            continue
        error = await _write_one(db, entry)
        if error is None:
            await _delete(db, letter.id)
            tally.written += 1
        else:
            await _mark_failed(db, letter.id, error)
            tally.failed += 1
    if folder is not None:
        for path in await asyncio.to_thread(_files, Path(folder)):
            if tally.full:
                break
            await _retry_file(db, path, tally)
    return RetryResult(tally.retried, tally.written, tally.failed)


@dataclass(slots=True)
class _Tally:
    limit: int | None
    retried: int = 0
    written: int = 0
    failed: int = 0

    @property
    def full(self) -> bool:
        return self.limit is not None and self.retried >= self.limit


async def _write_one(db: Database, entry: ProxyLogEntry) -> str | None:
    """Write ``entry`` alone: None if written, else the refusal; a transient failure
    raises, since every other entry would fail the same way."""
    try:
        await db.write_log_batch([entry])
    except DatabaseError as err:
        if err.transient:
            raise
        return describe_error(err)
    return None


def _check_limit(limit: int | None) -> None:
    positive_int("limit", limit, optional=True)


def _storable(text: str) -> str:
    """``text`` as both databases (and JSON) take it: no NUL, no lone surrogate."""
    return clean_text(text, "", [])


def _error_text(error: str) -> str:
    """``error``, storable and at most ``MAX_ERROR_CHARS`` long: a refusal may quote
    the whole row (PostgreSQL's "Failing row contains ..."), and the entry is kept anyway."""
    error = _storable(error)
    if len(error) > MAX_ERROR_CHARS:
        cut = len(error) - MAX_ERROR_CHARS
        error = f"{error[:MAX_ERROR_CHARS]}... ({cut} more characters cut)"
    return error


def _record_text(entry: ProxyLogEntry) -> str:
    """``entry`` as a record, or, if even that fails, a record saying why (which
    :func:`entry_from_record` refuses, so a retry counts it failed and keeps it)."""
    try:
        return entry_to_record(entry).decode()
    except Exception as err:  # a dead letter must be storable whatever it holds
        try:
            shown = repr(entry)[:100_000]
        except Exception as repr_err:
            shown = f"<repr failed: {describe_error(repr_err)}>"
        return orjson.dumps(
            {
                "kind": None,
                "class": type(entry).__name__,
                "unserialisable": _storable(describe_error(err)),
                "repr": _storable(shown),
            }
        ).decode()


def _entry_id(entry: ProxyLogEntry) -> uuid.UUID | None:
    found = getattr(entry, "id", None)
    if found is None:
        found = getattr(entry, "step_id", None)
    return found if isinstance(found, uuid.UUID) else None


def _row(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "created_at": letter.time,
        "batch_id": letter.batch_id,
        "batch_size": letter.batch_size,
        "entry_kind": type(letter.entry).__name__,
        "entry_id": _entry_id(letter.entry),
        "entry": _record_text(letter.entry),
        "error": _error_text(letter.error),
        "attempts": 1,
        "last_attempt_at": None,
    }


def _parse_record(text: str | bytes) -> dict[str, Any]:
    """A stored record as a dict; text that is not one is kept under ``"unreadable"``
    (so it is shown, and :func:`entry_from_record` refuses it)."""
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError:
        record = None
    if isinstance(record, dict):
        return record
    return {"unreadable": text if isinstance(text, str) else text.decode("utf-8", "replace")}


def _from_row(row: Row[Any]) -> StoredDeadLetter:
    return StoredDeadLetter(
        id=row.id,
        time=row.created_at,
        batch_id=row.batch_id,
        batch_size=row.batch_size,
        kind=row.entry_kind,
        entry_id=row.entry_id,
        error=row.error,
        attempts=row.attempts,
        last_attempt_at=row.last_attempt_at,
        record=_parse_record(row.entry),
    )


async def _fetch(db: Database, query: Select[Any], doing: str) -> list[Row[Any]]:
    try:
        async with db.engine.connect() as conn:
            return list((await conn.execute(query)).all())
    except (SQLAlchemyError, OSError) as err:
        raise await _failure(db, doing, err) from err


async def _mark_failed(db: Database, letter_id: uuid.UUID, error: str) -> None:
    statement = (
        update(_table)
        .where(_table.c.id == letter_id)
        .values(attempts=_table.c.attempts + 1, error=_error_text(error), last_attempt_at=utc_now())
    )
    try:
        async with db.engine.begin() as conn:
            await conn.execute(statement)
    except (SQLAlchemyError, OSError) as err:
        raise await _failure(db, "recording a failed retry", err) from err


async def _delete(db: Database, letter_id: uuid.UUID) -> None:
    try:
        async with db.engine.begin() as conn:
            await conn.execute(delete(_table).where(_table.c.id == letter_id))
    except (SQLAlchemyError, OSError) as err:
        raise await _failure(db, "removing a written dead letter", err) from err


async def table_failure(db: Database, table: Table, doing: str, err: Exception) -> DatabaseError:
    """The error to raise for ``err`` met while ``doing`` something with ``table``: a
    missing table says to migrate (eventlog's own tables come with its migrations)."""
    transient = is_transient(err)
    if not transient and not await _table_exists(db, table):
        return DatabaseError(
            f"{db.url} has no {table.name} table yet: run `eventlog migrate` "
            "(or open_database(..., migrate=True)) to add it"
        )
    return DatabaseError(f"{doing} in {db.url} failed: {describe_error(err)}", transient=transient)


async def _failure(db: Database, doing: str, err: Exception) -> DatabaseError:
    return await table_failure(db, _table, doing, err)


async def _table_exists(db: Database, table: Table) -> bool:
    def exists(conn: Connection) -> bool:
        return inspect(conn).has_table(table.name)

    try:
        async with db.engine.connect() as conn:
            return await conn.run_sync(exists)
    except (SQLAlchemyError, OSError):
        return True  # cannot tell: report the original error


# -- the JSONL files --------------------------------------------------------------------


def write_dead_letter_file(folder: str | os.PathLike[str], letters: Sequence[DeadLetter]) -> Path:
    """Append ``letters`` to ``<folder>/dead-letters-<YYYYMMDD>.jsonl`` (today, UTC), one
    JSON object a line, and fsync; return the file's path. The folder is created if
    missing. Blocking: call it from a thread (``asyncio.to_thread``).

    Each line is ``{"id", "time", "batch_id", "batch_size", "kind", "error", "entry"}``
    with the entry as its record; a retry that fails adds ``attempts`` and
    ``last_attempt_at`` and replaces ``error``.
    """
    folder = Path(folder)
    path = folder / f"dead-letters-{datetime.now(UTC):%Y%m%d}.jsonl"
    if not letters:
        return path
    data = b"".join(_line(letter) + b"\n" for letter in letters)
    folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):
        created = not path.exists()
        with open(path, "a+b") as file:
            if file.tell() > 0:
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":  # a line torn by a crash stays a line of its own
                    data = b"\n" + data
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if created:
            _fsync_dir(folder)
    return path


def list_dead_letter_files(
    folder: str | os.PathLike[str],
) -> tuple[list[StoredDeadLetter], int]:
    """The dead letters in ``folder``'s JSONL files (oldest file first), and how many
    lines could not be read as one. A missing folder holds none. Blocking."""
    letters: list[StoredDeadLetter] = []
    unreadable = 0
    for path in _files(Path(folder)):
        for line in _read_lines(path):
            letter = _from_line(line, path)
            if letter is None:
                unreadable += 1
            else:
                letters.append(letter)
    return letters, unreadable


def _line(letter: DeadLetter) -> bytes:
    return orjson.dumps(
        {
            "id": str(letter.id),
            "time": letter.time.isoformat(),
            "batch_id": str(letter.batch_id),
            "batch_size": letter.batch_size,
            "kind": type(letter.entry).__name__,
            "error": _error_text(letter.error),
            "entry": _parse_record(_record_text(letter.entry)),
        }
    )


def _from_line(line: bytes, path: Path) -> StoredDeadLetter | None:
    try:
        obj = orjson.loads(line)
        record = obj["entry"]
        if not isinstance(record, dict):
            return None
        entry_id = record.get("id") or record.get("step_id")
        attempts = obj.get("attempts", 1)
        last = obj.get("last_attempt_at")
        return StoredDeadLetter(
            id=uuid.UUID(obj["id"]),
            time=to_utc(datetime.fromisoformat(obj["time"])),
            batch_id=uuid.UUID(obj["batch_id"]),
            batch_size=int(obj["batch_size"]),
            kind=str(obj.get("kind") or record.get("kind")),
            entry_id=uuid.UUID(entry_id) if isinstance(entry_id, str) else None,
            error=str(obj.get("error", "")),
            attempts=attempts if isinstance(attempts, int) else 1,
            last_attempt_at=None if last is None else to_utc(datetime.fromisoformat(last)),
            record=record,
            file=path,
        )
    except (ValueError, KeyError, TypeError, AttributeError):  # JSONDecodeError included
        return None


def _files(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise NotADirectoryError(f"dead-letter folder {folder} is not a folder")
    return sorted(folder.glob(FILE_GLOB))


def _read_lines(path: Path) -> list[bytes]:
    with _folder_lock(path.parent):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # emptied by another retry meanwhile
            return []
    return [line for line in data.split(b"\n") if line.strip()]


async def _retry_file(db: Database, path: Path, tally: _Tally) -> None:
    """Retry the lines of one file, then rewrite it without the written ones."""
    outcome: dict[bytes, bytes | None] = {}  # line -> its replacement; None: drop it
    try:
        for line in await asyncio.to_thread(_read_lines, path):
            if tally.full:
                break
            tally.retried += 1
            replacement = await _retry_line(db, line)
            outcome[line] = replacement
            if replacement is None:
                tally.written += 1
            else:
                tally.failed += 1
    finally:  # even when a transient failure stops the retry: what was written goes
        if outcome:
            await asyncio.to_thread(_rewrite, path, outcome)


async def _retry_line(db: Database, line: bytes) -> bytes | None:
    """None if the line's entry was written, else the line to keep in its place."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line  # torn or garbage: kept as it is, for a person to look at
    if not isinstance(obj, dict):
        return line
    record = obj.get("entry")
    try:
        if not isinstance(record, Mapping):
            raise InvalidEventError("entry", "must be a record (a JSON object)")
        error = await _write_one(db, entry_from_record(record))
    except InvalidEventError as err:
        error = describe_error(err)
    if error is None:
        return None
    attempts = obj.get("attempts")
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        attempts = 1
    obj["attempts"] = attempts + 1
    obj["last_attempt_at"] = utc_now().isoformat()
    obj["error"] = _error_text(error)
    return orjson.dumps(obj)


def _rewrite(path: Path, outcome: Mapping[bytes, bytes | None]) -> None:
    """Apply ``outcome`` to the file as it is now (lines appended since it was read are
    kept), through a temporary file and ``os.replace``; delete it if nothing is left."""
    with _folder_lock(path.parent):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        kept: list[bytes] = []
        for line in data.split(b"\n"):
            if line.strip():
                new = outcome.get(line, line)
                if new is not None:
                    kept.append(new)
        if not kept:
            path.unlink()
        else:
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            try:
                with open(temporary, "wb") as file:
                    file.write(b"\n".join(kept) + b"\n")
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        _fsync_dir(path.parent)


# Appending (the writer's thread) and rewriting (a retry) must not interleave, or a line
# appended between a retry's read and its replace would be lost: a lock file in the
# folder keeps processes apart (flock also keeps this process's threads apart, each
# opening the file anew); on Windows, without flock, only threads are kept apart.
_thread_lock = threading.Lock()


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    with _thread_lock:
        if sys.platform == "win32":
            yield
        else:
            import fcntl

            with open(folder / _LOCK_NAME, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)


def _fsync_dir(folder: Path) -> None:
    """Make a file's creation, replacement or removal in ``folder`` durable."""
    if sys.platform == "win32":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
