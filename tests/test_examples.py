"""The example application (examples/) runs in-process against its stub OpenAI server,
and what it did is in the database (both backends) and in ``eventlog stats``."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

import eventlog
from eventlog import Database
from eventlog.cli import main
from eventlog.schema import chronicle_events, chronicle_runs, chronicle_steps

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"eventlog_examples_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def clean_logging(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """The app configures the root logger: its files go to tmp_path, and it is undone."""
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("LOG_REQUEST_BODY", "true")
    for name in ("LOG_LEVEL", "CONSOLE_LOG_LEVEL", "MAX_BODY_SIZE_LOG", "SLOW_OPERATION_THRESHOLD"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    eventlog.set_default_sender(None)


@asynccontextmanager
async def running_example(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The example app, started (its lifespan) on ``db_url`` and stopped on exit, which
    writes everything it logged; its OpenAI client talks to the stub in-process."""
    stub = load("stub_openai")
    chat_app = load("chat_app")
    stub_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=stub.app))
    client = openai.AsyncOpenAI(
        base_url="http://stub.test/v1", api_key="sk-test", http_client=stub_http
    )
    app = chat_app.create_app(db_url, client)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://app.test") as http,
        ):
            yield http
    finally:
        await client.close()


async def rows(db: Database, table: Any, *where: Any) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        result = await conn.execute(select(table).where(*where))
        return [dict(r) for r in result.mappings()]


async def test_chat_request_lands_as_run_steps_llm_call_logs_and_request(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    async with running_example(db_url) as http:
        response = await http.post(
            "/chat",
            json={"question": "What does eventlog store?"},
            headers={"Authorization": "Bearer sk-secret", "X-Request-ID": "req-example-1"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == "req-example-1"
        answer = response.json()
        assert answer["answer"] == "You asked: What does eventlog store? The stub says: 42."
        # Streamed, and timed by hand.
        streamed = await http.post("/chat/stream", json={"question": "Stream the logs?"})
        assert streamed.text == "You asked: Stream the logs? The stub says: 42."
        summary = await http.post("/summarise", json={"question": "a long text"})
        assert summary.json()["summary"] == "You asked: Summarise: a long text The stub says: 42."
        retried = await http.post(
            "/chat", json={"question": "and now?", "model": "stub-rate-limit"}
        )
        assert retried.status_code == 200
        failed = await http.post("/chat", json={"question": "fail?", "model": "stub-error"})
        assert failed.status_code == 502

    # The run and its two steps.
    runs = await rows(db, chronicle_runs)
    by_output = {json.dumps(r["output"]): r for r in runs}
    run = by_output[json.dumps({"answer": answer["answer"]})]
    assert str(run["id"]) == answer["run_id"]
    assert (run["name"], run["status"], run["application"]) == ("chat", "finished", "chat-example")
    assert run["info"] == {"request_id": "req-example-1"}
    # /chat three times (one failed), and the stream's retrieval step: a run of its own.
    assert sorted((r["name"], r["status"]) for r in runs) == [
        ("chat", "error"),
        ("chat", "finished"),
        ("chat", "finished"),
        ("find documents", "finished"),
    ]
    steps = await rows(db, chronicle_steps, chronicle_steps.c.run_id == run["id"])
    assert sorted((s["type"], s["name"], s["status"]) for s in steps) == [
        ("llm", "answer", "finished"),
        ("retrieval", "find documents", "finished"),
    ]
    llm_step = next(s for s in steps if s["type"] == "llm")

    # The LLM calls: the instrumented ones (chat, stream, retried, failed) and the one
    # timed by hand.
    calls = await rows(
        db, chronicle_events, chronicle_events.c.event_type == "chronicle_llm_request"
    )
    assert len(calls) == 5
    chat_call = next(c for c in calls if c["run_id"] == run["id"])
    assert chat_call["step_id"] == llm_step["id"]
    assert chat_call["model"] == "stub-model"
    assert chat_call["completion_tokens"] == 10  # the stub counts words
    assert chat_call["total_tokens"] == chat_call["prompt_tokens"] + 10
    retried_call = next(c for c in calls if c["model"] == "stub-rate-limit")
    assert (retried_call["retries"], retried_call["rate_limited"]) == (1, True)
    failed_call = next(c for c in calls if c["model"] == "stub-error")
    assert failed_call["error"] is not None
    by_hand = next(c for c in calls if c["user_id"] is None and c["request_user_id"])
    assert by_hand["request_user_id"] == "example-user"

    # The log lines, with their request id, run and step.
    logs = await rows(db, chronicle_events, chronicle_events.c.event_type == "log")
    messages = [r["meta"]["message"] for r in logs]
    assert "chat app ready" in messages
    found = [r for r in logs if r["meta"]["message"] == "found 2 documents"]
    in_request = [r for r in found if r["meta"]["request_id"] == "req-example-1"]
    assert len(in_request) == 1
    assert in_request[0]["run_id"] == run["id"]
    assert in_request[0]["step_id"] is not None  # the retrieval step
    failure = next(r for r in logs if r["meta"]["message"] == "the model call failed")
    assert failure["meta"]["level"] == "ERROR"
    assert "InternalServerError" in failure["error"]["traceback"]

    # The HTTP requests, without the authorization header, with a body preview.
    requests = await rows(db, chronicle_events, chronicle_events.c.event_type == "http_request")
    first = next(r for r in requests if r["meta"]["request_id"] == "req-example-1")
    assert (first["meta"]["method"], first["meta"]["path"], first["meta"]["status"]) == (
        "POST",
        "/chat",
        200,
    )
    assert "authorization" not in first["meta"]["headers"]
    assert "sk-secret" not in json.dumps(first["meta"])
    assert json.loads(first["meta"]["body_preview"]) == {"question": "What does eventlog store?"}
    assert sorted(r["meta"]["status"] for r in requests) == [200, 200, 200, 200, 502]

    # The log file.
    text = (tmp_path / "logs" / f"logging_chat_app_{date.today().isoformat()}.txt").read_text()
    assert "| req-example-1 | found 2 documents" in text


async def test_eventlog_stats_counts_the_examples_calls(
    db: Database, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_example(db_url) as http:
        for question in ("one?", "two?", "three?"):
            assert (await http.post("/chat", json={"question": question})).status_code == 200
    capsys.readouterr()
    status = await asyncio.to_thread(
        main, ["stats", "--url", db_url, "--since", "1h", "--by", "model", "--format", "json"]
    )
    assert status == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert "stub-model" in json.dumps(row["group"])
    assert (row["requests"], row["errors"]) == (3, 0)
    assert row["total_tokens"] > 0
