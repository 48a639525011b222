"""Event classes: construction defaults and the normalisation done at the call site."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from eventlog import (
    EventPayload,
    InternalMetadata,
    ProxyLogEvent,
    RequestMetadata,
    StepErrorEvent,
)
from eventlog.ids import uuid7
from eventlog.rows import event_row, payload_row, token_counts


def test_proxy_log_event_defaults_to_a_new_uuid7_and_now_in_utc() -> None:
    before = datetime.now(UTC)
    a, b = ProxyLogEvent(), ProxyLogEvent()
    assert a.id.version == 7
    assert a.id != b.id
    assert a.id < b.id  # time-ordered
    assert a.event_type == "chronicle_llm_request"
    assert a.timestamp.tzinfo is UTC
    assert before <= a.timestamp <= datetime.now(UTC)


def test_naive_timestamp_is_taken_as_utc_and_aware_one_is_converted() -> None:
    naive = ProxyLogEvent(timestamp=datetime(2026, 1, 2, 3, 4, 5, 678901))
    assert naive.timestamp == datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    paris = ProxyLogEvent(
        timestamp=datetime(2026, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    )
    assert paris.timestamp == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert paris.timestamp.tzinfo is UTC


def test_latencies_accept_seconds_or_timedelta() -> None:
    event = ProxyLogEvent(latency=0.25, total_latency=timedelta(seconds=1))
    assert event.latency == timedelta(milliseconds=250)
    assert event.total_latency == timedelta(seconds=1)
    with pytest.raises(TypeError, match="latency must be a timedelta"):
        ProxyLogEvent(latency="fast")  # type: ignore[arg-type]


def test_metadata_dict_becomes_request_metadata_with_unknown_keys_in_extra() -> None:
    run_id = uuid.uuid4()
    event = ProxyLogEvent(
        metadata={"application": "app", "run_id": str(run_id), "step_index": 2, "team": "x"},
        internal_metadata={"organization_id": "org"},
    )
    assert event.metadata == RequestMetadata(
        application="app", run_id=run_id, step_index=2, extra={"team": "x"}
    )
    assert event.internal_metadata == InternalMetadata(organization_id="org")


def test_exception_as_error_becomes_type_message_and_traceback() -> None:
    try:
        raise ValueError("bad prompt")
    except ValueError as err:
        event = ProxyLogEvent(error=err)
        step_error = StepErrorEvent(step_id=uuid7(), run_id=uuid7(), error=err)
    assert event.error["type"] == "ValueError"
    assert event.error["message"] == "bad prompt"
    assert "raise ValueError" in event.error["traceback"]
    assert step_error.error == event.error


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, (10, 5, 15)),
        ({"prompt_tokens": 10, "completion_tokens": 5}, (10, 5, 15)),
        ({"input_tokens": 7, "output_tokens": 3}, (7, 3, 10)),
        ({"prompt_tokens": "10"}, (None, None, None)),
        ({}, (None, None, None)),
        (None, (None, None, None)),
    ],
)
def test_token_counts_read_openai_and_anthropic_usage(
    usage: object, expected: tuple[int | None, int | None, int | None]
) -> None:
    assert token_counts({"usage": usage}) == expected


def test_event_row_follows_chronicles_mapping() -> None:
    run_id, step_id = uuid7(), uuid7()
    event = ProxyLogEvent(
        request={"model": "from-request", "messages": []},
        response={"model": "from-response", "usage": {"input_tokens": 2, "output_tokens": 1}},
        provider="anthropic",
        latency=0.1234,
        total_latency=0.5,
        num_retries=1,
        was_rate_limited=True,
        metadata={"user_id": "u", "run_id": run_id, "step_id": step_id, "k": 1},
        internal_metadata={"user_id": "trusted"},
        response_meta={"region": "eu"},
    )
    row = event_row(event)
    assert row["model"] == "from-response"
    assert row["user_id"] == "trusted"
    assert row["request_user_id"] == "u"
    assert (row["run_id"], row["step_id"]) == (run_id, step_id)
    assert row["meta"] == {"k": 1}
    assert (row["request_latency_ms"], row["total_latency_ms"]) == (123, 500)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (2, 1, 3)
    assert row["error"] is None
    assert ProxyLogEvent(model="explicit", request={"model": "r"}).model == "explicit"
    assert event_row(ProxyLogEvent(request={"model": "r"}))["model"] == "r"


def test_generic_event_data_goes_to_meta_and_non_objects_are_wrapped() -> None:
    assert payload_row(EventPayload(type="t", data={"a": 1}))["meta"] == {"a": 1}
    assert payload_row(EventPayload(type="t", data=[1, 2]))["meta"] == {"data": [1, 2]}
    assert payload_row(EventPayload(type="t"))["meta"] is None


def test_tags_must_be_a_sequence_of_strings_not_one_string() -> None:
    from eventlog import RunStartEvent, StepStartEvent

    with pytest.raises(TypeError, match="tags must be a sequence of strings"):
        RunStartEvent(id=uuid7(), name="r", tags="prod")
    with pytest.raises(TypeError, match="tags must be a sequence of strings"):
        StepStartEvent(step_id=uuid7(), run_id=uuid7(), type="t", tags="x")
    assert RunStartEvent(id=uuid7(), name="r", tags=["a", "b"]).tags == ("a", "b")
