"""RequestContextMiddleware with Starlette and FastAPI: ids, headers, request events.

The events go through a real writer into a real database (both backends) and the
assertions read the rows back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from eventlog import Database, EventLogHandler, EventPayload, LogSender, start_database_logger
from eventlog.asgi import RequestContextMiddleware
from eventlog.context import get_request_id
from eventlog.events import ProxyLogEntry
from eventlog.schema import chronicle_events

FRAMEWORKS = ["starlette", "fastapi"]
SECRET = "s3cr3t-value-never-logged"


class ListSender:
    def __init__(self) -> None:
        self.entries: list[EventPayload] = []

    def send(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        assert isinstance(entry, EventPayload)
        self.entries.append(entry)


class Barrier:
    """Holds every request in the endpoint until ``count`` of them are inside."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.inside = 0
        self.all_in = asyncio.Event()

    async def wait(self) -> None:
        self.inside += 1
        if self.inside == self.count:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), 10)


def make_app(framework: str, sender: Any, barrier: Barrier | None = None) -> Starlette:
    """The same small app in either framework, with the middleware."""
    log = logging.getLogger("app.routes")

    async def work(n: int) -> dict[str, Any]:
        log.info("work %d started", n)
        if barrier is not None:
            await barrier.wait()
        log.info("work %d done", n)
        return {"n": n, "request_id": get_request_id()}

    async def echo(body: bytes) -> dict[str, Any]:
        return {"length": len(body), "request_id": get_request_id()}

    async def fail() -> None:
        raise RuntimeError("the endpoint broke")

    async def numbers() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"{i}\n".encode()
            await asyncio.sleep(0)

    app: Starlette
    if framework == "fastapi":
        app = FastAPI()

        @app.get("/work/{n}")
        async def work_route(n: int) -> dict[str, Any]:
            return await work(n)

        @app.post("/echo")
        async def echo_route(request: Request) -> dict[str, Any]:
            return await echo(await request.body())

        @app.get("/fail")
        async def fail_route() -> None:
            await fail()

        @app.get("/stream")
        async def stream_route() -> StreamingResponse:
            return StreamingResponse(numbers(), media_type="text/plain")

    else:

        async def work_endpoint(request: Request) -> JSONResponse:
            return JSONResponse(await work(int(request.path_params["n"])))

        async def echo_endpoint(request: Request) -> JSONResponse:
            return JSONResponse(await echo(await request.body()))

        async def fail_endpoint(request: Request) -> PlainTextResponse:
            await fail()
            return PlainTextResponse("unreachable")

        async def stream_endpoint(request: Request) -> StreamingResponse:
            return StreamingResponse(numbers(), media_type="text/plain")

        app = Starlette(
            routes=[
                Route("/work/{n:int}", work_endpoint),
                Route("/echo", echo_endpoint, methods=["POST"]),
                Route("/fail", fail_endpoint),
                Route("/stream", stream_endpoint),
            ]
        )
    app.add_middleware(RequestContextMiddleware, sender=sender)
    return app


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOG_REQUEST_BODY", "MAX_BODY_SIZE_LOG", "SLOW_OPERATION_THRESHOLD"):
        monkeypatch.delenv(name, raising=False)


async def read_events(db: Database, event_type: str) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        result = await conn.execute(
            select(chronicle_events)
            .where(chronicle_events.c.event_type == event_type)
            .order_by(chronicle_events.c.created_at, chronicle_events.c.id)
        )
        return [dict(r) for r in result.mappings()]


async def finish(sender: LogSender, task: asyncio.Task[None]) -> None:
    sender.close()
    await task
    assert sender.stats().failed == 0


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_request_id_comes_from_a_well_formed_header_and_is_echoed(
    db: Database, framework: str
) -> None:
    sender, task = start_database_logger(db, debounce_time=60)
    async with client(make_app(framework, sender)) as http:
        given = await http.get("/work/1", headers={"X-Request-ID": "req_abc-123:x.y"})
        malformed = await http.get("/work/2", headers={"X-Request-ID": "bad id; drop table"})
        missing = await http.get("/work/3")
    await finish(sender, task)

    assert given.headers["x-request-id"] == "req_abc-123:x.y"
    assert given.json()["request_id"] == "req_abc-123:x.y"
    for response in (malformed, missing):
        new_id = response.headers["x-request-id"]
        assert len(new_id) == 32
        int(new_id, 16)  # hex
        assert response.json()["request_id"] == new_id
    assert malformed.headers["x-request-id"] != missing.headers["x-request-id"]

    rows = await read_events(db, "http_request")
    by_path = {row["meta"]["path"]: row["meta"] for row in rows}
    assert set(by_path) == {"/work/1", "/work/2", "/work/3"}
    assert by_path["/work/1"]["request_id"] == "req_abc-123:x.y"
    assert by_path["/work/2"]["request_id"] == malformed.headers["x-request-id"]
    meta = by_path["/work/3"]
    assert meta["method"] == "GET"
    assert meta["status"] == 200
    assert meta["duration_ms"] >= 0
    assert meta["query"] is None
    assert meta["slow"] is False
    assert "body_preview" not in meta
    assert all(row["error"] is None for row in rows)


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_concurrent_requests_keep_their_ids_apart(db: Database, framework: str) -> None:
    count = 8
    sender, task = start_database_logger(db, debounce_time=60)
    log = logging.getLogger("app.routes")
    log.addHandler(handler := EventLogHandler(sender))
    log.setLevel(logging.INFO)
    try:
        async with client(make_app(framework, sender, Barrier(count))) as http:
            responses = await asyncio.gather(
                *(
                    http.get(f"/work/{n}", headers={"X-Request-ID": f"req-{n}"})
                    for n in range(count)
                )
            )
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    await finish(sender, task)

    for n, response in enumerate(responses):
        assert response.headers["x-request-id"] == f"req-{n}"
        assert response.json() == {"n": n, "request_id": f"req-{n}"}
    logs = await read_events(db, "log")
    assert len(logs) == 2 * count
    for row in logs:  # "work 5 started" was logged while handling req-5, and so on
        n = row["meta"]["message"].split()[1]
        assert row["meta"]["request_id"] == f"req-{n}"
    requests = await read_events(db, "http_request")
    assert sorted(r["meta"]["request_id"] for r in requests) == sorted(
        f"req-{n}" for n in range(count)
    )
    assert all(r["meta"]["path"] == f"/work/{r['meta']['request_id'][4:]}" for r in requests)


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_body_preview_is_capped_and_the_app_still_reads_the_whole_body(
    db: Database, framework: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_REQUEST_BODY", "true")
    monkeypatch.setenv("MAX_BODY_SIZE_LOG", "12")
    body = json.dumps({"prompt": "é" * 50, "model": "gpt-4o"}).encode()
    sender, task = start_database_logger(db, debounce_time=60)

    async def chunks() -> AsyncIterator[bytes]:  # several http.request messages
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    async with client(make_app(framework, sender)) as http:
        response = await http.post("/echo", content=chunks())
        small = await http.post("/echo", content=b"hi")
    await finish(sender, task)

    assert response.json()["length"] == len(body)
    assert small.json()["length"] == 2
    rows = await read_events(db, "http_request")
    assert [r["meta"]["body_preview"] for r in rows] == [body.decode()[:12], "hi"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_authorization_headers_and_cookies_are_never_logged(
    db: Database, framework: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_REQUEST_BODY", "1")
    sender, task = start_database_logger(db, debounce_time=60)
    headers = {
        "Authorization": f"Bearer {SECRET}",
        "Proxy-Authorization": f"Basic {SECRET}",
        "Cookie": f"session={SECRET}",
        "X-API-Key": SECRET,
        "api-key": SECRET,
        "x-goog-api-key": SECRET,
        "X-Auth-Token": SECRET,
        "OpenAI-Api-Key": SECRET,
        "User-Agent": "tests/1.0",
    }
    async with client(make_app(framework, sender)) as http:
        response = await http.get(
            f"/work/1?verbose=1&api_key={SECRET}&access_token={SECRET}&sig={SECRET}",
            headers=headers,
        )
    await finish(sender, task)
    assert response.status_code == 200

    (row,) = await read_events(db, "http_request")
    assert SECRET not in json.dumps(row["meta"])
    logged = row["meta"]["headers"]
    assert logged["user-agent"] == "tests/1.0"
    for name in ("authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"):
        assert name not in logged
    assert logged["x-auth-token"] == logged["openai-api-key"] == "[redacted]"
    assert row["meta"]["query"] == (
        "verbose=1&api_key=[redacted]&access_token=[redacted]&sig=[redacted]"
    )
    assert row["meta"]["client"] == "127.0.0.1:123"  # httpx's ASGITransport


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_streaming_response_streams_and_is_recorded_when_done(
    framework: str,
) -> None:
    sender = ListSender()
    async with (
        client(make_app(framework, sender)) as http,
        http.stream("GET", "/stream", headers={"X-Request-ID": "stream-1"}) as response,
    ):
        assert response.headers["x-request-id"] == "stream-1"
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert body == b"0\n1\n2\n"
    (event,) = sender.entries
    assert (event.data["status"], event.data["request_id"]) == (200, "stream-1")


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_failing_endpoint_is_recorded_as_500_with_its_error(framework: str) -> None:
    sender = ListSender()
    async with client(make_app(framework, sender)) as http:
        response = await http.get("/fail")
    assert response.status_code == 500
    (event,) = sender.entries
    assert event.data["status"] == 500
    assert event.error["type"] == "RuntimeError"
    assert event.error["message"] == "the endpoint broke"
    assert "Traceback" in event.error["traceback"]


async def test_slow_request_is_flagged_and_logged_as_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SLOW_OPERATION_THRESHOLD", "0")
    sender = ListSender()
    with caplog.at_level(logging.INFO, logger="eventlog.asgi"):
        async with client(make_app("starlette", sender)) as http:
            await http.get("/work/1", headers={"X-Request-ID": "slow-1"})
    (event,) = sender.entries
    assert event.data["slow"] is True
    (line,) = [r for r in caplog.records if r.name == "eventlog.asgi"]
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith("slow request: GET /work/1 -> 200 in ")


async def test_each_request_logs_one_access_line_with_its_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str | None] = []

    class IdOfRecord(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(get_request_id())

    access = logging.getLogger("eventlog.asgi")
    access.addHandler(handler := IdOfRecord())
    try:
        with caplog.at_level(logging.INFO, logger="eventlog.asgi"):
            async with client(make_app("fastapi", ListSender())) as http:
                await http.get("/work/7", headers={"X-Request-ID": "line-7"})
    finally:
        access.removeHandler(handler)
    (line,) = [r for r in caplog.records if r.name == "eventlog.asgi"]
    assert line.levelno == logging.INFO
    assert line.getMessage().startswith("GET /work/7 -> 200 in ")
    assert seen == ["line-7"]


async def test_without_any_sender_requests_still_get_ids() -> None:
    async with client(make_app("fastapi", None)) as http:
        response = await http.get("/work/1", headers={"X-Request-ID": "no-sender"})
    assert response.headers["x-request-id"] == "no-sender"
    assert get_request_id() is None  # reset after the request


async def test_a_custom_header_name_is_read_and_echoed() -> None:
    sender = ListSender()

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(get_request_id() or "")

    app = RequestContextMiddleware(
        Starlette(routes=[Route("/", endpoint)]), sender=sender, header="X-Correlation-ID"
    )
    async with client(app) as http:
        response = await http.get("/", headers={"x-correlation-id": "corr-1"})
    assert response.text == "corr-1"
    assert response.headers["x-correlation-id"] == "corr-1"
    assert "x-request-id" not in response.headers


def test_a_bad_header_name_is_refused() -> None:
    with pytest.raises(ValueError, match="header must be an HTTP header name, got 'X Bad'"):
        RequestContextMiddleware(Starlette(), header="X Bad")


@pytest.mark.parametrize(
    ("variable", "value"),
    [("LOG_REQUEST_BODY", "maybe"), ("MAX_BODY_SIZE_LOG", "-1"), ("MAX_BODY_SIZE_LOG", "ten")],
)
def test_a_bad_environment_value_is_refused_at_startup(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        RequestContextMiddleware(Starlette())
