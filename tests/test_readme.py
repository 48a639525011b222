"""The README's SQL and test example work as written, on both backends."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from eventlog import (
    Database,
    ProxyLogEvent,
    RunStartEvent,
    RunUpdateEvent,
    StepEndEvent,
    StepErrorEvent,
    StepStartEvent,
    start_database_logger,
)
from eventlog.ids import uuid7

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```(sql(?: \w+)?|python)\n(.*?)```", README, flags=re.S)
SQL = [(info.removeprefix("sql").strip(), body) for info, body in BLOCKS if info.startswith("sql")]


async def fill(db: Database) -> None:
    now = datetime.now(UTC)
    entries: list[Any] = []
    for i in range(20):
        run_id, step_id = uuid7(), uuid7()
        entries += [
            RunStartEvent(id=run_id, name="qa", application="app"),
            StepStartEvent(step_id=step_id, run_id=run_id, type="llm"),
            ProxyLogEvent(
                provider="openai",
                model=f"model-{i % 3}",
                latency=0.1 * (i + 1),
                was_rate_limited=i % 5 == 0,
                error={"message": "x"} if i % 7 == 0 else None,
                response={"usage": {"prompt_tokens": 10, "completion_tokens": i}},
                metadata={"application": "app", "user_id": f"u{i % 2}", "run_id": run_id},
                internal_metadata={"user_id": f"u{i % 2}"},
                timestamp=now - timedelta(minutes=i),
            ),
            (StepErrorEvent if i % 4 == 0 else StepEndEvent)(step_id=step_id, run_id=run_id),
            RunUpdateEvent(id=run_id, status="error" if i % 4 == 0 else "finished"),
        ]
    sender, task = start_database_logger(db, batch_size=50, debounce_time=60)
    sender.send(entries)
    sender.close()
    await task


def test_readme_has_sql_for_both_backends() -> None:
    assert {dialect for dialect, _ in SQL} == {"", "postgresql", "sqlite"}
    assert len(SQL) >= 4


async def test_every_readme_sql_block_runs_and_answers(db: Database, backend: str) -> None:
    await fill(db)
    ran = 0
    async with db.engine.connect() as conn:
        for dialect, query in SQL:
            if dialect not in ("", backend):
                continue
            result = (await conn.execute(text(query))).all()
            assert result, f"no rows from:\n{query}"
            ran += 1
    assert ran >= 4


async def test_readme_testing_example_passes() -> None:
    (example,) = [body for info, body in BLOCKS if info == "python" and "ManualClock" in body]
    namespace: dict[str, Any] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    await namespace["test_my_handler_logs_one_event"]()


def test_readme_quick_start_is_two_commands() -> None:
    section = README.split("## Quick start", 1)[1].split("##", 1)[0]
    (commands,) = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    lines = [line for line in commands.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "eventlog demo" in lines[0]
    assert "pytest" in lines[1]


@pytest.mark.parametrize("name", ["CHANGELOG.md", ".ci/run", "alembic.ini"])
def test_project_files_exist(name: str) -> None:
    assert (Path(__file__).resolve().parent.parent / name).is_file()
