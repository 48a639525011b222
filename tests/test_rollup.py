"""The hourly rollup: kept exact by the writer, rebuilt from the raw rows, filled by the
0004 migration, and read by the analytics; on a real SQLite file and a real PostgreSQL.

Every expectation is computed here, in plain Python, from the ``chronicle_events`` rows
as stored (never with ``eventlog.rollup.aggregate``), histogram bins included.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

import eventlog
from eventlog import (
    Database,
    EventPayload,
    InternalMetadata,
    ProxyLogEntry,
    ProxyLogEvent,
    RequestMetadata,
)
from eventlog import analytics as an
from eventlog.maintenance import prune
from eventlog.migrate import downgrade, upgrade
from eventlog.rollup import rebuild
from eventlog.schema import LATENCY_BIN_EDGES, chronicle_events, eventlog_rollup_hourly

LLM_CALL = "chronicle_llm_request"
KEYS = (
    "model",
    "provider",
    "application",
    "environment",
    "organization_id",
    "project_id",
    "user_id",
)
SUMS = tuple(
    c.name for c in eventlog_rollup_hourly.columns if c.name != "hour" and c.name not in KEYS
)
BINS = tuple(f"lat_{i:02d}" for i in range(len(LATENCY_BIN_EDGES) + 1))
RollupKey = tuple[Any, ...]  # (hour, *KEYS)
Rollup = dict[RollupKey, dict[str, int]]

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


async def raw_rows(db: Database) -> list[Mapping[str, Any]]:
    events = chronicle_events.c
    async with db.engine.connect() as conn:
        result = await conn.execute(
            select(
                events.id,
                events.event_type,
                events.created_at,
                *(events[key] for key in KEYS),
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


def expected_rollup(rows: Iterable[Mapping[str, Any]], *, known: bool = True) -> Rollup:
    """The rollup of the LLM calls among ``rows``, summed here from their columns. With
    ``known=False`` as the 0004 backfill sees them: no cost, cache, reasoning or TTFT."""
    sums: Rollup = {}
    for row in rows:
        if row["event_type"] != LLM_CALL:
            continue
        at: datetime = row["created_at"]
        hour = at.replace(minute=0, second=0, microsecond=0)
        key = (hour, *(rollup_name(row[k]) for k in KEYS))
        s = sums.setdefault(key, dict.fromkeys(SUMS, 0))

        def value(name: str, row: Mapping[str, Any] = row) -> int:
            return int(row[name] or 0) if known or name not in UNKNOWN_TO_BACKFILL else 0

        s["requests"] += 1
        s["errors"] += 1 if row["has_error"] else 0
        s["rate_limited"] += 1 if row["rate_limited"] else 0
        s["retries"] += value("retries")
        s["retried"] += 1 if (row["retries"] or 0) > 0 else 0
        for name in (
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        ):
            s[name] += value(name)
        cost = row["cost_usd"] if known else None
        if cost is None:
            s["unpriced"] += 1
            if row["total_tokens"] is not None:
                s["unpriced_tokens"] += row["total_tokens"]
            else:
                s["unpriced_tokens"] += value("prompt_tokens") + value("completion_tokens")
        else:
            s["priced"] += 1
            nanos = Decimal(cost) * 1_000_000_000
            assert nanos == int(nanos)
            s["cost_nanos"] += int(nanos)
        latency = row["request_latency_ms"]
        if latency is not None:
            s["latency_count"] += 1
            s["latency_sum_ms"] += latency
            s[BINS[my_bin(latency)]] += 1
            s["latency_max_ms"] = max(s["latency_max_ms"], latency)  # a maximum, not a sum
            if row["completion_tokens"] is not None and latency > 0:
                s["tps_tokens"] += row["completion_tokens"]
                s["tps_ms"] += latency
        if row["total_latency_ms"] is not None:
            s["total_latency_count"] += 1
            s["total_latency_sum_ms"] += row["total_latency_ms"]
        if known and row["ttft_ms"] is not None:
            s["ttft_count"] += 1
            s["ttft_sum_ms"] += row["ttft_ms"]
    return sums


UNKNOWN_TO_BACKFILL = frozenset(
    {"cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "ttft_ms"}
)


async def stored_rollup(db: Database) -> Rollup:
    async with db.engine.connect() as conn:
        result = await conn.execute(select(eventlog_rollup_hourly))
        return {
            (row["hour"], *(row[k] for k in KEYS)): {name: int(row[name]) for name in SUMS}
            for row in result.mappings()
        }


async def assert_rollup_is_exact(db: Database) -> Rollup:
    """The stored rollup equals the one summed here from the raw rows; returns it."""
    expected = expected_rollup(await raw_rows(db))
    got = await stored_rollup(db)
    assert set(got) == set(expected)
    for key, sums in expected.items():
        assert got[key] == sums, key
    return got


async def count_events(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(chronicle_events))).scalar_one()
        )


# -- the writer keeps it exact -----------------------------------------------------------


async def test_rollup_of_a_varied_batch_equals_python_over_the_stored_rows(db: Database) -> None:
    batch = calls(1, 700)
    await write(db, [*batch, *NOISE, *repaired_calls()])

    got = await assert_rollup_is_exact(db)

    totals = {name: sum(s[name] for s in got.values()) for name in SUMS}
    assert totals["requests"] == len(batch) + 3
    # The data reaches every kind of sum, and both ends of the histogram.
    for name in ("errors", "rate_limited", "retried", "priced", "unpriced", "cost_nanos"):
        assert totals[name] > 0, name
    for name in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "ttft_count"):
        assert totals[name] > 0, name
    assert totals["lat_00"] > 0
    assert totals["lat_76"] > 0
    assert sum(totals[b] > 0 for b in BINS) > 60
    users = {key[7] for key in got}
    assert "" in users
    assert not any("\x00" in user for user in users)  # keyed as stored, after the repair


async def test_sending_the_same_batch_again_adds_nothing(db: Database) -> None:
    batch = calls(2, 300)
    await write(db, batch)
    first = await assert_rollup_is_exact(db)

    await write(db, batch)
    await write(db, batch[::-1], size=len(batch))

    assert await count_events(db) == len(batch)
    assert await assert_rollup_is_exact(db) == first


async def test_a_mix_of_stored_and_new_calls_adds_only_the_new_ones(db: Database) -> None:
    old, new = calls(3, 300), calls(4, 200)
    await write(db, old)
    mixed: list[ProxyLogEntry] = [*old[::3], *new, *old[1::7], *NOISE]
    random.Random(5).shuffle(mixed)

    await write(db, mixed, size=len(mixed))

    assert await count_events(db) == len(old) + len(new) + len(NOISE)
    got = await assert_rollup_is_exact(db)
    assert sum(s["requests"] for s in got.values()) == len(old) + len(new)


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
    got = await assert_rollup_is_exact(db)
    assert sum(s["requests"] for s in got.values()) == len(batch)
    assert not any(key[1] == "some-other-model" for key in got)  # the first one is kept


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


async def test_overlapping_batches_written_at_once_count_each_call_once(
    db: Database, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared, only_a, only_b = calls(7, 150), calls(8, 100), calls(9, 100)
    batch_a: list[ProxyLogEntry] = [*shared, *only_a]
    batch_b: list[ProxyLogEntry] = [*only_b, *shared[::-1]]

    await asyncio.gather(db.write_log_batch(batch_a), db.write_log_batch(batch_b))
    assert await count_events(db) == 350
    await assert_rollup_is_exact(db)

    if backend == "postgresql":
        # Make the two transactions overlap for sure: hold the rollup, let both batches
        # insert as far as they can and wait (one on the rollup, the other on the first
        # one's rows), then let go. The second batch's COPY then fails on the shared
        # ids and it is written again through INSERT ... RETURNING.
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
            await holder.execute("LOCK TABLE eventlog_rollup_hourly IN SHARE ROW EXCLUSIVE MODE")
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
        await assert_rollup_is_exact(db)


# -- rebuild -----------------------------------------------------------------------------


async def garble(db: Database) -> None:
    """Spoil the rollup: delete a third of the rows, change the sums of another third."""
    table = eventlog_rollup_hourly.c
    async with db.engine.begin() as conn:
        keys = (
            await conn.execute(
                select(table.hour, *(table[k] for k in KEYS)).order_by(
                    table.hour, *(table[k] for k in KEYS)
                )
            )
        ).all()
        assert len(keys) >= 4
        for i, key in enumerate(keys):
            match = [
                table.hour == key[0],
                *(table[k] == v for k, v in zip(KEYS, key[1:], strict=True)),
            ]
            if i % 3 == 0:
                await conn.execute(delete(eventlog_rollup_hourly).where(*match))
            elif i % 3 == 1:
                await conn.execute(
                    update(eventlog_rollup_hourly)
                    .where(*match)
                    .values(requests=table.requests + 5, lat_13=7, cost_nanos=-1)
                )


async def add_stray_row(db: Database, hour: datetime, model: str = "stray") -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(eventlog_rollup_hourly).values(
                {"hour": hour, **dict.fromkeys(KEYS, ""), **dict.fromkeys(SUMS, 1), "model": model}
            )
        )


async def test_rebuild_restores_a_spoiled_rollup_to_what_the_writer_kept(db: Database) -> None:
    await write(db, [*calls(13, 500), *NOISE])
    kept = await assert_rollup_is_exact(db)
    await garble(db)
    # A row for an hour after the last call (one before the first call would be taken
    # for history whose raw rows were pruned, and kept: see the prune test below).
    stray = START + timedelta(days=30, hours=5)
    await add_stray_row(db, stray)
    assert await stored_rollup(db) != kept

    result = await rebuild(db)

    assert await stored_rollup(db) == kept
    assert result.calls == 500
    assert result.rows == len(kept)
    assert result.since == min(key[0] for key in kept)  # the first call's hour
    assert result.until == stray + timedelta(hours=1)  # to the last hour of the rollup too


async def test_rebuild_of_an_empty_database_does_nothing(db: Database) -> None:
    result = await rebuild(db)
    assert (result.rows, result.calls) == (0, 0)
    assert await stored_rollup(db) == {}


async def test_a_windowed_rebuild_touches_only_the_hours_of_its_window(db: Database) -> None:
    await write(db, calls(14, 500))
    kept = await assert_rollup_is_exact(db)
    await garble(db)
    spoiled = await stored_rollup(db)
    # 10:20 to 13:05 is rounded out to the whole hours 10:00 to 14:00.
    since, until = START + timedelta(hours=34, minutes=20), START + timedelta(hours=37, minutes=5)
    first, end = START + timedelta(hours=34), START + timedelta(hours=38)

    result = await rebuild(db, since=since, until=until)

    assert (result.since, result.until) == (first, end)
    got = await stored_rollup(db)
    for key in kept.keys() | spoiled.keys():
        source = kept if first <= key[0] < end else spoiled
        assert got.get(key) == source.get(key), key
    inside = [key for key in kept if first <= key[0] < end]
    assert inside
    assert result.rows == len(inside)
    assert any(got.get(key) != spoiled.get(key) for key in inside)  # something was fixed


async def test_a_rebuild_for_one_model_leaves_the_other_models_rows(db: Database) -> None:
    await write(db, calls(15, 500))
    kept = await assert_rollup_is_exact(db)
    await garble(db)
    await add_stray_row(db, START + timedelta(hours=3), model="gpt-4o")
    spoiled = await stored_rollup(db)

    result = await rebuild(db, model="gpt-4o")

    got = await stored_rollup(db)
    for key in kept.keys() | spoiled.keys():
        source = kept if key[1] == "gpt-4o" else spoiled
        assert got.get(key) == source.get(key), key
    assert result.rows == sum(key[1] == "gpt-4o" for key in kept)


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
    await assert_rollup_is_exact(db)


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
    await assert_rollup_is_exact(db)
    (row,) = await an.usage(db, since=START, until=START + timedelta(days=5), source="rollup")
    assert row.errors == 1


async def test_a_rebuild_after_a_prune_keeps_the_history_of_the_pruned_hours(
    db: Database,
) -> None:
    await write(db, calls(25, 300))
    kept = await stored_rollup(db)
    cutoff = START + timedelta(days=2)
    await prune(db, older_than=cutoff)
    assert await stored_rollup(db) == kept  # prune leaves the rollup alone

    await rebuild(db)

    got = await stored_rollup(db)
    assert {k: v for k, v in got.items() if k[0] < cutoff} == {
        k: v for k, v in kept.items() if k[0] < cutoff
    }


async def test_cli_rollup_rebuild_prints_its_summary(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    await write(db, calls(19, 200))
    kept = await assert_rollup_is_exact(db)
    await garble(db)

    done = await asyncio.to_thread(run, "rollup", "--rebuild", "--url", db_url, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "rebuilt the rollup of 2026-03-27 00:00 to" in done.stdout
    assert f"{len(kept):,} rows from 200 LLM calls" in done.stdout
    assert await stored_rollup(db) == kept


# -- the 0004 backfill -------------------------------------------------------------------

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
    url = fresh_url(backend)
    db = await eventlog.open_database(url, migrate=True)
    try:
        await write(db, [*calls(20, 600), *NOISE, *repaired_calls()])
        kept = await assert_rollup_is_exact(db)
        await downgrade(db.engine, "0003")
        await upgrade(db.engine)
        filled = await stored_rollup(db)
        rows = await raw_rows(db)
    finally:
        await db.close()

    assert set(filled) == set(kept)
    for key, sums in kept.items():
        assert {n: filled[key][n] for n in BACKFILL_KNOWS} == {n: sums[n] for n in BACKFILL_KNOWS}
    # What it cannot know: every call it found is unpriced, with its tokens.
    assert filled == expected_rollup(rows, known=False)
    for sums in filled.values():
        assert sums["unpriced"] == sums["requests"]
        assert sums["priced"] == sums["cost_nanos"] == sums["ttft_count"] == 0
    assert all(row["cost_usd"] is None for row in rows)  # the column came back empty


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


@pytest.mark.parametrize("case", SOURCE_CASES, ids=lambda case: repr(case)[:60])
async def test_usage_is_the_same_from_the_raw_rows_the_rollup_and_auto(
    spread: Database, case: dict[str, Any]
) -> None:
    window = {"since": WINDOW_SINCE, "until": WINDOW_UNTIL, **case}
    raw = await an.usage(spread, **window, source="raw")
    auto = await an.usage(spread, **window)

    assert auto == raw
    if case.get("tz") != "Asia/Kolkata":
        assert await an.usage(spread, **window, source="rollup") == raw
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
    window = {"since": START, "until": START + timedelta(days=3), "bucket": "hour"}
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
    ],
    ids=repr,
)
async def test_source_rollup_refuses_what_the_rollup_cannot_answer(
    db: Database, case: dict[str, Any]
) -> None:
    window = {"since": WINDOW_SINCE, "until": WINDOW_UNTIL, **case}
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
    window = {"since": START, "until": START + timedelta(days=3), "by": "user"}
    assert await an.usage(db, **window, source="rollup") == await an.usage(
        db, **window, source="raw"
    )


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


# -- odd data the review found ---------------------------------------------------------


async def test_names_too_long_for_an_index_are_cut_and_the_calls_kept(db: Database) -> None:
    """PostgreSQL refuses a B-tree entry over 2,704 bytes: a user id, or seven rollup
    keys, that long must not turn a call into a dead letter (SQLite would keep it)."""
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
    assert {r["model"] for r in rows} == {long_model}  # not indexed: kept whole
    rollup = await assert_rollup_is_exact(db)
    assert {key[1] for key in rollup} == {long_model[:90]}
    assert len(rollup) == 4
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
    await assert_rollup_is_exact(db)


async def test_text_ids_count_once_in_the_rollup_on_the_conflict_path(db: Database) -> None:
    rng = random.Random(32)
    first = a_call(rng, START)
    await write(db, [first])
    texts = [a_call(rng, START + timedelta(minutes=i)) for i in (1, 2)]
    for call in texts:
        call.id = str(call.id).upper()  # type: ignore[assignment]
    await write(db, [first, *texts])  # a stored id: the conflict-safe path
    assert len(await raw_rows(db)) == 3
    rollup = await assert_rollup_is_exact(db)
    assert sum(sums["requests"] for sums in rollup.values()) == 3


async def test_a_rebuild_copes_with_a_call_stamped_in_the_year_9999(db: Database) -> None:
    rng = random.Random(33)
    await write(db, [a_call(rng, START), a_call(rng, datetime(9999, 12, 31, 23, 30, tzinfo=UTC))])
    result = await rebuild(db, since=START)
    assert result.calls >= 1
