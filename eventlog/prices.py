"""What an LLM call cost: list prices per model, bundled and the user's own, in exact decimals.

A :class:`Price` gives USD per million tokens for one model (``model``, exact) or a family
(``pattern``, an fnmatch glob such as ``"claude-3-5-sonnet*"``), from ``valid_from`` on,
with optional long-context :class:`PriceTier` s. A :class:`PriceBook` holds the prices
bundled with eventlog (``eventlog/prices.json``) and the user's (the ``eventlog_prices``
table, loaded with ``eventlog prices load``) and finds the one that applies to a call:

1. the user's prices before the bundled ones, whatever their kind;
2. within one source, an exact model name before a pattern, a longer pattern before a
   shorter one (so ``gpt-4o-mini`` never gets ``gpt-4o``'s price);
3. among the prices of one model or pattern, the latest ``valid_from`` on or before the
   call's UTC date (a price dated after the call never applies);
4. a price and a call that both name a provider must name the same one, after aliases
   (``gemini``, ``vertex``, ``vertex_ai``, ``google_ai`` are ``google``; ``azure`` and
   ``azure_openai`` are ``openai``; ``mistralai`` is ``mistral``); a provider-less price
   or call matches on the model alone. Models compare case-insensitively, without a
   provider prefix (``openai/gpt-4o`` is ``gpt-4o`` of ``openai``) or ``models/``.

Tokens are counted as OpenAI does: ``prompt_tokens`` include the cache-read and
cache-write tokens, ``completion_tokens`` the reasoning tokens. So :meth:`Price.cost` is
``(prompt - cache_read - cache_write) * input + cache_read * cache_read_price +
cache_write * cache_write_price + (completion - reasoning) * output + reasoning *
reasoning_price``, per million, plus ``request``; a missing cache price is the input
price, a missing reasoning price the output price. A tier replaces all the token prices
when ``prompt_tokens > above_input_tokens`` (the highest such tier), as Anthropic and
Google price long prompts. Money is :class:`~decimal.Decimal` throughout, never float;
costs are rounded half-even to the nano-dollar.

Price files (:func:`read_price_file`), by extension:

- ``.json``: ``{"prices": [PRICE, ...]}`` (the bundled file's shape; other top-level keys
  such as ``version`` are ignored) or a bare list. A PRICE is an object with ``id``,
  ``provider`` (optional), exactly one of ``model`` and ``pattern``, ``valid_from``
  (``YYYY-MM-DD``), ``input`` and ``output``, and optionally ``cache_read``,
  ``cache_write``, ``reasoning``, ``request`` and ``tiers`` (a list of objects with
  ``above_input_tokens`` and the token prices). Prices are decimal strings (``"2.50"``) or
  JSON numbers (read as exact decimals). ``source`` is allowed and ignored, so the output
  of ``eventlog prices list --format json`` loads back.
- ``.csv``: a header row naming some of ``id, provider, model, pattern, valid_from,
  input, output, cache_read, cache_write, reasoning, request, above_input_tokens``
  (``id, valid_from, input, output`` required; ``source`` allowed and ignored), then one
  row per price; an empty cell is no value. A row with ``above_input_tokens`` is a tier of
  the price with the same ``id``, whose own row leaves it empty; a tier row's other cells
  are empty or repeat its price's.

A bad file raises :class:`PriceFileError`, naming the file, the line (CSV) or index
(JSON) and the field.
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation, localcontext
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final, Literal, get_args

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError

from eventlog.database import Database
from eventlog.deadletters import table_failure
from eventlog.events import utc_now
from eventlog.exceptions import DatabaseError, EventLogError
from eventlog.schema import eventlog_prices as _table

__all__ = [
    "CSV_COLUMNS",
    "PROVIDER_ALIASES",
    "Price",
    "PriceBook",
    "PriceFileError",
    "PriceTier",
    "Source",
    "bundled_prices",
    "list_prices",
    "load_user_prices",
    "normalize_provider",
    "price_csv_rows",
    "read_price_file",
    "store_prices",
]

Source = Literal["bundled", "user"]

CSV_COLUMNS: Final = (
    "id",
    "provider",
    "model",
    "pattern",
    "valid_from",
    "input",
    "output",
    "cache_read",
    "cache_write",
    "reasoning",
    "request",
    "above_input_tokens",
)

PROVIDER_ALIASES: Final[Mapping[str, str]] = {
    "gemini": "google",
    "vertex": "google",
    "vertex_ai": "google",
    "google_ai": "google",
    "azure": "openai",
    "azure_openai": "openai",
    "mistralai": "mistral",
}
# Model-name prefixes that are stripped before matching: "openai/gpt-4o", "azure/gpt-4o".
_KNOWN_PROVIDERS: Final = frozenset({"openai", "anthropic", "google", "mistral"}) | frozenset(
    PROVIDER_ALIASES
)

_PER_TOKEN: Final = -6  # prices are per million tokens: a decimal shift, exact
_NANO: Final = Decimal("0.000000001")
# Costs are computed in a context of our own: the thread's may have been narrowed by the
# application, and 60 digits hold any product of a token count and a price exactly.
_EXACT: Final = Context(prec=60, rounding=ROUND_HALF_EVEN)
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_CACHE_SIZE: Final = 4096
_TOKEN_PRICES: Final = ("input", "output", "cache_read", "cache_write", "reasoning")
_PRICE_KEYS: Final = frozenset(
    {"id", "provider", "model", "pattern", "valid_from", "request", "tiers", "source"}
    | set(_TOKEN_PRICES)
)
_TIER_KEYS: Final = frozenset({"above_input_tokens", *_TOKEN_PRICES})


class PriceFileError(EventLogError, ValueError):
    """A price file (or stored price) is malformed: ``path``, ``line`` (CSV) or ``index``
    (JSON) and ``field`` say where, so a person can fix it."""

    def __init__(
        self,
        path: str,
        message: str,
        *,
        line: int | None = None,
        index: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.index = index
        self.field = field
        where = [path]
        if line is not None:
            where.append(f"line {line}")
        if index is not None:
            where.append(f"prices[{index}]")
        what = message if field is None else f"field {field!r} {message}"
        super().__init__(f"{': '.join(where)}: {what}")


class _FieldError(ValueError):
    """A bad value of one field; its message reads ``"<field> <rule>, got <value>"``."""

    def __init__(self, field: str, rule: str, value: object = ...) -> None:
        self.field = field
        self.rule = rule if value is ... else f"{rule}, got {value!r}"
        super().__init__(f"{field} {self.rule}")

    def within(self, prefix: str) -> _FieldError:
        """This error for the field as part of ``prefix`` (``tiers[0].input``)."""
        return _FieldError(f"{prefix}.{self.field}" if self.field else prefix, self.rule)


# -- the prices -------------------------------------------------------------------------


def _price_value(name: str, value: object, *, optional: bool = False) -> Decimal | None:
    """``value`` as a price: a finite Decimal (or int) >= 0; never a float."""
    if value is None and optional:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        kind = "a Decimal >= 0 or None" if optional else "a Decimal >= 0"
        raise _FieldError(name, f"must be {kind}", value)
    return value.copy_abs()  # -0 as 0


def _token_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Long-context prices: when ``prompt_tokens > above_input_tokens`` they replace the
    base prices for the whole call (as Google and Anthropic price long prompts)."""

    above_input_tokens: int
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None  # None: priced as this tier's input
    cache_write: Decimal | None = None  # None: priced as this tier's input
    reasoning: Decimal | None = None  # None: priced as this tier's output

    def __post_init__(self) -> None:
        above = self.above_input_tokens
        if isinstance(above, bool) or not isinstance(above, int) or above < 0:
            raise _FieldError("above_input_tokens", "must be an int >= 0", above)
        for name in _TOKEN_PRICES:
            value = _price_value(name, getattr(self, name), optional=name not in _REQUIRED)
            object.__setattr__(self, name, value)

    def to_json(self) -> dict[str, Any]:
        """This tier as in a price file: prices as decimal strings."""
        return {"above_input_tokens": self.above_input_tokens} | _prices_json(self)


_REQUIRED: Final = ("input", "output")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens (and per request) of one model or family, from
    ``valid_from`` on; ``id`` is stored with each event priced by it (``price_id``)."""

    id: str  # stable, e.g. "openai/gpt-4o/2024-10-01"
    provider: str | None  # normalised: "openai", "anthropic", "google", "mistral"; None: any
    model: str | None  # an exact model name (case-insensitive), or
    pattern: str | None  # an fnmatch glob over model names; exactly one of the two
    valid_from: date
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None  # None: priced as input
    cache_write: Decimal | None = None  # None: priced as input
    reasoning: Decimal | None = None  # None: priced as output
    request: Decimal = Decimal(0)  # USD per request
    tiers: tuple[PriceTier, ...] = ()  # sorted by above_input_tokens
    source: Source = "bundled"

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip() or self.id != self.id.strip():
            raise _FieldError("id", "must be a non-empty str without surrounding spaces", self.id)
        if self.provider is not None:
            if not isinstance(self.provider, str) or not self.provider.strip():
                raise _FieldError("provider", "must be a non-empty str or None", self.provider)
            object.__setattr__(self, "provider", normalize_provider(self.provider))
        for name in ("model", "pattern"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise _FieldError(name, "must be a non-empty str or None", value)
        if self.model is None and self.pattern is None:
            raise _FieldError("model", "or pattern is required (exactly one of them)")
        if self.model is not None and self.pattern is not None:
            raise _FieldError("pattern", "must not be given with model (exactly one of them)")
        if not isinstance(self.valid_from, date) or isinstance(self.valid_from, datetime):
            raise _FieldError("valid_from", "must be a date (not a datetime)", self.valid_from)
        for name in _TOKEN_PRICES:
            value = _price_value(name, getattr(self, name), optional=name not in _REQUIRED)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "request", _price_value("request", self.request))
        if not isinstance(self.tiers, (tuple, list)) or not all(
            isinstance(tier, PriceTier) for tier in self.tiers
        ):
            raise _FieldError("tiers", "must be a tuple of PriceTier", self.tiers)
        tiers = tuple(sorted(self.tiers, key=lambda tier: tier.above_input_tokens))
        thresholds = [tier.above_input_tokens for tier in tiers]
        if len(set(thresholds)) != len(thresholds):
            raise _FieldError("tiers", "must not repeat an above_input_tokens", thresholds)
        object.__setattr__(self, "tiers", tiers)
        if self.source not in get_args(Source):
            raise _FieldError("source", "must be 'bundled' or 'user'", self.source)

    def cost(
        self,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> Decimal:
        """USD of one call, exact, rounded half-even to the nano-dollar.

        ``prompt_tokens`` include the cache tokens and ``completion_tokens`` the reasoning
        tokens (OpenAI's convention); ``ValueError`` for a count that is not an int >= 0.
        """
        prompt = _token_count("prompt_tokens", prompt_tokens)
        completion = _token_count("completion_tokens", completion_tokens)
        read = _token_count("cache_read_tokens", cache_read_tokens)
        write = _token_count("cache_write_tokens", cache_write_tokens)
        reasoning = _token_count("reasoning_tokens", reasoning_tokens)
        rates: Price | PriceTier = self
        for tier in self.tiers:
            if prompt > tier.above_input_tokens:
                rates = tier
        whole = _pico_rates(rates, self.request)
        if whole is not None:
            # Integer pico-dollars: exact, and several times faster than Decimal (this
            # runs for every priced call the writer stores).
            p_in, p_read, p_write, p_out, p_reasoning, p_request = whole
            pico = (
                max(prompt - read - write, 0) * p_in
                + read * p_read
                + write * p_write
                + max(completion - reasoning, 0) * p_out
                + reasoning * p_reasoning
                + p_request
            )
            nano, rest = divmod(pico, 1000)
            if rest > 500 or (rest == 500 and nano % 2):
                nano += 1  # half-even, as quantize()
            return Decimal(nano).scaleb(-9)
        input_, output = rates.input, rates.output
        with localcontext(_EXACT):
            tokens = (
                max(prompt - read - write, 0) * input_
                + read * (input_ if rates.cache_read is None else rates.cache_read)
                + write * (input_ if rates.cache_write is None else rates.cache_write)
                + max(completion - reasoning, 0) * output
                + reasoning * (output if rates.reasoning is None else rates.reasoning)
            )
            return (tokens.scaleb(_PER_TOKEN) + self.request).quantize(_NANO)

    def to_json(self) -> dict[str, Any]:
        """This price as in a JSON price file, with its ``source``: prices as decimal
        strings, absent values as null."""
        return {
            "id": self.id,
            "source": self.source,
            "provider": self.provider,
            "model": self.model,
            "pattern": self.pattern,
            "valid_from": self.valid_from.isoformat(),
            **_prices_json(self),
            "request": _text(self.request),
            "tiers": [tier.to_json() for tier in self.tiers],
        }


def _text(value: Decimal | None) -> str | None:
    """A price as plain decimal text (``0.0000001``, never ``1E-7``)."""
    return None if value is None else format(value, "f")


def _prices_json(rates: Price | PriceTier) -> dict[str, str | None]:
    return {name: _text(getattr(rates, name)) for name in _TOKEN_PRICES}


def normalize_provider(provider: str | None) -> str | None:
    """``provider`` lower-case, with its aliases folded (``"Azure"`` is ``"openai"``)."""
    if provider is None:
        return None
    name = provider.strip().lower()
    return PROVIDER_ALIASES.get(name, name) or None


def _split_model(model: str) -> tuple[str | None, str]:
    """``(provider, model)`` of a model name: lower-case, without a known provider prefix
    (``"openai/gpt-4o"``) or Google's ``"models/"``."""
    name = model.strip().lower()
    prefix, slash, rest = name.partition("/")
    if slash and rest:
        if prefix in _KNOWN_PROVIDERS:
            return normalize_provider(prefix), rest
        if prefix == "models":
            return None, rest
    return None, name


# -- looking prices up ------------------------------------------------------------------


def _provider_fits(price: Price, provider: str | None) -> bool:
    return price.provider is None or provider is None or price.provider == provider


def _latest(prices: Sequence[Price], provider: str | None, day: date) -> Price | None:
    """The price of ``prices`` (latest ``valid_from`` first) in force on ``day``."""
    for price in prices:
        if price.valid_from <= day and _provider_fits(price, provider):
            return price
    return None


class _Index:
    """One source's prices, arranged for lookup: exact names in a dict, patterns longest
    first, each with its prices latest first (provider-specific before provider-less)."""

    def __init__(self, prices: Iterable[Price]) -> None:
        exact: dict[str, list[Price]] = {}
        patterns: dict[str, list[Price]] = {}
        for price in prices:
            if price.model is not None:
                exact.setdefault(_split_model(price.model)[1], []).append(price)
            else:
                assert price.pattern is not None
                patterns.setdefault(price.pattern.strip().lower(), []).append(price)

        def order(group: list[Price]) -> list[Price]:
            return sorted(group, key=lambda p: (p.valid_from, p.provider is not None), reverse=True)

        self.exact = {name: order(group) for name, group in exact.items()}
        self.patterns: list[tuple[Callable[[str], object], list[Price]]] = [
            (re.compile(fnmatch.translate(pattern)).match, order(patterns[pattern]))
            for pattern in sorted(patterns, key=lambda p: (-len(p), p))
        ]

    def find(self, provider: str | None, model: str, day: date) -> Price | None:
        group = self.exact.get(model)
        if group is not None:
            found = _latest(group, provider, day)
            if found is not None:
                return found
        for match, group in self.patterns:
            if match(model):
                found = _latest(group, provider, day)
                if found is not None:
                    return found
        return None

    def could_match(self, price: Price, provider: str | None, model: str) -> bool:
        if not _provider_fits(price, provider):
            return False
        if price.model is not None:
            return _split_model(price.model)[1] == model
        assert price.pattern is not None
        return fnmatch.fnmatchcase(model, price.pattern.strip().lower())


def _check_prices(name: str, prices: object) -> tuple[Price, ...]:
    if isinstance(prices, (str, bytes)) or not isinstance(prices, Iterable):
        raise TypeError(f"{name} must be a sequence of Price, got {type(prices).__name__}")
    checked = tuple(prices)
    for price in checked:
        if not isinstance(price, Price):
            raise TypeError(f"{name} must hold only Price, got {type(price).__name__}")
    return checked


@functools.lru_cache(maxsize=4096)
def _pico_rates(
    rates: Price | PriceTier, request: Decimal
) -> tuple[int, int, int, int, int, int] | None:
    """``rates`` as whole pico-dollars per token (a price per million tokens with at most
    six decimals, a request price with at most twelve), or None to use Decimal."""
    read = rates.input if rates.cache_read is None else rates.cache_read
    write = rates.input if rates.cache_write is None else rates.cache_write
    reasoning = rates.output if rates.reasoning is None else rates.reasoning
    per_token = [rates.input, read, write, rates.output, reasoning]
    values = [rate.scaleb(6) for rate in per_token] + [request.scaleb(12)]
    if any(value != value.to_integral_value() for value in values):
        return None
    a, b, c, d, e, f = (int(value) for value in values)
    return a, b, c, d, e, f


class PriceBook:
    """Bundled prices plus the user's, looked up by provider, model and time."""

    def __init__(self, bundled: Sequence[Price], user: Sequence[Price] = ()) -> None:
        self._bundled = _check_prices("bundled", bundled)
        self._user = _check_prices("user", user)
        self._indexes = (_Index(self._user), _Index(self._bundled))
        # find() runs for every event the writer prices: the answers are kept per
        # (provider, model, day), and forgotten all at once past _CACHE_SIZE.
        self._cache: dict[tuple[str | None, str | None, date], Price | None] = {}

    @classmethod
    def default(cls, user: Sequence[Price] = ()) -> PriceBook:
        """The bundled prices (read once per process) and ``user``'s, which come first."""
        return cls(_bundled(), user)

    @property
    def prices(self) -> list[Price]:
        """Every price, the user's first."""
        return [*self._user, *self._bundled]

    def find(self, provider: str | None, model: str | None, at: datetime) -> Price | None:
        """The price of a call to ``model`` of ``provider`` made at ``at`` (naive: UTC),
        or None if none applies (see the module's docstring for the rules)."""
        utc = at.tzinfo is None or at.tzinfo is UTC
        day = at.date() if utc else at.astimezone(UTC).date()
        key = (provider, model, day)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._find(provider, model, day)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _find(self, provider: str | None, model: str | None, day: date) -> Price | None:
        if not model or not model.strip():
            return None
        prefix, name = _split_model(model)
        provider = normalize_provider(provider) if provider else prefix
        for index in self._indexes:
            found = index.find(provider, name, day)
            if found is not None:
                return found
        return None

    def matching(self, model: str) -> list[Price]:
        """The prices, the user's first, that could apply to ``model`` at some time."""
        prefix, name = _split_model(model)
        return [
            price
            for index, prices in zip(self._indexes, (self._user, self._bundled), strict=True)
            for price in prices
            if index.could_match(price, prefix, name)
        ]


# -- reading prices ---------------------------------------------------------------------


def _parse_decimal(name: str, value: object, *, optional: bool) -> Decimal | None:
    """A price from a file: a decimal string or a JSON number (already exact)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if optional:
            return None
        raise _FieldError(name, "is required")
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except InvalidOperation:
            raise _FieldError(name, "must be a decimal number >= 0", value) from None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise _FieldError(name, "must be a decimal number >= 0", value)
    if not Decimal(value).is_finite() or value < 0:
        raise _FieldError(name, "must be a decimal number >= 0", str(value))
    return Decimal(value)


def _parse_text(name: str, value: object) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise _FieldError(name, "must be a string", value)
    return value.strip()


def _parse_date(value: object) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if value is None or value == "":
        raise _FieldError("valid_from", "is required")
    if isinstance(value, str) and _DATE.fullmatch(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _FieldError("valid_from", "must be a date YYYY-MM-DD", value)


def _parse_threshold(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _FieldError("above_input_tokens", "must be an integer >= 0", value)
    return value


def _unknown_keys(obj: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for key in obj:
        if key not in allowed:
            raise _FieldError(str(key), f"is not a price field (use {', '.join(sorted(allowed))})")


def _parse_tier(obj: object) -> PriceTier:
    if not isinstance(obj, Mapping):
        raise _FieldError("", "must be an object", obj)
    _unknown_keys(obj, _TIER_KEYS)
    values = {
        name: _parse_decimal(name, obj.get(name), optional=name not in _REQUIRED)
        for name in _TOKEN_PRICES
    }
    return PriceTier(_parse_threshold(obj.get("above_input_tokens")), **values)  # type: ignore[arg-type]


def _parse_price(
    obj: Mapping[str, Any], source: Source, tiers: tuple[PriceTier, ...] | None = None
) -> Price:
    """A price from a file's object (or a CSV row, whose ``tiers`` come apart)."""
    _unknown_keys(obj, _PRICE_KEYS)
    ident = _parse_text("id", obj.get("id"))
    if ident is None:
        raise _FieldError("id", "is required")
    if tiers is None:
        raw = obj.get("tiers")
        if raw is not None and not isinstance(raw, list):
            raise _FieldError("tiers", "must be a list of objects", raw)
        parsed: list[PriceTier] = []
        for i, item in enumerate(raw or ()):
            try:
                parsed.append(_parse_tier(item))
            except _FieldError as err:
                raise err.within(f"tiers[{i}]") from None
        tiers = tuple(parsed)
    values = {
        name: _parse_decimal(name, obj.get(name), optional=name not in _REQUIRED)
        for name in _TOKEN_PRICES
    }
    request = _parse_decimal("request", obj.get("request"), optional=True)
    return Price(
        id=ident,
        provider=_parse_text("provider", obj.get("provider")),
        model=_parse_text("model", obj.get("model")),
        pattern=_parse_text("pattern", obj.get("pattern")),
        valid_from=_parse_date(obj.get("valid_from")),
        request=Decimal(0) if request is None else request,
        tiers=tiers,
        source=source,
        **values,  # type: ignore[arg-type]
    )


def read_price_file(path: str | os.PathLike[str]) -> list[Price]:
    """The prices of a ``.json`` or ``.csv`` file (see the module's docstring for both
    formats), as the user's. :class:`PriceFileError` names the file, the line or index
    and the field of the first problem; ``OSError`` if it cannot be read."""
    where = os.fspath(path)
    suffix = Path(where).suffix.lower()
    if suffix not in (".json", ".csv"):
        raise PriceFileError(where, "must be a .json or .csv file")
    data = Path(where).read_bytes()
    if suffix == ".csv":
        return _read_csv(where, data)
    return _read_json(where, data, "user")


def _read_json(where: str, data: bytes, source: Source) -> list[Price]:
    try:
        document = json.loads(data, parse_float=Decimal)  # exact: never through float
    except (UnicodeDecodeError, ValueError) as err:
        line = getattr(err, "lineno", None)
        raise PriceFileError(where, f"is not valid JSON: {err}", line=line) from None
    items = document.get("prices") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise PriceFileError(where, 'must hold a list of prices, or {"prices": [...]}')
    prices: list[Price] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise PriceFileError(where, "must be an object", index=index)
            price = _parse_price(item, source)
        except _FieldError as err:
            raise PriceFileError(where, err.rule, index=index, field=err.field) from None
        if price.id in seen:
            raise PriceFileError(where, "repeats an earlier price's", index=index, field="id")
        seen.add(price.id)
        prices.append(price)
    return prices


def _read_csv(where: str, data: bytes) -> list[Price]:
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's BOM
    except UnicodeDecodeError as err:
        raise PriceFileError(where, f"is not UTF-8 text: {err}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip().lower() for name in next(reader, [])]
    allowed = (*CSV_COLUMNS, "source")
    for name in header:
        if name not in allowed:
            rule = f"is not a price column (use {', '.join(CSV_COLUMNS)})"
            raise PriceFileError(where, rule, line=1, field=name)
    for name in ("id", "valid_from", "input", "output"):
        if name not in header:
            raise PriceFileError(where, "is a required column", line=1, field=name)
    if "model" not in header and "pattern" not in header:
        raise PriceFileError(where, "or 'pattern' is a required column", line=1, field="model")
    bases: dict[str, tuple[int, dict[str, str]]] = {}
    tier_rows: list[tuple[int, dict[str, str]]] = []
    for cells in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(header):
            raise PriceFileError(
                where, f"has {len(cells)} cells for {len(header)} columns", line=line
            )
        row = {name: cell.strip() for name, cell in zip(header, cells, strict=False)}
        row.pop("source", None)
        if row.get("above_input_tokens"):
            tier_rows.append((line, row))
            continue
        ident = row.get("id", "")
        if ident in bases:
            rule = f"repeats the price of line {bases[ident][0]} (a tier needs above_input_tokens)"
            raise PriceFileError(where, rule, line=line, field="id")
        bases[ident] = (line, row)
    tiers: dict[str, list[PriceTier]] = {}
    for line, row in tier_rows:
        ident = row.get("id", "")
        if ident not in bases:
            rule = "names no price of this file (a tier row follows its price's id)"
            raise PriceFileError(where, rule, line=line, field="id")
        base = bases[ident][1]
        for name in ("provider", "model", "pattern", "valid_from", "request"):
            if row.get(name) and row.get(name) != base.get(name):
                rule = "must be empty in a tier row, or repeat its price's"
                raise PriceFileError(where, rule, line=line, field=name)
        try:
            tier = _parse_tier({k: row.get(k) for k in _TIER_KEYS})
        except _FieldError as err:
            raise PriceFileError(where, err.rule, line=line, field=err.field) from None
        if any(t.above_input_tokens == tier.above_input_tokens for t in tiers.get(ident, ())):
            rule = "repeats an earlier tier of this price"
            raise PriceFileError(where, rule, line=line, field="above_input_tokens")
        tiers.setdefault(ident, []).append(tier)
    prices: list[Price] = []
    for ident, (line, row) in bases.items():
        row.pop("above_input_tokens", None)
        try:
            prices.append(_parse_price(row, "user", tuple(tiers.get(ident, ()))))
        except _FieldError as err:
            raise PriceFileError(where, err.rule, line=line, field=err.field) from None
    return prices


@functools.cache
def _bundled() -> tuple[Price, ...]:
    data = resources.files("eventlog").joinpath("prices.json").read_bytes()
    return tuple(_read_json("eventlog/prices.json", data, "bundled"))


def bundled_prices() -> list[Price]:
    """The prices shipped with eventlog (``eventlog/prices.json``), in file order."""
    return list(_bundled())


def price_csv_rows(prices: Iterable[Price]) -> list[dict[str, str]]:
    """``prices`` as rows of a CSV price file (a row per price, then one per tier), with
    their ``source``: what ``eventlog prices list --format csv`` prints."""
    rows: list[dict[str, str]] = []
    for price in prices:
        record = price.to_json()
        base = {name: record.get(name) or "" for name in CSV_COLUMNS}
        rows.append(base | {"source": price.source})
        for tier in price.tiers:
            values = tier.to_json()
            rows.append(
                {name: "" for name in CSV_COLUMNS}
                | {"id": price.id, "source": price.source}
                | {name: "" if v is None else str(v) for name, v in values.items()}
            )
    return rows


# -- the user's prices in the database -------------------------------------------------


def _row(price: Price, now: datetime) -> dict[str, Any]:
    return {
        "id": price.id,
        "provider": price.provider,
        "model": price.model,
        "pattern": price.pattern,
        "valid_from": price.valid_from,
        **_prices_json(price),
        "request": None if price.request == 0 else _text(price.request),
        "tiers": json.dumps([tier.to_json() for tier in price.tiers]) if price.tiers else None,
        "created_at": now,
    }


def _from_row(row: Row[Any], url: str) -> Price:
    try:
        tiers = json.loads(row.tiers, parse_float=Decimal) if row.tiers else None
        record = {
            name: getattr(row, name)
            for name in ("id", "provider", "model", "pattern", "valid_from", "request")
        }
        record |= {name: getattr(row, name) for name in _TOKEN_PRICES}
        return _parse_price(record | {"tiers": tiers}, "user")
    except _FieldError as err:
        where = f"{url} eventlog_prices row {row.id!r}"
        raise PriceFileError(where, err.rule, field=err.field) from None
    except ValueError as err:  # the tiers' JSON
        where = f"{url} eventlog_prices row {row.id!r}"
        raise PriceFileError(where, f"is not valid JSON: {err}", field="tiers") from None


async def store_prices(db: Database, prices: Sequence[Price]) -> int:
    """Insert ``prices`` into ``eventlog_prices``, replacing those with the same id, in one
    transaction; return how many. ``ValueError`` if two share an id."""
    checked = _check_prices("prices", prices)
    ids = [price.id for price in checked]
    if len(set(ids)) != len(ids):
        twice = next(ident for ident in ids if ids.count(ident) > 1)
        raise ValueError(f"prices must have distinct ids; {twice!r} appears more than once")
    if not checked:
        return 0
    now = utc_now()
    rows = [_row(price, now) for price in checked]
    insert = postgresql_insert if db.dialect == "postgresql" else sqlite_insert
    statement = insert(_table)
    kept = ("id", "created_at")  # created_at: when the id was first loaded
    statement = statement.on_conflict_do_update(
        index_elements=[_table.c.id],
        set_={c.name: statement.excluded[c.name] for c in _table.c if c.name not in kept},
    )
    try:
        async with db.engine.begin() as conn:
            await conn.execute(statement, rows)
    except (SQLAlchemyError, OSError) as err:
        raise await _failure(db, f"storing {len(rows)} prices", err) from err
    return len(rows)


async def load_user_prices(db: Database) -> list[Price]:
    """The user's prices: the rows of ``eventlog_prices``, by id."""
    try:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(select(_table).order_by(_table.c.id))).all()
    except (SQLAlchemyError, OSError) as err:
        raise await _failure(db, "reading the prices", err) from err
    return [_from_row(row, str(db.url)) for row in rows]


async def list_prices(db: Database | None, *, model: str | None = None) -> list[Price]:
    """The user's prices (with ``db``) then the bundled ones; with ``model``, only those
    that could apply to a call to it (at some time)."""
    user = [] if db is None else await load_user_prices(db)
    book = PriceBook.default(user)
    if model is None:
        return book.prices
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty str or None, got {model!r}")
    return book.matching(model)


async def _failure(db: Database, doing: str, err: Exception) -> DatabaseError:
    return await table_failure(db, _table, doing, err)


def price_from_row(row: Mapping[str, Any], where: str) -> Price:
    """A price from a row of ``eventlog_prices`` read by a driver (the writer reads
    them on its own connection); ``where`` names the database in errors."""
    return _from_row(SimpleNamespace(**row), where)  # type: ignore[arg-type]
