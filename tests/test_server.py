"""The collector end to end: a real uvicorn server on a loopback port, a real database.

Ingestion tests run on both backends. The error answers never reach the database, so
they run against one server on a SQLite file; the ``?wait=true`` failure paths need a
database that stalls or refuses on cue, so they use an in-process fake and the app's
own lifespan, as an application that mounts the collector would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select

from eventlog import Database, ProxyLogEntry, ProxyLogEvent
from eventlog.ids import uuid7
from eventlog.parse import entry_to_wire
from eventlog.schema import chronicle_events, chronicle_runs, chronicle_steps
from eventlog.server import bind_socket, create_app
from eventlog.testing import MemoryDatabase

EVENTLOG = str(Path(sys.executable).parent / "eventlog")
JSON = {"content-type": "application/json"}


# -- a real server -----------------------------------------------------------------------


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port, in a thread; yield its URL.

    The socket listens before uvicorn starts, so a client may connect at once: its
    request is answered as soon as the app's startup is done, with no polling.
    """
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
        assert not thread.is_alive(), "the server did not stop within 60 s"


@asynccontextmanager
async def client(base_url: str, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=base_url, timeout=30, trust_env=False, headers=headers
    ) as http:
        yield http


@pytest.fixture
def serve(db: Database, db_url: str) -> Iterator[Callable[..., str]]:
    """Start a collector on the test's database (tables emptied by ``db``); every server
    started is stopped, and so has written everything it acknowledged, by the end."""
    with ExitStack() as stack:

        def start(**options: Any) -> str:
            return stack.enter_context(running(create_app(db_url, **options)))

        yield start


async def count(db: Database, table: Any, *where: Any) -> int:
    async with db.engine.connect() as conn:
        query = select(func.count()).select_from(table).where(*where)
        return int((await conn.execute(query)).scalar_one())


async def rows(db: Database, table: Any, *where: Any) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        result = await conn.execute(select(table).where(*where).order_by(table.c.id))
        return [dict(row) for row in result.mappings()]


def wire(entries: Sequence[ProxyLogEntry]) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(entry_to_wire(entry), default=str)) for entry in entries]


# -- chronicle's clients -----------------------------------------------------------------


async def test_chronicle_events_arrive_once_with_the_headers_merged_into_run_start(
    db: Database, serve: Callable[..., str]
) -> None:
    base = serve()
    run_id, step_id, own_id = uuid7(), uuid7(), uuid7()
    events = [
        {"type": "run:start", "id": str(run_id), "name": "summarise", "info": {"k": 1}},
        {
            "type": "step:start",
            "run_id": str(run_id),
            "step_id": str(step_id),
            "data": {"type": "llm", "name": "draft", "input": {"q": "why"}},
        },
        {
            "type": "step:end",
            "run_id": str(run_id),
            "step_id": str(step_id),
            "data": {"output": 42},
        },
        {"type": "run:update", "id": str(run_id), "status": "finished"},
        {"type": "feedback", "id": str(own_id), "data": {"score": 5}, "run_id": str(run_id)},
        {"type": "feedback", "data": {"score": 3}},
    ]
    headers = {
        "x-chronicle-application": "support-bot",
        "x-chronicle-environment": "prod",
        "x-chronicle-user-id": "u-7",
        "x-chronicle-extra-meta": '{"team": "search"}',
    }
    async with client(base) as http:
        answer = await http.post("/events?wait=true", json={"events": events}, headers=headers)
    assert answer.status_code == 201, answer.text
    ids = answer.json()["ids"]
    assert ids[:5] == [str(run_id), str(step_id), str(step_id), str(run_id), str(own_id)]
    assert uuid.UUID(ids[5]).version == 7  # assigned on receipt

    [run] = await rows(db, chronicle_runs)
    assert run["id"] == run_id
    assert run["status"] == "finished"
    assert (run["application"], run["environment"]) == ("support-bot", "prod")
    assert run["info"] == {"k": 1, "user_id": "u-7", "team": "search"}
    [step] = await rows(db, chronicle_steps)
    assert (step["id"], step["status"], step["output"]) == (step_id, "finished", 42)
    stored = {row["id"]: row for row in await rows(db, chronicle_events)}
    assert set(stored) == {own_id, uuid.UUID(ids[5])}
    assert stored[own_id]["meta"] == {"score": 5}
    assert stored[own_id]["run_id"] == run_id


async def test_llm_calls_keep_model_provider_tokens_latencies_and_metadata(
    db: Database, serve: Callable[..., str]
) -> None:
    base = serve()
    call = ProxyLogEvent(
        timestamp=datetime(2026, 11, 22, 12, 0, tzinfo=UTC),
        provider="openai",
        model="gpt-4o",
        request={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        response={
            "choices": [{"message": {"role": "assistant", "content": "hello"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        },
        latency=timedelta(milliseconds=840),
        total_latency=timedelta(milliseconds=1250),
        num_retries=1,
        was_rate_limited=True,
        metadata={"application": "chat", "user_id": "u-1", "prompt_version": 3, "ab": "b"},
    )
    body = wire([call])[0]
    body["internal_metadata"] = {"organization_id": "forged", "user_id": "forged"}
    async with client(base) as http:
        answer = await http.post(
            "/v1/event?wait=true", json=body, headers={"x-chronicle-project-id": "p-9"}
        )
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"ids": [str(call.id)]}

    [row] = await rows(db, chronicle_events)
    assert (row["model"], row["provider"]) == ("gpt-4o", "openai")
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (9, 2, 11)
    assert (row["request_latency_ms"], row["total_latency_ms"]) == (840, 1250)
    assert (row["retries"], row["rate_limited"]) == (1, True)
    assert (row["application"], row["request_user_id"], row["prompt_version"]) == ("chat", "u-1", 3)
    assert row["request_project_id"] == "p-9"  # from the header: the call left it unset
    assert row["meta"] == {"ab": "b"}
    assert row["created_at"] == call.timestamp
    # internal_metadata is for the trusted side to set, never a request body
    assert (row["organization_id"], row["project_id"], row["user_id"]) == (None, None, None)


async def test_retries_of_one_generic_event_store_one_row(
    db: Database, serve: Callable[..., str]
) -> None:
    base = serve()
    event = {"type": "click", "id": str(uuid7()), "data": {"n": 1}}
    key = str(uuid7())
    async with client(base) as http:
        for _ in range(3):
            answer = await http.post("/event?wait=true", json=event)
            assert answer.status_code == 201, answer.text
            assert answer.json() == {"ids": [event["id"]]}
            logged = await http.post(
                "/log?wait=true", json={"type": "vote"}, headers={"Idempotency-Key": key}
            )
            assert logged.json() == {"ids": [key]}
    assert await count(db, chronicle_events) == 2


# -- FastChat's clients ------------------------------------------------------------------


async def test_fastchat_flat_objects_become_generic_events_with_json_strings_decoded(
    db: Database, serve: Callable[..., str]
) -> None:
    base = serve()
    state = {"conv_id": "c1", "messages": [["USER", "hi"], ["ASSISTANT", "hello"]]}
    # What FastChat's RemoteLogger posts: nested values flattened into JSON strings.
    posted = [
        {"type": "chat", "tstamp": 1764000000.25, "model": "vicuna", "state": json.dumps(state)},
        {"event": "vote", "time": "2026-11-22T12:00:00Z", "models": json.dumps(["a", "b"])},
        {"tstamp": "not a time", "text": "[not json", "n": 3},
    ]
    async with client(base) as http:
        for obj in posted:
            answer = await http.post("/v1/log", json=obj)
            assert answer.status_code == 202, answer.text
            assert len(answer.json()["ids"]) == 1
        # Acknowledged is not yet written: a commit proves what came before it is in.
        assert (await http.post("/log?wait=true", json={"type": "sync"})).status_code == 201

    by_type = {row["event_type"]: row for row in await rows(db, chronicle_events)}
    assert set(by_type) == {"chat", "vote", "remote_log", "sync"}
    chat = by_type["chat"]
    assert chat["meta"] == {**posted[0], "state": state}
    assert chat["created_at"] == datetime.fromtimestamp(1764000000.25, UTC)
    assert by_type["vote"]["meta"]["models"] == ["a", "b"]
    assert by_type["vote"]["created_at"] == datetime(2026, 11, 22, 12, tzinfo=UTC)
    assert by_type["remote_log"]["meta"] == posted[2]  # kept as sent, time of receipt


# -- durable acknowledgements ------------------------------------------------------------


async def test_wait_true_answers_201_only_once_the_events_are_committed(
    db: Database, serve: Callable[..., str]
) -> None:
    # A debounce of 0.5 s: the 201 cannot come from the 202 path's speed.
    base = serve(debounce_time=0.5, batch_size=10_000)
    events = [{"type": "t", "data": {"i": i}} for i in range(250)]
    async with client(base) as http:
        answer = await http.post("/events", params={"wait": "true"}, json={"events": events})
        assert answer.status_code == 201, answer.text
        assert await count(db, chronicle_events) == 250  # already there: no waiting here
        health = (await http.get("/healthz")).json()
    assert health["status"] == "ok"
    assert health["logger"]["written"] == 250


class StalledDatabase(MemoryDatabase):
    """Takes batches but never finishes writing them until ``release`` is set (use
    :func:`stalled`, which sets it on the way out even when an assertion fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
        await self.release.wait()
        await super().write_log_batch(entries)


@asynccontextmanager
async def stalled(app: Any, db: StalledDatabase) -> AsyncIterator[httpx.AsyncClient]:
    """:func:`in_process`, the stalled database released before the app stops."""
    async with in_process(app) as http:
        try:
            yield http
        finally:
            db.release.set()


@asynccontextmanager
async def in_process(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app on httpx's ASGI transport, its lifespan entered as a host app would."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://collector") as http:
            yield http


async def test_wait_true_answers_503_with_the_ids_when_the_commit_does_not_come() -> None:
    db = StalledDatabase()
    app = create_app(db=db, wait_timeout=0.2)
    async with stalled(app, db) as http:
        answer = await http.post("/events?wait=true", json={"events": [{"type": "a"}]})
        assert answer.status_code == 503
        body = answer.json()
        assert "not committed within 0.2 s" in body["error"]
        assert len(body["ids"]) == 1
        assert answer.headers["retry-after"] == "1"
    assert [str(e.id) for e in db.entries] == body["ids"]  # written at shutdown after all


async def test_wait_true_answers_422_not_retryable_when_the_database_refuses_an_event() -> None:
    db = MemoryDatabase()
    db.refuse = lambda entry: getattr(entry, "type", "") == "poison"
    app = create_app(db=db)
    async with in_process(app) as http:
        answer = await http.post(
            "/events?wait=true", json={"events": [{"type": "good"}, {"type": "poison"}]}
        )
        # A retry would write "good" twice and be refused again: no 5xx, no Retry-After.
        assert answer.status_code == 422
        assert "retry-after" not in answer.headers
        assert answer.json()["error"].startswith("refused by the database: ValueError")
        assert "other events are written" in answer.json()["error"]
        good = await http.post("/events?wait=true", json={"events": [{"type": "good"}]})
        assert good.status_code == 201
    assert [letter.entry.type for letter in db.dead_letters] == ["poison"]  # type: ignore[union-attr]


async def test_a_full_queue_answers_503_instead_of_acknowledging_what_it_would_drop() -> None:
    db = StalledDatabase()
    app = create_app(db=db, max_queue=3)
    async with stalled(app, db) as http:
        first = await http.post("/events", json={"events": [{"type": "a"}, {"type": "b"}]})
        assert first.status_code == 202
        full = await http.post("/events", json={"events": [{"type": "c"}, {"type": "d"}]})
        assert full.status_code == 503
        assert full.json() == {"error": "the queue is full (3 entries wait for the database)"}
        assert full.headers["retry-after"] == "1"
        never = await http.post("/events", json={"events": [{"type": "x"}] * 4})
        assert never.status_code == 413
    assert len(db.entries) == 2
    assert app.state.collector.final_stats.dropped == 0


async def test_a_queue_full_by_bytes_answers_503_and_takes_nothing() -> None:
    db = StalledDatabase()
    app = create_app(db=db, max_queue=None, max_queue_bytes=4096)
    async with stalled(app, db) as http:
        first = await http.post("/event", json={"type": "a", "data": "x" * 1000})
        assert first.status_code == 202
        full = await http.post("/event?wait=true", json={"type": "b", "data": "x" * 5000})
        assert full.status_code == 503
        assert full.json() == {"error": "the queue is full (max_queue_bytes)"}
    assert [entry.type for entry in db.entries] == ["a"]  # type: ignore[union-attr]


async def test_requests_before_startup_or_after_shutdown_get_503() -> None:
    app = create_app(db=MemoryDatabase())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://collector") as http:
        answer = await http.post("/event", json={"type": "a"})
        assert answer.status_code == 503
        assert "not running" in answer.json()["error"]
        assert (await http.get("/healthz")).status_code == 503


# -- errors ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def error_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('errors') / 'events.db'}"
    app = create_app(url, migrate=True, token="s3cret-token", max_body_bytes=2048)
    with running(app) as base:
        yield base


AUTH = {"authorization": "Bearer s3cret-token"}
BIG = b'{"events": [' + b'{"type": "x"},' * 200 + b'{"type": "x"}]}'


@pytest.mark.parametrize(
    ("body", "headers", "status", "expected"),
    [
        pytest.param(b"{", JSON, 400, {"error": "malformed JSON: "}, id="not-json"),
        pytest.param(b'{"a": NaN}', JSON, 400, {"error": "malformed JSON: "}, id="nan"),
        pytest.param(
            b'{"events": []}',
            {**JSON, "x-chronicle-step-index": "two"},
            400,
            {"error": "header x-chronicle-step-index must be an integer, got 'two'"},
            id="bad-header",
        ),
        pytest.param(
            b'{"events": []}',
            {"content-type": "text/plain"},
            415,
            {"error": "the body must be application/json, got Content-Type 'text/plain'"},
            id="text-plain",
        ),
        pytest.param(
            b'{"events": []}',
            {"content-type": ""},
            415,
            {"error": "the body must be application/json, got Content-Type ''"},
            id="empty-type",
        ),
        pytest.param(
            b'{"events": []}',
            {**JSON, "content-encoding": "gzip"},
            415,
            {"error": "Content-Encoding 'gzip' is not supported; send the body as is"},
            id="gzip",
        ),
        pytest.param(
            BIG,
            JSON,
            413,
            {"error": f"the body of {len(BIG)} bytes is larger than 2048 bytes"},
            id="content-length",
        ),
        pytest.param(
            b"[1]",
            JSON,
            422,
            {
                "errors": [
                    {
                        "index": None,
                        "field": "",
                        "message": 'must be a JSON object {"events": [...]}',
                    }
                ]
            },
            id="array",
        ),
        pytest.param(
            b'{"events": {}}',
            JSON,
            422,
            {
                "errors": [
                    {"index": None, "field": "events", "message": "must be an array of events"}
                ]
            },
            id="events-not-array",
        ),
    ],
)
async def test_bad_requests_get_their_status_and_a_body_saying_why(
    error_server: str, body: bytes, headers: dict[str, str], status: int, expected: dict[str, Any]
) -> None:
    async with client(error_server, **AUTH) as http:
        answer = await http.post("/events", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    got = answer.json()
    if "error" in expected and expected["error"].endswith(": "):
        assert got["error"].startswith(expected["error"])
    else:
        assert got == expected


async def test_a_streamed_body_past_the_limit_is_refused_while_it_streams(
    error_server: str,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"events": ['
        for _ in range(200):
            yield b'{"type": "x"},'
        yield b'{"type": "x"}]}'

    async with client(error_server, **AUTH) as http:
        answer = await http.post("/events", content=chunks(), headers=JSON)
    assert "content-length" not in answer.request.headers  # chunked: counted, not told
    assert answer.status_code == 413
    assert answer.json() == {"error": "the body is larger than 2048 bytes"}


async def test_invalid_events_are_all_named_and_none_of_the_request_is_written(
    error_server: str,
) -> None:
    good = {"type": "fine", "id": str(uuid7())}
    events = [
        good,
        {"type": "run:start", "id": "nope", "name": "r"},
        {"type": "step:start", "run_id": str(uuid7()), "step_id": str(uuid7())},
        {"type": "chronicle_llm_request", "latency": -5},
        {"data": 1},
    ]
    async with client(error_server, **AUTH) as http:
        answer = await http.post("/events", json={"events": events})
        assert answer.status_code == 422
        assert answer.json() == {
            "errors": [
                {"index": 1, "field": "id", "message": "must be a UUID string, got 'nope'"},
                {"index": 2, "field": "data", "message": "is required"},
                {"index": 3, "field": "latency", "message": "must be milliseconds >= 0, got -5"},
                {"index": 4, "field": "type", "message": "is required"},
            ]
        }
        # The good event of the refused request was not kept: the same id goes in now.
        again = await http.post("/event?wait=true", json=good)
        assert again.status_code == 201
        health = (await http.get("/healthz")).json()
    assert health["logger"]["sent"] == 1


async def test_what_the_fuzz_found_json_numbers_and_times_at_the_edges() -> None:
    db = MemoryDatabase()
    app = create_app(db=db, debounce_time=0)
    call = {
        "type": "chronicle_llm_request",
        "num_retries": 2.0,  # JSON has one number type: 2.0 is the integer 2
        "metadata": {"step_index": 1e1, "big": 123456789012345678901234567890},
    }
    late = {"type": "t", "time": "9999-12-31T23:00:00-05:00"}  # past year 9999 in UTC
    async with in_process(app) as http:
        taken = await http.post("/event?wait=true", json=call)
        refused = await http.post("/event", json=late)
        huge = await http.post("/event", content=b'{"type": "t", "data": 1e400}', headers=JSON)
    assert taken.status_code == 201, taken.text
    [entry] = db.entries
    assert isinstance(entry, ProxyLogEvent)
    assert (entry.num_retries, entry.metadata.step_index) == (2, 10)
    # not rounded to a float on the way in: the writer stores it as its decimal text
    assert entry.metadata.extra == {"big": 123456789012345678901234567890}
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "time"
    assert huge.status_code == 400


async def test_flat_log_objects_must_be_objects(error_server: str) -> None:
    async with client(error_server, **AUTH) as http:
        answer = await http.post("/log", json=["a"])
        bad_key = await http.post("/log", json={}, headers={"Idempotency-Key": "abc"})
        bad_wait = await http.post("/log?wait=maybe", json={})
    assert answer.status_code == 422
    assert answer.json() == {
        "errors": [{"index": 0, "field": "", "message": "must be a JSON object, got an array"}]
    }
    assert bad_key.status_code == 400
    assert bad_key.json() == {"error": "header Idempotency-Key must be a UUID, got 'abc'"}
    assert bad_wait.status_code == 400
    assert bad_wait.json() == {"error": "query parameter wait must be true or false, got 'maybe'"}


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", "Basic s3cret-token", "Bearer s3cret-token-and-more", "Bearer"],
)
async def test_every_route_but_healthz_wants_the_bearer_token(
    error_server: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    async with client(error_server, **headers) as http:
        answers = [
            await http.post("/events", json={"events": []}),
            await http.post("/v1/log", json={}),
            await http.get("/metrics"),
            await http.get("/openapi.json"),
            await http.get("/no/such/route"),
        ]
        health = await http.get("/healthz")
    for answer in answers:
        assert answer.status_code == 401
        assert answer.json() == {"error": "a bearer token is required"}
        assert answer.headers["www-authenticate"] == "Bearer"
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["database"] == "ok"


async def test_unknown_routes_are_404_and_wrong_methods_405(error_server: str) -> None:
    async with client(error_server, **AUTH) as http:
        missing = await http.post("/v2/events", json={})
        wrong = await http.get("/events")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no route POST /v2/events (the routes: /openapi.json)"}
    assert wrong.status_code == 405
    assert wrong.json() == {"error": "GET is not allowed on /events; use POST"}
    assert wrong.headers["allow"] == "POST"


async def test_metrics_count_requests_by_route_and_status_and_show_the_logger(
    error_server: str,
) -> None:
    async with client(error_server, **AUTH) as http:
        await http.post("/v1/events?wait=true", json={"events": [{"type": "m"}] * 3})
        await http.post("/nowhere", json={})
        answer = await http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    for name in (
        "eventlog_events_sent_total",
        "eventlog_events_written_total",
        'eventlog_events_dropped_total{reason="queue_full"} 0.0',
        "eventlog_queue_depth",
        'eventlog_http_requests_total{route="/v1/events",status="201"} 1.0',
        'eventlog_http_requests_total{route="unmatched",status="404"}',
        'eventlog_http_request_duration_seconds_bucket{le="0.005",route="/v1/events"}',
    ):
        assert name in text, name


async def test_the_openapi_schema_describes_every_route(error_server: str) -> None:
    async with client(error_server, **AUTH) as http:
        schema = (await http.get("/openapi.json")).json()
    assert schema["openapi"] == "3.1.0"
    assert set(schema["paths"]) == {
        "/event", "/events", "/log", "/v1/event", "/v1/events", "/v1/log",
        "/healthz", "/metrics", "/openapi.json",
    }  # fmt: skip
    events = schema["paths"]["/events"]["post"]
    assert set(events["responses"]) == {"201", "202", "400", "401", "413", "415", "422", "503"}
    assert schema["paths"]["/healthz"]["get"]["security"] == []


def test_bad_arguments_fail_at_construction_naming_the_parameter() -> None:
    with pytest.raises(ValueError, match="exactly one of them"):
        create_app()
    with pytest.raises(ValueError, match="max_body_bytes must be a positive int, got 0"):
        create_app(db=MemoryDatabase(), max_body_bytes=0)
    with pytest.raises(ValueError, match="token must be a non-empty string"):
        create_app(db=MemoryDatabase(), token="")
    with pytest.raises(ValueError, match="wait_timeout must be"):
        create_app(db=MemoryDatabase(), wait_timeout=float("nan"))
    with pytest.raises(TypeError, match="does not take overflow"):
        create_app(db=MemoryDatabase(), overflow="drop_oldest")
    with pytest.raises(TypeError, match="unexpected keyword argument 'batch'"):
        create_app(db=MemoryDatabase(), batch=5)
    with pytest.raises(ValueError, match="database url scheme 'mysql'"):
        create_app("mysql://localhost/x")


# -- eventlog serve ----------------------------------------------------------------------


@asynccontextmanager
async def eventlog_serve(*args: str, cwd: Path) -> AsyncIterator[tuple[subprocess.Popen[str], str]]:
    """``eventlog serve --port 0 ARGS`` as a subprocess; yields it and its URL, read from
    the line it prints once it listens. Killed on the way out if still running."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLOG_")}
    process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; output is read in a thread
        [EVENTLOG, "serve", "--port", "0", *args],
        cwd=cwd,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        assert "listening on http://127.0.0.1:" in line, (line, process.stderr)
        url = line.split("listening on ")[1].split()[0]
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


async def stop_after_acknowledging(db_url: str, stop: signal.Signals, cwd: Path) -> list[str]:
    """Post 500 events to ``eventlog serve`` (with a debounce of 5 minutes: none written
    before the signal), send ``stop``, and check it exits 0 having written them; the ids."""
    options = ("--url", db_url, "--debounce-time", "300", "--batch-size", "100000")
    async with eventlog_serve(*options, cwd=cwd) as (process, url), client(url) as http:
        ids: list[str] = []
        for i in range(10):
            events = [{"type": "load", "data": {"i": i, "j": j}} for j in range(50)]
            answer = await http.post("/events", json={"events": events})
            assert answer.status_code == 202, answer.text
            ids += answer.json()["ids"]
        health = (await http.get("/healthz")).json()
        assert (health["logger"]["queued"], health["logger"]["written"]) == (500, 0)
        process.send_signal(stop)
        stdout, stderr = await asyncio.to_thread(process.communicate, timeout=60)
    assert process.returncode == 0, stderr
    assert "stopped; 500 entries written" in stdout
    assert "Traceback" not in stderr
    return ids


async def test_serve_writes_everything_it_acknowledged_on_sigterm_then_exits_0(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    ids = await stop_after_acknowledging(db_url, signal.SIGTERM, tmp_path)
    stored = await rows(db, chronicle_events)
    assert sorted(str(row["id"]) for row in stored) == sorted(ids)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_serve_does_the_same_on_ctrl_c(db: Database, db_url: str, tmp_path: Path) -> None:
    ids = await stop_after_acknowledging(db_url, signal.SIGINT, tmp_path)
    assert await count(db, chronicle_events) == len(ids)


async def test_serve_on_a_port_in_use_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [EVENTLOG, "serve", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"eventlog serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


async def test_json_nested_too_deep_for_the_writer_is_refused_up_front() -> None:
    db = MemoryDatabase()
    app = create_app(db=db)
    deep: object = 1
    for _ in range(600):
        deep = [deep]
    async with in_process(app) as http:
        event = await http.post(
            "/events", json={"events": [{"type": "ok"}, {"type": "x", "data": deep}]}
        )
        assert event.status_code == 422
        assert event.json()["errors"][0]["index"] == 1
        assert "deeper than 512" in event.json()["errors"][0]["message"]
        flat = await http.post("/log", json={"type": "chat", "state": json.dumps(deep)})
        assert flat.status_code == 422
    assert db.entries == []


async def test_a_flat_object_cannot_pass_for_a_run_or_an_llm_call() -> None:
    db = MemoryDatabase()
    app = create_app(db=db)
    async with in_process(app) as http:
        for kind in ("run:start", "chronicle_llm_request"):
            answer = await http.post("/log?wait=true", json={"type": kind, "x": 1})
            assert answer.status_code == 201
    assert [entry.type for entry in db.entries] == ["remote_log", "remote_log"]  # type: ignore[union-attr]
