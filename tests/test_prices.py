"""Prices: the bundled file's schema, exact costs, which price applies to a call, price
files, the user's prices in both databases, and ``eventlog prices``."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from eventlog import Database, DatabaseError, EventLogError, open_database
from eventlog.cli import main
from eventlog.prices import (
    CSV_COLUMNS,
    Price,
    PriceBook,
    PriceFileError,
    PriceTier,
    bundled_prices,
    list_prices,
    load_user_prices,
    price_csv_rows,
    read_price_file,
    store_prices,
)

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2025, 7, 1, 12, tzinfo=UTC)
D = Decimal


def price(
    ident: str = "p",
    *,
    model: str | None = None,
    pattern: str | None = None,
    provider: str | None = None,
    valid_from: date = date(2024, 1, 1),
    input: str = "1",
    output: str = "2",
    **extra: Any,
) -> Price:
    if model is None and pattern is None:
        model = "m"
    for name in ("cache_read", "cache_write", "reasoning", "request"):
        if isinstance(extra.get(name), str):
            extra[name] = D(extra[name])
    return Price(
        id=ident,
        provider=provider,
        model=model,
        pattern=pattern,
        valid_from=valid_from,
        input=D(input),
        output=D(output),
        **extra,
    )


# -- the bundled file -------------------------------------------------------------------

TOP_KEYS = {"version", "checked", "currency", "unit", "prices"}
ENTRY_KEYS = {"id", "provider", "model", "pattern", "valid_from", "input", "output"}
ENTRY_KEYS |= {"cache_read", "cache_write", "reasoning", "request", "tiers"}
TOKEN_PRICES = ("input", "output", "cache_read", "cache_write", "reasoning")
TIER_KEYS = {"above_input_tokens", *TOKEN_PRICES}
PROVIDERS = {"openai", "anthropic", "google", "mistral"}
DECIMAL = re.compile(r"\d+(\.\d+)?")


def bundled_document() -> dict[str, Any]:
    data = resources.files("eventlog").joinpath("prices.json").read_bytes()
    document: dict[str, Any] = json.loads(data)
    return document


def check_decimal(where: str, value: object) -> Decimal:
    assert isinstance(value, str), f"{where} must be a decimal string, got {value!r}"
    assert DECIMAL.fullmatch(value), f"{where} must be plain decimal text >= 0, got {value!r}"
    return D(value)


def test_bundled_file_has_its_header() -> None:
    document = bundled_document()
    assert set(document) == TOP_KEYS
    assert document["version"] == 1
    assert document["currency"] == "USD"
    assert document["unit"] == "per million tokens"
    assert date.fromisoformat(document["checked"]) <= date.today()


def test_every_bundled_entry_is_valid() -> None:
    for i, entry in enumerate(bundled_document()["prices"]):
        where = f"prices[{i}] ({entry.get('id')})"
        assert set(entry) <= ENTRY_KEYS, where
        assert {"id", "provider", "valid_from", "input", "output"} <= set(entry), where
        assert entry["provider"] in PROVIDERS, where
        assert ("model" in entry) != ("pattern" in entry), f"{where}: one of model/pattern"
        name = entry.get("model") or entry["pattern"]
        assert isinstance(name, str)
        assert name == name.strip().lower(), where
        assert ("pattern" in entry) == any(c in name for c in "*?["), where
        valid_from = date.fromisoformat(entry["valid_from"])
        assert entry["id"] == f"{entry['provider']}/{name}/{valid_from}", where
        for key in (*TOKEN_PRICES, "request"):
            if key in entry:
                check_decimal(f"{where}.{key}", entry[key])
        thresholds = []
        for j, tier in enumerate(entry.get("tiers", [])):
            assert set(tier) <= TIER_KEYS, where
            assert isinstance(tier["above_input_tokens"], int), where
            assert tier["above_input_tokens"] > 0, where
            thresholds.append(tier["above_input_tokens"])
            for key in TOKEN_PRICES:
                if key in tier:
                    check_decimal(f"{where}.tiers[{j}].{key}", tier[key])
            # A tier replaces every price: it must not drop a cache price of its base.
            for key in ("cache_read", "cache_write", "reasoning"):
                assert (key in entry) == (key in tier), f"{where}.tiers[{j}] lacks {key}"
            assert D(tier["input"]) >= D(entry["input"]), where
        assert thresholds == sorted(set(thresholds)), f"{where}: tiers sorted ascending"


def test_bundled_ids_and_keys_are_unique() -> None:
    entries = bundled_document()["prices"]
    ids = [entry["id"] for entry in entries]
    assert len(set(ids)) == len(ids)
    keys = [
        (entry["provider"], entry.get("model"), entry.get("pattern"), entry["valid_from"])
        for entry in entries
    ]
    assert len(set(keys)) == len(keys)


def test_bundled_prices_parse_in_file_order_and_are_read_once() -> None:
    prices = bundled_prices()
    assert [p.id for p in prices] == [e["id"] for e in bundled_document()["prices"]]
    assert all(p.source == "bundled" for p in prices)
    assert bundled_prices()[0] is prices[0]  # parsed once per process
    assert bundled_prices() is not prices  # a new list each time: callers may change it


def test_bundled_file_covers_the_common_models() -> None:
    book = PriceBook.default()
    for provider, model in [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4.1-nano-2025-04-14"),
        ("openai", "o3-mini"),
        ("openai", "o4-mini"),
        ("openai", "gpt-5-nano"),
        ("openai", "gpt-4-turbo-2024-04-09"),
        ("openai", "gpt-3.5-turbo"),
        ("openai", "text-embedding-3-large"),
        ("anthropic", "claude-3-haiku-20240307"),
        ("anthropic", "claude-3-5-haiku-latest"),
        ("anthropic", "claude-3-7-sonnet-20250219"),
        ("anthropic", "claude-sonnet-4-20250514"),
        ("anthropic", "claude-sonnet-4-5-20250929"),
        ("anthropic", "claude-opus-4-1-20250805"),
        ("anthropic", "claude-haiku-4-5"),
        ("google", "gemini-1.5-pro-002"),
        ("google", "gemini-2.0-flash-lite"),
        ("google", "gemini-2.5-flash"),
        ("mistral", "mistral-large-latest"),
        ("mistral", "codestral-2501"),
        ("mistral", "ministral-3b-latest"),
        ("mistral", "open-mistral-nemo"),
    ]:
        assert book.find(provider, model, datetime(2025, 12, 1, tzinfo=UTC)) is not None, model
    assert book.find("openai", "claude-opus-4-5", datetime(2025, 12, 1, tzinfo=UTC)) is None


def test_bundled_prices_are_in_the_wheel(tmp_path: Path) -> None:
    pytest.importorskip("hatchling", reason="building the wheel needs hatchling")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*command, "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("eventlog-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = json.loads(archive.read("eventlog/prices.json"))
    assert shipped == bundled_document()


# -- costs ------------------------------------------------------------------------------


def test_cost_of_an_openai_call_with_cached_and_reasoning_tokens() -> None:
    o3 = price(input="2", output="8", cache_read="0.50")
    # 10,000 prompt tokens of which 4,000 cached; 3,000 completion of which 2,000 reasoning.
    cost = o3.cost(
        prompt_tokens=10_000,
        completion_tokens=3_000,
        cache_read_tokens=4_000,
        reasoning_tokens=2_000,
    )
    assert cost == D("0.012") + D("0.002") + D("0.024")  # 6k*2 + 4k*0.5 + 3k*8, per million
    assert cost.as_tuple().exponent == -9


def test_cost_of_an_anthropic_call_with_cache_write_and_read() -> None:
    sonnet = price(input="3", output="15", cache_read="0.30", cache_write="3.75")
    cost = sonnet.cost(
        prompt_tokens=5_000,
        completion_tokens=1_000,
        cache_read_tokens=2_000,
        cache_write_tokens=1_000,
    )
    assert cost == D("0.006") + D("0.0006") + D("0.00375") + D("0.015")


def test_missing_cache_and_reasoning_prices_fall_back_to_input_and_output() -> None:
    plain = price(input="1", output="4")
    assert plain.cost(
        prompt_tokens=1_000_000,
        completion_tokens=1_000_000,
        cache_read_tokens=300_000,
        cache_write_tokens=200_000,
        reasoning_tokens=500_000,
    ) == D(5)


def test_a_tier_prices_the_whole_call_above_its_threshold() -> None:
    sonnet4 = price(
        input="3",
        output="15",
        cache_read="0.30",
        tiers=(PriceTier(200_000, D("6"), D("22.50"), cache_read=D("0.60")),),
    )
    at = sonnet4.cost(prompt_tokens=200_000, completion_tokens=1_000)
    assert at == D("0.6") + D("0.015")  # not above: base prices
    above = sonnet4.cost(prompt_tokens=200_001, completion_tokens=1_000, cache_read_tokens=1)
    assert above == (200_000 * D(6) + D("0.60") + 1_000 * D("22.50")) / 1_000_000


def test_the_highest_tier_below_the_prompt_applies_whatever_their_order() -> None:
    tiered = price(
        input="1",
        output="1",
        tiers=[PriceTier(1_000, D(3), D(3)), PriceTier(100, D(2), D(2))],
    )
    assert [t.above_input_tokens for t in tiered.tiers] == [100, 1_000]
    assert tiered.cost(prompt_tokens=1_000_000, completion_tokens=0) == D(3)
    assert tiered.cost(prompt_tokens=500, completion_tokens=0) == D("0.001")


def test_a_per_request_price_is_added_once() -> None:
    search = price(input="0", output="0", request="0.01")
    assert search.cost(prompt_tokens=0, completion_tokens=0) == D("0.01")
    assert price(request=D("0.01")).cost(prompt_tokens=1, completion_tokens=1) == D("0.010003")


def test_cost_is_rounded_half_even_to_the_nano_dollar_without_floats() -> None:
    tiny = price(input="0.0005", output="0")
    assert tiny.cost(prompt_tokens=1, completion_tokens=0) == D("0")  # 0.0000000005 -> even
    assert tiny.cost(prompt_tokens=3, completion_tokens=0) == D("0.000000002")  # 1.5 -> 2
    huge = price(input="123.456789123", output="0")
    exact = D(2**31 - 1) * D("123.456789123") / 1_000_000
    assert huge.cost(prompt_tokens=2**31 - 1, completion_tokens=0) == exact.quantize(D("1e-9"))


def test_more_cached_than_prompt_tokens_clamps_the_uncached_part_to_zero() -> None:
    cost = price(input="1", output="1", cache_read="0.1").cost(
        prompt_tokens=100, completion_tokens=10, cache_read_tokens=1_000, reasoning_tokens=50
    )
    assert cost == (1_000 * D("0.1") + 50) / 1_000_000


@pytest.mark.parametrize(
    ("name", "value"),
    [("prompt_tokens", -1), ("reasoning_tokens", 1.5), ("completion_tokens", True)],
)
def test_a_bad_token_count_is_refused_by_name(name: str, value: object) -> None:
    counts: dict[str, Any] = {"prompt_tokens": 1, "completion_tokens": 1, name: value}
    with pytest.raises(ValueError, match=f"{name} must be an int >= 0"):
        price().cost(**counts)


# -- a price's own checks ---------------------------------------------------------------


def test_a_provider_is_normalised_and_aliases_fold() -> None:
    assert price(provider="Azure").provider == "openai"
    assert price(provider="VERTEX_AI").provider == "google"
    assert price(provider="mistralai").provider == "mistral"
    assert price(provider="together").provider == "together"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "m", "pattern": "m*"}, "pattern must not be given with model"),
        ({"model": None, "pattern": None, "id": "x"}, "model or pattern is required"),
        ({"input": D(-1)}, "input must be a Decimal >= 0"),
        ({"output": 1.5}, "output must be a Decimal >= 0"),
        ({"cache_read": D("NaN")}, "cache_read must be a Decimal >= 0 or None"),
        ({"valid_from": datetime(2024, 1, 1)}, "valid_from must be a date"),
        ({"id": " x"}, "id must be a non-empty str"),
        ({"source": "mine"}, "source must be 'bundled' or 'user'"),
    ],
)
def test_a_bad_price_is_refused_naming_the_field(changes: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "id": "p",
        "provider": None,
        "model": "m",
        "pattern": None,
        "valid_from": date(2024, 1, 1),
        "input": D(1),
        "output": D(1),
    }
    with pytest.raises(ValueError, match=re.escape(message)):
        Price(**(fields | changes))


def test_tiers_must_not_repeat_a_threshold() -> None:
    with pytest.raises(ValueError, match="tiers must not repeat"):
        price(tiers=(PriceTier(10, D(1), D(1)), PriceTier(10, D(2), D(2))))


# -- which price applies ----------------------------------------------------------------


def test_gpt_4o_mini_is_not_priced_as_gpt_4o() -> None:
    book = PriceBook.default()
    mini = book.find("openai", "gpt-4o-mini", NOW)
    dated = book.find("openai", "gpt-4o-mini-2024-07-18", NOW)
    assert mini is not None
    assert dated is not None
    assert mini.input == dated.input == D("0.15")
    four_o = book.find("openai", "gpt-4o-2024-11-20", NOW)
    assert four_o is not None
    assert four_o.input == D("2.50")


def test_a_user_price_beats_the_bundled_one_even_as_a_pattern() -> None:
    mine = price("mine", pattern="gpt-4o*", provider="openai", input="1", source="user")
    book = PriceBook.default([mine])
    assert book.find("openai", "gpt-4o-mini", NOW) is mine
    assert book.prices[0] is mine
    assert len(book.prices) == len(bundled_prices()) + 1


def test_an_exact_name_beats_a_pattern_and_a_longer_pattern_a_shorter_one() -> None:
    exact = price("exact", model="Claude-X-1")
    short = price("short", pattern="claude-*")
    long = price("long", pattern="claude-x-*")
    book = PriceBook([short, long, exact])
    assert book.find(None, "claude-x-1", NOW) is exact
    assert book.find(None, "CLAUDE-X-2", NOW) is long
    assert book.find(None, "claude-y", NOW) is short
    assert book.find(None, "gpt", NOW) is None


def test_the_latest_price_in_force_on_the_calls_utc_day_applies() -> None:
    old = price("old", model="o3", valid_from=date(2025, 4, 16), input="10")
    cut = price("cut", model="o3", valid_from=date(2025, 6, 10), input="2")
    book = PriceBook([cut, old])
    assert book.find(None, "o3", datetime(2025, 4, 15, 23, tzinfo=UTC)) is None
    assert book.find(None, "o3", datetime(2025, 4, 16, tzinfo=UTC)) is old
    assert book.find(None, "o3", datetime(2025, 6, 9, 23, 59)) is old  # naive: UTC
    assert book.find(None, "o3", datetime(2025, 6, 10)) is cut
    # 2025-06-09 20:00 in New York is 2025-06-10 00:00 UTC: the cut price.
    new_york = timezone(timedelta(hours=-4))
    assert book.find(None, "o3", datetime(2025, 6, 9, 20, tzinfo=new_york)) is cut


def test_the_bundled_o3_price_cut_applies_from_june_2025() -> None:
    book = PriceBook.default()
    before = book.find("openai", "o3", datetime(2025, 6, 1, tzinfo=UTC))
    after = book.find("openai", "o3-2025-04-16", datetime(2025, 6, 10, tzinfo=UTC))
    assert before is not None
    assert after is not None
    assert (before.input, after.input) == (D(10), D(2))


def test_a_future_user_price_falls_back_to_the_bundled_one() -> None:
    later = price("later", model="gpt-4o", valid_from=date(2030, 1, 1), source="user")
    found = PriceBook.default([later]).find("openai", "gpt-4o", NOW)
    assert found is not None
    assert found.source == "bundled"


def test_providers_match_through_aliases_and_either_side_may_leave_it_out() -> None:
    openai = price("openai", model="gpt-x", provider="openai")
    anyone = price("anyone", model="llama", provider=None)
    book = PriceBook([openai, anyone])
    for provider in ("openai", "OpenAI", "azure", "azure_openai", None):
        assert book.find(provider, "gpt-x", NOW) is openai, provider
    assert book.find("anthropic", "gpt-x", NOW) is None
    assert book.find("together", "llama", NOW) is anyone
    gemini = PriceBook.default()
    for provider in ("gemini", "vertex", "vertex_ai", "google_ai", "Google"):
        found = gemini.find(provider, "gemini-2.5-pro", NOW)
        assert found is not None
        assert found.provider == "google"


def test_a_provider_specific_price_beats_a_provider_less_one_of_the_same_day() -> None:
    anyone = price("anyone", model="m")
    azure = price("azure", model="m", provider="azure", input="5")
    book = PriceBook([anyone, azure])
    assert book.find("openai", "m", NOW) is azure
    assert book.find("mistral", "m", NOW) is anyone


def test_a_provider_prefix_in_the_model_name_is_stripped_and_names_the_provider() -> None:
    book = PriceBook.default()
    prefixed = book.find(None, "openai/gpt-4o", NOW)
    assert prefixed is not None
    assert prefixed.id == "openai/gpt-4o/2024-10-01"
    claude = book.find(None, "anthropic/claude-3-5-sonnet-20241022", NOW)
    assert claude is not None
    assert claude.provider == "anthropic"
    assert book.find(None, "anthropic/gpt-4o", NOW) is None  # the prefix is the provider
    assert book.find(None, "vertex_ai/gemini-2.0-flash", NOW) is not None
    assert book.find(None, "models/gemini-2.0-flash", NOW) is not None
    assert book.find(None, "meta/gpt-4o", NOW) is None  # not a known provider: kept


def test_no_model_means_no_price() -> None:
    book = PriceBook([price(pattern="*")])
    assert book.find("openai", None, NOW) is None
    assert book.find("openai", " ", NOW) is None


def test_find_remembers_its_answers_within_a_bound() -> None:
    book = PriceBook.default()
    first = book.find("openai", "gpt-4o", NOW)
    assert book.find("openai", "gpt-4o", NOW + timedelta(hours=1)) is first
    for i in range(5000):
        book.find("openai", f"unknown-{i}", NOW)
    assert len(book._cache) <= 4096
    assert book.find("openai", "gpt-4o", NOW) is first


def test_a_price_book_takes_only_prices() -> None:
    with pytest.raises(TypeError, match="user must hold only Price"):
        PriceBook([], ["gpt-4o"])  # type: ignore[list-item]


# -- price files ------------------------------------------------------------------------

CSV_FILE = """\
id,provider,model,pattern,valid_from,input,output,cache_read,cache_write,reasoning,request,above_input_tokens
mine/sonnet,Anthropic,,claude-sonnet-4*,2025-01-01,2.5,12,0.25,3,,,
mine/sonnet,,,,,5,20,0.5,6,,,200000
mine/search,openai,gpt-4o-search,,2025-02-01,2.50,10,,,,0.025,
"""


def test_a_csv_file_gives_prices_with_their_tiers(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(CSV_FILE, encoding="utf-8-sig")  # a spreadsheet's BOM
    sonnet, search = read_price_file(path)
    assert sonnet == Price(
        id="mine/sonnet",
        provider="anthropic",
        model=None,
        pattern="claude-sonnet-4*",
        valid_from=date(2025, 1, 1),
        input=D("2.5"),
        output=D(12),
        cache_read=D("0.25"),
        cache_write=D(3),
        tiers=(PriceTier(200_000, D(5), D(20), cache_read=D("0.5"), cache_write=D(6)),),
        source="user",
    )
    assert search.request == D("0.025")
    assert search.model == "gpt-4o-search"
    assert search.tiers == ()


def test_a_json_file_gives_exact_prices_from_strings_or_numbers(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        """{"version": 1, "prices": [
        {"id": "a", "model": "m", "valid_from": "2025-01-01", "input": 0.1, "output": "0.3",
         "tiers": [{"above_input_tokens": 1000, "input": 1, "output": "2"}]},
        {"id": "b", "pattern": "x-*", "provider": "gemini", "valid_from": "2025-01-01",
         "input": "1e-1", "output": 0}
        ]}"""
    )
    a, b = read_price_file(path)
    assert a.input == D("0.1")  # exactly: not the float 0.1000000000000000055...
    assert str(a.input) == "0.1"
    assert a.tiers == (PriceTier(1000, D(1), D(2)),)
    assert (b.provider, b.input, b.source) == ("google", D("0.1"), "user")


@pytest.mark.parametrize(
    ("content", "line", "field"),
    [
        ("id,model,valid_from,input,output\np,m,2025-01-01,abc,1\n", 2, "input"),
        ("id,model,valid_from,input,output\np,m,2025-01-01,1,1\nq,m,01/02/2025,1,1\n", 3,
         "valid_from"),
        ("id,model,valid_from,input,output\np,m,2025-01-01,-1,1\n", 2, "input"),
        ("id,model,valid_from,input,output\np,m,2025-01-01,1,\n", 2, "output"),
        ("id,model,valid_from,input,output,colour\n", 1, "colour"),
        ("id,model,valid_from,input\n", 1, "output"),
        ("id,model,pattern,valid_from,input,output\np,,,2025-01-01,1,1\n", 2, "model"),
        ("id,model,valid_from,input,output\np,m,2025-01-01,1,1\np,n,2025-01-01,1,1\n", 3, "id"),
        ("id,model,valid_from,input,output,above_input_tokens\nq,,,1,1,10\n", 2, "id"),
        ("id,model,valid_from,input,output,above_input_tokens\n"
         "p,m,2025-01-01,1,1,\np,m,2025-01-01,1,1,ten\n", 3, "above_input_tokens"),
        ("id,model,valid_from,input,output,above_input_tokens\n"
         "p,m,2025-01-01,1,1,\np,other,,2,2,10\n", 3, "model"),
    ],
)  # fmt: skip
def test_a_bad_csv_file_names_the_line_and_the_field(
    tmp_path: Path, content: str, line: int, field: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(PriceFileError) as caught:
        read_price_file(path)
    assert (caught.value.line, caught.value.field) == (line, field)
    assert str(caught.value).startswith(f"{path}: line {line}: field {field!r} ")
    assert isinstance(caught.value, EventLogError)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"input": "1,5"}, "input"),
        ({"input": None}, "input"),
        ({"valid_from": "2025-02-30"}, "valid_from"),
        ({"model": None}, "model"),
        ({"pattern": "m*"}, "pattern"),
        ({"provider": 3}, "provider"),
        ({"colour": "red"}, "colour"),
        ({"tiers": [{"above_input_tokens": 5, "input": "1", "output": "x"}]}, "tiers[0].output"),
        ({"tiers": [{"above_input_tokens": -5, "input": "1", "output": "1"}]},
         "tiers[0].above_input_tokens"),
        ({"tiers": ["big"]}, "tiers[0]"),
    ],
)  # fmt: skip
def test_a_bad_json_file_names_the_index_and_the_field(
    tmp_path: Path, entry: dict[str, Any], field: str
) -> None:
    good = {"id": "p", "model": "m", "valid_from": "2025-01-01", "input": "1", "output": "2"}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"prices": [good | {"id": "ok"}, good | entry]}))
    with pytest.raises(PriceFileError) as caught:
        read_price_file(path)
    assert (caught.value.index, caught.value.field) == (1, field)
    assert str(caught.value).startswith(f"{path}: prices[1]: field {field!r} ")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.json", "{not json", "is not valid JSON"),
        ("p.json", '{"prices": 3}', "must hold a list of prices"),
        ("p.yaml", "prices: []", "must be a .json or .csv file"),
    ],
)
def test_a_file_that_is_not_a_price_file_says_so(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PriceFileError, match=f"^{re.escape(str(path))}: .*{message}"):
        read_price_file(path)


def test_listed_prices_load_back_from_their_csv_and_json(tmp_path: Path) -> None:
    prices = [p for p in bundled_prices() if p.tiers or p.cache_write is not None]
    prices.append(price("req", request=D("0.0000001")))
    as_csv = tmp_path / "out.csv"
    with as_csv.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=[*CSV_COLUMNS, "source"])
        writer.writeheader()
        writer.writerows(price_csv_rows(prices))
    as_json = tmp_path / "out.json"
    as_json.write_bytes(orjson.dumps([p.to_json() for p in prices]))
    users = [Price(**{**_fields(p), "source": "user"}) for p in prices]
    assert read_price_file(as_csv) == users
    assert read_price_file(as_json) == users
    assert "0.0000001" in as_csv.read_text()  # plain decimals, never 1E-7


def _fields(p: Price) -> dict[str, Any]:
    return {name: getattr(p, name) for name in Price.__dataclass_fields__}


# -- the user's prices in the database --------------------------------------------------


@pytest.fixture
async def db(backend: str, db: Database) -> AsyncIterator[Database]:
    """The shared ``db`` fixture, with the prices table empty (before and after, since
    the PostgreSQL database is shared by the session's tests)."""

    async def empty() -> None:
        if backend == "postgresql":
            async with db.engine.begin() as conn:
                await conn.execute(text("TRUNCATE eventlog_prices"))

    await empty()
    yield db
    await empty()


async def test_stored_prices_load_back_as_the_users(db: Database) -> None:
    tiered = price(
        "b/tiered",
        pattern="Claude-*",
        provider="anthropic",
        cache_read=D("0.30"),
        cache_write=D("3.75"),
        reasoning=D("0.000000123"),
        tiers=(PriceTier(200_000, D(6), D("22.5"), cache_read=D("0.6"), cache_write=D("7.5")),),
    )
    plain = price("a/plain", model="gpt-x", request=D("0.01"))
    assert await store_prices(db, [tiered, plain]) == 2
    loaded = await load_user_prices(db)
    assert [p.id for p in loaded] == ["a/plain", "b/tiered"]  # by id
    assert loaded == [
        Price(**{**_fields(plain), "source": "user"}),
        Price(**{**_fields(tiered), "source": "user"}),
    ]
    assert loaded[1].reasoning is not None
    assert loaded[1].reasoning.as_tuple() == D("0.000000123").as_tuple()  # digit for digit


async def test_storing_a_price_again_replaces_it_by_id(db: Database) -> None:
    await store_prices(db, [price("p", input="1"), price("q")])
    assert await store_prices(db, [price("p", input="7")]) == 1
    loaded = {p.id: p for p in await load_user_prices(db)}
    assert loaded["p"].input == D(7)
    assert set(loaded) == {"p", "q"}
    assert await store_prices(db, []) == 0


async def test_prices_with_a_repeated_id_are_refused_and_none_stored(db: Database) -> None:
    with pytest.raises(ValueError, match="'p' appears more than once"):
        await store_prices(db, [price("p"), price("p")])
    assert await load_user_prices(db) == []


async def test_list_prices_puts_the_users_first_and_filters_by_model(db: Database) -> None:
    await store_prices(db, [price("mine", model="gpt-4o", provider="openai")])
    everything = await list_prices(db)
    assert everything[0].id == "mine"
    assert everything[0].source == "user"
    assert everything[1:] == bundled_prices()
    assert await list_prices(None) == bundled_prices()
    for_model = [p.id for p in await list_prices(db, model="openai/GPT-4o")]
    assert for_model == ["mine", "openai/gpt-4o/2024-05-13", "openai/gpt-4o/2024-10-01"]
    claude = await list_prices(None, model="claude-3-5-sonnet-20241022")
    assert [p.id for p in claude] == ["anthropic/claude-3-5-sonnet*/2024-06-20"]


async def test_a_bad_stored_price_names_the_row_and_the_field(db: Database) -> None:
    await store_prices(db, [price("p")])
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE eventlog_prices SET input = 'lots' WHERE id = 'p'"))
    with pytest.raises(PriceFileError, match="eventlog_prices row 'p': field 'input'"):
        await load_user_prices(db)


async def test_without_the_table_the_error_says_to_migrate(
    backend: str, fresh_url: Callable[[str], str]
) -> None:
    db = await open_database(fresh_url(backend))
    try:
        with pytest.raises(DatabaseError, match="eventlog migrate"):
            await load_user_prices(db)
        with pytest.raises(DatabaseError, match="eventlog migrate"):
            await store_prices(db, [price()])
    finally:
        await db.close()


# -- eventlog prices --------------------------------------------------------------------


async def cli(*args: str) -> int:
    """Run ``eventlog`` in-process (it runs its own event loop, so in a thread)."""
    return await asyncio.to_thread(main, list(args))


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")


@pytest.mark.usefixtures("wide")
async def test_cli_loads_a_file_then_lists_it_first(
    db: Database, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(CSV_FILE)
    assert await cli("prices", "load", str(path), "--url", db_url) == 0
    assert f"loaded 2 prices from {path}" in capsys.readouterr().out
    assert [p.id for p in await load_user_prices(db)] == ["mine/search", "mine/sonnet"]

    assert await cli("prices", "list", "--url", db_url, "--model", "claude-sonnet-4-5") == 0
    out = capsys.readouterr().out
    assert out.index("mine/sonnet") < out.index("anthropic/claude-sonnet-4-5*/2025-09-29")
    assert "> 200k" in out
    assert "5/20" in out
    assert "2 prices of yours" not in out  # only those for the model
    assert "1 price of yours, 1 bundled" in out

    assert await cli("prices", "list", "--url", db_url, "--format", "json") == 0
    records = orjson.loads(capsys.readouterr().out)
    assert [r["source"] for r in records[:3]] == ["user", "user", "bundled"]
    assert records[1]["tiers"][0]["above_input_tokens"] == 200_000

    assert await cli("prices", "list", "--url", db_url, "--format", "csv") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ",".join([*CSV_COLUMNS, "source"])
    assert lines[1].startswith("mine/search,openai,gpt-4o-search,,2025-02-01,")
    listed = await list_prices(db)
    assert len(listed) == len(bundled_prices()) + 2
    assert len(lines) == 1 + len(listed) + sum(len(p.tiers) for p in listed)  # a row per tier


async def test_cli_load_of_a_bad_file_is_one_line_naming_line_and_field(
    db: Database, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("id,model,valid_from,input,output\np,m,2025-01-01,1,1\nq,m,2025-01-01,x,1\n")
    assert await cli("prices", "load", str(path), "--url", db_url) == 1
    err = capsys.readouterr().err
    assert err.startswith("eventlog prices: error: ")
    assert "line 3: field 'input'" in err
    assert len(err.strip().splitlines()) == 1
    assert await load_user_prices(db) == []  # nothing stored


async def test_cli_list_on_a_database_without_the_table_says_to_migrate(
    backend: str, fresh_url: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("prices", "list", "--url", fresh_url(backend)) == 1
    err = capsys.readouterr().err
    assert "eventlog migrate" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_prices_needs_an_action_and_a_known_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prices"]) == 2
    assert main(["prices", "list", "--url", "sqlite:///x.db", "--format", "xml"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_the_integer_cost_path_equals_the_decimal_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Price.cost() adds whole pico-dollars when the rates allow (fast); it must give the
    very Decimal the exact Decimal arithmetic gives, digits and exponent alike."""
    import random

    import eventlog.prices as prices_module

    rng = random.Random(7)
    cases = []
    for price in PriceBook.default().prices:
        for _ in range(40):
            prompt = rng.randrange(0, 400_000)
            completion = rng.randrange(0, 20_000)
            read = rng.randrange(0, prompt + 1)
            write = rng.randrange(0, prompt - read + 1)
            counts = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "cache_read_tokens": read,
                "cache_write_tokens": write,
                "reasoning_tokens": rng.randrange(0, completion + 1),
            }
            cases.append((price, counts, price.cost(**counts)))
    monkeypatch.setattr(prices_module, "_pico_rates", lambda rates, request: None)
    for price, counts, fast in cases:
        exact = price.cost(**counts)
        assert (fast, str(fast)) == (exact, str(exact)), (price.id, counts)
