"""What the collector makes of a request body: entries, or the precise reason it cannot.

Three shapes come in over HTTP:

- chronicle's events (``POST /event``, ``POST /events`` with ``{"events": [...]}``), read
  with :func:`eventlog.parse.parse_entry`, so LLM calls (``"chronicle_llm_request"``)
  travel the same way. chronicle's ``x-chronicle-*`` request headers are merged into each
  ``run:start`` as chronicle's own API does (``application`` and ``environment`` when the
  event has none, the other values into ``info``), and into each LLM call's metadata
  where the call leaves a field unset (as chronicle's proxy merges them into a request).
- FastChat's flat objects (``POST /log``): any JSON object, stored whole as a generic
  event, with the values FastChat's ``RemoteLogger`` turned into JSON strings decoded
  back.

A request is accepted whole or refused whole: :class:`InvalidEvents` lists every bad
event, so a client can fix them all at once. Nothing here reads ``internal_metadata``:
who an event belongs to is for the trusted side to say, never a request body.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson

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
    utc_now,
)
from eventlog.exceptions import InvalidEventError
from eventlog.ids import uuid7
from eventlog.parse import LLM_EVENT_TYPE, _kind, _time, parse_entry

__all__ = [
    "FASTCHAT_DEFAULT_TYPE",
    "MAX_DEPTH",
    "RESERVED_TYPES",
    "BadRequest",
    "EventError",
    "HeaderMetadata",
    "InvalidEvents",
    "entry_id",
    "fastchat_event",
    "header_metadata",
    "idempotency_key",
    "load_json",
    "too_deep",
    "parse_batch",
]

FASTCHAT_DEFAULT_TYPE: Final = "remote_log"
"""The type of a ``/log`` object that names none (no ``type`` or ``event`` key)."""


class BadRequest(Exception):
    """The request as a whole is unreadable (status 400): not JSON, a bad header."""


@dataclass(frozen=True, slots=True)
class EventError:
    """Why one event of a request was refused: ``index`` in the request (None when the
    body itself has the wrong shape), the dotted ``field``, and the rule it breaks."""

    index: int | None
    field: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


class InvalidEvents(Exception):
    """One or more events failed validation (status 422); ``errors`` has one per event."""

    def __init__(self, errors: list[EventError]) -> None:
        super().__init__(f"{len(errors)} invalid events")
        self.errors = errors


# -- JSON ----------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is too large for a double")
    return value


# 20 digits in a row: maybe an integer past 64 bits, which orjson turns into a float.
# Every digit mapped to "0", then one substring search: ten times faster than a regex.
_DIGITS_TO_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")
_TWENTY_DIGITS: Final = b"0" * 20


def _may_hold_long_integers(body: bytes) -> bool:
    return _TWENTY_DIGITS in body.translate(_DIGITS_TO_ZERO)


def load_json(body: bytes) -> Any:
    """The JSON value of ``body``; :class:`BadRequest` if it is not JSON.

    orjson parses nearly every body. It turns integers past 64 bits into floats (losing
    digits) and refuses escaped lone surrogates, both valid JSON: bodies that may hold
    them take the standard library's parser, which keeps them exactly, and the writer
    then stores them in the documented repaired form (see :mod:`eventlog.sanitize`).
    """
    first: Exception | None = None
    if not _may_hold_long_integers(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as err:
            first = err
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as err:
        raise BadRequest(f"malformed JSON: {first or err}") from None


# -- chronicle's headers -------------------------------------------------------------


def _text(value: str, name: str) -> str:
    return value


def _integer(value: str, name: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise BadRequest(f"header {name} must be an integer, got {value!r}") from None


def _uuid(value: str, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise BadRequest(f"header {name} must be a UUID, got {value!r}") from None


def _json_object(value: str, name: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise BadRequest(f"header {name} must be a JSON object, got {value!r}")
    if too_deep(parsed):
        raise BadRequest(f"header {name} nests deeper than {MAX_DEPTH} levels")
    return parsed


# header -> (RequestMetadata field, converter); chronicle's names and types.
_HEADERS: Final[dict[str, tuple[str, Callable[[str, str], Any]]]] = {
    "x-chronicle-application": ("application", _text),
    "x-chronicle-environment": ("environment", _text),
    "x-chronicle-organization-id": ("organization_id", _text),
    "x-chronicle-project-id": ("project_id", _text),
    "x-chronicle-user-id": ("user_id", _text),
    "x-chronicle-workflow-id": ("workflow_id", _text),
    "x-chronicle-workflow-name": ("workflow_name", _text),
    "x-chronicle-run-id": ("run_id", _uuid),
    "x-chronicle-step": ("step_id", _uuid),
    "x-chronicle-step-index": ("step_index", _integer),
    "x-chronicle-prompt-id": ("prompt_id", _text),
    "x-chronicle-prompt-version": ("prompt_version", _integer),
    "x-chronicle-extra-meta": ("extra", _json_object),
}

# What chronicle's RunStartEvent::merge_metadata copies into a run's ``info``, in order.
_RUN_INFO_FIELDS: Final = (
    "organization_id",
    "project_id",
    "user_id",
    "workflow_id",
    "workflow_name",
    "step_index",
    "prompt_id",
    "prompt_version",
)


@dataclass(frozen=True, slots=True)
class HeaderMetadata:
    """The ``x-chronicle-*`` headers of one request, by :class:`RequestMetadata` field."""

    values: Mapping[str, Any]

    def __bool__(self) -> bool:
        return bool(self.values)

    def apply(self, entry: ProxyLogEntry) -> None:
        """Merge into ``entry``: a ``run:start`` as chronicle's API does, an LLM call's
        unset metadata fields as chronicle's proxy does; other events are left alone."""
        if not self.values:
            return
        if isinstance(entry, RunStartEvent):
            self._apply_to_run(entry)
        elif isinstance(entry, ProxyLogEvent):
            self._apply_to_call(entry.metadata)

    def _apply_to_run(self, run: RunStartEvent) -> None:
        values = self.values
        if run.application is None:
            run.application = values.get("application")
        if run.environment is None:
            run.environment = values.get("environment")
        # As chronicle: the headers' values replace the same keys of the body's info.
        added = {name: values[name] for name in _RUN_INFO_FIELDS if name in values}
        added.update(values.get("extra") or {})
        if added:
            run.info = {**(run.info or {}), **added}

    def _apply_to_call(self, metadata: RequestMetadata) -> None:
        for name, value in self.values.items():
            if getattr(metadata, name) is None:
                setattr(metadata, name, dict(value) if name == "extra" else value)


def header_metadata(headers: Mapping[str, str]) -> HeaderMetadata:
    """Read chronicle's ``x-chronicle-*`` headers; :class:`BadRequest` names a bad one."""
    values: dict[str, Any] = {}
    for header, (name, convert) in _HEADERS.items():
        raw = headers.get(header)
        if raw is not None:
            values[name] = convert(raw, header)
    return HeaderMetadata(values)


def idempotency_key(headers: Mapping[str, str]) -> uuid.UUID | None:
    """The ``Idempotency-Key`` header, a UUID that becomes a ``/log`` event's id (so a
    retried post is stored once); None without one, :class:`BadRequest` if not a UUID."""
    raw = headers.get("idempotency-key")
    return None if raw is None else _uuid(raw, "Idempotency-Key")


# -- chronicle's events --------------------------------------------------------------


def _message(err: InvalidEventError) -> str:
    """The rule alone, without the "invalid event: field 'x'" that ``field`` already says."""
    text = str(err)
    prefix = "invalid event: " + (f"field {err.field!r} " if err.field else "event ")
    return text[len(prefix) :] if text.startswith(prefix) else text


def _parse(obj: Any, index: int | None) -> ProxyLogEntry | EventError:
    try:
        return parse_entry(obj)
    except InvalidEventError as err:
        return EventError(index, err.field, _message(err))
    except (ValueError, TypeError, OverflowError) as err:
        # A value the parser checks the type of but that the event classes still refuse
        # (a time whose offset takes it past year 9999): the event's fault, not ours.
        return EventError(index, "", f"{type(err).__name__}: {err}")


def parse_batch(
    items: list[Any], headers: HeaderMetadata, *, indexed: bool = True
) -> list[ProxyLogEntry]:
    """Every item as an entry with the headers merged in, or :class:`InvalidEvents` with
    one error per bad item (``indexed=False``: the body is one event, index 0)."""
    entries: list[ProxyLogEntry] = []
    errors: list[EventError] = []
    for i, item in enumerate(items):
        index = i if indexed else 0
        if too_deep(item):
            errors.append(EventError(index, "", f"nests deeper than {MAX_DEPTH} levels"))
            continue
        parsed = _parse(item, index)
        if isinstance(parsed, EventError):
            errors.append(parsed)
        elif not errors:
            headers.apply(parsed)
            entries.append(parsed)
    if errors:
        raise InvalidEvents(errors)
    return entries


def entry_id(entry: ProxyLogEntry) -> uuid.UUID:
    """The id a client correlates ``entry`` by: an event's or LLM call's own id, a run
    event's run id, a step event's step id."""
    if isinstance(entry, (EventPayload, ProxyLogEvent, RunStartEvent, RunUpdateEvent)):
        return entry.id
    return entry.step_id


# -- FastChat's flat objects ---------------------------------------------------------


def _decoded(value: Any) -> Any:
    """``value``, or the object or array it is the JSON text of (FastChat's
    ``RemoteLogger`` sends nested values as ``json.dumps`` strings)."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return value
        if isinstance(parsed, (dict, list)):
            return parsed
    return value


def _fastchat_time(obj: Mapping[str, Any]) -> datetime:
    for key in ("tstamp", "time"):
        value = obj.get(key)
        if value is not None:
            try:
                return _time(value, key)
            except (InvalidEventError, OverflowError, ValueError):
                continue  # kept in `data` as it came; the receipt time stands in
    return utc_now()


RESERVED_TYPES: Final = (
    RunStartEvent.TYPE,
    RunUpdateEvent.TYPE,
    StepStartEvent.TYPE,
    StepEndEvent.TYPE,
    StepErrorEvent.TYPE,
    StepStateEvent.TYPE,
    LLM_EVENT_TYPE,
)
"""The ``type`` values that make an event a run, step or LLM-call event, not a generic one."""


def _fastchat_type(obj: Mapping[str, Any]) -> str:
    for key in ("type", "event"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            # A flat object is a generic event: it may not pass for a run, a step or an
            # LLM call by its type alone.
            return FASTCHAT_DEFAULT_TYPE if value in RESERVED_TYPES else value
    return FASTCHAT_DEFAULT_TYPE


MAX_DEPTH: Final = 512
"""Nesting a request's JSON may have: deeper values cannot be written (the encoders
recurse), so they are refused with a 422 instead of becoming dead letters."""


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests objects and arrays deeper than ``limit`` (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def fastchat_event(obj: Any, event_id: uuid.UUID | None = None) -> EventPayload:
    """A flat JSON object, as FastChat's ``RemoteLogger`` posts it, as a generic event.

    The whole object (JSON-string values decoded) is the event's ``data``; its type is
    the object's ``type`` or ``event``, else ``"remote_log"``; its time is ``tstamp`` or
    ``time`` when one reads as a time, else the time of receipt. ``event_id`` (the
    request's ``Idempotency-Key``) makes a retried post store one row.
    """
    if not isinstance(obj, dict):
        raise InvalidEvents([EventError(0, "", f"must be a JSON object, got {_kind(obj)}")])
    data = {key: _decoded(value) for key, value in obj.items()}
    if too_deep(data):
        raise InvalidEvents([EventError(0, "", f"nests deeper than {MAX_DEPTH} levels")])
    return EventPayload(
        id=event_id or uuid7(),
        type=_fastchat_type(obj),
        data=data,
        time=_fastchat_time(obj),
    )
