"""Bounded memory under a real outage: the database is down (a stopped PostgreSQL
server, a SQLite volume that is gone) while the queue fills, then comes back."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from conftest import REQUIRE_POSTGRES, require_postgres
from pgcluster import Cluster
from sqlalchemy import select, text

import eventlog
from eventlog import EventPayload, LogSender, start_database_logger
from eventlog.migrate import upgrade
from eventlog.schema import chronicle_events

pytestmark = pytest.mark.timeout(180)

FAST_RETRY = {"retry_base_delay": 0.02, "retry_max_delay": 0.2}


class Outage:
    """A database of one backend that starts down; ``up()`` brings it back."""

    url: str

    async def up(self) -> None:
        raise NotImplementedError


class SQLiteOutage(Outage):
    def __init__(self, root: Path) -> None:
        self.ready = root / "ready"
        self.volume = root / "volume"
        self.url = f"sqlite:///{self.volume / 'events.db'}"
        self.volume.write_text("the volume is not mounted\n")  # opening the file fails

    async def prepare(self) -> None:
        db = await eventlog.open_database(self.ready / "events.db", migrate=True)
        await db.close()

    async def up(self) -> None:
        self.volume.unlink()
        shutil.move(self.ready, self.volume)


class PostgresOutage(Outage):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.url = cluster.url

    async def up(self) -> None:
        await asyncio.to_thread(self.cluster.start)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require_postgres()
    try:
        made = Cluster()
    except Exception as err:  # no server binaries, no postgres user, ...
        if REQUIRE_POSTGRES:
            pytest.fail(f"EVENTLOG_REQUIRE_POSTGRES=1 but no throwaway cluster: {err}")
        pytest.skip(f"cannot make a throwaway PostgreSQL cluster: {err}")
    try:
        made.start()

        async def migrate() -> None:
            db = await eventlog.open_database(made.url)
            await upgrade(db.engine)
            await db.close()

        # Fixtures may be made from inside a running loop: migrate in a thread of its own.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, migrate()).result()
        made.stop()
        yield made
    finally:
        made.remove()


@pytest.fixture
async def outage(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Outage]:
    if backend == "sqlite":
        made = SQLiteOutage(tmp_path)
        await made.prepare()
        yield made
        return
    cluster: Cluster = request.getfixturevalue("cluster")
    await asyncio.to_thread(cluster.start)
    db = await eventlog.open_database(cluster.url)
    async with db.engine.begin() as conn:
        await conn.execute(text("TRUNCATE chronicle_events"))
    await db.close()
    await asyncio.to_thread(cluster.stop)
    yield PostgresOutage(cluster)
    if (cluster.data / "postmaster.pid").exists():
        await asyncio.to_thread(cluster.stop)


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 60 s) for the logger's own counters; they have no event to await."""
    async with asyncio.timeout(60):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def stored_ids(url: str) -> list[uuid.UUID]:
    db = await eventlog.open_database(url)
    try:
        async with db.engine.connect() as conn:
            return list((await conn.execute(select(chronicle_events.c.id))).scalars())
    finally:
        await db.close()


def stream(n: int) -> list[EventPayload]:
    return [EventPayload(type="outage", data={"i": i}) for i in range(n)]


async def test_block_holds_senders_while_the_database_is_down_and_loses_nothing(
    outage: Outage,
) -> None:
    db = await eventlog.open_database(outage.url)
    sender, _ = start_database_logger(
        db, batch_size=10, debounce_time=0.01, max_queue=20, overflow="block", **FAST_RETRY
    )
    sent = stream(100)
    thread = threading.Thread(target=lambda: [sender.send(entry) for entry in sent])
    thread.start()
    await until(lambda: sender._blocked == 1 and sender.stats().transient_failures > 0)
    assert sender.stats().queued == 20  # the bound holds while the database is away
    await outage.up()
    await asyncio.to_thread(thread.join, 60)
    stats = await sender.aclose()
    await db.close()
    assert (stats.sent, stats.written, stats.dropped, stats.failed) == (100, 100, 0, 0)
    ids = await stored_ids(outage.url)
    assert sorted(ids) == sorted(entry.id for entry in sent)


async def test_drop_newest_counts_what_a_down_database_could_not_take(outage: Outage) -> None:
    db = await eventlog.open_database(outage.url)
    sender, _ = start_database_logger(
        db, batch_size=10, debounce_time=0.01, max_queue=50, **FAST_RETRY
    )
    sent = stream(80)
    for entry in sent:
        sender.send(entry)
    stats = sender.stats()
    assert (stats.sent, stats.dropped_by_reason["queue_full"]) == (50, 30)
    await until(lambda: sender.stats().transient_failures > 0)
    await outage.up()
    stats = await sender.aclose()
    await db.close()
    assert (stats.written, stats.failed, stats.queued) == (50, 0, 0)
    assert sorted(await stored_ids(outage.url)) == sorted(entry.id for entry in sent[:50])


async def test_spill_keeps_memory_bounded_through_an_outage_and_writes_everything_once(
    outage: Outage, tmp_path: Path
) -> None:
    db = await eventlog.open_database(outage.url)
    sender, _ = start_database_logger(
        db,
        batch_size=10,
        debounce_time=0.01,
        max_queue=20,
        overflow="spill",
        spool_dir=tmp_path / "spool",
        **FAST_RETRY,
    )
    sent = stream(300)
    for entry in sent:
        sender.send(entry)
    await until(lambda: sender.stats().spooled == 300)
    await until(lambda: sender.stats().transient_failures > 0)
    assert _in_memory(sender) <= 20
    assert sender.stats().dropped == 0
    await outage.up()
    stats = await sender.aclose()
    await db.close()
    assert (stats.written, stats.failed, stats.queued, stats.spooled) == (300, 0, 0, 0)
    assert sorted(await stored_ids(outage.url)) == sorted(entry.id for entry in sent)
    assert list((tmp_path / "spool").glob("*.spool")) == []


def _in_memory(sender: LogSender) -> int:
    spool = sender._spool
    assert spool is not None
    return spool._in_memory
