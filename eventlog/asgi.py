"""An ASGI middleware that gives each HTTP request an id and records it as an event.

::

    app = FastAPI()
    app.add_middleware(RequestContextMiddleware, sender=sender)

For each HTTP request, :class:`RequestContextMiddleware`

- takes the request id from the ``X-Request-ID`` header when it is well-formed (1 to 128
  of ``A-Z a-z 0-9 . _ : -``), else makes a new one (a UUIDv7, as 32 hex digits);
- sets it for the request's duration (:func:`eventlog.context.get_request_id`), where
  every log line (:mod:`eventlog.logs`) and every ``log`` event picks it up;
- echoes it in the response's ``X-Request-ID`` header;
- when the response is done, sends an ``http_request`` event (see
  :class:`RequestContextMiddleware`) and logs one line on the ``eventlog.asgi`` logger
  (INFO; WARNING when slower than ``SLOW_OPERATION_THRESHOLD`` seconds).

It is a plain ASGI middleware (no ``BaseHTTPMiddleware``): streaming responses stream,
the duration covers the whole body, and the app reads the request body itself.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import unquote_plus

from eventlog.context import reset_request_id, set_request_id
from eventlog.events import EventPayload, error_to_json
from eventlog.ids import uuid7
from eventlog.logs import _default_sender, _env_flag, _env_number

if TYPE_CHECKING:
    from eventlog.events import ProxyLogEntry

__all__ = ["REQUEST_EVENT_TYPE", "SENSITIVE_HEADERS", "RequestContextMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_EVENT_TYPE: Final = "http_request"

SENSITIVE_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",  # Azure OpenAI's
        "x-goog-api-key",  # Gemini's
        "x-amz-security-token",
    }
)
"""Request headers never put in an event (neither name nor value)."""

_SECRET_NAME: Final = re.compile(
    r"key|token|secret|auth|session|signature|password|passwd|credential|cookie", re.I
)
"""Other headers, and query parameters, whose names say they carry a secret: kept with
their value replaced by :data:`REDACTED`."""
REDACTED: Final = "[redacted]"

_VALID_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access_logger = logging.getLogger("eventlog.asgi")
"""One line per request. An ``eventlog.*`` logger, so :class:`~eventlog.EventLogHandler`
does not send it again: the ``http_request`` event already holds it."""


class _Sender(Protocol):
    def send(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None: ...


class RequestContextMiddleware:
    """Request ids, the ``X-Request-ID`` header and an ``http_request`` event per request.

    The event (an :class:`~eventlog.EventPayload` of type ``http_request``) has ``data``:
    ``method``, ``path``, ``query`` (the raw query string, or None), ``status`` (500 when
    the app raised before answering, None when the client went away first),
    ``duration_ms``, ``request_id``, ``client`` (``"host:port"`` or None), ``headers`` (the
    request's, lower-case, without ``Authorization``, ``Proxy-Authorization``,
    ``Cookie``, ``Set-Cookie``, ``X-API-Key`` and ``api-key``), ``slow`` (true when it
    took longer than ``SLOW_OPERATION_THRESHOLD`` seconds, default 2.0) and, when
    ``LOG_REQUEST_BODY`` is true, ``body_preview``: the body's first
    ``MAX_BODY_SIZE_LOG`` characters (default 1000; UTF-8, undecodable bytes replaced).
    An exception the app raised is the event's ``error``. The environment is read once,
    here.

    The preview is read before the app runs, up to what it needs (at most 4 bytes per
    character), and replayed to the app unchanged, followed by the rest of the body as
    it arrives.

    ``sender`` is anything with ``send(entry)``; with None, the one set with
    :func:`eventlog.set_default_sender` (looked up per request; no event without one).
    WebSocket connections get a request id too, but no event; lifespan passes through.
    """

    def __init__(
        self, app: ASGIApp, *, sender: _Sender | None = None, header: str = "X-Request-ID"
    ) -> None:
        if not isinstance(header, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", header):
            raise ValueError(f"header must be an HTTP header name, got {header!r}")
        self.app = app
        self.sender = sender
        self.header = header
        self._header_key = header.lower().encode("latin-1")
        self.log_body = _env_flag("LOG_REQUEST_BODY")
        self.max_body_chars = int(_env_number("MAX_BODY_SIZE_LOG", 1000, integer=True))
        self.slow_threshold = _env_number("SLOW_OPERATION_THRESHOLD", 2.0)

    def _request_id(self, scope: Scope) -> str:
        for key, value in scope.get("headers", ()):
            if key == self._header_key:
                text: str = value.decode("latin-1")
                if _VALID_ID.fullmatch(text):
                    return text
                break
        return uuid7().hex

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = self._request_id(scope)
        token = set_request_id(request_id)
        try:
            if kind == "http":
                await self._http(scope, receive, send, request_id)
            else:
                await self.app(scope, receive, send)
        finally:
            reset_request_id(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        start = time.perf_counter()
        preview: str | None = None
        if self.log_body:
            receive, preview = await self._read_preview(receive)
        status: int | None = None
        header = (self._header_key, request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != header[0]]
                headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException as err:
            error = err
            raise
        finally:
            duration = time.perf_counter() - start
            if error is not None and status is None and isinstance(error, Exception):
                status = 500
            self._record(scope, request_id, status, duration, preview, error)

    async def _read_preview(self, receive: Receive) -> tuple[Receive, str]:
        """Read the body's first messages for the preview; a receive that replays them."""
        wanted = self.max_body_chars * 4  # UTF-8: at most 4 bytes a character
        buffered: list[Message] = []
        body = bytearray()
        while len(body) < wanted:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        preview = bytes(body[:wanted]).decode("utf-8", "replace")[: self.max_body_chars]

        async def replay() -> Message:
            if buffered:
                return buffered.pop(0)
            return await receive()

        return replay, preview

    def _record(
        self,
        scope: Scope,
        request_id: str,
        status: int | None,
        duration: float,
        preview: str | None,
        error: BaseException | None,
    ) -> None:
        """Send the request's event and log its line; never raises."""
        try:
            duration_ms = round(duration * 1000, 3)
            slow = duration > self.slow_threshold
            method = scope.get("method", "")
            path = scope.get("path", "")
            client = scope.get("client")
            query = _safe_query(scope.get("query_string", b"").decode("latin-1")) or None
            data: dict[str, Any] = {
                "method": method,
                "path": path,
                "query": query,
                "status": status,
                "duration_ms": duration_ms,
                "request_id": request_id,
                "client": None if not client else f"{client[0]}:{client[1]}",
                "headers": _safe_headers(scope),
                "slow": slow,
            }
            if preview is not None:
                data["body_preview"] = preview
            sender = self.sender if self.sender is not None else _default_sender()
            if sender is not None:
                sender.send(
                    EventPayload(
                        type=REQUEST_EVENT_TYPE,
                        data=data,
                        error=None if error is None else error_to_json(error),
                    )
                )
            if slow:
                access_logger.warning(
                    "slow request: %s %s -> %s in %.1f ms (SLOW_OPERATION_THRESHOLD %s s)",
                    method,
                    path,
                    status,
                    duration_ms,
                    self.slow_threshold,
                )
            else:
                access_logger.info("%s %s -> %s in %.1f ms", method, path, status, duration_ms)
        except Exception:
            from eventlog._log import logger

            logger.exception("eventlog: could not record the request %s", request_id)


def _safe_headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        name = key.decode("latin-1").lower()
        if name in SENSITIVE_HEADERS:
            continue
        text = REDACTED if _SECRET_NAME.search(name) else value.decode("latin-1")
        headers[name] = f"{headers[name]}, {text}" if name in headers else text
    return headers


def _safe_query(query: str) -> str:
    """The query string with the values of secret-looking parameters (``api_key``,
    ``access_token``, ``sig``...) replaced by :data:`REDACTED`."""
    if not query:
        return query
    parts = []
    for part in query.split("&"):
        name, equals, _value = part.partition("=")
        secret = _SECRET_NAME.search(unquote_plus(name)) or unquote_plus(name).lower() == "sig"
        parts.append(f"{name}={REDACTED}" if equals and secret else part)
    return "&".join(parts)
