"""The HTTP clients: RemoteLogger (FastChat's contract), HttpLogSender and connect().

Each test talks to a real uvicorn server on a loopback port: a small stand-in collector
that records what it receives and can answer as told (down, hanging, 401, 413, 422,
503). The port is held by a bound socket while the collector is "down", so a client
finds the connection refused there, and the collector comes back on the same port.
Exit and fork run in child Python processes. Waits are bounded waits on what the
collector has received, never sleeps that hope.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
import uvicorn
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from eventlog import Database, EventPayload, LoggerStats, ProxyLogEvent, RunStartEvent
from eventlog import remote as remote_module
from eventlog.connect import connect
from eventlog.parse import parse_entry
from eventlog.remote import (
    REMOTE_LOG_TYPE,
    THREAD_NAME,
    EmptyLogger,
    HttpLogSender,
    RemoteLogger,
    fastchat_body,
    get_remote_logger,
)
from eventlog.schema import chronicle_events, chronicle_runs

# A bound on waits that must end (a hang fails the test); never a measure of speed.
HANG = 60.0
# Retry quickly: these tests are about what is retried, not how patiently.
QUICK: dict[str, Any] = {"retry_base_delay": 0.01, "retry_max_delay": 0.05}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.body)["events"]
        return events


class Loopback:
    """An ASGI app on a real uvicorn server, on one loopback port for its life.

    Between :meth:`start` and :meth:`stop` it serves; otherwise the port is held by a
    socket that is bound but not listening, so a client's connection is refused there.
    """

    def __init__(self, app: Any, *, lifespan: Literal["on", "off"] = "off") -> None:
        self.app = app
        self.lifespan = lifespan
        self._sock = self._bind(0)
        self.port: int = self._sock.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    def start(self) -> None:
        config = uvicorn.Config(
            self.app,
            lifespan=self.lifespan,
            log_level="warning",
            ws="none",
            timeout_graceful_shutdown=5,
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + HANG
        while not server.started:  # a bounded wait for the server's own flag
            assert self._thread.is_alive(), "the server did not start"
            assert time.monotonic() < deadline, "the server did not start in time"
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(HANG)
        assert not self._thread.is_alive(), "the server did not stop"
        self._server = self._thread = None
        self._sock = self._bind(self.port)  # hold the port: down, not gone

    def close(self) -> None:
        self.stop()
        self._sock.close()


class Collector(Loopback):
    """A stand-in collector that records what it receives and answers as told.

    ``fail`` requests are answered 503 first (``accept_then_fail``: recorded as accepted,
    then answered 503, as when a response is lost); ``token`` demands a bearer token;
    ``hang`` never answers; ``max_body`` answers 413 above it; ``reject`` picks the
    indexes of a batch to answer 422 for.
    """

    def __init__(self) -> None:
        routes = [Route(p, self._receive, methods=["POST"]) for p in ("/events", "/log")]
        super().__init__(Starlette(routes=routes))
        self.requests: list[Received] = []
        self.accepted: list[Received] = []
        self.changed = threading.Condition()
        self.fail = 0
        self.accept_then_fail = 0
        self.token: str | None = None
        self.hang = False
        self.max_body: int | None = None
        self.reject: Callable[[list[dict[str, Any]]], list[int]] = lambda events: []

    def stop(self) -> None:
        self.hang = False
        super().stop()

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        status, answer = self._answer(request, body)
        received = Received(request.url.path, dict(request.headers), body, status)
        with self.changed:
            self.requests.append(received)
            if status < 300 or answer is None:
                self.accepted.append(received)
            self.changed.notify_all()
        while self.hang:  # noqa: ASYNC110 - released by stop(), from another thread
            await asyncio.sleep(0.02)
        if answer is None:
            status = 503
        if request.url.path == "/log":
            return Response(status_code=status)
        return JSONResponse(answer or {}, status_code=status)

    def _answer(self, request: Request, body: bytes) -> tuple[int, dict[str, Any] | None]:
        """(status, body); body None: accepted, but answered 503."""
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "unauthorized"}
        if self.fail:
            self.fail -= 1
            return 503, {"error": "unavailable"}
        if self.max_body is not None and len(body) > self.max_body:
            return 413, {"error": "too large"}
        events = json.loads(body)["events"] if request.url.path == "/events" else []
        bad = self.reject(events)
        if bad:
            errors = [{"index": i, "field": "data", "message": "bad"} for i in bad]
            return 422, {"errors": errors}
        if self.accept_then_fail:
            self.accept_then_fail -= 1
            return 503, None
        return 202, {"ids": [event.get("id") for event in events]}

    def wait_for(self, what: str, ready: Callable[[Collector], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: ready(self), HANG), f"waited for {what}"

    def events(self) -> list[dict[str, Any]]:
        """Every event of every accepted /events request, in order."""
        with self.changed:
            return [e for r in self.accepted if r.path == "/events" for e in r.events()]

    def wait_for_events(self, count: int) -> list[dict[str, Any]]:
        self.wait_for(f"{count} events", lambda c: len(c.events()) >= count)
        return self.events()


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback only: no proxy from the environment in between (the children too)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def collector() -> Iterator[Collector]:
    """A collector that is up."""
    made = Collector()
    made.start()
    yield made
    made.close()


@pytest.fixture
def down_collector() -> Iterator[Collector]:
    """A collector that is down until the test starts it."""
    made = Collector()
    yield made
    made.close()


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Clients a test makes: closed afterwards even if the test failed."""
    clients: list[Any] = []
    yield clients
    for client in clients:
        client.close(timeout=0)


def settled(stats: LoggerStats) -> int:
    """What the identity of the remote clients says ``sent`` must equal."""
    by = stats.dropped_by_reason
    drops = ("evicted", "unserializable", "rejected", "unauthorized", "too_large")
    return stats.written + stats.failed + stats.queued + sum(by[r] for r in drops)


def wait_until(what: str, ready: Callable[[], bool]) -> None:
    """Poll a client-side condition (its stats), bounded."""
    deadline = time.monotonic() + HANG
    while not ready():
        assert time.monotonic() < deadline, f"waited for {what}"
        time.sleep(0.01)


def wait_for_stats(
    client: HttpLogSender | RemoteLogger, what: str, ready: Callable[[LoggerStats], bool]
) -> None:
    wait_until(what, lambda: ready(client.stats()))


def client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def run_python(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``script`` in a child Python; its stdout. A hang fails, not waits forever."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=HANG,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- get_remote_logger ------------------------------------------------------------------


@pytest.fixture
def fresh_global(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """get_remote_logger() as in a new process; its logger closed afterwards."""
    monkeypatch.setattr(remote_module, "_global_logger", None)
    yield
    made = remote_module._global_logger
    if made is not None:
        made.close(timeout=0)


@pytest.mark.usefixtures("fresh_global")
def test_without_remote_logger_url_the_logger_is_empty_and_does_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REMOTE_LOGGER_URL", raising=False)
    logger = get_remote_logger()
    assert isinstance(logger, EmptyLogger)
    logger.log({"type": "chat"})
    assert logger.stats() == LoggerStats()
    assert get_remote_logger() is logger


@pytest.mark.usefixtures("fresh_global")
def test_remote_logger_url_is_read_once_and_the_logger_is_cached(
    monkeypatch: pytest.MonkeyPatch, collector: Collector
) -> None:
    monkeypatch.setenv("REMOTE_LOGGER_URL", collector.url("/events"))
    monkeypatch.setenv("REMOTE_LOGGER_TOKEN", "s3cret")
    logger = get_remote_logger()
    assert isinstance(logger, RemoteLogger)
    monkeypatch.setenv("REMOTE_LOGGER_URL", "http://127.0.0.1:1/elsewhere")
    assert get_remote_logger() is logger
    logger.log({"type": "chat"})
    assert logger.close().written == 1
    assert collector.requests[0].headers["authorization"] == "Bearer s3cret"


@pytest.mark.usefixtures("fresh_global")
def test_remote_logger_url_that_is_not_http_is_logged_once_and_logging_stays_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # FastChat calls log() inside its request handlers: a bad setting must not raise there.
    monkeypatch.setenv("REMOTE_LOGGER_URL", "localhost:9782/log")
    with caplog.at_level(logging.ERROR, logger="eventlog"):
        first = get_remote_logger()
        second = get_remote_logger()
    assert isinstance(first, EmptyLogger)
    assert second is first
    first.log({"type": "chat"})
    errors = [r for r in caplog.records if "REMOTE_LOGGER_URL ignored" in r.getMessage()]
    assert len(errors) == 1
    assert "must be an http" in errors[0].getMessage()


# -- FastChat's format ------------------------------------------------------------------


def fastchat_reference(data: dict[str, Any]) -> bytes:
    """The body FastChat's RemoteLogger posts: its flattening, then requests' json=."""
    requests = pytest.importorskip("requests")
    data = dict(data)
    for key, value in data.items():  # fastchat/serve/remote_logger.py, _send_logs
        if isinstance(value, (dict, list, tuple)):
            data[key] = json.dumps(value, ensure_ascii=False)
    body: bytes = requests.Request("POST", "http://x/", json=data).prepare().body
    return body


FASTCHAT_DATA: dict[str, Any] = {
    "tstamp": 1732300000.1234,
    "type": "chat",
    "model": "vicuna-7b",
    "gen_params": {"temperature": 0.7, "max_new_tokens": 1024, "stop": None},
    "state": {"messages": [["USER", "héllo ✓"], ["ASSISTANT", "日本語"]], "offset": 0},
    "tags": ("a", "b"),
    "empty": [],
    "ok": True,
    "ip": None,
    "count": 3,
}


def test_other_urls_get_one_post_per_event_byte_for_byte_as_fastchat(
    collector: Collector,
) -> None:
    logger = RemoteLogger(collector.url("/log"))
    data = dict(FASTCHAT_DATA)
    logger.log(data)
    logger.log({"event": "vote", "n": 1})
    stats = logger.close()
    assert (stats.sent, stats.written, stats.batches) == (2, 2, 2)
    first, second = collector.requests
    assert first.body == fastchat_reference(FASTCHAT_DATA)
    assert second.body == fastchat_reference({"event": "vote", "n": 1})
    assert first.headers["content-type"] == "application/json"
    assert data == FASTCHAT_DATA  # FastChat flattens the caller's dict in place; not here
    keys = [uuid.UUID(r.headers["idempotency-key"]) for r in (first, second)]
    assert keys[0] != keys[1]


def test_fastchat_body_converts_what_fastchat_would_crash_on() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    body = json.loads(fastchat_body({"at": when, "nested": {"at": when, "ids": {1}}}))
    assert body == {
        "at": when.isoformat(),
        "nested": json.dumps({"at": when.isoformat(), "ids": [1]}),
    }


def test_a_url_ending_in_events_gets_batches_of_generic_events(collector: Collector) -> None:
    logger = RemoteLogger(collector.url("/events"), debounce_time=HANG)
    logger.log(FASTCHAT_DATA)
    logger.log({"type": 7, "event": "vote", "tstamp": "soon", "time": "2026-01-02T03:04:05Z"})
    logger.log({"type": "run:start", "tstamp": "not a time"})  # not a typed event
    before = time.time()
    stats = logger.close()
    assert (stats.written, stats.batches) == (3, 1)
    chat, vote, other = collector.events()
    assert chat["type"] == "chat"
    assert chat["time"] == FASTCHAT_DATA["tstamp"]
    assert chat["data"] == json.loads(json.dumps(FASTCHAT_DATA))  # nested values kept whole
    assert vote["type"] == "vote"
    assert vote["time"] == "2026-01-02T03:04:05Z"
    assert other["type"] == REMOTE_LOG_TYPE
    assert other["time"] <= before
    for event in (chat, vote, other):
        assert isinstance(parse_entry(event), EventPayload)
    assert len({uuid.UUID(e["id"]) for e in (chat, vote, other)}) == 3


# -- batching -----------------------------------------------------------------------------


def test_a_full_batch_goes_at_once(collector: Collector, closing: list[Any]) -> None:
    logger = RemoteLogger(collector.url("/events"), batch_size=4, debounce_time=HANG)
    closing.append(logger)
    for i in range(8):
        logger.log({"i": i})
    events = collector.wait_for_events(8)  # long before debounce_time
    assert [len(r.events()) for r in collector.accepted] == [4, 4]
    assert [e["data"]["i"] for e in events] == list(range(8))


def test_a_batch_that_is_not_full_goes_after_debounce_time(
    collector: Collector, closing: list[Any]
) -> None:
    sender = HttpLogSender(collector.url(), batch_size=100, debounce_time=0.2)
    closing.append(sender)
    sent = [EventPayload(type="t", data={"i": i}) for i in range(3)]
    sender.send(sent)
    events = collector.wait_for_events(3)  # no close(): the time did it
    assert [e["id"] for e in events] == [str(e.id) for e in sent]
    assert not sender.closed


def test_batches_are_cut_at_max_batch_bytes(collector: Collector) -> None:
    sender = HttpLogSender(collector.url(), batch_size=100, max_batch_bytes=400, debounce_time=HANG)
    for i in range(10):
        sender.send(EventPayload(type="t", data={"text": "x" * 50, "i": i}))
    stats = sender.close()
    assert stats.written == 10
    sizes = [sum(len(json.dumps(e)) for e in r.events()) for r in collector.accepted]
    assert len(sizes) > 1
    assert max(sizes) <= 400
    assert [e["data"]["i"] for e in collector.events()] == list(range(10))


# -- the collector away ---------------------------------------------------------------------


def test_events_sent_while_the_collector_is_down_arrive_once_when_it_comes_back(
    down_collector: Collector,
) -> None:
    sender = HttpLogSender(down_collector.url(), batch_size=4, debounce_time=0.01, **QUICK)
    logger = RemoteLogger(down_collector.url("/events"), batch_size=4, debounce_time=0.01, **QUICK)
    sent = [EventPayload(type="typed", data={"i": i}) for i in range(10)]
    for i, entry in enumerate(sent):
        sender.send(entry)
        logger.log({"type": "plain", "i": i})
    for client in (sender, logger):
        wait_for_stats(client, "a failed attempt", lambda s: s.transient_failures > 0)
    assert sender.stats().queued == logger.stats().queued == 10  # kept, not dropped
    down_collector.start()
    events = down_collector.wait_for_events(20)
    typed = [e for e in events if e["type"] == "typed"]
    plain = [e for e in events if e["type"] == "plain"]
    assert [e["id"] for e in typed] == [str(e.id) for e in sent]
    assert sorted(e["data"]["i"] for e in plain) == list(range(10))
    assert len({e["id"] for e in plain}) == 10
    for client in (sender, logger):
        stats = client.close()
        assert (stats.sent, stats.written, stats.failed, stats.queued) == (10, 10, 0, 0)
        assert stats.retries > 0


def test_a_retry_carries_the_same_ids_so_the_collector_stores_them_once(
    collector: Collector,
) -> None:
    for path in ("/events", "/log"):
        collector.accept_then_fail = 1  # the answer is lost after the events arrived
        logger = RemoteLogger(collector.url(path), debounce_time=0, **QUICK)
        logger.log({"i": 1})
        stats = logger.close()
        assert (stats.written, stats.retries) == (1, 1)
    events = [r for r in collector.requests if r.path == "/events"]
    posts = [r for r in collector.requests if r.path == "/log"]
    assert events[0].events() == events[1].events()
    assert posts[0].body == posts[1].body
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]


def test_503_is_retried_until_the_collector_answers(collector: Collector) -> None:
    collector.fail = 3
    sender = HttpLogSender(collector.url(), debounce_time=0, **QUICK)
    sender.send(EventPayload(type="t"))
    stats = sender.close()
    assert (stats.written, stats.transient_failures, stats.retries) == (1, 3, 3)
    assert [r.status for r in collector.requests] == [503, 503, 503, 202]


def test_a_collector_that_never_answers_times_out_each_request_and_close_is_bounded(
    collector: Collector,
) -> None:
    collector.hang = True
    sender = HttpLogSender(
        collector.url(), debounce_time=0, timeout=0.2, close_timeout=HANG, **QUICK
    )
    sender.send([EventPayload(type="t"), EventPayload(type="t")])
    collector.wait_for("a retry after a timeout", lambda c: len(c.requests) >= 2)
    started = time.monotonic()
    stats = sender.close(timeout=0.5)
    assert time.monotonic() - started < HANG / 2  # close(timeout), not close_timeout
    assert (stats.sent, stats.written, stats.failed, stats.queued) == (2, 0, 2, 0)
    assert stats.transient_failures >= 2


def test_close_with_the_collector_down_counts_what_is_left_as_failed(
    down_collector: Collector,
) -> None:
    logger = RemoteLogger(down_collector.url("/events"), debounce_time=0, **QUICK)
    for i in range(5):
        logger.log({"i": i})
    stats = logger.close(timeout=0.2)
    assert (stats.sent, stats.written, stats.failed, stats.queued) == (5, 0, 5, 0)
    assert logger.close() == stats  # closing twice is harmless
    logger.log({"late": True})
    assert logger.stats().dropped_by_reason["closed"] == 1


# -- refusals -------------------------------------------------------------------------------


def test_401_drops_the_batch_as_unauthorized_without_retrying(collector: Collector) -> None:
    collector.token = "s3cret"
    wrong = HttpLogSender(collector.url(), token="wrong", debounce_time=HANG, **QUICK)
    wrong.send([EventPayload(type="t") for _ in range(3)])
    stats = wrong.close()
    assert stats.dropped_by_reason["unauthorized"] == 3
    assert (stats.sent, stats.written, stats.retries, settled(stats)) == (3, 0, 0, 3)
    assert [r.status for r in collector.requests] == [401]
    right = HttpLogSender(collector.url(), token="s3cret", debounce_time=HANG)
    right.send(EventPayload(type="t"))
    assert right.close().written == 1


def test_422_drops_only_the_events_it_names_and_sends_the_others(collector: Collector) -> None:
    collector.reject = lambda events: [i for i, e in enumerate(events) if e["data"].get("bad")]
    logger = RemoteLogger(collector.url("/events"), debounce_time=HANG, **QUICK)
    for i in range(3):
        logger.log({"i": i, "bad": i == 1})
    stats = logger.close()
    assert stats.dropped_by_reason["rejected"] == 1
    assert (stats.written, stats.retries, settled(stats)) == (2, 0, 3)
    assert [r.status for r in collector.requests] == [422, 202]
    assert [e["data"]["i"] for e in collector.events()] == [0, 2]


def test_413_splits_the_batch_and_drops_an_event_too_large_alone(collector: Collector) -> None:
    collector.max_body = 700
    sender = HttpLogSender(collector.url(), debounce_time=HANG, **QUICK)
    sent = [EventPayload(type="t", data={"text": "x" * 100}) for _ in range(8)]
    huge = EventPayload(type="t", data={"text": "x" * 1000})
    sender.send([*sent[:4], huge, *sent[4:]])
    stats = sender.close()
    assert (stats.written, stats.dropped_by_reason["too_large"], settled(stats)) == (8, 1, 9)
    assert [e["id"] for e in collector.events()] == [str(e.id) for e in sent]


# -- what log() and send() take ---------------------------------------------------------------


def test_log_of_what_is_not_a_dict_never_raises_and_is_counted(collector: Collector) -> None:
    logger = RemoteLogger(collector.url("/log"))
    logger.log("text")  # type: ignore[arg-type]
    logger.log(None)  # type: ignore[arg-type]
    stats = logger.close()
    assert (stats.sent, stats.dropped_by_reason["invalid"]) == (0, 2)
    assert collector.requests == []


@pytest.mark.parametrize("path", ["/log", "/events"])
def test_a_value_json_cannot_hold_is_counted_and_the_rest_delivered(
    collector: Collector, path: str
) -> None:
    logger = RemoteLogger(collector.url(path), debounce_time=HANG)
    circular: dict[str, Any] = {"i": 0}
    circular["self"] = circular
    logger.log({"loop": circular})
    logger.log({"odd": {1, 2}, "when": datetime(2026, 1, 1, tzinfo=UTC), "obj": object()})
    if path == "/log":
        logger.log({"nan": math.nan})  # FastChat's requests refuses NaN at the top level
    stats = logger.close()
    assert stats.dropped_by_reason["unserializable"] == (2 if path == "/log" else 1)
    assert (stats.written, settled(stats)) == (1, stats.sent)
    assert len(collector.accepted) == 1


def test_send_of_a_non_entry_raises_type_error(closing: list[Any]) -> None:
    sender = HttpLogSender("http://127.0.0.1:9/", debounce_time=HANG)
    closing.append(sender)
    with pytest.raises(TypeError, match="send"):
        sender.send({"type": "t"})  # type: ignore[arg-type]


def test_typed_entries_travel_in_the_wire_format(collector: Collector) -> None:
    call = ProxyLogEvent(model="gpt-4o", provider="openai", request={"q": 1}, response={"a": 2})
    run = RunStartEvent(id=uuid.uuid4(), name="job")
    sender = HttpLogSender(collector.url() + "/", debounce_time=HANG)
    assert sender.url == collector.url("/events")
    sender.send([call, run])
    assert sender.close().written == 2
    back_call, back_run = (parse_entry(e) for e in collector.events())
    assert isinstance(back_call, ProxyLogEvent)
    assert isinstance(back_run, RunStartEvent)
    assert (back_call.id, back_call.model, back_call.request) == (call.id, "gpt-4o", {"q": 1})
    assert (back_run.id, back_run.name) == (run.id, "job")


# -- bounds ---------------------------------------------------------------------------------


def test_a_full_queue_drops_the_newest_and_counts_them(down_collector: Collector) -> None:
    logger = RemoteLogger(down_collector.url("/events"), max_queue=3, debounce_time=0, **QUICK)
    for i in range(5):
        logger.log({"i": i})
    stats = logger.stats()
    assert (stats.sent, stats.queued, stats.dropped_by_reason["queue_full"]) == (3, 3, 2)
    assert logger.close(timeout=0).failed == 3


def test_drop_oldest_evicts_the_oldest_waiting(down_collector: Collector) -> None:
    sender = HttpLogSender(
        down_collector.url(), max_queue=3, overflow="drop_oldest", debounce_time=HANG
    )
    sent = [EventPayload(type="t", data={"i": i}) for i in range(5)]
    for entry in sent:
        sender.send(entry)
    assert sender.stats().dropped_by_reason["evicted"] == 2
    down_collector.start()
    stats = sender.close()
    assert (stats.sent, stats.written, settled(stats)) == (5, 3, 5)
    assert [e["id"] for e in down_collector.events()] == [str(e.id) for e in sent[2:]]


def test_block_waits_for_room_until_the_collector_takes_the_queue(
    down_collector: Collector,
) -> None:
    sender = HttpLogSender(
        down_collector.url(), max_queue=1, overflow="block", debounce_time=0, **QUICK
    )
    sender.send(EventPayload(type="first"))
    second = threading.Thread(target=sender.send, args=(EventPayload(type="second"),))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # blocked: the first is still waiting for the collector
    down_collector.start()
    second.join(HANG)
    assert not second.is_alive()
    stats = sender.close()
    assert (stats.sent, stats.written) == (2, 2)
    assert [e["type"] for e in down_collector.events()] == ["first", "second"]


async def test_send_async_waits_for_room_without_blocking_the_loop(
    down_collector: Collector,
) -> None:
    sender = HttpLogSender(
        down_collector.url(), max_queue=1, overflow="block", debounce_time=0, **QUICK
    )
    await sender.send_async(EventPayload(type="first"))
    waiting = asyncio.create_task(sender.send_async(EventPayload(type="second")))
    for _ in range(5):
        await asyncio.sleep(0)  # the loop runs while the second waits for room
    assert not waiting.done()
    down_collector.start()
    await asyncio.wait_for(waiting, HANG)
    stats = await sender.aclose()
    assert (stats.sent, stats.written) == (2, 2)


# -- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"max_batch_bytes": -1}, "max_batch_bytes must be a positive int"),
        ({"max_queue": 0}, "max_queue must be a positive int or None"),
        ({"debounce_time": -1}, "debounce_time must be a finite number"),
        ({"timeout": 0}, "timeout must be a finite number of seconds > 0"),
        ({"retry_base_delay": 2, "retry_max_delay": 1}, "retry_max_delay must be >="),
        ({"close_timeout": math.inf}, "close_timeout must be a finite number"),
        ({"overflow": "spill"}, "overflow must be one of"),
        ({"token": ""}, "token must be a non-empty string"),
    ],
)
def test_a_bad_argument_raises_value_error_naming_it_and_starts_no_thread(
    options: dict[str, Any], message: str
) -> None:
    before = client_threads()
    with pytest.raises(ValueError, match=message):
        HttpLogSender("http://127.0.0.1:9", **options)
    assert client_threads() == before


def test_base_url_gets_events_added_to_its_path_unless_it_ends_so(closing: list[Any]) -> None:
    for base, url in [
        ("http://127.0.0.1:9", "http://127.0.0.1:9/events"),
        ("http://127.0.0.1:9/v1/", "http://127.0.0.1:9/v1/events"),
        ("http://127.0.0.1:9/v1/events", "http://127.0.0.1:9/v1/events"),
        ("http://127.0.0.1:9/c?x=1", "http://127.0.0.1:9/c/events?x=1"),
    ]:
        sender = HttpLogSender(base)
        closing.append(sender)
        assert sender.url == url


def test_a_bad_url_or_close_timeout_raises_value_error_naming_it(closing: list[Any]) -> None:
    with pytest.raises(ValueError, match="base_url must be an http"):
        HttpLogSender("127.0.0.1:9")
    with pytest.raises(ValueError, match="url must be an http"):
        RemoteLogger("file:///tmp/log")
    with pytest.raises(ValueError, match="overflow must be drop_newest or drop_oldest"):
        RemoteLogger("http://127.0.0.1:9/log", overflow="block")
    with pytest.raises(TypeError, match="unexpected keyword argument 'migrate'"):
        connect("http://127.0.0.1:9", migrate=True)
    sender = HttpLogSender("http://127.0.0.1:9", debounce_time=HANG)
    closing.append(sender)
    with pytest.raises(ValueError, match="timeout must be seconds >= 0"):
        sender.close(timeout=-1)


# -- exit and fork --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/events", "/log"])
def test_exit_without_close_delivers_what_was_logged(collector: Collector, path: str) -> None:
    script = """
        from eventlog.remote import get_remote_logger
        logger = get_remote_logger()
        for i in range(20):
            logger.log({"type": "chat", "i": i})
        print(type(logger).__name__)
    """
    env = {**_child_env(), "REMOTE_LOGGER_URL": collector.url(path)}
    assert run_python(script, env=env).strip() == "RemoteLogger"
    if path == "/events":
        assert sorted(e["data"]["i"] for e in collector.events()) == list(range(20))
    else:
        assert sorted(json.loads(r.body)["i"] for r in collector.accepted) == list(range(20))


def test_a_forked_child_sends_its_own_events_and_none_of_the_parents(
    collector: Collector,
) -> None:
    script = """
        import json, os, sys
        from eventlog import EventPayload
        from eventlog.remote import HttpLogSender
        sender = HttpLogSender(sys.argv[1], debounce_time=60)
        sender.send(EventPayload(type="parent-before-fork"))  # still queued at the fork
        pid = os.fork()
        if pid == 0:
            sender.send(EventPayload(type="child"))
            stats = sender.close()
            os._exit(0 if (stats.sent, stats.written) == (1, 1) else 3)
        _, status = os.waitpid(pid, 0)
        sender.send(EventPayload(type="parent-after-fork"))
        stats = sender.close()
        print(json.dumps([os.waitstatus_to_exitcode(status), stats.sent, stats.written]))
    """
    out = run_python(script, collector.url(), env=_child_env())
    assert json.loads(out) == [0, 2, 2]
    kinds = sorted(e["type"] for e in collector.events())
    assert kinds == ["child", "parent-after-fork", "parent-before-fork"]


def _child_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTE_LOGGER")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env


# -- connect() ------------------------------------------------------------------------------


def test_connect_picks_http_logsender_for_http_urls(collector: Collector) -> None:
    with connect(collector.url(), debounce_time=HANG) as client:
        assert isinstance(client, HttpLogSender)
        client.send(EventPayload(type="t"))
    assert client.closed
    assert client.stats().written == 1


async def test_connect_to_a_database_logs_in_process_with_the_same_interface(
    tmp_path: Path,
) -> None:
    client = connect(tmp_path / "events.db", migrate=True, debounce_time=0.01)
    client.send(EventPayload(type="t"))
    await client.send_async(EventPayload(type="t"))
    stats = await client.aclose()
    assert (stats.sent, stats.written) == (2, 2)
    assert client.closed


def test_connect_refuses_a_url_of_neither_kind() -> None:
    with pytest.raises(ValueError, match=r"url must be http\(s\)://"):
        connect("ftp://example.invalid/x")


# -- end to end: the real collector, a real database ------------------------------------------


async def test_every_client_delivers_to_eventlog_serve_exactly_once_after_an_outage(
    db: Database, db_url: str, backend: str
) -> None:
    server_module = pytest.importorskip("eventlog.server")
    collector = Loopback(server_module.create_app(db_url), lifespan="on")
    try:
        typed = HttpLogSender(collector.url(), batch_size=7, debounce_time=0.01, **QUICK)
        batched = RemoteLogger(collector.url("/v1/events"), batch_size=7, **QUICK)
        flat = RemoteLogger(collector.url("/log"), **QUICK)
        generic = [EventPayload(type="e2e-typed", data={"i": i}) for i in range(20)]
        call = ProxyLogEvent(model="gpt-4o", provider="openai", request={"q": 1})
        run = RunStartEvent(id=uuid.uuid4(), name="e2e")
        typed.send([*generic, call, run])
        for i in range(20):  # while the collector is down
            batched.log({"type": "e2e-batched", "i": i, "nested": {"deep": [i]}})
            flat.log({"type": "e2e-flat", "i": i, "nested": {"deep": [i]}})
        clients: list[HttpLogSender | RemoteLogger] = [typed, batched, flat]
        for client in clients:
            await asyncio.to_thread(wait_for_stats, client, "a retry", lambda s: s.retries > 0)
        collector.start()
        for client in clients:
            await asyncio.to_thread(wait_for_stats, client, "delivery", lambda s: not s.queued)
        typed.send(generic[0])  # sent again, as a retry after a lost answer would
        for client in clients:
            stats = await client.aclose()
            assert (stats.failed, stats.dropped) == (0, 0)
    finally:
        collector.close()  # the collector writes everything it acknowledged
    async with db.engine.connect() as conn:
        found = (
            await conn.execute(
                select(
                    chronicle_events.c.id, chronicle_events.c.event_type, chronicle_events.c.meta
                )
            )
        ).all()
        runs = (await conn.execute(select(chronicle_runs.c.id))).scalars().all()
    by_type: dict[str, list[Any]] = {}
    for event_id, kind, meta in found:
        by_type.setdefault(kind, []).append((event_id, meta))
    assert sorted(i for i, _ in by_type["e2e-typed"]) == sorted(e.id for e in generic)
    assert [i for i, _ in by_type[call.event_type]] == [call.id]
    assert runs == [run.id]
    for kind in ("e2e-batched", "e2e-flat"):
        metas = sorted((m for _, m in by_type[kind]), key=lambda m: m["i"])
        assert metas == [{"type": kind, "i": i, "nested": {"deep": [i]}} for i in range(20)], (
            backend
        )
