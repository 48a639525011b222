"""How an entry becomes the values of a row: one place, shared by every backend.

Follows chronicle's mapping (``internal_metadata`` -> ``organization_id`` ...,
``metadata`` -> ``request_*`` and the workflow columns, ``extra`` -> ``meta``), and adds
eventlog's columns: token counts read from the response's ``usage`` under one counting
rule, the cost and the price it came from, time to first token, ``status`` and
``error_type`` (see :mod:`eventlog.usage`). Absent values stay ``None`` (SQL NULL).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from eventlog.events import (
    EventPayload,
    ProxyLogEvent,
    RunStartEvent,
    RunUpdateEvent,
    StepEndEvent,
    StepErrorEvent,
    StepStartEvent,
    StepStateEvent,
)
from eventlog.usage import (
    PROVIDER_PRICE_ID,
    call_status,
    error_type,
    priced_cost,
    read_tokens,
    reported_cost,
)

if TYPE_CHECKING:
    from eventlog.prices import PriceBook

__all__ = [
    "EVENT_COLUMNS",
    "event_row",
    "event_values",
    "payload_row",
    "payload_values",
    "token_counts",
    "workflow_params",
]

Row = dict[str, Any]


def _ms(value: timedelta | None) -> int | None:
    return None if value is None else round(value.total_seconds() * 1000)


def token_counts(response: Any) -> tuple[int | None, int | None, int | None]:
    """(prompt, completion, total) tokens from a response body's ``usage``."""
    tokens = read_tokens(response)
    return tokens.prompt, tokens.completion, tokens.total


def _model(event: ProxyLogEvent) -> str | None:
    if event.model is not None:
        return event.model
    for body in (event.response, event.request):
        if isinstance(body, Mapping):
            model = body.get("model")
            if isinstance(model, str):
                return model
    return None


def _object_or_wrapped(value: Any) -> Any:
    """``meta`` always holds an object: a non-object value is kept as ``{"data": v}``."""
    if value is None or isinstance(value, Mapping):
        return value
    return {"data": value}


EVENT_COLUMNS: tuple[str, ...] = (
    "id",
    "event_type",
    "organization_id",
    "project_id",
    "user_id",
    "chat_request",
    "chat_response",
    "error",
    "provider",
    "model",
    "application",
    "environment",
    "request_organization_id",
    "request_project_id",
    "request_user_id",
    "workflow_id",
    "workflow_name",
    "run_id",
    "step_id",
    "step_index",
    "prompt_id",
    "prompt_version",
    "meta",
    "response_meta",
    "retries",
    "rate_limited",
    "request_latency_ms",
    "total_latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "created_at",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "price_id",
    "ttft_ms",
    "status",
    "error_type",
)
"""The ``chronicle_events`` columns, in table order: the order of the value tuples."""


def event_values(event: ProxyLogEvent, prices: PriceBook | None = None) -> tuple[Any, ...]:
    """The ``chronicle_events`` values of an LLM call, in :data:`EVENT_COLUMNS` order.

    The cost is the one the provider reported, else priced with ``prices`` (none
    without it). A tuple rather than a dict: this runs once per event on the writer's
    hot path.
    """
    meta = event.metadata
    internal = event.internal_metadata
    tokens = read_tokens(event.response)
    model = _model(event)
    cost = reported_cost(event.response, event.response_meta)
    if cost is not None:
        price_id: str | None = PROVIDER_PRICE_ID
    elif prices is not None:
        cost, price_id = priced_cost(
            prices, event.provider, model, event.timestamp, tokens, failed=event.error is not None
        )
    else:
        price_id = None
    kind = error_type(event.error)
    # An empty name is no name: the reports' dimensions (and the rollup's keys) hold
    # NULL for "none", so '' must not become a group of its own.
    return (
        event.id,
        event.event_type,
        internal.organization_id or None,
        internal.project_id or None,
        internal.user_id or None,
        event.request,
        event.response,
        event.error,
        event.provider or None,
        model or None,
        meta.application or None,
        meta.environment or None,
        meta.organization_id,
        meta.project_id,
        meta.user_id,
        meta.workflow_id,
        meta.workflow_name,
        meta.run_id,
        meta.step_id,
        meta.step_index,
        meta.prompt_id,
        meta.prompt_version,
        meta.extra or None,
        event.response_meta or None,
        event.num_retries,
        event.was_rate_limited,
        _ms(event.latency),
        _ms(event.total_latency),
        tokens.prompt,
        tokens.completion,
        tokens.total,
        event.timestamp,
        tokens.cache_read,
        tokens.cache_write,
        tokens.reasoning,
        cost,
        price_id,
        _ms(event.time_to_first_token),
        call_status(event.error, event.was_rate_limited, kind),
        kind,
    )


def payload_values(event: EventPayload) -> tuple[Any, ...]:
    """The ``chronicle_events`` values of a generic event: ``data`` goes to ``meta``."""
    internal = event.internal_metadata
    return (
        event.id,
        event.type,
        None if internal is None else internal.organization_id or None,
        None if internal is None else internal.project_id or None,
        None if internal is None else internal.user_id or None,
        None,
        None,
        event.error,
        *_NINE_NONES,
        event.run_id,
        event.step_id,
        None,
        None,
        None,
        _object_or_wrapped(event.data),
        *_NINE_NONES[:8],
        event.time,
        *_NINE_NONES[:6],
        None if event.error is None else "error",
        error_type(event.error),
    )


_NINE_NONES = (None,) * 9


def event_row(event: ProxyLogEvent, prices: PriceBook | None = None) -> Row:
    """The ``chronicle_events`` row of an LLM call, as a dict (for reading and tests)."""
    return dict(zip(EVENT_COLUMNS, event_values(event, prices), strict=True))


def payload_row(event: EventPayload) -> Row:
    """The ``chronicle_events`` row of a generic event, as a dict."""
    return dict(zip(EVENT_COLUMNS, payload_values(event), strict=True))


def _info(value: Any) -> Any:
    return _object_or_wrapped(value) if value is not None else None


def workflow_params(event: Any) -> Row:
    """The bound values of the statement that applies a run or step event."""
    if isinstance(event, RunStartEvent):
        return {
            "id": event.id,
            "name": event.name,
            "description": event.description,
            "application": event.application,
            "environment": event.environment,
            "input": event.input,
            "status": event.status or "started",
            "trace_id": event.trace_id,
            "span_id": event.span_id,
            "tags": list(event.tags) or None,
            "info": _info(event.info),
            "created_at": event.time,
            "updated_at": event.time,
        }
    if isinstance(event, RunUpdateEvent):
        return {
            "id": event.id,
            "status": event.status or "finished",
            "output": event.output,
            "info": _info(event.info),
            "created_at": event.time,
            "updated_at": event.time,
        }
    if isinstance(event, StepStartEvent):
        return {
            "id": event.step_id,
            "run_id": event.run_id,
            "type": event.type,
            "parent_step": event.parent_step,
            "name": event.name,
            "input": event.input,
            "status": "started",
            "tags": list(event.tags) or None,
            "info": _info(event.info),
            "span_id": event.span_id,
            "start_time": event.time,
        }
    if isinstance(event, StepEndEvent):
        return {
            "id": event.step_id,
            "run_id": event.run_id,
            "status": "finished",
            "output": event.output,
            "info": _info(event.info),
            "end_time": event.time,
        }
    if isinstance(event, StepErrorEvent):
        # As chronicle: the error is the step's output, and the status says it failed.
        return {
            "id": event.step_id,
            "run_id": event.run_id,
            "status": "error",
            "output": event.error,
            "info": None,
            "end_time": event.time,
        }
    if isinstance(event, StepStateEvent):
        return {"id": event.step_id, "run_id": event.run_id, "status": event.state}
    raise TypeError(f"not a run or step event: {type(event).__name__}")
