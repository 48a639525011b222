"""Following new events (``eventlog.tail.follow``, ``eventlog tail``) on both backends.

Every wait is bounded and ends on a condition (a row yielded, a line printed, a
connection seen in ``pg_stat_activity``); absence is checked with a sentinel: a row
written last must be the next one yielded, so a duplicate or an unwanted row, which
would come before it, fails the test. That PostgreSQL's follower listens is shown with
a poll interval of an hour: only a notification can wake it within the test's timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncGenerator
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import RowMapping, text

from eventlog import (
    Database,
    EventPayload,
    ProxyLogEvent,
    RequestMetadata,
    start_database_logger,
)
from eventlog.cli import main
from eventlog.events import utc_now
from eventlog.ids import uuid7
from eventlog.tail import APPLICATION_NAME, follow

EVENTLOG = str(Path(sys.executable).parent / "eventlog")
FAST = 0.02  # poll interval in tests: seconds
HOUR = 3600.0  # a poll interval that never comes round within a test
postgresql_only = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


async def take(rows: AsyncGenerator[RowMapping, None], n: int) -> list[RowMapping]:
    """The next ``n`` rows, within a bounded wait."""
    async with asyncio.timeout(30):
        return [await anext(rows) for _ in range(n)]


async def next_is(
    rows: AsyncGenerator[RowMapping, None], db: Database, at: datetime | None = None
) -> None:
    """Write a sentinel and check it is the very next row: nothing else was pending."""
    sentinel = EventPayload(type="sentinel", time=at or utc_now())
    await db.write_log_batch([sentinel])
    (row,) = await take(rows, 1)
    assert row["id"] == sentinel.id


async def test_follow_yields_what_the_writer_commits_after_it_started_once_and_in_order(
    db: Database,
) -> None:
    await db.write_log_batch([EventPayload(type="before", time=utc_now() - timedelta(seconds=1))])
    rows = follow(db, poll_interval=FAST)
    first = asyncio.ensure_future(anext(rows))
    await asyncio.sleep(0)  # the follower takes "now" as its start on its first step
    db.concurrent_writes = 1  # batches commit in the order sent (see the next test)
    sender, task = start_database_logger(db, batch_size=7, debounce_time=0.005)
    sent = []
    try:
        for wave in range(6):
            for i in range(10):
                event = ProxyLogEvent(model=f"m{wave}", metadata=RequestMetadata(user_id=f"u{i}"))
                sent.append(event)
                sender.send(event)
            await asyncio.sleep(0.01)  # let the writer and the follower interleave
        async with asyncio.timeout(30):
            got = [await first, *await take(rows, len(sent) - 1)]
        assert [row["id"] for row in got] == [event.id for event in sent]
        await next_is(rows, db)
    finally:
        sender.close()
        await task
        await rows.aclose()


async def test_rows_committed_late_within_lag_are_yielded_once(db: Database) -> None:
    start = utc_now()
    a, b, c, d = sorted(uuid7() for _ in range(4))
    rows = follow(db, since=start, poll_interval=FAST)
    await db.write_log_batch([EventPayload(id=c, type="c", time=start + timedelta(seconds=2))])
    assert [row["id"] for row in await take(rows, 1)] == [c]
    # committed after c was yielded, though older: PostgreSQL commits batches side by side
    await db.write_log_batch(
        [
            EventPayload(id=a, type="a", time=start + timedelta(seconds=1)),
            EventPayload(id=d, type="d", time=start + timedelta(seconds=3)),
        ]
    )
    assert [row["id"] for row in await take(rows, 2)] == [a, d]
    await db.write_log_batch([EventPayload(id=b, type="b", time=start + timedelta(seconds=1))])
    assert [row["id"] for row in await take(rows, 1)] == [b]
    await next_is(rows, db)
    await rows.aclose()


async def test_events_sharing_one_created_at_are_told_apart_by_id(db: Database) -> None:
    at = utc_now() + timedelta(seconds=1)
    ids = sorted(uuid7() for _ in range(6))
    rows = follow(db, since=at, poll_interval=FAST, page_size=2)  # pages split the tie
    await db.write_log_batch([EventPayload(id=i, type="tie", time=at) for i in ids[::2]])
    assert [row["id"] for row in await take(rows, 3)] == ids[::2]
    await db.write_log_batch([EventPayload(id=i, type="tie", time=at) for i in ids[1::2]])
    assert [row["id"] for row in await take(rows, 3)] == ids[1::2]
    await next_is(rows, db, at + timedelta(seconds=1))
    await rows.aclose()


async def test_a_row_committed_later_than_lag_is_missed_as_documented(db: Database) -> None:
    start = utc_now() - timedelta(minutes=10)
    rows = follow(db, since=start, poll_interval=FAST, lag=timedelta(seconds=1))
    newer = EventPayload(type="newer", time=utc_now())
    await db.write_log_batch([newer])
    assert [row["id"] for row in await take(rows, 1)] == [newer.id]
    # Stamped five minutes ago, committed now: far more than `lag` late.
    late = EventPayload(type="too late", time=utc_now() - timedelta(minutes=5))
    await db.write_log_batch([late])
    sentinel = EventPayload(type="sentinel", time=utc_now() + timedelta(seconds=1))
    await db.write_log_batch([sentinel])
    assert [row["id"] for row in await take(rows, 1)] == [sentinel.id]
    await rows.aclose()


async def test_since_starts_earlier_and_catches_up_page_by_page(db: Database) -> None:
    now = utc_now()
    old = [EventPayload(type="old", time=now - timedelta(minutes=20))]
    recent = [EventPayload(type="recent", time=now - timedelta(minutes=9)) for _ in range(25)]
    await db.write_log_batch([*old, *recent])
    rows = follow(db, since=timedelta(minutes=10), poll_interval=FAST, page_size=4)
    got = await take(rows, 25)
    assert [row["id"] for row in got] == sorted(e.id for e in recent)
    await next_is(rows, db)
    await rows.aclose()


async def test_where_keeps_the_rows_whose_columns_match(db: Database) -> None:
    start = utc_now()
    wanted = ProxyLogEvent(model="a", timestamp=start)
    other = ProxyLogEvent(model="b", timestamp=start)
    sentinel = ProxyLogEvent(model="a", timestamp=start + timedelta(seconds=1))
    rows = follow(db, since=start, poll_interval=FAST, where={"model": "a"})
    await db.write_log_batch([other, wanted])
    await db.write_log_batch([sentinel])
    assert [row["id"] for row in await take(rows, 2)] == [wanted.id, sentinel.id]
    await rows.aclose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"where": {"nope": 1}}, "where: no column 'nope' in chronicle_events"),
        ({"poll_interval": 0}, "poll_interval must be a finite number of seconds > 0"),
        ({"lag": timedelta(seconds=-1)}, "lag must be a timedelta >= 0"),
        ({"page_size": 0}, "page_size must be a positive int"),
        ({"since": timedelta(seconds=-1)}, "since must be a non-negative age"),
        ({"listen": 1}, "listen must be True, False or None"),
    ],
)
async def test_bad_arguments_are_refused_at_the_first_step(
    db: Database, options: dict[str, object], message: str
) -> None:
    rows = follow(db, **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        await anext(rows)


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def test_cli_tail_prints_one_line_per_event_and_stops_after_limit(
    db: Database, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    now = utc_now()
    call = ProxyLogEvent(
        timestamp=now - timedelta(seconds=3),
        model="gpt-4o",
        response={"usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}},
        latency=timedelta(milliseconds=250),
        metadata=RequestMetadata(user_id="alice", run_id=uuid7()),
        error={"type": "Timeout"},
    )
    await db.write_log_batch([call, EventPayload(type="step", time=now - timedelta(seconds=2))])

    assert await cli("tail", "--url", db_url, "--since", "1m", "--limit", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[2:] == [
        "chronicle_llm_request",
        "gpt-4o",
        "12+5",
        "tok",
        "250",
        "ms",
        "user=alice",
        f"run={call.metadata.run_id}",
        "error",
    ]
    assert lines[1].split()[2:] == ["step", "-", "-", "tok", "-", "ms"]

    args = ["tail", "--url", db_url, "--since", "1m", "--json", "--type", "step", "--limit", "1"]
    assert await cli(*args) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert orjson.loads(line)["event_type"] == "step"


async def test_cli_tail_ends_with_status_0_on_ctrl_c(db: Database, db_url: str) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "EVENTLOG_DATABASE_URL"}
    process = await asyncio.create_subprocess_exec(
        EVENTLOG,
        *["tail", "--url", db_url, "--since", "1m"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    try:
        await db.write_log_batch([EventPayload(type="live")])
        assert process.stdout is not None
        async with asyncio.timeout(60):
            line = await process.stdout.readline()  # it is running and polling
        assert b" live " in line
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            _out, err = await process.communicate()
        assert process.returncode == 0, err
        assert err == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_an_event_stamped_in_the_future_does_not_hide_the_ones_after_it(
    db: Database,
) -> None:
    start = utc_now()
    rows = follow(db, since=start, poll_interval=FAST, lag=timedelta(seconds=10))
    skewed = EventPayload(type="fast clock", time=utc_now() + timedelta(hours=1))
    await db.write_log_batch([skewed])
    assert [row["id"] for row in await take(rows, 1)] == [skewed.id]
    normal = [EventPayload(type="normal", time=utc_now()) for _ in range(3)]
    await db.write_log_batch(normal)
    assert sorted(row["id"] for row in await take(rows, 3)) == sorted(e.id for e in normal)
    await rows.aclose()


# -- listening on PostgreSQL, polling SQLite ------------------------------------------------


async def listeners(db: Database) -> list[tuple[int, str, str]]:
    """(pid, state, last query) of the followers' connections to this database."""
    query = text(
        "SELECT pid, state, query FROM pg_stat_activity "
        "WHERE application_name = :name AND datname = current_database()"
    )
    async with db.engine.connect() as conn:
        rows = await conn.execute(query, {"name": APPLICATION_NAME})
        return [(row.pid, row.state, row.query) for row in rows]


async def listening_pid(db: Database, *, other_than: int | None = None) -> int:
    """Wait until a follower's connection has run LISTEN; its server process id."""
    async with asyncio.timeout(30):
        while True:
            for pid, state, query in await listeners(db):
                if state == "idle" and query.startswith("LISTEN") and pid != other_than:
                    return pid
            await asyncio.sleep(0.01)


async def no_listener(db: Database, *, pid: int | None = None) -> None:
    """Wait until no follower's connection (or not the one of ``pid``) is left."""
    async with asyncio.timeout(30):
        while True:
            if all(pid not in (None, found) for found, _, _ in await listeners(db)):
                return
            await asyncio.sleep(0.01)


class Logged(logging.Handler):
    """Sets ``seen`` when a message containing ``text`` is logged (on the loop's thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def close(
    rows: AsyncGenerator[RowMapping, None], pending: asyncio.Future[RowMapping]
) -> None:
    """Close ``rows``, once the step under way (if a test failed midway) has stopped."""
    pending.cancel()
    await asyncio.wait([pending])
    await rows.aclose()


@postgresql_only
async def test_on_postgresql_an_event_logged_wakes_the_follower_long_before_its_poll(
    db: Database,
) -> None:
    rows = follow(db, poll_interval=HOUR)
    first = asyncio.ensure_future(anext(rows))
    await listening_pid(db)
    sender, task = start_database_logger(db, debounce_time=0.005)
    event = ProxyLogEvent(model="gpt-4o")
    try:
        sender.send(event)
        async with asyncio.timeout(30):
            row = await first
        assert row["id"] == event.id
        await next_is(rows, db)  # written after the follower went back to waiting
    finally:
        sender.close()
        await task
        await close(rows, first)


@sqlite_only
async def test_sqlite_is_polled_and_refuses_listen_true(db: Database) -> None:
    with pytest.raises(ValueError, match="listen=True needs PostgreSQL"):
        await anext(follow(db, listen=True))
    rows = follow(db, since=utc_now(), poll_interval=FAST)
    await next_is(rows, db)
    await rows.aclose()


async def test_listen_false_polls_without_a_listening_connection(db: Database) -> None:
    rows = follow(db, since=utc_now(), poll_interval=FAST, listen=False)
    await next_is(rows, db)  # by now it has waited between reads: a listener would show
    if db.dialect == "postgresql":
        assert await listeners(db) == []
    await rows.aclose()


@postgresql_only
@pytest.mark.parametrize("stop", ["aclose", "cancel"])
async def test_the_listening_connection_is_closed_when_the_iteration_stops(
    db: Database, stop: str
) -> None:
    rows = follow(db, poll_interval=HOUR)
    pending = asyncio.ensure_future(anext(rows))
    await listening_pid(db)
    if stop == "aclose":
        await db.write_log_batch([EventPayload(type="one")])
        async with asyncio.timeout(30):
            await pending
        await rows.aclose()
    else:
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
    await no_listener(db)


@postgresql_only
async def test_a_lost_listening_connection_falls_back_to_polling_and_listens_again(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    rows = follow(db, poll_interval=HOUR)
    pending = asyncio.ensure_future(anext(rows))
    pid = await listening_pid(db)
    try:
        lost = Logged("the connection listening for new events was closed")
        logging.getLogger("eventlog").addHandler(lost)
        try:
            with caplog.at_level(logging.WARNING, logger="eventlog"):
                async with db.engine.connect() as conn:
                    await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                async with asyncio.timeout(30):  # the follower saw it go, and polls
                    await lost.seen.wait()
        finally:
            logging.getLogger("eventlog").removeHandler(lost)
        assert "listening again in 1 s" in caplog.text
        unnotified = EventPayload(type="written while not listening")
        await db.write_log_batch([unnotified])
        async with asyncio.timeout(30):
            assert (await pending)["id"] == unnotified.id

        pending = asyncio.ensure_future(anext(rows))
        await listening_pid(db, other_than=pid)
        sentinel = EventPayload(type="sentinel")
        await db.write_log_batch([sentinel])
        async with asyncio.timeout(30):
            assert (await pending)["id"] == sentinel.id
        await next_is(rows, db)  # only a notification could have woken it
    finally:
        await close(rows, pending)
