"""Usage: token counts under one counting rule, the cost, the status and error type of a
call; read by eventlog.usage and stored by the writer in chronicle_events, on both
backends.

The expectations are written out by hand from the providers' documented shapes; costs
are computed here from the price's rates, not with ``Price.cost``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from test_rollup import assert_rollup_is_exact

from eventlog import Database, EventPayload, InternalMetadata, ProxyLogEvent, RequestMetadata
from eventlog.prices import Price, PriceBook, store_prices
from eventlog.schema import chronicle_events
from eventlog.usage import (
    PROVIDER_PRICE_ID,
    Tokens,
    call_status,
    error_type,
    priced_cost,
    read_tokens,
    reported_cost,
)

AT = datetime(2026, 2, 10, 9, 30, tzinfo=UTC)
MILLION = Decimal(1_000_000)

# -- read_tokens: one counting rule whatever the provider's shape ------------------------


def test_openai_chat_usage_keeps_cached_and_reasoning_tokens_inside_the_totals() -> None:
    response = {
        "model": "gpt-4o",
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0},
        },
    }
    assert read_tokens(response) == Tokens(
        prompt=1200, completion=300, total=1500, cache_read=1024, reasoning=128
    )


def test_openai_chat_usage_without_details_or_total_adds_prompt_and_completion() -> None:
    assert read_tokens({"usage": {"prompt_tokens": 7, "completion_tokens": 5}}) == Tokens(
        prompt=7, completion=5, total=12
    )
    # Embeddings have no completion: the total is the provider's.
    assert read_tokens({"usage": {"prompt_tokens": 9, "total_tokens": 9}}) == Tokens(
        prompt=9, total=9
    )


def test_openai_responses_api_reads_input_and_output_token_details() -> None:
    response = {
        "object": "response",
        "usage": {
            "input_tokens": 5000,
            "input_tokens_details": {"cached_tokens": 4096},
            "output_tokens": 900,
            "output_tokens_details": {"reasoning_tokens": 640},
            "total_tokens": 5900,
        },
    }
    assert read_tokens(response) == Tokens(
        prompt=5000, completion=900, total=5900, cache_read=4096, reasoning=640
    )


def test_anthropic_cache_tokens_are_added_to_its_exclusive_input_tokens() -> None:
    # Anthropic's input_tokens leaves out what was read from and written to the cache:
    # the counting rule puts them back in, so prompt_tokens means the same everywhere.
    response = {
        "type": "message",
        "usage": {
            "input_tokens": 50,
            "cache_read_input_tokens": 10_000,
            "cache_creation_input_tokens": 2_000,
            "output_tokens": 400,
        },
    }
    assert read_tokens(response) == Tokens(
        prompt=12_050, completion=400, total=12_450, cache_read=10_000, cache_write=2_000
    )


def test_anthropic_usage_with_null_cache_fields_counts_them_as_absent() -> None:
    response = {
        "usage": {
            "input_tokens": 30,
            "cache_read_input_tokens": None,
            "cache_creation_input_tokens": 0,
            "output_tokens": 8,
        }
    }
    assert read_tokens(response) == Tokens(
        prompt=30, completion=8, total=38, cache_read=None, cache_write=0
    )
    # Without cache fields Anthropic's shape is the Responses API's: no double count.
    assert read_tokens({"usage": {"input_tokens": 30, "output_tokens": 8}}) == Tokens(
        prompt=30, completion=8, total=38
    )


def test_gemini_thoughts_are_added_to_the_completion_and_counted_as_reasoning() -> None:
    response = {
        "candidates": [],
        "usageMetadata": {
            "promptTokenCount": 800,
            "cachedContentTokenCount": 512,
            "candidatesTokenCount": 120,
            "thoughtsTokenCount": 300,
            "totalTokenCount": 1220,
        },
    }
    assert read_tokens(response) == Tokens(
        prompt=800, completion=420, total=1220, cache_read=512, reasoning=300
    )


def test_gemini_snake_case_usage_metadata_and_a_missing_total() -> None:
    response = {"usage_metadata": {"prompt_token_count": 10, "candidates_token_count": 4}}
    assert read_tokens(response) == Tokens(prompt=10, completion=4, total=14)


def test_deepseek_prompt_cache_hit_tokens_are_the_cache_read_tokens() -> None:
    response = {
        "usage": {
            "prompt_tokens": 700,
            "completion_tokens": 60,
            "total_tokens": 760,
            "prompt_cache_hit_tokens": 640,
            "prompt_cache_miss_tokens": 60,
        }
    }
    assert read_tokens(response) == Tokens(prompt=700, completion=60, total=760, cache_read=640)


def test_whole_floats_are_counts_and_other_numbers_are_not() -> None:
    assert read_tokens({"usage": {"prompt_tokens": 12.0, "completion_tokens": 3.5}}) == Tokens(
        prompt=12
    )


@pytest.mark.parametrize(
    "response",
    [
        None,
        "a plain text answer",
        ["usage"],
        {},
        {"usage": None},
        {"usage": "lots"},
        {"usage": {}},
        {"usage": {"cost": 0.1}},
        {"usageMetadata": "no"},
    ],
)
def test_a_response_without_usage_has_no_token_counts(response: Any) -> None:
    assert read_tokens(response) == Tokens()


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": "12", "completion_tokens": "5", "total_tokens": "17"},
        {"prompt_tokens": True, "completion_tokens": False},
        {"prompt_tokens": -12, "completion_tokens": -5, "total_tokens": -17},
        {"prompt_tokens": None, "completion_tokens": [], "total_tokens": {}},
        {"prompt_tokens": math.nan, "completion_tokens": math.inf},
        # Beyond what the INTEGER columns hold: no count anyone could have used.
        {"prompt_tokens": 2**31, "completion_tokens": 10**20},
    ],
)
def test_garbage_token_counts_are_unknown_not_numbers(usage: dict[str, Any]) -> None:
    assert read_tokens({"usage": usage}) == Tokens()


def test_garbage_details_leave_the_good_counts() -> None:
    response = {
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "prompt_tokens_details": "cached",
            "completion_tokens_details": {"reasoning_tokens": -3},
        }
    }
    assert read_tokens(response) == Tokens(prompt=100, completion=10, total=110)
    anthropic = {"usage": {"input_tokens": -1, "cache_read_input_tokens": 5, "output_tokens": 2}}
    assert read_tokens(anthropic) == Tokens(completion=2, cache_read=5)


# -- reported_cost -----------------------------------------------------------------------


def test_a_cost_in_usage_is_reported_exactly_as_written_to_the_nano_dollar() -> None:
    assert reported_cost({"usage": {"prompt_tokens": 1, "cost": 0.1}}, None) == Decimal(
        "0.100000000"
    )
    assert str(reported_cost({"usage": {"cost": 0.1}}, None)) == "0.100000000"
    assert reported_cost({"usage": {"cost": "0.00042"}}, None) == Decimal("0.000420000")
    assert reported_cost({"usage": {"cost": 3}}, None) == Decimal("3.000000000")
    # Beyond the nano-dollar the cost is rounded half-even, as every cost is.
    assert reported_cost({"usage": {"cost": "0.0000000025"}}, None) == Decimal("0.000000002")


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"cost": 0.25}, "0.250000000"),
        ({"cost_usd": "1.5"}, "1.500000000"),
        ({"response_cost": 0.000123}, "0.000123000"),
        ({"cost_usd": 0.5, "cost": 9, "response_cost": 7}, "0.500000000"),
        ({"cost": "n/a", "response_cost": 0.2}, "0.200000000"),
    ],
)
def test_a_gateway_cost_in_response_meta_is_reported(meta: dict[str, Any], expected: str) -> None:
    assert reported_cost({"usage": {"prompt_tokens": 3}}, meta) == Decimal(expected)


def test_the_usage_cost_comes_before_the_response_meta_cost() -> None:
    response = {"usage": {"cost": 0.3}}
    assert reported_cost(response, {"cost": 0.9}) == Decimal("0.300000000")
    assert reported_cost({"usage": {"cost": None}}, {"cost": 0.9}) == Decimal("0.900000000")


@pytest.mark.parametrize(
    "cost",
    [None, True, -0.1, "-1", "abc", "NaN", "Infinity", math.inf, math.nan, [1], {"usd": 1}],
)
def test_an_unusable_reported_cost_is_no_cost(cost: Any) -> None:
    assert reported_cost({"usage": {"cost": cost}}, {"cost": cost}) is None
    assert reported_cost(None, None) is None
    assert reported_cost("text", {}) is None


@pytest.mark.parametrize("cost", ["1e30", 1e15, "99999999999.5", 10**12])
def test_a_reported_cost_too_large_for_any_call_is_no_cost(cost: Any) -> None:
    # cost_usd is NUMERIC(20, 9) and the rollup sums nano-dollars in a BIGINT: a value
    # that does not fit is garbage, and must not make the whole batch fail.
    assert reported_cost({"usage": {"cost": cost}}, None) is None


# -- priced_cost -------------------------------------------------------------------------


def test_priced_cost_uses_the_price_rates_for_each_kind_of_token() -> None:
    book = PriceBook.default()
    price = book.find("anthropic", "claude-sonnet-4-20250514", AT)
    assert price is not None
    assert price.cache_read is not None
    assert price.cache_write is not None
    tokens = Tokens(prompt=12_050, completion=400, cache_read=10_000, cache_write=2_000)
    expected = (
        50 * price.input
        + 10_000 * price.cache_read
        + 2_000 * price.cache_write
        + 400 * price.output
    ) / MILLION
    assert priced_cost(book, "anthropic", "claude-sonnet-4-20250514", AT, tokens) == (
        expected.quantize(Decimal("1e-9")),
        price.id,
    )


def test_priced_cost_is_none_without_a_model_a_price_or_token_counts() -> None:
    book = PriceBook.default()
    tokens = Tokens(prompt=10, completion=2)
    assert priced_cost(book, "openai", None, AT, tokens) == (None, None)
    assert priced_cost(book, None, "no-such-model-anywhere", AT, tokens) == (None, None)
    assert priced_cost(book, "openai", "gpt-4o", AT, Tokens()) == (None, None)


# -- error_type and call_status ----------------------------------------------------------

OPENAI_RATE_LIMIT = {
    "error": {
        "message": "Rate limit reached for gpt-4o in organization org-x on tokens per min.",
        "type": "tokens",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
OPENAI_BAD_REQUEST = {
    "error": {
        "message": "Invalid 'messages': empty array.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "empty_array",
    }
}
ANTHROPIC_RATE_LIMIT = {
    "type": "error",
    "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded"},
}
ANTHROPIC_OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}
GEMINI_EXHAUSTED = {
    "error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}
}
EXCEPTION_JSON = {
    "type": "openai.APITimeoutError",
    "message": "Request timed out.",
    "traceback": "Traceback (most recent call last):\n  ...\nopenai.APITimeoutError: ...",
}


@pytest.mark.parametrize(
    ("error", "kind", "status"),
    [
        (None, None, "ok"),
        (OPENAI_BAD_REQUEST, "invalid_request_error", "error"),
        (OPENAI_RATE_LIMIT, "tokens", "rate_limited"),
        (ANTHROPIC_RATE_LIMIT, "rate_limit_error", "rate_limited"),
        (ANTHROPIC_OVERLOADED, "overloaded_error", "error"),
        (GEMINI_EXHAUSTED, "429", "rate_limited"),
        (EXCEPTION_JSON, "openai.APITimeoutError", "error"),
        (
            {"type": "litellm.RateLimitError", "message": "x"},
            "litellm.RateLimitError",
            "rate_limited",
        ),
        ({"status_code": 429, "body": "slow down"}, "http_429", "rate_limited"),
        ({"status": 503}, "http_503", "error"),
        ({"code": "ECONNRESET"}, "ECONNRESET", "error"),
        ({"name": "AbortError"}, "AbortError", "error"),
        ({"message": "something broke"}, None, "error"),
        ("RateLimitError: slow down", "RateLimitError", "rate_limited"),
        ("APIError: rate limit exceeded, retry later", "APIError", "rate_limited"),
        ("httpx.ReadTimeout: timed out", "httpx.ReadTimeout", "error"),
        ("429 Too Many Requests", None, "rate_limited"),
        ("connection reset by peer", None, "error"),
        (["a", "list"], None, "error"),
        (42, None, "error"),
        ({"error": {"type": {"nested": 1}}}, None, "error"),
    ],
)
def test_error_type_and_status_of_provider_errors(
    error: Any, kind: str | None, status: str
) -> None:
    assert error_type(error) == kind
    assert call_status(error, None, error_type(error)) == status


def test_a_call_flagged_rate_limited_is_rate_limited_only_if_it_failed() -> None:
    assert call_status("boom", True, None) == "rate_limited"
    assert call_status(None, True, None) == "ok"  # rate limited, retried, then answered
    assert call_status(OPENAI_BAD_REQUEST, False, "invalid_request_error") == "error"


def test_error_type_is_cut_to_200_characters() -> None:
    long = "x" * 500
    assert error_type({"type": long}) == "x" * 200


# -- the writer stores it all ------------------------------------------------------------


def ms(n: int) -> timedelta:
    return timedelta(milliseconds=n)


def openai_call(**overrides: Any) -> ProxyLogEvent:
    values: dict[str, Any] = {
        "timestamp": AT,
        "provider": "openai",
        "model": "gpt-4o",
        "request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        "response": {
            "model": "gpt-4o-2024-08-06",
            "usage": {
                "prompt_tokens": 1200,
                "completion_tokens": 300,
                "total_tokens": 1500,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "completion_tokens_details": {"reasoning_tokens": 100},
            },
        },
        "latency": ms(850),
        "total_latency": ms(900),
        "time_to_first_token": ms(240),
        "internal_metadata": InternalMetadata(user_id="ana"),
        "metadata": RequestMetadata(application="chat"),
    }
    return ProxyLogEvent(**(values | overrides))


def expected_cost(price: Price, tokens: Tokens) -> Decimal:
    """The cost of a call from the price's rates, written out (no tiers, no request)."""
    prompt, completion = tokens.prompt or 0, tokens.completion or 0
    read, write, reasoning = tokens.cache_read or 0, tokens.cache_write or 0, tokens.reasoning or 0
    cache_read = price.input if price.cache_read is None else price.cache_read
    cache_write = price.input if price.cache_write is None else price.cache_write
    reasoning_rate = price.output if price.reasoning is None else price.reasoning
    usd = (
        (prompt - read - write) * price.input
        + read * cache_read
        + write * cache_write
        + (completion - reasoning) * price.output
        + reasoning * reasoning_rate
    ) / MILLION + price.request
    return usd.quantize(Decimal("0.000000001"))


async def stored(db: Database) -> dict[uuid.UUID, Mapping[str, Any]]:
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(chronicle_events))).mappings().all()
    return {row["id"]: row for row in rows}


async def test_writer_stores_tokens_cost_ttft_status_and_error_type(db: Database) -> None:
    openai = openai_call()
    anthropic = ProxyLogEvent(
        timestamp=AT + timedelta(minutes=1),
        provider="anthropic",
        model="claude-sonnet-4-20250514",
        response={
            "type": "message",
            "usage": {
                "input_tokens": 50,
                "cache_read_input_tokens": 10_000,
                "cache_creation_input_tokens": 2_000,
                "output_tokens": 400,
            },
        },
        latency=ms(2_000),
    )
    gemini = ProxyLogEvent(
        timestamp=AT + timedelta(minutes=2),
        provider="google",
        model="gemini-2.0-flash",
        response={
            "usageMetadata": {
                "promptTokenCount": 800,
                "candidatesTokenCount": 120,
                "thoughtsTokenCount": 300,
                "totalTokenCount": 1220,
            }
        },
    )
    limited = openai_call(
        timestamp=AT + timedelta(minutes=3),
        response=OPENAI_RATE_LIMIT,
        error=OPENAI_RATE_LIMIT,
        time_to_first_token=None,
    )
    try:
        raise TimeoutError("the provider did not answer")
    except TimeoutError as err:
        failed = openai_call(timestamp=AT + timedelta(minutes=4), response=None, error=err)
    unknown = openai_call(
        timestamp=AT + timedelta(minutes=5), model="house-model-7b", provider="vllm"
    )
    routed = openai_call(
        timestamp=AT + timedelta(minutes=6),
        response={"usage": {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.1}},
    )
    gateway = ProxyLogEvent(
        timestamp=AT + timedelta(minutes=7),
        model="house-model-7b",
        response={"usage": {"prompt_tokens": 10, "completion_tokens": 5}},
        response_meta={"response_cost": "0.0042"},
    )
    payload = EventPayload(type="cache_hit", time=AT, error={"type": "KeyError"})
    calls = [openai, anthropic, gemini, limited, failed, unknown, routed, gateway]

    await db.write_log_batch([*calls, payload])

    rows = await stored(db)
    book = PriceBook.default()
    for call in (openai, anthropic, gemini):
        price = book.find(call.provider, call.model, call.timestamp)
        assert price is not None
        tokens = read_tokens(call.response)
        row = rows[call.id]
        assert (row["cost_usd"], row["price_id"]) == (expected_cost(price, tokens), price.id)
        assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
            tokens.prompt,
            tokens.completion,
            tokens.total,
        )
        assert (row["status"], row["error_type"]) == ("ok", None)

    def columns(event: ProxyLogEvent | EventPayload, *names: str) -> tuple[Any, ...]:
        return tuple(rows[event.id][name] for name in names)

    usage_columns = ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "ttft_ms")
    assert columns(openai, *usage_columns) == (1024, None, 100, 240)
    assert columns(anthropic, *usage_columns, "prompt_tokens") == (
        10_000,
        2_000,
        None,
        None,
        12_050,
    )
    assert columns(gemini, *usage_columns, "completion_tokens") == (None, None, 300, None, 420)
    # gpt-4o: (1200 - 1024) * 2.50 + 1024 * 1.25 + 300 * 10.00 per million, by hand.
    assert rows[openai.id]["cost_usd"] == Decimal("0.004720000")

    assert columns(limited, "status", "error_type") == ("rate_limited", "tokens")
    assert columns(failed, "status", "error_type") == ("error", "TimeoutError")
    assert rows[failed.id]["error"]["type"] == "TimeoutError"
    # A failed call without token counts costs the per-request price: $0 for gpt-4o.
    assert columns(failed, "cost_usd", "prompt_tokens") == (Decimal(0), None)

    assert columns(unknown, "cost_usd", "price_id") == (None, None)  # unpriced, not $0
    assert columns(unknown, "prompt_tokens", "status") == (1200, "ok")
    assert columns(routed, "cost_usd", "price_id") == (Decimal("0.100000000"), PROVIDER_PRICE_ID)
    assert columns(gateway, "cost_usd", "price_id") == (Decimal("0.004200000"), "provider")

    assert columns(payload, "status", "error_type", "cost_usd") == ("error", "KeyError", None)


async def test_a_user_price_is_used_before_the_bundled_one(db: Database) -> None:
    user = Price(
        id="ours/gpt-4o/2026-01-01",
        provider="openai",
        model="gpt-4o",
        pattern=None,
        valid_from=date(2026, 1, 1),
        input=Decimal("1.00"),
        output=Decimal("2.00"),
        cache_read=Decimal("0.10"),
        reasoning=Decimal("3.00"),
        request=Decimal("0.0001"),
    )
    house = Price(
        id="ours/house-model/2026-01-01",
        provider=None,
        model="house-model-7b",
        pattern=None,
        valid_from=date(2026, 1, 1),
        input=Decimal("0.05"),
        output=Decimal("0.07"),
    )
    before = openai_call()
    await db.write_log_batch([before])  # the writer reads the (empty) user prices

    await store_prices(db, [user, house])
    # The writer reads the user's prices again only every 60 s (Database._prices_loaded);
    # a test cannot wait that long, so it marks them stale to read them on the next batch.
    db._prices_loaded = float("-inf")
    after = openai_call(timestamp=AT + timedelta(seconds=1))
    house_call = openai_call(model="house-model-7b", provider=None)
    reported = openai_call(response_meta={"cost_usd": 0.02})
    await db.write_log_batch([after, house_call, reported])

    rows = await stored(db)
    tokens = read_tokens(after.response)
    bundled = PriceBook.default().find("openai", "gpt-4o", AT)
    assert bundled is not None
    assert rows[before.id]["price_id"] == bundled.id
    assert rows[before.id]["cost_usd"] == expected_cost(bundled, tokens)
    assert (rows[after.id]["cost_usd"], rows[after.id]["price_id"]) == (
        expected_cost(user, tokens),
        user.id,
    )
    # 176 * 1.00 + 1024 * 0.10 + 200 * 2.00 + 100 * 3.00 per million, plus 0.0001.
    assert rows[after.id]["cost_usd"] == Decimal("0.001078400")
    assert rows[house_call.id]["price_id"] == house.id
    assert rows[reported.id]["cost_usd"] == Decimal("0.020000000")  # the provider's, kept
    assert rows[reported.id]["price_id"] == PROVIDER_PRICE_ID


async def test_garbage_usage_and_costs_never_fail_the_batch(db: Database) -> None:
    garbage = [
        openai_call(response={"usage": {"prompt_tokens": 10**14, "completion_tokens": 10**20}}),
        openai_call(response={"usage": {"prompt_tokens": -5, "completion_tokens": "x"}}),
        openai_call(response={"usage": {"prompt_tokens": 5, "cost": "1e30"}}),
        openai_call(response={"usage": {"prompt_tokens": 5, "cost": 1e15}}),
        openai_call(response_meta={"cost": float("nan")}),
        openai_call(response="not json object", error=b"bytes".decode()),
    ]
    good = openai_call()
    dear = openai_call(response_meta={"cost": "999999.123456789"})  # under $1M: kept exactly

    await db.write_log_batch([*garbage, good, dear])

    rows = await stored(db)
    assert len(rows) == len(garbage) + 2
    assert rows[dear.id]["cost_usd"] == Decimal("999999.123456789")
    await assert_rollup_is_exact(db)  # its nano-dollars too
    assert rows[garbage[0].id]["prompt_tokens"] is None
    assert rows[garbage[0].id]["cost_usd"] is None  # no cost from a count it did not keep
    assert rows[garbage[1].id]["prompt_tokens"] is None
    for event in garbage[2:4]:
        assert rows[event.id]["price_id"] != PROVIDER_PRICE_ID
    assert rows[good.id]["cost_usd"] == Decimal("0.004720000")
