"""The entries a logger writes: LLM calls, workflow runs and steps, and generic events.

Plain data, no I/O. Everything is constructible from Python with keyword arguments;
:func:`eventlog.parse_event` builds the workflow classes from chronicle's JSON wire format
(``{"type": "run:start", ...}``), and ``to_json()`` turns them back into it.

Constructors normalise what is cheap to normalise once, at the call site, so the writer
and every later reader see one shape: naive datetimes are taken as UTC, latencies become
``timedelta``, metadata dicts become :class:`RequestMetadata`, and exceptions become
``{"type", "message", "traceback"}`` dicts (holding the exception itself would keep its
frames alive while the entry waits in the queue).
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, TypeAlias

from eventlog.ids import uuid7

__all__ = [
    "ENTRY_TYPES",
    "EventPayload",
    "InternalMetadata",
    "ProxyLogEntry",
    "ProxyLogEvent",
    "RequestMetadata",
    "RunStartEvent",
    "RunUpdateEvent",
    "StepEndEvent",
    "StepErrorEvent",
    "StepStartEvent",
    "StepStateEvent",
    "WorkflowEvent",
    "error_to_json",
    "to_utc",
    "utc_now",
]

JSON: TypeAlias = Any
"""A JSON-like value: dict, list, str, int, float, bool or None."""


def to_utc(value: datetime) -> datetime:
    """An aware datetime in UTC; a naive one is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utc_now() -> datetime:
    """The current time, aware, in UTC: every event's default time."""
    return datetime.now(UTC)


def _opt_time(value: datetime | None) -> datetime | None:
    return None if value is None else to_utc(value)


def error_to_json(error: object) -> JSON:
    """An exception as ``{"type", "message", "traceback"}``; anything else unchanged."""
    if isinstance(error, BaseException):
        result: dict[str, Any] = {"type": type(error).__qualname__, "message": str(error)}
        module = type(error).__module__
        if module not in ("builtins", "__main__"):
            result["type"] = f"{module}.{type(error).__qualname__}"
        if error.__traceback__ is not None:
            result["traceback"] = "".join(traceback.format_exception(error))
        return result
    return error


def _tags(value: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)):
        raise TypeError(f"tags must be a sequence of strings, not one {type(value).__name__}")
    return tuple(value)


def _as_duration(name: str, value: timedelta | float | None) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    raise TypeError(f"{name} must be a timedelta or seconds as a float, got {type(value).__name__}")


@dataclass(slots=True, kw_only=True)
class RequestMetadata:
    """What the application says about an LLM call: who, where, in which workflow.

    Stored in the ``request_*``, ``application`` ... ``prompt_version`` columns of
    ``chronicle_events``; ``extra`` (any other keys) goes to the ``meta`` column.
    """

    application: str | None = None
    environment: str | None = None
    organization_id: str | None = None
    project_id: str | None = None
    user_id: str | None = None
    workflow_id: str | None = None
    workflow_name: str | None = None
    run_id: uuid.UUID | None = None
    step_id: uuid.UUID | None = None
    step_index: int | None = None
    prompt_id: str | None = None
    prompt_version: int | None = None
    extra: dict[str, JSON] | None = None

    _KNOWN: ClassVar[frozenset[str]]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RequestMetadata:
        """Build from a dict with the field names; unknown keys go to ``extra``."""
        known = {k: v for k, v in values.items() if k in cls._KNOWN}
        unknown = {k: v for k, v in values.items() if k not in cls._KNOWN}
        if unknown:
            extra = dict(known.pop("extra", None) or {})
            extra.update(unknown)
            known["extra"] = extra
        for key in ("run_id", "step_id"):
            if isinstance(known.get(key), str):
                known[key] = uuid.UUID(known[key])
        return cls(**known)


RequestMetadata._KNOWN = frozenset(f.name for f in fields(RequestMetadata))


@dataclass(slots=True, kw_only=True)
class InternalMetadata:
    """Who the call belongs to, as established by the trusted side (never a request body).

    Stored in the ``organization_id``, ``project_id`` and ``user_id`` columns.
    """

    organization_id: str | None = None
    project_id: str | None = None
    user_id: str | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> InternalMetadata:
        """Build from a dict with the field names; other keys are a TypeError."""
        return cls(**values)


@dataclass(slots=True, kw_only=True)
class ProxyLogEvent:
    """One proxied model call: request, response, timing, retries and who made it."""

    id: uuid.UUID = field(default_factory=uuid7)
    event_type: str = "chronicle_llm_request"
    timestamp: datetime = field(default_factory=utc_now)
    request: JSON = None
    response: JSON = None
    provider: str | None = None
    model: str | None = None
    latency: timedelta | None = None
    total_latency: timedelta | None = None
    was_rate_limited: bool | None = None
    num_retries: int | None = None
    error: JSON = None
    metadata: RequestMetadata = field(default_factory=RequestMetadata)
    internal_metadata: InternalMetadata = field(default_factory=InternalMetadata)
    response_meta: dict[str, JSON] | None = None
    # eventlog's own: not in chronicle's event. From the request to the first streamed
    # token (or the whole answer, unstreamed); stored as chronicle_events.ttft_ms.
    time_to_first_token: timedelta | None = None

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is not UTC:
            self.timestamp = to_utc(self.timestamp)
        if self.latency is not None and not isinstance(self.latency, timedelta):
            self.latency = _as_duration("latency", self.latency)
        if self.time_to_first_token is not None and not isinstance(
            self.time_to_first_token, timedelta
        ):
            self.time_to_first_token = _as_duration("time_to_first_token", self.time_to_first_token)
        if self.total_latency is not None and not isinstance(self.total_latency, timedelta):
            self.total_latency = _as_duration("total_latency", self.total_latency)
        if isinstance(self.metadata, Mapping):
            self.metadata = RequestMetadata.from_dict(self.metadata)
        elif self.metadata is None:
            self.metadata = RequestMetadata()
        if isinstance(self.internal_metadata, Mapping):
            self.internal_metadata = InternalMetadata.from_dict(self.internal_metadata)
        elif self.internal_metadata is None:
            self.internal_metadata = InternalMetadata()
        if isinstance(self.error, BaseException):
            self.error = error_to_json(self.error)


# -- workflow events: chronicle's wire format ------------------------------------------


def _wire(value: Any) -> JSON:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


class _WireEvent:
    """What the workflow classes share: UTC ``time``, and ``to_json()`` from the fields.

    Step events carry their own fields under ``"data"`` on the wire, beside ``type``,
    ``step_id``, ``run_id`` and ``time``; the other classes are flat.
    """

    __slots__ = ()
    TYPE: ClassVar[str] = ""  # "" for EventPayload, whose ``type`` is a field
    _TOP_LEVEL: ClassVar[frozenset[str] | None] = None  # None: every field at top level
    _PRIVATE: ClassVar[frozenset[str]] = frozenset()  # never sent over the wire

    time: datetime

    def __post_init__(self) -> None:
        # `time` is a slot of each subclass; mypy only sees this class's empty slots.
        self.time = to_utc(self.time)  # type: ignore[misc]

    def to_json(self) -> dict[str, JSON]:
        """This event in chronicle's JSON wire format (absent values left out)."""
        top: dict[str, JSON] = {"type": self.TYPE} if self.TYPE else {}
        data: dict[str, JSON] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None or f.name in self._PRIVATE:
                continue
            at_top = self._TOP_LEVEL is None or f.name in self._TOP_LEVEL
            (top if at_top else data)[f.name] = _wire(value)
        if self._TOP_LEVEL is not None:
            top["data"] = data
        return top


_STEP_TOP_LEVEL = frozenset({"step_id", "run_id", "time"})


def _tags_post_init(event: RunStartEvent | StepStartEvent) -> None:
    _WireEvent.__post_init__(event)  # slots=True dataclasses cannot use super()
    event.tags = _tags(event.tags)


@dataclass(slots=True, kw_only=True)
class RunStartEvent(_WireEvent):
    """``run:start``: a workflow run begins, with ``status`` or else ``started``."""

    TYPE: ClassVar[str] = "run:start"

    id: uuid.UUID
    name: str
    description: str | None = None
    status: str | None = None
    application: str | None = None
    environment: str | None = None
    input: JSON = None
    trace_id: str | None = None
    span_id: str | None = None
    tags: Sequence[str] = ()
    info: dict[str, JSON] | None = None
    time: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        _tags_post_init(self)


@dataclass(slots=True, kw_only=True)
class RunUpdateEvent(_WireEvent):
    """``run:update``: a run's status changes (usually to ``finished`` or ``error``)."""

    TYPE: ClassVar[str] = "run:update"

    id: uuid.UUID
    status: str | None = None
    output: JSON = None
    info: dict[str, JSON] | None = None
    time: datetime = field(default_factory=utc_now)


@dataclass(slots=True, kw_only=True)
class StepStartEvent(_WireEvent):
    """``step:start``: a step of a run begins; on the wire its fields sit under ``data``."""

    TYPE: ClassVar[str] = "step:start"
    _TOP_LEVEL: ClassVar[frozenset[str] | None] = _STEP_TOP_LEVEL

    step_id: uuid.UUID
    run_id: uuid.UUID
    type: str
    name: str | None = None
    parent_step: uuid.UUID | None = None
    span_id: str | None = None
    tags: Sequence[str] = ()
    info: dict[str, JSON] | None = None
    input: JSON = None
    time: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        _tags_post_init(self)


@dataclass(slots=True, kw_only=True)
class StepEndEvent(_WireEvent):
    """``step:end``: a step finished with its output."""

    TYPE: ClassVar[str] = "step:end"
    _TOP_LEVEL: ClassVar[frozenset[str] | None] = _STEP_TOP_LEVEL

    step_id: uuid.UUID
    run_id: uuid.UUID
    output: JSON = None
    info: dict[str, JSON] | None = None
    time: datetime = field(default_factory=utc_now)


@dataclass(slots=True, kw_only=True)
class StepErrorEvent(_WireEvent):
    """``step:error``: a step failed; ``error`` is any JSON value or an exception."""

    TYPE: ClassVar[str] = "step:error"
    _TOP_LEVEL: ClassVar[frozenset[str] | None] = _STEP_TOP_LEVEL

    step_id: uuid.UUID
    run_id: uuid.UUID
    error: JSON = None
    time: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        _WireEvent.__post_init__(self)
        self.error = error_to_json(self.error)


@dataclass(slots=True, kw_only=True)
class StepStateEvent(_WireEvent):
    """``step:state``: a step moved to another state (``waiting``, ``paused``, ...)."""

    TYPE: ClassVar[str] = "step:state"
    _TOP_LEVEL: ClassVar[frozenset[str] | None] = _STEP_TOP_LEVEL

    step_id: uuid.UUID
    run_id: uuid.UUID
    state: str
    time: datetime = field(default_factory=utc_now)


@dataclass(slots=True, kw_only=True)
class EventPayload(_WireEvent):
    """Any other event (``type`` is free-form), stored as a row of ``chronicle_events``.

    ``data`` goes to the ``meta`` column. ``id`` is assigned when the event is created, so
    a client that retries the same event stores it once. ``internal_metadata`` (who the
    event belongs to, as the trusted side knows it) is never part of the wire format.
    """

    _PRIVATE: ClassVar[frozenset[str]] = frozenset({"internal_metadata"})

    type: str
    data: JSON = None
    error: JSON = None
    run_id: uuid.UUID | None = None
    step_id: uuid.UUID | None = None
    time: datetime = field(default_factory=utc_now)
    id: uuid.UUID = field(default_factory=uuid7)
    internal_metadata: InternalMetadata | None = None

    def __post_init__(self) -> None:
        _WireEvent.__post_init__(self)
        self.error = error_to_json(self.error)
        if isinstance(self.internal_metadata, Mapping):
            self.internal_metadata = InternalMetadata.from_dict(self.internal_metadata)


WorkflowEvent: TypeAlias = (
    RunStartEvent
    | RunUpdateEvent
    | StepStartEvent
    | StepEndEvent
    | StepErrorEvent
    | StepStateEvent
    | EventPayload
)
"""Any event of chronicle's workflow wire format, generic events included."""

ProxyLogEntry: TypeAlias = ProxyLogEvent | WorkflowEvent
"""Anything a :class:`~eventlog.LogSender` accepts."""

ENTRY_TYPES: Final = (
    ProxyLogEvent,
    RunStartEvent,
    RunUpdateEvent,
    StepStartEvent,
    StepEndEvent,
    StepErrorEvent,
    StepStateEvent,
    EventPayload,
)
"""The entry classes, as a tuple for ``isinstance`` and ``type(x) in``."""
