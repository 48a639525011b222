"""Runs, steps and LLM calls from application code, with the context doing the wiring.

::

    eventlog.set_default_sender(sender)

    @eventlog.step("llm")
    async def answer(question: str) -> str: ...

    with eventlog.run("support-chat", input={"question": q}) as run:
        run.set_output(await answer(q))

:func:`run` and :func:`step` are context managers (``with`` and ``async with``) and
decorators (of sync and async functions). Entering sends ``run:start``/``step:start``;
leaving sends ``run:update`` (status ``finished``)/``step:end`` with the output, or,
when an exception escapes, status ``error``/``step:error`` with the exception's type,
message and traceback; the exception propagates unchanged. While one is active, every
entry sent (by the helpers or by the application itself) gets the current ``run_id``
and ``step_id`` where it leaves them unset (see :mod:`eventlog.context`).

:func:`track_llm_call` times one model call and sends it as a
:class:`~eventlog.ProxyLogEvent` when it ends.

Where the events go: the ``sender=`` argument, else the sender of the enclosing run or
step, else the default (:func:`set_default_sender`). With none at all the helpers run the
code and send nothing, and say so once in eventlog's log (like FastChat's
``EmptyLogger``, they make logging optional without an ``if`` around each call).

Sending never raises into the application: a sender that fails is logged (once per
kind of failure) and the code goes on.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import Token
from dataclasses import replace
from datetime import timedelta
from types import TracebackType
from typing import Any, Final, ParamSpec, Protocol, Self, TypeVar, cast

from eventlog import context as _context
from eventlog._log import logger
from eventlog.context import Scope, current_run_id, current_step_id
from eventlog.events import (
    JSON,
    ProxyLogEntry,
    ProxyLogEvent,
    RequestMetadata,
    RunStartEvent,
    RunUpdateEvent,
    StepEndEvent,
    StepErrorEvent,
    StepStartEvent,
    error_to_json,
)
from eventlog.ids import uuid7
from eventlog.usage import read_tokens

__all__ = [
    "SLOW_OPERATION_THRESHOLD",
    "LLMCall",
    "Run",
    "Sender",
    "Step",
    "current_run_id",
    "current_step_id",
    "get_default_sender",
    "run",
    "set_default_sender",
    "step",
    "track_llm_call",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_DEFAULT_SLOW_THRESHOLD: Final = 2.0
_SLOW_WARNING_INTERVAL: Final = 10.0  # seconds between two "slow LLM call" warnings


class Sender(Protocol):
    """What the helpers send with: a :class:`~eventlog.LogSender`, a
    :class:`~eventlog.BackgroundLogger`, an :class:`~eventlog.HttpLogSender`, the
    client of :func:`eventlog.connect`, or anything else with such a ``send``."""

    def send(self, entry: ProxyLogEntry | Sequence[ProxyLogEntry], /) -> None: ...


def _slow_threshold_from_env() -> float:
    raw = os.environ.get("SLOW_OPERATION_THRESHOLD", "").strip()
    if not raw:
        return _DEFAULT_SLOW_THRESHOLD
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        logger.warning(
            "eventlog: SLOW_OPERATION_THRESHOLD must be seconds >= 0, got %r; using %s",
            raw,
            _DEFAULT_SLOW_THRESHOLD,
        )
        return _DEFAULT_SLOW_THRESHOLD
    return value


SLOW_OPERATION_THRESHOLD: float = _slow_threshold_from_env()
"""An LLM call slower than this many seconds (``total_latency``) logs a warning: the
``SLOW_OPERATION_THRESHOLD`` environment variable when the module is imported, else 2.0.
Read at each call, so it may be changed at run time."""

clock: Callable[[], float] = time.perf_counter
"""What :func:`track_llm_call` and the integrations time calls with (seconds, monotonic);
read at each use, so tests may replace it with :class:`eventlog.testing.ManualClock`."""


# -- the sender ------------------------------------------------------------------------

_default_sender: Sender | None = None
_lock = threading.Lock()
_warned_no_sender = False
_warned_failures: set[tuple[type[Any], type[BaseException]]] = set()


def set_default_sender(sender: Sender | None) -> None:
    """Send the events of runs, steps and LLM calls that name no sender with ``sender``.

    ``None`` removes the default. Typically called once at startup, right after the
    logger is started; the helpers read it when a run, step or call begins.
    """
    global _default_sender
    if sender is not None and not callable(getattr(sender, "send", None)):
        raise TypeError(f"sender must have a send() method, got {type(sender).__name__}")
    _default_sender = sender


def get_default_sender() -> Sender | None:
    """The sender set by :func:`set_default_sender`, or None."""
    return _default_sender


def _resolve(explicit: Sender | None, scope: Scope | None) -> Sender | None:
    """The ``sender=`` argument, else the enclosing run's or step's, else the default."""
    if explicit is not None:
        return explicit
    if scope is not None:
        return cast(Sender, scope.sender)
    sender = _default_sender
    if sender is None:
        _warn_no_sender()
    return sender


def _warn_no_sender() -> None:
    global _warned_no_sender
    with _lock:
        if _warned_no_sender:
            return
        _warned_no_sender = True
    logger.warning(
        "eventlog: a run, step or LLM call has no sender (pass sender= or call "
        "eventlog.set_default_sender()): nothing is logged. This is said once."
    )


def _emit(sender: Sender, entry: ProxyLogEntry | Sequence[ProxyLogEntry]) -> None:
    """``sender.send(entry)``, never raising into the application's code."""
    try:
        sender.send(entry)
    except Exception as err:
        key = (type(sender), type(err))
        with _lock:
            new = key not in _warned_failures
            _warned_failures.add(key)
        if new:
            logger.warning(
                "eventlog: %s.send() failed; the event is lost (said once per kind of "
                "failure): %s: %s",
                type(sender).__name__,
                type(err).__name__,
                err,
            )


def _check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tags, (str, bytes)):
        raise TypeError(f"tags must be a sequence of strings, not one {type(tags).__name__}")
    return tuple(tags)


# -- runs and steps --------------------------------------------------------------------


class _Span:
    """What :class:`Run` and :class:`Step` share: enter once, output, info, decorate."""

    __slots__ = ("_added", "_entered", "_info", "_input", "_output", "_sender", "_tags", "_token")

    def __init__(
        self, input: JSON, tags: Sequence[str], info: dict[str, JSON] | None, sender: Sender | None
    ) -> None:
        if sender is not None and not callable(getattr(sender, "send", None)):
            raise TypeError(f"sender must have a send() method, got {type(sender).__name__}")
        self._input = input
        self._tags = _check_tags(tags)
        self._info = info
        self._sender = sender
        self._output: JSON = None
        self._added: dict[str, JSON] = {}
        self._entered = False
        # While active: the context's token and the sender (None: not entered, or no-op).
        self._token: tuple[Token[Scope | None], Sender] | None = None

    def set_output(self, value: JSON) -> None:
        """The output recorded when this ends (a decorated function's return value)."""
        self._output = value

    def add_info(self, **values: JSON) -> None:
        """Add keys to ``info``, sent when this ends (merged with the ``info=`` given)."""
        self._added.update(values)

    # -- what the subclasses implement

    def _fresh(self) -> Self:
        raise NotImplementedError

    def _begin(self) -> None:
        """Send the start and make this the current scope (sets ``_token``)."""
        raise NotImplementedError

    def _end(self, error: BaseException | None, sender: Sender) -> None:
        """Send the end, after the scope is restored."""
        raise NotImplementedError

    # -- context manager

    def _enter(self) -> None:
        if self._entered:
            raise RuntimeError(
                f"this {type(self).__name__.lower()} was already entered: each "
                f"eventlog.{type(self).__name__.lower()}(...) is entered once (as a "
                "decorator it makes a new one per call)"
            )
        self._entered = True
        self._begin()

    def _exit(self, error: BaseException | None) -> None:
        token, self._token = self._token, None
        if token is None:
            return  # no sender: nothing was started
        scope_token, sender = token
        # ValueError: left in another context than it was entered in (an async
        # generator resumed by another task); that context keeps it, the end is sent.
        with contextlib.suppress(ValueError):
            _context.exit_scope(scope_token)
        self._end(error, sender)

    def __enter__(self) -> Self:
        self._enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Self:
        self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    # -- decorator

    def __call__(self, function: Callable[_P, _R]) -> Callable[_P, _R]:
        """Run ``function`` inside a new one of these per call; its return value is the
        output. Works on sync and async functions."""
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            raise TypeError(
                f"eventlog.{type(self).__name__.lower()}() cannot decorate a generator "
                f"function ({function.__qualname__}): use it as a context manager inside"
            )
        if inspect.iscoroutinefunction(function):
            coroutine_function = cast(Callable[_P, Awaitable[Any]], function)

            @functools.wraps(function)
            async def run_async(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                with self._fresh() as span:
                    result = await coroutine_function(*args, **kwargs)
                    span.set_output(result)
                    return result

            return cast(Callable[_P, _R], run_async)

        @functools.wraps(function)
        def run_sync(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with self._fresh() as span:
                result = function(*args, **kwargs)
                span.set_output(result)
                return result

        return run_sync


class Run(_Span):
    """A workflow run: made by :func:`run`; a context manager and a decorator."""

    __slots__ = ("_application", "_environment", "_name", "id")

    def __init__(
        self,
        name: str,
        *,
        input: JSON = None,
        application: str | None = None,
        environment: str | None = None,
        tags: Sequence[str] = (),
        info: dict[str, JSON] | None = None,
        sender: Sender | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        super().__init__(input, tags, info, sender)
        self._name = name
        self._application = application
        self._environment = environment
        self.id: uuid.UUID = uuid7()
        """The run's id (``chronicle_runs.id``)."""

    def _fresh(self) -> Run:
        return Run(
            self._name,
            input=self._input,
            application=self._application,
            environment=self._environment,
            tags=self._tags,
            info=self._info,
            sender=self._sender,
        )

    def _begin(self) -> None:
        sender = _resolve(self._sender, _context.current_scope())
        if sender is None:
            return
        _emit(
            sender,
            RunStartEvent(
                id=self.id,
                name=self._name,
                input=self._input,
                application=self._application,
                environment=self._environment,
                tags=self._tags,
                info=self._info,
            ),
        )
        self._token = (_context.enter_scope(Scope(self.id, None, sender)), sender)

    def _end(self, error: BaseException | None, sender: Sender) -> None:
        _emit(sender, _run_end(self.id, self._output, self._added, error))

    def __repr__(self) -> str:
        return f"<eventlog.Run {self._name!r} id={self.id}>"


def _run_end(
    run_id: uuid.UUID, output: JSON, added: dict[str, JSON], error: BaseException | None
) -> RunUpdateEvent:
    if error is None:
        return RunUpdateEvent(id=run_id, status="finished", output=output, info=added or None)
    return RunUpdateEvent(
        id=run_id, status="error", output=output, info={**added, "error": error_to_json(error)}
    )


class Step(_Span):
    """A step of a run: made by :func:`step`; a context manager and a decorator."""

    __slots__ = ("_name", "_own_run", "_type", "id", "run_id")

    def __init__(
        self,
        type: str,
        name: str | None = None,
        *,
        input: JSON = None,
        tags: Sequence[str] = (),
        info: dict[str, JSON] | None = None,
        sender: Sender | None = None,
    ) -> None:
        if not isinstance(type, str):
            raise TypeError(f"type must be a str, got {type.__class__.__name__}")
        super().__init__(input, tags, info, sender)
        self._type = type
        self._name = name
        self._own_run = False
        self.id: uuid.UUID = uuid7()
        """The step's id (``chronicle_steps.id``)."""
        self.run_id: uuid.UUID | None = None
        """The id of the step's run, once entered: the enclosing run's, or the run the
        step started for itself outside any run (None when nothing is logged)."""

    def _fresh(self) -> Step:
        return Step(
            self._type,
            self._name,
            input=self._input,
            tags=self._tags,
            info=self._info,
            sender=self._sender,
        )

    def _begin(self) -> None:
        scope = _context.current_scope()
        sender = _resolve(self._sender, scope)
        if sender is None:
            return
        start: list[ProxyLogEntry] = []
        if scope is None:
            # Outside any run, as chronicle's client: a run of its own, named after it.
            self._own_run = True
            run_id = uuid7()
            start.append(
                RunStartEvent(
                    id=run_id, name=self._name or self._type, input=self._input, tags=self._tags
                )
            )
            parent = None
        else:
            run_id, parent = scope.run_id, scope.step_id
        self.run_id = run_id
        start.append(
            StepStartEvent(
                step_id=self.id,
                run_id=run_id,
                type=self._type,
                name=self._name,
                parent_step=parent,
                tags=self._tags,
                info=self._info,
                input=self._input,
            )
        )
        _emit(sender, start)
        self._token = (_context.enter_scope(Scope(run_id, self.id, sender)), sender)

    def _end(self, error: BaseException | None, sender: Sender) -> None:
        run_id = self.run_id
        assert run_id is not None
        end: list[ProxyLogEntry] = [
            StepEndEvent(
                step_id=self.id, run_id=run_id, output=self._output, info=self._added or None
            )
            if error is None
            # chronicle's step:error has no info: what add_info() collected is not kept.
            else StepErrorEvent(step_id=self.id, run_id=run_id, error=error)
        ]
        if self._own_run:
            end.append(_run_end(run_id, self._output, {}, error))
        _emit(sender, end)

    def __repr__(self) -> str:
        return f"<eventlog.Step {self._type!r} name={self._name!r} id={self.id}>"


def run(
    name: str,
    *,
    input: JSON = None,
    application: str | None = None,
    environment: str | None = None,
    tags: Sequence[str] = (),
    info: dict[str, JSON] | None = None,
    sender: Sender | None = None,
) -> Run:
    """A workflow run, as a context manager (``with``/``async with``) or a decorator.

    Entering sends ``run:start``; leaving sends ``run:update`` with status ``finished``
    and the output (:meth:`Run.set_output`, or a decorated function's return value), or
    status ``error`` with ``info["error"]`` = the exception's type, message and
    traceback; the exception propagates unchanged. Keys given to :meth:`Run.add_info`
    are merged into ``info``. Steps and LLM calls inside, and every entry sent while
    the run is active, get its id.
    """
    return Run(
        name,
        input=input,
        application=application,
        environment=environment,
        tags=tags,
        info=info,
        sender=sender,
    )


def step(
    type: str,
    name: str | None = None,
    *,
    input: JSON = None,
    tags: Sequence[str] = (),
    info: dict[str, JSON] | None = None,
    sender: Sender | None = None,
) -> Step:
    """A step, as a context manager (``with``/``async with``) or a decorator.

    Inside a run it belongs to that run, and inside another step it has that step as
    ``parent_step``; outside any run it starts a run of its own, named after the step,
    which ends with it. Entering sends ``step:start``; leaving sends ``step:end`` with the
    output and the info added on the way, or ``step:error`` with the exception's type,
    message and traceback (chronicle's ``step:error`` carries no info: what
    :meth:`Step.add_info` collected is not stored then); the exception propagates.
    """
    return Step(type, name, input=input, tags=tags, info=info, sender=sender)


# -- LLM calls -------------------------------------------------------------------------


class _SlowWarnings:
    """At most one "slow LLM call" warning per ``_SLOW_WARNING_INTERVAL`` seconds; the
    next one says how many were not logged meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: float | None = None
        self._skipped = 0

    def warn(self, now: float, seconds: float, provider: str | None, model: str | None) -> None:
        with self._lock:
            if self._last is not None and now - self._last < _SLOW_WARNING_INTERVAL:
                self._skipped += 1
                return
            self._last, skipped, self._skipped = now, self._skipped, 0
        logger.warning(
            "eventlog: slow LLM call: %s %s took %.2f s (SLOW_OPERATION_THRESHOLD is %s s)%s",
            provider,
            model,
            seconds,
            SLOW_OPERATION_THRESHOLD,
            f"; {skipped} more slow calls since the last warning" if skipped else "",
        )


_slow_warnings = _SlowWarnings()


def _to_json(value: Any) -> JSON:
    """A pydantic model (an SDK's response object) as its JSON; anything else as is."""
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        try:
            return dump(mode="json", exclude_unset=True, warnings=False)
        except TypeError:  # an older pydantic without ``warnings``
            return dump(mode="json", exclude_unset=True)
    return value


def _status_code(error: BaseException) -> int | None:
    """The HTTP status of an SDK's error (``status_code``, or ``response.status_code``)."""
    code = getattr(error, "status_code", None)
    if code is None:
        code = getattr(getattr(error, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


class LLMCall:
    """One model call being timed: made by :func:`track_llm_call`."""

    __slots__ = (
        "_attempt_start",
        "_done",
        "_entered",
        "_extra",
        "_lock",
        "_metadata",
        "_rate_limited",
        "_retries",
        "_scope",
        "_sender",
        "_start",
        "_ttft",
        "model",
        "provider",
        "request",
        "response",
    )

    def __init__(
        self,
        *,
        provider: str | None,
        model: str | None,
        request: JSON,
        metadata: RequestMetadata | Mapping[str, JSON] | None = None,
        sender: Sender | None = None,
    ) -> None:
        if sender is not None and not callable(getattr(sender, "send", None)):
            raise TypeError(f"sender must have a send() method, got {type(sender).__name__}")
        if metadata is None or isinstance(metadata, RequestMetadata):
            self._metadata = metadata
        elif isinstance(metadata, Mapping):
            self._metadata = RequestMetadata.from_dict(metadata)
        else:
            raise TypeError(
                f"metadata must be a RequestMetadata or a dict, got {type(metadata).__name__}"
            )
        self.provider = provider
        self.model = model
        self.request = request
        self.response: JSON = None
        self._sender = sender
        self._scope: Scope | None = None
        self._entered = False
        self._done = False
        self._lock = threading.Lock()
        self._start = 0.0
        self._attempt_start = 0.0
        self._ttft: float | None = None
        self._retries = 0
        self._rate_limited = False
        self._extra: dict[str, JSON] = {}

    def set_response(self, response: JSON) -> None:
        """The provider's response: a JSON dict, or an SDK's response object (a pydantic
        model, stored as its JSON). Its ``usage`` gives the token counts."""
        self.response = _to_json(response)

    def first_token(self) -> None:
        """Mark the time to first token (a streamed call's first chunk); later calls
        are ignored. Measured from the start of the call, retries included."""
        if self._ttft is None:
            self._ttft = clock() - self._start

    def retry(self, rate_limited: bool = False) -> None:
        """An attempt failed and the call is retried; ``rate_limited`` if the provider
        said so (HTTP 429). ``latency`` is then measured from this retry."""
        self._retries += 1
        self._rate_limited = self._rate_limited or bool(rate_limited)
        self._attempt_start = clock()

    # -- the lifecycle, also used by the integrations

    def _begin(self) -> None:
        if self._entered:
            raise RuntimeError("this LLM call was already entered: track each call once")
        self._entered = True
        self._scope = scope = _context.current_scope()
        self._sender = _resolve(self._sender, scope)
        self._start = self._attempt_start = clock()

    def _finish(self, error: object = None, extra: Mapping[str, JSON] | None = None) -> None:
        """End the call once (later calls are ignored) and send it, with ``error`` (an
        exception or JSON) if it failed; ``extra`` goes to the ``meta`` column."""
        with self._lock:
            if self._done:
                return
            self._done = True
        if extra:
            self._extra.update(extra)
        sender = self._sender
        if sender is None:
            return
        end = clock()
        latency = max(end - self._attempt_start, 0.0)
        total = max(end - self._start, 0.0)
        rate_limited = self._rate_limited
        if isinstance(error, BaseException) and _status_code(error) == 429:
            rate_limited = True
        _emit(
            sender,
            ProxyLogEvent(
                provider=self.provider,
                model=self.model,
                request=self.request,
                response=self.response,
                latency=timedelta(seconds=latency),
                total_latency=timedelta(seconds=total),
                num_retries=self._retries,
                was_rate_limited=rate_limited,
                error=error_to_json(error) if error is not None else None,
                metadata=self._event_metadata(latency),
                time_to_first_token=None if self._ttft is None else timedelta(seconds=self._ttft),
            ),
        )
        threshold = SLOW_OPERATION_THRESHOLD
        if total > threshold:
            _slow_warnings.warn(end, total, self.provider, self.model)

    def _event_metadata(self, latency: float) -> RequestMetadata:
        extra = dict(self._extra)
        tokens = read_tokens(self.response).completion  # the writer's counting rule
        if tokens is not None and latency > 0:
            extra["output_tokens_per_second"] = round(tokens / latency, 3)
        meta = self._metadata
        if meta is None:
            meta = RequestMetadata(extra=extra or None)
        elif extra:
            meta = replace(meta, extra={**(meta.extra or {}), **extra})
        else:
            meta = replace(meta)  # never change the caller's
        scope = self._scope
        if scope is not None and meta.run_id is None:
            # The context it began in, wherever it ends (a stream read in another task).
            meta.run_id = scope.run_id
            if meta.step_id is None:
                meta.step_id = scope.step_id
        return meta

    # -- context manager

    def __enter__(self) -> Self:
        self._begin()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(exc)

    async def __aenter__(self) -> Self:
        self._begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(exc)

    def __repr__(self) -> str:
        return f"<eventlog.LLMCall {self.provider} {self.model} retries={self._retries}>"


def track_llm_call(
    *,
    provider: str | None,
    model: str | None,
    request: JSON,
    metadata: RequestMetadata | Mapping[str, JSON] | None = None,
    sender: Sender | None = None,
) -> LLMCall:
    """Time one model call; a context manager (``with``/``async with``) whose handle
    takes :meth:`~LLMCall.set_response`, :meth:`~LLMCall.first_token` and
    :meth:`~LLMCall.retry`.

    On exit it sends a :class:`~eventlog.ProxyLogEvent`: ``latency`` (of the attempt
    that answered), ``total_latency`` (retries included), ``num_retries``,
    ``was_rate_limited``, ``time_to_first_token`` (if marked), the response (whose
    ``usage`` fills the token columns), and ``output_tokens_per_second`` (completion
    tokens / latency) in ``meta``. An exception that escapes is stored as the call's
    error (a 429 status marks it rate limited) and propagates. A call slower than
    :data:`SLOW_OPERATION_THRESHOLD` seconds logs a warning.
    """
    return LLMCall(
        provider=provider, model=model, request=request, metadata=metadata, sender=sender
    )
