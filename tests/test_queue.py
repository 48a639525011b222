"""Bounded memory and backpressure: ``max_queue`` and its overflow modes, the high-water
warning, the guard against logging loops, and the stats that show them."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

import pytest

from eventlog import EventPayload, LogSender, start_database_logger
from eventlog.events import ProxyLogEntry
from eventlog.testing import MemoryDatabase


def events(n: int, prefix: str = "e") -> list[EventPayload]:
    return [EventPayload(type=f"{prefix}{i}") for i in range(n)]


class Gated(MemoryDatabase):
    """Writes wait for ``open`` to be set: the database is slow, the queue fills."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.writing = asyncio.Event()

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
        self.writing.set()
        await self.open.wait()
        await super().write_log_batch(entries)


async def writing(db: Gated) -> None:
    async with asyncio.timeout(10):
        await db.writing.wait()


async def test_drop_newest_refuses_entries_over_the_bound_which_covers_the_write_under_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = Gated()
    sender, _task = start_database_logger(db, batch_size=2, debounce_time=0, max_queue=5)
    sent = events(8)
    sender.send(sent[:2])
    await writing(db)  # the first two are being written: they still count
    with caplog.at_level(logging.WARNING, logger="eventlog"):
        for entry in sent[2:]:
            sender.send(entry)
    stats = sender.stats()
    assert (stats.sent, stats.queued, stats.dropped) == (5, 5, 3)
    assert stats.dropped_by_reason["queue_full"] == 3
    assert sum("queue is full" in r.getMessage() for r in caplog.records) == 1
    db.open.set()
    await sender.aclose()
    assert db.entries == sent[:5]


async def test_drop_oldest_pushes_out_the_oldest_entries_not_yet_taken() -> None:
    db = Gated()
    sender, _task = start_database_logger(db, batch_size=2, debounce_time=0, max_queue=5)
    sent = events(8)
    sender.send(sent[:2])
    await writing(db)
    sender.send(sent[2:5])  # queued behind the write
    sender._overflow = "drop_oldest"
    for entry in sent[5:]:
        sender.send(entry)
    stats = sender.stats()
    assert stats.dropped_by_reason["evicted"] == 3
    assert stats.queued == 5
    db.open.set()
    final = await sender.aclose()
    assert db.entries == sent[:2] + sent[5:]
    assert final.sent == final.written + final.dropped_by_reason["evicted"]


async def test_drop_oldest_can_be_chosen_at_start() -> None:
    db = Gated()
    sender, _task = start_database_logger(
        db, batch_size=1, debounce_time=0, max_queue=2, overflow="drop_oldest"
    )
    sent = events(4)
    sender.send(sent[0])
    await writing(db)
    for entry in sent[1:]:
        sender.send(entry)
    db.open.set()
    await sender.aclose()
    assert db.entries == [sent[0], sent[3]]


async def test_block_makes_other_threads_wait_for_room_and_never_blocks_the_loop() -> None:
    db = Gated()
    sender, _task = start_database_logger(
        db, batch_size=2, debounce_time=0, max_queue=2, overflow="block"
    )
    sent = events(4)
    sender.send(sent[:2])
    await writing(db)
    sender.send(sent[2])  # from the loop's own thread: accepted over the bound
    assert sender.stats().queued == 3
    done = threading.Event()

    def other_thread() -> None:
        sender.send(sent[3])
        done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    async with asyncio.timeout(10):
        while sender._blocked == 0:  # noqa: ASYNC110 - the sender's own state, no event
            await asyncio.sleep(0.001)
    assert not done.is_set()
    db.open.set()  # the write completes: room for the blocked sender
    await asyncio.to_thread(thread.join, 10)
    assert done.is_set()
    await sender.aclose()
    assert db.entries == sent
    assert sender.stats().dropped == 0


async def test_send_async_waits_for_room_without_blocking_the_loop() -> None:
    db = Gated()
    sender, _task = start_database_logger(
        db, batch_size=2, debounce_time=0, max_queue=2, overflow="block"
    )
    sent = events(3)
    sender.send(sent[:2])
    await writing(db)
    waiting = asyncio.create_task(sender.send_async(sent[2]))
    for _ in range(100):
        await asyncio.sleep(0)
    assert not waiting.done()  # no room yet, and the loop still runs this test
    db.open.set()
    async with asyncio.timeout(10):
        await waiting
    await sender.aclose()
    assert db.entries == sent


async def test_a_blocked_sender_is_released_by_close_and_its_entry_counted() -> None:
    db = Gated()
    sender, task = start_database_logger(
        db, batch_size=1, debounce_time=0, max_queue=1, overflow="block", close_timeout=0
    )
    sender.send(events(1))
    await writing(db)
    thread = threading.Thread(target=sender.send, args=(EventPayload(type="late"),))
    thread.start()
    async with asyncio.timeout(10):
        while sender._blocked == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    sender.close()
    await asyncio.to_thread(thread.join, 10)
    assert sender.stats().dropped_by_reason["closed"] == 1
    db.open.set()
    await task


async def test_high_water_warning_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    db = Gated()
    sender, _task = start_database_logger(db, batch_size=100, debounce_time=0, high_water=10)
    with caplog.at_level(logging.WARNING, logger="eventlog"):
        for entry in events(30):
            sender.send(entry)
    warnings = [r for r in caplog.records if "high-water mark 10" in r.getMessage()]
    assert len(warnings) == 1
    db.open.set()
    await sender.aclose()


async def test_eventlog_own_warnings_do_not_loop_through_an_application_handler() -> None:
    db = MemoryDatabase()
    sender, task = start_database_logger(db, batch_size=10, debounce_time=0)

    class IntoEventlog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            sender.send(EventPayload(type="log", data={"message": record.getMessage()}))

    handler = IntoEventlog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        sender.close()
        sender.send(EventPayload(type="after close"))  # eventlog warns: handler -> send()
    finally:
        root.removeHandler(handler)
    await task
    stats = sender.stats()
    assert stats.dropped_by_reason["closed"] == 1
    assert stats.dropped_by_reason["recursion"] == 1


async def test_stats_show_the_oldest_waiting_entry_and_write_latency() -> None:
    db = Gated()
    sender, _task = start_database_logger(db, batch_size=1, debounce_time=0)
    assert sender.stats().oldest_queued_age is None
    sender.send(events(2))
    await writing(db)
    age = sender.stats().oldest_queued_age
    assert age is not None
    assert age >= 0
    db.open.set()
    stats = await sender.aclose()
    assert stats.oldest_queued_age is None
    assert stats.write_latency_last is not None
    assert stats.write_latency_p50 is not None
    assert stats.write_latency_p99 is not None
    assert stats.write_latency_p99 >= stats.write_latency_p50 >= 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_queue": 0}, "max_queue must be a positive int"),
        ({"max_queue": 10, "overflow": "wait"}, "overflow must be one of"),
        ({"overflow": "spill"}, "needs spool_dir"),
        ({"high_water": -1}, "high_water must be a positive int"),
        ({"cancel_timeout": -1}, "cancel_timeout must be"),
        ({"spool_fsync_interval": float("nan")}, "spool_fsync_interval must be"),
    ],
)
async def test_invalid_queue_options_name_the_parameter(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        start_database_logger(MemoryDatabase(), **options)  # type: ignore[arg-type]


async def test_drop_oldest_with_a_spool_is_refused(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="drop_oldest"):
        start_database_logger(
            MemoryDatabase(), max_queue=5, overflow="drop_oldest", spool_dir=str(tmp_path)
        )


def _unused(sender: LogSender) -> None:  # keeps the import for type checkers
    del sender


async def test_max_queue_bytes_bounds_the_size_of_what_waits() -> None:
    db = Gated()
    big = [EventPayload(type="big", data={"text": "x" * 10_000, "i": i}) for i in range(10)]
    sender, _ = start_database_logger(db, batch_size=1, debounce_time=0, max_queue_bytes=35_000)
    sender.send(big[0])
    await writing(db)
    for entry in big[1:]:
        sender.send(entry)
    stats = sender.stats()
    assert stats.sent == 3  # three 10 KB entries fit in 35,000 bytes, the fourth does not
    assert stats.dropped_by_reason["queue_full"] == 7
    assert 30_000 < stats.queued_bytes <= 35_000
    db.open.set()
    final = await sender.aclose()
    assert db.entries == big[:3]
    assert final.queued_bytes == 0


async def test_one_entry_larger_than_max_queue_bytes_still_goes_into_an_empty_queue() -> None:
    db = MemoryDatabase()
    sender, _ = start_database_logger(db, batch_size=10, debounce_time=0, max_queue_bytes=1024)
    huge = EventPayload(type="huge", data={"text": "y" * 5000})
    sender.send(huge)
    await sender.aclose()
    assert db.entries == [huge]


async def test_a_message_larger_than_max_queue_goes_into_an_empty_queue_even_blocking() -> None:
    db = MemoryDatabase()
    sender, _ = start_database_logger(
        db, batch_size=10, debounce_time=0, max_queue=3, overflow="block"
    )
    message = events(8)
    await asyncio.wait_for(asyncio.to_thread(sender.send, message), 10)
    await asyncio.wait_for(sender.send_async(events(5, "async")), 10)
    await sender.aclose()
    assert len(db.entries) == 13


async def test_drop_oldest_evicts_nothing_when_that_would_not_make_room() -> None:
    db = Gated()
    sender, _ = start_database_logger(
        db, batch_size=10, debounce_time=0, max_queue=10, overflow="drop_oldest"
    )
    sent = events(10)
    sender.send(sent)  # all ten are being written: nothing queued can make room
    await writing(db)
    sender.send(events(5, "late"))
    stats = sender.stats()
    assert stats.dropped_by_reason["evicted"] == 0
    assert stats.dropped_by_reason["queue_full"] == 5
    db.open.set()
    await sender.aclose()
    assert db.entries == sent


async def test_aclose_lets_a_cancellation_of_its_caller_through() -> None:
    class Hanging(MemoryDatabase):
        async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
            await asyncio.Event().wait()

    sender, task = start_database_logger(Hanging(), batch_size=1, debounce_time=0)
    sender.send(events(1))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await sender.aclose()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelling_while_a_batch_waits_for_a_write_slot_loses_none_of_it() -> None:
    class Flaky(MemoryDatabase):
        concurrent_writes = 2

        def __init__(self) -> None:
            super().__init__()
            self.down = True
            self.attempts = 0

        async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
            self.attempts += 1
            await asyncio.sleep(0)
            if self.down:
                raise ConnectionRefusedError("down")
            await super().write_log_batch(entries)

    db = Flaky()
    sender, task = start_database_logger(
        db, batch_size=10, debounce_time=0, retry_base_delay=0.01, retry_max_delay=0.01
    )
    sent = events(50)
    sender.send(sent)
    async with asyncio.timeout(10):
        while db.attempts < 4:  # noqa: ASYNC110 - both slots busy retrying
            await asyncio.sleep(0.001)
    db.down = False
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(e.type for e in db.entries) == sorted(e.type for e in sent)
    assert sender.stats().failed == 0
