"""Log every chat completion of an OpenAI client, streamed or not: ``instrument(client)``.

::

    client = eventlog.integrations.openai.instrument(openai.AsyncOpenAI())
    answer = await client.chat.completions.create(model="gpt-4o-mini", messages=[...])

Each ``client.chat.completions.create(...)`` is sent as a :class:`~eventlog.ProxyLogEvent`
(see :func:`eventlog.track_llm_call`): the request (``extra_body`` merged in; headers,
query and timeout left out, as headers may carry keys), the response, latency, time to
first token, tokens, retries and rate limiting, and the error if it failed. The caller
receives exactly what it would without instrumentation: the same ``ChatCompletion``, or
the same ``Stream``/``AsyncStream`` object, iterated as before.

A stream is merged into one ``chat.completion`` response as its chunks pass (content,
refusal, tool calls, finish reason, logprobs, and ``usage`` with
``stream_options={"include_usage": True}``), as chronicle collects streams; the time to
first token is the first chunk's. It is logged when it is read to its end, when it
breaks (with the error), when it is closed early (what was received, with
``stream_incomplete`` in ``meta``), or, if it is dropped unfinished, when it is
garbage-collected (what was received, with an error saying so).

Retries are the SDK's own (``max_retries``): they are counted with request and response
hooks on the client's HTTP client (``httpx`` or ``httpx2``), per call through the
context, and a retry after a 429 marks the call rate limited. ``chat.completions.stream()``
goes through ``create`` and is logged; not logged: ``with_raw_response`` calls and
``parse()``, which bypass it.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Final, TypeVar

try:
    import openai
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "eventlog.integrations.openai needs the openai package: pip install 'eventlog[openai]'"
    ) from err

from eventlog._log import logger
from eventlog.context import current_scope
from eventlog.events import JSON
from eventlog.instrument import LLMCall, Sender, _resolve, _to_json

__all__ = ["instrument"]

ClientT = TypeVar("ClientT", openai.OpenAI, openai.AsyncOpenAI)

_MARK: Final = "_eventlog_instrumented"
# create()'s arguments that are not the request body: headers may hold credentials.
_NOT_LOGGED: Final = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})
_RAW_RESPONSE_HEADER: Final = "x-stainless-raw-response"
_INCOMPLETE: Final = {"stream_incomplete": True}
_ABANDONED_ERROR: Final = {
    "type": "eventlog.StreamAbandoned",
    "message": "the stream was garbage-collected before it was read to its end or closed",
}


def instrument(client: ClientT, sender: Sender | None = None) -> ClientT:
    """Log every chat completion ``client`` makes, and return ``client``.

    ``client`` is an ``openai.OpenAI`` or ``openai.AsyncOpenAI`` (or a subclass, such
    as Azure's); its copies (``with_options()``, ``copy()``) are instrumented too. The
    events go to ``sender``, else to the enclosing run's or step's, else to the default
    (:func:`eventlog.set_default_sender`). Instrumenting a client twice changes nothing.
    """
    if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
        raise TypeError(
            f"client must be an openai.OpenAI or openai.AsyncOpenAI, got {type(client).__name__}"
        )
    if sender is not None and not callable(getattr(sender, "send", None)):
        raise TypeError(f"sender must have a send() method, got {type(sender).__name__}")
    if vars(client).get(_MARK):
        return client
    is_async = isinstance(client, openai.AsyncOpenAI)
    azure = tuple(
        cls
        for cls in (getattr(openai, "AzureOpenAI", None), getattr(openai, "AsyncAzureOpenAI", None))
        if isinstance(cls, type)
    )
    provider = "azure" if azure and isinstance(client, azure) else "openai"
    _install_hooks(client, is_async)
    completions = client.chat.completions
    wrap = _wrap_async if is_async else _wrap_sync
    setattr(completions, "create", wrap(completions.create, provider, sender))  # noqa: B010
    copy = client.copy

    @functools.wraps(copy)
    def instrumented_copy(*args: Any, **kwargs: Any) -> Any:
        return instrument(copy(*args, **kwargs), sender)

    setattr(client, "copy", instrumented_copy)  # noqa: B010
    setattr(client, "with_options", instrumented_copy)  # noqa: B010
    setattr(client, _MARK, True)
    return client


# -- the call --------------------------------------------------------------------------


def _raw_response(kwargs: Mapping[str, Any]) -> bool:
    headers = kwargs.get("extra_headers")
    return isinstance(headers, Mapping) and any(
        isinstance(key, str) and key.lower() == _RAW_RESPONSE_HEADER for key in headers
    )


def _omitted(value: object) -> bool:
    return type(value).__name__ in ("NotGiven", "Omit")


def _jsonable(value: Any) -> JSON:
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return _to_json(value)


def _start(kwargs: dict[str, Any], provider: str, sender: Sender | None) -> LLMCall | None:
    """The call begun, or None when there is no sender (then nothing is done)."""
    sender = _resolve(sender, current_scope())
    if sender is None:
        return None
    for key, value in kwargs.items():
        if isinstance(value, Iterator):  # a generator of messages: read it once, for both
            kwargs[key] = list(value)
    request = {
        key: _jsonable(value)
        for key, value in kwargs.items()
        if key not in _NOT_LOGGED and not _omitted(value)
    }
    extra_body = kwargs.get("extra_body")
    if isinstance(extra_body, Mapping):
        request.update(_jsonable(extra_body))
    model = request.get("model")
    call = LLMCall(
        provider=provider,
        model=model if isinstance(model, str) else None,
        request=request,
        sender=sender,
    )
    call._begin()
    return call


def _answered(call: LLMCall, result: object) -> None:
    """The SDK returned: log an answer now, or watch a stream until it ends."""
    if isinstance(result, openai.Stream):
        _watch(result, call)
    elif isinstance(result, openai.AsyncStream):
        _watch_async(result, call)
    else:
        call.first_token()  # unstreamed: the first token comes with the whole answer
        if isinstance(result, (openai.BaseModel, Mapping)):
            call.set_response(result)
        call._finish()


_warned: set[str] = set()


def _failed(where: str, err: Exception) -> None:
    """The integration's own failure: logged once per place, never raised to the caller."""
    if where not in _warned:
        _warned.add(where)
        logger.warning(
            "eventlog: the OpenAI integration failed %s; the call goes on unlogged (said "
            "once): %s: %s",
            where,
            type(err).__name__,
            err,
        )


def _wrap_sync(create: Callable[..., Any], provider: str, sender: Sender | None) -> Any:
    @functools.wraps(create)
    def instrumented_create(*args: Any, **kwargs: Any) -> Any:
        if _raw_response(kwargs):
            return create(*args, **kwargs)
        try:
            call = _start(kwargs, provider, sender)
        except Exception as err:
            _failed("before the call", err)
            call = None
        if call is None:
            return create(*args, **kwargs)
        token = _attempts.set(_Attempts(call))
        try:
            result = create(*args, **kwargs)
        except BaseException as err:
            _end(call, err)
            raise
        finally:
            _attempts.reset(token)
        try:
            _answered(call, result)
        except Exception as err:
            _failed("after the call", err)
        return result

    return instrumented_create


def _wrap_async(create: Callable[..., Any], provider: str, sender: Sender | None) -> Any:
    @functools.wraps(create)
    async def instrumented_create(*args: Any, **kwargs: Any) -> Any:
        if _raw_response(kwargs):
            return await create(*args, **kwargs)
        try:
            call = _start(kwargs, provider, sender)
        except Exception as err:
            _failed("before the call", err)
            call = None
        if call is None:
            return await create(*args, **kwargs)
        token = _attempts.set(_Attempts(call))
        try:
            result = await create(*args, **kwargs)
        except BaseException as err:
            _end(call, err)
            raise
        finally:
            _attempts.reset(token)
        try:
            _answered(call, result)
        except Exception as err:
            _failed("after the call", err)
        return result

    return instrumented_create


def _end(call: LLMCall, error: object = None, extra: Mapping[str, JSON] | None = None) -> None:
    try:
        call._finish(error, extra)
    except Exception as err:
        _failed("logging the call", err)


# -- retries: hooks on the HTTP client -------------------------------------------------


class _Attempts:
    """The HTTP requests of one ``create()``: each after the first is a retry."""

    __slots__ = ("call", "sent", "status")

    def __init__(self, call: LLMCall) -> None:
        self.call = call
        self.sent = 0
        self.status: int | None = None  # of the last response

    def request(self) -> None:
        if self.sent:
            self.call.retry(rate_limited=self.status == 429)
        self.sent += 1
        self.status = None


_attempts: ContextVar[_Attempts | None] = ContextVar("eventlog_openai_attempts", default=None)


def _on_request(request: object) -> None:
    attempts = _attempts.get()
    if attempts is not None:
        attempts.request()


def _on_response(response: object) -> None:
    attempts = _attempts.get()
    if attempts is not None:
        status = getattr(response, "status_code", None)
        attempts.status = status if isinstance(status, int) else None


async def _on_request_async(request: object) -> None:
    _on_request(request)


async def _on_response_async(response: object) -> None:
    _on_response(response)


def _install_hooks(client: openai.OpenAI | openai.AsyncOpenAI, is_async: bool) -> None:
    """Add the hooks to the client's HTTP client, once (copies share it)."""
    hooks = getattr(getattr(client, "_client", None), "event_hooks", None)
    if not (
        isinstance(hooks, Mapping)
        and isinstance(hooks.get("request"), list)
        and isinstance(hooks.get("response"), list)
    ):
        logger.warning(
            "eventlog: %s's HTTP client has no event hooks: its retries are not counted",
            type(client).__name__,
        )
        return
    on_request: Any = _on_request_async if is_async else _on_request
    on_response: Any = _on_response_async if is_async else _on_response
    if on_request not in hooks["request"]:
        hooks["request"].append(on_request)
    if on_response not in hooks["response"]:
        hooks["response"].append(on_response)


# -- streams ---------------------------------------------------------------------------


class _StreamLog:
    """A streamed call: its chunks merged as they pass, logged once when it ends."""

    __slots__ = ("_call", "_ended", "_finalizer", "_lock", "_merged")

    def __init__(self, call: LLMCall) -> None:
        self._call = call
        self._merged = _Merged()
        self._lock = threading.Lock()
        self._ended = False
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def chunk(self, chunk: Any) -> None:
        try:
            if not self._merged.chunks:
                self._call.first_token()
            self._merged.add(chunk)
        except Exception as err:
            _failed("reading a chunk", err)

    def end(self, error: object = None, extra: Mapping[str, JSON] | None = None) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        finalizer = self._finalizer
        if finalizer is not None:
            finalizer.detach()
        try:
            if self._merged.chunks:
                self._call.set_response(self._merged.result())
        except Exception as err:
            _failed("merging the stream", err)
        _end(self._call, error, extra)

    def watch(self, stream: object) -> None:
        """Log what was received if ``stream`` is collected unfinished: the finalizer only
        queues this log (a collection may run inside any code, a held lock included); the
        worker thread sends it."""
        finalizer = weakref.finalize(stream, _abandoned.put, self)
        finalizer.atexit = False
        self._finalizer = finalizer
        _start_worker()

    def abandoned(self) -> None:
        self.end(_ABANDONED_ERROR, _INCOMPLETE)


def _watch(stream: openai.Stream[Any], call: LLMCall) -> None:
    log = _StreamLog(call)
    inner = stream._iterator

    def observe() -> Iterator[Any]:
        try:
            for chunk in inner:
                log.chunk(chunk)
                yield chunk
        except GeneratorExit:
            raise  # collected unfinished: the finalizer logs it
        except BaseException as err:
            log.end(err)
            raise
        log.end()

    close = stream.close

    def instrumented_close() -> None:
        try:
            close()
        finally:
            log.end(None, _INCOMPLETE)

    stream._iterator = observe()
    setattr(stream, "close", instrumented_close)  # noqa: B010
    log.watch(stream)


def _watch_async(stream: openai.AsyncStream[Any], call: LLMCall) -> None:
    log = _StreamLog(call)
    inner = stream._iterator

    async def observe() -> AsyncIterator[Any]:
        try:
            async for chunk in inner:
                log.chunk(chunk)
                yield chunk
        except GeneratorExit:
            raise  # collected unfinished: the finalizer logs it
        except BaseException as err:
            log.end(err)
            raise
        log.end()

    close = stream.close

    async def instrumented_close() -> None:
        try:
            await close()
        finally:
            log.end(None, _INCOMPLETE)

    stream._iterator = observe()
    setattr(stream, "close", instrumented_close)  # noqa: B010
    log.watch(stream)


# Streams collected unfinished, queued by their finalizers. SimpleQueue.put is reentrant:
# safe inside a garbage collection that interrupted any code of this thread.
_abandoned: queue.SimpleQueue[_StreamLog | threading.Event] = queue.SimpleQueue()
_worker: tuple[int, threading.Thread] | None = None
_worker_lock = threading.Lock()


def _start_worker() -> None:
    global _worker
    worker = _worker
    if worker is not None and worker[0] == os.getpid():
        return
    with _worker_lock:
        worker = _worker
        if worker is None or worker[0] != os.getpid():  # none yet, or the parent's
            thread = threading.Thread(
                target=_log_abandoned, name="eventlog-openai-streams", daemon=True
            )
            thread.start()
            _worker = (os.getpid(), thread)


def _log_abandoned() -> None:
    while True:
        item = _abandoned.get()
        if isinstance(item, threading.Event):
            item.set()
        else:
            item.abandoned()


def _wait_for_abandoned(timeout: float) -> bool:
    """Wait until the streams collected so far are logged (for tests)."""
    _start_worker()
    done = threading.Event()
    _abandoned.put(done)
    return done.wait(timeout)


class _Merged:
    """Chunks of a chat completion stream merged into one ``chat.completion``."""

    __slots__ = ("choices", "chunks", "head", "usage")

    def __init__(self) -> None:
        self.chunks = 0
        self.head: dict[str, JSON] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: JSON = None

    def add(self, chunk: Any) -> None:
        self.chunks += 1
        head = self.head
        for key in ("id", "created", "model", "service_tier", "system_fingerprint"):
            value = getattr(chunk, key, None)
            if value is not None:
                head[key] = value
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = _to_json(usage)
        for choice in getattr(chunk, "choices", None) or ():
            self._add_choice(choice)

    def _add_choice(self, choice: Any) -> None:
        merged = self.choices.get(choice.index)
        if merged is None:
            merged = self.choices[choice.index] = {
                "index": choice.index,
                "message": {"role": "assistant", "content": None},
                "finish_reason": None,
                "logprobs": None,
            }
        message = merged["message"]
        delta = choice.delta
        if delta is not None:
            if delta.role:
                message["role"] = delta.role
            for key in ("content", "refusal"):
                text = getattr(delta, key, None)
                if text:
                    message[key] = (message.get(key) or "") + text
            function_call = getattr(delta, "function_call", None)
            if function_call is not None:  # the deprecated single function call
                message["function_call"] = _merge_function(
                    message.get("function_call"), function_call
                )
            for tool_call in getattr(delta, "tool_calls", None) or ():
                calls = message.setdefault("tool_calls", {})
                entry = calls.setdefault(tool_call.index, {"id": None, "type": "function"})
                if tool_call.id:
                    entry["id"] = tool_call.id
                if tool_call.type:
                    entry["type"] = tool_call.type
                if tool_call.function is not None:
                    entry["function"] = _merge_function(entry.get("function"), tool_call.function)
        if choice.finish_reason is not None:
            merged["finish_reason"] = choice.finish_reason
        logprobs = getattr(choice, "logprobs", None)
        if logprobs is not None:
            into = merged["logprobs"] = merged["logprobs"] or {}
            for key in ("content", "refusal"):
                items = getattr(logprobs, key, None)
                if items:
                    into.setdefault(key, []).extend(_to_json(item) for item in items)

    def result(self) -> dict[str, JSON]:
        choices = []
        for index in sorted(self.choices):
            choice = dict(self.choices[index])
            message = dict(choice["message"])
            calls = message.get("tool_calls")
            if calls is not None:
                message["tool_calls"] = [calls[i] for i in sorted(calls)]
            choice["message"] = message
            choices.append(choice)
        result: dict[str, JSON] = {
            "id": self.head.get("id"),
            "object": "chat.completion",
            "created": self.head.get("created"),
            "model": self.head.get("model"),
            "choices": choices,
        }
        for key in ("service_tier", "system_fingerprint"):
            if key in self.head:
                result[key] = self.head[key]
        if self.usage is not None:
            result["usage"] = self.usage
        return result


def _merge_function(merged: dict[str, Any] | None, delta: Any) -> dict[str, Any]:
    merged = merged or {"name": "", "arguments": ""}
    if delta.name:
        merged["name"] += delta.name
    if delta.arguments:
        merged["arguments"] += delta.arguments
    return merged
