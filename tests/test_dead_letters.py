"""Dead letters: stored, listed, retried after a fix, from the table and from JSONL files.

The database refuses entries for real here: a trigger rejects every event whose type is
``poison``, and dropping it is the "fix".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

import eventlog
from eventlog import (
    Database,
    DatabaseError,
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
)
from eventlog.cli import main
from eventlog.deadletters import (
    DeadLetter,
    RetryResult,
    count_dead_letters,
    list_dead_letter_files,
    list_dead_letters,
    retry_dead_letters,
    store_dead_letters,
    write_dead_letter_file,
)
from eventlog.ids import uuid7
from eventlog.migrate import upgrade

HOSTILE = "bad \x00 value, 'quotes' \"doubled\" '; DROP TABLE chronicle_events; --"


@pytest.fixture
async def db(backend: str, db: Database) -> AsyncIterator[Database]:
    """The shared ``db`` fixture, with the dead-letter table empty too (and emptied
    after, since the PostgreSQL database is shared by the session's tests)."""

    async def empty() -> None:
        if backend == "postgresql":
            async with db.engine.begin() as conn:
                await conn.execute(text("TRUNCATE eventlog_dead_letters"))

    await empty()
    yield db
    await empty()


Fix = Callable[[], Awaitable[None]]


@pytest.fixture
async def poison(backend: str, db: Database) -> AsyncIterator[Fix]:
    """Make the database refuse every event of type ``poison``; awaiting the value drops
    the trigger again (the fix)."""
    if backend == "sqlite":
        create = [
            "CREATE TRIGGER poison BEFORE INSERT ON chronicle_events "
            "WHEN NEW.event_type = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
        ]
        drop = ["DROP TRIGGER IF EXISTS poison"]
    else:
        create = [
            "CREATE FUNCTION eventlog_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN IF NEW.event_type = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; "
            "RETURN NEW; END $$",
            "CREATE TRIGGER poison BEFORE INSERT ON chronicle_events "
            "FOR EACH ROW EXECUTE FUNCTION eventlog_test_poison()",
        ]
        drop = [
            "DROP TRIGGER IF EXISTS poison ON chronicle_events",
            "DROP FUNCTION IF EXISTS eventlog_test_poison()",
        ]

    async def run(statements: list[str]) -> None:
        async with db.engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))

    async def fix() -> None:
        await run(drop)

    await run(create)
    try:
        yield fix
    finally:
        await fix()


async def scalar(db: Database, sql: str) -> object:
    async with db.engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar_one()


def letters_of(
    entries: Sequence[ProxyLogEntry], error: str = "IntegrityError: refused"
) -> list[DeadLetter]:
    batch = uuid7()
    return [
        DeadLetter(entry=entry, error=error, batch_id=batch, batch_size=len(entries) + 3)
        for entry in entries
    ]


def poisoned(n: int) -> list[EventPayload]:
    return [EventPayload(type="poison", data={"n": i}) for i in range(n)]


def every_kind() -> list[ProxyLogEntry]:
    run_id, step_id = uuid7(), uuid7()
    return [
        ProxyLogEvent(
            model="gpt-4o",
            provider="openai",
            request={"messages": [{"role": "user", "content": "hi"}], "n": 2**40},
            response={"usage": {"prompt_tokens": 3, "completion_tokens": 5}},
            latency=timedelta(microseconds=1_234_567),
            total_latency=timedelta(seconds=1.5),
            was_rate_limited=True,
            num_retries=2,
            metadata=RequestMetadata(
                application="app",
                run_id=run_id,
                step_index=3,
                prompt_version=7,
                extra={"customer": {"tier": "gold"}},
            ),
            internal_metadata=InternalMetadata(organization_id="org", user_id="u1"),
            response_meta={"cached": False},
        ),
        RunStartEvent(id=run_id, name="flow", tags=["a", "b"], input={"q": 1}, info={"k": 1}),
        RunUpdateEvent(id=run_id, status="finished", output=[1, 2]),
        StepStartEvent(step_id=step_id, run_id=run_id, type="llm", parent_step=uuid7(), tags=["x"]),
        StepEndEvent(step_id=step_id, run_id=run_id, output="done"),
        StepErrorEvent(step_id=step_id, run_id=run_id, error=ValueError("boom")),
        StepStateEvent(step_id=step_id, run_id=run_id, state="waiting"),
        EventPayload(
            type="custom",
            data={"x": [1, None]},
            run_id=run_id,
            internal_metadata=InternalMetadata(project_id="p"),
        ),
    ]


# -- the table ----------------------------------------------------------------------------


async def test_stored_dead_letters_list_back_as_the_very_entries_they_hold(db: Database) -> None:
    letters = letters_of(every_kind())
    await store_dead_letters(db, letters)
    stored = await list_dead_letters(db)
    assert [s.id for s in stored] == [letter.id for letter in letters]
    for letter, row in zip(letters, stored, strict=True):
        assert row.entry() == letter.entry
        assert row.kind == type(letter.entry).__name__
        assert row.time == letter.time
        assert row.batch_id == letter.batch_id
        assert row.batch_size == letter.batch_size
        assert row.error == letter.error
        assert row.attempts == 1
        assert row.last_attempt_at is None
        assert row.file is None
    assert stored[0].entry_id == letters[0].entry.id  # type: ignore[union-attr]
    assert stored[3].entry_id == letters[3].entry.step_id  # type: ignore[union-attr]
    assert await count_dead_letters(db) == len(letters)
    assert [s.id for s in await list_dead_letters(db, limit=2)] == [s.id for s in stored[:2]]


async def test_hostile_text_in_the_error_and_the_entry_is_stored(db: Database) -> None:
    exact = ProxyLogEvent(
        model=HOSTILE, request={HOSTILE: HOSTILE}, metadata=RequestMetadata(user_id=HOSTILE)
    )
    surrogate = EventPayload(type="custom", data={"text": "lone \ud800 surrogate"})
    letters = letters_of([exact, surrogate], error=f"IntegrityError: {HOSTILE} \udfff")
    await store_dead_letters(db, letters)
    stored = await list_dead_letters(db)
    assert stored[0].entry() == exact  # NUL and all: the record escapes it
    assert stored[1].entry().data == {"text": "lone \ufffd surrogate"}  # type: ignore[union-attr]
    assert stored[0].error == f"IntegrityError: {HOSTILE.replace(chr(0), '')} \ufffd"
    assert await scalar(db, "SELECT COUNT(*) FROM chronicle_events") == 0  # still there


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


async def test_an_entry_that_cannot_be_serialised_is_still_stored_and_stays(
    db: Database,
) -> None:
    entry = ProxyLogEvent(request={"body": Unprintable()})
    (letter,) = letters_of([entry])
    await store_dead_letters(db, [letter])
    (row,) = await list_dead_letters(db)
    assert row.kind == "ProxyLogEvent"
    assert row.entry_id == entry.id
    assert "Unprintable" in row.record["unserialisable"]
    assert row.record["repr"] == "<repr failed: RuntimeError: no repr either>"
    assert await retry_dead_letters(db) == RetryResult(1, 0, 1)
    assert (await list_dead_letters(db))[0].attempts == 2


async def test_a_long_error_is_cut_with_a_note(db: Database) -> None:
    await store_dead_letters(db, letters_of([EventPayload(type="x")], error="E: " + "x" * 20_000))
    (row,) = await list_dead_letters(db)
    assert row.error.endswith("... (10003 more characters cut)")
    assert len(row.error) < 10_100


async def test_poisoned_entries_fail_on_retry_until_the_database_is_fixed(
    db: Database, poison: Fix
) -> None:
    good = EventPayload(type="fine")
    bad = poisoned(2)
    with pytest.raises(DatabaseError, match="poisoned row"):
        await db.write_log_batch(bad[:1])
    await store_dead_letters(db, letters_of([bad[0], good, bad[1]]))

    first = await retry_dead_letters(db)

    assert first == RetryResult(retried=3, written=1, failed=2)
    kept = await list_dead_letters(db)
    assert [k.entry_id for k in kept] == [bad[0].id, bad[1].id]
    for row in kept:
        assert row.attempts == 2
        assert "poisoned row" in row.error
        assert row.last_attempt_at is not None
        assert row.last_attempt_at > row.time
    assert await scalar(db, "SELECT COUNT(*) FROM chronicle_events") == 1

    await poison()  # the fix
    second = await retry_dead_letters(db)

    assert second == RetryResult(retried=2, written=2, failed=0)
    assert await list_dead_letters(db) == []
    count = await scalar(db, "SELECT COUNT(*) FROM chronicle_events WHERE event_type = 'poison'")
    assert count == 2


async def test_retry_limit_sends_only_the_oldest(db: Database) -> None:
    letters = letters_of([EventPayload(type="fine") for _ in range(3)])
    await store_dead_letters(db, letters)
    assert await retry_dead_letters(db, limit=2) == RetryResult(2, 2, 0)
    assert [s.id for s in await list_dead_letters(db)] == [letters[2].id]


async def test_a_record_that_no_longer_parses_counts_as_failed_and_stays(db: Database) -> None:
    await store_dead_letters(db, letters_of([EventPayload(type="fine")]))
    async with db.engine.begin() as conn:
        await conn.execute(text("""UPDATE eventlog_dead_letters SET entry = '{"kind": "Gone"}'"""))

    assert await retry_dead_letters(db) == RetryResult(1, 0, 1)
    (row,) = await list_dead_letters(db)
    assert row.attempts == 2
    assert row.error.startswith("InvalidEventError: ")
    with pytest.raises(eventlog.InvalidEventError):
        row.entry()


async def test_a_database_not_migrated_to_dead_letters_says_to_migrate(
    backend: str, fresh_url: Callable[[str], str]
) -> None:
    db = await eventlog.open_database(fresh_url(backend))
    try:
        await upgrade(db.engine, "0002")
        for attempt in (
            store_dead_letters(db, letters_of([EventPayload(type="x")])),
            list_dead_letters(db),
            retry_dead_letters(db),
        ):
            with pytest.raises(DatabaseError, match="run `eventlog migrate`") as caught:
                await attempt
            assert "\n" not in str(caught.value)
    finally:
        await db.close()


def test_a_dead_letter_refuses_bad_arguments_naming_the_rule() -> None:
    entry = EventPayload(type="x")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        DeadLetter(entry=entry, error="e", batch_id=uuid7(), batch_size=0)
    with pytest.raises(TypeError, match="entry must be a log entry"):
        DeadLetter(entry={"type": "x"}, error="e", batch_id=uuid7(), batch_size=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"batch_id must be a uuid\.UUID"):
        DeadLetter(entry=entry, error="e", batch_id="nope", batch_size=1)  # type: ignore[arg-type]
    naive = DeadLetter(
        entry=entry, error="e", batch_id=uuid7(), batch_size=1, time=datetime(2026, 1, 1)
    )
    assert naive.time.tzinfo is UTC


# -- the JSONL files ----------------------------------------------------------------------


def test_dead_letter_file_is_appended_one_json_object_a_line(tmp_path: Path) -> None:
    folder = tmp_path / "not" / "yet"
    letters = letters_of([EventPayload(type="x"), RunUpdateEvent(id=uuid7(), status="ok")])
    path = write_dead_letter_file(folder, letters[:1])
    assert write_dead_letter_file(folder, letters[1:]) == path
    assert path.name == f"dead-letters-{datetime.now(UTC):%Y%m%d}.jsonl"
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [set(line) for line in lines] == [
        {"id", "time", "batch_id", "batch_size", "kind", "error", "entry"}
    ] * 2
    assert lines[1]["kind"] == "RunUpdateEvent"
    assert lines[1]["entry"]["kind"] == "RunUpdateEvent"
    found, unreadable = list_dead_letter_files(folder)
    assert [f.entry() for f in found] == [letter.entry for letter in letters]
    assert [f.id for f in found] == [letter.id for letter in letters]
    assert {f.file for f in found} == {path}
    assert unreadable == 0


async def test_dead_letters_in_files_are_retried_after_the_fix_and_the_file_removed(
    db: Database, poison: Fix, tmp_path: Path
) -> None:
    bad = poisoned(2)
    path = write_dead_letter_file(tmp_path, letters_of(bad))

    assert await retry_dead_letters(db, folder=tmp_path) == RetryResult(2, 0, 2)
    found, _ = list_dead_letter_files(tmp_path)
    assert [f.attempts for f in found] == [2, 2]
    assert all("poisoned row" in f.error for f in found)

    await poison()
    assert await retry_dead_letters(db, folder=tmp_path) == RetryResult(2, 2, 0)
    assert not path.exists()
    count = await scalar(db, "SELECT COUNT(*) FROM chronicle_events WHERE event_type = 'poison'")
    assert count == 2


async def test_torn_and_garbage_lines_count_as_failed_and_are_kept(
    db: Database, tmp_path: Path
) -> None:
    path = write_dead_letter_file(tmp_path, letters_of([EventPayload(type="fine")]))
    torn = b'{"id": "0190a1b2-torn-by-a-cr'
    with path.open("ab") as file:
        file.write(torn)  # a crash mid-line
    write_dead_letter_file(tmp_path, letters_of([EventPayload(type="fine")]))
    no_entry = b'{"id": "x", "entry": 3}'
    with path.open("ab") as file:
        file.write(b"not json at all \xff\n" + no_entry + b"\n\n")

    assert await retry_dead_letters(db, folder=tmp_path) == RetryResult(5, 2, 3)
    lines = path.read_bytes().splitlines()
    assert lines[:2] == [torn, b"not json at all \xff"]
    assert orjson.loads(lines[2])["attempts"] == 2
    assert len(lines) == 3
    assert list_dead_letter_files(tmp_path) == ([], 3)
    assert await scalar(db, "SELECT COUNT(*) FROM chronicle_events") == 2


# -- eventlog dead-letters --------------------------------------------------------------


async def cli(*args: str) -> int:
    """Run ``eventlog`` in-process (it runs its own event loop, so in a thread)."""
    return await asyncio.to_thread(main, list(args))


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


@pytest.mark.usefixtures("wide")
async def test_cli_lists_dead_letters_as_a_table_or_as_json(
    db: Database, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    update = RunUpdateEvent(id=uuid7(), status="x")
    letters = letters_of([EventPayload(type="fine"), update])
    await store_dead_letters(db, letters)
    in_file = letters_of([EventPayload(type="filed")])
    write_dead_letter_file(tmp_path, in_file)

    assert await cli("dead-letters", "--url", db_url) == 0
    out = capsys.readouterr().out
    assert "2 dead letters" in out
    assert str(update.id) in out
    assert "RunUpdateEvent" in out
    assert "IntegrityError: refused" in out

    assert await cli("dead-letters", "--url", db_url, "--dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert f"2 dead letters in {db.url}, 1 in {tmp_path}" in out

    assert await cli("dead-letters", "--url", db_url, "--json", "--dir", str(tmp_path)) == 0
    objects = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["id"] for o in objects] == [str(x.id) for x in letters + in_file]
    assert objects[1]["entry"]["kind"] == "RunUpdateEvent"
    assert objects[0]["file"] is None
    assert objects[2]["file"] is not None


async def test_cli_retry_exits_1_while_entries_are_refused_and_0_after_the_fix(
    db: Database, db_url: str, poison: Fix, capsys: pytest.CaptureFixture[str]
) -> None:
    await store_dead_letters(db, letters_of(poisoned(1)))

    assert await cli("dead-letters", "--url", db_url, "--retry") == 1
    assert "retried 1: written 0, still failing 1" in capsys.readouterr().out

    await poison()
    assert await cli("dead-letters", "--url", db_url, "--retry") == 0
    assert "retried 1: written 1, still failing 0" in capsys.readouterr().out
    assert await cli("dead-letters", "--url", db_url) == 0
    assert "0 dead letters" in capsys.readouterr().out


async def test_cli_on_a_database_without_the_table_says_to_migrate_in_one_line(
    backend: str, fresh_url: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = fresh_url(backend)
    assert await cli("dead-letters", "--url", url) == 1
    err = capsys.readouterr().err
    assert "eventlog migrate" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_limit_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dead-letters", "--url", "sqlite:///x.db", "--limit", "0"]) == 2
    assert "must be a positive integer" in capsys.readouterr().err


async def test_the_writer_isolates_refused_entries_and_writes_their_neighbours(
    db: Database, poison: Fix
) -> None:
    from eventlog import start_database_logger

    bad = poisoned(3)
    good = [
        EventPayload(type="fine", data={"n": i, "messy": "nul\x00 here \ud800", "x": 1e400})
        for i in range(37)
    ]
    batch: list[ProxyLogEntry] = [*good[:10], bad[0], *good[10:20], bad[1], *good[20:], bad[2]]
    sender, _ = start_database_logger(db, batch_size=40, debounce_time=0)
    sender.send(batch)
    stats = await sender.aclose()

    assert (stats.written, stats.dead_letters, stats.failed, stats.queued) == (37, 3, 0, 0)
    assert stats.repaired == 37  # messy values are repaired, not refused
    assert await scalar(db, "SELECT COUNT(*) FROM chronicle_events") == 37
    letters = await list_dead_letters(db)
    assert sorted(letter.entry_id for letter in letters) == sorted(entry.id for entry in bad)
    assert {letter.batch_size for letter in letters} == {40}
    assert len({letter.batch_id for letter in letters}) == 1
    assert all("poisoned row" in letter.error for letter in letters)

    await poison()  # the fix, then the retry a person runs
    assert await retry_dead_letters(db) == RetryResult(retried=3, written=3, failed=0)
    assert await scalar(db, "SELECT COUNT(*) FROM chronicle_events") == 40
