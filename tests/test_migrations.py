"""Alembic migrations: up and down on both backends, and in agreement with eventlog.schema."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

import eventlog
from eventlog.migrate import downgrade, migrations_dir, upgrade
from eventlog.schema import include_object_for, metadata

REPO = Path(__file__).resolve().parent.parent
CHRONICLE_TABLES = {"chronicle_events", "chronicle_runs", "chronicle_steps"}
TABLES = CHRONICLE_TABLES | {
    "eventlog_dead_letters",
    "eventlog_prices",
    "eventlog_rollup_active_users",
    "eventlog_rollup_daily",
    "eventlog_rollup_hourly",
    "eventlog_rollup_users_daily",
    "eventlog_rollup_users_hourly",
}
BIN = Path(sys.executable).parent


async def table_names(url: str) -> set[str]:
    db = await eventlog.open_database(url)
    try:
        async with db.engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await db.close()
    return names - {"alembic_version"}


def alembic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "alembic"), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_alembic_cli_upgrades_and_downgrades_with_x_url(
    backend: str, fresh_url: Callable[[str], str]
) -> None:
    url = fresh_url(backend)
    done = alembic("-x", f"url={url}", "upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert await table_names(url) == TABLES
    done = alembic("-x", f"url={url}", "downgrade", "base")
    assert done.returncode == 0, done.stderr
    assert await table_names(url) == set()


async def test_alembic_cli_reads_eventlog_database_url(
    backend: str, fresh_url: Callable[[str], str]
) -> None:
    url = fresh_url(backend)
    done = alembic("upgrade", "head", env={"EVENTLOG_DATABASE_URL": url})
    assert done.returncode == 0, done.stderr
    assert await table_names(url) == TABLES


@pytest.mark.parametrize(
    "form",
    ["postgres://", "postgresql+asyncpg://", "sqlite+aiosqlite:///", "bare path"],
)
async def test_every_url_form_open_database_accepts_works_for_alembic(
    form: str, fresh_url: Callable[[str], str]
) -> None:
    backend = "sqlite" if "sqlite" in form or form == "bare path" else "postgresql"
    url = fresh_url(backend)
    if form == "bare path":
        cli_url = url.removeprefix("sqlite:///")
    elif backend == "sqlite":
        cli_url = url.replace("sqlite:///", form, 1)
    else:
        cli_url = url.replace("postgresql://", form, 1)
    done = alembic("-x", f"url={cli_url}", "upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert await table_names(url) == TABLES


async def test_upgrade_and_downgrade_inside_a_running_loop(
    backend: str, fresh_url: Callable[[str], str]
) -> None:
    db = await eventlog.open_database(fresh_url(backend))
    try:
        await upgrade(db.engine)
        await upgrade(db.engine)  # already at head: nothing to do
        async with db.engine.connect() as conn:
            assert await conn.run_sync(lambda c: set(inspect(c).get_table_names())) >= TABLES
        await downgrade(db.engine, "base")
        async with db.engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert not TABLES & names
    finally:
        await db.close()


async def test_downgrade_to_0002_drops_only_the_dead_letter_table(
    backend: str, fresh_url: Callable[[str], str]
) -> None:
    url = fresh_url(backend)
    db = await eventlog.open_database(url, migrate=True)
    try:
        async with db.engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("eventlog_dead_letters")}
            )
            indexes = await conn.run_sync(
                lambda c: {i["name"] for i in inspect(c).get_indexes("eventlog_dead_letters")}
            )
        assert columns == {
            "id",
            "created_at",
            "batch_id",
            "batch_size",
            "entry_kind",
            "entry_id",
            "entry",
            "error",
            "attempts",
            "last_attempt_at",
        }
        assert indexes == {"eventlog_dead_letters_created_at_idx"}
        await downgrade(db.engine, "0002")
        assert await table_names(url) == CHRONICLE_TABLES
        await upgrade(db.engine)
        assert await table_names(url) == TABLES
    finally:
        await db.close()


async def test_tables_in_eventlog_and_the_migrations_agree(
    backend: str, fresh_url: Callable[[str], str]
) -> None:
    db = await eventlog.open_database(fresh_url(backend), migrate=True)

    def differences(conn: Connection) -> list[object]:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_object": include_object_for(conn.dialect.name),
            },
        )
        return list(compare_metadata(context, metadata))

    try:
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(differences)
    finally:
        await db.close()
    assert diff == []


async def test_eventlog_migrate_works_outside_the_repository(
    backend: str, fresh_url: Callable[[str], str], tmp_path: Path
) -> None:
    url = fresh_url(backend)
    done = subprocess.run(
        [str(BIN / "eventlog"), "migrate", "--url", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert await table_names(url) == TABLES


async def test_migrations_are_shipped_inside_the_wheel(tmp_path: Path) -> None:
    pytest.importorskip("hatchling", reason="building the wheel needs hatchling")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("eventlog-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    assert "eventlog/_migrations/env.py" in names
    assert "eventlog/_migrations/versions/0001_chronicle_tables.py" in names
    # The unpacked wheel, first on the path, migrates a database from an unrelated folder.
    url = f"sqlite:///{tmp_path / 'from_wheel.db'}"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, eventlog.cli; print(eventlog.__file__, file=sys.stderr);"
            " sys.exit(eventlog.cli.main(['migrate', '--url', sys.argv[1]]))",
            url,
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "site") in done.stderr
    assert await table_names(url) == TABLES


def test_migrations_dir_is_found_from_a_checkout() -> None:
    assert (migrations_dir() / "env.py").is_file()


async def test_large_json_columns_use_lz4_on_postgresql(
    fresh_url: Callable[[str], str],
) -> None:
    from sqlalchemy import text

    db = await eventlog.open_database(fresh_url("postgresql"), migrate=True)
    try:
        async with db.engine.connect() as conn:
            methods = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT attname, attcompression FROM pg_attribute "
                            "WHERE attrelid = 'chronicle_events'::regclass "
                            "AND attname IN ('chat_request', 'chat_response', 'model')"
                        )
                    )
                ).all()
            )
    finally:
        await db.close()
    assert methods == {"chat_request": b"l", "chat_response": b"l", "model": b"\x00"}


async def test_updated_rollup_tables_leave_room_for_hot_updates_on_postgresql(
    fresh_url: Callable[[str], str],
) -> None:
    from sqlalchemy import text

    query = text(
        "SELECT relname, reloptions FROM pg_class WHERE relname LIKE 'eventlog_rollup_%' "
        "AND relkind = 'r' ORDER BY relname"
    )
    db = await eventlog.open_database(fresh_url("postgresql"), migrate=True)
    try:
        async with db.engine.connect() as conn:
            options = dict((await conn.execute(query)).all())
        await downgrade(db.engine, "0005")
        async with db.engine.connect() as conn:
            after_downgrade = dict((await conn.execute(query)).all())
    finally:
        await db.close()
    assert options == {
        "eventlog_rollup_active_users": None,  # insert-only: no room needed
        "eventlog_rollup_daily": ["fillfactor=60"],
        "eventlog_rollup_hourly": ["fillfactor=60"],
        "eventlog_rollup_users_daily": ["fillfactor=60"],
        "eventlog_rollup_users_hourly": None,
    }
    assert set(after_downgrade.values()) == {None}


async def test_the_user_index_puts_the_time_first_on_sqlite_only(
    backend: str, fresh_url: Callable[[str], str]
) -> None:
    def columns_of(conn: Connection) -> dict[str, list[str | None]]:
        return {
            str(index["name"]): list(index["column_names"])
            for index in inspect(conn).get_indexes("chronicle_events")
            if "user_id" in index["column_names"] or "project_id" in index["column_names"]
        }

    db = await eventlog.open_database(fresh_url(backend), migrate=True)
    try:
        async with db.engine.connect() as conn:
            at_head = await conn.run_sync(columns_of)
        await downgrade(db.engine, "0006")
        async with db.engine.connect() as conn:
            before = await conn.run_sync(columns_of)
        await upgrade(db.engine)
        async with db.engine.connect() as conn:
            again = await conn.run_sync(columns_of)
    finally:
        await db.close()
    project = {"chronicle_events_project_id_created_at_idx": ["project_id", "created_at"]}
    assert before == {
        "chronicle_events_user_id_created_at_idx": ["user_id", "created_at"],
        **project,
    }
    if backend == "sqlite":
        user = {"chronicle_events_created_at_user_id_idx": ["created_at", "user_id"]}
    else:
        user = {"chronicle_events_user_id_created_at_idx": ["user_id", "created_at"]}
    assert at_head == {**user, **project}
    assert again == at_head


@pytest.mark.parametrize(
    ("where", "index"),
    [
        ({"user": "u1"}, "USING INDEX chronicle_events_created_at_user_id_idx"),
        ({"project": "p1"}, "USING INDEX chronicle_events_project_id_created_at_idx (project_id=?"),
    ],
)
async def test_sqlite_reads_a_users_or_a_projects_raw_window_by_its_index(
    fresh_url: Callable[[str], str], where: dict[str, str], index: str
) -> None:
    # The plans of the statements a raw usage report runs: SQLite's planner must pick the
    # index that holds the filtered column (the user's puts the time first since 0007).
    from datetime import UTC, datetime

    from sqlalchemy import event

    from eventlog import analytics

    db = await eventlog.open_database(fresh_url("sqlite"), migrate=True)
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "chronicle_events" in statement and not statement.startswith("EXPLAIN"):
            statements.append((statement, params))

    event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    try:
        now = datetime(2026, 11, 23, 12, tzinfo=UTC)
        await analytics.usage(db, since="6h", where=where, now=now, source="raw")
        event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
        assert statements
        async with db.engine.connect() as conn:
            for statement, params in statements:
                rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
                plan = " | ".join(str(row[-1]) for row in rows.all())
                assert index in plan, plan
                assert "SCAN chronicle_events" not in plan, plan
    finally:
        await db.close()
