"""parse_event: chronicle's wire format in, event objects out, errors that name fields."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from eventlog import (
    EventLogError,
    EventPayload,
    InvalidEventError,
    RunStartEvent,
    RunUpdateEvent,
    StepEndEvent,
    StepErrorEvent,
    StepStartEvent,
    StepStateEvent,
    parse_event,
)

RUN = "0190b1d2-0000-7000-8000-000000000001"
STEP = "0190b1d2-0000-7000-8000-000000000002"
PARENT = "0190b1d2-0000-7000-8000-000000000003"
TIME = "2026-06-27T12:34:56.789Z"
WHEN = datetime(2026, 6, 27, 12, 34, 56, 789000, tzinfo=UTC)


def test_run_start() -> None:
    event = parse_event(
        {
            "type": "run:start",
            "id": RUN,
            "name": "summarise",
            "description": "d",
            "application": "app",
            "environment": "prod",
            "input": {"doc": 1},
            "trace_id": "t",
            "span_id": "s",
            "tags": ["a", "b"],
            "info": {"k": "v"},
            "time": TIME,
        }
    )
    assert event == RunStartEvent(
        id=uuid.UUID(RUN),
        name="summarise",
        description="d",
        application="app",
        environment="prod",
        input={"doc": 1},
        trace_id="t",
        span_id="s",
        tags=["a", "b"],
        info={"k": "v"},
        time=WHEN,
    )


def test_run_update() -> None:
    event = parse_event(
        {"type": "run:update", "id": RUN, "status": "error", "output": [1], "time": TIME}
    )
    assert event == RunUpdateEvent(id=uuid.UUID(RUN), status="error", output=[1], time=WHEN)


def test_step_start_reads_its_fields_from_data() -> None:
    event = parse_event(
        {
            "type": "step:start",
            "step_id": STEP,
            "run_id": RUN,
            "time": TIME,
            "data": {
                "type": "llm",
                "name": "call",
                "parent_step": PARENT,
                "span_id": "s",
                "tags": ["x"],
                "info": {"i": 1},
                "input": "hello",
            },
        }
    )
    assert event == StepStartEvent(
        step_id=uuid.UUID(STEP),
        run_id=uuid.UUID(RUN),
        type="llm",
        name="call",
        parent_step=uuid.UUID(PARENT),
        span_id="s",
        tags=["x"],
        info={"i": 1},
        input="hello",
        time=WHEN,
    )


def test_step_end_error_and_state() -> None:
    ids = {"step_id": STEP, "run_id": RUN, "time": TIME}
    end = parse_event({"type": "step:end", **ids, "data": {"output": 5, "info": {"a": 1}}})
    error = parse_event({"type": "step:error", **ids, "data": {"error": {"message": "x"}}})
    state = parse_event({"type": "step:state", **ids, "data": {"state": "waiting"}})
    common: dict[str, Any] = {"step_id": uuid.UUID(STEP), "run_id": uuid.UUID(RUN), "time": WHEN}
    assert end == StepEndEvent(**common, output=5, info={"a": 1})
    assert error == StepErrorEvent(**common, error={"message": "x"})
    assert state == StepStateEvent(**common, state="waiting")


def test_any_other_type_is_a_generic_event() -> None:
    event = parse_event(
        {"type": "feedback", "data": {"score": 1}, "run_id": RUN, "step_id": STEP, "time": TIME}
    )
    assert isinstance(event, EventPayload)
    assert (event.type, event.data, event.time) == ("feedback", {"score": 1}, WHEN)
    assert (event.run_id, event.step_id) == (uuid.UUID(RUN), uuid.UUID(STEP))


def test_generic_event_keeps_its_own_id_or_gets_one() -> None:
    own = parse_event({"type": "x", "id": RUN})
    assert isinstance(own, EventPayload)
    assert own.id == uuid.UUID(RUN)
    assigned = parse_event({"type": "x"})
    assert isinstance(assigned, EventPayload)
    assert assigned.id.version == 7


def test_unix_times_are_accepted_in_seconds_and_milliseconds() -> None:
    seconds = parse_event({"type": "x", "time": 1_782_563_696.789})
    millis = parse_event({"type": "x", "time": 1_782_563_696_789})
    assert seconds.time == millis.time == WHEN.replace(microsecond=seconds.time.microsecond)
    assert abs(millis.time.microsecond - 789_000) < 1000


@pytest.mark.parametrize(
    "event",
    [
        RunStartEvent(id=uuid.uuid4(), name="r", tags=["t"], info={"a": 1}, input=[1]),
        RunUpdateEvent(id=uuid.uuid4(), status="finished", output={"o": 1}),
        StepStartEvent(
            step_id=uuid.uuid4(), run_id=uuid.uuid4(), type="t", parent_step=uuid.uuid4()
        ),
        StepEndEvent(step_id=uuid.uuid4(), run_id=uuid.uuid4(), output="done"),
        StepErrorEvent(step_id=uuid.uuid4(), run_id=uuid.uuid4(), error={"m": 1}),
        StepStateEvent(step_id=uuid.uuid4(), run_id=uuid.uuid4(), state="paused"),
        EventPayload(type="custom", data={"d": 1}, run_id=uuid.uuid4()),
    ],
)
def test_to_json_round_trips_through_parse_event(event: Any) -> None:
    assert parse_event(event.to_json()) == event


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        ([], "", "must be a JSON object"),
        ({}, "type", "is required"),
        ({"type": 5}, "type", "must be a non-empty string"),
        ({"type": "run:start", "name": "r"}, "id", "is required"),
        ({"type": "run:start", "id": "nope", "name": "r"}, "id", "must be a UUID"),
        ({"type": "run:start", "id": RUN}, "name", "is required"),
        ({"type": "run:start", "id": RUN, "name": "r", "tags": "a"}, "tags", "array"),
        ({"type": "run:start", "id": RUN, "name": "r", "tags": ["a", 1]}, "tags.1", "string"),
        ({"type": "run:start", "id": RUN, "name": "r", "info": [1]}, "info", "object"),
        ({"type": "run:update", "id": RUN, "time": "yesterday"}, "time", "ISO 8601"),
        ({"type": "step:start", "run_id": RUN, "data": {"type": "t"}}, "step_id", "required"),
        ({"type": "step:start", "step_id": STEP, "data": {"type": "t"}}, "run_id", "required"),
        ({"type": "step:start", "step_id": STEP, "run_id": RUN}, "data", "is required"),
        (
            {"type": "step:start", "step_id": STEP, "run_id": RUN, "data": {}},
            "data.type",
            "required",
        ),
        ({"type": "step:start", "step_id": STEP, "run_id": RUN, "data": 3}, "data", "object"),
        (
            {"type": "step:start", "step_id": STEP, "run_id": RUN, "data": {"type": 1}},
            "data.type",
            "string",
        ),
        (
            {
                "type": "step:start",
                "step_id": STEP,
                "run_id": RUN,
                "data": {"type": "t", "parent_step": "x"},
            },
            "data.parent_step",
            "UUID",
        ),
        (
            {"type": "step:state", "step_id": STEP, "run_id": RUN, "data": {}},
            "data.state",
            "required",
        ),
        ({"type": "custom", "run_id": 12}, "run_id", "UUID"),
    ],
)
def test_malformed_input_names_the_field(obj: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        parse_event(obj)
    assert info.value.field == field
    assert words in str(info.value)
    if field:
        assert repr(field) in str(info.value)
    assert isinstance(info.value, EventLogError)
    assert isinstance(info.value, ValueError)


def test_unknown_keys_are_ignored_as_chronicle_does() -> None:
    event = parse_event({"type": "run:update", "id": RUN, "context": {"x": 1}})
    assert isinstance(event, RunUpdateEvent)


def test_an_llm_call_survives_the_wire_format_but_never_its_trusted_metadata() -> None:
    import uuid as _uuid

    from eventlog import ProxyLogEvent
    from eventlog.parse import LLM_EVENT_TYPE, entry_to_wire, parse_entry

    event = ProxyLogEvent(
        provider="openai",
        model="gpt-4o",
        request={"messages": [{"role": "user", "content": "hi"}]},
        response={"usage": {"prompt_tokens": 3, "completion_tokens": 5}},
        latency=0.25,
        total_latency=1.5,
        num_retries=2,
        was_rate_limited=True,
        metadata={"user_id": "u-1", "run_id": str(_uuid.uuid4()), "step_index": 3, "x": 1},
        internal_metadata={"user_id": "trusted"},
    )
    wire = entry_to_wire(event)
    assert wire["type"] == LLM_EVENT_TYPE
    assert wire["latency"] == 250.0
    assert "internal_metadata" not in wire
    back = parse_entry({**wire, "internal_metadata": {"user_id": "forged"}})
    assert isinstance(back, ProxyLogEvent)
    assert back.internal_metadata.user_id is None
    back.internal_metadata = event.internal_metadata
    assert back == event


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"latency": "slow"}, "latency"),
        ({"latency": -1}, "latency"),
        ({"num_retries": 1.5}, "num_retries"),
        ({"was_rate_limited": "yes"}, "was_rate_limited"),
        ({"metadata": {"run_id": "nope"}}, "metadata.run_id"),
        ({"metadata": {"user_id": 7}}, "metadata.user_id"),
        ({"id": "x"}, "id"),
    ],
)
def test_a_bad_llm_call_names_the_field(body: dict[str, object], field: str) -> None:
    from eventlog.parse import LLM_EVENT_TYPE, parse_entry

    with pytest.raises(InvalidEventError) as caught:
        parse_entry({"type": LLM_EVENT_TYPE, **body})
    assert caught.value.field == field
