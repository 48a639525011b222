"""``benchmarks/writer_cost.py`` at a smoke size: it runs on both backends and prints
every figure (a benchmark: no speed is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import POSTGRES_URL

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "writer_cost.py"


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_writer_cost_runs_and_prints_every_figure(backend: str) -> None:
    command = [sys.executable, str(SCRIPT), "--backend", backend, "--rounds", "1"]
    command += ["--events", "300", "--pg-url", POSTGRES_URL]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout.split(f"{backend}, 300 events, median of 1 rounds:")[1]
    lines = [line.split() for line in table.strip().splitlines()[1:]]
    assert [" ".join(line[:-4]) for line in lines] == ["limit", "eventlog", "no rollup"]
    for line in lines:
        rate, ratio, client = (float(x.replace(",", "")) for x in line[-4:-1])
        assert min(rate, ratio, client) > 0
        # The PostgreSQL server's CPU is read from /proc (a server on this machine);
        # SQLite has no server process.
        if backend == "postgresql":
            assert float(line[-1]) > 0
        else:
            assert line[-1] == "-"
