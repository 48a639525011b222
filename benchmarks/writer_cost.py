"""Where the writer's time goes: eventlog against the raw limit, with and without its
rollup, side by side, and the CPU each side of the connection spends per event.

``python benchmarks/writer_cost.py [--backend postgresql|sqlite] [--rounds 3]
[--events 20000] [--pg-url URL]``

On ``eventlog bench``'s workload (:class:`eventlog.bench._Workload`, the same seed), in
a bench database of its own (dropped at the end), interleaved each round:

- ``limit``: the raw COPY (PostgreSQL) or executemany (SQLite) of rows serialised before
  timing, 1,000 per transaction (``eventlog bench``'s contender 5);
- ``eventlog``: ``send()`` to the final commit, with the rollup (the default);
- ``no rollup``: the same writer with the rollup off (``db._rollup = None``).

For each: median events/s, the ratio to the limit, and the CPU time per event of this
process (``getrusage``: the application, eventlog's writer and, on SQLite, SQLite
itself) and, on PostgreSQL, of the server's processes (from ``/proc``: a server on this
machine), from after the table is emptied to after its rows are counted. The limit's
client figure includes serialising its rows before timing. After the first round,
eventlog finds the rollup's rows there (updates) and its presence rows remembered, as a
long-running writer would.

A throwaway measurement in the repository so that the figures in ``RESULTS.md`` come from
a command; a benchmark, not a test: compare figures of one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import resource
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from rich.console import Console

from eventlog.bench import (
    DEFAULT_PG_URL,
    Backend,
    BenchConfig,
    _Failures,
    _open_backend,
    _run_contender,
    _Workload,
)

_VARIANTS = ("limit", "eventlog", "no rollup")


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), if any."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(") ")[2].split()


def _server_cpu_seconds(postmaster: int) -> float:
    """CPU time of one PostgreSQL server: its postmaster and every process it started,
    with the time of those it has already reaped (so the total only grows)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fields = _stat(pid)
        if fields is None or (int(pid) != postmaster and int(fields[1]) != postmaster):
            continue
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def _no_server() -> float:
    """SQLite: no server process."""
    return 0.0


def _client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(backend: Backend, rounds: int, events: int, pg_url: str) -> dict[str, Any]:
    config = BenchConfig(backends=(backend,), pg_url=pg_url)
    calls = _Workload(config.seed).events(events)
    gc.collect()
    gc.freeze()  # as eventlog bench does: collections do not scan the workload
    failures = _Failures(Console())
    rates: dict[str, list[float]] = {v: [] for v in _VARIANTS}
    client: dict[str, list[float]] = {v: [] for v in _VARIANTS}
    server: dict[str, list[float]] = {v: [] for v in _VARIANTS}
    async with _open_backend(backend, config) as bench:
        on_server: Callable[[], float] = _no_server
        if backend == "postgresql":
            backend_pid = await bench.raw.fetchval("SELECT pg_backend_pid()")
            fields = _stat(backend_pid)
            assert fields is not None, "the PostgreSQL server must run on this machine"
            on_server = functools.partial(_server_cpu_seconds, int(fields[1]))
        rollup = bench.db._rollup
        for key in ("limit", "eventlog"):  # warm up: connections, statements
            await _run_contender(bench, key, calls[:500], failures)
        for number in range(1, rounds + 1):
            for variant in _VARIANTS:
                bench.db._rollup = None if variant == "no rollup" else rollup
                key = "limit" if variant == "limit" else "eventlog"
                # Emptied before the CPU window: the previous variant's clean-up (a
                # TRUNCATE and CHECKPOINT, or a DELETE) is not charged to this one.
                await bench.reset()
                gc.collect()
                c0, s0 = _client_cpu_seconds(), on_server()
                rates[variant].append(await _run_contender(bench, key, calls, failures))
                client[variant].append((_client_cpu_seconds() - c0) / events * 1e6)
                server[variant].append((on_server() - s0) / events * 1e6)
            bench.db._rollup = rollup
            line = " · ".join(f"{v} {rates[v][-1]:,.0f}" for v in _VARIANTS)
            print(f"round {number}/{rounds} (events/s): {line}", flush=True)
    if failures.items:
        raise SystemExit("some writes failed: see above")
    limit = statistics.median(rates["limit"])
    return {
        variant: {
            "events_per_s": statistics.median(rates[variant]),
            "ratio_to_limit": statistics.median(rates[variant]) / limit,
            "client_cpu_us_per_event": statistics.median(client[variant]),
            "server_cpu_us_per_event": (
                statistics.median(server[variant]) if backend == "postgresql" else None
            ),
        }
        for variant in _VARIANTS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--pg-url", default=os.environ.get("EVENTLOG_BENCH_POSTGRES_URL", DEFAULT_PG_URL)
    )
    args = parser.parse_args()
    backend = cast(Backend, args.backend)
    result = asyncio.run(measure(backend, args.rounds, args.events, args.pg_url))
    print(f"\n{args.backend}, {args.events:,} events, median of {args.rounds} rounds:")
    print(f"{'':12} {'events/s':>9} {'/ limit':>8} {'client us/ev':>13} {'server us/ev':>13}")
    for variant, row in result.items():
        server = row["server_cpu_us_per_event"]
        print(
            f"{variant:12} {row['events_per_s']:9,.0f} {row['ratio_to_limit']:8.2f} "
            f"{row['client_cpu_us_per_event']:13.1f} "
            + (f"{server:13.1f}" if server is not None else f"{'-':>13}")
        )


if __name__ == "__main__":
    main()
