"""Parse chronicle's JSON wire format into event objects, naming what is wrong.

``parse_event`` is for input from outside (HTTP bodies, queues, files): every problem
raises :class:`~eventlog.InvalidEventError` whose ``field`` is the dotted path of the
offending value, so a client can be told exactly what to fix.

LLM calls travel in the same format as an object of ``type`` ``"chronicle_llm_request"``
carrying the :class:`~eventlog.ProxyLogEvent` fields, latencies in milliseconds
(:func:`parse_entry` reads any entry, :func:`entry_to_wire` writes one). Its
``internal_metadata`` (the trusted organization, project and user) is never read from
the wire: the receiving side sets it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from eventlog.events import (
    EventPayload,
    ProxyLogEntry,
    ProxyLogEvent,
    RequestMetadata,
    RunStartEvent,
    RunUpdateEvent,
    StepEndEvent,
    StepErrorEvent,
    StepStartEvent,
    StepStateEvent,
    WorkflowEvent,
    to_utc,
    utc_now,
)
from eventlog.exceptions import InvalidEventError
from eventlog.ids import uuid7

__all__ = ["LLM_EVENT_TYPE", "entry_to_wire", "parse_entry", "parse_event"]

LLM_EVENT_TYPE = "chronicle_llm_request"

T = TypeVar("T")
_MISSING: Any = object()


def _get(
    obj: Mapping[str, Any],
    key: str,
    path: str,
    convert: Callable[[Any, str], T],
    *,
    required: bool = False,
) -> T | None:
    value = obj.get(key, _MISSING)
    where = f"{path}{key}"
    if value is _MISSING or value is None:
        if required:
            raise InvalidEventError(where, "is required")
        return None
    return convert(value, where)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidEventError(where, f"must be a string, got {_kind(value)}")
    return value


def _uuid(value: Any, where: str) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidEventError(where, f"must be a UUID string, got {_show(value)}")


def _time(value: Any, where: str) -> datetime:
    if isinstance(value, str):
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            return to_utc(datetime.fromisoformat(text))
        except (ValueError, OverflowError):  # OverflowError: an offset past year 1 or 9999
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        # Unix time: seconds, or milliseconds as JavaScript's Date.now() gives.
        seconds = value / 1000 if value > 10_000_000_000 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            pass
    raise InvalidEventError(where, f"must be an ISO 8601 time or Unix seconds, got {_show(value)}")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidEventError(where, f"must be an object, got {_kind(value)}")
    return dict(value)


def _tags(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise InvalidEventError(where, f"must be an array of strings, got {_kind(value)}")
    for i, tag in enumerate(value):
        if not isinstance(tag, str):
            raise InvalidEventError(f"{where}.{i}", f"must be a string, got {_kind(tag)}")
    return list(value)


def _any(value: Any, where: str) -> Any:
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _when(obj: Mapping[str, Any]) -> datetime:
    """The event's ``time``, or now when it has none (as chronicle does)."""
    return _get(obj, "time", "", _time) or utc_now()


def _run_start(obj: Mapping[str, Any]) -> RunStartEvent:
    return RunStartEvent(
        id=_get(obj, "id", "", _uuid, required=True),  # type: ignore[arg-type]
        name=_get(obj, "name", "", _str, required=True),  # type: ignore[arg-type]
        description=_get(obj, "description", "", _str),
        status=_get(obj, "status", "", _str),
        application=_get(obj, "application", "", _str),
        environment=_get(obj, "environment", "", _str),
        input=obj.get("input"),
        trace_id=_get(obj, "trace_id", "", _str),
        span_id=_get(obj, "span_id", "", _str),
        tags=_get(obj, "tags", "", _tags) or (),
        info=_get(obj, "info", "", _object),
        time=_when(obj),
    )


def _run_update(obj: Mapping[str, Any]) -> RunUpdateEvent:
    return RunUpdateEvent(
        id=_get(obj, "id", "", _uuid, required=True),  # type: ignore[arg-type]
        status=_get(obj, "status", "", _str),
        output=obj.get("output"),
        info=_get(obj, "info", "", _object),
        time=_when(obj),
    )


def _step_ids(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "step_id": _get(obj, "step_id", "", _uuid, required=True),
        "run_id": _get(obj, "run_id", "", _uuid, required=True),
        "time": _when(obj),
    }


def _data(obj: Mapping[str, Any]) -> dict[str, Any]:
    data = _get(obj, "data", "", _object)
    return {} if data is None else data


def _step_start(obj: Mapping[str, Any]) -> StepStartEvent:
    data = _data(obj)
    if "data" not in obj or obj["data"] is None:
        raise InvalidEventError("data", "is required")
    return StepStartEvent(
        **_step_ids(obj),
        type=_get(data, "type", "data.", _str, required=True),  # type: ignore[arg-type]
        name=_get(data, "name", "data.", _str),
        parent_step=_get(data, "parent_step", "data.", _uuid),
        span_id=_get(data, "span_id", "data.", _str),
        tags=_get(data, "tags", "data.", _tags) or (),
        info=_get(data, "info", "data.", _object),
        input=data.get("input"),
    )


def _step_end(obj: Mapping[str, Any]) -> StepEndEvent:
    data = _data(obj)
    return StepEndEvent(
        **_step_ids(obj),
        output=data.get("output"),
        info=_get(data, "info", "data.", _object),
    )


def _step_error(obj: Mapping[str, Any]) -> StepErrorEvent:
    data = _data(obj)
    return StepErrorEvent(**_step_ids(obj), error=data.get("error"))


def _step_state(obj: Mapping[str, Any]) -> StepStateEvent:
    data = _data(obj)
    if "data" not in obj or obj["data"] is None:
        raise InvalidEventError("data", "is required")
    state = _get(data, "state", "data.", _str, required=True)
    return StepStateEvent(**_step_ids(obj), state=state)  # type: ignore[arg-type]


def _generic(obj: Mapping[str, Any]) -> EventPayload:
    return EventPayload(
        id=_get(obj, "id", "", _uuid) or uuid7(),
        type=obj["type"],
        data=obj.get("data"),
        error=obj.get("error"),
        run_id=_get(obj, "run_id", "", _uuid),
        step_id=_get(obj, "step_id", "", _uuid),
        time=_when(obj),
    )


_PARSERS: dict[str, Callable[[Mapping[str, Any]], WorkflowEvent]] = {
    RunStartEvent.TYPE: _run_start,
    RunUpdateEvent.TYPE: _run_update,
    StepStartEvent.TYPE: _step_start,
    StepEndEvent.TYPE: _step_end,
    StepErrorEvent.TYPE: _step_error,
    StepStateEvent.TYPE: _step_state,
}


def parse_event(obj: Any) -> WorkflowEvent:
    """Build the event that one JSON object of chronicle's wire format describes.

    ``obj["type"]`` picks the class: ``run:start``, ``run:update``, ``step:start``,
    ``step:end``, ``step:error``, ``step:state``, or any other string for a generic
    :class:`~eventlog.EventPayload`. Unknown keys are ignored, as chronicle does.
    Raises :class:`~eventlog.InvalidEventError` naming the offending field.
    """
    if not isinstance(obj, Mapping):
        raise InvalidEventError("", f"must be a JSON object, got {_kind(obj)}")
    typ = obj.get("type", _MISSING)
    if typ is _MISSING or typ is None:
        raise InvalidEventError("type", "is required")
    if not isinstance(typ, str) or not typ:
        raise InvalidEventError("type", f"must be a non-empty string, got {_show(typ)}")
    return _PARSERS.get(typ, _generic)(obj)


def _milliseconds(value: Any, where: str) -> timedelta:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        try:
            return timedelta(milliseconds=value)
        except OverflowError:
            pass
    raise InvalidEventError(where, f"must be milliseconds >= 0, got {_show(value)}")


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidEventError(where, f"must be true or false, got {_kind(value)}")
    return value


def _int(value: Any, where: str) -> int:
    # JSON has one number type: 3.0 is the integer 3 (JSON Schema says so too).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidEventError(where, f"must be an integer, got {_show(value)}")
    return value


_METADATA_TYPES: dict[str, Callable[[Any, str], Any]] = {
    "run_id": _uuid,
    "step_id": _uuid,
    "step_index": _int,
    "prompt_version": _int,
    "extra": _object,
}


def _metadata(value: Any, where: str) -> RequestMetadata:
    values = _object(value, where)
    known: dict[str, Any] = {}
    for key, item in values.items():
        if item is None:
            continue
        if key in _METADATA_TYPES:
            known[key] = _METADATA_TYPES[key](item, f"{where}.{key}")
        elif key in RequestMetadata._KNOWN:
            known[key] = _str(item, f"{where}.{key}")
        else:
            known[key] = item  # an unknown key: kept in `extra`, as from_dict does
    return RequestMetadata.from_dict(known)


def _llm_event(obj: Mapping[str, Any]) -> ProxyLogEvent:
    return ProxyLogEvent(
        id=_get(obj, "id", "", _uuid) or uuid7(),
        event_type=_get(obj, "event_type", "", _str) or LLM_EVENT_TYPE,
        timestamp=_get(obj, "timestamp", "", _time) or _when(obj),
        request=obj.get("request"),
        response=obj.get("response"),
        provider=_get(obj, "provider", "", _str),
        model=_get(obj, "model", "", _str),
        latency=_get(obj, "latency", "", _milliseconds),
        total_latency=_get(obj, "total_latency", "", _milliseconds),
        was_rate_limited=_get(obj, "was_rate_limited", "", _bool),
        num_retries=_get(obj, "num_retries", "", _int),
        error=obj.get("error"),
        metadata=_get(obj, "metadata", "", _metadata) or RequestMetadata(),
        response_meta=_get(obj, "response_meta", "", _object),
        time_to_first_token=_get(obj, "time_to_first_token", "", _milliseconds),
    )


def parse_entry(obj: Any) -> ProxyLogEntry:
    """Like :func:`parse_event`, and an LLM call for ``type`` ``"chronicle_llm_request"``."""
    if isinstance(obj, Mapping) and obj.get("type") == LLM_EVENT_TYPE:
        return _llm_event(obj)
    return parse_event(obj)


def _ms(value: timedelta | None) -> float | None:
    return None if value is None else value / timedelta(milliseconds=1)


def entry_to_wire(entry: ProxyLogEntry) -> dict[str, Any]:
    """``entry`` as a JSON object of the wire format, which :func:`parse_entry` reads back
    (``internal_metadata`` left out). Values are JSON-ready except for the request,
    response and other free-form values, which are as the entry holds them."""
    if not isinstance(entry, ProxyLogEvent):
        return entry.to_json()
    metadata = {
        name: str(value) if isinstance(value, uuid.UUID) else value
        for name in RequestMetadata._KNOWN
        if (value := getattr(entry.metadata, name)) is not None
    }
    wire: dict[str, Any] = {
        "type": LLM_EVENT_TYPE,
        "id": str(entry.id),
        "timestamp": entry.timestamp.isoformat(),
        "request": entry.request,
        "response": entry.response,
        "provider": entry.provider,
        "model": entry.model,
        "latency": _ms(entry.latency),
        "total_latency": _ms(entry.total_latency),
        "was_rate_limited": entry.was_rate_limited,
        "num_retries": entry.num_retries,
        "error": entry.error,
        "metadata": metadata or None,
        "response_meta": entry.response_meta,
        "time_to_first_token": _ms(entry.time_to_first_token),
    }
    if entry.event_type != LLM_EVENT_TYPE:
        wire["event_type"] = entry.event_type
    return {key: value for key, value in wire.items() if value is not None}
