"""``benchmarks/analytics.py`` at a smoke size: it runs on both backends, prints every
figure, reuses its data set, and cleans up after itself.

Never a speed: these machines are shared, and a benchmark is not a timed test.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import POSTGRES_URL
from sqlalchemy.engine import make_url

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "analytics.py"
SMOKE = ("--events", "2000", "--prune-events", "400", "--write-events", "1000")

# Every figure the report prints, by its label.
LABELS = (
    "usage 24h by model",
    "latency 24h by model (exact p50..p99)",
    "usage 24h by model, source=rollup",
    "usage 30d by day (auto: rollup)",
    "usage 30d by day, source=raw",
    "usage 30d by day and model (auto)",
    "latency 30d by day (rollup, approximate)",
    "24h breakdown: usage + latency",
    "30d by day: raw / rollup",
    "rollup's answer = raw answer",
    "calls in the 24h window",
    "prune of 400 events",
    "longest batch (lock hold), ms",
    "with a writer alongside: total, s",
    "writer's longest batch, ms",
    "full writer (rollup + cost)",
    "rollup off",
    "rollup and pricing off",
    "rollup rows upserted per batch of 1,000",
    "full / rollup off",
    "full / rollup and pricing off",
    "load through write_log_batch, s",
    "rollup rows",
    "calls per rollup row",
    "Targets:",
)
STORAGE_LABELS = {
    "postgresql": ("PostgreSQL storage", "chronicle_events_created_at_idx", "brin", "btree"),
    "sqlite": ("SQLite storage",),
}


def numbers(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Every number in a JSON-like value, with where it is."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, float(value)


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


async def _databases_named(prefix: str, drop: bool) -> list[str]:
    dsn = make_url(POSTGRES_URL).set(drivername="postgresql", database="postgres")
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False), timeout=10)
    try:
        names = [
            r[0]
            for r in await conn.fetch(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix
            )
        ]
        if drop:
            for name in names:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
    return names


@pytest.fixture
def place(backend: str, tmp_path: Path) -> Iterator[list[str]]:
    """Where the script keeps its data sets: its arguments for ``backend``."""
    if backend == "sqlite":
        yield ["--backends", "sqlite", "--sqlite", str(tmp_path / "sets" / "analytics.db")]
        return
    name = f"eventlog_test_bench_{uuid.uuid4().hex[:10]}"
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield ["--backends", "postgresql", "--pg-url", url]
    finally:
        asyncio.run(_databases_named(name, drop=True))  # whatever a failed run left


@pytest.mark.timeout(600)
def test_analytics_bench_prints_every_figure_reuses_its_data_and_cleans_up(
    backend: str, place: list[str], tmp_path: Path
) -> None:
    first = run_script(*SMOKE, "--repeat", "2", *place, "--json", "first.json", cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    for label in (*LABELS, *STORAGE_LABELS[backend]):
        assert label in first.stdout, label
    assert "loading 2,000 calls into main" in first.stdout
    report = json.loads((tmp_path / "first.json").read_text())
    figures = report["backends"][backend]
    assert figures["load"]["events"] == 2000
    assert figures["queries"]["rollup_equals_raw"] is True
    assert figures["queries"]["calls_24h"] > 0
    for key in ("usage_24h_model", "latency_24h_model", "usage_30d_day", "breakdown_24h"):
        assert len(figures["queries"][key]["runs"]) == 2, key
    assert figures["prune"]["events"] == 400
    assert figures["prune"]["with_writer"]["writer_batches"] >= 1
    assert set(figures["write"]["variants"]) == {"full", "no_rollup", "bare"}
    assert figures["rollup"]["rows"] > 0
    assert {t["backend"] for t in report["targets"]} == {backend}
    found = dict(numbers(report))
    assert not [where for where, value in found.items() if not math.isfinite(value)]

    again = run_script(*SMOKE, "--repeat", "1", *place, "--cleanup", cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    assert "main data set already loaded" in again.stdout
    assert "prune data set already loaded" in again.stdout
    assert "* loaded by an earlier run" in again.stdout
    if backend == "sqlite":
        assert list((tmp_path / "sets").iterdir()) == []
    else:
        name = make_url(place[place.index("--pg-url") + 1]).database
        assert name is not None
        assert asyncio.run(_databases_named(name, drop=False)) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pg-url", "postgresql://db.example.com/eventlog_bench"], "this machine"),
        (["--pg-url", "postgresql://127.0.0.1/test"], "a database of this script's own"),
        (["--backends", "oracle"], "--backends must be some of"),
        (["--events", "0"], "must be a positive integer"),
    ],
)
def test_analytics_bench_refuses_bad_usage_before_running(
    args: list[str], message: str, tmp_path: Path
) -> None:
    done = run_script(*args, cwd=tmp_path)

    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "statements",
    [
        ["CREATE TABLE chronicle_events (id TEXT)", "INSERT INTO chronicle_events VALUES ('x')"],
        ["CREATE TABLE notes (body TEXT)"],
    ],
    ids=["events", "other tables"],
)
def test_analytics_bench_never_touches_a_sqlite_file_it_did_not_make(
    statements: list[str], tmp_path: Path
) -> None:
    mine = tmp_path / "mine.db"
    with sqlite3.connect(mine) as conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()
    before = mine.read_bytes()

    done = run_script(*SMOKE, "--backends", "sqlite", "--sqlite", str(mine), cwd=tmp_path)

    assert done.returncode == 1
    assert "holds data this script did not write" in done.stderr
    assert mine.read_bytes() == before
