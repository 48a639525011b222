"""A real PostgreSQL that goes away and comes back: nothing sent is lost or doubled."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator

import pytest
from conftest import REQUIRE_POSTGRES
from pgcluster import Cluster
from sqlalchemy import func, select

import eventlog
from eventlog import EventPayload, start_database_logger
from eventlog.schema import chronicle_events

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    try:
        made = Cluster()
    except Exception as err:  # no server binaries, no postgres user, ...
        if REQUIRE_POSTGRES:
            pytest.fail(f"EVENTLOG_REQUIRE_POSTGRES=1 but no throwaway cluster: {err}")
        pytest.skip(f"cannot make a throwaway PostgreSQL cluster: {err}")
    try:
        made.start()
        yield made
    finally:
        made.remove()


async def stored_ids(db: eventlog.Database) -> list[uuid.UUID]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(select(chronicle_events.c.id))).scalars())


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 60 s) for ``condition()`` to hold, looking every 10 ms: the logger's
    counters have no event to wait on."""
    async with asyncio.timeout(60):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_every_event_is_written_once_across_a_server_restart(cluster: Cluster) -> None:
    db = await eventlog.open_database(cluster.url, migrate=True)
    sender, task = start_database_logger(
        db, batch_size=50, debounce_time=0.02, retry_base_delay=0.05, retry_max_delay=0.5
    )
    sent: list[uuid.UUID] = []

    async def steady_stream(count: int) -> None:
        for i in range(count):
            event = EventPayload(type="tick", data={"i": i})
            sent.append(event.id)
            sender.send(event)
            await asyncio.sleep(0.002)

    producer = asyncio.create_task(steady_stream(1_500))
    await until(lambda: sender.stats().written >= 200)
    await asyncio.to_thread(cluster.stop)  # terminates the writer's connections too
    written_before = sender.stats().written
    await asyncio.sleep(2)  # the outage: sending goes on meanwhile
    assert sender.stats().written == written_before
    await asyncio.to_thread(cluster.start)
    await producer
    sender.close()
    await task
    stats = sender.stats()
    assert stats.transient_failures > 0
    assert (stats.sent, stats.written, stats.failed, stats.queued) == (1_500, 1_500, 0, 0)
    ids = await stored_ids(db)
    assert len(ids) == len(set(ids)) == 1_500
    assert set(ids) == set(sent)
    await db.close()


async def test_logger_started_while_the_database_is_down_writes_once_it_is_up(
    cluster: Cluster,
) -> None:
    db = await eventlog.open_database(cluster.url, migrate=True)
    await db.close()
    await asyncio.to_thread(cluster.stop)
    db = await eventlog.open_database(cluster.url)  # the application starts anyway
    sender, task = start_database_logger(
        db, batch_size=20, debounce_time=0.01, retry_base_delay=0.05, retry_max_delay=0.3
    )
    entries = [EventPayload(type="early", data={"i": i}) for i in range(100)]
    sender.send(entries)
    await until(lambda: sender.stats().transient_failures > 0)
    assert sender.stats().written == 0
    await asyncio.to_thread(cluster.start)
    sender.close()
    await task
    assert sender.stats().written == 100
    async with db.engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(chronicle_events))).scalar()
    assert total == 100
    await db.close()
