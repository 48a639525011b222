"""The collector's OpenAPI 3.1 description, written by hand from the parser's rules.

Generated schemas (from docstrings or type hints) would describe the handlers, not the
wire format :mod:`eventlog.parse` enforces; this one says exactly what ``parse_entry``
accepts (required fields, types, UUIDs, times), so a client generated from it sends
events the collector takes, and ``tests/test_server_fuzz.py`` checks the two agree.
"""

from __future__ import annotations

from typing import Any, Final

from eventlog.events import (
    RunStartEvent,
    RunUpdateEvent,
    StepEndEvent,
    StepErrorEvent,
    StepStartEvent,
    StepStateEvent,
)
from eventlog.ingest import RESERVED_TYPES
from eventlog.parse import LLM_EVENT_TYPE

__all__ = ["openapi_schema"]


# Years 0002-9998 only: a time in year 1 or 9999 with a UTC offset may fall outside the
# years Python's datetime (and so the parser) can hold.
_YEAR = "^(000[2-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9])-"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_UUID: Final = {"type": "string", "format": "uuid"}
_TEXT: Final = {"type": "string"}
_OBJECT: Final = {"type": "object"}
_ANY: Final[dict[str, Any]] = {}
_TAGS: Final = {"type": "array", "items": {"type": "string"}}
_TIME: Final = {
    "description": "An RFC 3339 time (UTC when it has no offset), or Unix time: seconds, "
    "or milliseconds when above 10,000,000,000. Absent: the time of receipt.",
    "anyOf": [
        {"type": "string", "format": "date-time", "pattern": _YEAR},
        {"type": "number", "minimum": 0, "maximum": 253402300799999},
        {"type": "null"},
    ],
}
_MILLISECONDS: Final = _nullable({"type": "number", "minimum": 0, "maximum": 1e15})


def _event(
    type_schema: dict[str, Any],
    properties: dict[str, Any],
    required: list[str],
    description: str,
) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {"type": type_schema, **properties},
        "required": ["type", *required],
    }


def _step(type_name: str, data: dict[str, Any], description: str) -> dict[str, Any]:
    return _event(
        {"const": type_name},
        {"step_id": _UUID, "run_id": _UUID, "time": _TIME, "data": data},
        ["step_id", "run_id", *(["data"] if "required" in data else [])],
        description,
    )


def _schemas() -> dict[str, Any]:
    step_data: dict[str, Any] = {
        "type": "object",
        "properties": {
            "type": _TEXT,
            "name": _nullable(_TEXT),
            "parent_step": _nullable(_UUID),
            "span_id": _nullable(_TEXT),
            "tags": _nullable(_TAGS),
            "info": _nullable(_OBJECT),
            "input": _ANY,
        },
        "required": ["type"],
    }
    metadata = {
        "type": "object",
        "description": "Who made the call and where it belongs; other keys go to `extra`.",
        "properties": {
            **{
                name: _nullable(_TEXT)
                for name in (
                    "application",
                    "environment",
                    "organization_id",
                    "project_id",
                    "user_id",
                    "workflow_id",
                    "workflow_name",
                    "prompt_id",
                )
            },
            "run_id": _nullable(_UUID),
            "step_id": _nullable(_UUID),
            "step_index": _nullable({"type": "integer"}),
            "prompt_version": _nullable({"type": "integer"}),
            "extra": _nullable(_OBJECT),
        },
    }
    return {
        "RunStart": _event(
            {"const": RunStartEvent.TYPE},
            {
                "id": _UUID,
                "name": _TEXT,
                "time": _TIME,
                "tags": _nullable(_TAGS),
                "info": _nullable(_OBJECT),
                "input": _ANY,
                **{
                    name: _nullable(_TEXT)
                    for name in (
                        "description",
                        "status",
                        "application",
                        "environment",
                        "trace_id",
                        "span_id",
                    )
                },
            },
            ["id", "name"],
            "A workflow run begins. chronicle's x-chronicle-* headers are merged in.",
        ),
        "RunUpdate": _event(
            {"const": RunUpdateEvent.TYPE},
            {
                "id": _UUID,
                "status": _nullable(_TEXT),
                "output": _ANY,
                "info": _nullable(_OBJECT),
                "time": _TIME,
            },
            ["id"],
            "A run's status changes.",
        ),
        "StepStart": _step(StepStartEvent.TYPE, step_data, "A step of a run begins."),
        "StepEnd": _step(
            StepEndEvent.TYPE,
            _nullable(
                {"type": "object", "properties": {"output": _ANY, "info": _nullable(_OBJECT)}}
            ),
            "A step finished.",
        ),
        "StepError": _step(
            StepErrorEvent.TYPE,
            _nullable({"type": "object", "properties": {"error": _ANY}}),
            "A step failed.",
        ),
        "StepState": _step(
            StepStateEvent.TYPE,
            {"type": "object", "properties": {"state": _TEXT}, "required": ["state"]},
            "A step moved to another state.",
        ),
        "LlmCall": _event(
            {"const": LLM_EVENT_TYPE},
            {
                "id": _nullable(_UUID),
                "event_type": _nullable(_TEXT),
                "timestamp": _TIME,
                "time": _TIME,
                "request": _ANY,
                "response": _ANY,
                "provider": _nullable(_TEXT),
                "model": _nullable(_TEXT),
                "latency": _MILLISECONDS,
                "total_latency": _MILLISECONDS,
                "time_to_first_token": _MILLISECONDS,
                "was_rate_limited": _nullable({"type": "boolean"}),
                "num_retries": _nullable({"type": "integer"}),
                "error": _ANY,
                "metadata": _nullable(metadata),
                "response_meta": _nullable(_OBJECT),
            },
            [],
            "One proxied model call, latencies in milliseconds. `internal_metadata` is "
            "never read from a request.",
        ),
        "GenericEvent": _event(
            {"type": "string", "minLength": 1, "not": {"enum": list(RESERVED_TYPES)}},
            {
                "id": _nullable(_UUID),
                "data": _ANY,
                "error": _ANY,
                "run_id": _nullable(_UUID),
                "step_id": _nullable(_UUID),
                "time": _TIME,
            },
            [],
            "Any other event. Without an `id` it gets one on receipt (returned in `ids`); "
            "a retry carrying the same `id` is stored once.",
        ),
        "Event": {
            "oneOf": [
                {"$ref": f"#/components/schemas/{name}"}
                for name in (
                    "RunStart",
                    "RunUpdate",
                    "StepStart",
                    "StepEnd",
                    "StepError",
                    "StepState",
                    "LlmCall",
                    "GenericEvent",
                )
            ]
        },
        "Events": {
            "type": "object",
            "properties": {
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}
            },
            "required": ["events"],
        },
        "FlatObject": {
            "type": "object",
            "description": "Any JSON object, as FastChat's RemoteLogger posts it.",
        },
        "Ids": {
            "type": "object",
            "properties": {"ids": {"type": "array", "items": _UUID}},
            "required": ["ids"],
        },
        "Error": {
            "type": "object",
            "properties": {"error": _TEXT, "ids": {"type": "array", "items": _UUID}},
            "required": ["error"],
        },
        "ValidationErrors": {
            "type": "object",
            "properties": {
                "errors": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "index": {"type": ["integer", "null"], "minimum": 0},
                            "field": _TEXT,
                            "message": _TEXT,
                        },
                        "required": ["index", "field", "message"],
                    },
                }
            },
            "required": ["errors"],
        },
        "Health": {
            "type": "object",
            "properties": {
                "status": {"enum": ["ok", "unavailable"]},
                "database": {"enum": ["ok", "unreachable", "not checked"]},
                "error": _TEXT,
                "logger": _nullable(_OBJECT),
            },
            "required": ["status", "database", "logger"],
        },
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _post(summary: str, body: str, *, auth: bool, max_body_bytes: int) -> dict[str, Any]:
    responses = {
        "201": _json("Ids", "With `wait=true`: the events are committed."),
        "202": _json("Ids", "The events are queued; one id per event, in request order."),
        "400": _json("Error", "Not JSON, a bad `x-chronicle-*` header, or a bad `wait`."),
        "413": _json("Error", f"The body is larger than {max_body_bytes} bytes."),
        "415": _json("Error", "The body is not `application/json`."),
        "422": {
            "description": "Events failed validation; none was accepted. Or, with "
            "`wait=true`, the database refused an event for good (set aside as a dead "
            "letter) and the request's other events are written: do not retry.",
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/ValidationErrors"},
                            {"$ref": "#/components/schemas/Error"},
                        ]
                    }
                }
            },
        },
        "503": _json(
            "Error",
            "Not accepted (the queue is full, the collector is stopping), or with "
            "`wait=true` not committed in time (they stay queued; to send them again "
            "without duplicates, give each event its id from `ids`).",
        ),
    }
    if auth:
        responses["401"] = _json("Error", "No bearer token, or a wrong one.")
    return {
        "summary": summary,
        "parameters": [
            {
                "name": "wait",
                "in": "query",
                "required": False,
                "description": "Answer only once the events are committed (201), or 503.",
                "schema": {"type": "boolean", "default": False},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        },
        "responses": responses,
    }


def openapi_schema(*, auth: bool, max_body_bytes: int, version: str) -> dict[str, Any]:
    """The description of a collector's routes; ``auth``: whether it wants a token."""
    paths: dict[str, Any] = {}
    for prefix in ("", "/v1"):
        for path, summary, body in (
            ("event", "Log one event (chronicle's format).", "Event"),
            ("events", "Log a batch of events (chronicle's format).", "Events"),
            ("log", "Log one flat object (FastChat's RemoteLogger).", "FlatObject"),
        ):
            operation = _post(summary, body, auth=auth, max_body_bytes=max_body_bytes)
            paths[f"{prefix}/{path}"] = {"post": operation}
        log = paths[f"{prefix}/log"]["post"]
        log["parameters"].append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "A UUID: the event's id, so that a retried post is stored once.",
                "schema": _UUID,
            }
        )
    unauthorized = {"401": _json("Error", "No bearer token, or a wrong one.")} if auth else {}
    paths["/healthz"] = {
        "get": {
            "summary": "Whether the database answers and the logger runs, with its stats.",
            "security": [],
            "responses": {
                "200": _json("Health", "Healthy."),
                "503": _json("Health", "The database does not answer, or the logger stopped."),
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics.",
            "responses": {
                "200": {
                    "description": "The Prometheus text format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **unauthorized,
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "summary": "This description.",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **unauthorized,
            },
        }
    }
    schema: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "eventlog collector",
            "version": version,
            "description": "Takes chronicle's events, LLM calls and FastChat's flat log "
            "objects over HTTP and writes them to PostgreSQL or SQLite in batches.",
        },
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
    if auth:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    return schema
