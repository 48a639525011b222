"""``eventlog bench`` at a smoke size: it runs, on both backends, and produces every figure.

Never a speed: these machines are shared, and a benchmark is not a timed test.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from eventlog.bench import BenchConfig, print_report, run_bench, write_json

EVENTLOG = str(Path(sys.executable).parent / "eventlog")

CONTENDERS = {
    "postgresql": {"naive", "orm", "core", "chronicle", "limit", "limit_default", "eventlog"},
    "sqlite": {"naive", "orm", "core", "chronicle", "limit", "eventlog"},
}
THROUGHPUT_FIGURES = {"events", "rounds_events_per_s", "median_events_per_s", "eventlog_ratio"}
EVENTLOG_FIGURES = {
    "latency": {"p50_ms", "p99_ms", "max_ms", "actual_rate"},
    "loop_lag": {"p50_ms", "p99_ms", "max_ms", "idle_p99_ms"},
    "memory": {"bytes_per_event", "event_object_bytes", "queued"},
    "growth": {"first_events_per_s", "later_events_per_s", "ratio", "prefill_seconds"},
}
SEND_FIGURES = {"median_us", "p99_us", "max_us"}


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


def smoke_config(backend: str, fresh_url: Callable[[str], str], tmp_path: Path) -> BenchConfig:
    # On PostgreSQL the bench creates (and drops) a database of its own on the server of
    # a fresh test database; on SQLite it uses no server.
    options: dict[str, Any] = {"pg_url": fresh_url(backend)} if backend == "postgresql" else {}
    return BenchConfig.quick(
        **options,
        backends=(backend,),
        sqlite_path=tmp_path / "bench.db",
        events=120,
        rounds=2,
        growth_rows=300,
        latency_seconds=0.2,
        send_samples=2_000,
        memory_events=300,
        warmup_events=20,
    )


async def test_bench_at_smoke_size_produces_every_figure_and_leaves_nothing_behind(
    backend: str, fresh_url: Callable[[str], str], tmp_path: Path
) -> None:
    config = smoke_config(backend, fresh_url, tmp_path)
    output = io.StringIO()
    console = Console(file=output, width=100)

    report = await run_bench(config, console)
    print_report(report, console)

    assert report["failures"] == []
    figures = report["backends"][backend]
    assert set(figures["throughput"]) == CONTENDERS[backend]
    for key, row in figures["throughput"].items():
        assert set(row) >= THROUGHPUT_FIGURES, key
        assert len(row["rounds_events_per_s"]) == config.rounds
    assert figures["throughput"]["naive"]["events"] == config.naive_events
    for part, names in EVENTLOG_FIGURES.items():
        assert names <= set(figures[part]), part
    for caller in ("loop_thread", "threads"):
        assert set(report["send"][caller]) >= SEND_FIGURES, caller
    assert "call_soon_threadsafe_per_1000_sends" in report["send"]["threads"]
    assert figures["latency"]["committed"] == figures["latency"]["events"]
    assert figures["memory"]["queued"] == config.memory_events
    assert figures["growth"]["later_rows_from"] == config.growth_rows
    assert {"cpu_count", "python", "versions"} <= set(report["machine"])
    assert figures["server_version"]
    found = dict(numbers(report))
    assert found
    assert not [where for where, value in found.items() if not math.isfinite(value)]

    text = output.getvalue()
    for words in (
        "6 eventlog",
        "send->commit p99",
        "loop lag p99",
        "memory per queued",
        "Targets:",
    ):
        assert words in text
    path = tmp_path / "bench.json"
    write_json(report, path)
    saved = json.loads(path.read_text())
    assert saved["backends"][backend]["throughput"].keys() == figures["throughput"].keys()
    assert saved["targets"]
    assert not (tmp_path / "bench.db").exists()  # the bench's SQLite file is removed


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "EVENTLOG_BENCH_POSTGRES_URL"}
    return subprocess.run(
        [EVENTLOG, "bench", *args],
        cwd=cwd,
        env={**environ, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def test_bench_command_prints_the_tables_and_writes_the_json(tmp_path: Path) -> None:
    done = run_cli(
        "--quick", "--backends", "sqlite", "--events", "100", "--json", "out.json", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "sqlite" in done.stdout
    assert "4 other threads at once" in done.stdout
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["config"]["events"] == 100
    assert report["command"].startswith("eventlog bench")
    assert list(tmp_path.iterdir()) == [tmp_path / "out.json"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pg-url", "postgresql://postgres@db.example.com/test"], "this machine"),
        (["--backends", "oracle"], "backends must be some of"),
        (["--events", "0"], "must be a positive integer"),
    ],
)
def test_bench_command_refuses_bad_usage_before_running(
    args: list[str], message: str, tmp_path: Path
) -> None:
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_bench_command_never_writes_into_an_existing_sqlite_file(tmp_path: Path) -> None:
    existing = tmp_path / "mine.db"
    existing.write_bytes(b"precious")
    done = run_cli("--quick", "--backends", "sqlite", "--sqlite-path", str(existing), cwd=tmp_path)
    assert done.returncode == 2
    assert "exists" in done.stderr
    assert existing.read_bytes() == b"precious"
