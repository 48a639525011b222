"""eventlog.integrations.openai: every chat completion of an instrumented client, logged.

Offline: the SDK's HTTP client gets a mock transport that answers with the recorded
OpenAI responses in ``tests/recordings/`` (streams sent one event per network chunk) and
moves a manual clock as it answers, so latencies are exact and nothing sleeps. The rows
are read back from a real SQLite file and a real PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from sqlalchemy import select

import eventlog
from eventlog import Database, LogSender, start_database_logger
from eventlog import instrument as instrument_module
from eventlog.schema import chronicle_events, chronicle_steps
from eventlog.testing import ManualClock

openai = pytest.importorskip("openai")

from eventlog.integrations import openai as integration  # noqa: E402 (needs openai)

RECORDINGS = Path(__file__).parent / "recordings"
Kind = Literal["sync", "async"]
Row = dict[str, Any]


def recording(name: str) -> bytes:
    return (RECORDINGS / name).read_bytes()


def sse_events(name: str) -> list[bytes]:
    """The events of a recorded stream, each with its blank line: one network chunk each."""
    return [part + b"\n\n" for part in recording(name).split(b"\n\n") if part.strip()]


COMPLETION = json.loads(recording("chat_completion.json"))
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Reply:
    """One recorded answer: ``takes`` seconds until the headers, then the body; a stream
    takes ``per_event`` seconds per event, and breaks after ``break_after`` events."""

    status: int = 200
    body: bytes = b""
    events: list[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    takes: float = 0.0
    per_event: float = 0.0
    break_after: int | None = None


def completion(takes: float = 0.4) -> Reply:
    return Reply(body=recording("chat_completion.json"), takes=takes)


def stream(name: str = "chat_completion_stream.sse", **options: Any) -> Reply:
    options = {"takes": 0.25, "per_event": 0.05, **options}
    return Reply(events=sse_events(name), **options)


def rate_limited(takes: float = 0.1) -> Reply:
    # retry-after-ms: the SDK waits 1 ms (for real) before its retry.
    return Reply(
        status=429,
        body=recording("rate_limited.json"),
        headers={"retry-after-ms": "1", "x-ratelimit-remaining-requests": "0"},
        takes=takes,
    )


class RecordedAPI:
    """The OpenAI API as a mock transport handler: the replies in order, one per request."""

    def __init__(self, clock: ManualClock, replies: list[Reply], http: Any = httpx) -> None:
        self.clock = clock
        self.replies = list(replies)
        self.http = http
        self.requests: list[Any] = []

    def transport(self, kind: Kind) -> Any:
        handler = self._handle_async if kind == "async" else self._handle_sync
        return self.http.MockTransport(handler)

    def _reply(self, request: Any) -> Reply:
        self.requests.append(request)
        reply = self.replies.pop(0)
        self.clock.advance(reply.takes)
        return reply

    def _headers(self, reply: Reply) -> dict[str, str]:
        kind = "text/event-stream" if reply.events is not None else "application/json"
        return {"content-type": kind, "x-request-id": f"req_{len(self.requests)}", **reply.headers}

    def _handle_sync(self, request: Any) -> Any:
        reply = self._reply(request)
        content = reply.body if reply.events is None else self._events(reply)
        return self.http.Response(reply.status, headers=self._headers(reply), content=content)

    async def _handle_async(self, request: Any) -> Any:
        reply = self._reply(request)
        content = reply.body if reply.events is None else self._aevents(reply)
        return self.http.Response(reply.status, headers=self._headers(reply), content=content)

    def _events(self, reply: Reply) -> Iterator[bytes]:
        for sent, event in enumerate(reply.events or ()):
            if sent == reply.break_after:
                raise self.http.ReadError("connection reset by peer")
            self.clock.advance(reply.per_event)
            yield event

    async def _aevents(self, reply: Reply) -> AsyncIterator[bytes]:
        for event in self._events(reply):
            yield event


def make_client(api: RecordedAPI, kind: Kind, max_retries: int = 0) -> Any:
    options = {"api_key": "sk-test", "base_url": "http://openai.test/v1"}
    if kind == "async":
        http_client: Any = api.http.AsyncClient(transport=api.transport("async"))
        return openai.AsyncOpenAI(**options, max_retries=max_retries, http_client=http_client)
    http_client = api.http.Client(transport=api.transport("sync"))
    return openai.OpenAI(**options, max_retries=max_retries, http_client=http_client)


async def create(client: Any, **kwargs: Any) -> Any:
    """``client.chat.completions.create(**kwargs)``, awaited for an async client."""
    result = client.chat.completions.create(**kwargs)
    if isinstance(client, openai.AsyncOpenAI):
        result = await result
    return result


async def read_all(stream: Any) -> list[Any]:
    if isinstance(stream, openai.AsyncStream):
        return [chunk async for chunk in stream]
    return list(stream)


async def read_some(stream: Any, count: int) -> list[Any]:
    if isinstance(stream, openai.AsyncStream):
        return [await stream.__anext__() for _ in range(count)]
    return [next(stream) for _ in range(count)]


async def close(stream: Any) -> None:
    if isinstance(stream, openai.AsyncStream):
        await stream.close()
    else:
        stream.close()


async def close_client(client: Any) -> None:
    if isinstance(client, openai.AsyncOpenAI):
        await client.close()
    else:
        client.close()


@dataclass
class Logged:
    db: Database
    sender: LogSender
    task: asyncio.Task[None]

    async def rows(self, *where: Any) -> list[Row]:
        """The LLM calls written, once everything sent is (closes the logger)."""
        if not self.sender.closed:
            self.sender.close()
            await self.task
            assert self.sender.stats().failed_writes == 0
        async with self.db.engine.connect() as conn:
            query = select(chronicle_events).where(*where).order_by(chronicle_events.c.created_at)
            return [dict(r) for r in (await conn.execute(query)).mappings()]


@pytest.fixture
async def logged(db: Database) -> AsyncIterator[Logged]:
    sender, task = start_database_logger(db, batch_size=100, debounce_time=60)
    eventlog.set_default_sender(sender)
    try:
        yield Logged(db, sender, task)
    finally:
        eventlog.set_default_sender(None)
        sender.close()
        await task


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    manual = ManualClock(1000.0)
    monkeypatch.setattr(instrument_module, "clock", manual)
    return manual


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


# -- plain completions -----------------------------------------------------------------


async def test_plain_completion_is_logged_with_request_response_latency_and_tokens(
    logged: Logged, clock: ManualClock, kind: Kind
) -> None:
    client = integration.instrument(make_client(RecordedAPI(clock, [completion(0.4)]), kind))
    plain = make_client(RecordedAPI(ManualClock(), [completion()]), kind)
    answer = await create(
        client,
        model="gpt-4o-mini",
        messages=MESSAGES,
        temperature=0.2,
        extra_headers={"Authorization": "Bearer sk-secret"},
        extra_body={"user": "u-42"},
    )
    expected = await create(plain, model="gpt-4o-mini", messages=MESSAGES, temperature=0.2)
    assert type(answer) is type(expected)
    assert answer.model_dump() == expected.model_dump()
    (row,) = await logged.rows()
    assert (row["provider"], row["model"]) == ("openai", "gpt-4o-mini")
    assert row["chat_request"] == {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "temperature": 0.2,
        "user": "u-42",
    }
    assert row["chat_response"] == COMPLETION
    assert (row["request_latency_ms"], row["total_latency_ms"], row["ttft_ms"]) == (400, 400, 400)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (24, 8, 32)
    assert (row["retries"], row["rate_limited"], row["error"]) == (0, False, None)
    assert row["meta"] == {"output_tokens_per_second": 20.0}
    await close_client(client)
    await close_client(plain)


async def test_retry_after_a_429_is_counted_and_marks_the_call_rate_limited(
    logged: Logged, clock: ManualClock, kind: Kind
) -> None:
    api = RecordedAPI(clock, [rate_limited(0.1), completion(0.4)])
    client = integration.instrument(make_client(api, kind, max_retries=1))
    answer = await create(client, model="gpt-4o-mini", messages=MESSAGES)
    assert answer.choices[0].message.content == "The capital of France is Paris."
    assert len(api.requests) == 2
    (row,) = await logged.rows()
    assert (row["retries"], row["rate_limited"], row["error"]) == (1, True, None)
    # latency: the attempt that answered; total: from the first request
    assert (row["request_latency_ms"], row["total_latency_ms"]) == (400, 500)
    await close_client(client)


async def test_error_answer_is_logged_with_its_error_and_raised_to_the_caller(
    logged: Logged, clock: ManualClock, kind: Kind
) -> None:
    bad = Reply(status=400, body=recording("bad_request.json"), takes=0.05)
    client = integration.instrument(make_client(RecordedAPI(clock, [bad]), kind))
    with pytest.raises(openai.BadRequestError, match="temperature"):
        await create(client, model="gpt-4o-mini", messages=MESSAGES, temperature=5)
    (row,) = await logged.rows()
    assert row["error"]["type"] == "openai.BadRequestError"
    assert "must be between 0 and 2" in row["error"]["message"]
    assert (row["chat_response"], row["rate_limited"], row["request_latency_ms"]) == (
        None,
        False,
        50,
    )
    await close_client(client)


async def test_rate_limit_that_outlasts_the_retries_is_logged_rate_limited(
    logged: Logged, clock: ManualClock
) -> None:
    api = RecordedAPI(clock, [rate_limited(), rate_limited()])
    client = integration.instrument(make_client(api, "async", max_retries=1))
    with pytest.raises(openai.RateLimitError):
        await create(client, model="gpt-4o-mini", messages=MESSAGES)
    (row,) = await logged.rows()
    assert (row["retries"], row["rate_limited"]) == (1, True)
    assert row["error"]["type"] == "openai.RateLimitError"
    await close_client(client)


# -- streams ---------------------------------------------------------------------------


async def test_stream_is_merged_into_one_response_and_the_caller_gets_every_chunk(
    logged: Logged, clock: ManualClock, kind: Kind
) -> None:
    client = integration.instrument(make_client(RecordedAPI(clock, [stream()]), kind))
    plain = make_client(RecordedAPI(ManualClock(), [stream()]), kind)
    options: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = await read_all(await create(client, **options))
    expected = await read_all(await create(plain, **options))
    assert [type(c) for c in chunks] == [type(c) for c in expected]
    assert [c.model_dump() for c in chunks] == [c.model_dump() for c in expected]
    (row,) = await logged.rows()
    response = row["chat_response"]
    assert response["object"] == "chat.completion"
    assert response["id"] == "chatcmpl-AZ1q3b8VhZt5yJx2pQe6RkD0wLmNa"
    assert response["model"] == "gpt-4o-mini-2024-07-18"
    (choice,) = response["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Paris is the capital of France."}
    assert choice["finish_reason"] == "stop"
    assert response["usage"]["completion_tokens"] == 7
    assert (row["prompt_tokens"], row["completion_tokens"]) == (24, 7)
    assert row["chat_request"]["stream"] is True
    # headers after 0.25 s, then 0.05 s per event: 10 chunks and [DONE]
    assert (row["ttft_ms"], row["request_latency_ms"]) == (300, 800)
    assert row["meta"] == {"output_tokens_per_second": 8.75}
    assert row["error"] is None
    await close_client(client)
    await close_client(plain)


async def test_streamed_tool_calls_are_merged_by_index(
    logged: Logged, clock: ManualClock, kind: Kind
) -> None:
    api = RecordedAPI(clock, [stream("chat_completion_tool_calls_stream.sse")])
    client = integration.instrument(make_client(api, kind))
    await read_all(await create(client, model="gpt-4o-mini", messages=MESSAGES, stream=True))
    (row,) = await logged.rows()
    (choice,) = row["chat_response"]["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_8fJ2kQ1mZx7Lr0VbN4sT6yWd",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {
            "id": "call_Q3nV9pLz2Xc5Wb8Mk1Ht4Rjs",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"timezone":"Europe/Paris"}'},
        },
    ]
    assert choice["message"]["content"] is None
    assert "usage" not in row["chat_response"]
    await close_client(client)


async def test_stream_closed_early_logs_what_was_received(
    logged: Logged, clock: ManualClock, kind: Kind
) -> None:
    client = integration.instrument(make_client(RecordedAPI(clock, [stream()]), kind))
    answer = await create(client, model="gpt-4o-mini", messages=MESSAGES, stream=True)
    await read_some(answer, 3)  # the role chunk, "Paris", " is"
    await close(answer)
    await close(answer)  # a second close logs nothing more
    (row,) = await logged.rows()
    (choice,) = row["chat_response"]["choices"]
    assert choice["message"]["content"] == "Paris is"
    assert choice["finish_reason"] is None
    assert row["meta"] == {"stream_incomplete": True}
    assert row["error"] is None
    await close_client(client)


async def test_stream_used_as_a_context_manager_is_logged_once(
    logged: Logged, clock: ManualClock
) -> None:
    client = integration.instrument(make_client(RecordedAPI(clock, [stream()]), "sync"))
    with client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    ) as answer:
        chunks = list(answer)
    assert len(chunks) == 10
    (row,) = await logged.rows()
    assert "stream_incomplete" not in row["meta"]
    client.close()


async def test_stream_broken_mid_way_logs_what_was_received_with_the_error(
    logged: Logged, clock: ManualClock, kind: Kind
) -> None:
    api = RecordedAPI(clock, [stream(break_after=4)])
    client = integration.instrument(make_client(api, kind))
    answer = await create(client, model="gpt-4o-mini", messages=MESSAGES, stream=True)
    # openai 1.x lets the transport's error through; later versions wrap it.
    with pytest.raises((openai.APIConnectionError, httpx.ReadError)) as raised:
        await read_all(answer)
    (row,) = await logged.rows()
    error_class = type(raised.value)
    assert row["error"]["type"] == f"{error_class.__module__}.{error_class.__qualname__}"
    assert row["chat_response"]["choices"][0]["message"]["content"] == "Paris is the"
    await close_client(client)


async def test_stream_dropped_unfinished_is_logged_when_collected(
    logged: Logged, clock: ManualClock, kind: Kind
) -> None:
    client = integration.instrument(make_client(RecordedAPI(clock, [stream()]), kind))
    answer = await create(client, model="gpt-4o-mini", messages=MESSAGES, stream=True)
    await read_some(answer, 2)
    del answer
    gc.collect()
    await asyncio.sleep(0)  # an async stream's generators are closed by the loop
    assert integration._wait_for_abandoned(timeout=10)
    (row,) = await logged.rows()
    assert row["error"]["type"] == "eventlog.StreamAbandoned"
    assert row["chat_response"]["choices"][0]["message"]["content"] == "Paris"
    assert row["meta"] == {"stream_incomplete": True}
    await close_client(client)


# -- the client ------------------------------------------------------------------------


async def test_instrumenting_twice_changes_nothing(logged: Logged, clock: ManualClock) -> None:
    api = RecordedAPI(clock, [rate_limited(), completion()])
    client = make_client(api, "sync", max_retries=1)
    assert integration.instrument(client) is client
    create_once = client.chat.completions.create
    assert integration.instrument(client) is client
    assert client.chat.completions.create is create_once
    await create(client, model="gpt-4o-mini", messages=MESSAGES)
    (row,) = await logged.rows()
    assert row["retries"] == 1  # the hooks are there once
    client.close()


async def test_copies_made_with_with_options_are_instrumented_too(
    logged: Logged, clock: ManualClock
) -> None:
    client = integration.instrument(
        make_client(RecordedAPI(clock, [completion(), completion()]), "sync")
    )
    await create(client.with_options(timeout=5), model="gpt-4o-mini", messages=MESSAGES)
    await create(client.copy(max_retries=0), model="gpt-4o-mini", messages=MESSAGES)
    assert len(await logged.rows()) == 2
    client.close()


async def test_calls_inside_a_step_carry_its_run_and_step(
    logged: Logged, clock: ManualClock, kind: Kind
) -> None:
    api = RecordedAPI(clock, [completion(), stream()])
    client = integration.instrument(make_client(api, kind))
    async with eventlog.run("chat") as run, eventlog.step("llm", "answer") as step:
        await create(client, model="gpt-4o-mini", messages=MESSAGES)
        answer = await create(client, model="gpt-4o-mini", messages=MESSAGES, stream=True)
    await read_all(answer)  # read after the step ended: still the step's call
    rows = await logged.rows(chronicle_events.c.event_type == "chronicle_llm_request")
    assert [(r["run_id"], r["step_id"]) for r in rows] == [(run.id, step.id)] * 2
    async with logged.db.engine.connect() as conn:
        steps = (await conn.execute(select(chronicle_steps.c.id))).scalars().all()
    assert [uuid.UUID(str(s)) for s in steps] == [step.id]
    await close_client(client)


async def test_explicit_sender_takes_the_calls(clock: ManualClock) -> None:
    class ListSender:
        def __init__(self) -> None:
            self.entries: list[Any] = []

        def send(self, entry: Any) -> None:
            self.entries.append(entry)

    sender = ListSender()
    client = integration.instrument(
        make_client(RecordedAPI(clock, [completion()]), "sync"), sender=sender
    )
    await create(client, model="gpt-4o-mini", messages=(m for m in MESSAGES))
    (event,) = sender.entries
    assert event.request["messages"] == MESSAGES  # a generator is read once, for both
    assert event.time_to_first_token.total_seconds() == pytest.approx(0.4)
    client.close()


async def test_without_a_sender_the_client_works_and_logs_nothing(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(instrument_module, "_warned_no_sender", False)
    eventlog.set_default_sender(None)
    api = RecordedAPI(clock, [completion(), stream()])
    client = integration.instrument(make_client(api, "sync"))
    with caplog.at_level("WARNING", logger="eventlog"):
        answer = await create(client, model="gpt-4o-mini", messages=MESSAGES)
        chunks = await read_all(await create(client, model="m", messages=MESSAGES, stream=True))
    assert answer.choices[0].message.content == "The capital of France is Paris."
    assert len(chunks) == 10
    assert len([r for r in caplog.records if "no sender" in r.getMessage()]) == 1
    client.close()


def test_instrument_refuses_what_is_not_an_openai_client() -> None:
    with pytest.raises(TypeError, match=r"openai\.OpenAI"):
        integration.instrument(object())  # type: ignore[type-var]


@pytest.mark.skipif(
    importlib.util.find_spec("openai._httpx2") is None, reason="this openai does not use httpx2"
)
async def test_native_http_client_of_the_sdk_counts_retries_too(
    logged: Logged, clock: ManualClock, kind: Kind
) -> None:
    # openai 2+ builds on httpx2: its own HTTP client takes the same hooks.
    import httpx2

    api = RecordedAPI(clock, [rate_limited(), stream()], http=httpx2)
    client = integration.instrument(make_client(api, kind, max_retries=1))
    await read_all(await create(client, model="gpt-4o-mini", messages=MESSAGES, stream=True))
    (row,) = await logged.rows()
    assert (row["retries"], row["rate_limited"], row["error"]) == (1, True, None)
    assert row["chat_response"]["choices"][0]["message"]["content"].startswith("Paris")
    await close_client(client)
