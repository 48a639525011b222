"""The background logger for sync code: its thread, its close, the exit hook and fork.

These tests are sync (the logger runs its own loop). Exit and fork are tested in child
Python processes, never by forking pytest itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from eventlog import EventPayload, LoggerStats, open_database
from eventlog.background import THREAD_NAME, BackgroundLogger, start_background_logger
from eventlog.schema import chronicle_events

# A bound on waits that must end (a hang fails the test); never a measure of speed.
HANG = 60.0


def events(n: int, prefix: str = "e") -> list[EventPayload]:
    return [EventPayload(type=f"{prefix}{i}") for i in range(n)]


def send_each(background: BackgroundLogger, entries: list[EventPayload]) -> None:
    for entry in entries:
        background.send(entry)


def migrate(url: str) -> None:
    async def run() -> None:
        db = await open_database(url, migrate=True)
        await db.close()

    asyncio.run(run())


def rows(url: str) -> list[tuple[str, str]]:
    """``(id, event_type)`` of every ``chronicle_events`` row."""

    async def read() -> list[tuple[str, str]]:
        db = await open_database(url)
        try:
            async with db.engine.connect() as conn:
                query = select(chronicle_events.c.id, chronicle_events.c.event_type)
                return [(str(i), str(t)) for i, t in (await conn.execute(query)).all()]
        finally:
            await db.close()

    return asyncio.run(read())


def unreachable_postgres() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return f"postgresql://postgres@127.0.0.1:{port}/nowhere"


def background_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def run_python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a child Python; ``timeout`` makes a hang fail, not wait forever."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=HANG,
        check=False,
    )


@pytest.fixture
def url(backend: str, fresh_url: Callable[[str], str]) -> str:
    """A new, migrated database of ``backend``, with no rows."""
    made = fresh_url(backend)
    migrate(made)
    return made


@pytest.fixture
def closing() -> Iterator[list[BackgroundLogger]]:
    """Loggers a test starts: closed afterwards even if the test failed."""
    loggers: list[BackgroundLogger] = []
    yield loggers
    for background in loggers:
        background.close(timeout=5)


def test_sends_from_several_threads_are_all_written_once(url: str) -> None:
    background = start_background_logger(url, batch_size=50, debounce_time=0.05)
    sent = [events(250, f"t{n}-") for n in range(4)]
    producers = [threading.Thread(target=send_each, args=(background, b)) for b in sent]
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join(HANG)
    stats = background.close()
    assert (stats.sent, stats.written, stats.failed, stats.queued) == (1000, 1000, 0, 0)
    written = rows(url)
    assert sorted(written) == sorted((str(e.id), e.type) for batch in sent for e in batch)


def test_returns_with_the_writer_running_in_a_daemon_thread(
    url: str, closing: list[BackgroundLogger]
) -> None:
    before = len(background_threads())
    background = start_background_logger(url)
    closing.append(background)
    (thread,) = background_threads()[before:]
    assert thread.daemon
    assert not background.closed
    assert repr(background).startswith("<BackgroundLogger running ")
    background.close()
    assert background.closed
    assert not thread.is_alive()
    assert repr(background).startswith("<BackgroundLogger closed ")


def test_close_twice_is_a_no_op_and_later_sends_are_dropped(url: str) -> None:
    background = start_background_logger(url, debounce_time=3600)
    background.send(events(3))
    first = background.close()
    assert (first.sent, first.written) == (3, 3)
    assert background.close() == first
    background.send(events(2))
    assert background.stats().dropped == 2
    assert len(rows(url)) == 3


def test_context_manager_closes_and_writes_everything(url: str) -> None:
    with start_background_logger(url, debounce_time=3600) as background:
        background.send(events(5))
    assert background.closed
    assert background.stats().written == 5
    assert len(rows(url)) == 5


def test_migrate_true_creates_the_tables(backend: str, fresh_url: Callable[[str], str]) -> None:
    made = fresh_url(backend)
    with start_background_logger(made, migrate=True) as background:
        background.send(events(2))
    assert background.stats().written == 2
    assert len(rows(made)) == 2


def test_send_of_a_non_entry_raises_type_error(url: str, closing: list[BackgroundLogger]) -> None:
    background = start_background_logger(url)
    closing.append(background)
    with pytest.raises(TypeError, match="got str"):
        background.send("not an event")  # type: ignore[arg-type]
    background.close()
    with pytest.raises(TypeError, match="got dict"):
        background.send({"type": "x"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int, got 0"),
        ({"debounce_time": -1}, ValueError, "debounce_time must be finite and >= 0"),
        ({"atexit_timeout": -1}, ValueError, "atexit_timeout must be a finite number"),
        ({"atexit_timeout": float("inf")}, ValueError, "atexit_timeout must be a finite"),
        ({"max_json_bytes": 10}, ValueError, "max_json_bytes must be at least 1024"),
        ({"migrate": "yes"}, TypeError, "migrate must be a bool"),
        ({"no_such_option": 1}, TypeError, "no_such_option"),
    ],
)
def test_bad_argument_raises_at_once_and_leaves_no_thread(
    tmp_path: Any, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    before = len(background_threads())
    with pytest.raises(error, match=message):
        start_background_logger(tmp_path / "events.db", **arguments)
    assert len(background_threads()) == before


def test_unsupported_url_raises_at_once() -> None:
    with pytest.raises(ValueError, match="'mysql' is not supported"):
        start_background_logger("mysql://localhost/x")


def test_close_rejects_a_negative_timeout(url: str, closing: list[BackgroundLogger]) -> None:
    background = start_background_logger(url)
    closing.append(background)
    with pytest.raises(ValueError, match="timeout must be seconds >= 0 or None, got -1"):
        background.close(-1)
    assert not background.closed


def test_unreachable_database_with_migrate_logs_the_error_and_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="eventlog"):
        background = start_background_logger(unreachable_postgres(), migrate=True)
    try:
        assert any(
            "could not migrate" in r.getMessage() and "Connect call failed" in r.getMessage()
            for r in caplog.records
        ), caplog.text
        assert not background.closed
        background.send(events(2))
    finally:
        stats = background.close(timeout=0.5)
    assert (stats.sent, stats.written, stats.failed) == (2, 0, 2)


def test_close_with_timeout_on_unreachable_database_counts_entries_as_failed() -> None:
    background = start_background_logger(unreachable_postgres(), debounce_time=0)
    background.send(events(3))
    started = time.monotonic()
    stats = background.close(timeout=1.0)
    # A generous bound that only a hang exceeds (the close gives up after about 2 s).
    assert time.monotonic() - started < HANG / 4
    assert (stats.sent, stats.written, stats.failed, stats.queued) == (3, 0, 3, 0)
    assert background.stats() == stats
    assert background.closed


def test_stats_are_the_writer_counters(url: str) -> None:
    background = start_background_logger(url, batch_size=2, debounce_time=3600)
    background.send(events(4))
    stats = background.close()
    assert isinstance(stats, LoggerStats)
    assert (stats.sent, stats.written, stats.batches) == (4, 4, 2)


# -- exit -------------------------------------------------------------------------------

EXIT_WITHOUT_CLOSE = """
    import sys
    from eventlog import EventPayload
    from eventlog.background import start_background_logger

    url, count, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    background = start_background_logger(url, debounce_time=3600, atexit_timeout=timeout)
    background.send([EventPayload(type=f"exit{i}") for i in range(count)])
    print("sent", flush=True)
"""


def test_exit_without_close_writes_everything_sent(url: str) -> None:
    done = run_python(EXIT_WITHOUT_CLOSE, url, "200", "10")
    assert done.returncode == 0, done.stderr
    assert sorted(t for _, t in rows(url)) == sorted(f"exit{i}" for i in range(200))


def test_exit_with_the_database_down_ends_within_atexit_timeout() -> None:
    started = time.monotonic()
    done = run_python(EXIT_WITHOUT_CLOSE, unreachable_postgres(), "3", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "sent\n"
    assert "3 entries were not written before exit" in done.stderr
    assert time.monotonic() - started < HANG / 2  # a bound on hangs, not a speed


# -- fork -------------------------------------------------------------------------------

FORK = """
    import json, os, sys, threading
    from eventlog import EventPayload
    from eventlog.background import start_background_logger

    def stats(logger):
        s = logger.stats()
        return {"sent": s.sent, "written": s.written, "failed": s.failed}

    url = sys.argv[1]
    # A long debounce: the parent's entries are still queued when it forks.
    background = start_background_logger(url, batch_size=1000, debounce_time=3600)
    background.send([EventPayload(type=f"before{i}") for i in range(50)])

    # Another thread sends all through the forks: the child must not inherit its lock.
    # (Its events are made before: see test_a_child_forked_while_an_id_is_made_makes_ids.)
    stop, sending = threading.Event(), threading.Event()
    made = [EventPayload(type=f"hammer{i}") for i in range(20_000)]
    hammered = []
    def hammer():
        for event in made:
            if stop.is_set():
                break
            hammered.append(event.type)
            background.send(event)
            if len(hammered) == 100:
                sending.set()
        sending.set()
    sender = threading.Thread(target=hammer)
    sender.start()
    sending.wait()

    children = []
    for n in range(4):
        pid = os.fork()
        if pid == 0:
            if n == 3:
                sys.exit(0)  # never used here: the exit hook must not wait for the parent
            assert background.stats().sent == 0, "the child starts with counters of its own"
            background.send([EventPayload(type=f"child{n}-{i}") for i in range(20)])
            if n == 2:
                sys.exit(0)  # no close(): the exit hook writes them
            background.close(timeout=30)
            print(json.dumps({"child": n, **stats(background)}), flush=True)
            os._exit(0)
        children.append(pid)

    stop.set()
    sender.join()
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
    background.send([EventPayload(type=f"after{i}") for i in range(30)])
    background.close(timeout=30)
    print(json.dumps({"parent": True, "hammered": len(hammered), **stats(background)}))
"""


def test_forked_children_log_their_own_events_and_nothing_twice(url: str) -> None:
    done = run_python(FORK, url)
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    parent = next(r for r in reports if "parent" in r)
    children = sorted((r for r in reports if "child" in r), key=lambda r: r["child"])
    assert [c["child"] for c in children] == [0, 1]
    for child in children:
        assert (child["sent"], child["written"], child["failed"]) == (20, 20, 0)
    expected_parent = 50 + parent["hammered"] + 30
    assert (parent["sent"], parent["written"], parent["failed"]) == (
        expected_parent,
        expected_parent,
        0,
    )
    written = rows(url)
    types = [t for _, t in written]
    assert len(set(types)) == len(types) == len({i for i, _ in written})
    expected = (
        {f"before{i}" for i in range(50)}
        | {f"hammer{i}" for i in range(parent["hammered"])}
        | {f"child{n}-{i}" for n in range(3) for i in range(20)}
        | {f"after{i}" for i in range(30)}
    )
    assert set(types) == expected


def test_logger_closed_before_a_fork_is_closed_in_the_child(tmp_path: Any) -> None:
    script = """
        import os, sys
        from eventlog import EventPayload
        from eventlog.background import start_background_logger

        background = start_background_logger(sys.argv[1])
        background.close()
        pid = os.fork()
        if pid == 0:
            background.send(EventPayload(type="late"))
            ok = background.closed and background.stats().dropped == 1
            background.close()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """
    done = run_python(script, str(tmp_path / "events.db"))
    assert done.returncode == 0, done.stderr


def test_a_child_forked_while_an_id_is_made_makes_ids() -> None:
    script = """
        import faulthandler, os, sys, threading
        import eventlog.ids
        from eventlog import EventPayload

        # Fork at the moment another thread is inside uuid7(), holding its lock.
        inside, forked = threading.Event(), threading.Event()
        def make_an_id():
            with eventlog.ids._lock:
                inside.set()
                forked.wait()
        thread = threading.Thread(target=make_an_id)
        thread.start()
        inside.wait()
        pid = os.fork()
        if pid == 0:
            faulthandler.dump_traceback_later(5, exit=True)  # a hang ends the child
            EventPayload(type="in the child")
            os._exit(0)
        forked.set()
        thread.join()
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """
    done = run_python(script)
    assert done.returncode == 0, done.stderr


async def test_a_fork_waits_for_a_sqlite_checkpoint_under_way(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint runs on a thread of its own; forked in the middle of one, the child
    # would inherit SQLite's in-process locks held by a thread it does not have.
    from eventlog.background import _ForkGate, _Pause
    from eventlog.sqlite import SQLiteWriter

    started, release = threading.Event(), threading.Event()
    checkpoint = SQLiteWriter._checkpoint

    def held(self: SQLiteWriter) -> None:
        started.set()
        release.wait(10)
        checkpoint(self)

    monkeypatch.setattr(SQLiteWriter, "_checkpoint", held)
    db = await open_database(tmp_path / "fork.db", migrate=True)
    try:
        gate = _ForkGate(db)
        await gate.write_log_batch([EventPayload(type="x") for _ in range(1000)])
        await asyncio.to_thread(started.wait, 10)  # a checkpoint is under way
        pause = _Pause()
        pause.resume.set()  # the fork itself is instant here
        hold = asyncio.create_task(gate.hold(pause))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not pause.held.is_set()
        release.set()
        await asyncio.wait_for(hold, 10)
        assert pause.held.is_set()
    finally:
        release.set()
        await db.close()
