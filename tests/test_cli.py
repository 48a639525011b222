"""The ``eventlog`` command as a person runs it: a real process, real databases."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

import eventlog

EVENTLOG = str(Path(sys.executable).parent / "eventlog")


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "EVENTLOG_DATABASE_URL"}
    return subprocess.run(
        [EVENTLOG, *args],
        cwd=cwd,
        env={**environ, "COLUMNS": "100", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def scalar(url: str, sql: str) -> object:
    db = await eventlog.open_database(url)
    try:
        async with db.engine.connect() as conn:
            return (await conn.execute(text(sql))).scalar_one()
    finally:
        await db.close()


async def test_demo_logs_the_calls_and_prints_a_summary(
    backend: str, fresh_url: Callable[[str], str], tmp_path: Path
) -> None:
    url = fresh_url(backend)
    done = run("demo", "--url", url, "--events", "400", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for words in ("LLM calls by model", "p95", "Runs and steps", "400 LLM calls"):
        assert words in done.stdout
    calls = await scalar(
        url, "SELECT COUNT(*) FROM chronicle_events WHERE event_type = 'chronicle_llm_request'"
    )
    assert calls == 400
    assert await scalar(url, "SELECT COUNT(*) FROM chronicle_runs") > 0
    assert await scalar(url, "SELECT COUNT(*) FROM chronicle_steps") > 0
    errors = await scalar(url, "SELECT COUNT(*) FROM chronicle_events WHERE error IS NOT NULL")
    limited = await scalar(url, "SELECT COUNT(*) FROM chronicle_events WHERE rate_limited")
    assert isinstance(errors, int)
    assert errors > 0
    assert isinstance(limited, int)
    assert limited > 0


async def test_demo_without_a_url_writes_eventlog_db_in_the_current_folder(
    tmp_path: Path,
) -> None:
    done = run("demo", "--events", "50", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    database = tmp_path / "eventlog.db"
    assert database.is_file()
    assert await scalar(str(database), "SELECT COUNT(*) FROM chronicle_events") >= 50  # type: ignore[operator]


async def test_demo_twice_on_one_database_summarises_each_run_alone(tmp_path: Path) -> None:
    first = run("demo", "--events", "60", cwd=tmp_path)
    second = run("demo", "--events", "60", cwd=tmp_path)
    assert first.returncode == second.returncode == 0, second.stderr
    assert "60 LLM calls" in second.stdout
    calls = await scalar(
        str(tmp_path / "eventlog.db"),
        "SELECT COUNT(*) FROM chronicle_events WHERE event_type = 'chronicle_llm_request'",
    )
    assert calls == 120


def test_migrate_upgrades_then_has_nothing_to_do_then_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    first = run("migrate", "--url", url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "upgraded" in first.stdout
    again = run("migrate", "--url", url, cwd=tmp_path)
    assert again.returncode == 0
    assert "nothing to do" in again.stdout
    down = run("migrate", "--url", url, "--downgrade", "base", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert "downgraded" in down.stdout


def test_unsupported_url_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    done = run("migrate", "--url", "mysql://root@127.0.0.1/test", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "postgresql://" in done.stderr
    assert "sqlite:///" in done.stderr


def test_unreachable_database_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = run("migrate", "--url", f"postgresql://postgres@127.0.0.1:{port}/x", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_version() -> None:
    done = subprocess.run([EVENTLOG, "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert done.stdout.strip() == f"eventlog {eventlog.__version__}"
