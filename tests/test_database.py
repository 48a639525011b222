"""What lands in the tables, on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, text

from eventlog import (
    Database,
    EventPayload,
    ProxyLogEntry,
    ProxyLogEvent,
    RunStartEvent,
    RunUpdateEvent,
    StepEndEvent,
    StepErrorEvent,
    StepStartEvent,
    StepStateEvent,
    start_database_logger,
)
from eventlog.ids import uuid7
from eventlog.schema import chronicle_events, chronicle_runs, chronicle_steps

T0 = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC)


async def log(db: Database, entries: Sequence[ProxyLogEntry], batch_size: int = 100) -> None:
    """Send ``entries`` through a logger and wait until they are written."""
    sender, task = start_database_logger(db, batch_size=batch_size, debounce_time=60)
    sender.send(entries)
    sender.close()
    await task
    stats = sender.stats()
    assert stats.failed_writes == 0, stats
    assert stats.written == len(entries)


async def rows(db: Database, table: Any, *where: Any) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        result = await conn.execute(select(table).where(*where).order_by(table.c.id))
        return [dict(r) for r in result.mappings()]


async def count(db: Database, table: Any) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


def llm_event(**kwargs: Any) -> ProxyLogEvent:
    return ProxyLogEvent(
        request={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        response={
            "model": "gpt-4o-2024-08-06",
            "choices": [{"message": {"role": "assistant", "content": "hello"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        },
        provider="openai",
        **kwargs,
    )


async def test_llm_call_fills_every_column(db: Database) -> None:
    run_id, step_id = uuid7(), uuid7()
    event = llm_event(
        timestamp=T0,
        latency=timedelta(milliseconds=1234),
        total_latency=2.5,
        num_retries=2,
        was_rate_limited=True,
        error={"message": "first try failed"},
        metadata={
            "application": "chat",
            "environment": "prod",
            "organization_id": "req-org",
            "project_id": "req-proj",
            "user_id": "req-user",
            "workflow_id": "wf",
            "workflow_name": "Workflow",
            "run_id": run_id,
            "step_id": step_id,
            "step_index": 3,
            "prompt_id": "p",
            "prompt_version": 7,
            "custom": {"nested": [1, 2]},
        },
        internal_metadata={"organization_id": "org", "project_id": "proj", "user_id": "user"},
        response_meta={"region": "us"},
        time_to_first_token=0.3,
    )
    await log(db, [event])
    (row,) = await rows(db, chronicle_events)
    assert row == {
        "id": event.id,
        "event_type": "chronicle_llm_request",
        "organization_id": "org",
        "project_id": "proj",
        "user_id": "user",
        "chat_request": event.request,
        "chat_response": event.response,
        "error": {"message": "first try failed"},
        "provider": "openai",
        "model": "gpt-4o-2024-08-06",
        "application": "chat",
        "environment": "prod",
        "request_organization_id": "req-org",
        "request_project_id": "req-proj",
        "request_user_id": "req-user",
        "workflow_id": "wf",
        "workflow_name": "Workflow",
        "run_id": run_id,
        "step_id": step_id,
        "step_index": 3,
        "prompt_id": "p",
        "prompt_version": 7,
        "meta": {"custom": {"nested": [1, 2]}},
        "response_meta": {"region": "us"},
        "retries": 2,
        "rate_limited": True,
        "request_latency_ms": 1234,
        "total_latency_ms": 2500,
        "prompt_tokens": 9,
        "completion_tokens": 2,
        "total_tokens": 11,
        "created_at": T0,
        "cache_read_tokens": None,
        "cache_write_tokens": None,
        "reasoning_tokens": None,
        # gpt-4o-2024-08-06 at $2.50 / $10 per million: 9 * 2.5e-6 + 2 * 10e-6
        "cost_usd": Decimal("0.000042500"),
        "price_id": row["price_id"],
        "ttft_ms": 300,
        "status": "rate_limited",  # failed, after a rate limit
        "error_type": None,
    }
    assert row["price_id"] is not None
    assert "gpt-4o" in row["price_id"]


async def test_absent_values_are_sql_null_not_json_null(db: Database) -> None:
    await log(db, [ProxyLogEvent(), EventPayload(type="bare")])
    columns = ["chat_request", "chat_response", "error", "meta", "response_meta", "model"]
    async with db.engine.connect() as conn:
        nulls = (
            await conn.execute(
                text(
                    "SELECT "
                    + ", ".join(f"SUM(CASE WHEN {c} IS NULL THEN 1 ELSE 0 END)" for c in columns)
                    + " FROM chronicle_events"
                )
            )
        ).one()
    assert list(nulls) == [2] * len(columns)


async def test_created_at_keeps_microseconds(db: Database) -> None:
    times = [T0 + timedelta(microseconds=i) for i in (0, 1, 999_999)]
    await log(db, [EventPayload(type="t", time=t) for t in times])
    stored = sorted(r["created_at"] for r in await rows(db, chronicle_events))
    assert stored == times


async def test_anthropic_usage_fills_the_token_columns(db: Database) -> None:
    event = ProxyLogEvent(
        provider="anthropic",
        model="claude-sonnet-4",
        response={"usage": {"input_tokens": 30, "output_tokens": 12}},
    )
    await log(db, [event])
    (row,) = await rows(db, chronicle_events)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (30, 12, 42)


async def test_generic_event_row(db: Database) -> None:
    run_id, step_id = uuid7(), uuid7()
    event = EventPayload(
        type="feedback",
        data={"score": 5},
        error={"message": "m"},
        run_id=run_id,
        step_id=step_id,
        time=T0,
        internal_metadata={"organization_id": "org"},
    )
    await log(db, [event])
    (row,) = await rows(db, chronicle_events)
    assert row["event_type"] == "feedback"
    assert row["meta"] == {"score": 5}
    assert row["error"] == {"message": "m"}
    assert (row["run_id"], row["step_id"], row["created_at"]) == (run_id, step_id, T0)
    assert row["organization_id"] == "org"


async def test_same_event_sent_twice_is_stored_once(db: Database) -> None:
    event = llm_event()
    payload = EventPayload(type="x")
    await log(db, [event, payload, event])  # twice in one batch
    await log(db, [event, payload])  # and again later
    assert await count(db, chronicle_events) == 2


async def test_batch_far_above_the_bind_parameter_limit_is_written(db: Database) -> None:
    # 5,000 rows x 32 columns = 160,000 values: one naive multi-row INSERT would exceed
    # the drivers' limit (32,767 on asyncpg, 32,766 on SQLite).
    entries = [llm_event() for _ in range(5_000)]
    await db.write_log_batch(entries)
    assert await count(db, chronicle_events) == 5_000


async def test_large_message_is_split_into_batches_and_all_written(db: Database) -> None:
    entries = [EventPayload(type="bulk", data={"i": i}) for i in range(2_500)]
    sender, task = start_database_logger(db, batch_size=1000, debounce_time=60)
    sender.send(entries)
    sender.close()
    await task
    assert sender.stats().batches == 3
    assert await count(db, chronicle_events) == 2_500


class Signalling:
    """Wraps a database; ``done`` is set once ``expected`` entries are committed."""

    def __init__(self, db: Database, expected: int) -> None:
        self.db = db
        self.expected = expected
        self.written = 0
        self.done = asyncio.Event()

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
        await self.db.write_log_batch(entries)
        self.written += len(entries)
        if self.written >= self.expected:
            self.done.set()


async def test_sends_from_eight_threads_are_all_written_once(db: Database) -> None:
    per_thread = 500
    # batch_size divides the total and the debounce is long: every batch is a full one,
    # written because the senders woke the writer, before close() flushes anything.
    signalling = Signalling(db, expected=8 * per_thread)
    sender, task = start_database_logger(signalling, batch_size=100, debounce_time=3600)
    barrier = threading.Barrier(8)
    sent: list[list[uuid.UUID]] = [[] for _ in range(8)]

    def produce(n: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            event = EventPayload(type="thread", data={"thread": n, "i": i})
            sent[n].append(event.id)
            if i % 50 == 0:
                sender.send([event])
            else:
                sender.send(event)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        await asyncio.to_thread(thread.join)
    await asyncio.wait_for(signalling.done.wait(), 60)
    assert sender.stats().batches == 40
    sender.close()
    await task
    async with db.engine.connect() as conn:
        ids = (await conn.execute(select(chronicle_events.c.id))).scalars().all()
    assert len(ids) == 8 * per_thread
    assert set(ids) == {i for ids_ in sent for i in ids_}
    assert sender.stats().written == sender.stats().sent == 8 * per_thread


async def test_entries_are_applied_in_the_order_sent(db: Database) -> None:
    run_id = uuid7()
    await log(
        db,
        [
            RunStartEvent(id=run_id, name="r", time=T0),
            RunUpdateEvent(id=run_id, status="running", info={"n": 1}, time=T0),
            RunUpdateEvent(id=run_id, status="finished", output="o", info={"n": 2}, time=T0),
        ],
    )
    (run,) = await rows(db, chronicle_runs)
    assert (run["status"], run["output"], run["info"]) == ("finished", "o", {"n": 2})


def _workflow(run_id: uuid.UUID, step_id: uuid.UUID, child_id: uuid.UUID) -> list[ProxyLogEntry]:
    """A run with a step and a failed child step, each event a second after the last."""
    t = [T0 + timedelta(seconds=i) for i in range(8)]
    return [
        RunStartEvent(
            id=run_id,
            name="pipeline",
            description="d",
            application="app",
            environment="test",
            input={"q": "?"},
            trace_id="trace",
            span_id="span",
            tags=["a", "b"],
            info={"shared": "start", "from_start": 1},
            time=t[0],
        ),
        StepStartEvent(
            step_id=step_id,
            run_id=run_id,
            type="llm",
            name="ask",
            span_id="s1",
            tags=["x"],
            info={"shared": "start", "s": 1},
            input={"prompt": "p"},
            time=t[1],
        ),
        StepStateEvent(step_id=step_id, run_id=run_id, state="waiting", time=t[2]),
        StepStartEvent(
            step_id=child_id, run_id=run_id, type="tool", parent_step=step_id, time=t[3]
        ),
        StepErrorEvent(step_id=child_id, run_id=run_id, error={"message": "boom"}, time=t[4]),
        StepEndEvent(
            step_id=step_id,
            run_id=run_id,
            output={"answer": 42},
            info={"shared": "end", "e": 2},
            time=t[5],
        ),
        RunUpdateEvent(
            id=run_id,
            status="finished",
            output={"final": True},
            info={"shared": "update", "u": 3},
            time=t[6],
        ),
    ]


def _expected(run_id: uuid.UUID, step_id: uuid.UUID, child_id: uuid.UUID) -> tuple[Any, Any]:
    t = [T0 + timedelta(seconds=i) for i in range(8)]
    run = {
        "id": run_id,
        "name": "pipeline",
        "description": "d",
        "application": "app",
        "environment": "test",
        "input": {"q": "?"},
        "output": {"final": True},
        "status": "finished",
        "trace_id": "trace",
        "span_id": "span",
        "tags": ["a", "b"],
        "info": {"shared": "update", "from_start": 1, "u": 3},
        "updated_at": t[6],
        "created_at": t[0],
    }
    step = {
        "id": step_id,
        "run_id": run_id,
        "type": "llm",
        "parent_step": None,
        "name": "ask",
        "input": {"prompt": "p"},
        "output": {"answer": 42},
        "status": "finished",
        "tags": ["x"],
        "info": {"shared": "end", "s": 1, "e": 2},
        "span_id": "s1",
        "start_time": t[1],
        "end_time": t[5],
    }
    child = {
        "id": child_id,
        "run_id": run_id,
        "type": "tool",
        "parent_step": step_id,
        "name": None,
        "input": None,
        "output": {"message": "boom"},
        "status": "error",
        "tags": None,
        "info": None,
        "span_id": None,
        "start_time": t[3],
        "end_time": t[4],
    }
    return run, sorted([step, child], key=lambda r: r["id"])


async def test_workflow_events_in_order_build_runs_and_steps(db: Database) -> None:
    ids = (uuid7(), uuid7(), uuid7())
    await log(db, _workflow(*ids))
    run, steps = _expected(*ids)
    assert await rows(db, chronicle_runs) == [run]
    assert await rows(db, chronicle_steps) == steps


async def test_workflow_events_in_any_order_give_the_same_rows(db: Database) -> None:
    # Every permutation of the 7 events is too many (5,040); take every rotation and
    # reversal, plus a fixed sample of shuffles, each workflow with its own ids.
    base = list(range(7))
    orders = {tuple(base[i:] + base[:i]) for i in range(7)}
    orders |= {tuple(reversed(o)) for o in orders}
    orders |= set(itertools.islice(itertools.permutations(base), 0, 5040, 97))
    expected_runs, expected_steps, entries = [], [], []
    for order in sorted(orders):
        ids = (uuid7(), uuid7(), uuid7())
        events = _workflow(*ids)
        entries.extend(events[i] for i in order)
        run, steps = _expected(*ids)
        expected_runs.append(run)
        expected_steps.extend(steps)
    assert len(orders) > 60
    await log(db, entries, batch_size=50)
    assert await rows(db, chronicle_runs) == sorted(expected_runs, key=lambda r: r["id"])
    assert await rows(db, chronicle_steps) == sorted(expected_steps, key=lambda r: r["id"])


async def test_each_workflow_event_may_arrive_in_its_own_batch_before_its_start(
    db: Database,
) -> None:
    ids = (uuid7(), uuid7(), uuid7())
    for event in reversed(_workflow(*ids)):
        await log(db, [event])
    run, steps = _expected(*ids)
    assert await rows(db, chronicle_runs) == [run]
    assert await rows(db, chronicle_steps) == steps


async def test_run_start_resent_later_does_not_reset_a_finished_run(db: Database) -> None:
    ids = (uuid7(), uuid7(), uuid7())
    events = _workflow(*ids)
    await log(db, events)
    await log(db, events[:2])  # a client retries its start events
    run, steps = _expected(*ids)
    assert await rows(db, chronicle_runs) == [run]
    assert await rows(db, chronicle_steps) == steps


async def test_run_start_may_set_its_own_status(db: Database) -> None:
    run_id = uuid7()
    await log(db, [RunStartEvent(id=run_id, name="r", status="queued")])
    (run,) = await rows(db, chronicle_runs)
    assert run["status"] == "queued"
    await log(db, [RunStartEvent(id=run_id, name="r", status="queued")])
    await log(db, [RunUpdateEvent(id=run_id)])
    (run,) = await rows(db, chronicle_runs)
    assert run["status"] == "finished"  # chronicle: an update without status finishes


async def test_run_update_without_output_keeps_the_output(db: Database) -> None:
    run_id = uuid7()
    await log(
        db,
        [
            RunStartEvent(id=run_id, name="r"),
            RunUpdateEvent(id=run_id, status="running", output={"partial": 1}),
            RunUpdateEvent(id=run_id, status="finished", info={"k": None}),
        ],
    )
    (run,) = await rows(db, chronicle_runs)
    assert run["output"] == {"partial": 1}
    # A key set to null is kept as null on both backends (not deleted, as json_patch would).
    assert run["info"] == {"k": None}


async def test_info_merge_is_shallow_on_both_backends(db: Database) -> None:
    run_id = uuid7()
    await log(
        db,
        [
            RunStartEvent(id=run_id, name="r", info={"nested": {"a": 1, "b": 2}, "keep": 1}),
            RunUpdateEvent(id=run_id, info={"nested": {"a": 9}}),
        ],
    )
    (run,) = await rows(db, chronicle_runs)
    assert run["info"] == {"nested": {"a": 9}, "keep": 1}


async def test_step_state_after_the_end_does_not_reopen_the_step(db: Database) -> None:
    run_id, step_id = uuid7(), uuid7()
    await log(
        db,
        [
            StepStartEvent(step_id=step_id, run_id=run_id, type="t"),
            StepEndEvent(step_id=step_id, run_id=run_id, output=1),
            StepStateEvent(step_id=step_id, run_id=run_id, state="running"),
        ],
    )
    (step,) = await rows(db, chronicle_steps)
    assert step["status"] == "finished"


async def test_hostile_strings_are_stored_verbatim(db: Database) -> None:
    nasty = "'); DROP TABLE chronicle_events; -- \" \\ % $1 ? :name é 日本 🎉"
    event = ProxyLogEvent(
        event_type=nasty,
        provider=nasty,
        model=nasty,
        request={nasty: nasty},
        metadata={"application": nasty, nasty: [nasty]},
    )
    run_id = uuid7()
    await log(db, [event, RunStartEvent(id=run_id, name=nasty, tags=[nasty], info={nasty: 1})])
    (row,) = await rows(db, chronicle_events)
    assert (row["event_type"], row["provider"], row["model"]) == (nasty, nasty, nasty)
    assert row["chat_request"] == {nasty: nasty}
    assert row["meta"] == {nasty: [nasty]}
    (run,) = await rows(db, chronicle_runs)
    assert (run["name"], run["tags"], run["info"]) == (nasty, [nasty], {nasty: 1})


async def test_bodies_with_keys_that_are_not_text_are_stored_with_text_keys(
    db: Database,
) -> None:
    # JSON keys are text: other keys are written as text (as orjson's OPT_NON_STR_KEYS
    # does), including below a body whose other keys are text.
    event = ProxyLogEvent(
        request={"messages": [{"role": "user", "content": "hi"}], "logit_bias": {50256: -100}},
        response={1: "one", "usage": {"prompt_tokens": 3}},
    )
    await log(db, [event])
    (row,) = await rows(db, chronicle_events)
    assert row["chat_request"] == {
        "messages": [{"role": "user", "content": "hi"}],
        "logit_bias": {"50256": -100},
    }
    assert row["chat_response"] == {"1": "one", "usage": {"prompt_tokens": 3}}
    assert row["prompt_tokens"] == 3


async def test_written_rows_answer_plain_sql_analytics(db: Database, backend: str) -> None:
    events = [
        llm_event(model=m, latency=ms / 1000, error=None if ok else {"message": "x"})
        for m, ms, ok in [("a", 100, True), ("a", 300, False), ("b", 200, True)]
    ]
    await log(db, events)
    async with db.engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT model, COUNT(*) AS calls, SUM(total_tokens) AS tokens,"
                " AVG(request_latency_ms) AS avg_ms,"
                " SUM(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END) AS errors"
                " FROM chronicle_events GROUP BY model ORDER BY model"
            )
        )
        table = [tuple(r) for r in result]
    assert [(m, c, t, float(a), e) for m, c, t, a, e in table] == [
        ("a", 2, 22, 200.0, 1),
        ("b", 1, 11, 200.0, 0),
    ]


async def test_database_exposes_dialect_and_engine(db: Database, backend: str) -> None:
    assert db.dialect == backend
    assert db.engine.dialect.name == backend
    await db.close()
    await db.close()  # closing twice is harmless


async def test_database_url_hides_the_password() -> None:
    import eventlog

    db = await eventlog.open_database("postgresql://app:s3cret@127.0.0.1:1/llm")
    assert "s3cret" not in db.url
    assert "s3cret" not in repr(db)
    assert db.url.startswith("postgresql+asyncpg://app:***@127.0.0.1:1/llm")
    await db.close()


def _mixed_workflow_events(seed: int) -> list[ProxyLogEntry]:
    """Random run and step events of a few runs: duplicates, repeats, every kind."""
    import random

    rng = random.Random(seed)
    runs = [uuid7() for _ in range(3)]
    steps = [(uuid7(), rng.choice(runs)) for _ in range(5)]
    events: list[ProxyLogEntry] = []
    for i in range(60):
        when = T0 + timedelta(seconds=rng.randrange(100))
        info = {rng.choice("abc"): i}
        run_id = rng.choice(runs)
        step_id, step_run = rng.choice(steps)
        kind = rng.randrange(7)
        if kind == 0:
            status = rng.choice([None, "queued", "started"])
            events.append(
                RunStartEvent(id=run_id, name=f"r{i}", status=status, info=info, time=when)
            )
        elif kind == 1:
            status = rng.choice([None, "running", "started", "error"])
            output = rng.choice([None, {"o": i}])
            events.append(
                RunUpdateEvent(id=run_id, status=status, output=output, info=info, time=when)
            )
        elif kind == 2:
            events.append(
                StepStartEvent(step_id=step_id, run_id=step_run, type="t", info=info, time=when)
            )
        elif kind == 3:
            events.append(
                StepEndEvent(step_id=step_id, run_id=step_run, output=i, info=info, time=when)
            )
        elif kind == 4:
            events.append(
                StepErrorEvent(step_id=step_id, run_id=step_run, error={"e": i}, time=when)
            )
        else:
            state = rng.choice(["waiting", "running"])
            events.append(StepStateEvent(step_id=step_id, run_id=step_run, state=state, time=when))
    return events


@pytest.mark.parametrize("seed", range(4))
async def test_one_batch_gives_the_same_rows_as_one_event_at_a_time(
    backend: str, fresh_url: Any, seed: int
) -> None:
    # The writer applies a batch as one executemany per statement; that must be the
    # same as applying the events one by one, in the order sent.
    import eventlog

    events = _mixed_workflow_events(seed)
    together = await eventlog.open_database(fresh_url(backend), migrate=True)
    one_by_one = await eventlog.open_database(fresh_url(backend), migrate=True)
    try:
        await together.write_log_batch(events)
        for event in events:
            await one_by_one.write_log_batch([event])
        for table in (chronicle_runs, chronicle_steps):
            assert await rows(together, table) == await rows(one_by_one, table)
    finally:
        await together.close()
        await one_by_one.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_logger_starts_and_stops_while_the_database_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    import eventlog

    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nowhere"
    db = await eventlog.open_database(url)  # does not connect: the app can start
    sender, task = start_database_logger(db, batch_size=10, debounce_time=0, close_timeout=0)
    with caplog.at_level(logging.ERROR, logger="eventlog"):
        sender.send([EventPayload(type="x") for _ in range(3)])
        sender.close()
        await asyncio.wait_for(task, 60)  # the writer never dies; it ends on close
    stats = sender.stats()
    assert (stats.sent, stats.written, stats.failed, stats.queued) == (3, 0, 3, 0)
    assert any("failed to write a batch of 3 entries" in r.getMessage() for r in caplog.records)
    await db.close()


async def test_naive_time_set_after_creation_is_stored_as_utc(db: Database) -> None:
    event = EventPayload(type="t")
    event.time = datetime(2026, 1, 2, 3, 4, 5, 678)  # naive: eventlog reads it as UTC
    await db.write_log_batch([event])
    (row,) = await rows(db, chronicle_events)
    assert row["created_at"] == datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)


async def test_subclasses_of_the_event_classes_are_written(db: Database) -> None:
    class MyStart(RunStartEvent):
        pass

    class MyEvent(EventPayload):
        pass

    run_id = uuid7()
    await log(db, [MyStart(id=run_id, name="r"), MyEvent(type="x", run_id=run_id)])
    (run,) = await rows(db, chronicle_runs)
    assert run["name"] == "r"
    assert await count(db, chronicle_events) == 1


async def test_messy_values_are_repaired_noted_and_counted_not_failed(db: Database) -> None:
    run_id = uuid7()
    clean = [EventPayload(type="clean", data={"i": i}) for i in range(5)]
    messy = ProxyLogEvent(
        provider="open\ud800ai",  # a lone surrogate
        model="gpt\x00-4o",  # NUL: PostgreSQL refuses it in text
        request={"messages": [{"content": "hi\x00there", "n\x00": 1}]},
        response={"usage": {"prompt_tokens": 2**70}},  # beyond what JSON numbers hold
        num_retries="2",  # a string of digits
        metadata={"step_index": 2**40, "team": "core"},  # outside a 32-bit column
        was_rate_limited=1,  # type: ignore[arg-type]
    )
    start = RunStartEvent(id=run_id, name="r\x00un", tags=["a\x00b"], info={"k": "v"})
    sender, task = start_database_logger(db, batch_size=100, debounce_time=60)
    sender.send([*clean, messy, start])
    sender.close()
    await task
    stats = sender.stats()
    assert (stats.written, stats.failed, stats.repaired) == (7, 0, 2)
    (row,) = await rows(db, chronicle_events, chronicle_events.c.id == messy.id)
    assert row["model"] == "gpt-4o"
    assert row["provider"] == "open\ufffdai"
    assert row["chat_request"] == {"messages": [{"content": "hithere", "n": 1}]}
    assert row["chat_response"] == {"usage": {"prompt_tokens": str(2**70)}}
    assert (row["retries"], row["step_index"], row["rate_limited"]) == (2, None, True)
    assert row["meta"]["team"] == "core"
    notes = " | ".join(row["meta"]["eventlog_repairs"])
    for column in ("model", "provider", "chat_request", "chat_response", "step_index"):
        assert column in notes
    (run,) = await rows(db, chronicle_runs)
    assert (run["name"], run["tags"]) == ("run", ["ab"])
    assert run["info"]["k"] == "v"
    assert run["info"]["eventlog_repairs"]
    assert await count(db, chronicle_events) == 6


async def test_json_over_the_size_cap_is_truncated_with_a_visible_marker(
    backend: str, db_url: str
) -> None:
    import eventlog

    small = await eventlog.open_database(db_url, migrate=True, max_json_bytes=2_000)
    try:
        event = ProxyLogEvent(request={"messages": [{"content": "x" * 5_000}]})
        assert await small.write_log_batch([event]) == 1
        (row,) = await rows(small, chronicle_events, chronicle_events.c.id == event.id)
        marker = row["chat_request"]["eventlog_truncated"]
        assert marker["original_bytes"] > 5_000
        assert marker["kept_bytes"] == len(marker["head"]) <= 2_000
        assert marker["head"].startswith('{"messages":[{"content":"xxx')
        assert "over the 2000-byte cap" in row["meta"]["eventlog_repairs"][0]
    finally:
        await small.close()


async def test_write_after_close_is_a_clear_error(db: Database) -> None:
    from eventlog import DatabaseError

    await db.close()
    with pytest.raises(DatabaseError, match=r"after close\(\)"):
        await db.write_log_batch([EventPayload(type="x")])


@pytest.mark.parametrize("url", ["sqlite://", ":memory:", "sqlite:///:memory:"])
async def test_in_memory_sqlite_is_shared_and_waits_for_a_user_transaction(url: str) -> None:
    import eventlog

    db = await eventlog.open_database(url, migrate=True)
    try:
        async with db.engine.connect() as conn:
            # The application holds the write lock for a moment; the writer waits for it
            # (busy_timeout) instead of failing, and sees the same database.
            await conn.execute(text("BEGIN IMMEDIATE"))
            await conn.execute(text("DELETE FROM chronicle_events"))
            write = asyncio.create_task(db.write_log_batch([EventPayload(type="x")]))
            await asyncio.sleep(0.2)
            assert not write.done()
            await conn.execute(text("COMMIT"))
        await asyncio.wait_for(write, 30)
        assert await count(db, chronicle_events) == 1
    finally:
        await db.close()


async def test_sqlite_encoding_waits_while_rows_are_bound_then_overlaps_the_rest(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sqlite3 takes the GIL for every row it binds: the writer does not encode while a
    # batch's rows are bound, and may again once they are (the rollup's SQL and the
    # commit run without the GIL).
    import eventlog
    import eventlog.sqlite as sqlite_module

    insert = sqlite_module._insert_events
    binding, bound, release = threading.Event(), threading.Event(), threading.Event()

    def held(conn: Any, events: Any, sql: str, rollup: Any, fresh: Any, on_bound: Any) -> bool:
        def signal() -> None:
            on_bound()
            bound.set()
            release.wait(10)  # the rollup's SQL and the commit, still under way

        binding.set()
        release.wait(10)  # the rows being bound
        release.clear()
        return insert(conn, events, sql, rollup, fresh, signal)

    monkeypatch.setattr(sqlite_module, "_insert_events", held)
    db = await eventlog.open_database(f"sqlite:///{tmp_path / 'gate.db'}", migrate=True)
    assert db._sqlite is not None
    try:
        write = asyncio.create_task(db.write_log_batch([ProxyLogEvent(model="m")]))
        await asyncio.to_thread(binding.wait, 10)
        gate = asyncio.create_task(db._sqlite.binding_done())
        await asyncio.sleep(0)
        assert not gate.done()  # the rows are being bound
        release.set()
        await asyncio.to_thread(bound.wait, 10)
        await asyncio.wait_for(gate, 10)  # bound: encoding may go on ...
        assert not write.done()  # ... while the write finishes
        release.set()
        await write
    finally:
        release.set()
        await db.close()


def _rows_in_the_file_alone(path: Any, copy: Any) -> int:
    """The events in the database file itself, without its WAL: those checkpointed."""
    import shutil
    import sqlite3

    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT count(*) FROM chronicle_events").fetchone()[0])
    finally:
        conn.close()


async def _checkpointed_rows(db: Database, path: Any, copy: Any) -> int:
    """The events in the file itself once the checkpoints queued so far have run."""
    assert db._sqlite is not None
    await db._sqlite.checkpoints_done()
    return _rows_in_the_file_alone(path, copy)


@contextlib.asynccontextmanager
async def _checkpointed_file(path: Any) -> AsyncIterator[Database]:
    """A migrated SQLite file whose tables are in the file itself, not only its WAL."""
    import eventlog

    db = await eventlog.open_database(f"sqlite:///{path}", migrate=True)
    try:
        async with db.engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        yield db
    finally:
        await db.close()


async def test_sqlite_checkpoints_run_on_a_thread_of_their_own_every_1000_rows(
    tmp_path: Any,
) -> None:
    # SQLite checkpoints inside a commit once the WAL reaches 1,000 pages; the writer
    # leaves that to a second thread, every 1,000 rows committed (its own commit
    # checkpoints only as a backstop).
    path = tmp_path / "ckpt.db"
    async with _checkpointed_file(path) as db:
        assert db._sqlite is not None
        await db.write_log_batch([llm_event() for _ in range(999)])
        assert db._sqlite._conn is not None
        backstop = db._sqlite._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert backstop == 16384
        assert await _checkpointed_rows(db, path, tmp_path / "copy1.db") == 0
        await db.write_log_batch([llm_event()])
        assert await _checkpointed_rows(db, path, tmp_path / "copy2.db") == 1000
        await db.write_log_batch([llm_event() for _ in range(1500)])
        assert await _checkpointed_rows(db, path, tmp_path / "copy3.db") == 2500


async def test_sqlite_checkpoints_also_run_every_64_commits_of_small_batches(
    tmp_path: Any,
) -> None:
    # A one-call batch writes a dozen pages to the WAL: 1,000 of them would make ~50 MB.
    path = tmp_path / "ckpt.db"
    async with _checkpointed_file(path) as db:
        for _ in range(63):
            await db.write_log_batch([llm_event()])
        assert await _checkpointed_rows(db, path, tmp_path / "copy1.db") == 0
        await db.write_log_batch([llm_event()])
        assert await _checkpointed_rows(db, path, tmp_path / "copy2.db") == 64


async def test_a_committed_sqlite_batch_stands_when_no_checkpoint_can_be_queued(
    tmp_path: Any,
) -> None:
    # At interpreter exit the checkpoint thread may be shut down before the last write:
    # the batch is committed, so the write must not fail (and be retried).
    import eventlog

    db = await eventlog.open_database(f"sqlite:///{tmp_path / 'ckpt.db'}", migrate=True)
    writer = db._sqlite
    assert writer is not None
    try:
        writer._checkpointer.shutdown(wait=True)
        await db.write_log_batch([llm_event() for _ in range(1000)])
        assert await count(db, chronicle_events) == 1000
        assert not writer._checkpointing
    finally:
        writer._checkpointer = ThreadPoolExecutor(1)
        await db.close()


async def test_a_checkpoint_done_at_once_leaves_the_writer_free_to_queue_the_next(
    tmp_path: Any,
) -> None:
    # The busy flag is set before the checkpoint is queued: a checkpoint that runs
    # before submit() returns must not leave it set for good.
    import eventlog

    class AtOnce:
        def __init__(self) -> None:
            self.runs = 0

        def submit(self, fn: Any) -> None:
            self.runs += 1
            fn()

        def shutdown(self, wait: bool = True) -> None:
            pass

    db = await eventlog.open_database(f"sqlite:///{tmp_path / 'ckpt.db'}", migrate=True)
    writer = db._sqlite
    assert writer is not None
    real = writer._checkpointer
    at_once = AtOnce()
    writer._checkpointer = at_once  # type: ignore[assignment]
    try:
        for _ in range(128):
            await db.write_log_batch([llm_event()])
        assert at_once.runs == 2
    finally:
        writer._checkpointer = real
        await db.close()


def test_an_in_memory_sqlite_writer_queues_no_checkpoint() -> None:
    import sqlite3

    from eventlog.sqlite import SQLiteWriter

    writer = SQLiteWriter("file:eventlog_ckpt?mode=memory&cache=shared", uri=True, memory=False)
    keep = sqlite3.connect("file:eventlog_ckpt?mode=memory&cache=shared", uri=True)
    try:
        writer._connection()
        assert not writer._wal
    finally:
        writer._close()
        keep.close()
        writer._thread.shutdown()
        writer._checkpointer.shutdown()


async def test_a_failed_sqlite_checkpoint_is_logged_once_and_writing_goes_on(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import eventlog

    db = await eventlog.open_database(f"sqlite:///{tmp_path / 'ckpt.db'}", migrate=True)
    writer = db._sqlite
    assert writer is not None
    try:
        await db.write_log_batch([llm_event()])
        await writer.checkpoints_done()
        # The checkpoint thread's connection is gone and cannot be opened again.
        await asyncio.get_running_loop().run_in_executor(
            writer._checkpointer, writer._close_checkpoints
        )
        writer._checkpoint_path = str(tmp_path / "missing" / "ckpt.db")
        with caplog.at_level("WARNING", logger="eventlog"):
            for _ in range(3):
                await db.write_log_batch([llm_event() for _ in range(1000)])
                await writer.checkpoints_done()
        warnings = [r for r in caplog.records if "checkpoint" in r.getMessage()]
        assert len(warnings) == 1
        assert "missing" in warnings[0].getMessage()
        assert await count(db, chronicle_events) == 3001
    finally:
        await db.close()


async def test_the_writers_presence_memory_forgets_its_oldest_keys_a_batch_at_a_time(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bounded without a clear() of the whole memory on the event loop (~50 ms for
    # 200,000 keys): past the bound, the keys remembered first are forgotten.
    import eventlog.database as database_module
    from eventlog.schema import eventlog_rollup_active_users

    monkeypatch.setattr(database_module, "_SEEN_USERS_MAX", 6)

    def user(name: str) -> ProxyLogEvent:
        return llm_event(timestamp=T0, internal_metadata={"user_id": name})

    def users_in_memory() -> list[str]:
        return [key[-1] for key in db._seen_users]  # two keys (hour, day) a user

    for name in ("a", "b", "c"):
        await db.write_log_batch([user(name)])
    assert users_in_memory() == ["a", "a", "b", "b", "c", "c"]
    await db.write_log_batch([user("d")])  # 8 keys: user a's go
    assert users_in_memory() == ["b", "b", "c", "c", "d", "d"]
    await db.write_log_batch([user("a")])  # forgotten: its presence rows are written again
    assert users_in_memory() == ["c", "c", "d", "d", "a", "a"]
    assert await count(db, eventlog_rollup_active_users) == 4
