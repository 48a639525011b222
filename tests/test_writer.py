"""The writer's batching, timing and lifecycle, driven by a manual clock (no database)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from eventlog import EventPayload, LogSender, start_database_logger
from eventlog.events import ProxyLogEntry
from eventlog.testing import ManualClock, MemoryDatabase

if TYPE_CHECKING:
    from eventlog.deadletters import DeadLetter


def events(n: int, prefix: str = "e") -> list[EventPayload]:
    return [EventPayload(type=f"{prefix}{i}") for i in range(n)]


async def writer_asleep(sender: LogSender) -> None:
    """Wait until the writer has dealt with everything so far and sleeps again.

    A synchronisation on the writer's own state (it sleeps on a future), not a timer.
    """
    for _ in range(10_000):
        waiter = sender._waiter
        if waiter is not None and not waiter.done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the writer did not go back to sleep")


async def test_full_batch_is_written_without_waiting_for_the_debounce_time() -> None:
    db, clock = MemoryDatabase(), ManualClock()
    sender, task = start_database_logger(db, batch_size=10, debounce_time=60, clock=clock)
    sent = events(25)
    for entry in sent:
        sender.send(entry)
    await db.wait_for_batches(2)
    assert [len(b) for b in db.batches] == [10, 10]
    assert db.entries == sent[:20]
    sender.close()
    await task
    assert db.batches[2] == sent[20:]


async def test_event_sent_alone_is_written_after_debounce_time() -> None:
    db, clock = MemoryDatabase(), ManualClock()
    sender, task = start_database_logger(db, batch_size=100, debounce_time=1.0, clock=clock)
    (entry,) = events(1)
    sender.send(entry)
    clock.advance(0.5)
    await writer_asleep(sender)
    assert db.batches == []
    clock.advance(0.5)
    await db.wait_for_batches(1)
    assert db.batches == [[entry]]
    sender.close()
    await task


async def test_trickle_is_flushed_when_the_oldest_entry_has_waited_debounce_time() -> None:
    # One event every 0.9 s with a 1 s debounce: chronicle's timer restarts on each
    # message and would wait for a full batch; here each event waits at most ~1 s.
    db, clock = MemoryDatabase(), ManualClock()
    sender, task = start_database_logger(db, batch_size=100, debounce_time=1.0, clock=clock)
    sent = events(8)
    for pair in range(4):
        first, second = sent[2 * pair], sent[2 * pair + 1]
        sender.send(first)
        clock.advance(0.9)
        await writer_asleep(sender)
        sender.send(second)
        clock.advance(0.9)  # `first` has now waited 1.8 s
        await db.wait_for_batches(pair + 1)
        assert db.batches[pair] == [first, second]
    sender.close()
    await task


async def test_leftover_of_a_size_flush_keeps_its_own_age() -> None:
    db, clock = MemoryDatabase(), ManualClock()
    sender, task = start_database_logger(db, batch_size=3, debounce_time=1.0, clock=clock)
    old = events(4, "old")
    for entry in old:
        sender.send(entry)
    await db.wait_for_batches(1)
    assert db.batches == [old[:3]]
    clock.advance(1.0)  # old[3] came in the same drain: it is due now
    await db.wait_for_batches(2)
    assert db.batches[1] == [old[3]]
    sender.close()
    await task


async def test_message_larger_than_batch_size_is_split_into_capped_batches() -> None:
    db = MemoryDatabase()
    sender, task = start_database_logger(db, batch_size=100, debounce_time=60)
    sent = events(5_000)
    sender.send(sent)
    sender.close()
    await task
    assert [len(b) for b in db.batches] == [100] * 50
    assert db.entries == sent


async def test_close_writes_everything_sent_before_it() -> None:
    db = MemoryDatabase()
    sender, task = start_database_logger(db, batch_size=100, debounce_time=3600)
    sent = events(3)
    for entry in sent:
        sender.send(entry)
    sender.close()
    await task
    assert db.batches == [sent]
    stats = sender.stats()
    assert (stats.sent, stats.written, stats.batches, stats.queued) == (3, 3, 1, 0)
    assert stats.dropped == stats.failed == stats.dead_letters == 0
    assert stats.oldest_queued_age is None


async def test_close_with_nothing_sent_ends_the_task() -> None:
    db = MemoryDatabase()
    sender, task = start_database_logger(db)
    await writer_asleep(sender)
    sender.close()
    await asyncio.wait_for(task, 10)
    assert db.batches == []


async def test_close_twice_is_harmless() -> None:
    db = MemoryDatabase()
    sender, task = start_database_logger(db)
    sender.send(events(1))
    sender.close()
    sender.close()
    await task
    assert len(db.entries) == 1
    assert sender.closed


async def test_send_after_close_counts_drops_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = MemoryDatabase()
    sender, task = start_database_logger(db)
    sender.close()
    await task
    with caplog.at_level(logging.WARNING, logger="eventlog"):
        sender.send(events(2))
        sender.send(events(1)[0])
    assert sender.stats().dropped == 3
    assert sender.stats().sent == 0
    warnings = [r for r in caplog.records if "after close" in r.getMessage()]
    assert len(warnings) == 1
    assert db.batches == []


async def test_sequence_is_one_message_kept_in_order_with_other_sends() -> None:
    db = MemoryDatabase()
    sender, task = start_database_logger(db, batch_size=4, debounce_time=60)
    a, b, c, d, e = events(5)
    sender.send(a)
    sender.send((b, c, d))
    sender.send([e])
    sender.close()
    await task
    assert db.entries == [a, b, c, d, e]
    assert [len(x) for x in db.batches] == [4, 1]


async def test_send_of_a_non_event_raises_type_error_at_once() -> None:
    db = MemoryDatabase()
    sender, task = start_database_logger(db)
    with pytest.raises(TypeError, match="send\\(\\) takes an event"):
        sender.send({"type": "not parsed"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item 1 is a str"):
        sender.send([EventPayload(type="ok"), "bad"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        sender.send("run:start")  # type: ignore[arg-type]
    sender.close()
    await task
    # A rejected sequence is rejected whole: its valid entries were not queued either.
    assert db.entries == []
    assert sender.stats().sent == 0


async def test_refused_entries_are_isolated_set_aside_and_the_rest_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = MemoryDatabase()
    db.refuse = lambda entry: isinstance(entry, EventPayload) and entry.type.startswith("bad")
    sender, task = start_database_logger(db, batch_size=8, debounce_time=60)
    good = events(6, "good")
    bad = events(2, "bad")
    batch = [good[0], bad[0], *good[1:4], bad[1], *good[4:]]
    with caplog.at_level(logging.WARNING, logger="eventlog"):
        sender.send(batch)
        sender.close()
        await task
    assert sorted(e.type for e in db.entries) == sorted(e.type for e in good)
    assert [letter.entry for letter in db.dead_letters] == bad
    (_batch_id,) = {letter.batch_id for letter in db.dead_letters}
    assert {letter.batch_size for letter in db.dead_letters} == {8}
    assert "refused by MemoryDatabase.refuse" in db.dead_letters[0].error
    stats = sender.stats()
    assert (stats.sent, stats.written, stats.dead_letters, stats.failed, stats.queued) == (
        8,
        6,
        2,
        0,
        0,
    )
    assert stats.failed_writes == 1
    assert any("set aside in eventlog_dead_letters" in r.getMessage() for r in caplog.records)


async def test_a_one_off_refusal_writes_every_entry_after_the_split() -> None:
    db = MemoryDatabase()
    db.fail_next = RuntimeError("disk on fire")
    sender, task = start_database_logger(db, batch_size=4, debounce_time=60)
    sent = events(4)
    sender.send(sent)
    sender.close()
    await task
    assert db.entries == sent
    assert db.dead_letters == []
    assert sender.stats().written == 4


async def test_refused_entries_go_to_a_jsonl_file_without_a_dead_letter_table(
    tmp_path: Path,
) -> None:
    from eventlog.deadletters import list_dead_letter_files

    class NoTable(MemoryDatabase):
        async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
            raise RuntimeError("no such table: eventlog_dead_letters")

    db = NoTable()
    db.refuse = lambda entry: isinstance(entry, EventPayload) and entry.type == "bad"
    sender, _task = start_database_logger(
        db, batch_size=10, debounce_time=60, dead_letter_dir=tmp_path / "dead"
    )
    (bad,) = events(1, "bad")
    bad.type = "bad"
    sender.send([*events(3), bad])
    stats = await sender.aclose()
    assert stats.dead_letters == 1
    assert stats.written == 3
    (path,) = (tmp_path / "dead").glob("*.jsonl")
    line = path.read_text().strip()
    assert str(bad.id) in line
    assert "refused by MemoryDatabase.refuse" in line
    assert list_dead_letter_files(tmp_path / "dead")


async def test_refused_entry_with_nowhere_to_go_is_logged_with_its_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class NoTable(MemoryDatabase):
        async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
            raise RuntimeError("no such table")

    db = NoTable()
    db.refuse = lambda entry: True
    sender, _task = start_database_logger(db, batch_size=10, debounce_time=60)
    (entry,) = events(1, "lonely")
    with caplog.at_level(logging.ERROR, logger="eventlog"):
        sender.send(entry)
        stats = await sender.aclose()
    assert (stats.failed, stats.dead_letters, stats.written) == (1, 0, 0)
    assert any(str(entry.id) in r.getMessage() for r in caplog.records)


async def test_stats_show_an_accepted_send_at_once() -> None:
    db, clock = MemoryDatabase(), ManualClock()
    sender, task = start_database_logger(db, batch_size=10, debounce_time=5, clock=clock)
    sender.send(events(3))
    assert sender.stats().sent == 3
    assert sender.stats().queued == 3
    sender.close()
    await task
    assert sender.stats().queued == 0


async def test_a_wrapper_around_write_log_batch_sees_every_batch() -> None:
    class Counting(MemoryDatabase):
        seen: list[int]

        async def write_log_batch(self, entries):  # type: ignore[no-untyped-def]
            self.seen = [*getattr(self, "seen", []), len(entries)]
            await super().write_log_batch(entries)

    db = Counting()
    sender, task = start_database_logger(db, batch_size=7, debounce_time=60)
    sender.send(events(20))
    sender.close()
    await task
    assert db.seen == [7, 7, 6]


async def test_debounce_time_accepts_a_timedelta() -> None:
    db, clock = MemoryDatabase(), ManualClock()
    sender, task = start_database_logger(
        db, batch_size=100, debounce_time=timedelta(milliseconds=250), clock=clock
    )
    sender.send(events(1))
    clock.advance(0.2)
    await writer_asleep(sender)
    assert db.batches == []
    clock.advance(0.05)
    await db.wait_for_batches(1)
    sender.close()
    await task


async def test_zero_debounce_time_writes_each_drain_at_once() -> None:
    db, clock = MemoryDatabase(), ManualClock()  # time never moves: no waiting at all
    sender, task = start_database_logger(db, batch_size=100, debounce_time=0, clock=clock)
    sender.send(events(1))
    await db.wait_for_batches(1)
    sender.close()
    await task


async def test_sends_from_other_threads_wake_the_writer() -> None:
    db = MemoryDatabase()
    sender, task = start_database_logger(db, batch_size=5, debounce_time=60)
    await asyncio.to_thread(sender.send, events(5))
    await db.wait_for_batches(1)
    sender.close()
    await task


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"batch_size": -5}, "batch_size must be a positive int"),
        ({"batch_size": 2.5}, "batch_size must be a positive int"),
        ({"batch_size": True}, "batch_size must be a positive int"),
        ({"debounce_time": -1}, "debounce_time must be finite and >= 0"),
        ({"debounce_time": float("nan")}, "debounce_time must be finite"),
        ({"debounce_time": float("inf")}, "debounce_time must be finite"),
        ({"debounce_time": "1s"}, "debounce_time must be seconds"),
        ({"debounce_time": timedelta(seconds=-1)}, "debounce_time must be finite and >= 0"),
    ],
)
async def test_invalid_arguments_raise_value_error_naming_the_parameter(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        start_database_logger(MemoryDatabase(), **kwargs)  # type: ignore[arg-type]


def test_starting_without_a_running_loop_says_where_to_call_it() -> None:
    with pytest.raises(RuntimeError, match="inside a running event loop"):
        start_database_logger(MemoryDatabase())


async def test_repeated_write_failures_are_summarised_not_hidden(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Down(MemoryDatabase):
        async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
            raise ConnectionRefusedError("database is down")

    sender, task = start_database_logger(Down(), batch_size=2, debounce_time=60, close_timeout=0)
    with caplog.at_level(logging.ERROR, logger="eventlog"):
        sender.send(events(7))
        sender.close()
        await task
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "failed to write a batch of 2 entries" in messages[0]
    assert "3 more batches (5 entries)" in messages[1]
    assert "database is down" in messages[1]


async def test_cancelling_the_writer_writes_what_is_pending_first() -> None:
    db = MemoryDatabase()
    sender, task = start_database_logger(db, batch_size=100, debounce_time=60)
    sent = events(4)
    sender.send(sent)
    await writer_asleep(sender)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.entries == sent
    assert sender.closed
    stats = sender.stats()
    assert (stats.written, stats.failed, stats.queued) == (4, 0, 0)


async def test_cancelling_the_writer_gives_up_after_cancel_timeout_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Hanging(MemoryDatabase):
        async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
            await asyncio.Event().wait()

    db = Hanging()
    sender, task = start_database_logger(db, batch_size=100, debounce_time=0, cancel_timeout=0.05)
    sender.send(events(4))
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="eventlog"):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sender.stats().failed == 4
    assert any("cancelled with 4 entries not written" in r.getMessage() for r in caplog.records)


class Gated(MemoryDatabase):
    """Each write waits until the test opens its gate; two may be under way at once."""

    concurrent_writes = 2

    def __init__(self) -> None:
        super().__init__()
        self.started: list[list[ProxyLogEntry]] = []
        self.written_when_started: list[int] = []
        self.gates: list[asyncio.Event] = []
        self.started_changed = asyncio.Event()

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
        gate = asyncio.Event()
        self.started.append(list(entries))
        self.written_when_started.append(len(self.batches))
        self.gates.append(gate)
        self.started_changed.set()
        await gate.wait()
        await super().write_log_batch(entries)

    async def wait_started(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.started) < count:
                self.started_changed.clear()
                await self.started_changed.wait()


async def test_two_batches_are_written_at_once_but_run_events_keep_their_order() -> None:
    from eventlog import RunStartEvent, RunUpdateEvent
    from eventlog.ids import uuid7

    db = Gated()
    sender, task = start_database_logger(db, batch_size=2, debounce_time=60)
    run_id = uuid7()
    first = [RunStartEvent(id=run_id, name="r"), *events(1)]
    rows_only = events(2, "rows")
    second = [RunUpdateEvent(id=run_id, status="finished"), *events(1)]
    sender.send(first)
    await db.wait_started(1)
    sender.send(rows_only)
    await db.wait_started(2)  # a batch of rows only does not wait for the first
    sender.send(second)
    db.gates[1].set()  # rows_only is written; a slot is free for `second`...
    await db.wait_for_batches(1)
    assert db.batches == [rows_only]
    db.gates[0].set()  # ...but `second` starts only once `first` is written
    await db.wait_started(3)
    db.gates[2].set()
    sender.close()
    await task
    assert db.started == [first, rows_only, second]
    assert db.written_when_started == [0, 0, 2]
    assert db.batches == [rows_only, first, second]


class Flaky(MemoryDatabase):
    """Refuses the connection ``outage`` times, then works."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage = outage
        self.attempts = 0

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
        self.attempts += 1
        if self.outage > 0:
            self.outage -= 1
            raise ConnectionRefusedError("connection refused")
        await super().write_log_batch(entries)


async def test_batch_that_fails_for_a_transient_reason_is_retried_until_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = Flaky(outage=3)
    sender, task = start_database_logger(
        db, batch_size=3, debounce_time=60, retry_base_delay=0.001, retry_max_delay=0.004
    )
    first = events(3)
    with caplog.at_level(logging.WARNING, logger="eventlog"):
        sender.send(first)
        await db.wait_for_batches(1)
    assert db.batches == [first]
    assert db.attempts == 4
    stats = sender.stats()
    assert (stats.written, stats.failed, stats.retries, stats.transient_failures) == (3, 0, 3, 3)
    (warning,) = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "ConnectionRefusedError" in warning.getMessage()
    sender.close()
    await task


async def test_entries_sent_during_an_outage_are_written_after_it_in_order() -> None:
    db = Flaky(outage=5)
    sender, task = start_database_logger(
        db, batch_size=2, debounce_time=60, retry_base_delay=0.001, retry_max_delay=0.002
    )
    sent = events(6)
    for entry in sent:
        sender.send(entry)  # accepted at once while the first batch is being retried
        assert sender.stats().dropped == 0
    sender.close()
    await task
    assert db.entries == sent
    assert sender.stats().failed == 0
    assert sender.stats().retries == 5


async def test_a_failure_that_is_not_transient_is_split_not_retried() -> None:
    db = MemoryDatabase()
    db.refuse = lambda entry: True
    sender, task = start_database_logger(db, batch_size=2, debounce_time=60)
    sender.send(events(2))
    sender.close()
    await task
    stats = sender.stats()
    assert (stats.dead_letters, stats.retries, stats.transient_failures) == (2, 0, 0)


async def test_retrying_stops_close_timeout_after_close() -> None:
    class Down(MemoryDatabase):
        async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
            raise ConnectionRefusedError("database is down")

    clock = ManualClock()
    sender, task = start_database_logger(
        Down(),
        batch_size=10,
        debounce_time=0,
        clock=clock,
        retry_base_delay=0.001,
        retry_max_delay=0.001,
        close_timeout=5,
    )
    sender.send(events(4))
    sender.close()
    # Still retrying: the deadline is 5 s of the logger's clock after close().
    await asyncio.sleep(0.05)
    assert not task.done()
    assert sender.stats().retries > 0
    clock.advance(5)
    await asyncio.wait_for(task, 10)
    stats = sender.stats()
    assert (stats.sent, stats.written, stats.failed, stats.queued) == (4, 0, 4, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry_base_delay": -1}, "retry_base_delay must be a finite number"),
        ({"retry_max_delay": float("inf")}, "retry_max_delay must be a finite number"),
        ({"close_timeout": "10"}, "close_timeout must be a finite number"),
        ({"retry_base_delay": 2, "retry_max_delay": 1}, "retry_max_delay must be >= "),
    ],
)
async def test_invalid_retry_arguments_name_the_parameter(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        start_database_logger(MemoryDatabase(), **kwargs)  # type: ignore[arg-type]


async def test_aclose_writes_everything_and_returns_the_final_stats() -> None:
    db = MemoryDatabase()
    sender, task = start_database_logger(db, batch_size=100, debounce_time=3600)
    sender.send(events(5))
    stats = await sender.aclose()
    assert task.done()
    assert (stats.sent, stats.written, stats.queued) == (5, 5, 0)
    assert await sender.aclose() == stats  # closing twice is harmless


async def test_aclose_timeout_bounds_retrying_an_unavailable_database() -> None:
    class Down(MemoryDatabase):
        async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
            raise ConnectionRefusedError("database is down")

    sender, task = start_database_logger(
        Down(), batch_size=10, debounce_time=0, retry_base_delay=0.01, retry_max_delay=0.02
    )
    sender.send(events(3))
    stats = await sender.aclose(timeout=0.2)
    assert task.done()
    assert (stats.sent, stats.written, stats.failed, stats.queued) == (3, 0, 3, 0)
    assert stats.retries > 0


async def test_aclose_timeout_ends_a_write_that_never_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Hanging(MemoryDatabase):
        async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
            await asyncio.Event().wait()

    sender, task = start_database_logger(Hanging(), batch_size=10, debounce_time=0)
    sender.send(events(2))
    with caplog.at_level(logging.WARNING, logger="eventlog"):
        stats = await sender.aclose(timeout=0.1)
    assert task.cancelled()
    assert (stats.sent, stats.written, stats.failed, stats.queued) == (2, 0, 2, 0)
    assert any("counted as failed" in r.getMessage() for r in caplog.records)


async def test_aclose_rejects_a_negative_timeout() -> None:
    sender, task = start_database_logger(MemoryDatabase())
    with pytest.raises(ValueError, match="timeout must be seconds >= 0"):
        await sender.aclose(timeout=-1)
    await sender.aclose()
    assert task.done()
