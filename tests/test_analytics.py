"""Analytics: every query checked against Python over the same data, on both backends.

One data set, written with the real writer path (``Database.write_log_batch``) at fixed
times, answers each question; the expectations are computed here from the Python
objects, independently of the SQL.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import math
import random
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from sqlalchemy import text
from test_rollup import another_writer_commits

import eventlog
from eventlog import (
    Database,
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
)
from eventlog import analytics as an
from eventlog.cli import main

NOW = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)
SINCE = datetime(2026, 3, 25, tzinfo=UTC)  # two days before the first call: empty buckets
UNTIL = datetime(2026, 3, 31, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")  # summer time from 2026-03-29 01:00 UTC
MODELS = {"gpt-4o": 130, "claude-sonnet": 40, "mistral-large": 12}  # p99, p95, neither
USERS = ["ana", "bo", "cy", None]


def _calls() -> list[ProxyLogEvent]:
    rng = random.Random(6)
    calls = []
    for model, count in MODELS.items():
        for i in range(count):
            at = datetime(2026, 3, 27, tzinfo=UTC) + timedelta(
                seconds=rng.randrange(0, 3 * 86400), microseconds=rng.randrange(1_000_000)
            )
            latency = None if i % 17 == 5 else rng.randrange(50, 5000)
            total = None if latency is None else latency + rng.choice([0, 0, 120, 900])
            usage = None if i % 11 == 3 else {"prompt_tokens": rng.randrange(1, 900)}
            if usage is not None:
                usage["completion_tokens"] = rng.randrange(0, 400)
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            error: Any = None
            if i % 9 == 2:
                error = {"type": "RateLimitError", "message": "slow down"}
            elif i % 13 == 4:
                error = "connection reset"
            calls.append(
                ProxyLogEvent(
                    timestamp=at,
                    provider=model.split("-")[0],
                    model=model,
                    request={"model": model},
                    response=None if usage is None else {"usage": usage},
                    latency=None if latency is None else timedelta(milliseconds=latency),
                    total_latency=None if total is None else timedelta(milliseconds=total),
                    was_rate_limited=error is not None and i % 2 == 0,
                    num_retries=rng.choice([None, 0, 0, 1, 3]),
                    error=error,
                    metadata=RequestMetadata(
                        application=rng.choice(["chat", "search"]),
                        workflow_name=rng.choice(["triage", None]),
                        extra={"team": "red" if i % 3 == 0 else "blue"},
                    ),
                    internal_metadata=InternalMetadata(user_id=USERS[i % 4]),
                )
            )
    # Around the summer-time switch: Berlin days 03-28 (+1), 03-29 (23 h), 03-30 (+2).
    for hour in (22.5, 23.5, 24.5, 45.5, 46.5):
        at = datetime(2026, 3, 28, tzinfo=UTC) + timedelta(hours=hour)
        calls.append(ProxyLogEvent(timestamp=at, model="gpt-4o", provider="gpt"))
    return calls


CALLS = _calls()
RUN_START = datetime(2026, 3, 29, 10, tzinfo=UTC)


def _runs() -> tuple[list[ProxyLogEntry], dict[uuid.UUID, dict[str, Any]]]:
    """Six runs of two workflows: durations in microseconds, steps that fail."""
    entries: list[ProxyLogEntry] = []
    facts: dict[uuid.UUID, dict[str, Any]] = {}
    plan = [
        ("triage", "finished", 1_500_250, 2, 0),
        ("triage", "error", 800_999, 3, 1),
        ("triage", "finished", 2_100_000, 1, 0),
        ("summarise", "finished", 40_000_001, 4, 0),
        ("summarise", "error", 300_500, 2, 2),
        ("summarise", "started", 0, 1, 0),
    ]
    for n, (workflow, status, micros, step_count, failing) in enumerate(plan):
        run_id = uuid.UUID(int=n + 1)
        start = RUN_START + timedelta(minutes=n)
        entries.append(RunStartEvent(id=run_id, name=workflow, time=start))
        for s in range(step_count):
            step_id = uuid.UUID(int=1000 + 10 * n + s)
            step_start = start + timedelta(microseconds=1000 * s + 7)
            kind, name = ("llm", "ask") if s % 2 == 0 else ("tool", "search")
            entries.append(
                StepStartEvent(
                    step_id=step_id, run_id=run_id, type=kind, name=name, time=step_start
                )
            )
            end = step_start + timedelta(microseconds=micros // (s + 2))
            if s < failing:
                entries.append(StepErrorEvent(step_id=step_id, run_id=run_id, error="x", time=end))
            elif status != "started":
                entries.append(StepEndEvent(step_id=step_id, run_id=run_id, time=end))
        if status != "started":
            end = start + timedelta(microseconds=micros)
            entries.append(RunUpdateEvent(id=run_id, status=status, time=end))
        facts[run_id] = {
            "workflow": workflow,
            "status": status,
            "duration": None if status == "started" else micros // 1000,
            "steps": step_count,
            "failed": failing,
        }
    return entries, facts


RUN_ENTRIES, RUN_FACTS = _runs()
NOISE = [EventPayload(type="cache_hit", time=datetime(2026, 3, 28, tzinfo=UTC))]


async def load(db: Database) -> None:
    entries: list[ProxyLogEntry] = [*CALLS, *RUN_ENTRIES, *NOISE]
    for i in range(0, len(entries), 100):
        await db.write_log_batch(entries[i : i + 100])


@pytest.fixture
async def loaded(db: Database) -> Database:
    await load(db)
    return db


# -- independent expectations ----------------------------------------------------------


def ms(value: timedelta | None) -> int | None:
    return None if value is None else round(value / timedelta(milliseconds=1))


def nearest_rank(values: Sequence[int], p: float) -> int | None:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered))) - 1] if ordered else None


def expected_latency(values: Sequence[int]) -> an.LatencyStats:
    n = len(values)

    def pick(p: float, minimum: int = 1) -> int | None:
        return nearest_rank(values, p) if n >= minimum else None

    return an.LatencyStats(
        count=n,
        avg=sum(values) / n if n else None,
        p50=pick(0.5),
        p75=pick(0.75),
        p90=pick(0.9),
        p95=pick(0.95, 20),
        p99=pick(0.99, 100),
    )


def tokens(call: ProxyLogEvent, key: str) -> int | None:
    response = call.response
    return None if response is None else int(response["usage"][key])


def expected_usage(calls: Sequence[ProxyLogEvent]) -> dict[str, Any]:
    n = len(calls)
    both = [
        c for c in calls if tokens(c, "completion_tokens") is not None and (ms(c.latency) or 0) > 0
    ]
    tps_ms = sum(ms(c.latency) or 0 for c in both)
    return {
        "requests": n,
        "errors": sum(c.error is not None for c in calls),
        "rate_limited": sum(bool(c.was_rate_limited) for c in calls),
        "retried": sum((c.num_retries or 0) > 0 for c in calls),
        "retries": sum(c.num_retries or 0 for c in calls),
        "prompt_tokens": sum(tokens(c, "prompt_tokens") or 0 for c in calls),
        "completion_tokens": sum(tokens(c, "completion_tokens") or 0 for c in calls),
        "total_tokens": sum(tokens(c, "total_tokens") or 0 for c in calls),
        "users": len({c.internal_metadata.user_id for c in calls} - {None}),
        "output_tokens_per_second": (
            sum(tokens(c, "completion_tokens") or 0 for c in both) * 1000 / tps_ms
            if tps_ms
            else None
        ),
    }


def usage_fields(row: an.UsageRow) -> dict[str, Any]:
    return {key: getattr(row, key) for key in expected_usage([])}


def in_window(call: ProxyLogEvent, since: datetime = SINCE, until: datetime = UNTIL) -> bool:
    return since <= call.timestamp < until


# -- usage -------------------------------------------------------------------------------


async def test_usage_by_model_matches_python_over_the_same_calls(loaded: Database) -> None:
    rows = await an.usage(loaded, since=SINCE, until=UNTIL, by="model")

    assert [r.group for r in rows] == [{"model": m} for m in sorted(MODELS)]
    for row in rows:
        calls = [c for c in CALLS if c.model == row.group["model"] and in_window(c)]
        assert usage_fields(row) == expected_usage(calls)
        assert (row.start, row.end) == (SINCE, UNTIL)
        assert row.error_rate == row.errors / row.requests


async def test_usage_counts_only_llm_calls_and_one_total_row_without_groups(
    loaded: Database,
) -> None:
    (row,) = await an.usage(loaded, since=SINCE, until=UNTIL)
    assert usage_fields(row) == expected_usage(CALLS)  # the cache_hit event is no request


async def test_usage_by_two_groups_keeps_missing_values_as_none(loaded: Database) -> None:
    rows = await an.usage(loaded, since=SINCE, until=UNTIL, by=["workflow", "user"])
    expected = {
        (w, u): expected_usage(
            [c for c in CALLS if (c.metadata.workflow_name, c.internal_metadata.user_id) == (w, u)]
        )
        for w in ("triage", None)
        for u in USERS
    }
    got = {(r.group["workflow"], r.group["user"]): usage_fields(r) for r in rows}
    assert got == {k: v for k, v in expected.items() if v["requests"]}
    assert rows[0].group["workflow"] is None  # None sorts first


async def test_daily_buckets_fill_empty_days_with_zero_rows(loaded: Database) -> None:
    rows = await an.usage(loaded, since=SINCE, until=UNTIL, bucket="day")

    days = [SINCE + timedelta(days=d) for d in range(6)]
    assert [(r.start, r.end) for r in rows] == [(d, d + timedelta(days=1)) for d in days]
    for row in rows:
        calls = [c for c in CALLS if row.start <= c.timestamp < row.end]
        assert usage_fields(row) == expected_usage(calls)
    assert rows[0].requests == rows[1].requests == 0
    assert rows[0].error_rate is None


async def test_hourly_buckets_by_model_have_every_model_in_every_hour(loaded: Database) -> None:
    since, until = datetime(2026, 3, 27, 22, tzinfo=UTC), datetime(2026, 3, 28, 4, tzinfo=UTC)
    rows = await an.usage(loaded, since=since, until=until, by="model", bucket="hour")

    present = {c.model for c in CALLS if since <= c.timestamp < until}
    assert len(rows) == 6 * len(present)  # each model with a call there, in all 6 hours
    for row in rows:
        calls = [
            c for c in CALLS if c.model == row.group["model"] and row.start <= c.timestamp < row.end
        ]
        assert usage_fields(row) == expected_usage(calls)


async def test_berlin_days_fold_around_the_summer_time_switch(loaded: Database) -> None:
    since = datetime(2026, 3, 28, tzinfo=BERLIN)
    until = datetime(2026, 3, 31, tzinfo=BERLIN)
    rows = await an.usage(loaded, since=since, until=until, bucket="day", tz="Europe/Berlin")

    starts = [datetime(2026, 3, d, tzinfo=BERLIN) for d in (28, 29, 30, 31)]
    assert [(r.start, r.end) for r in rows] == list(itertools_pairs(starts))
    assert rows[1].end - rows[1].start == timedelta(hours=23)  # the short day
    for row, day in zip(rows, (28, 29, 30), strict=True):
        calls = [c for c in CALLS if c.timestamp.astimezone(BERLIN).date().day == day]
        assert row.requests == len(calls)
    # 23:30 UTC on 03-28 is 00:30 on 03-29 in Berlin; 22:30 UTC on 03-29 is 00:30 on 03-30.
    late = [c for c in CALLS if c.timestamp == datetime(2026, 3, 28, 23, 30, tzinfo=UTC)]
    assert late
    assert rows[1].start <= late[0].timestamp < rows[1].end


def itertools_pairs(items: Sequence[datetime]) -> list[tuple[datetime, datetime]]:
    return [(a.astimezone(UTC), b.astimezone(UTC)) for a, b in itertools.pairwise(items)]


async def test_weeks_start_on_monday_and_months_on_the_first_in_local_time(
    loaded: Database,
) -> None:
    weeks = await an.usage(loaded, since=SINCE, until=UNTIL, bucket="week", tz=BERLIN)
    # The week of Monday 23 March, from the window's start; then the week of Monday 30
    # March, up to the window's end: partial buckets say what they cover.
    assert [(r.start, r.end) for r in weeks] == [
        (SINCE, datetime(2026, 3, 30, tzinfo=BERLIN)),
        (datetime(2026, 3, 30, tzinfo=BERLIN), UNTIL),
    ]
    months = await an.usage(loaded, since=SINCE, until=UNTIL, bucket="month", tz=BERLIN)
    assert [(r.start, r.end) for r in months] == [(SINCE, UNTIL)]
    full = await an.usage(
        loaded,
        since=datetime(2026, 3, 1, tzinfo=BERLIN),
        until=datetime(2026, 4, 1, tzinfo=BERLIN),
        bucket="month",
        tz=BERLIN,
    )
    assert full[0].start.astimezone(BERLIN) == datetime(2026, 3, 1, tzinfo=BERLIN)
    assert full[0].end.astimezone(BERLIN) == datetime(2026, 4, 1, tzinfo=BERLIN)
    assert sum(r.requests for r in weeks) == months[0].requests == len(CALLS)


async def test_where_filters_on_columns_meta_keys_and_lists(loaded: Database) -> None:
    def total(rows: list[an.UsageRow]) -> int:
        return sum(r.requests for r in rows)

    window: dict[str, Any] = {"since": SINCE, "until": UNTIL}
    red = await an.usage(loaded, **window, where={"meta.team": "red"})
    assert total(red) == sum(
        c.metadata.extra is not None and c.metadata.extra.get("team") == "red" for c in CALLS
    )
    both = await an.usage(
        loaded, **window, where={"model": ["gpt-4o", "mistral-large"], "user": "ana"}
    )
    assert total(both) == sum(
        c.model in ("gpt-4o", "mistral-large") and c.internal_metadata.user_id == "ana"
        for c in CALLS
    )
    no_user = await an.usage(loaded, **window, where={"user_id": None, "rate_limited": "true"})
    assert total(no_user) == sum(
        c.internal_metadata.user_id is None and bool(c.was_rate_limited) for c in CALLS
    )


# -- latency ---------------------------------------------------------------------------


async def test_latency_percentiles_are_nearest_rank_and_hidden_under_few_samples(
    loaded: Database,
) -> None:
    rows = await an.latency(loaded, since=SINCE, until=UNTIL, by="model")

    for row in rows:
        calls = [c for c in CALLS if c.model == row.group["model"]]
        assert row.request == expected_latency([ms(c.latency) for c in calls if c.latency])  # type: ignore[misc]
        assert row.total == expected_latency(
            [ms(c.total_latency) for c in calls if c.total_latency]  # type: ignore[misc]
        )
    by_model = {r.group["model"]: r.request for r in rows}
    assert by_model["gpt-4o"].p99 is not None  # 100+ samples
    assert by_model["claude-sonnet"].p95 is not None
    assert by_model["claude-sonnet"].p99 is None
    assert by_model["mistral-large"].p95 is None
    assert by_model["mistral-large"].p90 is not None


async def test_latency_of_an_empty_bucket_has_no_samples(loaded: Database) -> None:
    rows = await an.latency(loaded, since=SINCE, until=UNTIL, bucket="day")
    assert rows[0].request == an.LatencyStats(0, None, None, None, None, None, None)
    day = [c for c in CALLS if rows[3].start <= c.timestamp < rows[3].end and c.latency]
    assert rows[3].request == expected_latency([ms(c.latency) for c in day])  # type: ignore[misc]


# -- runs and steps ----------------------------------------------------------------------

RUN_WINDOW: dict[str, Any] = {
    "since": datetime(2026, 3, 29, tzinfo=UTC),
    "until": datetime(2026, 3, 30, tzinfo=UTC),
}


async def test_runs_by_status_and_workflow(loaded: Database) -> None:
    rows = await an.run_status_counts(loaded, **RUN_WINDOW)
    expected: dict[tuple[str, str], int] = {}
    for fact in RUN_FACTS.values():
        key = (fact["workflow"], fact["status"])
        expected[key] = expected.get(key, 0) + 1
    assert {(r.workflow, r.status): r.runs for r in rows} == expected


async def test_run_durations_per_workflow_are_exact_milliseconds(loaded: Database) -> None:
    rows = await an.run_durations(loaded, **RUN_WINDOW)
    for row in rows:
        durations = [
            f["duration"]
            for f in RUN_FACTS.values()
            if f["workflow"] == row.workflow and f["duration"] is not None
        ]
        assert row.duration == expected_latency(durations)
    assert {r.workflow for r in rows} == {"triage", "summarise"}


async def test_slowest_runs_with_step_counts(loaded: Database) -> None:
    rows = await an.list_runs(loaded, **RUN_WINDOW, order="slowest", limit=3)
    ended = sorted(
        (f["duration"], run_id) for run_id, f in RUN_FACTS.items() if f["duration"] is not None
    )
    assert [r.id for r in rows] == [run_id for _, run_id in reversed(ended)][:3]
    for row in rows:
        fact = RUN_FACTS[row.id]
        assert (row.duration_ms, row.steps, row.failed_steps) == (
            fact["duration"],
            fact["steps"],
            fact["failed"],
        )
    failed = await an.list_runs(loaded, **RUN_WINDOW, status="error", workflow="triage")
    assert [r.id for r in failed] == [uuid.UUID(int=2)]


async def test_a_run_with_its_steps_on_a_timeline(loaded: Database) -> None:
    detail = await an.get_run(loaded, uuid.UUID(int=2))
    assert detail is not None
    assert detail.run.duration_ms == 800
    assert [s.offset_ms for s in detail.steps] == [0, 1, 2]
    assert [s.status for s in detail.steps] == ["error", "finished", "finished"]
    assert [s.duration_ms for s in detail.steps] == [800_999 // (s + 2) // 1000 for s in range(3)]
    assert await an.get_run(loaded, uuid.UUID(int=99)) is None


async def test_step_failure_rate_by_type_and_name(loaded: Database) -> None:
    rows = await an.step_failures(loaded, **RUN_WINDOW)
    got = {(r.type, r.name): (r.steps, r.failed) for r in rows}
    assert got == {("llm", "ask"): (8, 2), ("tool", "search"): (5, 1)}
    assert rows[0].failure_rate == 2 / 8


async def test_most_frequent_errors_by_type_and_message(loaded: Database) -> None:
    rows = await an.top_errors(loaded, since=SINCE, until=UNTIL)
    limited = [c for c in CALLS if isinstance(c.error, dict)]
    reset = [c for c in CALLS if c.error == "connection reset"]
    assert [(r.type, r.message, r.count) for r in rows] == [
        ("RateLimitError", "slow down", len(limited)),
        (None, "connection reset", len(reset)),
    ]
    assert rows[0].last_seen == max(c.timestamp for c in limited)


# -- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"by": "colour"}, "by"),
        ({"bucket": "fortnight"}, "bucket"),
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"since": "yesterday"}, "since"),
        ({"since": "1h", "until": "2h"}, "since must be before until"),
        ({"where": {"chat_request": "x"}}, "where key 'chat_request'"),
        ({"where": {"retries": "many"}}, "where['retries']"),
        ({"since": "90d", "bucket": "minute"}, "bucket 'minute'"),
    ],
)
async def test_bad_arguments_raise_value_error_naming_the_parameter(
    tmp_path: Path, arguments: dict[str, Any], named: str
) -> None:
    async with await eventlog.open_database(tmp_path / "x.db", migrate=True) as db:
        with pytest.raises(ValueError, match="^" + named.replace("[", r"\[")):
            await an.usage(db, now=NOW, **arguments)


def test_time_presets_iso_and_local_times_parse_to_utc() -> None:
    assert an.parse_time("24h", "since", now=NOW) == NOW - timedelta(hours=24)
    assert an.parse_time("90d", "since", now=NOW) == NOW - timedelta(days=90)
    assert an.parse_time("2026-03-29T10:00:00+02:00", "since", now=NOW) == datetime(
        2026, 3, 29, 8, tzinfo=UTC
    )
    assert an.parse_time("2026-03-30", "since", now=NOW, tz=BERLIN) == datetime(
        2026, 3, 29, 22, tzinfo=UTC
    )


CHRONICLE_TABLES = ("chronicle_events", "chronicle_runs", "chronicle_steps")


# -- both backends, one answer -----------------------------------------------------------


async def every_answer(db: Database) -> list[Any]:
    window: dict[str, Any] = {"since": SINCE, "until": UNTIL}
    return [
        await an.usage(db, **window, by=["model", "user"], bucket="day", tz="Europe/Berlin"),
        await an.latency(db, **window, by=["provider", "application"], bucket="hour"),
        await an.latency(db, **window, by="workflow", where={"meta.team": "blue"}),
        await an.run_status_counts(db, **RUN_WINDOW),
        await an.run_durations(db, **RUN_WINDOW),
        await an.list_runs(db, **RUN_WINDOW),
        await an.get_run(db, uuid.UUID(int=4)),
        await an.step_failures(db, **RUN_WINDOW),
        await an.top_errors(db, **window),
    ]


async def test_postgresql_and_sqlite_give_identical_answers(
    migrated_postgres_url: str, tmp_path: Path
) -> None:
    answers = []
    for url in (f"sqlite:///{tmp_path / 'same.db'}", migrated_postgres_url):
        async with await eventlog.open_database(url, migrate=url.startswith("sqlite")) as db:
            async with db.engine.begin() as conn:
                for table in (*CHRONICLE_TABLES, "eventlog_rollup_hourly"):
                    await conn.execute(text(f"DELETE FROM {table}"))
            await load(db)
            answers.append(await every_answer(db))
    assert answers[0] == answers[1]


# -- the command line --------------------------------------------------------------------


async def cli(*args: str) -> int:
    """Run ``eventlog`` in-process (it runs its own event loop, so in a thread)."""
    return await asyncio.to_thread(main, list(args))


WINDOW_ARGS = ("--since", "2026-03-25", "--until", "2026-03-31")


async def test_stats_json_is_the_documented_contract(
    loaded: Database, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        await cli("stats", "--url", db_url, *WINDOW_ARGS, "--by", "model", "--format", "json") == 0
    )
    records = orjson.loads(capsys.readouterr().out)
    assert [list(r) for r in records] == [list(an.STATS_KEYS)] * len(MODELS)
    assert [r["group"] for r in records] == [{"model": m} for m in sorted(MODELS)]
    assert records[0]["start"] == "2026-03-25T00:00:00Z"
    assert list(records[0]["latency_ms"]) == list(an.LATENCY_KEYS)
    gpt = next(r for r in records if r["group"]["model"] == "gpt-4o")
    assert gpt["requests"] == sum(c.model == "gpt-4o" for c in CALLS)

    assert (
        await cli("stats", "--url", db_url, *WINDOW_ARGS, "--bucket", "day", "--format", "jsonl")
        == 0
    )
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["start"][:10] for line in lines] == [f"2026-03-{d}" for d in range(25, 31)]


async def test_stats_csv_has_a_flat_header(
    loaded: Database, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--by", "model", "--where", "meta.team=red", "--format", "csv")
    assert await cli("stats", "--url", db_url, *WINDOW_ARGS, *args) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0])[:5] == ["start", "end", "model", "requests", "errors"]
    assert "latency_ms_p95" in rows[0]
    red = sum(c.metadata.extra is not None and c.metadata.extra.get("team") == "red" for c in CALLS)
    assert sum(int(r["requests"]) for r in rows) == red


async def test_stats_table_renders_groups_and_the_window(
    loaded: Database,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert (
        await cli("stats", "--url", db_url, *WINDOW_ARGS, "--by", "model", "--tz", "Europe/Berlin")
        == 0
    )
    out = capsys.readouterr().out
    assert all(model in out for model in MODELS)
    assert (
        f"{len(CALLS)} LLM calls from 2026-03-25 00:00 to 2026-03-31 00:00 (Europe/Berlin)" in out
    )


async def test_runs_and_run_print_tables(
    loaded: Database,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    since = ("--since", "2026-03-29", "--until", "2026-03-30")
    assert await cli("runs", "--url", db_url, *since, "--status", "error") == 0
    out = capsys.readouterr().out
    assert str(uuid.UUID(int=2)) in out
    assert str(uuid.UUID(int=5)) in out
    assert "2 runs in the window: 2 error" in out

    assert await cli("runs", "--url", db_url, *since, "--slowest", "--format", "jsonl") == 0
    first = orjson.loads(capsys.readouterr().out.splitlines()[0])
    assert (first["id"], first["duration_ms"]) == (str(uuid.UUID(int=4)), 40_000)

    assert await cli("run", "--url", db_url, str(uuid.UUID(int=2))) == 0
    out = capsys.readouterr().out
    assert "1 failed" in out
    assert "search" in out
    assert "+1 ms" in out


async def test_cli_misuse_exits_2_and_a_missing_run_exits_1(
    db: Database, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (
        ["stats", "--by", "colour"],
        ["stats", "--where", "model"],
        ["stats", "--tz", "Mars/Olympus"],
        ["stats", "--since", "yesterday"],
        ["run", "not-a-uuid"],
    ):
        assert await cli(*args[:1], "--url", db_url, *args[1:]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert "Traceback" not in err
    assert await cli("run", "--url", db_url, str(uuid.UUID(int=77))) == 1
    assert "no run" in capsys.readouterr().err


async def test_stats_on_a_database_without_tables_says_to_migrate(
    backend: str, fresh_url: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("stats", "--url", fresh_url(backend)) == 1
    err = capsys.readouterr().err
    assert "eventlog migrate" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("0", "0.00"),
        ("0.000000005", "0.000000005"),
        ("0.0000004", "0.0000004"),
        ("0.0000425", "0.0000425"),
        ("0.05", "0.050"),
        ("1.5", "1.50"),
        ("12345.678", "12,345.68"),
    ],
)
def test_a_cost_above_zero_never_reads_as_zero(value: str, text: str) -> None:
    from decimal import Decimal

    assert an.usd_text(Decimal(value)) == text


async def test_runs_carry_the_cost_of_their_calls_and_sort_by_it(db: Database) -> None:
    from decimal import Decimal

    at = datetime(2026, 3, 29, 9, tzinfo=UTC)
    runs = [uuid.UUID(int=700 + i) for i in range(3)]
    entries: list[Any] = []
    for i, run_id in enumerate(runs):
        entries.append(RunStartEvent(id=run_id, name="triage", time=at + timedelta(minutes=i)))
        entries.append(RunUpdateEvent(id=run_id, time=at + timedelta(minutes=i, seconds=5)))
        for k in range(i + 1):  # run i has i + 1 calls of growing size
            entries.append(
                ProxyLogEvent(
                    timestamp=at + timedelta(minutes=i, seconds=k),
                    provider="openai",
                    model="gpt-4o-2024-08-06",
                    response={"usage": {"prompt_tokens": 1000 * (k + 1), "completion_tokens": 7}},
                    metadata={"run_id": run_id},
                )
            )
    entries.append(  # an unpriced call in the cheapest run
        ProxyLogEvent(timestamp=at, model="house-model", metadata={"run_id": runs[0]})
    )
    await db.write_log_batch(entries)

    async with db.engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT run_id, COUNT(*), SUM(cost_usd), "
                "SUM(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END) FROM chronicle_events "
                "WHERE event_type = 'chronicle_llm_request' GROUP BY run_id"
            )
        )
        expected = {
            uuid.UUID(str(r[0])): (r[1], Decimal(str(r[2])).quantize(Decimal("1e-9")), r[3])
            for r in found
        }
    window = {"since": at - timedelta(hours=1), "until": at + timedelta(hours=1)}
    listed = await an.list_runs(db, order="expensive", **window)
    assert [r.id for r in listed] == [runs[2], runs[1], runs[0]]
    for row in listed:
        assert (row.llm_calls, row.cost_usd, row.unpriced_calls) == expected[row.id]
    assert listed[-1].unpriced_calls == 1
    with pytest.raises(ValueError, match=r"^order must be"):
        await an.list_runs(db, order="cheapest", **window)  # type: ignore[arg-type]


# -- UTC buckets of a zone whose offset changed just before the window --------------------

AZORES = ZoneInfo("Atlantic/Azores")  # UTC-1 in winter, UTC+0 from 2026-03-29 01:00 UTC


def _azores_calls() -> list[ProxyLogEvent]:
    """Calls around the Azores' move to UTC+0 and the month ends after it; some with no
    latency."""
    moments = [
        datetime(2026, 3, 28, 23, 30, tzinfo=UTC),  # 22:30 on 03-28 there
        datetime(2026, 3, 29, 0, 30, tzinfo=UTC),  # 23:30 on 03-28 there (UTC-1)
        datetime(2026, 3, 29, 11, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 3, 29, 12, tzinfo=UTC),
        datetime(2026, 3, 29, 12, 0, 0, 500_000, tzinfo=UTC),
        datetime(2026, 3, 29, 15, 45, tzinfo=UTC),
        datetime(2026, 3, 29, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 3, 30, tzinfo=UTC),
        datetime(2026, 3, 30, 9, 10, tzinfo=UTC),
        datetime(2026, 3, 30, 23, 30, tzinfo=UTC),
        datetime(2026, 3, 31, tzinfo=UTC),
        datetime(2026, 3, 31, 13, tzinfo=UTC),
        datetime(2026, 3, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 4, 1, tzinfo=UTC),
        datetime(2026, 4, 1, 0, 30, tzinfo=UTC),
        datetime(2026, 4, 15, 12, tzinfo=UTC),
        datetime(2026, 4, 30, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 5, 1, tzinfo=UTC),
        datetime(2026, 5, 9, 23, tzinfo=UTC),
        datetime(2026, 5, 10, tzinfo=UTC),  # the window's end: outside
    ]
    made = []
    for i, at in enumerate(moments):
        for k in range(1 + i % 3):
            made.append(
                ProxyLogEvent(
                    timestamp=at,
                    provider="openai",
                    model=["gpt-4o", "mistral-large"][k % 2],
                    latency=None if (i + k) % 4 == 1 else timedelta(milliseconds=100 + 37 * i + k),
                    internal_metadata=InternalMetadata(user_id=USERS[(i + k) % 4]),
                )
            )
    return made


AZORES_CALLS = _azores_calls()


def counts_in(start: datetime, end: datetime) -> tuple[int, int]:
    """Calls of AZORES_CALLS in ``[start, end)``, and those of them with a latency."""
    inside = [c for c in AZORES_CALLS if start <= c.timestamp < end]
    return len(inside), sum(c.latency is not None for c in inside)


@pytest.mark.parametrize("source", ["raw", "auto"])
async def test_utc_months_and_days_of_a_zone_that_just_moved_to_utc_count_every_call(
    db: Database, source: str
) -> None:
    await db.write_log_batch(AZORES_CALLS)

    # Months: the window starts on 03-30, when the Azores are at UTC+0 (and stay so).
    since, until = datetime(2026, 3, 30, tzinfo=UTC), datetime(2026, 5, 10, tzinfo=UTC)
    months = [
        (since, datetime(2026, 4, 1, tzinfo=UTC)),
        (datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC)),
        (datetime(2026, 5, 1, tzinfo=UTC), until),
    ]
    window: dict[str, Any] = {"since": since, "until": until, "tz": "Atlantic/Azores"}
    rows = await an.usage(db, **window, bucket="month", source=source)
    assert [(r.start, r.end) for r in rows] == months
    assert [r.requests for r in rows] == [counts_in(*m)[0] for m in months]
    assert [r.requests for r in rows] == [12, 8, 4]  # 03-30 and 03-31; April; May
    assert sum(r.requests for r in rows) == counts_in(since, until)[0]
    timed = await an.latency(db, **window, bucket="month", source=source)
    assert [(r.start, r.end) for r in timed] == months
    assert [r.request.count for r in timed] == [counts_in(*m)[1] for m in months]
    # "auto" reads this long window's histograms from the rollup.
    assert {r.request.approximate for r in timed} == {source == "auto"}

    # Days: from noon on 03-29 (UTC+0 there since 01:00), the first day's calls from
    # noon to midnight in the first bucket.
    since, until = datetime(2026, 3, 29, 12, tzinfo=UTC), datetime(2026, 4, 2, 6, tzinfo=UTC)
    days = [
        (since, datetime(2026, 3, 30, tzinfo=UTC)),
        (datetime(2026, 3, 30, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC)),
        (datetime(2026, 3, 31, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),
        (datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC)),
        (datetime(2026, 4, 2, tzinfo=UTC), until),
    ]
    window = {"since": since, "until": until, "tz": AZORES}
    rows = await an.usage(db, **window, bucket="day", source=source)
    assert [(r.start, r.end) for r in rows] == days
    assert [r.requests for r in rows] == [counts_in(*d)[0] for d in days]
    assert rows[0].requests == 7  # at 12:00, 12:00:00.5, 15:45 and 23:59:59.999999
    assert rows[0].users == len(
        {
            c.internal_metadata.user_id
            for c in AZORES_CALLS
            if days[0][0] <= c.timestamp < days[0][1]
        }
        - {None}
    )
    timed = await an.latency(db, **window, bucket="day", source=source)
    assert [(r.start, r.end) for r in timed] == days
    assert [r.request.count for r in timed] == [counts_in(*d)[1] for d in days]
    first = [ms(c.latency) for c in AZORES_CALLS if days[0][0] <= c.timestamp < days[0][1]]
    assert timed[0].request == expected_latency([v for v in first if v is not None])


# -- a tzinfo that cannot be hashed --------------------------------------------------------


class UnhashablePlusTwo(tzinfo):
    """UTC+2 all year, as a tzinfo class that is not hashable (as dateutil's are not)."""

    __hash__ = None  # type: ignore[assignment]

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=2)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "+02"


@pytest.mark.parametrize("source", ["auto", "raw"])
async def test_an_unhashable_tzinfo_buckets_like_the_same_fixed_offset(
    loaded: Database, source: str
) -> None:
    zone = UnhashablePlusTwo()
    with pytest.raises(TypeError):
        hash(zone)
    plus_two = timezone(timedelta(hours=2))
    window: dict[str, Any] = {"since": SINCE, "until": UNTIL, "source": source}

    rows = await an.usage(loaded, **window, bucket="day", tz=zone)

    assert rows == await an.usage(loaded, **window, bucket="day", tz=plus_two)
    # Local days start at 22:00 UTC; the first and last cut to the window.
    starts = [SINCE, *(datetime(2026, 3, d, 22, tzinfo=UTC) for d in range(25, 31)), UNTIL]
    assert [(r.start, r.end) for r in rows] == list(itertools.pairwise(starts))
    for row in rows:
        calls = [c for c in CALLS if row.start <= c.timestamp < row.end]
        assert usage_fields(row) == expected_usage(calls)
    assert sum(r.requests for r in rows) == len(CALLS)
    by_model = await an.usage(loaded, **window, bucket="day", tz=zone, by="model")
    assert by_model == await an.usage(loaded, **window, bucket="day", tz=plus_two, by="model")
    timed = await an.latency(loaded, **window, bucket="day", tz=zone)
    assert timed == await an.latency(loaded, **window, bucket="day", tz=plus_two)
    assert [r.request.count for r in timed] == [
        sum(c.latency is not None for c in CALLS if r.start <= c.timestamp < r.end) for r in timed
    ]


async def test_latency_for_pairs_rows_by_bucket_and_group_not_by_position(
    loaded: Database,
) -> None:
    # usage() and latency() read one after the other: a group can be in one list only.
    window: dict[str, Any] = {"since": SINCE, "until": UNTIL, "by": "model", "bucket": "day"}
    usage = await an.usage(loaded, **window)
    latency = await an.latency(loaded, **window)
    without_gpt = [row for row in usage if row.group["model"] != "gpt-4o"]
    assert an.latency_for(usage, latency) == latency
    assert an.latency_for(without_gpt, latency) == [
        lat for lat in latency if lat.group["model"] != "gpt-4o"
    ]
    claude_only = [lat for lat in latency if lat.group["model"] == "claude-sonnet"]
    paired = an.latency_for(usage, claude_only)
    for use, lat in zip(usage, paired, strict=True):
        assert (lat.start, lat.end, lat.group) == (use.start, use.end, use.group)
        if use.group["model"] != "claude-sonnet":
            assert (lat.request.count, lat.request.p50, lat.ttft.avg) == (0, None, None)
    assert len(an.stats_records(usage, claude_only)) == len(usage)
    by_provider = await an.latency(loaded, **{**window, "by": "provider"})
    hourly = await an.latency(loaded, **{**window, "bucket": "hour"})
    for other in (by_provider, hourly):
        with pytest.raises(ValueError, match="same arguments"):
            an.latency_for(usage, other)


async def test_a_live_runs_header_steps_and_calls_are_read_in_one_snapshot(
    db: Database, db_url: str
) -> None:
    # A run page's header counts the run's steps; the table lists them: a step logged
    # between the two reads must be in both or in neither.
    run_id = uuid.uuid4()
    started = NOW - timedelta(minutes=5)
    await db.write_log_batch(
        [
            RunStartEvent(id=run_id, name="triage", time=started),
            StepStartEvent(step_id=uuid.uuid4(), run_id=run_id, type="llm", name="a", time=started),
        ]
    )
    late_step = StepStartEvent(step_id=uuid.uuid4(), run_id=run_id, type="tool", name="b", time=NOW)

    with another_writer_commits(db, db_url, [late_step], before="offset_ms") as fired:
        detail = await an.get_run(db, run_id)
    assert fired, "the steps' query was not seen"
    assert detail is not None
    assert (detail.run.steps, [s.name for s in detail.steps]) == (1, ["a"])
    again = await an.get_run(db, run_id)
    assert again is not None
    assert (again.run.steps, [s.name for s in again.steps]) == (2, ["a", "b"])


@pytest.mark.parametrize("columns", [100, 121, 130, 145, 200])
async def test_stats_table_fits_the_terminal_and_never_cuts_a_column(
    loaded: Database,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    columns: int,
) -> None:
    # The wide table was chosen from 120 columns on, and rich cut its right-hand
    # columns (p95, p99) when its cells needed more than the terminal had.
    monkeypatch.setenv("COLUMNS", str(columns))
    by = ("--by", "model", "--by", "user", "--by", "application")
    assert await cli("stats", "--url", db_url, *WINDOW_ARGS, *by) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "calls" in line)
    table = lines[: lines.index(next(line for line in lines if "LLM calls from" in line))]
    assert max(len(line.rstrip()) for line in table) <= columns
    # The last column is whole: p99 (p95 in a narrow table with a time column).
    assert header.rstrip().endswith(("p99 ms", "p99", "p95"))
