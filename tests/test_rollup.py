"""The rollup: kept exact by the writer, rebuilt from the raw rows, filled by the 0004
and 0005 migrations, and read by the analytics; on a real SQLite file and a real
PostgreSQL.

Five tables: ``eventlog_rollup_hourly`` and ``eventlog_rollup_daily`` (every sum, per UTC
hour or day and model, provider, application, environment, project),
``eventlog_rollup_users_daily`` (the usage sums per UTC day, organization, user and
those keys), ``eventlog_rollup_users_hourly`` (no sums: which users made calls in an
hour, per those keys) and ``eventlog_rollup_active_users`` (no sums, no other key: which
users made calls in a UTC day). Every expectation is computed here, in plain Python,
from the ``chronicle_events`` rows as stored (never with ``eventlog.rollup``'s code),
histogram bins included.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Table, delete, event, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

import eventlog
from eventlog import (
    Database,
    DatabaseError,
    EventPayload,
    InternalMetadata,
    ProxyLogEntry,
    ProxyLogEvent,
    RequestMetadata,
)
from eventlog import analytics as an
from eventlog.maintenance import prune
from eventlog.migrate import downgrade, upgrade
from eventlog.prices import Price, store_prices
from eventlog.reprice import reprice
from eventlog.rollup import batch_statement, rebuild, setup_statements
from eventlog.schema import (
    LATENCY_BIN_EDGES,
    ROLLUP_TABLES,
    chronicle_events,
    eventlog_rollup_active_users,
    eventlog_rollup_daily,
    eventlog_rollup_hourly,
    eventlog_rollup_users_daily,
    eventlog_rollup_users_hourly,
)

LLM_CALL = "chronicle_llm_request"
HOURLY = "eventlog_rollup_hourly"
DAILY = "eventlog_rollup_daily"
USERS_DAILY = "eventlog_rollup_users_daily"
USERS_HOURLY = "eventlog_rollup_users_hourly"
ACTIVE = "eventlog_rollup_active_users"
TABLES: dict[str, Table] = {
    HOURLY: eventlog_rollup_hourly,
    DAILY: eventlog_rollup_daily,
    USERS_DAILY: eventlog_rollup_users_daily,
    USERS_HOURLY: eventlog_rollup_users_hourly,
    ACTIVE: eventlog_rollup_active_users,
}
KEYS = ("model", "provider", "application", "environment", "project_id")
USER_KEYS = ("organization_id", "user_id", *KEYS)
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    HOURLY: ("hour", *KEYS),
    DAILY: ("day", *KEYS),
    USERS_DAILY: ("day", *USER_KEYS),
    USERS_HOURLY: ("hour", *KEYS, "user_id"),
    ACTIVE: ("day", "user_id"),
}
"""Each table's primary key, time first: the order of the key tuples below."""
MODEL_TABLES = tuple(name for name in TABLES if "model" in TABLE_KEYS[name])
"""The tables keyed by model (all but the active users')."""
BINS = tuple(f"lat_{i:02d}" for i in range(len(LATENCY_BIN_EDGES) + 1))
USAGE_SUMS = (
    "requests",
    "errors",
    "rate_limited",
    "retried",
    "retries",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "priced",
    "unpriced",
    "unpriced_tokens",
    "tps_tokens",
    "tps_ms",
)
SUMS = (
    *USAGE_SUMS,
    "latency_count",
    "latency_sum_ms",
    "total_latency_count",
    "total_latency_sum_ms",
    "ttft_count",
    "ttft_sum_ms",
    *BINS,
    "latency_max_ms",  # a maximum, not a sum
)
TABLE_VALUES: dict[str, tuple[str, ...]] = {
    HOURLY: SUMS,
    DAILY: SUMS,
    USERS_DAILY: USAGE_SUMS,
    USERS_HOURLY: (),
    ACTIVE: (),
}
RollupKey = tuple[Any, ...]  # TABLE_KEYS[table]
Rollup = dict[RollupKey, dict[str, int]]  # one table
Rollups = dict[str, Rollup]  # every table, by name

START = datetime(2026, 3, 27, tzinfo=UTC)  # Berlin moves to summer time on 03-29
EVENTLOG = str(Path(sys.executable).parent / "eventlog")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The ``eventlog`` command as a person runs it (as in test_cli)."""
    environ = {k: v for k, v in os.environ.items() if k != "EVENTLOG_DATABASE_URL"}
    return subprocess.run(
        [EVENTLOG, *args],
        cwd=cwd,
        env={**environ, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# -- data --------------------------------------------------------------------------------

PROVIDERS = {
    "gpt-4o": "openai",
    "claude-sonnet-4-20250514": "anthropic",
    "gemini-2.0-flash": "google",
    "house-model-7b": "vllm",  # no price anywhere: its calls are unpriced
}
OPENAI_RATE_LIMIT = {
    "error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
}


def a_latency(rng: random.Random, *, huge: bool = True) -> int | None:
    """None, 0, an edge or next to one, or log-uniform up to past the last edge."""
    top = 2_500_000 if huge else 1_000_000
    pick = rng.random()
    if pick < 0.08:
        return None
    if pick < 0.12:
        return 0
    if pick < 0.3:
        edge = rng.choice(LATENCY_BIN_EDGES[:-1] if not huge else LATENCY_BIN_EDGES)
        return edge + rng.choice([-1, 0])
    return int(math.exp(rng.uniform(0, math.log(top))))


def a_response(rng: random.Random, provider: str | None) -> Any:
    if rng.random() < 0.1:
        return None
    prompt, completion = rng.randrange(0, 20_000), rng.randrange(0, 3_000)
    cached, reasoning = rng.randrange(0, prompt + 1), rng.randrange(0, completion + 1)
    if provider == "anthropic":
        return {
            "usage": {
                "input_tokens": prompt,
                "cache_read_input_tokens": cached,
                "cache_creation_input_tokens": rng.choice([0, 1024, None]),
                "output_tokens": completion,
            }
        }
    if provider == "google":
        return {
            "usageMetadata": {
                "promptTokenCount": prompt,
                "cachedContentTokenCount": cached,
                "candidatesTokenCount": completion,
                "thoughtsTokenCount": reasoning,
            }
        }
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if rng.random() < 0.7:
        usage["total_tokens"] = prompt + completion
    if provider == "openai":
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    if rng.random() < 0.08:
        usage["cost"] = rng.choice([0.1, 0.0123, "0.000004567", 2])
    return {"usage": usage}


def a_call(rng: random.Random, at: datetime) -> ProxyLogEvent:
    model = rng.choice([*PROVIDERS, None])
    provider = PROVIDERS.get(model) if model else rng.choice([None, "openai"])
    latency = a_latency(rng)
    error: Any = None
    pick = rng.random()
    if pick < 0.08:
        error = OPENAI_RATE_LIMIT
    elif pick < 0.14:
        error = {"type": "httpx.ReadTimeout", "message": "timed out", "traceback": "..."}
    elif pick < 0.18:
        error = "connection reset by peer"
    return ProxyLogEvent(
        timestamp=at,
        provider=provider,
        model=model,
        request={"model": model, "messages": [{"role": "user", "content": "hello"}]},
        response=a_response(rng, provider),
        latency=None if latency is None else timedelta(milliseconds=latency),
        total_latency=(
            None
            if latency is None or rng.random() < 0.1
            else timedelta(milliseconds=latency + rng.choice([0, 15, 2_000]))
        ),
        time_to_first_token=(
            None if rng.random() < 0.4 else timedelta(milliseconds=rng.randrange(0, 5_000))
        ),
        was_rate_limited=rng.choice([None, False, False, True]) if error else None,
        num_retries=rng.choice([None, 0, 0, 1, 3, -1]),
        error=error,
        response_meta={"cost": 0.0042} if rng.random() < 0.04 else None,
        metadata=RequestMetadata(
            application=rng.choice(["chat", "search", None]),
            environment=rng.choice(["prod", "dev", None]),
            workflow_name=rng.choice(["triage", None]),
            extra={"team": rng.choice(["red", "blue"])},
        ),
        internal_metadata=InternalMetadata(
            organization_id=rng.choice(["org-1", None]),
            project_id=rng.choice(["p1", "p2", None]),
            user_id=rng.choice(["ana", "bo", "cy", None]),
        ),
    )


def calls(seed: int, n: int, start: datetime = START, hours: int = 96) -> list[ProxyLogEvent]:
    """``n`` varied calls over ``hours`` from ``start``, some on the hour exactly."""
    rng = random.Random(seed)
    made = []
    for i in range(n):
        if i % 25 == 0:
            at = start + timedelta(hours=rng.randrange(hours))
        elif i % 25 == 1:
            at = start + timedelta(hours=rng.randrange(1, hours), microseconds=-1)
        else:
            at = start + timedelta(seconds=rng.uniform(0, hours * 3600))
        made.append(a_call(rng, at))
    return made


def repaired_calls() -> list[ProxyLogEvent]:
    """Calls whose keys the writer repairs (NUL in a text): the rollup keys what is stored."""
    rng = random.Random(99)
    made = []
    for user in ("eve\x00", "zoë", "ana"):
        call = a_call(rng, START + timedelta(hours=5, minutes=7))
        call.internal_metadata = InternalMetadata(user_id=user)
        made.append(call)
    return made


NOISE: list[ProxyLogEntry] = [
    EventPayload(type="cache_hit", time=START + timedelta(hours=1)),
    EventPayload(type="tool_call", time=START + timedelta(hours=2), error="boom"),
]


async def write(db: Database, entries: Sequence[ProxyLogEntry], size: int = 150) -> None:
    for i in range(0, len(entries), size):
        await db.write_log_batch(entries[i : i + size])


@contextmanager
def another_writer_commits(
    db: Database, url: str, entries: Sequence[ProxyLogEntry], *, before: str
) -> Iterator[list[str]]:
    """While open, another writer (a database, loop and thread of its own) commits
    ``entries`` just before ``db`` runs its first statement containing ``before``; the
    list yielded holds that statement once it has."""
    fired: list[str] = []

    async def commit() -> None:
        other = await eventlog.open_database(url)
        try:
            await other.write_log_batch(entries)
        finally:
            await other.close()

    def hook(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if before in statement and not fired:
            fired.append(statement)
            worker = threading.Thread(target=asyncio.run, args=(commit(),))
            worker.start()
            worker.join()

    event.listen(db.engine.sync_engine, "before_cursor_execute", hook)
    try:
        yield fired
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", hook)


# -- independent expectations ------------------------------------------------------------


def my_bin(ms: int) -> int:
    """The histogram bin of ``ms``: bin 0 is under the first edge, bin i from edge i-1."""
    index = 0
    for edge in LATENCY_BIN_EDGES:
        if ms >= edge:
            index += 1
        else:
            break
    return index


def test_my_bins_agree_with_the_schema_doc_and_the_migration_edges() -> None:
    assert len(BINS) == 77
    assert my_bin(0) == 0
    assert my_bin(1) == 1
    assert my_bin(10**9) == 76
    edges = []
    for k in range(81):  # round(2 ** (k / 4)), duplicates dropped, as documented
        edge = round(2 ** (k / 4))
        if edge not in edges:
            edges.append(edge)
    assert tuple(edges) == LATENCY_BIN_EDGES


def test_the_rollup_tables_have_the_layout_this_file_expects() -> None:
    assert list(TABLES.values()) == list(ROLLUP_TABLES)  # every table, none forgotten
    for name, table in TABLES.items():
        assert table.name == name
        assert [c.name for c in table.columns] == [*TABLE_KEYS[name], *TABLE_VALUES[name]], name
        assert [c.name for c in table.primary_key.columns] == list(TABLE_KEYS[name]), name


def test_the_rollup_setup_is_sqlites_own_and_may_run_twice() -> None:
    import sqlite3

    assert setup_statements("postgresql") == ()
    for bad in (setup_statements, batch_statement):
        with pytest.raises(ValueError, match="unsupported dialect 'mysql'"):
            bad("mysql")
    conn = sqlite3.connect(":memory:")
    try:
        for _ in range(2):
            for statement in setup_statements("sqlite"):
                conn.execute(statement)
    finally:
        conn.close()


def part(table: str, key: RollupKey, column: str) -> Any:
    """The value of ``column`` in a key of ``table``."""
    return key[TABLE_KEYS[table].index(column)]


def utc_day(moment: datetime) -> datetime:
    """UTC midnight of the day of ``moment``."""
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def utc_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


async def raw_rows(db: Database) -> list[Mapping[str, Any]]:
    events = chronicle_events.c
    async with db.engine.connect() as conn:
        result = await conn.execute(
            select(
                events.id,
                events.event_type,
                events.created_at,
                *(events[key] for key in USER_KEYS),
                events.error.is_not(None).label("has_error"),
                events.rate_limited,
                events.retries,
                events.prompt_tokens,
                events.completion_tokens,
                events.total_tokens,
                events.cache_read_tokens,
                events.cache_write_tokens,
                events.reasoning_tokens,
                events.request_latency_ms,
                events.total_latency_ms,
                events.ttft_ms,
                events.cost_usd,
            )
        )
        return [dict(row) for row in result.mappings()]


def rollup_name(value: str | None) -> str:
    """A name as the rollup keys it: '' for none; over 360 UTF-8 bytes, 90 characters
    (PostgreSQL's B-tree entries hold at most 2,704 bytes)."""
    if value is None:
        return ""
    return value[:90] if len(value.encode("utf-8")) > 360 else value


UNKNOWN_TO_BACKFILL = frozenset(
    {"cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "ttft_ms"}
)


def call_sums(row: Mapping[str, Any], *, known: bool = True) -> dict[str, int]:
    """What one LLM call adds to a row of the rollup (``latency_max_ms``: its latency,
    0 without). With ``known=False`` as the 0004 backfill sees it: no cost, cache,
    reasoning or TTFT."""
    s = dict.fromkeys(SUMS, 0)

    def value(name: str) -> int:
        return int(row[name] or 0) if known or name not in UNKNOWN_TO_BACKFILL else 0

    s["requests"] = 1
    s["errors"] = 1 if row["has_error"] else 0
    s["rate_limited"] = 1 if row["rate_limited"] else 0
    s["retries"] = value("retries")
    s["retried"] = 1 if (row["retries"] or 0) > 0 else 0
    for name in (
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    ):
        s[name] = value(name)
    cost = row["cost_usd"] if known else None
    if cost is None:
        s["unpriced"] = 1
        if row["total_tokens"] is not None:
            s["unpriced_tokens"] = row["total_tokens"]
        else:
            s["unpriced_tokens"] = value("prompt_tokens") + value("completion_tokens")
    else:
        s["priced"] = 1
        nanos = Decimal(cost) * 1_000_000_000
        assert nanos == int(nanos)
        s["cost_nanos"] = int(nanos)
    latency = row["request_latency_ms"]
    if latency is not None:
        s["latency_count"] = 1
        s["latency_sum_ms"] = latency
        s[BINS[my_bin(latency)]] = 1
        s["latency_max_ms"] = latency
        if row["completion_tokens"] is not None and latency > 0:
            s["tps_tokens"] = row["completion_tokens"]
            s["tps_ms"] = latency
    if row["total_latency_ms"] is not None:
        s["total_latency_count"] = 1
        s["total_latency_sum_ms"] = row["total_latency_ms"]
    if known and row["ttft_ms"] is not None:
        s["ttft_count"] = 1
        s["ttft_sum_ms"] = row["ttft_ms"]
    return s


def add_to(target: dict[str, int], sums: Mapping[str, int]) -> None:
    """Add ``sums`` into ``target``'s columns (the greater of the two maxima)."""
    for name in target:
        if name == "latency_max_ms":
            target[name] = max(target[name], sums[name])
        else:
            target[name] += sums[name]


def daily_of(hourly: Rollup) -> Rollup:
    """An hourly rollup folded by UTC day: the daily table's rows."""
    daily: Rollup = {}
    for (hour, *keys), sums in hourly.items():
        add_to(daily.setdefault((utc_day(hour), *keys), dict.fromkeys(SUMS, 0)), sums)
    return daily


def expected_rollup(rows: Iterable[Mapping[str, Any]], *, known: bool = True) -> Rollups:
    """The rollup tables of the LLM calls among ``rows``, summed here from their columns.
    With ``known=False`` as the 0004 backfill (and 0005 after it) sees them."""
    hourly: Rollup = {}
    users_daily: Rollup = {}
    users_hourly: Rollup = {}
    active: Rollup = {}
    for row in rows:
        if row["event_type"] != LLM_CALL:
            continue
        hour = utc_hour(row["created_at"])
        keys = tuple(rollup_name(row[k]) for k in KEYS)
        organization, user = rollup_name(row["organization_id"]), rollup_name(row["user_id"])
        sums = call_sums(row, known=known)
        add_to(hourly.setdefault((hour, *keys), dict.fromkeys(SUMS, 0)), sums)
        add_to(
            users_daily.setdefault(
                (utc_day(hour), organization, user, *keys), dict.fromkeys(USAGE_SUMS, 0)
            ),
            sums,
        )
        if user:  # a call of no user says nobody was there
            users_hourly[(hour, *keys, user)] = {}
            active[(utc_day(hour), user)] = {}
    return {
        HOURLY: hourly,
        DAILY: daily_of(hourly),
        USERS_DAILY: users_daily,
        USERS_HOURLY: users_hourly,
        ACTIVE: active,
    }


def rows_of(table: str, key: RollupKey, sums: Mapping[str, int]) -> dict[str, Any]:
    return {**dict(zip(TABLE_KEYS[table], key, strict=True)), **sums}


async def stored_rollups(db: Database) -> Rollups:
    """The rollup tables as stored."""
    found: Rollups = {}
    async with db.engine.connect() as conn:
        for name, table in TABLES.items():
            result = await conn.execute(select(table))
            found[name] = {
                tuple(row[k] for k in TABLE_KEYS[name]): {
                    v: int(row[v]) for v in TABLE_VALUES[name]
                }
                for row in result.mappings()
            }
    return found


async def stored_rollup(db: Database) -> Rollup:
    """``eventlog_rollup_hourly`` as stored (test_reprice reads it by hour and model)."""
    return (await stored_rollups(db))[HOURLY]


def assert_same(got: Rollups, expected: Rollups) -> None:
    assert set(got) == set(expected) == set(TABLES)
    for name in TABLES:
        missing = expected[name].keys() - got[name].keys()
        extra = got[name].keys() - expected[name].keys()
        assert not missing, (name, list(missing)[:3])
        assert not extra, (name, list(extra)[:3])
        for key, sums in expected[name].items():
            assert got[name][key] == sums, (name, key)


async def assert_rollups_are_exact(db: Database) -> Rollups:
    """The stored rollup tables equal the ones summed here from the raw rows; returns
    them."""
    got = await stored_rollups(db)
    assert_same(got, expected_rollup(await raw_rows(db)))
    return got


async def assert_rollup_is_exact(db: Database) -> Rollup:
    """:func:`assert_rollups_are_exact`, returning the hourly table (as test_reprice and
    test_usage use it)."""
    return (await assert_rollups_are_exact(db))[HOURLY]


async def count_events(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(chronicle_events))).scalar_one()
        )


# -- the writer keeps it exact -----------------------------------------------------------


async def test_rollup_of_a_varied_batch_equals_python_over_the_stored_rows(db: Database) -> None:
    batch = calls(1, 700)
    await write(db, [*batch, *NOISE, *repaired_calls()])

    got = await assert_rollups_are_exact(db)

    totals = {name: sum(s[name] for s in got[HOURLY].values()) for name in SUMS}
    assert totals["requests"] == len(batch) + 3
    for name in (DAILY, USERS_DAILY):  # every call is in each daily table once too
        assert sum(s["requests"] for s in got[name].values()) == len(batch) + 3, name
    # The data reaches every kind of sum, and both ends of the histogram.
    for name in ("errors", "rate_limited", "retried", "priced", "unpriced", "cost_nanos"):
        assert totals[name] > 0, name
    for name in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "ttft_count"):
        assert totals[name] > 0, name
    assert totals["lat_00"] > 0
    assert totals["lat_76"] > 0
    assert sum(totals[b] > 0 for b in BINS) > 60
    # Several rows a day: the data spreads over days, hours and keys.
    assert len(got[DAILY]) < len(got[HOURLY])
    assert {key[0] for key in got[DAILY]} == {START + timedelta(days=d) for d in range(4)}
    users = {part(USERS_DAILY, key, "user_id") for key in got[USERS_DAILY]}
    assert "" in users  # the usage of calls of no user is kept
    assert not any("\x00" in user for user in users)  # keyed as stored, after the repair
    seen = {part(USERS_HOURLY, key, "user_id") for key in got[USERS_HOURLY]}
    assert seen == users - {""}  # and no presence row says "nobody"
    # A day's active users are the users of that day's per-user rows, none for nobody.
    assert set(got[ACTIVE]) == {
        (key[0], part(USERS_DAILY, key, "user_id"))
        for key in got[USERS_DAILY]
        if part(USERS_DAILY, key, "user_id")
    }
    assert len(got[ACTIVE]) == 4 * 3 + 2  # 4 days x ana, bo, cy; the 2 repaired users
    assert {part(USERS_DAILY, key, "organization_id") for key in got[USERS_DAILY]} == {
        "",
        "org-1",
    }


async def test_sending_the_same_batch_again_adds_nothing(db: Database) -> None:
    batch = calls(2, 300)
    await write(db, batch)
    first = await assert_rollups_are_exact(db)

    await write(db, batch)
    await write(db, batch[::-1], size=len(batch))

    assert await count_events(db) == len(batch)
    assert await assert_rollups_are_exact(db) == first


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_rollup_stays_exact_when_the_writer_connects_again(db: Database) -> None:
    # SQLite's rollup runs through temporary objects of the writer's connection: a new
    # connection creates them again, and a failed batch leaves nothing in them behind.
    assert db._sqlite is not None
    first, second, third = calls(5, 200), calls(6, 200), calls(7, 200)
    await write(db, first)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(db._sqlite._thread, db._sqlite._close)
    await write(db, second)
    async with db.engine.begin() as conn:  # the per-user step fails, after the hourly ones
        await conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON eventlog_rollup_users_daily "
            "BEGIN SELECT RAISE(ABORT, 'refused per-user row'); END"
        )
    with pytest.raises(DatabaseError, match="refused per-user row"):
        await db.write_log_batch(third[:100])
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql("DROP TRIGGER refuse")
    await write(db, third)
    assert await count_events(db) == 600
    got = await assert_rollups_are_exact(db)
    assert sum(s["requests"] for s in got[HOURLY].values()) == 600


async def test_a_mix_of_stored_and_new_calls_adds_only_the_new_ones(db: Database) -> None:
    old, new = calls(3, 300), calls(4, 200)
    await write(db, old)
    mixed: list[ProxyLogEntry] = [*old[::3], *new, *old[1::7], *NOISE]
    random.Random(5).shuffle(mixed)

    await write(db, mixed, size=len(mixed))

    assert await count_events(db) == len(old) + len(new) + len(NOISE)
    got = await assert_rollups_are_exact(db)
    for name in (HOURLY, DAILY, USERS_DAILY):
        assert sum(s["requests"] for s in got[name].values()) == len(old) + len(new), name


async def test_an_id_twice_in_one_batch_is_stored_and_counted_once(db: Database) -> None:
    batch = calls(6, 120)
    twin = ProxyLogEvent(
        id=batch[10].id,
        timestamp=batch[10].timestamp + timedelta(hours=3),
        model="some-other-model",
        latency=timedelta(milliseconds=5),
    )
    entries: list[ProxyLogEntry] = [*batch[:50], twin, *batch[50:], batch[70]]

    await write(db, entries, size=len(entries))

    assert await count_events(db) == len(batch)
    got = await assert_rollups_are_exact(db)
    for name in (HOURLY, DAILY, USERS_DAILY):
        assert sum(s["requests"] for s in got[name].values()) == len(batch), name
    for name in MODEL_TABLES:  # the first one is kept
        assert not any(part(name, key, "model") == "some-other-model" for key in got[name])


async def test_the_first_of_two_calls_with_one_id_is_kept_whatever_their_users(
    db: Database,
) -> None:
    # ana's presence rows are stored (and remembered by the writer); then one id twice
    # in a batch, first as ana's call, then as zed's call of another model. The first
    # is stored and counted, and zed reaches no rollup table.
    known = ProxyLogEvent(
        timestamp=START, model="gpt-4o", internal_metadata=InternalMetadata(user_id="ana")
    )
    await write(db, [known])
    twin_id = uuid.uuid4()
    first = ProxyLogEvent(
        id=twin_id,
        timestamp=START + timedelta(minutes=5),
        model="gpt-4o",
        internal_metadata=InternalMetadata(user_id="ana"),
    )
    second = ProxyLogEvent(
        id=twin_id,
        timestamp=START + timedelta(minutes=6),
        model="some-other-model",
        internal_metadata=InternalMetadata(user_id="zed"),
    )

    await write(db, [first, second])

    rows = await raw_rows(db)
    assert sorted((r["model"], r["user_id"]) for r in rows) == [("gpt-4o", "ana")] * 2
    got = await assert_rollups_are_exact(db)
    for name in (USERS_HOURLY, ACTIVE, USERS_DAILY):
        assert {part(name, key, "user_id") for key in got[name]} == {"ana"}, name


async def test_an_event_and_a_call_sharing_an_id_in_a_batch_count_no_call(db: Database) -> None:
    # The generic event comes first and is stored; the call with its id is not, and
    # must not be counted as one (on PostgreSQL the conflict path sees the id inserted).
    shared = uuid.uuid4()
    event = EventPayload(id=shared, type="cache_hit", time=START)
    call = ProxyLogEvent(
        id=shared, timestamp=START, model="gpt-4o", latency=timedelta(milliseconds=40)
    )

    await write(db, [event, call, *calls(62, 5)])

    rows = await raw_rows(db)
    assert sorted(r["event_type"] for r in rows) == ["cache_hit"] + ["chronicle_llm_request"] * 5
    got = await assert_rollups_are_exact(db)
    assert sum(s["requests"] for s in got[HOURLY].values()) == 5


async def test_token_counts_whose_sum_overflows_32_bits_are_stored_and_summed(
    db: Database,
) -> None:
    # Two valid 32-bit counts whose sum is not: the unpriced tokens are summed in 64
    # bits by the writer's SQL, and the batch is written (PostgreSQL refused it once).
    huge = ProxyLogEvent(
        timestamp=START,
        model="no-price-model-xyz",
        response={"usage": {"prompt_tokens": 2_000_000_000, "completion_tokens": 2_000_000_000}},
        latency=timedelta(milliseconds=10),
    )
    await write(db, [huge, *calls(63, 20)])

    assert await count_events(db) == 21
    got = await assert_rollups_are_exact(db)
    unpriced = sum(s["unpriced_tokens"] for s in got[HOURLY].values())
    assert unpriced >= 4_000_000_000


async def test_a_cost_whose_float_is_not_whole_nanos_counts_the_same_everywhere(
    db: Database,
) -> None:
    # SQLite keeps 0.000010124 as the float 1.0124e-05, which is 10123.99999999... nano-
    # dollars: the writer's SQL and the rebuild both round it, as the raw reports do.
    rng = random.Random(61)
    made = []
    for i, cost in enumerate(["0.000010124", "0.000010124", "0.1", "0.0123"]):
        call = a_call(rng, START + timedelta(minutes=i))
        call.model, call.provider = "gpt-4o", "openai"
        call.response = {"usage": {"prompt_tokens": 3, "completion_tokens": 4, "cost": cost}}
        call.response_meta = None
        made.append(call)
    await write(db, made)
    kept = await assert_rollups_are_exact(db)
    assert sum(s["cost_nanos"] for s in kept[HOURLY].values()) == 2 * 10_124 + 100_000_000 + (
        12_300_000
    )

    async with db.engine.begin() as conn:
        for name in TABLES:
            await conn.exec_driver_sql(f"DELETE FROM {name}")
    await rebuild(db)

    assert await stored_rollups(db) == kept


async def wait_for_lock_waiters(conn: asyncpg.Connection, n: int) -> None:
    """Until ``n`` other sessions of this database wait on a lock (no fixed sleep: the
    condition is polled, and the test fails if it never holds)."""
    async with asyncio.timeout(60):
        while True:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if waiting >= n:
                return
            await asyncio.sleep(0.01)


async def raw_connection(db: Database) -> asyncpg.Connection:
    url = db.engine.url.set(drivername="postgresql")
    return await asyncpg.connect(url.render_as_string(hide_password=False))


LOCK_ROLLUP = f"LOCK TABLE {', '.join(TABLES)} IN SHARE ROW EXCLUSIVE MODE"


async def test_overlapping_batches_written_at_once_count_each_call_once(
    db: Database, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared, only_a, only_b = calls(7, 150), calls(8, 100), calls(9, 100)
    batch_a: list[ProxyLogEntry] = [*shared, *only_a]
    batch_b: list[ProxyLogEntry] = [*only_b, *shared[::-1]]

    await asyncio.gather(db.write_log_batch(batch_a), db.write_log_batch(batch_b))
    assert await count_events(db) == 350
    await assert_rollups_are_exact(db)

    if backend == "postgresql":
        # Make the two transactions overlap for sure: hold the rollup, let both batches
        # insert as far as they can and wait (one on the rollup, the other on the first
        # one's rows), then let go. The second batch's COPY then fails on the shared
        # ids and it is written again through INSERT ... RETURNING, whose rollup must
        # count only the 100 rows it inserted.
        shared, only_a, only_b = calls(10, 150), calls(11, 100), calls(12, 100)
        returning: list[int] = []
        fetchmany = asyncpg.Connection.fetchmany

        async def spy(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
            if "RETURNING" in query:
                returning.append(len(args[0]))
            return await fetchmany(self, query, *args, **kwargs)

        monkeypatch.setattr(asyncpg.Connection, "fetchmany", spy)
        holder = await raw_connection(db)
        try:
            lock = holder.transaction()
            await lock.start()
            await holder.execute(LOCK_ROLLUP)
            writes = asyncio.gather(
                db.write_log_batch([*shared, *only_a]), db.write_log_batch([*only_b, *shared])
            )
            await wait_for_lock_waiters(holder, 2)
            await lock.commit()
            await writes
        finally:
            await holder.close()
        assert returning == [250]  # the batch whose COPY failed on the shared ids
        assert await count_events(db) == 700
        await assert_rollups_are_exact(db)


async def test_presence_rows_of_the_same_users_in_later_batches_are_not_doubled(
    db: Database,
) -> None:
    # The same users, hours and keys again and again, in batches of their own: one
    # presence row each (and the writer may skip the pairs it has written before).
    rng = random.Random(34)
    made = []
    for i in range(60):
        call = a_call(rng, START + timedelta(hours=i % 3, minutes=i))
        call.model, call.provider = "gpt-4o", "openai"
        call.metadata = RequestMetadata(application="chat", environment="prod")
        call.internal_metadata = InternalMetadata(
            organization_id=rng.choice(["org-1", "org-2"]),
            project_id="p1",
            user_id=rng.choice(["ana", "bo"]),
        )
        made.append(call)
    await write(db, made, size=7)
    got = await assert_rollups_are_exact(db)
    assert len(got[USERS_HOURLY]) == 6  # 3 hours x 2 users
    assert len(got[USERS_DAILY]) == 4  # 2 organizations x 2 users
    assert len(got[ACTIVE]) == 2  # 1 day x 2 users
    assert len(got[DAILY]) == 1


async def test_presence_rows_skipped_by_the_writer_are_only_those_stored_before(
    db: Database,
) -> None:
    # The writer leaves out of the presence tables the calls whose (hour, keys, user) and
    # (day, user) it has stored: a call differing in any part of them must still be
    # added, including one placed after a re-sent (skipped) call in its batch.
    rng = random.Random(35)

    def call(user: str, hour: int, model: str = "gpt-4o", day: int = 0) -> ProxyLogEvent:
        made = a_call(rng, START + timedelta(days=day, hours=hour, minutes=rng.randrange(60)))
        made.model, made.provider = model, "openai"
        made.metadata = RequestMetadata(application="chat", environment="prod")
        made.internal_metadata = InternalMetadata(project_id="p1", user_id=user)
        return made

    first = [call("ana", 0), call("bo", 0)]
    await write(db, first)
    await assert_rollups_are_exact(db)
    second = [
        call("ana", 0),  # both rows stored: skipped
        first[0],  # a re-sent call: not inserted, and its rows stored
        call("ana", 0, model="gpt-4o-mini"),  # a new hourly row, its day row stored
        call("bo", 1),  # a new hour
        call("cy", 0),  # a new user
        call("bo", 0, day=1),  # a new day
        call("ana", 0),
    ]
    await write(db, second, size=len(second))
    got = await assert_rollups_are_exact(db)
    assert len(got[USERS_HOURLY]) == 6
    assert len(got[ACTIVE]) == 4
    third = [first[1], second[4], call("dee", 2), call("bo", 1), call("ana", 0, day=1)]
    await write(db, third, size=len(third))
    got = await assert_rollups_are_exact(db)
    assert len(got[USERS_HOURLY]) == 8
    assert len(got[ACTIVE]) == 6


# -- rebuild -----------------------------------------------------------------------------

SPOILED_SUMS: dict[str, dict[str, Any]] = {
    HOURLY: {"requests": eventlog_rollup_hourly.c.requests + 5, "lat_13": 7, "cost_nanos": -1},
    DAILY: {"requests": eventlog_rollup_daily.c.requests + 5, "lat_13": 7, "cost_nanos": -1},
    USERS_DAILY: {
        "requests": eventlog_rollup_users_daily.c.requests + 5,
        "tps_ms": 3,
        "cost_nanos": -1,
    },
}


async def garble(db: Database, since: datetime | None = None) -> None:
    """Spoil the rollup (its rows from ``since`` when given): in each table delete a
    third of the rows and change another third (the sums; the user of a presence row);
    and add a day's active user who made no call."""
    async with db.engine.begin() as conn:
        for name, table in TABLES.items():
            columns = [table.c[k] for k in TABLE_KEYS[name]]
            query = select(*columns).order_by(*columns)
            if since is not None:
                query = query.where(columns[0] >= since)
            keys = (await conn.execute(query)).all()
            # The active users of a day after a prune are only ana, bo and cy.
            assert len(keys) >= (3 if name == ACTIVE else 4), name
            for i, key in enumerate(keys):
                match = [column == value for column, value in zip(columns, key, strict=True)]
                if i % 3 == 0:
                    await conn.execute(delete(table).where(*match))
                elif i % 3 == 1:
                    spoil = SPOILED_SUMS.get(name, {"user_id": f"garbled-{i}"})
                    await conn.execute(update(table).where(*match).values(spoil))
            if name == ACTIVE:
                await conn.execute(insert(table).values(day=keys[-1][0], user_id="bogus-user"))


async def add_stray_row(db: Database, hour: datetime, model: str = "stray") -> None:
    """A row of no call in each table, at ``hour`` (and its day)."""
    keys = {**dict.fromkeys(KEYS, ""), "model": model}
    day = utc_day(hour)
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(eventlog_rollup_hourly).values({"hour": hour, **keys, **dict.fromkeys(SUMS, 1)})
        )
        await conn.execute(
            insert(eventlog_rollup_daily).values({"day": day, **keys, **dict.fromkeys(SUMS, 1)})
        )
        await conn.execute(
            insert(eventlog_rollup_users_daily).values(
                {
                    "day": day,
                    "organization_id": "",
                    "user_id": "stray",
                    **keys,
                    **dict.fromkeys(USAGE_SUMS, 1),
                }
            )
        )
        await conn.execute(
            insert(eventlog_rollup_users_hourly).values({"hour": hour, **keys, "user_id": "stray"})
        )
        await conn.execute(insert(eventlog_rollup_active_users).values(day=day, user_id="stray"))


async def test_rebuild_restores_a_spoiled_rollup_to_what_the_writer_kept(db: Database) -> None:
    await write(db, [*calls(13, 500), *NOISE])
    kept = await assert_rollups_are_exact(db)
    await garble(db)
    # A row for an hour after the last call (one before the first call would be taken
    # for history whose raw rows were pruned, and kept: see the prune test below).
    stray = START + timedelta(days=30, hours=5)
    await add_stray_row(db, stray)
    spoiled = await stored_rollups(db)
    for name in TABLES:
        assert spoiled[name] != kept[name], name

    result = await rebuild(db)

    assert await stored_rollups(db) == kept
    assert result.calls == 500
    assert result.rows == len(kept[HOURLY])
    assert result.since == min(key[0] for key in kept[HOURLY])  # the first call's hour
    assert result.until == stray + timedelta(hours=1)  # to the last hour of the rollup too


async def test_rebuild_of_an_empty_database_does_nothing(db: Database) -> None:
    result = await rebuild(db)
    assert (result.rows, result.calls) == (0, 0)
    assert await stored_rollups(db) == {name: {} for name in TABLES}


async def test_a_windowed_rebuild_touches_only_the_hours_of_its_window(db: Database) -> None:
    await write(db, calls(14, 500))
    kept = await assert_rollups_are_exact(db)
    await garble(db)
    spoiled = await stored_rollups(db)
    # 10:20 to 13:05 is rounded out to the whole hours 10:00 to 14:00.
    since, until = START + timedelta(hours=34, minutes=20), START + timedelta(hours=37, minutes=5)
    first, end = START + timedelta(hours=34), START + timedelta(hours=38)
    day = START + timedelta(days=1)  # the day they are in

    result = await rebuild(db, since=since, until=until)

    assert (result.since, result.until) == (first, end)
    got = await stored_rollups(db)
    # The hourly tables: the hours of the window, and only those, are as the writer kept.
    for name in (HOURLY, USERS_HOURLY):
        for key in kept[name].keys() | spoiled[name].keys():
            source = kept if first <= key[0] < end else spoiled
            assert got[name].get(key) == source[name].get(key), (name, key)
    # The users' daily tables: the day of the window from its raw rows, the whole day
    # (its garbled users gone, those deleted back), the other days left alone.
    for name in (USERS_DAILY, ACTIVE):
        for key in kept[name].keys() | spoiled[name].keys():
            source = kept if key[0] == day else spoiled
            assert got[name].get(key) == source[name].get(key), (name, key)
    # The daily table: the day of the window re-summed from the hourly rows now stored
    # (its hours outside the window still spoiled), the other days left alone.
    resummed = daily_of(got[HOURLY])
    for key in kept[DAILY].keys() | spoiled[DAILY].keys() | resummed.keys():
        want = resummed.get(key) if key[0] == day else spoiled[DAILY].get(key)
        assert got[DAILY].get(key) == want, key
    inside = [key for key in kept[HOURLY] if first <= key[0] < end]
    assert inside
    assert result.rows == len(inside)
    for name, window in (
        (HOURLY, inside),
        (USERS_HOURLY, [key for key in kept[USERS_HOURLY] if first <= key[0] < end]),
        (USERS_DAILY, [key for key in kept[USERS_DAILY] if key[0] == day]),
        (ACTIVE, [key for key in kept[ACTIVE].keys() | spoiled[ACTIVE].keys() if key[0] == day]),
        (DAILY, [key for key in kept[DAILY] if key[0] == day]),
    ):  # something was fixed in each table
        assert any(got[name].get(key) != spoiled[name].get(key) for key in window), name
    # The spoiled hours of that day outside the window are in its daily rows.
    assert any(got[DAILY][key] != kept[DAILY].get(key) for key in got[DAILY] if key[0] == day)


async def test_a_rebuild_for_one_model_leaves_the_other_models_rows(db: Database) -> None:
    await write(db, calls(15, 500))
    kept = await assert_rollups_are_exact(db)
    await garble(db)
    await add_stray_row(db, START + timedelta(hours=3), model="gpt-4o")
    spoiled = await stored_rollups(db)

    result = await rebuild(db, model="gpt-4o")

    got = await stored_rollups(db)
    for name in MODEL_TABLES:
        for key in kept[name].keys() | spoiled[name].keys():
            source = kept if part(name, key, "model") == "gpt-4o" else spoiled
            assert got[name].get(key) == source[name].get(key), (name, key)
    assert result.rows == sum(key[1] == "gpt-4o" for key in kept[HOURLY])
    # The active users have no model: the rebuild deletes none of them and adds those
    # of the model's calls of each day (insert-or-ignore).
    of_the_model = {
        (utc_day(r["created_at"]), rollup_name(r["user_id"]))
        for r in await raw_rows(db)
        if r["event_type"] == LLM_CALL and r["model"] == "gpt-4o" and r["user_id"]
    }
    assert of_the_model <= kept[ACTIVE].keys()
    assert got[ACTIVE].keys() == spoiled[ACTIVE].keys() | of_the_model
    assert of_the_model - spoiled[ACTIVE].keys()  # deleted by garble(), back
    bogus = spoiled[ACTIVE].keys() - kept[ACTIVE].keys()
    assert {user for _, user in bogus} >= {"stray", "bogus-user"}  # and they stay


async def test_rebuild_while_the_writer_writes_loses_and_doubles_nothing(
    db: Database, backend: str
) -> None:
    await write(db, calls(16, 300))
    await garble(db)
    late = calls(17, 200)
    writes: list[asyncio.Future[Any]] = []

    async def write_meanwhile(conn: AsyncConnection, start: datetime, end: datetime) -> None:
        if writes:
            return
        writes.append(asyncio.ensure_future(db.write_log_batch(late)))
        if backend == "postgresql":  # the batch inserts its rows, then waits for the rollup
            holder = await raw_connection(db)
            try:
                await wait_for_lock_waiters(holder, 1)
            finally:
                await holder.close()

    await rebuild(db, before_chunk=write_meanwhile)
    await writes[0]

    assert await count_events(db) == 500
    await assert_rollups_are_exact(db)


async def test_rebuild_counts_an_error_as_analytics_do_even_if_imported_as_json_null(
    db: Database,
) -> None:
    # A row imported by other means may hold the JSON null where the writer puts SQL
    # NULL: it IS NOT NULL in SQL, so the raw reports, the backfill and the writer's
    # rollup count it as an error; rebuild must count it alike.
    call = calls(18, 1)[0]
    await write(db, [call])
    async with db.engine.begin() as conn:
        json_null = "'null'::jsonb" if db.dialect == "postgresql" else "'null'"
        await conn.execute(text(f"UPDATE chronicle_events SET error = {json_null}"))
    await rebuild(db)
    await assert_rollups_are_exact(db)
    (row,) = await an.usage(db, since=START, until=START + timedelta(days=5), source="rollup")
    assert row.errors == 1


@pytest.mark.parametrize(
    "cut", [timedelta(days=2), timedelta(days=2, hours=5, minutes=30)], ids=["midnight", "midday"]
)
async def test_a_rebuild_after_a_prune_keeps_the_history_of_the_pruned_hours(
    db: Database, cut: timedelta
) -> None:
    await write(db, calls(25, 300))
    kept = await assert_rollups_are_exact(db)
    cutoff = START + cut
    cut_day = START + timedelta(days=2)
    await prune(db, older_than=cutoff)
    assert await stored_rollups(db) == kept  # prune leaves the rollup alone
    rows = await raw_rows(db)
    assert rows
    assert min(r["created_at"] for r in rows) >= cutoff
    # Spoil what the rebuild recomputes from the raw rows: the day after the cut, and
    # the daily row of the cut day (re-summed from its hourly rows); and, when the cut
    # is within the day, the users' rows of the cut day: its raw rows are incomplete,
    # so the rebuild must leave them as they are.
    await garble(db, since=cut_day + timedelta(days=1))
    async with db.engine.begin() as conn:
        for table in (eventlog_rollup_daily, eventlog_rollup_users_daily):
            if table is eventlog_rollup_users_daily and cutoff == cut_day:
                continue
            await conn.execute(
                update(table).where(table.c.day == cut_day).values(requests=table.c.requests + 5)
            )
        if cutoff != cut_day:  # the cut day's active users: one gone, one made up
            active = eventlog_rollup_active_users
            first_user = min(user for day, user in kept[ACTIVE] if day == cut_day)
            await conn.execute(
                delete(active).where(active.c.day == cut_day, active.c.user_id == first_user)
            )
            await conn.execute(insert(active).values(day=cut_day, user_id="made-up"))
    spoiled = await stored_rollups(db)
    assert spoiled[DAILY] != kept[DAILY]

    await rebuild(db)

    got = await stored_rollups(db)
    for name in (HOURLY, DAILY, USERS_HOURLY):  # history before the cut, and the rest redone
        assert got[name] == kept[name], name
    if cutoff == cut_day:
        assert got[USERS_DAILY] == kept[USERS_DAILY]
        assert got[ACTIVE] == kept[ACTIVE]
    else:
        assert any(key[0] == cut_day for key in kept[USERS_DAILY])
        assert got[USERS_DAILY] == {
            key: (spoiled if key[0] == cut_day else kept)[USERS_DAILY][key]
            for key in kept[USERS_DAILY]
        }
        assert spoiled[ACTIVE] != kept[ACTIVE]
        assert got[ACTIVE] == {
            **{key: sums for key, sums in kept[ACTIVE].items() if key[0] != cut_day},
            **{key: sums for key, sums in spoiled[ACTIVE].items() if key[0] == cut_day},
        }


async def test_cli_rollup_rebuild_prints_its_summary(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    await write(db, calls(19, 200))
    kept = await assert_rollups_are_exact(db)
    await garble(db)

    done = await asyncio.to_thread(run, "rollup", "--rebuild", "--url", db_url, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "rebuilt the rollup of 2026-03-27 00:00 to" in done.stdout
    assert f"{len(kept[HOURLY]):,} rows from 200 LLM calls" in done.stdout
    assert await stored_rollups(db) == kept


# -- the 0004 backfill, re-keyed by 0005 ---------------------------------------------------

BACKFILL_KNOWS = tuple(
    name
    for name in SUMS
    if name
    not in {
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "cost_nanos",
        "priced",
        "unpriced",
        "unpriced_tokens",
        "ttft_count",
        "ttft_sum_ms",
    }
)


async def test_migration_0004_fills_the_rollup_from_the_stored_calls(
    backend: str, fresh_url: Callable[[str], str]
) -> None:
    """Down to 0003 and up to the head: 0004 sums the stored calls into its hourly table
    (keyed by organization and user too), and 0005 makes the five tables of it."""
    url = fresh_url(backend)
    db = await eventlog.open_database(url, migrate=True)
    try:
        await write(db, [*calls(20, 600), *NOISE, *repaired_calls()])
        kept = await assert_rollups_are_exact(db)
        await downgrade(db.engine, "0003")
        await upgrade(db.engine)
        filled = await stored_rollups(db)
        rows = await raw_rows(db)
    finally:
        await db.close()

    for name in TABLES:
        assert set(filled[name]) == set(kept[name]), name
        knows = [n for n in TABLE_VALUES[name] if n in BACKFILL_KNOWS]
        for key, sums in kept[name].items():
            assert {n: filled[name][key][n] for n in knows} == {n: sums[n] for n in knows}, (
                name,
                key,
            )
    # What it cannot know: every call it found is unpriced, with its tokens.
    assert_same(filled, expected_rollup(rows, known=False))
    for name in (HOURLY, DAILY, USERS_DAILY):
        for sums in filled[name].values():
            assert sums["unpriced"] == sums["requests"]
            assert sums["priced"] == sums["cost_nanos"] == sums.get("ttft_count", 0) == 0
    assert all(row["cost_usd"] is None for row in rows)  # the column came back empty
    assert len(filled[ACTIVE]) == 4 * 3 + 2  # 4 days x ana, bo, cy; the 2 repaired users
    assert {part(USERS_DAILY, key, "organization_id") for key in filled[USERS_DAILY]} == {
        "",
        "org-1",
    }


# -- usage and latency read the rollup ---------------------------------------------------

WINDOW_SINCE = datetime(2026, 3, 27, 10, 17, tzinfo=UTC)
WINDOW_UNTIL = datetime(2026, 3, 30, 14, 42, tzinfo=UTC)


def edge_calls() -> list[ProxyLogEvent]:
    """Calls right around the window's partial first and last hours."""
    rng = random.Random(21)
    moments = [
        WINDOW_SINCE - timedelta(minutes=10),
        WINDOW_SINCE - timedelta(microseconds=1),
        WINDOW_SINCE,
        WINDOW_SINCE + timedelta(minutes=20),
        WINDOW_SINCE + timedelta(minutes=42, microseconds=999_999),
        WINDOW_SINCE.replace(minute=0) + timedelta(hours=1),
        WINDOW_UNTIL.replace(minute=0) - timedelta(microseconds=1),
        WINDOW_UNTIL.replace(minute=0),
        WINDOW_UNTIL - timedelta(minutes=30),
        WINDOW_UNTIL - timedelta(microseconds=1),
        WINDOW_UNTIL,
        WINDOW_UNTIL + timedelta(minutes=10),
    ]
    made = []
    for at in moments:
        for _ in range(3):
            call = a_call(rng, at)
            call.model = "gpt-4o"
            made.append(call)
    return made


@pytest.fixture
async def spread(db: Database) -> Database:
    await write(db, [*calls(22, 900, START, 24 * 5), *edge_calls(), *NOISE])
    return db


SOURCE_CASES: list[dict[str, Any]] = [
    {},
    {"by": ["model", "user"]},
    {"by": ["model", "user"], "bucket": "day", "tz": "Europe/Berlin"},
    {"by": ["model", "user"], "bucket": "day", "tz": "UTC"},
    {"by": "project", "bucket": "hour"},
    {"bucket": "week", "tz": "Europe/Berlin"},
    {"by": "user", "where": {"model": "gpt-4o"}},
    {"by": "organization", "where": {"model": ["gpt-4o", "house-model-7b"], "user": None}},
    {"bucket": "day", "tz": "Asia/Kolkata"},  # not on UTC hours: auto reads the raw rows
]


def rollup_answers(case: Mapping[str, Any]) -> bool:
    """Whether the rollup has the figures of a usage ``case``: local days on UTC hours,
    and organization or user (the users' daily table) only in buckets of whole UTC
    days."""
    if case.get("tz") == "Asia/Kolkata":
        return False
    by = case.get("by", ())
    names = {by} if isinstance(by, str) else set(by)
    per_user = bool((names | set(case.get("where", {}))) & {"organization", "user"})
    utc_days = case.get("bucket") is None or (
        case["bucket"] in ("day", "week", "month") and case.get("tz") in (None, "UTC")
    )
    return not per_user or utc_days


@pytest.mark.parametrize("case", SOURCE_CASES, ids=lambda case: repr(case)[:60])
async def test_usage_is_the_same_from_the_raw_rows_the_rollup_and_auto(
    spread: Database, case: dict[str, Any]
) -> None:
    window: dict[str, Any] = {"since": WINDOW_SINCE, "until": WINDOW_UNTIL, **case}
    raw = await an.usage(spread, **window, source="raw")
    auto = await an.usage(spread, **window)

    assert auto == raw
    if rollup_answers(case):
        assert await an.usage(spread, **window, source="rollup") == raw
    else:  # auto read the raw rows
        with pytest.raises(ValueError, match="source"):
            await an.usage(spread, **window, source="rollup")
    assert sum(row.requests for row in raw) > 50
    if not case:
        rows = await raw_rows(spread)
        inside = [
            r
            for r in rows
            if r["event_type"] == LLM_CALL and WINDOW_SINCE <= r["created_at"] < WINDOW_UNTIL
        ]
        (total,) = raw
        assert total.requests == len(inside)
        assert total.cost_usd == sum(
            (r["cost_usd"] for r in inside if r["cost_usd"] is not None), Decimal(0)
        )
        assert total.unpriced_requests == sum(r["cost_usd"] is None for r in inside)


async def test_a_call_in_the_last_microsecond_of_an_hour_is_in_that_hour(db: Database) -> None:
    # SQLite's strftime('%s') rounds 59.9995 s up to the next second: the raw rows'
    # buckets must not, or they disagree with the rollup (and with PostgreSQL).
    late = ProxyLogEvent(timestamp=START + timedelta(hours=5, microseconds=-1), model="m")
    await write(db, [late])
    window: dict[str, Any] = {"since": START, "until": START + timedelta(days=3), "bucket": "hour"}
    for source in ("raw", "rollup"):
        rows = await an.usage(db, **window, source=source)
        (hour,) = [row for row in rows if row.requests]
        assert hour.start == START + timedelta(hours=4), source


@pytest.mark.parametrize(
    "case",
    [
        {"by": "workflow"},
        {"bucket": "minute"},
        {"where": {"meta.team": "red"}},
        {"where": {"workflow": "triage"}},
        {"where": {"model": ""}},
        {"bucket": "day", "tz": "Asia/Kolkata"},
        # Per user only per UTC day: not per hour, nor per day of another time zone.
        {"by": "user", "bucket": "hour"},
        {"by": ["model", "user"], "bucket": "day", "tz": "Europe/Berlin"},
        {"where": {"organization": "org-1"}, "bucket": "day", "tz": "Europe/Berlin"},
    ],
    ids=repr,
)
async def test_source_rollup_refuses_what_the_rollup_cannot_answer(
    db: Database, case: dict[str, Any]
) -> None:
    window: dict[str, Any] = {"since": WINDOW_SINCE, "until": WINDOW_UNTIL, **case}
    with pytest.raises(ValueError, match="source"):
        await an.usage(db, **window, source="rollup")
    with pytest.raises(ValueError, match="source"):
        await an.latency(db, **window, source="rollup")
    assert await an.usage(db, **window, source="raw") is not None


async def test_an_unknown_source_is_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="source must be"):
        await an.usage(db, since=WINDOW_SINCE, until=WINDOW_UNTIL, source="cache")  # type: ignore[arg-type]


async def test_an_empty_string_user_is_the_same_from_raw_rows_and_rollup(db: Database) -> None:
    rng = random.Random(23)
    made = []
    for i, user in enumerate(["", None, "ana"] * 4):
        call = a_call(rng, START + timedelta(hours=10 + i))
        call.internal_metadata = InternalMetadata(user_id=user)
        made.append(call)
    await write(db, made)
    window: dict[str, Any] = {"since": START, "until": START + timedelta(days=3), "by": "user"}
    assert await an.usage(db, **window, source="rollup") == await an.usage(
        db, **window, source="raw"
    )


async def test_usage_reads_its_sums_and_its_users_in_one_snapshot(
    db: Database, db_url: str
) -> None:
    # A report over the rollup reads the sums, then the distinct users, in a second
    # query: a batch committed between the two must be in both or in neither (on SQLite
    # each query read its own snapshot: a call's user counted without the call).
    rng = random.Random(25)
    hour = START + timedelta(hours=30, minutes=10)
    first, second = a_call(rng, hour), a_call(rng, hour + timedelta(minutes=1))
    first.internal_metadata = InternalMetadata(user_id="ana")
    second.internal_metadata = InternalMetadata(user_id="bea")
    await write(db, [first])

    window: dict[str, Any] = {"since": START, "until": START + timedelta(days=3)}
    with another_writer_commits(db, db_url, [second], before="AS users") as fired:
        (row,) = await an.usage(db, **window, source="rollup")
    assert fired, "the users' query was not seen"
    assert (row.requests, row.users) == (1, 1)  # the report's snapshot: before the second
    (row,) = await an.usage(db, **window, source="rollup")
    assert (row.requests, row.users) == (2, 2)


async def test_reports_at_once_on_an_in_memory_database() -> None:
    # An in-memory database has one connection, shared by every reader: a report's
    # snapshot transaction there made the others fail to begin theirs.
    db = await eventlog.open_database("sqlite://", migrate=True)
    try:
        await write(db, calls(26, 40))
        window: dict[str, Any] = {"since": START, "until": START + timedelta(days=5)}
        expected = await an.usage(db, **window, source="raw")
        found = await asyncio.gather(*(an.usage(db, **window, source="rollup") for _ in range(8)))
        assert found == [expected] * 8
    finally:
        await db.close()


def nearest_rank(values: Sequence[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered))) - 1]


LONG_SINCE = datetime(2026, 3, 1, 10, 17, tzinfo=UTC)
LONG_UNTIL = LONG_SINCE + timedelta(days=30)


@pytest.fixture
async def month(db: Database) -> Database:
    rng = random.Random(24)
    made = []
    for i in range(1_500):
        if i % 10 == 0:  # the partial first and last hours, read from the raw rows
            at = rng.choice([LONG_SINCE, LONG_UNTIL - timedelta(minutes=42)]) + timedelta(
                seconds=rng.uniform(0, 2_500)
            )
        else:
            at = LONG_SINCE + timedelta(seconds=rng.uniform(-7_200, 30 * 86_400 + 7_200))
        call = a_call(rng, at)
        latency = a_latency(rng, huge=False)
        call.latency = None if latency is None else timedelta(milliseconds=latency)
        made.append(call)
    await write(db, made, size=500)
    return db


async def test_latency_over_30_days_comes_from_the_histogram_within_one_bin(
    month: Database,
) -> None:
    rows = await raw_rows(month)
    inside = [
        r
        for r in rows
        if r["event_type"] == LLM_CALL and LONG_SINCE <= r["created_at"] < LONG_UNTIL
    ]
    for by in ((), ("model",)):
        got = await an.latency(month, since=LONG_SINCE, until=LONG_UNTIL, by=by)
        assert got == await an.latency(
            month, since=LONG_SINCE, until=LONG_UNTIL, by=by, source="rollup"
        )
        assert len(got) == (1 if not by else len({r["model"] for r in inside}))
        for row in got:
            group = [r for r in inside if not by or r["model"] == row.group["model"]]
            values = [r["request_latency_ms"] for r in group if r["request_latency_ms"] is not None]
            stats = row.request
            assert stats.approximate is True
            assert stats.bin_width == pytest.approx(1.189, abs=0.001)
            assert stats.count == len(values)
            assert stats.avg == pytest.approx(sum(values) / len(values))
            for p, minimum in ((0.5, 1), (0.75, 1), (0.9, 1), (0.95, 20), (0.99, 100)):
                approximate = getattr(stats, f"p{round(p * 100)}")
                if len(values) < minimum:
                    assert approximate is None
                    continue
                exact = nearest_rank(values, p)
                assert exact <= approximate <= exact * 1.19 + 1, (row.group, p)
            for name, column in (("total", "total_latency_ms"), ("ttft", "ttft_ms")):
                samples = [r[column] for r in group if r[column] is not None]
                only = getattr(row, name)
                assert (only.count, only.p50, only.p95, only.p99) == (
                    len(samples),
                    None,
                    None,
                    None,
                )
                assert only.avg == pytest.approx(sum(samples) / len(samples))
    # A week is exact, from the raw rows.
    week = await an.latency(month, since=LONG_SINCE, until=LONG_SINCE + timedelta(days=7))
    assert week[0].request.approximate is False


async def test_an_approximate_percentile_is_never_below_the_exact_one(db: Database) -> None:
    made = [
        ProxyLogEvent(
            timestamp=LONG_SINCE + timedelta(days=i % 20, hours=1),
            model="gpt-4o",
            latency=timedelta(milliseconds=2_000_000 + i),
        )
        for i in range(30)
    ]
    await write(db, made)
    (row,) = await an.latency(db, since=LONG_SINCE, until=LONG_UNTIL)
    assert row.request.p50 is not None
    assert row.request.p50 >= 2_000_000


# -- distinct users, organizations and users over days ----------------------------------

PEOPLE = tuple(f"user-{i:02d}" for i in range(24))
USERS_SINCE = START + timedelta(hours=5, minutes=30)
USERS_UNTIL = START + timedelta(days=3, hours=7)
USER_WINDOWS = [
    (USERS_SINCE, USERS_UNTIL),  # from within an hour to a whole hour
    (START + timedelta(hours=5), START + timedelta(days=3, hours=7, minutes=20)),  # and back
]
GROUP_COLUMNS = {"model": "model", "organization": "organization_id", "user": "user_id"}


def people_calls() -> list[ProxyLogEvent]:
    """Calls of two dozen users over five days, each user on a few days only; users
    seen only just outside the windows, or just inside; one user everywhere at once."""
    rng = random.Random(26)
    active = {day: [u for u in PEOPLE if rng.random() < 0.15 + 0.15 * day] for day in range(5)}
    made = []
    for _ in range(900):
        day = rng.randrange(5)
        call = a_call(rng, START + timedelta(days=day, seconds=rng.uniform(0, 86_400)))
        call.internal_metadata = InternalMetadata(
            organization_id=rng.choice(["org-1", "org-2", None]),
            project_id=rng.choice(["p1", "p2", None]),
            user_id=rng.choice(active[day]) if active[day] and rng.random() < 0.9 else None,
        )
        made.append(call)
    edges = {
        "only-before-since": [
            START + timedelta(hours=5, minutes=10),
            USERS_SINCE - timedelta(microseconds=1),
        ],
        "only-at-since": [USERS_SINCE],
        "only-early-on-day-0": [START + timedelta(hours=1)],
        "only-late-on-day-3": [START + timedelta(days=3, hours=20)],
        "only-in-the-last-hour": [USERS_UNTIL - timedelta(minutes=45)],
        "only-before-until": [USERS_UNTIL - timedelta(microseconds=1)],
        "only-from-until": [USERS_UNTIL, USERS_UNTIL + timedelta(minutes=20)],
    }
    for user, moments in edges.items():
        for at in moments:
            call = a_call(rng, at)
            call.internal_metadata = InternalMetadata(
                organization_id=rng.choice(["org-1", "org-2"]), user_id=user
            )
            made.append(call)
    for organization in ("org-1", "org-2", None):  # one user, many rows of a day
        for model, provider in PROVIDERS.items():
            call = a_call(rng, START + timedelta(days=1, hours=rng.randrange(24)))
            call.model, call.provider = model, provider
            call.internal_metadata = InternalMetadata(
                organization_id=organization, user_id="everywhere"
            )
            made.append(call)
    return made


@pytest.fixture
async def people(db: Database) -> Database:
    await write(db, [*people_calls(), *NOISE])
    return db


def python_buckets(
    since: datetime, until: datetime, bucket: str | None
) -> list[tuple[datetime, datetime]]:
    """The UTC buckets of a window, the first and last cut to it."""
    if bucket is None:
        return [(since, until)]
    size = {"hour": timedelta(hours=1), "day": timedelta(days=1)}[bucket]
    made = []
    start = since
    while start < until:
        floor = utc_hour(start) if bucket == "hour" else utc_day(start)
        end = min(floor + size, until)
        made.append((start, end))
        start = end
    return made


def matches(row: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    for name, value in where.items():
        values = list(value) if isinstance(value, list) else [value]
        if row[GROUP_COLUMNS[name]] not in values:
            return False
    return True


Figures = dict[tuple[datetime, datetime, tuple[Any, ...]], tuple[int, int, Decimal]]


def python_usage(
    rows: Sequence[Mapping[str, Any]],
    since: datetime,
    until: datetime,
    by: Sequence[str],
    bucket: str | None,
    where: Mapping[str, Any],
) -> Figures:
    """Requests, distinct users and cost per bucket and group (every group found in the
    window, in every bucket), from the raw rows."""
    inside = [
        r
        for r in rows
        if r["event_type"] == LLM_CALL and since <= r["created_at"] < until and matches(r, where)
    ]
    groups = {tuple(r[GROUP_COLUMNS[name]] for name in by) for r in inside} if by else {()}
    figures: Figures = {}
    for start, end in python_buckets(since, until, bucket):
        for group in groups:
            mine = [
                r
                for r in inside
                if start <= r["created_at"] < end
                and tuple(r[GROUP_COLUMNS[name]] for name in by) == group
            ]
            figures[(start, end, group)] = (
                len(mine),
                len({r["user_id"] for r in mine if r["user_id"] is not None}),
                sum((r["cost_usd"] for r in mine if r["cost_usd"] is not None), Decimal(0)),
            )
    return figures


def figures_of(rows: Sequence[an.UsageRow], by: Sequence[str]) -> Figures:
    figures: Figures = {}
    for row in rows:
        key = (row.start, row.end, tuple(row.group[name] for name in by))
        assert key not in figures
        figures[key] = (row.requests, row.users, row.cost_usd)
    return figures


@pytest.mark.parametrize("bucket", ["day", None, "hour"])
@pytest.mark.parametrize("window", USER_WINDOWS, ids=["since-mid-hour", "until-mid-hour"])
async def test_distinct_users_over_days_are_the_users_of_the_raw_rows(
    people: Database, window: tuple[datetime, datetime], bucket: str | None
) -> None:
    since, until = window
    rows = await raw_rows(people)
    for by in ((), ("model",)):
        want = python_usage(rows, since, until, by, bucket, {})
        arguments: dict[str, Any] = {
            "since": since,
            "until": until,
            "by": by,
            "bucket": bucket,
            "tz": "UTC",
        }
        raw = await an.usage(people, **arguments, source="raw")
        assert figures_of(raw, by) == want, by
        assert await an.usage(people, **arguments) == raw, by
        assert await an.usage(people, **arguments, source="rollup") == raw, by
    # The data makes the point: users seen on a day but not in its part inside the
    # window, and days with different users.
    whole_first_day = python_usage(
        rows, utc_day(since), utc_day(since) + timedelta(days=1), (), None, {}
    )
    part_of_it = python_usage(rows, since, utc_day(since) + timedelta(days=1), (), None, {})
    assert next(iter(whole_first_day.values()))[1] > next(iter(part_of_it.values()))[1]
    days = python_usage(rows, since, until, (), "day", {})
    assert len({users for _, users, _ in days.values()}) > 1


async def test_the_users_of_whole_days_with_no_grouping_come_from_the_active_users(
    people: Database,
) -> None:
    """Neither ``by`` nor ``where``, per day: each day's distinct users are those of the
    raw rows, the whole days read from the active users' table (the partial days at the
    ends from the hourly presence and the raw rows)."""
    window: dict[str, Any] = {"since": USERS_SINCE, "until": USERS_UNTIL, "bucket": "day"}
    rows = await raw_rows(people)
    raw = await an.usage(people, **window, source="raw")
    assert figures_of(raw, ()) == python_usage(rows, USERS_SINCE, USERS_UNTIL, (), "day", {})
    users = {
        start: len(
            {
                r["user_id"]
                for r in rows
                if r["event_type"] == LLM_CALL
                and start <= r["created_at"] < end
                and r["user_id"] is not None
            }
        )
        for start, end in python_buckets(USERS_SINCE, USERS_UNTIL, "day")
    }
    assert {row.start: row.users for row in raw} == users
    assert len(set(users.values())) > 1  # days with different numbers of users
    whole = [row.start for row in raw if row.end - row.start == timedelta(days=1)]
    assert len(whole) == 2
    assert len(raw) == 4  # and a partial day at each end
    assert await an.usage(people, **window) == raw
    assert await an.usage(people, **window, source="rollup") == raw
    # It is that table they come from: a user made up there counts on that day.
    async with people.engine.begin() as conn:
        await conn.execute(
            insert(eventlog_rollup_active_users).values(day=whole[0], user_id="made-up")
        )
    for source in ("auto", "rollup"):
        rolled = await an.usage(people, **window, source=source)
        assert {row.start: row.users for row in rolled} == {
            start: n + (start == whole[0]) for start, n in users.items()
        }, source
    assert await an.usage(people, **window, source="raw") == raw


@pytest.mark.parametrize("bucket", [None, "day"])
@pytest.mark.parametrize(
    "by", ["user", "organization", ["organization", "user"], ["organization", "model"]], ids=repr
)
async def test_usage_by_user_or_organization_over_days_is_the_same_from_every_source(
    people: Database, by: str | list[str], bucket: str | None
) -> None:
    names = [by] if isinstance(by, str) else by
    window: dict[str, Any] = {
        "since": USERS_SINCE,
        "until": USERS_UNTIL,
        "by": by,
        "bucket": bucket,
        "tz": "UTC",
    }
    raw = await an.usage(people, **window, source="raw")
    assert figures_of(raw, names) == python_usage(
        await raw_rows(people), USERS_SINCE, USERS_UNTIL, names, bucket, {}
    )
    assert await an.usage(people, **window) == raw
    assert await an.usage(people, **window, source="rollup") == raw


@pytest.mark.parametrize("bucket", [None, "day"])
@pytest.mark.parametrize(
    "where",
    [
        {"organization": "org-1"},
        {"organization": ["org-2", None]},
        {"organization": "org-1", "user": ["user-03", "everywhere", "only-at-since"]},
    ],
    ids=repr,
)
async def test_usage_of_an_organization_by_model_over_days_is_the_same_from_every_source(
    people: Database, where: dict[str, Any], bucket: str | None
) -> None:
    window: dict[str, Any] = {
        "since": USERS_SINCE,
        "until": USERS_UNTIL,
        "by": "model",
        "bucket": bucket,
        "tz": "UTC",
        "where": where,
    }
    raw = await an.usage(people, **window, source="raw")
    want = python_usage(await raw_rows(people), USERS_SINCE, USERS_UNTIL, ["model"], bucket, where)
    assert figures_of(raw, ["model"]) == want
    assert sum(requests for requests, _, _ in want.values()) > 0
    assert await an.usage(people, **window) == raw
    assert await an.usage(people, **window, source="rollup") == raw


# -- odd data the review found ---------------------------------------------------------


async def test_names_too_long_for_an_index_are_cut_and_the_calls_kept(db: Database) -> None:
    """PostgreSQL refuses a B-tree entry over 2,704 bytes: a user id, or the seven
    keys of the users' daily rollup, that long must not turn a call into a dead letter
    (SQLite would keep it)."""
    rng = random.Random(31)

    def noise(n: int) -> str:  # text PostgreSQL cannot compress into an index entry
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))

    long_user = noise(5000)
    long_model = "é" + "".join(chr(0xE0 + rng.randrange(20)) for _ in range(2999))
    made = []
    for i in range(4):
        call = a_call(rng, START + timedelta(hours=i))
        call.model = long_model
        call.provider = noise(4000)
        call.metadata.application = noise(4000)
        call.internal_metadata = InternalMetadata(
            organization_id=noise(4000), project_id=noise(4000), user_id=long_user
        )
        made.append(call)
    await write(db, made)
    rows = await raw_rows(db)
    assert len(rows) == 4
    assert {len(r["user_id"].encode()) for r in rows} == {1000}  # the indexed column, cut
    # Indexed too since 0005 (the latency report's index): cut, on a character boundary.
    assert {r["model"] for r in rows} == {long_model.encode()[:1000].decode("utf-8", "ignore")}
    rollup = await assert_rollups_are_exact(db)
    for name in MODEL_TABLES:
        assert {part(name, key, "model") for key in rollup[name]} == {long_model[:90]}, name
        assert len(rollup[name]) == 4, name
    for name in (USERS_DAILY, USERS_HOURLY, ACTIVE):
        assert {part(name, key, "user_id") for key in rollup[name]} == {long_user[:90]}, name
    assert len(rollup[ACTIVE]) == 1  # one user, one day
    (row,) = await an.usage(db, since=START, until=START + timedelta(days=3), source="rollup")
    assert row.requests == 4


async def test_a_model_or_provider_that_is_not_text_is_stored_unpriced(db: Database) -> None:
    odd: list[Any] = [123, ["gpt-4o"], {"name": "gpt-4o"}]
    made = []
    for i, value in enumerate(odd):
        call = ProxyLogEvent(
            timestamp=START + timedelta(minutes=i),
            provider=value if i else "openai",
            response={"usage": {"prompt_tokens": 10, "completion_tokens": 2}},
        )
        call.model = value
        made.append(call)
    await write(db, made)
    rows = await raw_rows(db)
    assert len(rows) == 3
    assert all(r["cost_usd"] is None for r in rows)
    await assert_rollups_are_exact(db)


async def test_text_ids_count_once_in_the_rollup_on_the_conflict_path(db: Database) -> None:
    rng = random.Random(32)
    first = a_call(rng, START)
    await write(db, [first])
    texts = [a_call(rng, START + timedelta(minutes=i)) for i in (1, 2)]
    for call in texts:
        call.id = str(call.id).upper()  # type: ignore[assignment]
    await write(db, [first, *texts])  # a stored id: the conflict-safe path
    assert len(await raw_rows(db)) == 3
    rollup = await assert_rollups_are_exact(db)
    for name in (HOURLY, DAILY, USERS_DAILY):
        assert sum(sums["requests"] for sums in rollup[name].values()) == 3, name


async def test_a_rebuild_copes_with_a_call_stamped_in_the_year_9999(db: Database) -> None:
    rng = random.Random(33)
    await write(db, [a_call(rng, START), a_call(rng, datetime(9999, 12, 31, 23, 30, tzinfo=UTC))])
    result = await rebuild(db, since=START)
    assert result.calls >= 1


async def test_presence_rows_on_the_conflict_path_come_only_from_the_calls_inserted(
    db: Database,
) -> None:
    # A call of ana is stored; then a batch holds a call with its id (another user and
    # model: not stored, the first one is kept) and a new call of bo. Neither zed nor
    # the other model may reach any rollup table, presence rows included.
    stored = ProxyLogEvent(
        timestamp=START + timedelta(hours=1, minutes=5),
        provider="openai",
        model="gpt-4o",
        latency=timedelta(milliseconds=40),
        internal_metadata=InternalMetadata(organization_id="org-1", user_id="ana"),
    )
    await write(db, [stored])
    same_id = ProxyLogEvent(
        id=stored.id,
        timestamp=START + timedelta(hours=1, minutes=20),
        provider="vllm",
        model="house-model-7b",
        latency=timedelta(milliseconds=50),
        internal_metadata=InternalMetadata(organization_id="org-1", user_id="zed"),
    )
    new = ProxyLogEvent(
        timestamp=START + timedelta(hours=2, minutes=3),
        provider="openai",
        model="gpt-4o",
        latency=timedelta(milliseconds=60),
        internal_metadata=InternalMetadata(organization_id="org-1", user_id="bo"),
    )

    await write(db, [same_id, new], size=2)  # a stored id: the conflict-safe path

    assert await count_events(db) == 2
    got = await assert_rollups_are_exact(db)
    for name in (USERS_HOURLY, ACTIVE, USERS_DAILY):
        users = {part(name, key, "user_id") for key in got[name]}
        assert users == {"ana", "bo"}, name
    assert set(got[USERS_HOURLY]) == {
        (START + timedelta(hours=1), "gpt-4o", "openai", "", "", "", "ana"),
        (START + timedelta(hours=2), "gpt-4o", "openai", "", "", "", "bo"),
    }
    assert set(got[ACTIVE]) == {(START, "ana"), (START, "bo")}
    for name in MODEL_TABLES:
        assert {part(name, key, "model") for key in got[name]} == {"gpt-4o"}, name

    # zed's first real call, in the same hour and keys as the refused one: the writer
    # must not take its presence rows for written already (and skip them).
    later = ProxyLogEvent(
        timestamp=START + timedelta(hours=1, minutes=40),
        provider="vllm",
        model="house-model-7b",
        latency=timedelta(milliseconds=70),
        internal_metadata=InternalMetadata(organization_id="org-1", user_id="zed"),
    )
    await write(db, [later])

    got = await assert_rollups_are_exact(db)
    assert (START + timedelta(hours=1), "house-model-7b", "vllm", "", "", "", "zed") in got[
        USERS_HOURLY
    ]
    assert (START, "zed") in got[ACTIVE]


# -- re-pricing a day that a prune cut through ---------------------------------------------

HOUSE = "house-model-7b"  # no bundled price: the writer leaves its calls unpriced
HOUSE_PRICE = Price(
    id="ours/house-model-7b",
    provider=None,
    model=HOUSE,
    pattern=None,
    valid_from=date(2025, 1, 1),
    input=Decimal("0.20"),
    output=Decimal("0.60"),
    request=Decimal("0.0001"),
)
CUT = START + timedelta(hours=5, minutes=30)  # within the first day, within an hour


def house_calls() -> list[ProxyLogEvent]:
    """Calls of a few users over two UTC days: mostly of the unpriced house model (with
    tokens, without, failed), some of a priced one; each user on both sides of the cut,
    some in the cut hour after the cut."""
    rng = random.Random(41)
    made = []
    moments = [START + timedelta(seconds=rng.uniform(0, 2 * 86_400)) for _ in range(150)]
    moments += [CUT + timedelta(minutes=m) for m in (0, 5, 17, 29)]  # the cut hour, after
    moments += [CUT - timedelta(minutes=m) for m in (1, 20)]  # the cut hour, before
    for i, at in enumerate(moments):
        house = i % 5 != 0
        response: Any = {
            "usage": {
                "prompt_tokens": rng.randrange(1, 5_000),
                "completion_tokens": rng.randrange(0, 900),
            }
        }
        if i % 13 == 3:
            response = None  # no tokens: stays unpriced (unless failed)
        made.append(
            ProxyLogEvent(
                timestamp=at,
                provider="vllm" if house else "openai",
                model=HOUSE if house else "gpt-4o",
                response=response,
                latency=timedelta(milliseconds=rng.randrange(20, 4_000)),
                error={"type": "ServerError"} if i % 17 == 4 else None,
                metadata=RequestMetadata(application=rng.choice(["chat", "search"])),
                internal_metadata=InternalMetadata(
                    organization_id=rng.choice(["org-1", None]),
                    user_id=("ana", "bo", "cy", None)[i % 4],
                ),
            )
        )
    return made


def nanos(cost: Any) -> int:
    value = Decimal(cost) * 1_000_000_000
    assert value == int(value)
    return int(value)


async def test_a_reprice_adjusts_the_user_rows_of_a_day_a_prune_cut_through(
    db: Database,
) -> None:
    await write(db, house_calls())
    kept = await assert_rollups_are_exact(db)
    before = {row["id"]: row for row in await raw_rows(db)}
    assert all(r["cost_usd"] is None for r in before.values() if r["model"] == HOUSE)
    cut_day, next_day = START, START + timedelta(days=1)
    await prune(db, older_than=CUT)
    left = {row["id"] for row in await raw_rows(db)}
    assert left == {i for i, r in before.items() if r["created_at"] >= CUT}
    pruned = [r for i, r in before.items() if i not in left]
    for user in ("ana", "bo", "cy"):  # each user has calls on both sides of the cut
        assert any(r["user_id"] == user for r in pruned), user
        assert any(
            before[i]["user_id"] == user and before[i]["created_at"] < next_day for i in left
        ), user

    await store_prices(db, [HOUSE_PRICE])
    await reprice(db, since=cut_day)

    after = {row["id"]: row for row in await raw_rows(db)}
    assert after.keys() == left
    on_cut_day = [r for r in after.values() if r["created_at"] < next_day]
    newly_priced = [r for r in on_cut_day if before[r["id"]]["cost_usd"] is None and r["cost_usd"]]
    assert len(newly_priced) > 10  # the re-pricing changed the cut day's remaining calls
    got = await stored_rollups(db)

    # The whole rollup is what the writer would keep had the remaining calls been priced
    # so from the start: the pruned calls as they were (unpriced), the others as now.
    merged = [after.get(i, row) for i, row in before.items()]
    assert_same(got, expected_rollup(merged))

    # The cut day, by hand: the users' daily rows agree with the daily rows ...
    def day_total(name: str, column: str) -> int:
        return sum(s[column] for k, s in got[name].items() if k[0] == cut_day)

    for column in ("requests", "cost_nanos", "priced", "unpriced", "unpriced_tokens"):
        assert day_total(USERS_DAILY, column) == day_total(DAILY, column), column
    assert day_total(USERS_DAILY, "cost_nanos") > 0
    assert day_total(USERS_DAILY, "requests") == len(
        [r for r in before.values() if r["created_at"] < next_day]
    )
    # ... and each user's cost is that of their remaining calls (the pruned ones were
    # unpriced, and are still), their priced and unpriced calls moved by as many.
    for user in ("", "ana", "bo", "cy"):
        mine = [s for k, s in got[USERS_DAILY].items() if k[0] == cut_day and k[2] == user]
        was = [s for k, s in kept[USERS_DAILY].items() if k[0] == cut_day and k[2] == user]
        remaining = [r for r in on_cut_day if (r["user_id"] or "") == user]
        gone = [r for r in pruned if (r["user_id"] or "") == user]
        assert sum(s["cost_nanos"] for s in mine) == sum(
            nanos(r["cost_usd"]) for r in gone + remaining if r["cost_usd"] is not None
        ), user
        priced = sum(r["cost_usd"] is not None for r in gone + remaining)
        assert sum(s["priced"] for s in mine) == priced, user
        assert sum(s["requests"] for s in mine) == sum(s["requests"] for s in was), user
        assert sum(s["unpriced"] for s in mine) == len(gone) + len(remaining) - priced, user
        moved = sum(
            before[r["id"]]["cost_usd"] is None and r["cost_usd"] is not None for r in remaining
        )
        assert moved > 0, user
        assert sum(s["priced"] for s in mine) - sum(s["priced"] for s in was) == moved, user
        assert sum(s["unpriced"] for s in was) - sum(s["unpriced"] for s in mine) == moved, user

    # The whole day after is exact from its raw rows, as before.
    exact = expected_rollup(list(after.values()))
    for name in TABLES:
        assert {k: s for k, s in got[name].items() if k[0] >= next_day} == {
            k: s for k, s in exact[name].items() if k[0] >= next_day
        }, name


async def test_reports_and_rebuilds_on_an_engine_that_begins_its_own_transactions(
    tmp_path: Path,
) -> None:
    # SQLAlchemy's recipe for SQLite transactions: the driver's own off, BEGIN on each
    # transaction's start. A report's snapshot and a rebuild's write lock begin theirs
    # only if that has not.
    path = tmp_path / "own.db"
    await (await eventlog.open_database(f"sqlite:///{path}", migrate=True)).close()
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    db = Database(engine)
    try:
        await write(db, calls(27, 60))
        window: dict[str, Any] = {"since": START, "until": START + timedelta(days=5)}
        expected = await an.usage(db, **window, source="raw")
        assert await an.usage(db, **window, source="rollup") == expected
        assert (await rebuild(db)).calls == 60
        assert await an.usage(db, **window, source="rollup") == expected
    finally:
        await db.close()
        await engine.dispose()
