"""Retention (``eventlog.maintenance.prune``, ``eventlog prune``) on both backends: old
rows go in bounded batches, newer ones stay, payloads can be cleared alone."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from eventlog import (
    Database,
    ProxyLogEvent,
    RunStartEvent,
    RunUpdateEvent,
    StepEndEvent,
    StepStartEvent,
    open_database,
)
from eventlog.cli import main
from eventlog.events import utc_now
from eventlog.maintenance import parse_age, prune
from eventlog.schema import chronicle_events, chronicle_runs, chronicle_steps

DAY = timedelta(days=1)


def call(at: datetime, model: str = "gpt-4o") -> ProxyLogEvent:
    """An LLM call made at ``at``, with a payload and every metric column filled."""
    return ProxyLogEvent(
        timestamp=at,
        model=model,
        provider="openai",
        request={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        response={
            "choices": [{"message": {"content": "hello"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        },
        latency=timedelta(milliseconds=250),
        total_latency=timedelta(milliseconds=300),
        num_retries=1,
        was_rate_limited=False,
    )


async def event_rows(db: Database) -> dict[uuid.UUID, dict[str, Any]]:
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(chronicle_events))).mappings()
        return {row["id"]: dict(row) for row in rows}


async def ids(db: Database, table: Any) -> set[uuid.UUID]:
    async with db.engine.connect() as conn:
        return set((await conn.execute(select(table.c.id))).scalars())


async def test_prune_deletes_exactly_the_events_older_than_the_cutoff_in_several_batches(
    db: Database,
) -> None:
    now = utc_now()
    # spread over three years (windows that must grow) plus a dense minute, and a
    # group sharing one created_at that is larger than a batch
    spread = [call(now - 90 * DAY - timedelta(days=11 * i)) for i in range(1, 100)]
    dense = [call(now - 200 * DAY + timedelta(milliseconds=i)) for i in range(20)]
    same = now - 95 * DAY
    tied = [call(same) for _ in range(9)]
    kept = [call(now - 90 * DAY + timedelta(minutes=1 + i)) for i in range(10)]
    await db.write_log_batch([*spread, *dense, *tied, *kept])

    result = await prune(db, older_than=timedelta(days=90), batch_size=4)

    assert result.events_deleted == 99 + 20 + 9
    assert await ids(db, chronicle_events) == {e.id for e in kept}
    assert result.batches >= (99 + 20 + 9) // 4
    assert result.runs_deleted == result.steps_deleted == result.payloads_cleared == 0
    assert result.older_than is not None
    assert abs(result.older_than - (now - 90 * DAY)) < timedelta(minutes=1)


async def test_an_iso_time_cutoff_is_exclusive(db: Database) -> None:
    cutoff = datetime(2025, 1, 31, tzinfo=UTC)
    before, at = call(cutoff - timedelta(microseconds=1)), call(cutoff)
    await db.write_log_batch([before, at])

    result = await prune(db, older_than=cutoff, batch_size=1)

    assert result.events_deleted == 1
    assert await ids(db, chronicle_events) == {at.id}


async def test_clearing_payloads_keeps_the_metric_columns_and_newer_payloads(
    db: Database,
) -> None:
    now = utc_now()
    ancient = [call(now - 120 * DAY) for _ in range(3)]
    old = [call(now - 30 * DAY - timedelta(seconds=i)) for i in range(11)]
    recent = [call(now - DAY) for _ in range(4)]
    await db.write_log_batch([*ancient, *old, *recent])
    before = await event_rows(db)

    result = await prune(
        db, older_than=timedelta(days=90), payloads_older_than=timedelta(days=14), batch_size=3
    )

    assert (result.events_deleted, result.payloads_cleared) == (3, 11)
    after = await event_rows(db)
    assert set(after) == {e.id for e in [*old, *recent]}
    for event in old:
        row, was = after[event.id], before[event.id]
        assert row["chat_request"] is None
        assert row["chat_response"] is None
        unchanged = {k: v for k, v in was.items() if k not in ("chat_request", "chat_response")}
        assert {k: row[k] for k in unchanged} == unchanged
        assert (row["prompt_tokens"], row["completion_tokens"]) == (12, 5)
        assert row["request_latency_ms"] == 250
    for event in recent:
        assert after[event.id] == before[event.id]


async def test_payloads_alone_can_be_cleared_without_deleting_anything(db: Database) -> None:
    now = utc_now()
    old = [call(now - 300 * DAY), call(now - 20 * DAY)]
    await db.write_log_batch(old)

    result = await prune(db, older_than=None, payloads_older_than=timedelta(days=14))

    assert (result.events_deleted, result.payloads_cleared) == (0, 2)
    rows = await event_rows(db)
    assert all(r["chat_request"] is None and r["model"] == "gpt-4o" for r in rows.values())
    again = await prune(db, older_than=None, payloads_older_than=timedelta(days=14))
    assert again.payloads_cleared == 0


async def test_dry_run_counts_what_would_go_and_changes_nothing(db: Database) -> None:
    now = utc_now()
    await db.write_log_batch(
        [call(now - 100 * DAY) for _ in range(5)] + [call(now - 20 * DAY) for _ in range(3)]
    )
    await db.write_log_batch(run_with_steps(now - 100 * DAY, now - 100 * DAY, steps=2))
    before = await event_rows(db)
    runs, steps = await ids(db, chronicle_runs), await ids(db, chronicle_steps)

    options: dict[str, Any] = {
        "older_than": timedelta(days=90),
        "payloads_older_than": timedelta(days=14),
        "batch_size": 2,
    }
    counted = await prune(db, dry_run=True, **options)

    assert await event_rows(db) == before
    assert (await ids(db, chronicle_runs), await ids(db, chronicle_steps)) == (runs, steps)
    assert counted.dry_run
    assert counted.batches == 0
    done = await prune(db, **options)
    assert (counted.events_deleted, counted.runs_deleted, counted.steps_deleted) == (5, 1, 2)
    assert counted.payloads_cleared == 3
    assert (done.events_deleted, done.runs_deleted, done.steps_deleted) == (5, 1, 2)
    assert done.payloads_cleared == 3


def run_with_steps(
    started: datetime, updated: datetime, *, steps: int
) -> list[RunStartEvent | RunUpdateEvent | StepStartEvent | StepEndEvent]:
    run_id = uuid.uuid4()
    entries: list[RunStartEvent | RunUpdateEvent | StepStartEvent | StepEndEvent] = [
        RunStartEvent(id=run_id, name="wf", time=started)
    ]
    for _ in range(steps):
        step_id = uuid.uuid4()
        entries.append(StepStartEvent(step_id=step_id, run_id=run_id, type="llm", time=started))
        entries.append(StepEndEvent(step_id=step_id, run_id=run_id, time=started))
    entries.append(RunUpdateEvent(id=run_id, status="finished", time=updated))
    return entries


async def test_runs_last_updated_before_the_cutoff_go_with_their_steps(db: Database) -> None:
    now = utc_now()
    old = [run_with_steps(now - 100 * DAY, now - 99 * DAY, steps=3) for _ in range(5)]
    revived = run_with_steps(now - 100 * DAY, now - DAY, steps=2)  # started long ago
    fresh = run_with_steps(now - DAY, now - DAY, steps=1)
    for entries in [*old, revived, fresh]:
        await db.write_log_batch(entries)

    result = await prune(db, older_than=timedelta(days=90), batch_size=2)

    assert (result.runs_deleted, result.steps_deleted) == (5, 15)
    kept_runs = {revived[0].id, fresh[0].id}  # type: ignore[union-attr]
    assert await ids(db, chronicle_runs) == kept_runs
    async with db.engine.connect() as conn:
        step_runs = (await conn.execute(select(chronicle_steps.c.run_id))).scalars().all()
    assert sorted(map(str, step_runs)) == sorted(map(str, [*[revived[0].id] * 2, fresh[0].id]))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"older_than": None}, "give older_than, payloads_older_than, or both"),
        ({"older_than": DAY, "batch_size": 0}, "batch_size must be between 1"),
        ({"older_than": DAY, "batch_size": True}, "batch_size must be a positive int"),
        ({"older_than": -DAY}, "older_than must be a positive age"),
        (
            {"older_than": datetime.now(UTC) + DAY},
            "older_than must be in the past",
        ),
        (
            {"older_than": 14 * DAY, "payloads_older_than": 90 * DAY},
            "payloads_older_than (",
        ),
    ],
)
async def test_bad_arguments_fail_before_touching_the_database_and_name_the_parameter(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    db = await open_database(tmp_path / "never-created.db")  # no tables: must not be read
    try:
        with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
            await prune(db, **options)
    finally:
        await db.close()
    assert not (tmp_path / "never-created.db").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", timedelta(days=90)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        ("2025-01-31", datetime(2025, 1, 31, tzinfo=UTC)),
        ("2025-01-31T12:00:00+02:00", datetime(2025, 1, 31, 10, tzinfo=UTC)),
        ("2025-01-31 12:00", datetime(2025, 1, 31, 12, tzinfo=UTC)),
    ],
)
def test_ages_and_iso_times_are_understood(text: str, expected: timedelta | datetime) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "90", "d", "90x", "-5d", "yesterday", "2025-13-01"])
def test_anything_else_is_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="must be an age like 90d"):
        parse_age(text)


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def test_cli_prune_prints_what_it_did_per_table(
    db: Database, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    now = utc_now()
    await db.write_log_batch([call(now - 100 * DAY) for _ in range(7)] + [call(now - 20 * DAY)])
    await db.write_log_batch(run_with_steps(now - 100 * DAY, now - 100 * DAY, steps=2))

    args = ["prune", "--url", db_url, "--older-than", "90d", "--payloads-older-than", "14d"]
    assert await cli(*args, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "dry run, nothing changed" in out
    assert "would delete 7 rows created before" in out
    assert len(await event_rows(db)) == 8

    assert await cli(*args, "--batch-size", "3") == 0
    out = capsys.readouterr().out
    assert "pruned in" in out
    assert "chronicle_events  deleted 7 rows created before" in out
    assert "chronicle_runs    deleted 1 rows last updated before" in out
    assert "chronicle_steps   deleted 2 rows of those runs" in out
    assert "cleared the payloads of 1 rows" in out
    assert len(await event_rows(db)) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "14d", "--payloads-older-than", "90d"], "--payloads-older-than ("),
        (["--older-than", "soon"], "argument --older-than: must be an age like 90d"),
        (["--older-than", "2099-01-01"], "--older-than must be in the past"),
        (["--older-than", "90d", "--batch-size", "0"], "must be a positive integer"),
        ([], "give --older-than, --payloads-older-than, or both"),
    ],
)
def test_cli_prune_bad_usage_exits_2_naming_the_option(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prune", "--url", str(tmp_path / "x.db"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


async def test_a_run_with_recent_steps_is_alive_however_old_its_start(db: Database) -> None:
    now = utc_now()
    run_id, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await db.write_log_batch(
        [
            RunStartEvent(id=run_id, name="long", time=now - timedelta(hours=2)),
            StepStartEvent(
                step_id=first, run_id=run_id, type="llm", time=now - timedelta(minutes=2)
            ),
            StepStartEvent(
                step_id=second, run_id=run_id, type="llm", time=now - timedelta(seconds=5)
            ),
        ]
    )
    # Step events do not touch the run's updated_at: its steps say it is alive.
    result = await prune(db, older_than=timedelta(hours=1))
    assert (result.runs_deleted, result.steps_deleted) == (0, 0)
    async with db.engine.connect() as conn:
        assert (await conn.execute(select(chronicle_runs.c.id))).scalars().all() == [run_id]
        steps = (await conn.execute(select(chronicle_steps.c.id))).scalars().all()
    assert sorted(steps) == sorted([first, second])
