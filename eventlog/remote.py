"""Clients that ship events over HTTP to a collector (``eventlog serve``), never blocking.

Two clients share one machinery:

- :func:`get_remote_logger` keeps FastChat's contract: it reads ``REMOTE_LOGGER_URL``
  once and returns a cached :class:`RemoteLogger` (or an :class:`EmptyLogger` when it is
  unset) whose ``log(dict)`` never blocks and never raises. A URL whose path ends in
  ``/events`` gets batches of generic events in the collector's format; any other URL gets
  one POST per dict, flattened exactly as FastChat's own logger does, so a plain FastChat
  collector still works.
- :class:`HttpLogSender` has the in-process :class:`~eventlog.LogSender`'s interface
  (``send``, ``send_async``, ``close``, ``aclose``, ``stats``) and ships typed entries to
  ``{base_url}/events``, so an application moves between in-process and remote logging
  by configuration alone (see :func:`eventlog.connect`).

The caller's thread only appends to a deque under a lock, and wakes the client's thread
only when it sleeps waiting for exactly that entry (the first one, or the one that fills a
batch). A daemon thread of the client's own does the posting, so the same client serves
sync code (FastChat, Flask) and async code alike, and a slow collector never holds up an
event loop.

Delivery: each event is settled exactly once in :meth:`stats` (``written``, ``failed``
or a reason in ``dropped_by_reason``). A request that fails because the collector is
away (connection refused or reset, a timeout, 408, 425, 429, 5xx) is retried with
exponential backoff and jitter, for as long as the application runs and until the close
deadline after ``close()``. Events get their id when they are queued (a post in
FastChat's format carries it as its ``Idempotency-Key`` header), and the collector stores
an id once, so the retry of a request that did arrive stores nothing twice. A request
the collector refuses is never retried as it is: 401/403 drops its events as
``"unauthorized"``, 413 splits the batch (a single event too large is ``"too_large"``),
and 422 drops only the events it names as ``"rejected"`` (a bug in what the client
sent) and sends the others again.

Exit and fork work as in :mod:`eventlog.background`: an exit hook closes every open
client within its ``atexit_timeout`` (in a ``multiprocessing`` child too), and a forked
child that uses a client gets a queue, thread and connection of its own on first use,
leaving what the parent had queued for the parent to send (the pid check that
OpenTelemetry's batch processor makes).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import enum
import json
import math
import os
import random
import statistics
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Self, TypedDict, Unpack
from urllib.parse import urlsplit, urlunsplit

import httpx

from eventlog import context as _context
from eventlog._checks import positive_int as _count
from eventlog._checks import seconds as _seconds
from eventlog._log import in_own_logging, logger, mark_own_logging_thread
from eventlog._process import at_exit
from eventlog.channel import _as_message
from eventlog.events import ENTRY_TYPES, ProxyLogEntry
from eventlog.exceptions import InvalidEventError
from eventlog.ids import uuid7
from eventlog.parse import LLM_EVENT_TYPE, _time, entry_to_wire
from eventlog.stats import DROP_REASONS, LoggerStats
from eventlog.types import json_dumps, json_loads

__all__ = [
    "REMOTE_DROP_REASONS",
    "REMOTE_LOG_TYPE",
    "ClientOptions",
    "EmptyLogger",
    "HttpLogSender",
    "RemoteLogger",
    "get_remote_logger",
]

THREAD_NAME: Final = "eventlog-remote"
REMOTE_LOG_TYPE: Final = "remote_log"
"""The type of a logged dict that has no usable ``type`` or ``event`` key."""

REMOTE_DROP_REASONS: Final = (
    *DROP_REASONS,
    "invalid",
    "unserializable",
    "rejected",
    "unauthorized",
    "too_large",
)
"""The in-process reasons, and the remote ones: ``log()`` of something that is not a
dict (refused at the call, not counted in ``sent``); an accepted event that could not be
encoded as JSON (a circular reference, NaN in FastChat's format); and events the
collector refused: as invalid (422, or another 4xx), for a missing or wrong token
(401/403), or as too large even alone (413). The last four are settled drops of events
counted in ``sent``: for these clients ``sent == written + failed + queued`` plus the
drops ``"evicted"``, ``"unserializable"``, ``"rejected"``, ``"unauthorized"`` and
``"too_large"``."""

Overflow = Literal["drop_newest", "drop_oldest", "block"]


class ClientOptions(TypedDict, total=False):
    """The options of both clients, with their defaults.

    - ``token`` (None): sent as ``Authorization: Bearer <token>``.
    - ``batch_size`` (100) and ``max_batch_bytes`` (1 MiB): the most events, and bytes of
      their JSON, in one request to ``/events``.
    - ``debounce_time`` (1.0 s): how long the first event of a batch that is not full
      waits for others.
    - ``timeout`` (10.0 s): each request's timeout (connect, send, answer).
    - ``retry_base_delay`` (0.1 s) and ``retry_max_delay`` (5.0 s): the pause before a
      retry doubles from the one to the other, with jitter (or is the collector's
      ``Retry-After``).
    - ``max_queue`` (10,000; None: no bound): the most events waiting, those being posted
      included. ``overflow`` says what a full queue does: ``"drop_newest"`` (the default)
      refuses the new events, ``"drop_oldest"`` pushes out the oldest not being posted,
      ``"block"`` makes the sender wait (:class:`HttpLogSender` only); all counted in
      ``stats().dropped_by_reason``.
    - ``close_timeout`` (30.0 s) and ``atexit_timeout`` (10.0 s): how long ``close()``
      and the exit hook go on retrying before what is left counts as ``failed``.
    """

    token: str | None
    batch_size: int
    max_batch_bytes: int
    debounce_time: float
    timeout: float
    retry_base_delay: float
    retry_max_delay: float
    max_queue: int | None
    overflow: Overflow
    close_timeout: float
    atexit_timeout: float


_NEVER: Final = math.inf
# os.fork() waits at most this long for the clients' threads to be between requests.
_FORK_WAIT: Final = 0.5  # the child drops the parent's client anyway
# close(timeout) waits this much longer for a request under way to time out.
_CLOSE_SLACK: Final = 1.0
_LATENCY_WINDOW: Final = 1000
_MAX_RETRY_AFTER: Final = 60.0
_OUTAGE_WARNING_EVERY: Final = 60.0
# Statuses that mean "the collector is busy or away, try again later".
_TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
# Types a logged dict cannot take: the collector would parse them as typed events.
_TYPED_EVENTS: Final = frozenset(
    {LLM_EVENT_TYPE} | {kind for cls in ENTRY_TYPES if (kind := getattr(cls, "TYPE", ""))}
)
_COUNTERS: Final = (
    "sent",
    "written",
    "batches",
    "failed_writes",
    "failed",
    "retries",
    "transient_failures",
)


# -- what goes on the wire ---------------------------------------------------------------


def _plain(value: Any) -> Any:
    """What FastChat's ``json.dumps`` fails on, made JSON the way the database columns
    make it (:func:`eventlog.types.json_default`): a datetime as ISO text, and so on."""
    return json_loads(json_dumps(value))


def fastchat_body(data: Mapping[str, Any]) -> bytes:
    """The request body FastChat's ``RemoteLogger`` posts for ``data``, byte for byte.

    FastChat turns every top-level dict, list or tuple into its ``json.dumps(value,
    ensure_ascii=False)`` text, then ``requests.post(url, json=data)`` encodes the result
    with ``json.dumps(data, allow_nan=False)`` as UTF-8. Where FastChat would fail (a
    datetime, a set) the value is converted instead. Raises ``ValueError`` or
    ``TypeError`` for what cannot be JSON (NaN at the top level, a circular reference).
    """
    flat = {
        key: json.dumps(value, ensure_ascii=False, default=_plain)
        if isinstance(value, (dict, list, tuple))
        else value
        for key, value in data.items()
    }
    return json.dumps(flat, allow_nan=False, default=_plain).encode()


def generic_event(data: Mapping[str, Any], event_id: uuid.UUID, logged_at: float) -> dict[str, Any]:
    """The generic event (wire format) for one logged dict, read as the collector's
    ``/log`` reads a flat object: type from its ``type`` or ``event`` key (else
    ``"remote_log"``; never a typed event's name such as ``"run:start"``), time from its
    ``tstamp`` or ``time`` key when one reads as a time (else ``logged_at``, the Unix
    time of ``log()``), the whole dict as ``data``, and the id it was given when logged."""
    kind = REMOTE_LOG_TYPE
    for key in ("type", "event"):
        value = data.get(key)
        if isinstance(value, str) and value:
            kind = value if value not in _TYPED_EVENTS else REMOTE_LOG_TYPE
            break
    return {
        "type": kind,
        "id": str(event_id),
        "time": _event_time(data, logged_at),
        "data": dict(data),
    }


def _event_time(data: Mapping[str, Any], logged_at: float) -> Any:
    for key in ("tstamp", "time"):
        value = data.get(key)
        if value is not None:
            try:
                _time(value, key)  # the collector's own check
            except (InvalidEventError, OverflowError, ValueError):
                continue
            return value
    return logged_at


# What the thread posts for one event: its JSON, and the Idempotency-Key of a request
# that carries it alone (the collector's /log stores a retried post once by it).
_Encoded = tuple[bytes, str | None]


def _encode_logged(logged: tuple[dict[str, Any], uuid.UUID, float]) -> _Encoded:
    return json_dumps(generic_event(*logged)).encode(), None


def _encode_flat(logged: tuple[dict[str, Any], uuid.UUID, float]) -> _Encoded:
    return fastchat_body(logged[0]), str(logged[1])


def _encode_entry(entry: ProxyLogEntry) -> _Encoded:
    return json_dumps(entry_to_wire(entry)).encode(), None


def _events_request(batch: Sequence[_Encoded]) -> tuple[bytes, dict[str, str] | None]:
    return b'{"events":[' + b",".join(body for body, _ in batch) + b"]}", None


def _single_request(batch: Sequence[_Encoded]) -> tuple[bytes, dict[str, str] | None]:
    ((body, key),) = batch
    return body, None if key is None else {"Idempotency-Key": key}


# -- settings ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Settings:
    url: str
    headers: dict[str, str]
    encode: Callable[[Any], _Encoded]
    request: Callable[[Sequence[_Encoded]], tuple[bytes, dict[str, str] | None]]
    batched: bool
    batch_size: int
    max_batch_bytes: int
    debounce_time: float
    timeout: float
    retry_base_delay: float
    retry_max_delay: float
    max_queue: int | None
    overflow: Overflow
    close_timeout: float
    atexit_timeout: float


def _check_url(name: str, url: object) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises for a port out of range
        httpx.URL(url)  # type: ignore[arg-type]
    except (ValueError, httpx.InvalidURL) as err:
        raise ValueError(f"{name} is not a valid URL ({err}), got {url!r}") from None
    return url  # type: ignore[return-value]


_DEFAULTS: Final[ClientOptions] = {
    "token": None,
    "batch_size": 100,
    "max_batch_bytes": 1 << 20,
    "debounce_time": 1.0,
    "timeout": 10.0,
    "retry_base_delay": 0.1,
    "retry_max_delay": 5.0,
    "max_queue": 10_000,
    "overflow": "drop_newest",
    "close_timeout": 30.0,
    "atexit_timeout": 10.0,
}


def _settings(
    url: str, *, batched: bool, encode: Callable[[Any], _Encoded], options: ClientOptions
) -> _Settings:
    """Check every option (see :class:`ClientOptions`), naming the one that is wrong."""
    for name in options:
        if name not in _DEFAULTS:
            raise TypeError(f"unexpected keyword argument {name!r} (see ClientOptions)")
    given: ClientOptions = {**_DEFAULTS, **options}
    token = given["token"]
    overflow = given["overflow"]
    timeout = given["timeout"]
    if token is not None and (
        not isinstance(token, str) or not token or not token.isascii() or not token.isprintable()
    ):
        raise ValueError("token must be a non-empty string of printable ASCII, or None")
    if overflow not in ("drop_newest", "drop_oldest", "block"):
        raise ValueError(
            f"overflow must be one of drop_newest, drop_oldest, block, got {overflow!r}"
        )
    if _seconds("timeout", timeout) == 0:
        raise ValueError("timeout must be a finite number of seconds > 0, got 0")
    base = _seconds("retry_base_delay", given["retry_base_delay"])
    most = _seconds("retry_max_delay", given["retry_max_delay"])
    if most < base:
        raise ValueError(f"retry_max_delay must be >= retry_base_delay, got {most!r} < {base!r}")
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    batch_size = _count("batch_size", given["batch_size"])
    debounce = _seconds("debounce_time", given["debounce_time"])
    return _Settings(
        url=url,
        headers=headers,
        encode=encode,
        request=_events_request if batched else _single_request,
        batched=batched,
        # FastChat's format has one event per request, posted as soon as it is logged.
        batch_size=batch_size if batched else 1,
        max_batch_bytes=_count("max_batch_bytes", given["max_batch_bytes"]),
        debounce_time=debounce if batched else 0.0,
        timeout=float(timeout),
        retry_base_delay=base,
        retry_max_delay=most,
        max_queue=_count("max_queue", given["max_queue"], optional=True),
        overflow=overflow,
        close_timeout=_seconds("close_timeout", given["close_timeout"]),
        atexit_timeout=_seconds("atexit_timeout", given["atexit_timeout"]),
    )


def _with_slack(budget: float) -> float | None:
    """How long to wait for a thread whose retries end after ``budget`` seconds."""
    return None if math.isinf(budget) else budget + _CLOSE_SLACK


def _close_budget(timeout: object, default: float) -> float:
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be seconds >= 0 or None, got {timeout!r}")
    return float(timeout)


# -- one process's queue and thread ------------------------------------------------------


class _Worker:
    """One process's queue, thread and HTTP connection for one client.

    The caller's side (:meth:`put`, :meth:`drop`, :meth:`stats`) and the thread share
    ``_lock``; the thread alone touches ``_carry``, the encoded events it holds (the
    batch being posted first).
    """

    def __init__(self, settings: _Settings) -> None:
        self.pid = os.getpid()
        self._s = settings
        self._lock = threading.Lock()
        # Held by the thread while it makes its HTTP client or a request, and by a fork
        # (see _before_fork).
        self.gate = threading.Lock()
        self._wakeup = threading.Condition(self._lock)  # the thread waits for events
        self._space = threading.Condition(self._lock)  # senders blocked on a full queue
        self._closing = threading.Event()  # cuts a backoff pause short at close()
        self._closed = False
        self._deadline = _NEVER  # time.monotonic() when retrying stops, once closed
        self._queue: deque[tuple[float, Any]] = deque()  # (time queued, payload)
        self._wake_at = _NEVER  # the thread sleeps until the queue is this long
        self._carry: list[tuple[float, _Encoded]] = []
        self._carry_bytes = 0
        self._held_since: float | None = None  # queued time of the oldest in `_carry`
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._resolved = 0
        self._dropped = dict.fromkeys(REMOTE_DROP_REASONS, 0)
        self._warned: set[str] = set()
        self._down = False  # in an outage that was warned about: told when it ends
        self._outage_warned_at = -_NEVER
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self.thread.start()

    # -- the caller's side -----------------------------------------------------------

    def put(self, payloads: Sequence[Any], *, block: bool) -> bool:
        """Queue ``payloads`` in order, or count them dropped. False only when the queue
        is full with ``overflow="block"`` and ``block`` is false: nothing was queued."""
        max_queue = self._s.max_queue
        with self._lock:
            if not self._closed and (
                max_queue is None
                or self._counts["sent"] - self._resolved + len(payloads) <= max_queue
            ):
                self._append(payloads)
                return True
        return self._put_slow(payloads, block)

    def _append(self, payloads: Sequence[Any]) -> None:
        """Under the lock: queue, and wake the thread if it waits for this."""
        now = time.monotonic()
        queue = self._queue
        if len(payloads) == 1:
            queue.append((now, payloads[0]))
        else:
            queue.extend([(now, payload) for payload in payloads])
        self._counts["sent"] += len(payloads)
        if len(queue) >= self._wake_at:
            self._wake_at = _NEVER
            self._wakeup.notify()

    def _put_slow(self, payloads: Sequence[Any], block: bool) -> bool:
        """A put the fast path refused: closed, or the queue full."""
        count = len(payloads)
        max_queue = self._s.max_queue
        overflow = self._s.overflow
        reason = "closed"
        with self._lock:
            while not self._closed:
                assert max_queue is not None
                excess = self._counts["sent"] - self._resolved + count - max_queue
                if excess <= 0:
                    self._append(payloads)
                    return True
                if count > max_queue or overflow == "drop_newest":
                    reason = "queue_full"
                    break
                if overflow == "drop_oldest":
                    if excess > len(self._queue):  # the rest are being posted
                        reason = "queue_full"
                        break
                    for _ in range(excess):
                        self._queue.popleft()
                    self._resolved += excess
                    self._dropped["evicted"] += excess
                    continue
                if not block:
                    return False
                self._space.wait()
        self.drop(reason, count)
        return True

    def drop(self, reason: str, count: int, detail: str = "") -> None:
        """Count ``count`` events dropped for ``reason``; warn the first time."""
        with self._lock:
            self._dropped[reason] += count
        self._warn_once(reason, count, detail)

    def _warn_once(self, reason: str, count: int, detail: str) -> None:
        with self._lock:
            first = reason not in self._warned
            self._warned.add(reason)
        if first and reason != "recursion":
            logger.warning(
                "eventlog: %d events for %s dropped (%s)%s; further drops are counted in "
                "stats().dropped_by_reason[%r], not logged",
                count,
                self._s.url,
                reason,
                f": {detail}" if detail else "",
                reason,
            )

    def stats(self) -> LoggerStats:
        """A consistent snapshot of this worker's counters."""
        with self._lock:
            counts = dict(self._counts)
            dropped = dict(self._dropped)
            queued = counts["sent"] - self._resolved
            oldest = self._held_since
            if oldest is None and self._queue:
                oldest = self._queue[0][0]
            latencies = list(self._latencies)
        ranked = sorted(latencies)
        return LoggerStats(
            **counts,
            dropped=sum(dropped.values()),
            dropped_by_reason=dropped,
            queued=queued,
            oldest_queued_age=max(0.0, time.monotonic() - oldest)
            if queued and oldest is not None
            else None,
            write_latency_last=latencies[-1] if latencies else None,
            write_latency_p50=statistics.median(ranked) if ranked else None,
            write_latency_p99=ranked[math.ceil(0.99 * len(ranked)) - 1] if ranked else None,
        )

    def close(self, timeout: float) -> bool:
        """Stop accepting; the thread posts what is queued, retrying for at most
        ``timeout`` seconds. Whether the thread finished in that time (plus a slack for a
        request under way)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._deadline = time.monotonic() + timeout
                self._wakeup.notify()
                self._space.notify_all()
        self._closing.set()
        self.thread.join(_with_slack(timeout))
        return not self.thread.is_alive()

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        # What this thread logs (httpx's own request lines included) must not come back
        # through an application handler that routes logging into a logger: see _log.
        mark_own_logging_thread()
        try:
            with self.gate:  # a fork waits: a child must not copy a half-made client
                http = httpx.Client(
                    timeout=self._s.timeout, headers=self._s.headers, follow_redirects=True
                )
            with http:
                while self._take():
                    self._post_one_batch(http)
        except Exception:
            logger.exception("eventlog: the thread posting to %s failed", self._s.url)
            with self._lock:
                lost = self._counts["sent"] - self._resolved
                self._closed = True
                self._queue.clear()
                self._settle_locked(lost, "failed")

    def _take(self) -> bool:
        """Wait until a batch is due, then move up to a batch of events from the queue
        into ``_carry``, encoded. False once closed with nothing left."""
        s = self._s
        carry = self._carry
        with self._lock:
            queue = self._queue
            while True:
                pending = len(carry) + len(queue)
                if self._closed:
                    if not pending:
                        return False
                    if time.monotonic() >= self._deadline:  # too late: settle them all
                        queue.clear()
                        carry.clear()
                        self._carry_bytes = 0
                        self._settle_locked(pending, "failed")
                        return False
                    break
                if pending >= s.batch_size or self._carry_bytes >= s.max_batch_bytes:
                    break
                wait: float | None = None
                if pending:
                    oldest = carry[0][0] if carry else queue[0][0]
                    wait = oldest + s.debounce_time - time.monotonic()
                    if wait <= 0:
                        break
                self._wake_at = s.batch_size - len(carry) if pending else 1
                self._wakeup.wait(wait)
                self._wake_at = _NEVER
            taken = [queue.popleft() for _ in range(min(len(queue), s.batch_size - len(carry)))]
            if not carry and taken:
                self._held_since = taken[0][0]
        unencodable: list[str] = []
        for queued_at, payload in taken:
            try:
                encoded = s.encode(payload)
            except Exception as err:  # orjson's errors, or an entry changed after send()
                unencodable.append(f"{type(err).__name__}: {err}")
                continue
            carry.append((queued_at, encoded))
            self._carry_bytes += len(encoded[0])
        if unencodable:
            self._settle(len(unencodable), "unserializable", unencodable[0])
        return True

    def _post_one_batch(self, http: httpx.Client) -> None:
        """Post the first batch of ``_carry`` (by count and bytes) until it is settled."""
        carry = self._carry
        count = size = 0
        for _, (body, _key) in carry:
            if count and (
                count >= self._s.batch_size or size + len(body) > self._s.max_batch_bytes
            ):
                break
            count += 1
            size += len(body)
        if count:
            self._deliver(http, [encoded for _, encoded in carry[:count]])
            del carry[:count]
            self._carry_bytes -= size
        with self._lock:
            self._held_since = carry[0][0] if carry else None

    def _deliver(self, http: httpx.Client, batch: list[_Encoded]) -> None:
        """Post ``batch`` until each of its events is settled: retried while the collector
        is away (until the close deadline), split on 413, thinned on 422."""
        delay = self._s.retry_base_delay
        started = time.monotonic()
        while batch:
            budget = self._budget()
            if budget <= 0:
                self._settle(len(batch), "failed", batch_failed=True)
                return
            retry_after = 0.0
            content, headers = self._s.request(batch)
            try:
                with self.gate:  # a fork waits for the request to end
                    response = http.post(
                        self._s.url,
                        content=content,
                        headers=headers,
                        timeout=min(self._s.timeout, budget),
                    )
            except httpx.HTTPError as err:  # refused, reset, timed out, a bad encoding...
                problem = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            else:
                status = response.status_code
                if 200 <= status < 300:
                    self._settle(len(batch), "written", latency=time.monotonic() - started)
                    if self._down:
                        self._down = False
                        logger.warning("eventlog: the collector at %s answers again", self._s.url)
                    return
                if status not in _TRANSIENT_STATUSES and status < 500:
                    batch = self._refused(http, batch, response)
                    continue
                problem = f"HTTP {status}"
                retry_after = _retry_after(response)
            self._transient_failure(problem)
            left = self._budget()
            if left <= 0:
                self._settle(len(batch), "failed", batch_failed=True)
                return
            with self._lock:
                self._counts["retries"] += 1
            pause = max(delay * (0.5 + random.random() / 2), retry_after)
            self._pause(min(pause, left))
            delay = min(delay * 2, self._s.retry_max_delay)

    def _refused(
        self, http: httpx.Client, batch: list[_Encoded], response: httpx.Response
    ) -> list[_Encoded]:
        """Settle what the collector refused; return the events to post again now."""
        status = response.status_code
        detail = f"HTTP {status} {response.text[:200]!r}"
        if status == 413 and len(batch) > 1:
            half = len(batch) // 2
            self._deliver(http, batch[:half])
            return batch[half:]
        if status in (401, 403):
            reason = "unauthorized"
        elif status == 413:
            reason = "too_large"
        else:
            reason = "rejected"
            bad = _rejected_indexes(response, len(batch)) if self._s.batched else None
            if bad:
                self._settle(len(bad), reason, detail, batch_failed=True)
                return [encoded for i, encoded in enumerate(batch) if i not in bad]
        self._settle(len(batch), reason, detail, batch_failed=True)
        return []

    def _budget(self) -> float:
        """Seconds left to post: unbounded until close(), then up to its deadline."""
        return self._deadline - time.monotonic()

    def _pause(self, seconds: float) -> None:
        """Sleep between retries; close() cuts the first such pause short."""
        if self._closing.is_set():
            time.sleep(seconds)
        else:
            self._closing.wait(seconds)

    def _transient_failure(self, problem: str) -> None:
        with self._lock:
            self._counts["transient_failures"] += 1
        now = time.monotonic()
        # One warning per outage, and one a minute at most for a collector that flaps.
        if not self._down and now - self._outage_warned_at >= _OUTAGE_WARNING_EVERY:
            self._down = True
            self._outage_warned_at = now
            logger.warning(
                "eventlog: the collector at %s is unavailable (%s); its events are kept "
                "(up to max_queue=%s) and sent again with backoff",
                self._s.url,
                problem,
                self._s.max_queue,
            )

    def _settle(
        self,
        count: int,
        outcome: str,
        detail: str = "",
        *,
        latency: float | None = None,
        batch_failed: bool = False,
    ) -> None:
        """``count`` events the thread held are done: ``"written"``, ``"failed"`` or
        dropped for a reason."""
        with self._lock:
            self._settle_locked(count, outcome, latency=latency)
            if batch_failed:
                self._counts["failed_writes"] += 1
        if outcome not in ("written", "failed"):
            self._warn_once(outcome, count, detail)

    def _settle_locked(self, count: int, outcome: str, *, latency: float | None = None) -> None:
        self._resolved += count
        if outcome == "written":
            self._counts["written"] += count
            self._counts["batches"] += 1
            if latency is not None:
                self._latencies.append(latency)
        elif outcome == "failed":
            self._counts["failed"] += count
        else:
            self._dropped[outcome] += count
        self._space.notify_all()


def _retry_after(response: httpx.Response) -> float:
    """The collector's ``Retry-After`` in seconds (seconds, or an HTTP date; at most a
    minute), else 0."""
    value = response.headers.get("retry-after", "0")
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.0
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER) if math.isfinite(seconds) else 0.0


def _rejected_indexes(response: httpx.Response, size: int) -> set[int] | None:
    """The events a 422 names (``{"errors": [{"index": i, ...}]}``), or None to drop all."""
    try:
        errors = response.json()["errors"]
        bad = {error["index"] for error in errors}
    except Exception:
        return None
    if not bad or not all(isinstance(i, int) and 0 <= i < size for i in bad):
        return None
    return bad


# -- the clients ---------------------------------------------------------------------------


class _State(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class _Client:
    """What both clients share: one worker per process, close, the exit and fork hooks."""

    def __init__(self, settings: _Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()  # the slow paths only: close, a fork's first use
        self._state = _State.RUNNING
        self._done = threading.Event()  # set once closed
        self._orphans = dict.fromkeys(REMOTE_DROP_REASONS, 0)  # drops with no worker here
        self._worker: _Worker | None = _Worker(settings)
        _CLIENTS.add(self)
        _OPEN.add(self)

    def stats(self) -> LoggerStats:
        """A consistent snapshot of this process's counters (see :class:`LoggerStats`
        and :data:`REMOTE_DROP_REASONS`); callable from any thread."""
        worker = self._here(start=False)
        if worker is not None:
            return worker.stats()
        orphans = dict(self._orphans)
        return LoggerStats(dropped=sum(orphans.values()), dropped_by_reason=orphans)

    def close(self, timeout: float | None = None) -> LoggerStats:
        """Post everything queued, end the thread, return the final stats. Blocks.

        ``timeout`` (seconds; default the client's ``close_timeout``) bounds the retries:
        what is not delivered by then is counted ``failed``. A request under way may take
        up to a second longer. Closing twice is harmless.
        """
        budget = _close_budget(timeout, self._settings.close_timeout)
        worker = self._here(start=False)
        with self._lock:
            owner = self._state is _State.RUNNING
            if owner:
                self._state = _State.CLOSING
            done = self._done
        if not owner:
            done.wait(_with_slack(budget))
            return self.stats()
        try:
            if worker is not None and not worker.close(budget):
                logger.warning(
                    "eventlog: %r: a request was still under way after %s s; its events "
                    "are counted when it ends",
                    self,
                    budget,
                )
        finally:
            with self._lock:
                self._state = _State.CLOSED
            done.set()
            _OPEN.discard(self)
        return self.stats()

    async def aclose(self, timeout: float | None = None) -> LoggerStats:  # noqa: ASYNC109
        """:meth:`close` in a thread, so the event loop goes on meanwhile."""
        _close_budget(timeout, 0.0)  # a bad argument raises here, in the caller's task
        return await asyncio.to_thread(self.close, timeout)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._state is not _State.RUNNING

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        stats = self.stats()
        return (
            f"<{type(self).__name__} {self._state.value} {self._settings.url} "
            f"sent={stats.sent} written={stats.written}>"
        )

    # -- the machinery -----------------------------------------------------------------

    def _put(self, payloads: Sequence[Any], *, block: bool = True) -> bool:
        worker = self._worker
        if worker is None or worker.pid != os.getpid():
            worker = self._here(start=True)
            if worker is None:
                self._drop("closed", len(payloads))
                return True
        return worker.put(payloads, block=block)

    def _drop(self, reason: str, count: int) -> None:
        worker = self._here(start=True)
        if worker is not None:
            worker.drop(reason, count)
        else:
            with self._lock:
                self._orphans[reason] += count

    def _here(self, *, start: bool) -> _Worker | None:
        """This process's worker, or None; after a fork, leave the parent's copy alone
        and, with ``start``, start the child's own unless the client is closed."""
        worker = self._worker
        if worker is not None and worker.pid == os.getpid():
            return worker
        with self._lock:
            worker = self._worker
            if worker is not None and worker.pid != os.getpid():
                _ABANDONED.append(worker)  # its connection is the parent's: never closed here
                self._worker = worker = None
            if worker is None and start and self._state is _State.RUNNING:
                self._worker = worker = _Worker(self._settings)
            return worker

    def _close_at_exit(self) -> None:
        if self._state is not _State.RUNNING:
            return
        stats = self.close(self._settings.atexit_timeout)
        if stats.failed or stats.queued:
            logger.warning(
                "eventlog: %d events were not delivered before exit (%r)",
                stats.failed + stats.queued,
                self,
            )

    def _after_fork_in_child(self) -> None:
        """Reset what another thread of the parent may have held when it forked."""
        self._lock = threading.Lock()
        if self._state is _State.CLOSING:  # the thread closing it is not in this process
            self._state = _State.CLOSED
        self._done = threading.Event()
        if self._state is _State.CLOSED:
            self._done.set()


class RemoteLogger(_Client):
    """FastChat's ``RemoteLogger``, dependable: ``log(dict)`` never blocks nor raises.

    A ``url`` whose path ends in ``/events`` gets batches of generic events (see
    :func:`generic_event`), sent when a batch is full or its first event has waited
    ``debounce_time`` seconds. Any other ``url`` gets one POST per event, as FastChat's
    logger sends it (see :func:`fastchat_body`), in the order logged. ``options``: see
    :class:`ClientOptions`; ``overflow="block"`` is refused, as ``log()`` never blocks.
    """

    def __init__(self, url: str, **options: Unpack[ClientOptions]) -> None:
        _check_url("url", url)
        overflow = options.get("overflow", "drop_newest")
        if overflow not in ("drop_newest", "drop_oldest"):
            raise ValueError(
                "overflow must be drop_newest or drop_oldest (log() never blocks), "
                f"got {overflow!r}"
            )
        self.url = url
        self._batched = urlsplit(url).path.rstrip("/").endswith("/events")
        encode = _encode_logged if self._batched else _encode_flat
        super().__init__(_settings(url, batched=self._batched, encode=encode, options=options))

    def log(self, data: dict[str, Any]) -> None:
        """Queue ``data`` and return. The dict itself is copied, its nested values are not:
        they are serialised later on the client's thread, so do not change them after
        ``log()`` (FastChat's logger behaves the same way).

        Never blocks and never raises: what cannot be sent is counted in
        ``stats().dropped_by_reason`` (``"invalid"`` for something not a dict).
        """
        try:
            if type(data) is not dict and not isinstance(data, Mapping):
                self._drop("invalid", 1)
            elif in_own_logging():
                self._drop("recursion", 1)
            else:
                self._put(((dict(data), uuid7(), time.time()),))
        except Exception:  # a Mapping whose items() fails, and the like
            with contextlib.suppress(Exception):
                self._drop("invalid", 1)


class EmptyLogger:
    """What :func:`get_remote_logger` returns when ``REMOTE_LOGGER_URL`` is not set:
    ``log()`` does nothing, and ``stats()``/``close()`` answer as a logger would."""

    def log(self, _data: dict[str, Any]) -> None:
        """Do nothing: remote logging is off."""

    def stats(self) -> LoggerStats:
        """All zero."""
        return LoggerStats()

    def close(self, timeout: float | None = None) -> LoggerStats:
        """Nothing to flush."""
        return LoggerStats()


_global_logger: RemoteLogger | EmptyLogger | None = None
_global_lock = threading.Lock()


def get_remote_logger() -> RemoteLogger | EmptyLogger:
    """The process's remote logger, made on first call from the environment.

    ``REMOTE_LOGGER_URL`` set: a :class:`RemoteLogger` for it (with
    ``REMOTE_LOGGER_TOKEN`` as its bearer token, if set); unset or empty: an
    :class:`EmptyLogger`. Later calls return the same object, as FastChat's does. A
    URL that is not http(s) (or a bad token) is logged once as an error and gives an
    :class:`EmptyLogger`: FastChat calls ``log()`` inside its request handlers.
    """
    global _global_logger
    found = _global_logger
    if found is None:
        with _global_lock:
            found = _global_logger
            if found is None:
                url = os.environ.get("REMOTE_LOGGER_URL")
                found = EmptyLogger()
                if url:
                    try:
                        found = RemoteLogger(
                            url, token=os.environ.get("REMOTE_LOGGER_TOKEN") or None
                        )
                    except ValueError as err:
                        # log() must never raise in the application's handlers: say it
                        # once, and log nothing.
                        logger.error("eventlog: REMOTE_LOGGER_URL ignored: %s", err)
                _global_logger = found
    return found


class HttpLogSender(_Client):
    """A :class:`~eventlog.LogSender` whose database is a collector across the network.

    ``send()`` queues entries (LLM calls, workflow and generic events) and returns; a
    thread of its own posts them in batches to ``{base_url}/events`` (``base_url`` may
    end in ``/events`` itself) in the collector's wire format
    (:func:`eventlog.parse.entry_to_wire`; ``internal_metadata`` stays behind: the
    collector sets it). Works from sync and async code alike.

    ``options``: see :class:`ClientOptions`; ``overflow="block"`` makes :meth:`send`
    wait for room (:meth:`send_async` waits without blocking the loop).
    Unlike :meth:`LogSender.close`, :meth:`close` waits for the delivery (see
    :func:`eventlog.connect`); :meth:`aclose` waits in a thread.
    """

    def __init__(self, base_url: str, **options: Unpack[ClientOptions]) -> None:
        parts = urlsplit(_check_url("base_url", base_url))
        path = parts.path.rstrip("/")
        if not path.endswith("/events"):
            path += "/events"
        url = urlunsplit(parts._replace(path=path))
        super().__init__(_settings(url, batched=True, encode=_encode_entry, options=options))

    @property
    def url(self) -> str:
        """Where the batches go."""
        return self._settings.url

    def send(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        """Queue one entry, or a sequence of entries in order. Never blocks, except with
        ``overflow="block"`` on a full queue; ``TypeError`` for what is not an entry."""
        payloads = (entry,) if type(entry) in ENTRY_TYPES else _as_message(entry)
        if not payloads:
            return
        if _context.used:  # eventlog.run/step: fill run_id/step_id the entries leave unset
            _context.fill_entries(payloads)
        if in_own_logging():
            self._drop("recursion", len(payloads))
            return
        self._put(payloads)

    async def send_async(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
        """Queue like :meth:`send`; with ``overflow="block"``, wait for room in a thread."""
        payloads = (entry,) if type(entry) in ENTRY_TYPES else _as_message(entry)
        if not payloads:
            return
        if _context.used:  # eventlog.run/step: fill run_id/step_id the entries leave unset
            _context.fill_entries(payloads)
        if in_own_logging():
            self._drop("recursion", len(payloads))
            return
        if not self._put(payloads, block=False):
            await asyncio.to_thread(self._put, payloads)


# -- exit and fork ---------------------------------------------------------------------------

# Every client of this process (and copied into it by fork), weakly, for the fork hook.
_CLIENTS: weakref.WeakSet[_Client] = weakref.WeakSet()
# The open ones, kept alive until closed (at exit if not before) with their last events.
_OPEN: set[_Client] = set()
# Workers copied from a parent process: kept so they are never collected here.
_ABANDONED: list[_Worker] = []


def _close_all_at_exit() -> None:
    for client in list(_OPEN):
        try:
            client._close_at_exit()
        except BaseException:  # an exception here would stop the interpreter's shutdown
            logger.exception("eventlog: closing %r at exit failed", client)


# The gates held by the fork under way in this thread (os.fork() runs its hooks there).
_forking = threading.local()


def _before_fork() -> None:
    """Wait until no client's thread is making a request or its HTTP client: a child
    copies the locks a thread holds (an import's, OpenSSL's) but not the thread, and
    would wait for them for good. Bounded: a collector that hangs holds no fork up for
    longer than ``_FORK_WAIT`` seconds."""
    held = []
    deadline = time.monotonic() + _FORK_WAIT
    for client in list(_OPEN):
        worker = client._worker
        if worker is None or worker.pid != os.getpid():
            continue
        if worker.gate.acquire(timeout=max(deadline - time.monotonic(), 0)):
            held.append(worker.gate)
        else:
            logger.warning(
                "eventlog: forking while %r is in a request (for over %s s): the child's "
                "client may wait on a lock that request held",
                client,
                _FORK_WAIT,
            )
    _forking.held = held


def _after_fork_in_parent() -> None:
    for gate in getattr(_forking, "held", []):
        gate.release()
    _forking.held = []


def _after_fork_in_child() -> None:
    global _global_lock
    _forking.held = []  # the gates of workers this process leaves alone
    _global_lock = threading.Lock()
    for client in list(_CLIENTS):
        client._after_fork_in_child()


at_exit(_close_all_at_exit)
os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
