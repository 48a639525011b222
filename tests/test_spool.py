"""The durable spool: entries survive a database that is away, a close before they are
written, and a process killed with SIGKILL; damaged records never block start-up.

Faults are real: a PostgreSQL port where nothing listens, a SQLite file whose folder
has been replaced by a plain file (the OS refuses to open it), a child process killed
with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select

import eventlog
from eventlog import EventPayload, start_database_logger
from eventlog.events import ProxyLogEntry
from eventlog.records import entry_to_record
from eventlog.schema import chronicle_events
from eventlog.spool import _frame
from eventlog.testing import MemoryDatabase

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def unreachable_url(backend: str, tmp_path: Path) -> str:
    """A database of ``backend`` that cannot be reached (and is not, until the test
    says so): a closed port, or a SQLite file whose folder is a plain file."""
    if backend == "postgresql":
        return f"postgresql://postgres@127.0.0.1:{free_port()}/away?connect_timeout=1"
    folder = tmp_path / "volume"
    folder.mkdir()
    url = f"sqlite:///{folder / 'events.db'}"
    return url


def block_sqlite(tmp_path: Path) -> None:
    folder = tmp_path / "volume"
    if folder.is_dir():
        shutil.rmtree(folder)
        folder.write_text("the volume is gone\n")


async def stored(db: eventlog.Database) -> list[uuid.UUID]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(select(chronicle_events.c.id))).scalars())


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.spool"))


async def test_entries_wait_in_the_spool_and_the_next_logger_writes_them_once(
    backend: str, db: eventlog.Database, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    away = await eventlog.open_database(await unreachable_url(backend, tmp_path))
    block_sqlite(tmp_path)
    sender, _ = start_database_logger(away, batch_size=20, debounce_time=0, spool_dir=spool)
    sent = [EventPayload(type="spooled", data={"i": i}) for i in range(150)]
    for entry in sent:
        sender.send(entry)
    stats = await sender.aclose(timeout=1.5)
    await away.close()
    assert stats.failed == 0
    assert stats.spooled == 150
    assert stats.queued == 150
    assert segments(spool)

    # The database is back: a new logger replays the spool first, even if closed at once.
    sender, _ = start_database_logger(db, batch_size=20, debounce_time=0, spool_dir=spool)
    stats = await sender.aclose()
    assert stats.replayed == 150
    assert stats.written == 150
    assert stats.spooled == 0
    ids = await stored(db)
    assert sorted(ids) == sorted(entry.id for entry in sent)
    assert segments(spool) == []


async def test_a_spool_is_replayed_ahead_of_entries_sent_after_start(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    old = [EventPayload(type="old", data={"i": i}) for i in range(5)]
    spool.mkdir()
    (spool / "00000000000000000001-1-000001.spool").write_bytes(
        b"".join(_frame(entry_to_record(entry)) for entry in old)
    )
    db = MemoryDatabase()
    sender, _ = start_database_logger(db, batch_size=100, debounce_time=0, spool_dir=spool)
    new = [EventPayload(type="new", data={"i": i}) for i in range(5)]
    for entry in new:
        sender.send(entry)
    await sender.aclose()
    assert db.entries == old + new


async def test_damaged_records_are_skipped_and_counted_never_blocking_start_up(
    backend: str, db: eventlog.Database, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    good = [EventPayload(type="good", data={"i": i}) for i in range(3)]
    record = entry_to_record(EventPayload(type="lost"))
    (spool / "00000000000000000001-1-000001.spool").write_bytes(
        _frame(entry_to_record(good[0]))
        + b"deadbeef "
        + record
        + b"\n"  # wrong checksum
        + _frame(b'{"kind": "NoSuchEvent"}')  # a record that is no entry
        + b"\x00\xff garbage \n"
        + _frame(entry_to_record(good[1]))
        + _frame(entry_to_record(good[2]))[:-7]  # torn: the writer died mid-record
    )
    sender, _ = start_database_logger(db, batch_size=10, debounce_time=0, spool_dir=spool)
    stats = await sender.aclose()
    assert stats.spool_corrupt == 4
    assert sorted(await stored(db)) == sorted([good[0].id, good[1].id])
    assert segments(spool) == []


class Gated(MemoryDatabase):
    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
        await self.open.wait()
        await super().write_log_batch(entries)


async def test_spill_keeps_memory_bounded_and_reads_the_excess_back_in_order(
    tmp_path: Path,
) -> None:
    db = Gated()
    sender, _task = start_database_logger(
        db,
        batch_size=10,
        debounce_time=0,
        max_queue=20,
        overflow="spill",
        spool_dir=tmp_path / "spool",
    )
    sent = [EventPayload(type="spill", data={"i": i}) for i in range(500)]
    for i, entry in enumerate(sent):
        sender.send(entry)
        if i % 50 == 0:
            await asyncio.sleep(0)
    async with asyncio.timeout(10):
        while sender.stats().spooled < 500:  # noqa: ASYNC110 - the spool's own counter
            await asyncio.sleep(0.005)
    spool = sender._spool
    assert spool is not None
    assert spool._in_memory <= 20
    assert sender.stats().dropped == 0
    db.open.set()
    stats = await sender.aclose()
    assert db.entries == sent
    assert stats.written == 500
    assert segments(tmp_path / "spool") == []


CHILD = textwrap.dedent(
    """
    import asyncio, shutil, sys, time
    from pathlib import Path
    import eventlog
    from eventlog import EventPayload, start_database_logger

    url, spool, block = sys.argv[1], sys.argv[2], sys.argv[3]

    async def main():
        db = await eventlog.open_database(url)
        if block != "-":  # the SQLite volume goes away
            shutil.rmtree(block)
            Path(block).write_text("gone")
        sender, task = start_database_logger(
            db, batch_size=50, debounce_time=0.05, spool_dir=spool,
            spool_fsync_interval=0.05,
        )
        i = 0
        while True:
            entry = EventPayload(type="child", data={"i": i})
            sender.send(entry)
            print(entry.id, time.monotonic(), flush=True)
            i += 1
            await asyncio.sleep(0.001)

    asyncio.run(main())
    """
)


async def test_sigkill_loses_nothing_sent_more_than_one_fsync_interval_before(
    backend: str, db: eventlog.Database, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    url = await unreachable_url(backend, tmp_path)
    block = str(tmp_path / "volume") if backend == "sqlite" else "-"
    child = subprocess.Popen(  # noqa: ASYNC220 - started once; read in a thread below
        [sys.executable, "-c", CHILD, url, str(spool), block],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    sent: list[tuple[uuid.UUID, float]] = []
    try:
        while len(sent) < 400:
            line = await asyncio.to_thread(child.stdout.readline)
            if not line:
                _, err = child.communicate(timeout=10)
                pytest.fail(f"the child ended early: {err}")
            ident, at = line.split()
            sent.append((uuid.UUID(ident), float(at)))
    finally:
        killed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        # The rest through the same file object: readline() reads lines ahead into its
        # buffer, which communicate() skips with two pipes (it reads the descriptor;
        # measured: 150 of 2,000 lines seen), so entries sent and printed went missing
        # from `sent` now and then.
        rest = await asyncio.to_thread(child.stdout.read)
        await asyncio.to_thread(child.wait, 30)
        child.stdout.close()
        assert child.stderr is not None
        child.stderr.close()
    for line in rest.splitlines():
        if line.strip():
            ident, at = line.split()
            sent.append((uuid.UUID(ident), float(at)))
    assert child.returncode == -signal.SIGKILL

    sender, _ = start_database_logger(db, batch_size=100, debounce_time=0, spool_dir=spool)
    stats = await sender.aclose()
    ids = await stored(db)
    assert len(ids) == len(set(ids)) == stats.written
    must_have = {ident for ident, at in sent if at < killed_at - 0.05}
    assert len(must_have) >= 300
    assert must_have <= set(ids)
    assert set(ids) <= {ident for ident, _ in sent}
    assert segments(spool) == []
    async with db.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(chronicle_events))).scalar()
    assert count == len(ids)


async def test_spill_reads_the_backlog_back_while_the_application_is_idle(
    tmp_path: Path,
) -> None:
    db = MemoryDatabase()
    sender, _ = start_database_logger(
        db,
        batch_size=5,
        debounce_time=0,
        max_queue=5,
        overflow="spill",
        spool_dir=tmp_path / "spool",
    )
    sent = [EventPayload(type="idle", data={"i": i}) for i in range(50)]
    for entry in sent:
        sender.send(entry)
    # Nothing else is sent: the writer's progress alone must pull the rest from disk.
    async with asyncio.timeout(20):
        while len(db.entries) < 50:  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.01)
    await sender.aclose()
    assert db.entries == sent
