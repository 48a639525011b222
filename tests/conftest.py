"""Fixtures: every database test runs on a real SQLite file and a real PostgreSQL.

PostgreSQL comes from ``EVENTLOG_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). The suite creates a database of its own
on that server for the session (and one per migration test) and drops it afterwards, so
it never touches the data already there. Without a server those tests are skipped with
the reason, unless ``EVENTLOG_REQUIRE_POSTGRES=1``, when they fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

import eventlog
from eventlog import Database
from eventlog.schema import metadata

POSTGRES_URL = os.environ.get(
    "EVENTLOG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("EVENTLOG_REQUIRE_POSTGRES") == "1"
BACKENDS = ["sqlite", "postgresql"]
TABLES = tuple(sorted(metadata.tables))  # every table eventlog creates: emptied per test


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _admin_sync(sql: str) -> None:
    """Run one admin statement from sync code, even inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _admin(sql)).result()


def _postgres_problem() -> str | None:
    try:
        _admin_sync("SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as err:
        return f"no PostgreSQL at {POSTGRES_URL}: {type(err).__name__}: {err}"
    return None


_problem: list[str | None] = []


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used (checked once), or None."""
    if not _problem:
        _problem.append(_postgres_problem())
    return _problem[0]


def require_postgres() -> None:
    problem = postgres_problem()
    if problem is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"EVENTLOG_REQUIRE_POSTGRES=1 but {problem}")
        pytest.skip(problem)


class PostgresDatabases:
    """Creates throwaway databases on the test server and drops them at the end."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self) -> str:
        name = f"eventlog_test_{uuid.uuid4().hex[:12]}"
        _admin_sync(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        for name in self.created:
            _admin_sync(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    yield databases
    if postgres_problem() is None:
        databases.drop_all()


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_databases: PostgresDatabases) -> str:
    """One migrated PostgreSQL database for the session; tests truncate it first."""
    require_postgres()
    url = postgres_databases.create()

    async def migrate() -> None:
        db = await eventlog.open_database(url, migrate=True)
        await db.close()

    asyncio.run(migrate())
    return url


@pytest.fixture
def fresh_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_databases: PostgresDatabases
) -> Callable[[str], str]:
    """Make the URL of a new, empty database of a backend (no tables)."""

    def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
        require_postgres()
        return postgres_databases.create()

    return make


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: each database test runs once per backend."""
    if request.param == "postgresql":
        require_postgres()
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The URL of a migrated database of ``backend`` with empty tables."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    url: str = request.getfixturevalue("migrated_postgres_url")
    return url


@pytest.fixture
async def db(backend: str, db_url: str) -> AsyncIterator[Database]:
    """An open, migrated database of ``backend`` whose tables start empty."""
    database = await eventlog.open_database(db_url, migrate=backend == "sqlite")
    if backend == "postgresql":
        async with database.engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)}"))
    yield database
    await database.close()
