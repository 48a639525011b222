"""Re-pricing stored calls after a price changed (``eventlog.reprice`` and ``eventlog
reprice``), and the cost as ``eventlog stats`` shows it; on both backends.

Costs are computed here from the token counts and the rates, by hand; the rollup is
compared with a sum over the raw rows computed in test_rollup (never with the module's
own aggregation).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, select, update
from test_rollup import (
    USERS_DAILY,
    assert_rollup_is_exact,
    raw_connection,
    run,
    stored_rollup,
    write,
)

from eventlog import Database, ProxyLogEntry, ProxyLogEvent
from eventlog import analytics as an
from eventlog.maintenance import prune
from eventlog.prices import Price, PriceBook, store_prices
from eventlog.reprice import reprice
from eventlog.schema import chronicle_events, eventlog_rollup_hourly

AT = datetime(2026, 2, 3, 8, 0, tzinfo=UTC)
SINCE, UNTIL = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)
HOUSE = "house-model-7b"
NANO = Decimal("0.000000001")


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


def house_price(input_: str, output: str, request: str = "0") -> Price:
    return Price(
        id="ours/house-model-7b",
        provider=None,
        model=HOUSE,
        pattern=None,
        valid_from=date(2025, 1, 1),
        input=Decimal(input_),
        output=Decimal(output),
        request=Decimal(request),
    )


def by_hand(prompt: int, completion: int, input_: str, output: str, request: str = "0") -> Decimal:
    usd = (prompt * Decimal(input_) + completion * Decimal(output)) / 1_000_000
    return (usd + Decimal(request)).quantize(NANO)


class Data:
    """Calls of a model without a price, of a priced one, with and without tokens, with
    a provider's cost, and one before the window."""

    def __init__(self) -> None:
        self.house = [
            ProxyLogEvent(
                timestamp=AT + timedelta(hours=i * 7, minutes=i),
                provider="vllm",
                model=HOUSE,
                response=usage(1_000 + 37 * i, 200 + 11 * i),
                latency=timedelta(milliseconds=300 + i),
                internal_metadata={"user_id": ["ana", "bo", None][i % 3]},
            )
            for i in range(30)
        ]
        self.house_failed = ProxyLogEvent(
            timestamp=AT + timedelta(hours=3), model=HOUSE, error={"type": "ServerError"}
        )
        self.gpt = [
            ProxyLogEvent(
                timestamp=AT + timedelta(hours=i * 5, minutes=2 * i),
                provider="openai",
                model="gpt-4o",
                response=usage(500 + 13 * i, 90 + i),
                latency=timedelta(milliseconds=800 + 3 * i),
            )
            for i in range(25)
        ]
        self.gpt_untold = [
            ProxyLogEvent(timestamp=AT + timedelta(hours=i), model="gpt-4o") for i in range(4)
        ]
        self.reported = ProxyLogEvent(
            timestamp=AT + timedelta(hours=2),
            model="gpt-4o",
            response={"usage": {"prompt_tokens": 10, "completion_tokens": 2, "cost": 0.5}},
        )
        self.before = ProxyLogEvent(
            timestamp=datetime(2025, 12, 20, 12, tzinfo=UTC), model=HOUSE, response=usage(5, 5)
        )

    @property
    def entries(self) -> list[ProxyLogEntry]:
        return [
            *self.house,
            self.house_failed,
            *self.gpt,
            *self.gpt_untold,
            self.reported,
            self.before,
        ]

    @property
    def in_window(self) -> int:
        return len(self.entries) - 1


@pytest.fixture
async def data(db: Database) -> Data:
    made = Data()
    await write(db, made.entries)
    return made


async def costs(db: Database) -> dict[uuid.UUID, tuple[Decimal | None, str | None]]:
    events = chronicle_events.c
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(events.id, events.cost_usd, events.price_id))).all()
    return {row.id: (row.cost_usd, row.price_id) for row in rows}


def rollup_of(rollup: Mapping[tuple[Any, ...], dict[str, int]], model: str) -> dict[str, int]:
    rows = [sums for key, sums in rollup.items() if key[1] == model]
    return {name: sum(s[name] for s in rows) for name in ("priced", "unpriced", "cost_nanos")}


async def test_a_price_for_an_unpriced_model_prices_its_stored_calls(
    db: Database, data: Data
) -> None:
    before = await costs(db)
    assert all(before[call.id] == (None, None) for call in data.house)
    assert rollup_of(await assert_rollup_is_exact(db), HOUSE)["unpriced"] == 32
    await store_prices(db, [house_price("0.20", "0.60")])

    result = await reprice(db, since="2026-01-01", until=UNTIL)

    after = await costs(db)
    for call in data.house:
        usage_ = call.response["usage"]  # type: ignore[index]
        cost = by_hand(usage_["prompt_tokens"], usage_["completion_tokens"], "0.20", "0.60")
        assert after[call.id] == (cost, "ours/house-model-7b")
    # A failed call without tokens costs the per-request price: none here, so $0.
    assert after[data.house_failed.id] == (Decimal(0), "ours/house-model-7b")
    assert after[data.before.id] == (None, None)  # before the window: left alone
    assert after[data.reported.id] == (Decimal("0.500000000"), "provider")
    for call in (*data.gpt, *data.gpt_untold):
        assert after[call.id] == before[call.id]

    assert (result.since, result.until, result.model) == (SINCE, UNTIL, None)
    assert result.calls == data.in_window
    assert (result.changed, result.now_priced) == (31, 31)
    assert result.provider_cost == 1
    assert result.unpriced == 4
    assert result.unpriced_models == {"gpt-4o": 4}
    rollup = await assert_rollup_is_exact(db)
    house = rollup_of(rollup, HOUSE)
    assert (house["priced"], house["unpriced"]) == (31, 1)  # the one from December
    assert house["cost_nanos"] == sum(int(after[c.id][0] / NANO) for c in data.house)  # type: ignore[operator]
    assert result.rollup_rows == sum(SINCE <= key[0] < UNTIL for key in rollup)


async def test_a_price_fix_changes_the_costs_and_keeps_the_providers(
    db: Database, data: Data
) -> None:
    bundled = PriceBook.default().find("openai", "gpt-4o", AT)
    assert bundled is not None
    before = await costs(db)
    assert before[data.gpt[0].id][1] == bundled.id
    fixed = Price(
        id="ours/gpt-4o",
        provider="openai",
        model="gpt-4o",
        pattern=None,
        valid_from=date(2026, 1, 1),
        input=Decimal("2.00"),
        output=Decimal("9.00"),
        request=Decimal("0.0005"),
    )
    await store_prices(db, [fixed])

    result = await reprice(db, since=SINCE, until=UNTIL)

    after = await costs(db)
    for call in data.gpt:
        usage_ = call.response["usage"]  # type: ignore[index]
        cost = by_hand(
            usage_["prompt_tokens"], usage_["completion_tokens"], "2.00", "9.00", "0.0005"
        )
        assert after[call.id] == (cost, "ours/gpt-4o")
        assert cost != before[call.id][0]
    assert after[data.reported.id] == (Decimal("0.500000000"), "provider")
    assert result.changed == len(data.gpt)
    assert result.now_priced == 0
    await assert_rollup_is_exact(db)

    again = await reprice(db, since=SINCE, until=UNTIL)
    assert (again.calls, again.changed) == (result.calls, 0)  # nothing left to change
    await assert_rollup_is_exact(db)


async def test_reprice_of_one_model_touches_only_its_calls_and_rollup_rows(
    db: Database, data: Data
) -> None:
    await store_prices(db, [house_price("0.20", "0.60")])
    await reprice(db, since=SINCE, until=UNTIL)
    await store_prices(db, [house_price("0.30", "0.90", request="0.001")])
    table = eventlog_rollup_hourly.c
    async with db.engine.begin() as conn:  # spoil a row of another model
        await conn.execute(
            update(eventlog_rollup_hourly).where(table.model == "gpt-4o").values(requests=999)
        )
    spoiled = await stored_rollup(db)
    before = await costs(db)

    result = await reprice(db, since=SINCE, until=UNTIL, model=HOUSE)

    after = await costs(db)
    assert result.model == HOUSE
    assert result.calls == len(data.house) + 1
    assert result.changed == len(data.house) + 1
    assert after[data.house_failed.id] == (Decimal("0.001000000"), "ours/house-model-7b")
    for call in data.house:
        usage_ = call.response["usage"]  # type: ignore[index]
        cost = by_hand(
            usage_["prompt_tokens"], usage_["completion_tokens"], "0.30", "0.90", "0.001"
        )
        assert after[call.id][0] == cost
    for call in (*data.gpt, *data.gpt_untold, data.reported, data.before):
        assert after[call.id] == before[call.id]
    got = await stored_rollup(db)
    for key, sums in got.items():
        if key[1] != HOUSE:
            assert sums == spoiled[key]
    assert any(sums["requests"] == 999 for key, sums in got.items() if key[1] == "gpt-4o")


async def test_reprice_refuses_bad_arguments(db: Database) -> None:
    with pytest.raises(ValueError, match="since must be given"):
        await reprice(db, since=None)
    with pytest.raises(ValueError, match="since must be before until"):
        await reprice(db, since=UNTIL, until=SINCE)
    with pytest.raises(ValueError, match="model must be a non-empty str"):
        await reprice(db, since=SINCE, model="")
    with pytest.raises(ValueError, match="since must be"):
        await reprice(db, since="last tuesday")


async def test_cli_reprice_reports_what_it_did(
    db: Database, data: Data, db_url: str, tmp_path: Path
) -> None:
    await store_prices(db, [house_price("0.20", "0.60")])

    done = await asyncio.to_thread(
        run, "reprice", "--since", "2026-01-01", "--url", db_url, cwd=tmp_path
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "repriced 2026-01-01 00:00 to" in lines[0]
    assert lines[1:5] == [
        f"  {data.in_window} LLM calls looked at",
        "  31 with a new cost (31 priced for the first time)",
        "  1 kept the cost their provider reported",
        "  4 still unpriced: gpt-4o (4)",
    ]
    assert lines[5].endswith("rollup rows rebuilt")
    assert (await costs(db))[data.house[0].id][1] == "ours/house-model-7b"
    await assert_rollup_is_exact(db)


async def test_cli_reprice_without_since_is_a_usage_error(db_url: str, tmp_path: Path) -> None:
    done = await asyncio.to_thread(run, "reprice", "--url", db_url, cwd=tmp_path)
    assert done.returncode == 2
    assert "--since" in done.stderr


async def test_cli_stats_json_has_the_cost_as_decimal_text_and_the_unpriced_calls(
    db: Database, data: Data, db_url: str, tmp_path: Path
) -> None:
    window = ("--since", "2026-02-01", "--until", "2026-03-01")
    done = await asyncio.to_thread(
        run, "stats", "--url", db_url, *window, "--by", "model", "--format", "json", cwd=tmp_path
    )

    assert done.returncode == 0, done.stderr
    records = {r["group"]["model"]: r for r in json.loads(done.stdout)}
    stored = await costs(db)
    gpt = records["gpt-4o"]
    expected = sum(
        (stored[c.id][0] or Decimal(0) for c in (*data.gpt, *data.gpt_untold, data.reported)),
        Decimal(0),
    )
    assert isinstance(gpt["cost_usd"], str)
    assert Decimal(gpt["cost_usd"]) == expected
    assert gpt["cost_usd"] == f"{expected:.9f}"
    assert gpt["priced_requests"] == len(data.gpt) + 1
    assert gpt["unpriced_requests"] == len(data.gpt_untold)
    house = records[HOUSE]
    # Plain decimal text, never "0E-9", for scripts that read it as a number.
    assert (house["cost_usd"], house["cost_per_1k_requests"]) == ("0.000000000", None)
    assert house["unpriced_requests"] == len(data.house) + 1
    prompt = sum(c.response["usage"]["prompt_tokens"] for c in data.house)  # type: ignore[index]
    completion = sum(c.response["usage"]["completion_tokens"] for c in data.house)  # type: ignore[index]
    assert house["unpriced_tokens"] == prompt + completion
    assert house["latency_ms"]["approximate"] is True  # 28 days: from the rollup

    table = await asyncio.to_thread(run, "stats", "--url", db_url, *window, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    unpriced = len(data.house) + 1 + len(data.gpt_untold)
    assert f"unpriced: {unpriced} calls and" in table.stdout
    assert " for the priced calls; " in table.stdout  # the cost shown is theirs alone


async def test_rows_from_before_0004_are_recounted_from_their_response(db: Database) -> None:
    """A row written before revision 0004 stored Anthropic's input_tokens as
    prompt_tokens (cache excluded) and no cache counts: reprice reads the stored
    response again under today's counting rule, then prices it."""
    response = {
        "model": "claude-3-5-sonnet-20241022",
        "usage": {
            "input_tokens": 100,
            "output_tokens": 50,
            "cache_read_input_tokens": 10_000,
            "cache_creation_input_tokens": 0,
        },
    }
    call = ProxyLogEvent(timestamp=AT, provider="anthropic", response=response)
    await write(db, [call])
    async with db.engine.begin() as conn:  # as the old writer left it
        await conn.execute(
            update(chronicle_events).values(
                prompt_tokens=100,
                total_tokens=150,
                cache_read_tokens=None,
                cache_write_tokens=None,
                reasoning_tokens=None,
                cost_usd=None,
                price_id=None,
            )
        )

    result = await reprice(db, since=SINCE, until=UNTIL)

    assert result.recounted == 1
    assert result.now_priced == 1
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(chronicle_events))).mappings().one()
    assert (row["prompt_tokens"], row["cache_read_tokens"], row["total_tokens"]) == (
        10_100,
        10_000,
        10_150,
    )
    price = PriceBook.default().find("anthropic", "claude-3-5-sonnet-20241022", AT)
    assert price is not None
    rate = Decimal(1_000_000)
    read = price.cache_read if price.cache_read is not None else price.input
    expected = (100 * price.input + 10_000 * read + 50 * price.output) / rate
    assert Decimal(row["cost_usd"]) == expected.quantize(NANO)
    await assert_rollup_is_exact(db)


def a_writer_could_add_to_the_rollup(db: Database) -> bool:
    """Whether another connection could commit rollup increments now (without waiting)."""
    if db.dialect == "sqlite":
        other = sqlite3.connect(db.engine.url.database or "", timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError as err:
            if "locked" not in str(err):
                raise
            return False
        finally:
            other.close()

    async def probe() -> bool:
        other = await raw_connection(db)
        try:
            async with other.transaction():
                await other.execute(f"LOCK TABLE {USERS_DAILY} IN ROW EXCLUSIVE MODE NOWAIT")
            return True
        except asyncpg.LockNotAvailableError:
            return False
        finally:
            await other.close()

    with ThreadPoolExecutor(1) as thread:  # the loop is busy: it runs the hook
        return thread.submit(asyncio.run, probe()).result()


async def test_a_reprice_holds_the_writer_off_before_it_reads_a_pruned_days_user_sums(
    db: Database,
) -> None:
    # For a day a prune cut through, reprice reads the day's per-user sums, re-prices,
    # reads them again and adds the difference. A batch committed between the two
    # reads was in the second only, and was counted twice for good: on SQLite the write
    # lock came only with the first write, after the first read.
    day = AT.replace(hour=0)
    pruned, oldest, repriced = (
        ProxyLogEvent(
            timestamp=day + timedelta(hours=hours),
            model=HOUSE,
            response=usage(100, 10),
            internal_metadata={"user_id": "ana"},
        )
        for hours in (0.5, 10, 14)  # the oldest stored call's hour is kept as it is
    )
    await write(db, [pruned, oldest, repriced])
    await prune(db, older_than=day + timedelta(hours=5))
    await store_prices(db, [house_price("1", "2")])
    free: list[bool] = []

    def first_read(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not free and "cost_usd" in statement and statement.lstrip().startswith("SELECT"):
            free.append(a_writer_could_add_to_the_rollup(db))

    event.listen(db.engine.sync_engine, "before_cursor_execute", first_read)
    try:
        result = await reprice(db, since=day, until=day + timedelta(days=1))
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", first_read)
    assert result.calls == 1
    assert free == [False]
    (row,) = await an.usage(db, since=day, until=day + timedelta(days=1), by="user")
    assert (row.group, row.requests) == ({"user": "ana"}, 3)
