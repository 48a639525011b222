"""What an LLM call used and how it ended, read once from the event by the writer.

One counting rule for tokens, whatever the provider's shape (it is OpenAI's):

- ``prompt_tokens`` counts every input token, cached ones included: ``cache_read_tokens``
  and ``cache_write_tokens`` are parts of it, not additions to it;
- ``completion_tokens`` counts every output token, reasoning included:
  ``reasoning_tokens`` is a part of it;
- ``total_tokens`` is what the provider says, else prompt + completion;
- a count that is not a whole number from 0 to 2**31 - 1 (what the columns hold) is
  garbage: unknown (None), never a number that would skew the sums or the cost.

Shapes understood, from the response's ``usage`` (or Gemini's ``usageMetadata``):

- OpenAI Chat Completions: ``prompt_tokens``, ``completion_tokens``,
  ``prompt_tokens_details.cached_tokens``, ``completion_tokens_details.reasoning_tokens``
  (DeepSeek's ``prompt_cache_hit_tokens`` too);
- OpenAI Responses: ``input_tokens``/``output_tokens`` with ``input_tokens_details`` and
  ``output_tokens_details`` (inclusive, as above);
- Anthropic: ``input_tokens`` *excludes* ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens``; they are added to make ``prompt_tokens``, so cached
  tokens are never counted twice nor missed;
- Gemini: ``promptTokenCount`` (cached included), ``candidatesTokenCount`` *plus*
  ``thoughtsTokenCount`` (Gemini counts thoughts apart), ``cachedContentTokenCount``.

The cost comes, in this order, from a cost the provider reported (``usage.cost``, as
OpenRouter sends; ``response_meta`` ``cost``, ``cost_usd`` or ``response_cost``, as
LiteLLM's), then the user's prices, then the bundled ones (see :mod:`eventlog.prices`).
A call without a price, or an answer without token counts to price, has no cost (NULL):
reports show it as *unpriced*, never as $0. A failed call without token counts costs its
per-request price (usually $0: providers do not bill tokens they did not process).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final, TypeGuard

from eventlog._log import logger

if TYPE_CHECKING:
    from eventlog.prices import PriceBook

__all__ = [
    "NANO",
    "PROVIDER_PRICE_ID",
    "Tokens",
    "call_status",
    "error_type",
    "priced_cost",
    "read_tokens",
    "reported_cost",
]

NANO: Final = Decimal("0.000000001")
"""Costs are kept to the nano-dollar (``cost_usd`` is ``NUMERIC(20, 9)``)."""

PROVIDER_PRICE_ID: Final = "provider"
"""The ``price_id`` of a cost the provider reported itself."""

_MAX_ERROR_TYPE = 200
_MAX_COUNT = 2**31 - 1  # chronicle_events' token columns are 32-bit INTEGERs
_MAX_COST: Final = Decimal(1_000_000)
"""No single call costs a million dollars: a larger figure is garbage. It must not reach
``cost_usd`` (``NUMERIC(20, 9)``) nor the rollup's nano-dollar ``BIGINT`` sums, where it
would make the whole batch fail; and below it a cost has at most 15 significant digits,
which SQLite (which keeps ``NUMERIC`` as a double) stores exactly."""
_EXACT: Final = Context(prec=60, rounding=ROUND_HALF_EVEN)  # not the thread's context


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counts of one call under the counting rule above; ``None`` when unknown."""

    prompt: int | None = None
    completion: int | None = None
    total: int | None = None
    cache_read: int | None = None
    cache_write: int | None = None
    reasoning: int | None = None


_NO_TOKENS: Final = Tokens()


def _is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(value, Mapping)``, a dict's check first: the ABC check costs several
    times more, and response bodies are dicts."""
    return type(value) is dict or isinstance(value, Mapping)


def _int(value: Any) -> int | None:
    """A token count: an int (or a whole float) from 0 to what the columns hold."""
    if type(value) is int:  # the common case, first: this runs several times per call
        return value if 0 <= value <= _MAX_COUNT else None
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= _MAX_COUNT:
        return value
    return None


def _detail(usage: Mapping[str, Any], key: str, name: str) -> int | None:
    details = usage.get(key)
    return _int(details.get(name)) if _is_mapping(details) else None


def _add(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def read_tokens(response: Any) -> Tokens:
    """The token counts in a response body (see the module's counting rule)."""
    if not _is_mapping(response):
        return _NO_TOKENS
    usage = response.get("usage")
    if not _is_mapping(usage):
        gemini = response.get("usageMetadata", response.get("usage_metadata"))
        return _gemini(gemini) if isinstance(gemini, Mapping) else _NO_TOKENS
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        prompt = _int(usage.get("prompt_tokens"))
        completion = _int(usage.get("completion_tokens"))
        cache_read = _detail(usage, "prompt_tokens_details", "cached_tokens")
        if cache_read is None:
            cache_read = _int(usage.get("prompt_cache_hit_tokens"))
        reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens")
        return _tokens(
            prompt, completion, _int(usage.get("total_tokens")), cache_read, None, reasoning
        )
    input_tokens = _int(usage.get("input_tokens"))
    output_tokens = _int(usage.get("output_tokens"))
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        # Anthropic: input_tokens excludes the cached parts.
        cache_read = _int(usage.get("cache_read_input_tokens"))
        cache_write = _int(usage.get("cache_creation_input_tokens"))
        prompt = None if input_tokens is None else _add(input_tokens, cache_read, cache_write)
        return _tokens(prompt, output_tokens, None, cache_read, cache_write, None)
    if input_tokens is None and output_tokens is None:
        return _NO_TOKENS
    return _tokens(
        input_tokens,
        output_tokens,
        _int(usage.get("total_tokens")),
        _detail(usage, "input_tokens_details", "cached_tokens"),
        None,
        _detail(usage, "output_tokens_details", "reasoning_tokens"),
    )


def _gemini(usage: Mapping[str, Any]) -> Tokens:
    prompt = _int(usage.get("promptTokenCount", usage.get("prompt_token_count")))
    candidates = _int(usage.get("candidatesTokenCount", usage.get("candidates_token_count")))
    thoughts = _int(usage.get("thoughtsTokenCount", usage.get("thoughts_token_count")))
    cached = _int(usage.get("cachedContentTokenCount", usage.get("cached_content_token_count")))
    total = _int(usage.get("totalTokenCount", usage.get("total_token_count")))
    completion = None if candidates is None and thoughts is None else _add(candidates, thoughts)
    return _tokens(prompt, completion, total, cached, None, thoughts)


def _tokens(
    prompt: int | None,
    completion: int | None,
    total: int | None,
    cache_read: int | None,
    cache_write: int | None,
    reasoning: int | None,
) -> Tokens:
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return Tokens(prompt, completion, total, cache_read, cache_write, reasoning)


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, float):
            number = Decimal(repr(value))  # the float as written, not its binary expansion
        elif isinstance(value, (int, str, Decimal)):
            number = Decimal(value)
        else:
            return None
    except InvalidOperation:
        return None
    if not number.is_finite() or number < 0 or number >= _MAX_COST:
        return None
    return number.quantize(NANO, context=_EXACT)


def reported_cost(response: Any, response_meta: Mapping[str, Any] | None) -> Decimal | None:
    """A cost in USD the provider or a gateway reported for the call, if any."""
    if _is_mapping(response):
        usage = response.get("usage")
        if _is_mapping(usage) and (cost := _decimal(usage.get("cost"))) is not None:
            return cost
    if response_meta:
        for key in ("cost_usd", "cost", "response_cost"):
            if (cost := _decimal(response_meta.get(key))) is not None:
                return cost
    return None


def priced_cost(
    prices: PriceBook,
    provider: str | None,
    model: str | None,
    at: datetime,
    tokens: Tokens,
    *,
    failed: bool = False,
) -> tuple[Decimal | None, str | None]:
    """(cost, price id) from the price book, or (None, None) when the call cannot be
    priced: no price for the model, or an answer without token counts. A failed call
    without token counts costs its per-request price (providers do not bill tokens
    they did not process)."""
    if not isinstance(model, str) or (
        tokens.prompt is None and tokens.completion is None and not failed
    ):
        return None, None
    if provider is not None and not isinstance(provider, str):
        provider = None  # not a name: priced on the model alone
    try:
        price = prices.find(provider, model, at)
    except Exception:  # a price book must never fail a batch: the call stays unpriced
        _log_pricing_failure(model)
        return None, None
    if price is None:
        return None, None
    try:
        cost = price.cost(
            prompt_tokens=tokens.prompt or 0,
            completion_tokens=tokens.completion or 0,
            cache_read_tokens=tokens.cache_read or 0,
            cache_write_tokens=tokens.cache_write or 0,
            reasoning_tokens=tokens.reasoning or 0,
        )
    except ValueError:  # a negative count (a row stored by other means): not priced
        return None, None
    except ArithmeticError:  # a user price so large that the sum overflows
        _log_pricing_failure(model)
        return None, None
    if cost >= _MAX_COST:  # absurd counts or prices: garbage, not a cost
        return None, None
    return cost, price.id


_failed_models: set[str] = set()


def _log_pricing_failure(model: str) -> None:
    """Say once per model that its calls could not be priced."""
    if model not in _failed_models and len(_failed_models) < 1000:
        _failed_models.add(model)
        logger.warning(
            "eventlog: the calls to model %r cannot be priced (a price is unusable); "
            "they are stored unpriced",
            model[:200],
            exc_info=True,
        )


_RATE_LIMIT = re.compile(r"rate.?limit|too.?many.?requests|\b429\b|resource.?exhausted", re.I)
_TYPE_IN_TEXT = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Timeout|Exceeded))\b")


def error_type(error: Any) -> str | None:
    """A short name for an error: an exception's type, an API error's ``type`` or
    ``code`` (OpenAI's and Anthropic's bodies), ``http_<status>``; None if there is none."""
    if error is None:
        return None
    found: Any = None
    if isinstance(error, Mapping):
        inner = error.get("error")
        if isinstance(inner, Mapping):
            found = inner.get("type") or inner.get("code")
        if not found:
            found = error.get("type") if error.get("type") != "error" else None
        if not found:
            found = error.get("code") or error.get("name")
        if not found:
            status = _int(error.get("status_code", error.get("status")))
            if status is not None:
                found = f"http_{status}"
    elif isinstance(error, str):
        match = _TYPE_IN_TEXT.match(error)
        found = match.group(1) if match else None
    if found is None or isinstance(found, (Mapping, list)):
        return None
    return str(found)[:_MAX_ERROR_TYPE]


def call_status(error: Any, rate_limited: bool | None, kind: str | None) -> str:
    """``ok`` without an error; ``rate_limited`` when the call failed on a rate limit
    (flagged, or an error that says so); ``error`` otherwise."""
    if error is None:
        return "ok"
    if rate_limited:
        return "rate_limited"
    # The type alone is not enough: OpenAI's 429 body has type "requests" or "tokens"
    # and code "rate_limit_exceeded"; "APIError: rate limit exceeded" has a plain type.
    texts: list[Any] = [kind]
    if isinstance(error, str):
        texts.append(error)
    elif isinstance(error, Mapping):
        for body in (error, error.get("error")):
            if isinstance(body, Mapping):
                texts += [body.get("type"), body.get("code"), body.get("status")]
                for key in ("status_code", "status", "code"):
                    if _int(body.get(key)) == 429:
                        return "rate_limited"
    if any(isinstance(text, str) and _RATE_LIMIT.search(text) for text in texts):
        return "rate_limited"
    return "error"
