"""eventlog.run, eventlog.step and eventlog.track_llm_call: what lands in the tables.

Each test runs code under the helpers, closes the logger, and reads the rows back with
SQL, on a real SQLite file and a real PostgreSQL server. Time is a manual clock.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

import eventlog
from eventlog import (
    Database,
    EventPayload,
    LogSender,
    ProxyLogEvent,
    RequestMetadata,
    start_database_logger,
)
from eventlog import instrument as instrument_module
from eventlog.context import current_run_id, current_step_id, fill_entries
from eventlog.instrument import LLMCall
from eventlog.schema import chronicle_events, chronicle_runs, chronicle_steps
from eventlog.testing import ManualClock, MemoryDatabase

Row = dict[str, Any]


@dataclass
class Logged:
    """A logger on the test's database, and the rows it wrote."""

    db: Database
    sender: LogSender
    task: asyncio.Task[None]

    async def flush(self) -> None:
        """Close the logger and wait until everything sent is written."""
        self.sender.close()
        await self.task
        stats = self.sender.stats()
        assert stats.failed_writes == 0, stats
        assert stats.dead_letters == 0, stats

    async def rows(self, table: Any, *where: Any) -> list[Row]:
        return await rows(self.db, table, *where)

    async def run(self, run_id: uuid.UUID) -> Row:
        (row,) = await self.rows(chronicle_runs, chronicle_runs.c.id == run_id)
        return row

    async def step(self, step_id: uuid.UUID) -> Row:
        (row,) = await self.rows(chronicle_steps, chronicle_steps.c.id == step_id)
        return row


async def rows(db: Database, table: Any, *where: Any) -> list[Row]:
    """The rows of ``table`` matching ``where``, oldest first."""
    async with db.engine.connect() as conn:
        query = select(table).where(*where)
        if table is chronicle_steps:
            query = query.order_by(table.c.start_time, table.c.id)
        else:
            query = query.order_by(table.c.created_at, table.c.id)
        return [dict(r) for r in (await conn.execute(query)).mappings()]


@pytest.fixture
async def logged(db: Database) -> AsyncIterator[Logged]:
    """A logger on ``db``, also the default sender for the test."""
    sender, task = start_database_logger(db, batch_size=100, debounce_time=60)
    eventlog.set_default_sender(sender)
    try:
        yield Logged(db, sender, task)
    finally:
        eventlog.set_default_sender(None)
        sender.close()
        await task


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """The clock LLM calls are timed with, moved by hand."""
    manual = ManualClock(1000.0)
    monkeypatch.setattr(instrument_module, "clock", manual)
    return manual


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the once-per-process warnings, so a test sees its own."""
    monkeypatch.setattr(instrument_module, "_warned_no_sender", False)
    monkeypatch.setattr(instrument_module, "_slow_warnings", instrument_module._SlowWarnings())


# -- runs ------------------------------------------------------------------------------


async def test_run_as_a_context_manager_writes_a_finished_run_with_output_and_info(
    logged: Logged,
) -> None:
    with eventlog.run(
        "support-chat",
        input={"question": "hi"},
        application="chat",
        environment="test",
        tags=("beta", "eu"),
        info={"version": 3},
    ) as run:
        assert current_run_id() == run.id
        assert current_step_id() is None
        run.set_output({"answer": "hello"})
        run.add_info(turns=2)
    assert current_run_id() is None
    await logged.flush()
    row = await logged.run(run.id)
    assert row["name"] == "support-chat"
    assert row["status"] == "finished"
    assert row["input"] == {"question": "hi"}
    assert row["output"] == {"answer": "hello"}
    assert (row["application"], row["environment"]) == ("chat", "test")
    assert list(row["tags"]) == ["beta", "eu"]
    assert row["info"] == {"version": 3, "turns": 2}


async def test_async_with_run_and_nested_steps_record_parents_and_outputs(
    logged: Logged,
) -> None:
    async with (
        eventlog.run("pipeline") as run,
        eventlog.step("retrieve", "search", input={"q": "x"}) as outer,
    ):
        assert current_step_id() == outer.id
        with eventlog.step("llm", "rerank") as inner:
            assert (current_run_id(), current_step_id()) == (run.id, inner.id)
            inner.set_output(["b", "a"])
            inner.add_info(model="small")
        assert current_step_id() == outer.id
        outer.set_output(["a", "b"])
    await logged.flush()
    outer_row, inner_row = await logged.step(outer.id), await logged.step(inner.id)
    assert (outer_row["run_id"], outer_row["parent_step"]) == (run.id, None)
    assert (inner_row["run_id"], inner_row["parent_step"]) == (run.id, outer.id)
    assert (outer_row["type"], outer_row["name"]) == ("retrieve", "search")
    assert outer_row["input"] == {"q": "x"}
    assert (outer_row["status"], outer_row["output"]) == ("finished", ["a", "b"])
    assert (inner_row["status"], inner_row["output"]) == ("finished", ["b", "a"])
    assert inner_row["info"] == {"model": "small"}
    assert inner_row["end_time"] is not None
    assert (await logged.run(run.id))["status"] == "finished"


async def test_decorated_functions_record_their_return_value_as_the_output(
    logged: Logged,
) -> None:
    @eventlog.step("tool", "double")
    def double(x: int) -> int:
        return 2 * x

    @eventlog.step("llm", "ask")
    async def ask(x: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"doubled": double(x)}

    @eventlog.run("decorated")
    async def workflow(x: int) -> int:
        result = await ask(x)
        return result["doubled"] + 1

    assert await workflow(20) == 41
    assert await workflow(1) == 3  # each call is a run of its own
    await logged.flush()
    runs = await logged.rows(chronicle_runs)
    assert [(r["name"], r["status"], r["output"]) for r in runs] == [
        ("decorated", "finished", 41),
        ("decorated", "finished", 3),
    ]
    steps = await logged.rows(chronicle_steps, chronicle_steps.c.run_id == runs[0]["id"])
    assert [(s["name"], s["output"]) for s in steps] == [("ask", {"doubled": 40}), ("double", 40)]
    assert steps[1]["parent_step"] == steps[0]["id"]


async def test_decorator_keeps_the_function_name_and_docstring() -> None:
    @eventlog.step("tool")
    async def lookup() -> None:
        """Look something up."""

    assert (lookup.__name__, lookup.__doc__) == ("lookup", "Look something up.")


async def test_exception_marks_step_and_run_as_errors_and_propagates_unchanged(
    logged: Logged,
) -> None:
    error = KeyError("missing")
    handles: list[Any] = []

    async def failing() -> None:
        with eventlog.run("failing") as run:
            handles.append(run)
            run.add_info(attempt=1)
            async with eventlog.step("tool", "lookup") as step:
                handles.append(step)
                raise error

    with pytest.raises(KeyError) as raised:
        await failing()
    assert raised.value is error
    run, step = handles
    await logged.flush()
    step_row = await logged.step(step.id)
    assert step_row["status"] == "error"
    assert step_row["output"]["type"] == "KeyError"
    assert step_row["output"]["message"] == "'missing'"
    assert "raise error" in step_row["output"]["traceback"]
    run_row = await logged.run(run.id)
    assert run_row["status"] == "error"
    assert run_row["info"]["attempt"] == 1
    assert run_row["info"]["error"]["type"] == "KeyError"
    assert "Traceback" in run_row["info"]["error"]["traceback"]


async def test_exception_in_a_decorated_async_function_is_recorded_and_raised(
    logged: Logged,
) -> None:
    @eventlog.step("llm")
    async def call_model() -> None:
        raise TimeoutError("upstream took too long")

    with pytest.raises(TimeoutError, match="upstream took too long"):
        await call_model()
    await logged.flush()
    (run,) = await logged.rows(chronicle_runs)
    (step,) = await logged.rows(chronicle_steps)
    assert (run["name"], run["status"]) == ("llm", "error")
    assert step["output"]["type"] == "TimeoutError"


async def test_step_outside_any_run_starts_a_run_of_its_own_named_after_it(
    logged: Logged,
) -> None:
    with eventlog.step("embed", "embed-docs", input=[1, 2], tags=("batch",)) as step:
        assert current_run_id() == step.run_id
        step.set_output("done")
    await logged.flush()
    assert step.run_id is not None
    run = await logged.run(step.run_id)
    assert (run["name"], run["status"], run["input"], run["output"]) == (
        "embed-docs",
        "finished",
        [1, 2],
        "done",
    )
    row = await logged.step(step.id)
    assert (row["run_id"], row["parent_step"], row["status"]) == (step.run_id, None, "finished")


async def test_handle_is_entered_once_and_generators_are_not_decorated() -> None:
    run = eventlog.run("once", sender=ListSender())
    with run:
        pass
    with pytest.raises(RuntimeError, match="already entered"), run:
        pass
    with pytest.raises(TypeError, match="generator"):

        @eventlog.step("tool")
        def numbers() -> Iterator[int]:
            yield 1


def test_bad_arguments_fail_at_the_call_that_made_them() -> None:
    with pytest.raises(TypeError, match="tags must be a sequence of strings"):
        eventlog.run("x", tags="one")
    with pytest.raises(TypeError, match="send"):
        eventlog.step("x", sender=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="send"):
        eventlog.set_default_sender(42)  # type: ignore[arg-type]


# -- events sent while a run or step is active ------------------------------------------


async def test_events_sent_directly_inside_a_run_get_its_run_and_step_ids(
    logged: Logged,
) -> None:
    shared = RequestMetadata(application="chat")  # reused by calls in and out of runs
    other_run = uuid.uuid4()
    with eventlog.run("direct") as run:
        logged.sender.send(EventPayload(type="in-run"))
        with eventlog.step("tool") as step:
            logged.sender.send(ProxyLogEvent(model="m", metadata=shared))
            logged.sender.send(
                [EventPayload(type="in-step"), EventPayload(type="own", run_id=other_run)]
            )
    logged.sender.send(ProxyLogEvent(model="after", metadata=shared))
    await logged.flush()
    assert shared.run_id is None  # the caller's metadata is never changed
    rows = {
        (r["event_type"], r["model"]): (r["run_id"], r["step_id"])
        for r in await logged.rows(chronicle_events)
    }
    assert rows == {
        ("in-run", None): (run.id, None),
        ("chronicle_llm_request", "m"): (run.id, step.id),
        ("in-step", None): (run.id, step.id),
        ("own", None): (other_run, None),  # set by the caller: kept, and no foreign step
        ("chronicle_llm_request", "after"): (None, None),
    }


def test_fill_keeps_what_the_entry_sets_and_fills_the_rest() -> None:
    with eventlog.run("fill", sender=ListSender()) as run, eventlog.step("s") as step:
        mine = uuid.uuid4()
        own_step = EventPayload(type="x", run_id=run.id, step_id=mine)
        same_run = EventPayload(type="x", run_id=run.id)
        call = ProxyLogEvent(metadata=RequestMetadata(run_id=run.id))
        fill_entries((own_step, same_run, call))
    assert (own_step.run_id, own_step.step_id) == (run.id, mine)
    assert (same_run.run_id, same_run.step_id) == (run.id, step.id)
    assert (call.metadata.run_id, call.metadata.step_id) == (run.id, step.id)


async def test_concurrent_runs_in_asyncio_gather_keep_their_ids_apart(logged: Logged) -> None:
    both_started = asyncio.Barrier(2)

    async def conversation(name: str) -> uuid.UUID:
        async with eventlog.run(name) as run:
            await both_started.wait()  # the two runs are open at once
            async with eventlog.step("llm", name):
                await asyncio.sleep(0)
                logged.sender.send(EventPayload(type=f"event-{name}"))
            return run.id

    first, second = await asyncio.gather(conversation("a"), conversation("b"))
    await logged.flush()
    for name, run_id in (("a", first), ("b", second)):
        (step,) = await logged.rows(chronicle_steps, chronicle_steps.c.run_id == run_id)
        assert step["name"] == name
        (event,) = await logged.rows(
            chronicle_events, chronicle_events.c.event_type == f"event-{name}"
        )
        assert (event["run_id"], event["step_id"]) == (run_id, step["id"])


async def test_context_follows_to_thread_and_copy_context_run(logged: Logged) -> None:
    def in_worker(kind: str) -> uuid.UUID | None:
        with eventlog.step("worker", kind):
            logged.sender.send(EventPayload(type=kind))
        return current_run_id()

    async with eventlog.run("threads") as run:
        assert await asyncio.to_thread(in_worker, "to_thread") == run.id
        assert contextvars.copy_context().run(in_worker, "copy_context") == run.id
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(in_worker, "thread+context"))
        thread.start()
        thread.join()
    await logged.flush()
    steps = await logged.rows(chronicle_steps, chronicle_steps.c.run_id == run.id)
    assert sorted(s["name"] for s in steps) == ["copy_context", "thread+context", "to_thread"]
    events = await logged.rows(chronicle_events)
    assert {e["event_type"]: e["run_id"] for e in events} == dict.fromkeys(
        ("to_thread", "copy_context", "thread+context"), run.id
    )


async def test_plain_thread_starts_without_the_run_so_its_step_makes_its_own(
    logged: Logged,
) -> None:
    # A threading.Thread starts with an empty context (unlike asyncio.to_thread):
    # run the target through contextvars.copy_context().run to keep the run.
    seen: list[uuid.UUID | None] = []

    def in_thread() -> None:
        seen.append(current_run_id())
        with eventlog.step("worker", "orphan") as step:
            seen.append(step.run_id)

    with eventlog.run("parent") as run:
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
    await logged.flush()
    assert seen[0] is None
    assert seen[1] not in (None, run.id)
    own = await logged.run(seen[1])
    assert (own["name"], own["status"]) == ("orphan", "finished")
    assert await logged.rows(chronicle_steps, chronicle_steps.c.run_id == run.id) == []


# -- senders ---------------------------------------------------------------------------


class ListSender:
    """A sender that keeps what it is sent, in a list (for tests of the helpers alone)."""

    def __init__(self) -> None:
        self.entries: list[Any] = []

    def send(self, entry: Any) -> None:
        self.entries.extend(entry if isinstance(entry, list | tuple) else [entry])


async def test_sender_argument_wins_and_nested_steps_send_where_their_run_does(
    logged: Logged,
) -> None:
    mine = ListSender()
    with eventlog.run("elsewhere", sender=mine), eventlog.step("inner"):
        pass
    with eventlog.run("default"):
        pass
    await logged.flush()
    assert [type(e).__name__ for e in mine.entries] == [
        "RunStartEvent",
        "StepStartEvent",
        "StepEndEvent",
        "RunUpdateEvent",
    ]
    assert [r["name"] for r in await logged.rows(chronicle_runs)] == ["default"]


@pytest.mark.usefixtures("fresh_warnings")
async def test_without_a_sender_the_code_runs_and_one_warning_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    eventlog.set_default_sender(None)
    with caplog.at_level(logging.WARNING, logger="eventlog"):

        @eventlog.step("tool")
        async def work() -> int:
            return 7

        with eventlog.run("nothing") as run:
            run.set_output(1)
            assert await work() == 7
            assert current_run_id() is None  # nothing is started
        with eventlog.track_llm_call(provider="p", model="m", request={}) as call:
            call.set_response({"ok": True})
    warnings = [r for r in caplog.records if "no sender" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_failing_sender_never_breaks_the_code(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def send(self, entry: Any) -> None:
            raise RuntimeError("disk on fire")

    with caplog.at_level(logging.WARNING, logger="eventlog"):
        with eventlog.run("r", sender=Broken()) as run:
            run.set_output(1)
        with eventlog.run("again", sender=Broken()):
            pass
    messages = [r.getMessage() for r in caplog.records if "disk on fire" in r.getMessage()]
    assert len(messages) == 1


async def test_background_logger_records_runs_of_sync_code(db_url: str) -> None:
    # A sync application (Flask, a script) logs through a BackgroundLogger.
    def sync_app(background: eventlog.BackgroundLogger) -> uuid.UUID:
        @eventlog.step("tool", "sync-step", sender=background)
        def tool() -> str:
            background.send(EventPayload(type="from-sync-code"))
            return "ok"

        with eventlog.run("sync-run", sender=background) as run:
            run.set_output(tool())
        return run.id

    def main() -> uuid.UUID:
        background = eventlog.start_background_logger(db_url, migrate=True)
        try:
            return sync_app(background)
        finally:
            background.close()

    run_id = await asyncio.to_thread(main)
    db = await eventlog.open_database(db_url)
    try:
        (run,) = await rows(db, chronicle_runs, chronicle_runs.c.id == run_id)
        (step,) = await rows(db, chronicle_steps, chronicle_steps.c.run_id == run_id)
        (event,) = await rows(db, chronicle_events, chronicle_events.c.run_id == run_id)
    finally:
        await db.close()
    assert (run["status"], run["output"]) == ("finished", "ok")
    assert (step["name"], step["output"]) == ("sync-step", "ok")
    assert (event["event_type"], event["step_id"]) == ("from-sync-code", step["id"])


def test_http_log_sender_fills_the_ids_of_entries_sent_inside_a_run() -> None:
    remote = eventlog.HttpLogSender("http://127.0.0.1:9/events", close_timeout=0.1)
    try:
        with eventlog.run("remote", sender=ListSender()) as run:
            entry = EventPayload(type="over-http")
            remote.send(entry)
    finally:
        remote.close(timeout=0.1)
    assert entry.run_id == run.id


# -- LLM calls -------------------------------------------------------------------------


RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 50, "total_tokens": 70},
}


async def test_tracked_llm_call_records_latencies_retries_ttft_and_tokens_per_second(
    logged: Logged, clock: ManualClock
) -> None:
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "capital?"}]}
    with eventlog.run("chat") as run:
        async with eventlog.track_llm_call(
            provider="openai",
            model="gpt-4o-mini",
            request=request,
            metadata={"user_id": "u-1", "feature": "qa"},
        ) as call:
            clock.advance(0.3)
            call.retry(rate_limited=True)  # the first attempt was a 429
            clock.advance(0.2)
            call.first_token()
            clock.advance(0.3)
            call.set_response(RESPONSE)
    await logged.flush()
    (row,) = await logged.rows(chronicle_events)
    assert (row["provider"], row["model"], row["request_user_id"]) == (
        "openai",
        "gpt-4o-mini",
        "u-1",
    )
    assert row["chat_request"] == request
    assert row["chat_response"] == RESPONSE
    assert (row["request_latency_ms"], row["total_latency_ms"]) == (500, 800)
    assert (row["retries"], row["rate_limited"]) == (1, True)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (20, 50)
    assert row["meta"] == {"feature": "qa", "output_tokens_per_second": 100.0}
    assert row["run_id"] == run.id
    assert row["error"] is None
    assert row["ttft_ms"] == 500


async def test_error_escaping_a_tracked_call_is_recorded_and_propagates(
    logged: Logged, clock: ManualClock
) -> None:
    class RateLimitError(Exception):
        status_code = 429

    error = RateLimitError("slow down")

    def call_model() -> None:
        with eventlog.track_llm_call(provider="anthropic", model="claude", request={}):
            clock.advance(0.1)
            raise error

    with pytest.raises(RateLimitError) as raised:
        call_model()
    assert raised.value is error
    await logged.flush()
    (row,) = await logged.rows(chronicle_events)
    assert row["error"]["message"] == "slow down"
    assert row["error"]["type"].endswith("RateLimitError")
    assert (row["rate_limited"], row["retries"], row["request_latency_ms"]) == (True, 0, 100)
    assert row["chat_response"] is None


async def test_anthropic_usage_gives_the_output_tokens_per_second(
    logged: Logged, clock: ManualClock
) -> None:
    with eventlog.track_llm_call(provider="anthropic", model="claude", request={}) as call:
        clock.advance(2.0)
        call.set_response({"usage": {"input_tokens": 10, "output_tokens": 30}})
    await logged.flush()
    (row,) = await logged.rows(chronicle_events)
    assert row["meta"] == {"output_tokens_per_second": 15.0}


@pytest.mark.usefixtures("fresh_warnings")
async def test_slow_call_logs_a_warning_and_repeats_are_rate_limited(
    clock: ManualClock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(instrument_module, "SLOW_OPERATION_THRESHOLD", 2.0)
    sender = ListSender()

    def call(seconds: float) -> None:
        with eventlog.track_llm_call(provider="openai", model="m", request={}, sender=sender):
            clock.advance(seconds)

    with caplog.at_level(logging.WARNING, logger="eventlog"):
        call(1.9)  # fast enough
        call(2.5)  # slow: warned
        call(3.0)  # slow again within 10 s: counted, not logged
        clock.advance(10)
        call(2.1)  # warned, with the count of the skipped one
    slow = [r.getMessage() for r in caplog.records if "slow LLM call" in r.getMessage()]
    assert len(slow) == 2
    assert "took 2.50 s" in slow[0]
    assert "1 more slow calls" in slow[1]
    assert len(sender.entries) == 4


def test_slow_operation_threshold_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLOW_OPERATION_THRESHOLD", "0.5")
    assert instrument_module._slow_threshold_from_env() == 0.5
    monkeypatch.setenv("SLOW_OPERATION_THRESHOLD", "soon")
    assert instrument_module._slow_threshold_from_env() == 2.0
    monkeypatch.delenv("SLOW_OPERATION_THRESHOLD")
    assert instrument_module._slow_threshold_from_env() == 2.0


def test_tracked_call_takes_a_metadata_object_without_changing_it(clock: ManualClock) -> None:
    sender = ListSender()
    metadata = RequestMetadata(application="chat", extra={"a": 1})
    with eventlog.track_llm_call(
        provider="openai", model="m", request={}, metadata=metadata, sender=sender
    ) as call:
        clock.advance(1.0)
        call.set_response({"usage": {"completion_tokens": 4}})
    (event,) = sender.entries
    assert event.metadata.extra == {"a": 1, "output_tokens_per_second": 4.0}
    assert event.metadata.application == "chat"
    assert metadata.extra == {"a": 1}
    assert isinstance(call, LLMCall)


async def test_the_logger_itself_needs_no_database_to_test_helpers() -> None:
    # The helpers work with any sender, eventlog.testing's MemoryDatabase included.
    db = MemoryDatabase()
    sender, task = start_database_logger(db, batch_size=10, debounce_time=60)
    with eventlog.run("memory", sender=sender):
        pass
    sender.close()
    await task
    assert [type(e).__name__ for e in db.entries] == ["RunStartEvent", "RunUpdateEvent"]


async def test_the_collector_never_gives_posted_events_its_own_run_id(tmp_path: Path) -> None:
    """A collector serving inside an app's run: events other programs post keep their
    own (absent) run ids."""
    import httpx

    from eventlog.server import create_app

    db = await eventlog.open_database(tmp_path / "c.db", migrate=True)
    own, own_task = eventlog.start_database_logger(MemoryDatabase())
    try:
        async with eventlog.run("serving", sender=own):
            app = create_app(db=db)
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
                    answer = await client.post(
                        "/event?wait=true", json={"type": "posted", "data": {"n": 1}}
                    )
                    assert answer.status_code == 201, answer.text
        async with db.engine.connect() as conn:
            run_ids = (
                (
                    await conn.execute(
                        text("SELECT run_id FROM chronicle_events WHERE event_type = 'posted'")
                    )
                )
                .scalars()
                .all()
            )
        assert run_ids == [None]
    finally:
        own.close()
        await own_task
        await db.close()


def test_every_event_sent_during_a_request_carries_its_id() -> None:
    from eventlog.context import reset_request_id, set_request_id

    shared = eventlog.RequestMetadata(user_id="u")
    call = eventlog.ProxyLogEvent(metadata=shared)
    generic = eventlog.EventPayload(type="cache_hit", data={"key": "k"})
    bare = eventlog.EventPayload(type="tick")
    own = eventlog.EventPayload(type="x", data={"request_id": "mine"})
    token = set_request_id("req-42")
    try:
        fill_entries([call, generic, bare, own])
    finally:
        reset_request_id(token)
    assert call.metadata.extra == {"request_id": "req-42"}
    assert shared.extra in (None, {})  # the application's shared metadata is not changed
    assert generic.data == {"key": "k", "request_id": "req-42"}
    assert bare.data == {"request_id": "req-42"}
    assert own.data == {"request_id": "mine"}
    after = eventlog.EventPayload(type="later")
    fill_entries(after)
    assert after.data is None  # outside the request: nothing added
