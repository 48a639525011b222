"""The collector: an ASGI app that takes events over HTTP and logs them to a database.

:func:`create_app` builds it (``eventlog serve`` runs it on uvicorn). Routes, each also
under ``/v1/``::

    POST /event    one event in chronicle's format (workflow event, generic, LLM call)
    POST /events   {"events": [...]}
    POST /log      one flat JSON object, as FastChat's RemoteLogger posts it
    GET  /healthz  database reachable, logger running, its stats (no token needed)
    GET  /metrics  Prometheus text
    GET  /openapi.json
    GET  /               the dashboard (HTML; see :mod:`eventlog.page`), and /runs/{run_id}

A POST answers ``202 {"ids": [...]}`` once its events are queued, one id per event in
request order; with ``?wait=true``, ``201`` once they are committed, or ``503`` if they
are not within ``wait_timeout`` seconds. A request is taken whole or refused whole
(``400`` not JSON, ``413`` too large, ``415`` not JSON by its content type, ``422``
invalid events, ``401`` no or wrong bearer token, ``503`` queue full or stopping).

``?wait=true`` is exact, not a guess: the writer writes through :class:`_Commits`, which
resolves a request's future when the last of its entries is in a committed batch (or
fails it when the database refuses one for good), so nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import ipaddress
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import asdict
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import orjson
import uvicorn
from sqlalchemy import text
from sqlalchemy.engine import URL
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventlog import __version__, page
from eventlog._checks import positive_int, seconds
from eventlog.channel import LogSender
from eventlog.context import leave_scope
from eventlog.database import Database, ProxyDatabase, normalize_url, open_database
from eventlog.events import ProxyLogEntry
from eventlog.ingest import (
    BadRequest,
    EventError,
    InvalidEvents,
    entry_id,
    fastchat_event,
    header_metadata,
    idempotency_key,
    load_json,
    parse_batch,
)
from eventlog.metrics import CONTENT_TYPE, Metrics
from eventlog.openapi import openapi_schema
from eventlog.stats import LoggerStats
from eventlog.writer import start_database_logger

if TYPE_CHECKING:
    from eventlog.deadletters import DeadLetter

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "bind_socket",
    "create_app",
    "is_loopback",
    "serve",
]

DEFAULT_MAX_BODY_BYTES: Final = 10 << 20
DEFAULT_PORT: Final = 9782
TOKEN_ENV: Final = "EVENTLOG_API_TOKEN"

# Bodies larger than this are parsed in a thread, so one big batch does not stall the
# other requests on the loop for the tens of milliseconds its parsing takes.
_PARSE_IN_THREAD_BYTES: Final = 1 << 20
_HEALTH_TIMEOUT: Final = 2.0
_RETRY_AFTER: Final = {"Retry-After": "1"}
_ROUTES: Final = frozenset(
    f"{prefix}/{name}" for prefix in ("", "/v1") for name in ("event", "events", "log")
) | {"/healthz", "/metrics", "/openapi.json"}
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off", ""})
# start_database_logger's options that the collector decides itself.
_OWN_OPTIONS: Final = frozenset({"db", "max_queue", "overflow"})


def create_app(
    url: str | URL | os.PathLike[str] | None = None,
    *,
    db: ProxyDatabase | None = None,
    migrate: bool = False,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    wait_timeout: float = 30.0,
    max_queue: int | None = 100_000,
    batch_size: int = 100,
    debounce_time: float | timedelta = 0.1,
    **logger_options: Any,
) -> Starlette:
    """The collector as an ASGI app; its lifespan starts the logger and closes it.

    Give the database as ``url`` (opened at startup, with ``migrate=True`` brought up to
    date, closed at shutdown) or as an open ``db`` that stays yours to close. ``token``:
    the bearer token every route but ``GET /healthz`` requires (None: no auth); the
    dashboard's pages also take it once as ``?token=`` and then a session cookie.
    ``max_body_bytes`` caps a request body (413 past it). ``wait_timeout`` bounds a
    ``?wait=true`` request's wait for its commit. ``max_queue`` bounds the entries
    accepted and not yet written: a request that would pass it gets 503 (and the
    client retries) instead of an acknowledgement for entries that would be dropped.
    ``batch_size``, ``debounce_time`` (short by default, so that ``?wait=true`` answers
    quickly) and ``logger_options`` (``spool_dir``, ``close_timeout``, ...) go to
    :func:`~eventlog.start_database_logger`.

    Mounted inside another Starlette app, the collector's lifespan does not run by
    itself: enter ``app.router.lifespan_context(app)`` in the outer app's lifespan.
    """
    if (url is None) == (db is None):
        raise ValueError(
            "create_app() takes the database as url (a database URL) or as db (an open "
            "database), exactly one of them"
        )
    if url is not None:
        normalize_url(url)  # a bad URL fails here, not at startup
    if db is not None:
        if not callable(getattr(db, "write_log_batch", None)):
            raise TypeError(
                f"db must have an async write_log_batch(entries), got {type(db).__name__}"
            )
        if migrate:
            raise ValueError("migrate applies to url only: migrate the db you pass yourself")
    if token is not None and (
        not isinstance(token, str) or not token or not token.isprintable() or " " in token
    ):
        raise ValueError("token must be a non-empty string without spaces, or None")
    positive_int("max_body_bytes", max_body_bytes)
    seconds("wait_timeout", wait_timeout, positive=True)
    positive_int("max_queue", max_queue, optional=True)
    known = set(inspect.signature(start_database_logger).parameters) - _OWN_OPTIONS
    for name in logger_options:
        if name == "overflow":
            raise TypeError(
                "create_app() does not take overflow: a request that would pass max_queue "
                "is answered 503, so the client keeps its events and retries"
            )
        if name not in known:
            raise TypeError(f"create_app() got an unexpected keyword argument {name!r}")

    collector = _Collector(
        url=url,
        db=db,
        migrate=migrate,
        wait_timeout=float(wait_timeout),
        max_queue=max_queue,
        logger_options={
            "batch_size": batch_size,
            "debounce_time": debounce_time,
            **logger_options,
        },
    )
    schema = orjson.dumps(
        openapi_schema(auth=token is not None, max_body_bytes=max_body_bytes, version=__version__)
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await collector.start()
        try:
            yield
        finally:
            await collector.stop()

    async def openapi(request: Request) -> Response:
        return Response(schema, media_type="application/json")

    async def metrics(request: Request) -> Response:
        return Response(collector.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    routes = [
        Route(path, _ingest_endpoint(kind, collector, max_body_bytes), methods=["POST"])
        for prefix in ("", "/v1")
        for kind, path in (
            ("event", f"{prefix}/event"),
            ("events", f"{prefix}/events"),
            ("log", f"{prefix}/log"),
        )
    ]
    routes += [
        Route("/healthz", collector.health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    # The dashboard reads the database the collector writes to, once it is open.
    routes += page.page_routes(lambda: collector._db)
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Guard, collector=collector, token=token)],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.collector = collector
    return app


# -- the collector's state -------------------------------------------------------------


class _Refused(Exception):
    """The events cannot be taken now (``status`` 503, or 413 for more than the queue
    can ever hold); the client keeps them and may retry."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Collector:
    """The database, the logger and the metrics of one app, from startup to shutdown."""

    def __init__(
        self,
        *,
        url: str | URL | os.PathLike[str] | None,
        db: ProxyDatabase | None,
        migrate: bool,
        wait_timeout: float,
        max_queue: int | None,
        logger_options: dict[str, Any],
    ) -> None:
        self._url = url
        self._given = db
        self._db: ProxyDatabase | None = None  # while running: the given one or ours
        self._owned: Database | None = None
        self._migrate = migrate
        self._wait_timeout = wait_timeout
        self._max_queue = max_queue
        self._bytes_bound = logger_options.get("max_queue_bytes") is not None
        self._logger_options = logger_options
        self.sender: LogSender | None = None
        self.writer: asyncio.Task[None] | None = None
        self.commits: _Commits | None = None
        self.final_stats: LoggerStats | None = None
        self.metrics = Metrics(self.stats)

    def stats(self) -> LoggerStats | None:
        return None if self.sender is None else self.sender.stats()

    async def start(self) -> None:
        """Open the database (when given a URL) and start the logger; again after a
        stop, as a host that restarts the lifespan expects."""
        db = self._given
        if db is None:
            assert self._url is not None
            db = self._owned = await open_database(self._url, migrate=self._migrate)
        self._db = db
        try:
            self.commits = _Commits(db)
            self.sender, self.writer = start_database_logger(
                self.commits, max_queue=self._max_queue, **self._logger_options
            )
        except BaseException:
            await self._close_owned()
            raise

    async def stop(self) -> None:
        """Write everything acknowledged (within the logger's ``close_timeout``), then
        close the database if it is ours."""
        try:
            if self.sender is not None:
                self.final_stats = await self.sender.aclose()
        finally:
            if self.commits is not None:
                self.commits.fail_all("the collector stopped before they were written")
            self._db = None
            await self._close_owned()

    async def _close_owned(self) -> None:
        owned, self._owned = self._owned, None
        if owned is not None:
            await owned.close()

    def accept(self, entries: list[ProxyLogEntry], *, wait: bool) -> _Ack | None:
        """Queue ``entries`` as one message, all or none; with ``wait``, the ack that
        tells when they are committed. Runs on the loop's thread with no await, so what
        is checked before ``send()`` (and compared after it) concerns this message only."""
        sender, commits = self.sender, self.commits
        if sender is None or commits is None:
            raise _Refused(503, "the collector is not running (its lifespan has not started)")
        if sender.closed:
            raise _Refused(503, "the collector is stopping")
        limit = self._max_queue
        if limit is not None:
            if len(entries) > limit:
                raise _Refused(
                    413,
                    f"{len(entries)} events are more than the collector's queue holds ({limit})",
                )
            if sender.stats().queued + len(entries) > limit:
                raise _Refused(503, f"the queue is full ({limit} entries wait for the database)")
        # max_queue_bytes cannot be checked ahead (the logger sizes entries itself): past
        # it the logger refuses the message whole, and the client is told nothing was taken.
        dropped = sender.stats().dropped if self._bytes_bound else 0
        ack = commits.track(entries) if wait and entries else None
        sender.send(entries)
        if self._bytes_bound and sender.stats().dropped != dropped:
            if ack is not None:
                commits.forget(ack)
            raise _Refused(503, "the queue is full (max_queue_bytes)")
        return ack

    async def committed(self, ack: _Ack) -> tuple[int, str] | None:
        """None once the entries are committed, else (status, why not)."""
        assert self.commits is not None
        try:
            refused = await asyncio.wait_for(asyncio.shield(ack.future), self._wait_timeout)
        except TimeoutError:
            return (
                503,
                f"not committed within {self._wait_timeout:g} s (the database is slow or "
                "away); they stay queued and will be written. To send them again without "
                "duplicates, give each event its id from `ids` (for /log: the "
                "Idempotency-Key header)",
            )
        finally:
            self.commits.forget(ack)
        if refused is None:
            return None
        # Refused for good: the request's other events are committed; a retry would
        # duplicate them and be refused again. Not a 5xx: nothing to retry.
        return 422, f"{refused}; the request's other events are written"

    async def health(self, request: Request) -> Response:
        """``GET /healthz``: 200 when the database answers and the logger runs."""
        database, error = await self._ping()
        stats = self.stats()
        running = (
            self.sender is not None
            and not self.sender.closed
            and self.writer is not None
            and not self.writer.done()
        )
        healthy = running and database != "unreachable"
        body: dict[str, Any] = {
            "status": "ok" if healthy else "unavailable",
            "database": database,
            "logger": None if stats is None else asdict(stats),
        }
        if error is not None:
            body["error"] = error
        elif not running:
            body["error"] = "the logger is not running"
        return _json(200 if healthy else 503, body)

    async def _ping(self) -> tuple[str, str | None]:
        engine = getattr(self._db, "engine", None)
        if engine is None:
            return "not checked", None
        try:
            async with asyncio.timeout(_HEALTH_TIMEOUT), engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as err:
            return "unreachable", _one_line(f"{type(err).__name__}: {err}")
        return "ok", None


class _Ack:
    """One ``?wait=true`` request's entries: resolved with None when the last is
    committed, or with the reason when one of them will not be."""

    __slots__ = ("entries", "future", "left")

    def __init__(self, entries: list[ProxyLogEntry]) -> None:
        self.entries = entries
        self.left = len(entries)
        self.future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def settle(self, error: str | None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_result(error)
            return
        self.left -= 1
        if not self.left:
            self.future.set_result(None)


class _Commits:
    """The database as the collector's writer sees it: every batch it commits settles
    the waiting requests' entries that it holds; an entry refused for good (set aside as
    a dead letter) fails its request. Entries are matched by kind and id, then by
    identity or, for an entry read back from the spool (a copy), by equality."""

    def __init__(self, db: ProxyDatabase) -> None:
        self._db = db
        self._waiting: dict[tuple[type, uuid.UUID], list[tuple[ProxyLogEntry, _Ack]]] = {}

    def _pop(self, entry: ProxyLogEntry) -> _Ack | None:
        key = (type(entry), entry_id(entry))
        candidates = self._waiting.get(key)
        if not candidates:
            return None
        for i, (waiting, ack) in enumerate(candidates):
            if waiting is entry or waiting == entry:
                del candidates[i]
                if not candidates:
                    del self._waiting[key]
                return ack
        return None

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._db, name)  # concurrent_writes, engine, dialect, ...
        if name == "write_dead_letters":
            return self._through_dead_letters(value)
        return value

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> int | None:
        repaired = await self._db.write_log_batch(entries)
        if self._waiting:
            for entry in entries:
                ack = self._pop(entry)
                if ack is not None:
                    ack.settle(None)
        return repaired

    def _through_dead_letters(
        self, store: Callable[[Sequence[DeadLetter]], Awaitable[None]]
    ) -> Callable[[Sequence[DeadLetter]], Awaitable[None]]:
        async def write_dead_letters(letters: Sequence[DeadLetter]) -> None:
            for letter in letters:
                ack = self._pop(letter.entry)
                if ack is not None:
                    ack.settle(f"refused by the database: {letter.error}")
            await store(letters)

        return write_dead_letters

    def track(self, entries: list[ProxyLogEntry]) -> _Ack:
        ack = _Ack(entries)
        for entry in entries:
            key = (type(entry), entry_id(entry))
            self._waiting.setdefault(key, []).append((entry, ack))
        return ack

    def forget(self, ack: _Ack) -> None:
        """Stop tracking ``ack``'s entries (answered, timed out, or the client left)."""
        for entry in ack.entries:
            key = (type(entry), entry_id(entry))
            candidates = self._waiting.get(key)
            if candidates:
                candidates[:] = [item for item in candidates if item[1] is not ack]
                if not candidates:
                    del self._waiting[key]

    def fail_all(self, reason: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for candidates in waiting.values():
            for _, ack in candidates:
                ack.settle(reason)


# -- requests --------------------------------------------------------------------------


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _json(status, {"error": message}, headers)


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (404, 405) as JSON, like every other error."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path} (the routes: /openapi.json)"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
    else:
        message = exc.detail
    return _error(exc.status_code, message, exc.headers)


class _BodyTooLarge(Exception):
    pass


class _BadMediaType(Exception):
    pass


def _check_media_type(headers: Headers) -> None:
    content_type = headers.get("content-type")
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        shown = "no Content-Type" if content_type is None else f"Content-Type {content_type!r}"
        raise _BadMediaType(f"the body must be application/json, got {shown}")
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise _BadMediaType(f"Content-Encoding {encoding!r} is not supported; send the body as is")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to pass ``limit``: by its
    Content-Length before reading, else by counting while it streams in."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise _BodyTooLarge(f"the body of {int(length)} bytes is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _wait_param(request: Request) -> bool:
    values = request.query_params.getlist("wait")
    if not values:
        return False
    value = values[-1].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"query parameter wait must be true or false, got {values[-1]!r}")


def _entries(kind: str, body: bytes, headers: Headers) -> list[ProxyLogEntry]:
    """The request's entries, or the reason there are none (BadRequest, InvalidEvents)."""
    value = load_json(body)
    if kind == "log":
        return [fastchat_event(value, idempotency_key(headers))]
    metadata = header_metadata(headers)
    if kind == "event":
        return parse_batch([value], metadata, indexed=False)
    if not isinstance(value, dict):
        raise InvalidEvents([EventError(None, "", 'must be a JSON object {"events": [...]}')])
    events = value.get("events")
    if not isinstance(events, list):
        problem = "is required" if events is None else "must be an array of events"
        raise InvalidEvents([EventError(None, "events", problem)])
    return parse_batch(events, metadata)


def _ingest_endpoint(
    kind: str, collector: _Collector, max_body_bytes: int
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        leave_scope()  # posted events keep their own run ids, never this process's
        try:
            _check_media_type(request.headers)
            body = await _read_body(request, max_body_bytes)
            wait = _wait_param(request)
            if len(body) > _PARSE_IN_THREAD_BYTES:
                entries = await asyncio.to_thread(_entries, kind, body, request.headers)
            else:
                entries = _entries(kind, body, request.headers)
            ack = collector.accept(entries, wait=wait)
        except _BadMediaType as err:
            return _error(415, str(err))
        except _BodyTooLarge as err:
            return _error(413, str(err))
        except BadRequest as err:
            return _error(400, str(err))
        except InvalidEvents as err:
            return _json(422, {"errors": [error.to_json() for error in err.errors]})
        except _Refused as err:
            return _error(err.status, str(err), _RETRY_AFTER if err.status == 503 else None)
        except ClientDisconnect:
            # Gone before its body was in: nothing taken, and no one to answer. 499 is
            # the code proxies log for it (nginx's "client closed request").
            return Response(status_code=499)
        ids = [str(entry_id(entry)) for entry in entries]
        if ack is None:
            return _json(201 if wait else 202, {"ids": ids})
        problem = await collector.committed(ack)
        if problem is None:
            return _json(201, {"ids": ids})
        status, why = problem
        return _json(status, {"error": why, "ids": ids}, _RETRY_AFTER if status == 503 else None)

    return endpoint


def _route_path(scope: Scope) -> str:
    """The path inside this app (without the prefix it is mounted at)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


class _Guard:
    """Outermost layer of the app: the bearer token, and the HTTP metrics of every
    answer (401s and 404s included, under the route ``"unmatched"`` for unknown paths
    so that scanners cannot grow the metrics without bound)."""

    def __init__(self, app: ASGIApp, collector: _Collector, token: str | None) -> None:
        self._app = app
        self._metrics = collector.metrics
        self._token = None if token is None else token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        path = _route_path(scope)
        status = 500  # unless an answer starts

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            open_route = path == "/healthz" and scope["method"] in ("GET", "HEAD")
            if self._token is not None and not open_route:
                refusal: Response | None = None
                if page.is_page(scope, path):
                    # The dashboard also takes ?token= once, then its session cookie.
                    refusal = page.sign_in(scope, self._token, header_ok=self._authorized(scope))
                elif not self._authorized(scope):
                    refusal = _error(
                        401, "a bearer token is required", {"WWW-Authenticate": "Bearer"}
                    )
                if refusal is not None:
                    await refusal(scope, receive, send_and_note)
                    return
            await self._app(scope, receive, send_and_note)
        finally:
            route = path if path in _ROUTES else page.metrics_route(path) or "unmatched"
            self._metrics.observe(route, status, time.perf_counter() - started)

    def _authorized(self, scope: Scope) -> bool:
        assert self._token is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                # compare_digest: the time taken does not tell how much of a guess is right
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credentials.strip(), self._token
                )
        return False


# -- running it: ``eventlog serve`` ----------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port), bound before the
    server starts so that a port in use is one clear error, and port 0 can be told."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as err:
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror}") from err
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    return sock


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(
    app: Starlette, sock: socket.socket, *, access_log: bool = False
) -> LoggerStats | None:
    """Run ``app`` on uvicorn on ``sock`` until SIGTERM or Ctrl-C; then stop accepting,
    finish the requests under way, write everything acknowledged, and return the
    logger's final stats. RuntimeError if the app did not start."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=access_log,
        timeout_graceful_shutdown=30,
        server_header=False,
    )
    server = _Server(config)
    await server.serve(sockets=[sock])
    if not server.started:
        raise RuntimeError("the collector did not start (see the messages above)")
    collector: _Collector = app.state.collector
    if collector.final_stats is None and collector.sender is not None:
        # A second signal makes uvicorn skip the lifespan's shutdown: what was
        # acknowledged must still be written before the database is closed.
        await collector.stop()
    return collector.final_stats


class _Server(uvicorn.Server):
    """uvicorn's server, except that the SIGTERM or Ctrl-C it shut down for is not
    raised again afterwards: uvicorn re-raises it, so the process would die by the
    signal (or a KeyboardInterrupt) instead of exiting 0 after its flush."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
